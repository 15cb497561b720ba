//! A scriptable in-memory exporter for tests: it accepts, fails, throttles, rejects or hangs
//! on command, and records what it received.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use outlast_core::{Coalescing, ExportError, Exporter, Payload, Reachability};

/// What the [`MemoryExporter`] does with one export attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Accept the payload: it is appended to [`MemoryExporter::received`].
    Accept,
    /// Fail with a retryable error (as a refused connection would).
    Fail,
    /// Fail with a retryable error carrying this `Retry-After` (as an HTTP 429 would).
    Throttle(Duration),
    /// Reject the payload permanently (as an HTTP 400 would).
    Reject,
    /// Never answer: the attempt stays pending until the pipeline's timeout drops it.
    Hang,
    /// Wait this long (on the Tokio clock), then accept.
    SlowAccept(Duration),
}

/// How [`MemoryExporter`] answers [`Exporter::probe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ProbeMode {
    /// No probe: answers [`Reachability::Unsupported`] (the trait's default). The default.
    #[default]
    Unsupported,
    /// Reachable when the current mode would accept, unreachable otherwise.
    FollowMode,
    /// Always this answer.
    Fixed(Reachability),
}

type Predicate = Arc<dyn Fn(&Payload) -> bool + Send + Sync>;

struct State {
    script: VecDeque<Outcome>,
    mode: Outcome,
    received: Vec<Payload>,
    reject_if: Option<Predicate>,
    probe: ProbeMode,
    attempt_times: Vec<tokio::time::Instant>,
    coalescing: Option<Coalescing>,
    /// Whether gzip-encoded payloads are taken as they are.
    accepts_gzip: bool,
    /// Payloads carried by each attempt, in the order they started.
    call_sizes: Vec<usize>,
}

struct Inner {
    state: Mutex<State>,
    attempts: AtomicU64,
    probes: AtomicU64,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    shutdown_called: AtomicBool,
}

/// An [`Exporter`] that keeps payloads in memory and can be told to fail.
///
/// Each attempt takes the next outcome of the script ([`push_outcomes`](Self::push_outcomes)),
/// or the current [`mode`](Self::set_mode) when the script is empty. Payloads matched by
/// [`reject_if`](Self::reject_if) are rejected permanently whatever the script says (poison
/// records). Clones share their state, so a test keeps one clone and hands the other to the
/// client.
///
/// # Examples
///
/// ```
/// use outlast_client::testing::{MemoryExporter, Outcome};
/// use outlast_client::{Exporter, Payload};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let exporter = MemoryExporter::new();
/// exporter.push_outcomes([Outcome::Fail]);
/// let p = Payload::new(&b"hello"[..]);
/// assert!(exporter.export(&p).await.is_err()); // scripted failure
/// assert!(exporter.export(&p).await.is_ok()); // default mode: accept
/// assert_eq!(exporter.received().len(), 1);
/// assert_eq!(exporter.attempts(), 2);
/// # });
/// ```
#[derive(Clone)]
pub struct MemoryExporter {
    inner: Arc<Inner>,
}

impl fmt::Debug for MemoryExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("MemoryExporter")
            .field("mode", &state.mode)
            .field("scripted", &state.script.len())
            .field("received", &state.received.len())
            .field("attempts", &self.attempts())
            .finish_non_exhaustive()
    }
}

impl Default for MemoryExporter {
    fn default() -> Self {
        MemoryExporter::new()
    }
}

