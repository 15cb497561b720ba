//! Shared helpers for the end-to-end tests in this folder: fast client settings, keyed
//! payloads, a ledger of what `export` answered, order checks, and an HTTPS receiver with a
//! private CA made at run time.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use outlast_client::http::{HttpExporter, KEY_HEADER, KEYS_HEADER};
use outlast_client::{Client, ClientBuilder, Delivery, DropReason, Payload};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls_pki_types::PrivateKeyDer;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::{JoinHandle, JoinSet};

/// Every end-to-end test finishes within this, or fails. Generous: the machine that runs
/// them has two cores and may be compiling at the same time.
pub const TEST_BOUND: Duration = Duration::from_secs(50);

/// Time limit of one export attempt (client and exporter alike): short, so that a hanging
/// receiver costs little test time.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(300);

/// Delay before the quick retry of a direct export (the product default is 1 s).
pub const IMMEDIATE_RETRY_DELAY: Duration = Duration::from_millis(100);

/// First backoff delay of the drain task (the product default is 1 s).
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(50);

/// Cap on the drain task's backoff (the product default is 128 s).
pub const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// Cap on a delay raised by `Retry-After`: a receiver asking for 1 s gets 1 s.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A flush bound generous enough for every backlog these tests build, on a loaded machine.
pub const GENEROUS_FLUSH: Duration = Duration::from_secs(30);

/// A client builder on `dir` with the short delays above (instead of the product's seconds),
/// so that outages and recoveries take milliseconds of test time.
pub fn fast_builder(dir: &Path) -> ClientBuilder {
    Client::builder()
        .spool_dir(dir)
        .attempt_timeout(ATTEMPT_TIMEOUT)
        .immediate_retry_delay(IMMEDIATE_RETRY_DELAY)
        .initial_backoff(INITIAL_BACKOFF)
        .max_backoff(MAX_BACKOFF)
        .max_retry_after(MAX_RETRY_AFTER)
}

/// An HTTP exporter to `url` whose request timeout is [`ATTEMPT_TIMEOUT`].
pub fn http_exporter(url: &str) -> HttpExporter {
    http_exporter_with_timeout(url, ATTEMPT_TIMEOUT)
}

/// An HTTP exporter to `url` with this request timeout.
pub fn http_exporter_with_timeout(url: &str, timeout: Duration) -> HttpExporter {
    HttpExporter::builder(url)
        .timeout(timeout)
        .build()
        .expect("valid exporter settings")
}

/// An attempt timeout for tests that need a backend which is up never to time out, even
/// on a loaded two-core machine (a timed-out attempt that the backend did accept is sent
/// again: a legitimate duplicate, which such tests rule out).
pub const CALM_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);

/// The key of the `i`-th payload of a test: fixed width, so keys sort like their indexes.
pub fn key(i: usize) -> String {
    format!("k{i:06}")
}

/// The index a [`key`] was made from.
pub fn key_index(key: &str) -> usize {
    key.strip_prefix('k')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{key:?} is not a test key"))
}

/// The `i`-th payload of a test: its key, and a body that names it.
pub fn keyed_payload(i: usize) -> Payload {
    Payload::new(format!("{{\"payload\":{i}}}").into_bytes()).with_key(key(i))
}

/// Runs `fut` within [`TEST_BOUND`], or fails the test naming `what`.
pub async fn bounded<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(TEST_BOUND, fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what} did not finish within {TEST_BOUND:?}"),
    }
}

/// What `export` answered for each key, in export order.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    /// Keys answered `Delivered` or `Spooled` (the client took responsibility), in export
    /// order.
    pub accepted: Vec<String>,
    /// Keys answered `Delivered`.
    pub delivered: Vec<String>,
    /// Keys answered `Spooled`.
    pub spooled: Vec<String>,
    /// Keys dropped as `DropError::Permanent`.
    pub permanent: Vec<String>,
    /// Keys dropped for any other reason.
    pub other_drops: Vec<(String, DropReason)>,
}

