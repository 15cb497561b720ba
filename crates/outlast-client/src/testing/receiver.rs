//! A loopback HTTP test receiver: a real hyper server on 127.0.0.1 that records what it
//! receives and can be switched at run time to be down, slow, failing, rate-limiting,
//! hanging or resetting connections.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_ENCODING, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

/// How the receiver answers, switchable at run time with [`TestReceiver::set_mode`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Mode {
    /// Answer `200 OK`.
    #[default]
    Up,
    /// The listening socket is closed and every open connection dropped: new connections are
    /// refused. Switching to any other mode binds the same port again.
    Down,
    /// Answer with this status (and a short text body naming it).
    Status(u16),
    /// Answer `429 Too Many Requests`, with `Retry-After` in whole seconds when given.
    TooManyRequests {
        /// The `Retry-After` delay to send (rounded down to whole seconds).
        retry_after: Option<Duration>,
    },
    /// Answer with this exact response (any status, headers and body: e.g. a 503 with an
    /// HTTP-date `Retry-After`, or a garbage one).
    Respond(CannedResponse),
    /// Read the request, then never answer. The connection's task waits until the receiver
    /// goes [`Mode::Down`], is shut down or dropped, which ends it.
    Hang,
    /// Read the request, then close the connection abruptly (TCP reset) without answering.
    ResetMidRequest,
    /// Answer `200 OK` after this delay.
    Slow(Duration),
    /// Answer `400 Bad Request` to a request that carries any of these keys (alone, or
    /// among the keys of a merged request), `200 OK` to the others: poison records.
    RejectKeys(Vec<String>),
    /// A backend of fixed throughput: requests pass one after the other through a pipe of
    /// this many body bytes per second (a request waits for those ahead of it, then for
    /// its own bytes), and each is recorded and answered `200 OK` as it comes out.
    Paced {
        /// The pipe's rate (0 counts as 1).
        bytes_per_sec: u64,
    },
    /// A rate-limited backend: `200 OK` while the body bytes accepted in the current
    /// one-second window stay within `bytes_per_sec`, `429 Too Many Requests` (with
    /// `Retry-After` in whole seconds, when given) for a request that would exceed it.
    RateLimited {
        /// Body bytes accepted per one-second window.
        bytes_per_sec: u64,
        /// The `Retry-After` delay to send with a 429.
        retry_after: Option<Duration>,
    },
}

/// A fixed response for [`Mode::Respond`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CannedResponse {
    /// The status code.
    pub status: u16,
    /// Extra headers, as (name, value).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

impl CannedResponse {
    /// A response with this status, no extra headers and an empty body.
    pub fn new(status: u16) -> CannedResponse {
        CannedResponse {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    #[must_use]
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }
}

/// What the receiver did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Answered with this status.
    Status(u16),
    /// Never answered ([`Mode::Hang`]).
    Hung,
    /// Reset the connection without answering ([`Mode::ResetMidRequest`], or a request that
    /// arrived on an open connection while going [`Mode::Down`]).
    Reset,
}

impl Answer {
    /// Whether the request was accepted (answered with a 2xx status).
    pub fn is_accepted(self) -> bool {
        matches!(self, Answer::Status(s) if (200..300).contains(&s))
    }
}

/// What is kept of each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Recording {
    /// Headers and body (as received, still compressed if it was). The default.
    #[default]
    Full,
    /// Only the key, method, path and the body's size: for long runs and benchmarks.
    KeysAndSizes,
}

/// One request as the receiver saw it, in arrival order.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    /// Arrival index, from 0.
    pub seq: u64,
    /// Which accepted connection it came on, from 0 (equal values: the connection was
    /// reused).
    pub connection: u64,
    /// The request method.
    pub method: Method,
    /// The request path (and query).
    pub path: String,
    /// The value of the key header (see [`TestReceiverBuilder::key_header`]).
    pub key: Option<String>,
    /// The keys of every payload the request carried, in order: the key header's value,
    /// or for a merged request the non-empty values of its
    /// [`KEYS_HEADER`](crate::http::KEYS_HEADER) lines. [`unique_keys`] and
    /// [`duplicates`] count these.
    ///
    /// [`unique_keys`]: TestReceiver::unique_keys
    /// [`duplicates`]: TestReceiver::duplicates
    pub keys: Vec<String>,
    /// All request headers ([`Recording::Full`] only).
    pub headers: Option<HeaderMap>,
    /// The body as received, not decompressed ([`Recording::Full`] only).
    pub body: Option<Bytes>,
    /// The body's size in bytes as received.
    pub body_len: u64,
    /// What the receiver answered.
    pub answer: Answer,
    /// When the request was recorded: once its body was read (for [`Mode::Paced`], once
    /// it came out of the pipe).
    pub received_at: std::time::Instant,
}