/// The error source of the exporter's scripted failures.
#[derive(Debug, thiserror::Error)]
#[error("memory exporter: scripted {0}")]
struct Scripted(&'static str);

impl MemoryExporter {
    /// An exporter that accepts everything, one request at a time, without a probe.
    pub fn new() -> MemoryExporter {
        MemoryExporter {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    script: VecDeque::new(),
                    mode: Outcome::Accept,
                    received: Vec::new(),
                    reject_if: None,
                    probe: ProbeMode::Unsupported,
                    attempt_times: Vec::new(),
                    coalescing: None,
                    accepts_gzip: false,
                    call_sizes: Vec::new(),
                }),
                attempts: AtomicU64::new(0),
                probes: AtomicU64::new(0),
                in_flight: AtomicUsize::new(0),
                peak_in_flight: AtomicUsize::new(0),
                max_in_flight: AtomicUsize::new(1),
                shutdown_called: AtomicBool::new(false),
            }),
        }
    }

    /// Sets how many requests the client may have in flight at once while replaying
    /// (what [`Exporter::max_in_flight`] answers).
    #[must_use]
    pub fn with_max_in_flight(self, n: usize) -> MemoryExporter {
        self.inner.max_in_flight.store(n, Ordering::SeqCst);
        self
    }

    /// Sets how [`Exporter::probe`] answers.
    #[must_use]
    pub fn with_probe(self, probe: ProbeMode) -> MemoryExporter {
        self.state().probe = probe;
        self
    }

    /// Lets the client merge consecutive spooled payloads into one
    /// [`export_many`](Exporter::export_many) call during replay, up to these caps (what
    /// [`Exporter::coalescing`] answers for every payload). A merged call is one attempt:
    /// it takes one outcome, and is rejected if any of its payloads matches
    /// [`reject_if`](Self::reject_if). Default: never merged.
    #[must_use]
    pub fn with_coalescing(self, caps: Coalescing) -> MemoryExporter {
        self.state().coalescing = Some(caps);
        self
    }

    /// Takes gzip-encoded payloads as they are (what [`Exporter::accepts_encoding`]
    /// answers for gzip): the client then hands it records it stored gzipped without
    /// decompressing them. Default: identity only.
    #[must_use]
    pub fn with_gzip(self) -> MemoryExporter {
        self.state().accepts_gzip = true;
        self
    }

    /// How many payloads each attempt carried, in the order the attempts started: 1 for
    /// `export`, more for a merged `export_many`.
    pub fn call_sizes(&self) -> Vec<usize> {
        self.state().call_sizes.clone()
    }

    /// Sets the outcome of every attempt once the script is used up.
    pub fn set_mode(&self, mode: Outcome) {
        self.state().mode = mode;
    }

    /// The outcome of attempts once the script is used up.
    pub fn mode(&self) -> Outcome {
        self.state().mode.clone()
    }

    /// Appends outcomes to the script: the next attempts take them in order.
    pub fn push_outcomes(&self, outcomes: impl IntoIterator<Item = Outcome>) {
        self.state().script.extend(outcomes);
    }

    /// Rejects permanently every payload for which `predicate` is true (a poison record),
    /// without consuming the script.
    pub fn reject_if(&self, predicate: impl Fn(&Payload) -> bool + Send + Sync + 'static) {
        self.state().reject_if = Some(Arc::new(predicate));
    }

    /// The payloads accepted so far, in the order they were accepted.
    pub fn received(&self) -> Vec<Payload> {
        self.state().received.clone()
    }

    /// The bytes of the payloads accepted so far, in order (convenient for assertions).
    pub fn received_bytes(&self) -> Vec<Vec<u8>> {
        self.state()
            .received
            .iter()
            .map(|p| p.bytes().to_vec())
            .collect()
    }

    /// How many export attempts were made, whatever their outcome.
    pub fn attempts(&self) -> u64 {
        self.inner.attempts.load(Ordering::SeqCst)
    }

    /// When each export attempt started, on the Tokio clock (which a paused test controls).
    pub fn attempt_times(&self) -> Vec<tokio::time::Instant> {
        self.state().attempt_times.clone()
    }

    /// How many probes were made.
    pub fn probes(&self) -> u64 {
        self.inner.probes.load(Ordering::SeqCst)
    }

    /// The most attempts that were ever in flight at the same time.
    pub fn peak_in_flight(&self) -> usize {
        self.inner.peak_in_flight.load(Ordering::SeqCst)
    }

    /// Whether [`Exporter::shutdown`] was called.
    pub fn shutdown_called(&self) -> bool {
        self.inner.shutdown_called.load(Ordering::SeqCst)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock must not hide its own failure behind a
        // poison error here: the state is still consistent (every update is one statement).
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn next_outcome(&self, payloads: &[Payload]) -> Outcome {
        let mut state = self.state();
        state.call_sizes.push(payloads.len());
        if let Some(f) = &state.reject_if
            && payloads.iter().any(|p| f(p))
        {
            return Outcome::Reject;
        }
        match state.script.pop_front() {
            Some(o) => o,
            None => state.mode.clone(),
        }
    }

    /// One attempt carrying `payloads` (one request, whatever their number).
    async fn attempt(&self, payloads: &[Payload]) -> Result<(), ExportError> {
        self.inner.attempts.fetch_add(1, Ordering::SeqCst);
        self.state().attempt_times.push(tokio::time::Instant::now());
        let _in_flight = InFlight::enter(&self.inner);
        // The outcome is decided, and accepted payloads received, when the attempt starts,
        // as a backend receives a request when it arrives: attempts started in some order
        // take the script in that order, whatever order they are resumed in later.
        let outcome = self.next_outcome(payloads);
        if outcome == Outcome::Accept {
            self.state().received.extend_from_slice(payloads);
        }
        // Let other attempts start before this one resolves, so pipelining shows.
        tokio::task::yield_now().await;
        match outcome {
            Outcome::Accept => Ok(()),
            Outcome::SlowAccept(d) => {
                tokio::time::sleep(d).await;
                self.state().received.extend_from_slice(payloads);
                Ok(())
            }
            Outcome::Fail => Err(ExportError::retryable(Scripted("failure"))),
            Outcome::Throttle(d) => Err(ExportError::retryable_after(Scripted("throttle"), d)),
            Outcome::Reject => Err(ExportError::permanent(Scripted("rejection"))),
            Outcome::Hang => std::future::pending().await,
        }
    }
}