impl Ledger {
    /// Exports the `i`-th keyed payload through `client`, records the answer, returns it.
    pub async fn export(&mut self, client: &Client, i: usize) -> Result<Delivery, DropReason> {
        let k = key(i);
        match client.export(keyed_payload(i)).await {
            Ok(d) => {
                self.accepted.push(k.clone());
                match d {
                    Delivery::Delivered => self.delivered.push(k),
                    Delivery::Spooled => self.spooled.push(k),
                }
                Ok(d)
            }
            Err(e) if e.is_permanent() => {
                self.permanent.push(k);
                Err(DropReason::Permanent)
            }
            Err(e) => {
                let reason = e.reason();
                self.other_drops.push((k, reason));
                Err(reason)
            }
        }
    }
}

impl Ledger {
    /// Asserts that the client's counters account for every export this ledger saw, exactly:
    /// every accepted payload was delivered (directly or replayed), is still in the spool, or
    /// was dropped after acceptance for one counted reason; and every refused one is
    /// counted under its reason.
    pub fn assert_counters_add_up(&self, stats: &outlast_client::ClientStats) {
        let refused = (self.permanent.len() + self.other_drops.len()) as u64;
        let d = stats.dropped;
        let after_acceptance = d.total().checked_sub(refused).unwrap_or_else(|| {
            panic!("fewer drops counted ({d:?}) than exports refused ({refused}): {stats:?}")
        });
        assert_eq!(
            self.accepted.len() as u64,
            stats.exported + stats.replayed + stats.spool_records + after_acceptance,
            "accepted = delivered ({} direct + {} replayed) + still spooled ({}) + dropped after \
             acceptance (permanent {}, expired {}, evicted {}, corrupt {}, minus {refused} refused \
             at export): {stats:?}",
            stats.exported,
            stats.replayed,
            stats.spool_records,
            d.permanent,
            d.expired,
            d.evicted,
            d.corrupt,
        );
        // Reasons that only an export can meet: each counted exactly as often as refused.
        for reason in [
            DropReason::SpoolFull,
            DropReason::SpoolUnavailable,
            DropReason::ShutDown,
            DropReason::TooLarge,
        ] {
            let seen = self
                .other_drops
                .iter()
                .filter(|(_, r)| *r == reason)
                .count() as u64;
            assert_eq!(d.get(reason), seen, "{reason:?}: {stats:?}");
        }
        assert!(
            d.permanent >= self.permanent.len() as u64,
            "every permanent refusal counted: {stats:?}"
        );
    }
}

/// Checks the order in which keys first reached the backend against the order they were
/// exported in, for a client with at most `in_flight` attempts under way at once.
///
/// `arrived` is the receiver's keys in order of first acceptance; `exported` the keys the
/// client accepted, in export order. Asserts that both hold the same keys, and that when a
/// key first arrived, fewer than `in_flight` keys exported before it were still missing.
///
/// Why that bound: the drain task starts attempts in spool order through a sliding window
/// of `in_flight`, stops starting new ones at the first retryable failure, and after a
/// failure starts again at the oldest unacknowledged record (acknowledged means accepted).
/// So when a record's attempt starts, every older record has been accepted or is under way
/// in the same window, at most `in_flight - 1` of them. A direct export happens only when no
/// backlog is left. `in_flight == 1` therefore means exactly export order.
pub fn assert_arrival_order(arrived: &[String], exported: &[String], in_flight: usize) {
    assert!(in_flight >= 1, "at least one attempt must be allowed");
    let position: HashMap<&str, usize> = exported
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i))
        .collect();
    assert_eq!(
        position.len(),
        exported.len(),
        "exported keys must be distinct"
    );
    // A Fenwick tree over export positions counting the keys arrived so far.
    let mut tree = vec![0usize; exported.len() + 1];
    let arrived_before = |tree: &[usize], p: usize| {
        let (mut i, mut n) = (p, 0);
        while i > 0 {
            n += tree[i];
            i &= i - 1;
        }
        n
    };
    let mut seen = vec![false; exported.len()];
    for (n, k) in arrived.iter().enumerate() {
        let Some(&p) = position.get(k.as_str()) else {
            panic!("key {k} arrived but was never accepted by the client");
        };
        assert!(!seen[p], "key {k} listed twice in first-arrival order");
        let missing = p - arrived_before(&tree, p);
        if missing >= in_flight {
            let missing_keys: Vec<&String> = exported[..p]
                .iter()
                .zip(&seen)
                .filter(|(_, s)| !**s)
                .map(|(k, _)| k)
                .collect();
            panic!(
                "key {k} (exported #{p}) arrived as #{n} while {missing} older key(s) had not \
                 arrived (at most {} may be under way with it): {missing_keys:?}",
                in_flight - 1
            );
        }
        seen[p] = true;
        let mut i = p + 1;
        while i < tree.len() {
            tree[i] += 1;
            i += i & i.wrapping_neg();
        }
    }
    let missing: Vec<&String> = exported
        .iter()
        .zip(&seen)
        .filter(|(_, s)| !**s)
        .map(|(k, _)| k)
        .collect();
    assert!(
        missing.is_empty(),
        "{} key(s) accepted by the client never reached the backend: {missing:?}",
        missing.len()
    );
}

