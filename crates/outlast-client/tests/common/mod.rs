//! Helpers shared by the client's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use outlast_client::http::{HttpError, HttpExporter, PayloadFraming};
use outlast_client::testing::{MemoryExporter, TestReceiver};
use outlast_client::{Client, ClientBuilder, ExportError, Exporter, Payload, Reachability};
use tokio::time::Instant;

/// A builder for a client on `dir` without jitter, so delays are exact.
pub fn builder(dir: &Path) -> ClientBuilder {
    Client::builder().spool_dir(dir).jitter(0.0)
}

/// A client on `dir` sending to `receiver` through an HTTP exporter with `framing` and
/// `gzip`, merging at most `max_records` spooled records per request, `in_flight` attempts
/// at a time; without jitter or pause before the quick retry.
pub fn http_client(
    dir: &Path,
    receiver: &TestReceiver,
    framing: PayloadFraming,
    gzip: bool,
    max_records: usize,
    in_flight: usize,
) -> Client {
    let exporter = HttpExporter::builder(receiver.url())
        .payload_framing(framing)
        .gzip(gzip)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("valid exporter");
    builder(dir)
        .immediate_retry_delay(Duration::ZERO)
        .coalesce_max_records(max_records)
        .max_in_flight(in_flight)
        .build(exporter)
        .expect("valid client")
}

/// A client on `dir` exporting to `exporter`, without jitter.
pub fn client(dir: &Path, exporter: &MemoryExporter) -> Client {
    builder(dir)
        .build(exporter.clone())
        .expect("valid configuration")
}

/// A spool configuration on `dir` with the identity a client gives the lanes it writes
/// through an exporter of type `E` (its type name, when neither the builder nor the exporter
/// names one), to open what such a client left.
pub fn spool_config_of<E>(dir: &Path) -> outlast_spool::SpoolConfig {
    outlast_spool::SpoolConfig::new(dir).with_identity(Some(std::any::type_name::<E>().to_owned()))
}

/// Payloads accounted for: delivered, dropped, or waiting in the spool.
pub fn accounted(s: &outlast_client::ClientStats) -> u64 {
    s.exported + s.replayed + s.dropped.total() + s.spool_records
}

/// A payload whose bytes are `text`.
pub fn payload(text: &str) -> Payload {
    Payload::new(text.as_bytes().to_vec())
}

/// The payloads' bytes as strings.
pub fn texts(e: &MemoryExporter) -> Vec<String> {
    e.received_bytes()
        .into_iter()
        .map(|b| String::from_utf8(b).expect("test payloads are text"))
        .collect()
}

/// A temporary directory for one test's spool.
pub fn spool_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("create a temporary directory")
}

/// Whether `d` is within a few milliseconds above `expected` (Tokio's timer has millisecond
/// resolution, so each sleep may end up to 1 ms late).
pub fn about(d: Duration, expected: Duration) -> bool {
    d >= expected && d <= expected + Duration::from_millis(20)
}

/// Whether the lock of lane `n` of the spool at `dir` is free right now.
pub fn lane_is_free(dir: &Path, n: u32) -> bool {
    let lock = dir.join(format!("lane-{n}")).join("lock");
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&lock)
    {
        Ok(file) => file.try_lock().is_ok(),
        Err(_) => true,
    }
}

/// Waits, in real time and at most 10 s, until no one holds the lock of lane `n` of the
/// spool at `dir`. A client dropped without `shutdown` releases its spool when its drain
/// task ends, which waits for a spool call it started on the blocking pool (an adoption of
/// released lanes) to return: the lock may outlive the drop by that call. The wait runs on
/// the blocking pool, so the runtime (even a current-thread one) goes on running the drain
/// task, and a paused clock does not advance meanwhile.
pub async fn lane_released(dir: &Path, n: u32) {
    let dir = dir.to_path_buf();
    let waited = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !lane_is_free(&dir, n) {
            if std::time::Instant::now() >= deadline {
                return Err(format!(
                    "lane {n} of {} still locked after 10 s",
                    dir.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    })
    .await
    .expect("the wait does not panic");
    if let Err(e) = waited {
        panic!("{e}");
    }
}

/// Records on disk in the spool at `dir` that no lane's cursor acknowledges (what the next
/// run finds waiting).
pub fn unacked_on_disk(dir: &Path) -> u64 {
    outlast_spool::inspect::scan(dir)
        .expect("scan the spool")
        .lanes
        .iter()
        .map(|l| l.unacked_records())
        .sum()
}

/// Lets spawned tasks run without advancing the (paused) clock.
pub async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// How a [`Backend`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendMode {
    /// Accepts every payload; probes get through.
    Up,
    /// Refuses connections: attempts fail with `ConnectionRefused`, probes fail.
    Refusing,
    /// Accepts connections (probes get through) but answers 503, with this `Retry-After`.
    Failing(Option<Duration>),
    /// Accepts connections (probes get through) and never answers.
    Hanging,
}

#[derive(Debug)]
struct BackendState {
    mode: BackendMode,
    received: Vec<Vec<u8>>,
    attempts: Vec<Instant>,
    probes: Vec<Instant>,
}

/// An exporter that fails the way a real backend does, at the transport level (refused) or
/// with an HTTP status (503), with a TCP-like probe: reachable unless refusing.
#[derive(Debug, Clone)]
pub struct Backend {
    state: Arc<Mutex<BackendState>>,
}

impl Backend {
    pub fn new(mode: BackendMode) -> Backend {
        Backend {
            state: Arc::new(Mutex::new(BackendState {
                mode,
                received: Vec::new(),
                attempts: Vec::new(),
                probes: Vec::new(),
            })),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BackendState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn set_mode(&self, mode: BackendMode) {
        self.state().mode = mode;
    }

    pub fn received(&self) -> Vec<String> {
        self.state()
            .received
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    /// When each export attempt started.
    pub fn attempts(&self) -> Vec<Instant> {
        self.state().attempts.clone()
    }

    /// When each probe was made.
    pub fn probes(&self) -> Vec<Instant> {
        self.state().probes.clone()
    }
}

impl Exporter for Backend {
    async fn export(&self, payload: &Payload) -> Result<(), ExportError> {
        let mode = {
            let mut s = self.state();
            s.attempts.push(Instant::now());
            s.mode
        };
        match mode {
            BackendMode::Up => {
                self.state().received.push(payload.bytes().to_vec());
                Ok(())
            }
            BackendMode::Refusing => Err(ExportError::retryable(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "connection refused",
            ))),
            BackendMode::Failing(retry_after) => {
                let e = HttpError::Status {
                    status: http::StatusCode::SERVICE_UNAVAILABLE,
                    body_excerpt: String::new(),
                };
                Err(e.into_export_error(retry_after))
            }
            BackendMode::Hanging => std::future::pending().await,
        }
    }

    async fn probe(&self) -> Reachability {
        let mut s = self.state();
        s.probes.push(Instant::now());
        if s.mode == BackendMode::Refusing {
            Reachability::Unreachable
        } else {
            Reachability::Reachable
        }
    }
}

/// `len` bytes that start with `first` and that gzip cannot shrink (so that they take
/// their size on disk).
pub fn incompressible(first: u8, len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(first);
    let mut v: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    if let Some(b) = v.first_mut() {
        *b = first;
    }
    v
}