/// Counts an attempt in flight for as long as it lives (also when its future is dropped).
struct InFlight<'a>(&'a Inner);

impl<'a> InFlight<'a> {
    fn enter(inner: &'a Inner) -> InFlight<'a> {
        let now = inner.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        inner.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(inner)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Exporter for MemoryExporter {
    async fn export(&self, payload: &Payload) -> Result<(), ExportError> {
        self.attempt(std::slice::from_ref(payload)).await
    }

    fn accepts_encoding(&self, encoding: outlast_core::ContentEncoding) -> bool {
        encoding == outlast_core::ContentEncoding::Identity
            || (encoding == outlast_core::ContentEncoding::Gzip && self.state().accepts_gzip)
    }

    fn coalescing(&self, _payload: &Payload) -> Option<Coalescing> {
        self.state().coalescing
    }

    async fn export_many(&self, payloads: &[Payload]) -> Result<(), ExportError> {
        self.attempt(payloads).await
    }

    async fn probe(&self) -> Reachability {
        self.inner.probes.fetch_add(1, Ordering::SeqCst);
        let state = self.state();
        match state.probe {
            ProbeMode::Unsupported => Reachability::Unsupported,
            ProbeMode::Fixed(r) => r,
            ProbeMode::FollowMode => match state.mode {
                Outcome::Accept | Outcome::SlowAccept(_) => Reachability::Reachable,
                _ => Reachability::Unreachable,
            },
        }
    }

    fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight.load(Ordering::SeqCst)
    }

    async fn shutdown(&self) -> Result<(), ExportError> {
        self.inner.shutdown_called.store(true, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn script_comes_first_then_the_mode() {
        let e = MemoryExporter::new();
        e.push_outcomes([Outcome::Reject, Outcome::Throttle(Duration::from_secs(3))]);
        e.set_mode(Outcome::Fail);
        let p = Payload::new(&b"x"[..]);
        assert!(e.export(&p).await.expect_err("scripted").is_permanent());
        let t = e.export(&p).await.expect_err("scripted");
        assert_eq!(t.retry_after(), Some(Duration::from_secs(3)));
        assert!(e.export(&p).await.expect_err("mode").is_retryable());
        e.set_mode(Outcome::Accept);
        e.export(&p).await.expect("accepts");
        assert_eq!(e.attempts(), 4);
        assert_eq!(e.received_bytes(), vec![b"x".to_vec()]);
    }

    #[tokio::test]
    async fn poison_payloads_are_rejected_without_consuming_the_script() {
        let e = MemoryExporter::new();
        e.reject_if(|p| p.bytes().as_ref() == b"poison");
        e.push_outcomes([Outcome::Accept]);
        let poison = Payload::new(&b"poison"[..]);
        assert!(e.export(&poison).await.expect_err("poison").is_permanent());
        e.export(&Payload::new(&b"ok"[..])).await.expect("accepted");
        assert_eq!(e.received_bytes(), vec![b"ok".to_vec()]);
    }

    #[tokio::test]
    async fn probe_follows_the_mode_when_asked_to() {
        let e = MemoryExporter::new().with_probe(ProbeMode::FollowMode);
        e.set_mode(Outcome::Fail);
        assert_eq!(e.probe().await, Reachability::Unreachable);
        e.set_mode(Outcome::Accept);
        assert_eq!(e.probe().await, Reachability::Reachable);
        assert_eq!(e.probes(), 2);
        assert_eq!(
            MemoryExporter::new().probe().await,
            Reachability::Unsupported
        );
    }
}