/// How long coming back up retries binding the port (it may linger briefly).
const REBIND_PATIENCE: Duration = Duration::from_secs(3);

/// An HTTPS receiver on 127.0.0.1 with a certificate signed by a private CA generated at
/// start: answers `200` to every request, records the key header of each, and can be taken
/// down (port closed, connections dropped) and brought back on the same port.
pub struct TlsReceiver {
    addr: SocketAddr,
    ca_pem: String,
    acceptor: tokio_rustls::TlsAcceptor,
    log: Arc<Mutex<TlsLog>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// What the TLS receiver saw.
#[derive(Debug, Default)]
struct TlsLog {
    /// Keys of the payloads answered 200, in arrival order (repeats included): a request's
    /// `x-outlast-key`, or each line of a merged request's `x-outlast-keys`.
    keys: Vec<String>,
    /// Bodies of the requests answered 200, in arrival order.
    bodies: Vec<Bytes>,
    /// TLS handshakes that completed.
    handshakes: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl TlsReceiver {
    /// Makes a CA and a server certificate for `127.0.0.1` and `localhost`, and starts
    /// serving on a random port of 127.0.0.1.
    pub async fn start() -> TlsReceiver {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().expect("server key");
        let server_params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("server params");
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .expect("server certificate");

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![server_cert.der().clone()],
                PrivateKeyDer::try_from(server_key.serialize_der()).expect("server key DER"),
            )
            .expect("server TLS config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local address");
        let receiver = TlsReceiver {
            addr,
            ca_pem: ca_cert.pem(),
            acceptor,
            log: Arc::default(),
            task: Mutex::new(None),
        };
        receiver.serve(listener);
        receiver
    }

    /// `https://127.0.0.1:<port>/v1/traces`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/v1/traces", self.addr.port())
    }