impl ReceivedRequest {
    /// A header's value as text, if recorded and present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.as_ref()?.get(name)?.to_str().ok()
    }

    /// The body, gunzipped (every gzip member, as real receivers read them) when
    /// `Content-Encoding: gzip` was sent; `None` if bodies were
    /// not recorded.
    ///
    /// # Errors
    ///
    /// The I/O error of a body that claims to be gzip but is not.
    pub fn decoded_body(&self) -> std::io::Result<Option<Bytes>> {
        let Some(body) = &self.body else {
            return Ok(None);
        };
        if self.header(CONTENT_ENCODING.as_str()) == Some("gzip") {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(&body[..]).read_to_end(&mut out)?;
            Ok(Some(Bytes::from(out)))
        } else {
            Ok(Some(body.clone()))
        }
    }
}

/// Why the receiver could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiverError {
    /// The port could not be bound (at start, or when coming back up after [`Mode::Down`]).
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The status is not a valid HTTP status code (100..=999).
    #[error("invalid HTTP status {0}")]
    InvalidStatus(u16),
    /// A header of a [`CannedResponse`] is not valid.
    #[error("invalid header in canned response: {0:?}")]
    InvalidHeader(String),
    /// The receiver has been shut down.
    #[error("the test receiver has been shut down")]
    Stopped,
}

impl ReceiverError {
    /// Whether the receiver had been shut down.
    pub fn is_stopped(&self) -> bool {
        matches!(self, ReceiverError::Stopped)
    }
}

/// The default header whose value identifies a payload, the one `HttpExporter` sends.
const DEFAULT_KEY_HEADER: &str = crate::http::KEY_HEADER;

/// Pending connections the kernel may queue before accept: plenty for tests and benchmarks.
const LISTEN_BACKLOG: u32 = 1024;

/// How long coming back up retries binding the port (it may linger in use briefly).
const REBIND_PATIENCE: Duration = Duration::from_secs(2);

/// Settings of a [`TestReceiver`].
#[derive(Debug, Clone)]
pub struct TestReceiverBuilder {
    key_header: String,
    recording: Recording,
    mode: Mode,
}

impl TestReceiverBuilder {
    /// The header whose value identifies a payload for de-duplication. Default
    /// `x-outlast-key` (what `HttpExporter` sends for a payload with a key).
    #[must_use]
    pub fn key_header(mut self, name: impl Into<String>) -> Self {
        self.key_header = name.into();
        self
    }

    /// What is kept of each request. Default [`Recording::Full`].
    #[must_use]
    pub fn recording(mut self, recording: Recording) -> Self {
        self.recording = recording;
        self
    }

    /// The mode at start. Default [`Mode::Up`].
    #[must_use]
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Binds 127.0.0.1 on a random port and starts serving. Must be called on a Tokio
    /// runtime.
    ///
    /// # Errors
    ///
    /// [`ReceiverError::Bind`] if no port could be bound; [`ReceiverError::InvalidHeader`]
    /// for a bad key header name; those of [`TestReceiver::set_mode`] for a bad start mode.
    pub async fn start(self) -> Result<TestReceiver, ReceiverError> {
        let key_header = HeaderName::from_bytes(self.key_header.as_bytes())
            .map_err(|_| ReceiverError::InvalidHeader(self.key_header.clone()))?;
        check_mode(&self.mode)?;
        let wanted = SocketAddr::from(([127, 0, 0, 1], 0));
        let listener = bind(wanted).map_err(|source| ReceiverError::Bind {
            addr: wanted,
            source,
        })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ReceiverError::Bind {
                addr: wanted,
                source,
            })?;
        let down = self.mode == Mode::Down;
        let (progress, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            mode: Mutex::new(Arc::new(self.mode)),
            log: Mutex::new(Log::default()),
            connections: AtomicU64::new(0),
            key_header,
            recording: self.recording,
            progress,
            paced_until: Mutex::new(None),
            window: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel(8);
        let listener = if down { None } else { Some(listener) };
        let task = tokio::spawn(run(listener, addr, Arc::clone(&shared), rx));
        Ok(TestReceiver {
            addr,
            shared,
            control: tx,
            task,
        })
    }
}