    /// The private CA's certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    fn serve(&self, listener: TcpListener) {
        let acceptor = self.acceptor.clone();
        let log = Arc::clone(&self.log);
        let task = tokio::spawn(async move {
            // Dropped with the task: aborting the task aborts every connection.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((tcp, _)) = accepted else { continue };
                        let acceptor = acceptor.clone();
                        let log = Arc::clone(&log);
                        conns.spawn(async move {
                            let Ok(tls) = acceptor.accept(tcp).await else { return };
                            lock(&log).handshakes += 1;
                            let svc = service_fn(move |req| answer(req, Arc::clone(&log)));
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(tls), svc)
                                .await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        *lock(&self.task) = Some(task);
    }

    /// Closes the port and drops every connection: connections are refused until
    /// [`come_up`](Self::come_up).
    pub async fn go_down(&self) {
        let task = lock(&self.task).take();
        if let Some(task) = task {
            task.abort();
            // Wait until the listener and the connections are really gone.
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    pub async fn come_up(&self) {
        let deadline = tokio::time::Instant::now() + REBIND_PATIENCE;
        let listener = loop {
            match bind(self.addr) {
                Ok(l) => break l,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot bind {} again: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    /// Keys of the requests answered 200, in arrival order, repeats included.
    pub fn keys(&self) -> Vec<String> {
        lock(&self.log).keys.clone()
    }

    /// Bodies of the requests answered 200, in arrival order.
    pub fn bodies(&self) -> Vec<Bytes> {
        lock(&self.log).bodies.clone()
    }

    /// TLS handshakes completed so far.
    pub fn handshakes(&self) -> u64 {
        lock(&self.log).handshakes
    }
}

impl std::fmt::Debug for TlsReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsReceiver")
            .field("addr", &self.addr)
            .field("log", &*lock(&self.log))
            .finish_non_exhaustive()
    }
}

impl Drop for TlsReceiver {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }
}

/// Reads the whole request, records its key, answers 200.
async fn answer(
    req: hyper::Request<Incoming>,
    log: Arc<Mutex<TlsLog>>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let headers = req.headers();
    let mut keys: Vec<String> = headers
        .get_all(KEYS_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect();
    if keys.is_empty()
        && let Some(key) = headers.get(KEY_HEADER).and_then(|v| v.to_str().ok())
    {
        keys.push(key.to_owned());
    }
    let Ok(body) = req.into_body().collect().await else {
        // The client went away mid-body: nothing was received.
        let mut resp = hyper::Response::new(Full::new(Bytes::from_static(b"incomplete body")));
        *resp.status_mut() = hyper::StatusCode::BAD_REQUEST;
        return Ok(resp);
    };
    let mut log = lock(&log);
    log.keys.extend(keys);
    log.bodies.push(body.to_bytes());
    Ok(hyper::Response::new(Full::new(Bytes::new())))
}

/// Binds with `SO_REUSEADDR`, so the port can be bound again right after going down.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

/// Keys in `keys` in order of first appearance, each once.
pub fn first_arrivals(keys: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    keys.iter()
        .filter(|k| seen.insert(k.as_str()))
        .cloned()
        .collect()
}

/// A two-worker Tokio runtime: one per simulated process in the restart and crash tests, so
/// that dropping it ends everything that process started.
///
/// # Panics
///
/// If the runtime cannot be built (no threads can be spawned): nothing can be tested then.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime")
}

/// A [`TestReceiver`](outlast_client::testing::TestReceiver) started on `rt` in
/// [`Mode::Down`](outlast_client::testing::Mode::Down): the backend of a test that begins with
/// an outage.
///
/// # Panics
///
/// If the receiver cannot bind a loopback port.
pub fn receiver_down(rt: &tokio::runtime::Runtime) -> outlast_client::testing::TestReceiver {
    rt.block_on(async {
        outlast_client::testing::TestReceiver::builder()
            .mode(outlast_client::testing::Mode::Down)
            .start()
            .await
            .expect("receiver starts")
    })
}

/// A random number below `n` (not for cryptography: picks the moment of a kill).
pub fn random_below(n: u64) -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        % n.max(1)
}

/// A small tmpfs mounted on a temporary directory (root only), unmounted on drop: a real
/// file system to fill up or make read-only under a client.
#[derive(Debug)]
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it, e.g. `4m`); the error says
    /// why it cannot be mounted here (not root, no `mount`), for the test to say it skipped.
    pub fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        run_mount(
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"],
            dir.path(),
        )?;
        Ok(Tmpfs { dir })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Remounts it read-only (`true`) or read-write: every write, create or rename on it
    /// then fails with `EROFS`, or works again.
    pub fn set_read_only(&self, read_only: bool) {
        let opts = if read_only {
            "remount,ro"
        } else {
            "remount,rw"
        };
        run_mount(&["-o", opts], self.path()).expect("remount the tmpfs");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

fn run_mount(args: &[&str], target: &Path) -> Result<(), String> {
    let out = std::process::Command::new("mount")
        .args(args)
        .arg(target)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mount {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The child side of a crash test, in the child process: on a current-thread runtime,
/// builds a client with `build` and exports `payload(i)` for `i` in `0..max`, printing
/// `spooled <key>` after each export answered `Spooled` (`unexpected <key> <answer>`
/// otherwise), then `done`; then waits to be killed (the test is about a crash, not a
/// clean exit). The parent reads the lines with [`ChildTest::read_reported_then_kill`].
pub fn export_until_killed(
    max: usize,
    build: impl FnOnce() -> Client,
    payload: impl Fn(usize) -> Payload,
) {
    use std::io::Write as _;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    rt.block_on(async {
        let client = build();
        let mut out = std::io::stdout().lock();
        for i in 0..max {
            match client.export(payload(i)).await {
                Ok(Delivery::Spooled) => writeln!(out, "spooled {}", key(i)),
                other => writeln!(out, "unexpected {} {other:?}", key(i)),
            }
            .and_then(|()| out.flush())
            .expect("the parent reads the child's output");
        }
        writeln!(out, "done").expect("the parent reads the child's output");
        drop(out);
        tokio::time::sleep(TEST_BOUND).await;
    });
}

/// A child process for a crash test: this test binary run again on one `#[ignore]`d child
/// test (`--exact --ignored`), with its settings in the environment, to be killed with
/// SIGKILL. With `read_stdout`, its standard output is read line by line on a thread:
/// complete lines only, so a line cut by the kill reports nothing.
#[derive(Debug)]
pub struct ChildTest {
    child: std::process::Child,
    lines: Option<std::sync::mpsc::Receiver<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl ChildTest {
    /// Starts `test` of this binary with `env` added to its environment.
    pub fn spawn(test: &str, env: &[(&str, &std::ffi::OsStr)], read_stdout: bool) -> ChildTest {
        use std::io::BufRead as _;
        use std::process::Stdio;
        let mut cmd =
            std::process::Command::new(std::env::current_exe().expect("path of this test binary"));
        cmd.args([
            test,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .stdin(Stdio::null())
        .stdout(if read_stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::inherit());
        for (name, value) in env {
            cmd.env(name, value);
        }
        let mut child = cmd.spawn().expect("start the child process");
        let (lines, reader) = match child.stdout.take() {
            Some(stdout) => {
                let (tx, rx) = std::sync::mpsc::channel::<String>();
                let reader = std::thread::spawn(move || {
                    let mut stdout = std::io::BufReader::new(stdout);
                    let mut line = Vec::new();
                    loop {
                        line.clear();
                        match stdout.read_until(b'\n', &mut line) {
                            Ok(0) | Err(_) => break,
                            Ok(_) if line.ends_with(b"\n") => {
                                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                                if tx.send(text).is_err() {
                                    break;
                                }
                            }
                            Ok(_) => break,
                        }
                    }
                });
                (Some(rx), Some(reader))
            }
            None => (None, None),
        };
        ChildTest {
            child,
            lines,
            reader,
        }
    }

    /// Reads the child's `<prefix><item>` lines until its output ends, and SIGKILLs it a
    /// random moment (up to 3 ms) after the `kill_after`-th such line. A line starting with
    /// `unexpected`, or `done`, fails the test; so does a child that reports fewer lines
    /// within [`TEST_BOUND`]. Returns the items reported.
    pub fn read_reported_then_kill(&mut self, prefix: &str, kill_after: usize) -> Vec<String> {
        let lines = self.lines.take().expect("started with read_stdout");
        let deadline = std::time::Instant::now() + TEST_BOUND;
        let mut reported = Vec::new();
        let mut killed = false;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = match lines.recv_timeout(left) {
                Ok(line) => line,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!("the child did not report {kill_after} items within {TEST_BOUND:?}");
                }
            };
            if let Some(item) = line.strip_prefix(prefix) {
                reported.push(item.to_owned());
            } else {
                assert!(
                    !line.starts_with("unexpected") && line != "done",
                    "child: {line}"
                );
            }
            if !killed && reported.len() >= kill_after {
                // A little later still, so the kill does not always land right after a print.
                std::thread::sleep(Duration::from_micros(random_below(3000)));
                self.kill();
                killed = true;
            }
        }
        assert!(reported.len() >= kill_after, "{} reported", reported.len());
        reported
    }

    /// The child's output lines (complete lines only), for a test that reads them itself;
    /// `None` if it was not started with `read_stdout` or they were taken already.
    pub fn take_lines(&mut self) -> Option<std::sync::mpsc::Receiver<String>> {
        self.lines.take()
    }

    /// Kills the child with SIGKILL.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the child");
    }

    /// Reaps the child (and its output reader) and checks that it died of SIGKILL.
    pub fn assert_killed(mut self) {
        use std::os::unix::process::ExitStatusExt as _;
        let status = self.child.wait().expect("reap the child");
        if let Some(reader) = self.reader.take() {
            reader.join().expect("the output reader thread");
        }
        assert_eq!(
            status.signal(),
            Some(9),
            "the child died of SIGKILL: {status:?}"
        );
    }
}