/// A real HTTP/1.1 server on 127.0.0.1 (random port) that records what it receives and can
/// be switched between [`Mode`]s at run time.
///
/// Requests are recorded in arrival order once their body has been read, with the answer
/// the mode decided. A request is *accepted* when answered 2xx; [`unique_keys`] and
/// [`duplicates`] count accepted requests only. With [`Mode::Slow`], as with a real slow
/// server, a client may give up before the answer arrives and send again: a duplicate.
///
/// Dropping the receiver stops it: the listener, every connection and every task end.
///
/// [`unique_keys`]: TestReceiver::unique_keys
/// [`duplicates`]: TestReceiver::duplicates
///
/// # Examples
///
/// ```
/// use outlast_client::testing::{Mode, TestReceiver};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let receiver = TestReceiver::start().await?;
/// let url = receiver.url(); // http://127.0.0.1:<port>/
/// receiver.set_mode(Mode::Status(503)).await?;
/// receiver.set_mode(Mode::Down).await?; // connections are now refused
/// receiver.set_mode(Mode::Up).await?; // same port, accepting again
/// assert_eq!(receiver.request_count(), 0);
/// # drop(url);
/// # Ok(()) }
/// ```
pub struct TestReceiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    control: mpsc::Sender<Command>,
    task: JoinHandle<()>,
}

struct Shared {
    mode: Mutex<Arc<Mode>>,
    log: Mutex<Log>,
    connections: AtomicU64,
    key_header: HeaderName,
    recording: Recording,
    /// Bumped after each recorded request, for the `wait_for_*` helpers.
    progress: watch::Sender<u64>,
    /// [`Mode::Paced`]: when the pipe is free again.
    paced_until: Mutex<Option<tokio::time::Instant>>,
    /// [`Mode::RateLimited`]: the current window's start and the bytes accepted in it.
    window: Mutex<Option<(tokio::time::Instant, u64)>>,
}

#[derive(Default)]
struct Log {
    records: Vec<ReceivedRequest>,
    /// Keys of accepted requests, in order of first acceptance.
    unique: Vec<String>,
    /// How many times each key was accepted.
    counts: HashMap<String, u64>,
    duplicates: u64,
    accepted: u64,
    bytes: u64,
}

enum Command {
    SetMode(Mode, oneshot::Sender<Result<(), ReceiverError>>),
    Shutdown(oneshot::Sender<()>),
}

impl Shared {
    fn log(&self) -> MutexGuard<'_, Log> {
        // A panic while holding the lock cannot leave the log inconsistent in a way that
        // matters for tests: keep using it.
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mode(&self) -> Arc<Mode> {
        Arc::clone(&self.mode.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(mode);
    }

    /// [`Mode::Paced`]: takes `len` bytes through the pipe at `rate` bytes per second, after
    /// those ahead of it; when they are through.
    fn pace(&self, len: u64, rate: u64) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        let nanos = u128::from(len) * 1_000_000_000 / u128::from(rate.max(1));
        let cost = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        let mut until = self.paced_until.lock().unwrap_or_else(|p| p.into_inner());
        let start = until.map_or(now, |u| u.max(now));
        let out = start.checked_add(cost).unwrap_or(start);
        *until = Some(out);
        out
    }

    /// [`Mode::RateLimited`]: whether `len` more bytes fit in the current one-second window
    /// of `rate` bytes (counted if they do).
    fn admit(&self, len: u64, rate: u64) -> bool {
        let now = tokio::time::Instant::now();
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let (start, used) = match *window {
            Some((start, used)) if now.duration_since(start) < Duration::from_secs(1) => {
                (start, used)
            }
            _ => (now, 0),
        };
        let fits = used.saturating_add(len) <= rate;
        *window = Some((start, if fits { used + len } else { used }));
        fits
    }
}

impl TestReceiver {
    /// A receiver with default settings ([`Mode::Up`], full recording, key header
    /// `x-outlast-key`).
    ///
    /// # Errors
    ///
    /// [`ReceiverError::Bind`] if no port could be bound.
    pub async fn start() -> Result<TestReceiver, ReceiverError> {
        TestReceiver::builder().start().await
    }

    /// Settings for a receiver.
    pub fn builder() -> TestReceiverBuilder {
        TestReceiverBuilder {
            key_header: DEFAULT_KEY_HEADER.to_owned(),
            recording: Recording::Full,
            mode: Mode::Up,
        }
    }

    /// `http://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The listening address (kept across [`Mode::Down`]).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        (*self.shared.mode()).clone()
    }

    /// Switches the mode. Returns once the switch has taken effect: after switching to
    /// [`Mode::Down`] the port refuses connections; after switching back, it accepts them.
    ///
    /// # Errors
    ///
    /// [`ReceiverError::InvalidStatus`] / [`ReceiverError::InvalidHeader`] for a bad mode,
    /// [`ReceiverError::Bind`] if the port cannot be bound again (the receiver then stays
    /// down), [`ReceiverError::Stopped`] after [`shutdown`](Self::shutdown).
    ///
    /// # Cancel safety
    ///
    /// If cancelled, the switch may or may not happen.
    pub async fn set_mode(&self, mode: Mode) -> Result<(), ReceiverError> {
        check_mode(&mode)?;
        let (ack, done) = oneshot::channel();
        self.control
            .send(Command::SetMode(mode, ack))
            .await
            .map_err(|_| ReceiverError::Stopped)?;
        done.await.map_err(|_| ReceiverError::Stopped)?
    }

    /// Stops listening, closes every connection and ends every task. What was recorded
    /// stays readable. Idempotent.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe; dropping the receiver stops it too.
    pub async fn shutdown(&self) {
        let (ack, done) = oneshot::channel();
        if self.control.send(Command::Shutdown(ack)).await.is_ok() {
            let _ = done.await;
        }
    }

    /// Every request received, in arrival order.
    pub fn received(&self) -> Vec<ReceivedRequest> {
        self.shared.log().records.clone()
    }

    /// Keys of accepted requests (every key of a merged request), each once, in order of
    /// first acceptance.
    pub fn unique_keys(&self) -> Vec<String> {
        self.shared.log().unique.clone()
    }

    /// How many keys of accepted requests had already been accepted (a merged request
    /// counts each of its keys).
    pub fn duplicates(&self) -> u64 {
        self.shared.log().duplicates
    }

    /// Keys accepted more than once, with how many times each was accepted.
    pub fn duplicate_keys(&self) -> Vec<(String, u64)> {
        let log = self.shared.log();
        log.unique
            .iter()
            .filter_map(|k| {
                let n = log.counts.get(k).copied().unwrap_or(0);
                (n > 1).then(|| (k.clone(), n))
            })
            .collect()
    }

    /// How many requests arrived (whatever the answer).
    pub fn request_count(&self) -> u64 {
        self.shared.log().records.len() as u64
    }

    /// How many requests were accepted (answered 2xx).
    pub fn accepted_count(&self) -> u64 {
        self.shared.log().accepted
    }

    /// Total body bytes received (as sent, compressed or not), over all requests.
    pub fn bytes_received(&self) -> u64 {
        self.shared.log().bytes
    }

    /// How many TCP connections were accepted.
    pub fn connections_accepted(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` requests have arrived, or `timeout`. Returns whether they
    /// did.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn wait_for_requests(&self, n: u64, timeout: Duration) -> bool {
        self.wait_until(timeout, |log| log.records.len() as u64 >= n)
            .await
    }

    /// Waits until at least `n` distinct keys have been accepted, or `timeout`. Returns
    /// whether they were.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn wait_for_unique_keys(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |log| log.unique.len() >= n).await
    }

    async fn wait_until(&self, timeout: Duration, done: impl Fn(&Log) -> bool) -> bool {
        let mut progress = self.shared.progress.subscribe();
        let wait = async {
            loop {
                if done(&self.shared.log()) {
                    return;
                }
                if progress.changed().await.is_err() {
                    // Cannot happen while `self` holds the sender; stop waiting anyway.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

impl Drop for TestReceiver {
    fn drop(&mut self) {
        // Aborting the accept task drops its listener and its JoinSet, which aborts every
        // connection task.
        self.task.abort();
    }
}

impl fmt::Debug for TestReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestReceiver")
            .field("addr", &self.addr)
            .field("mode", &self.shared.mode())
            .field("recording", &self.shared.recording)
            .field("request_count", &self.request_count())
            .finish_non_exhaustive()
    }
}

fn check_mode(mode: &Mode) -> Result<(), ReceiverError> {
    let status = match mode {
        Mode::Status(s) => *s,
        Mode::Respond(c) => {
            for (k, v) in &c.headers {
                HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| ReceiverError::InvalidHeader(k.clone()))?;
                HeaderValue::from_str(v).map_err(|_| ReceiverError::InvalidHeader(k.clone()))?;
            }
            c.status
        }
        _ => return Ok(()),
    };
    StatusCode::from_u16(status).map_err(|_| ReceiverError::InvalidStatus(status))?;
    Ok(())
}

/// Binds with `SO_REUSEADDR`, so that the port can be bound again right after going down
/// even while closed connections linger in TIME_WAIT.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn rebind(addr: SocketAddr) -> Result<TcpListener, ReceiverError> {
    let deadline = tokio::time::Instant::now() + REBIND_PATIENCE;
    loop {
        match bind(addr) {
            Ok(l) => return Ok(l),
            Err(source) => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(ReceiverError::Bind { addr, source });
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn accept(listener: &Option<TcpListener>) -> std::io::Result<TcpStream> {
    match listener {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

/// The accept loop and control task. Owns the listener and every connection task.
async fn run(
    mut listener: Option<TcpListener>,
    addr: SocketAddr,
    shared: Arc<Shared>,
    mut control: mpsc::Receiver<Command>,
) {
    let mut conns: JoinSet<()> = JoinSet::new();
    loop {
        tokio::select! {
            cmd = control.recv() => match cmd {
                None => break,
                Some(Command::Shutdown(ack)) => {
                    listener = None;
                    conns.shutdown().await;
                    let _ = ack.send(());
                    // Stay alive (idle) so that later calls get `Stopped` quickly.
                    drop(listener);
                    while let Some(cmd) = control.recv().await {
                        match cmd {
                            Command::SetMode(_, ack) => { let _ = ack.send(Err(ReceiverError::Stopped)); }
                            Command::Shutdown(ack) => { let _ = ack.send(()); }
                        }
                    }
                    return;
                }
                Some(Command::SetMode(mode, ack)) => {
                    let down = mode == Mode::Down;
                    shared.set_mode(mode);
                    let result = if down {
                        listener = None;
                        conns.shutdown().await;
                        Ok(())
                    } else if listener.is_none() {
                        rebind(addr).await.map(|l| { listener = Some(l); })
                    } else {
                        Ok(())
                    };
                    if result.is_err() {
                        shared.set_mode(Mode::Down);
                    }
                    let _ = ack.send(result);
                }
            },
            accepted = accept(&listener) => {
                if let Ok(stream) = accepted {
                    let id = shared.connections.fetch_add(1, Ordering::Relaxed);
                    conns.spawn(serve(stream, id, Arc::clone(&shared)));
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
}

/// Serves one connection until the client closes it, the receiver resets it, or the task is
/// aborted.
async fn serve(stream: TcpStream, connection: u64, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    // A second handle on the same socket, to set SO_LINGER=0 before a reset: closing then
    // sends RST instead of FIN.
    let Ok(std_stream) = stream.into_std() else {
        return;
    };
    let control = std_stream.try_clone();
    let Ok(stream) = TcpStream::from_std(std_stream) else {
        return;
    };
    let reset = Arc::new(Notify::new());
    let svc = {
        let reset = Arc::clone(&reset);
        service_fn(move |req| handle(req, connection, Arc::clone(&shared), Arc::clone(&reset)))
    };
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        _ = conn => {}
        () = reset.notified() => {
            if let Ok(c) = control {
                let _ = TcpSocket::from_std_stream(c).set_zero_linger();
            }
            // Dropping `conn` (and the control handle) closes the socket with a reset.
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    connection: u64,
    shared: Arc<Shared>,
    reset: Arc<Notify>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mode = shared.mode();
    let (parts, mut body) = req.into_parts();
    let keep_body = shared.recording == Recording::Full;
    let mut buf = BytesMut::new();
    let mut len: u64 = 0;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            // The client went away mid-body: nothing was received.
            return Ok(text_response(StatusCode::BAD_REQUEST, "incomplete body"));
        };
        if let Some(data) = frame.data_ref() {
            len = len.saturating_add(data.len() as u64);
            if keep_body {
                buf.extend_from_slice(data);
            }
        }
    }

    let key = parts
        .headers
        .get(&shared.key_header)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut keys: Vec<String> = parts
        .headers
        .get_all(crate::http::KEYS_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect();
    if keys.is_empty()
        && let Some(k) = &key
    {
        keys.push(k.clone());
    }
    if let Mode::Paced { bytes_per_sec } = &*mode {
        let out = shared.pace(len, *bytes_per_sec);
        tokio::time::sleep_until(out).await;
    }
    let answer = match &*mode {
        Mode::Up | Mode::Slow(_) | Mode::Paced { .. } => Answer::Status(200),
        Mode::RateLimited { bytes_per_sec, .. } => {
            if shared.admit(len, *bytes_per_sec) {
                Answer::Status(200)
            } else {
                Answer::Status(429)
            }
        }
        Mode::RejectKeys(poison) => {
            if keys.iter().any(|k| poison.contains(k)) {
                Answer::Status(400)
            } else {
                Answer::Status(200)
            }
        }
        Mode::Status(s) => Answer::Status(*s),
        Mode::TooManyRequests { .. } => Answer::Status(429),
        Mode::Respond(c) => Answer::Status(c.status),
        Mode::Hang => Answer::Hung,
        Mode::ResetMidRequest | Mode::Down => Answer::Reset,
    };
    record(
        &shared,
        ReceivedRequest {
            seq: 0,
            connection,
            method: parts.method.clone(),
            path: parts
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            key,
            keys,
            headers: keep_body.then_some(parts.headers),
            body: keep_body.then(|| buf.freeze()),
            body_len: len,
            answer,
            received_at: std::time::Instant::now(),
        },
    );

    match &*mode {
        Mode::Up | Mode::Paced { .. } => Ok(Response::new(Full::new(Bytes::new()))),
        Mode::RateLimited { retry_after, .. } => match answer {
            Answer::Status(429) => {
                let mut resp = text_response(StatusCode::TOO_MANY_REQUESTS, "rate limited");
                if let Some(d) = retry_after {
                    resp.headers_mut()
                        .insert(RETRY_AFTER, HeaderValue::from(d.as_secs()));
                }
                Ok(resp)
            }
            _ => Ok(Response::new(Full::new(Bytes::new()))),
        },
        Mode::RejectKeys(_) => match answer {
            Answer::Status(400) => Ok(text_response(
                StatusCode::BAD_REQUEST,
                "outlast test receiver rejects a poison key",
            )),
            _ => Ok(Response::new(Full::new(Bytes::new()))),
        },
        Mode::Slow(d) => {
            tokio::time::sleep(*d).await;
            Ok(Response::new(Full::new(Bytes::new())))
        }
        Mode::Status(s) => {
            let status = StatusCode::from_u16(*s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Ok(text_response(
                status,
                &format!("outlast test receiver answers {s}"),
            ))
        }
        Mode::TooManyRequests { retry_after } => {
            let mut resp = text_response(StatusCode::TOO_MANY_REQUESTS, "slow down");
            if let Some(d) = retry_after {
                resp.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(d.as_secs()));
            }
            Ok(resp)
        }
        Mode::Respond(c) => {
            let mut resp = Response::new(Full::new(c.body.clone()));
            *resp.status_mut() =
                StatusCode::from_u16(c.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            for (k, v) in &c.headers {
                // Checked by `check_mode` when the mode was set.
                if let (Ok(k), Ok(v)) = (
                    HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(v),
                ) {
                    resp.headers_mut().append(k, v);
                }
            }
            Ok(resp)
        }
        Mode::Hang => std::future::pending().await,
        Mode::ResetMidRequest | Mode::Down => {
            reset.notify_one();
            std::future::pending().await
        }
    }
}

fn text_response(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::copy_from_slice(text.as_bytes())));
    *resp.status_mut() = status;
    resp
}

fn record(shared: &Shared, mut request: ReceivedRequest) {
    let mut log = shared.log();
    request.seq = log.records.len() as u64;
    log.bytes = log.bytes.saturating_add(request.body_len);
    if request.answer.is_accepted() {
        log.accepted += 1;
        for key in &request.keys {
            let n = log.counts.entry(key.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                log.unique.push(key.clone());
            } else {
                log.duplicates += 1;
            }
        }
    }
    let seq = request.seq;
    log.records.push(request);
    drop(log);
    shared.progress.send_replace(seq + 1);
}
