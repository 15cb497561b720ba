//! State shared by a client's handles and its drain task: the exporter, the spool, the
//! backlog and online flags, the counters, the wake-up signals and the log throttle.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use outlast_core::throttle::KeyedThrottle;
use outlast_core::{DynExporter, ExportError, Payload};
use outlast_spool::{AppendErrorKind, Durability, Spool, SpoolError, SpoolStats};
use tokio::sync::Notify;

use crate::config::{RecoverySettings, Settings};
use crate::stats::Counters;
use crate::{BackendState, Delivery, DropError, DropReason, SpoolFault};

/// Kinds of rate-limited log messages; each kind has its own budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum LogKind {
    /// "currently retrying N failed export(s) (B bytes)".
    Retrying,
    /// Payloads dropped for one reason.
    Dropped(DropReason),
    /// The drain task could not read or acknowledge the spool.
    SpoolTrouble,
    /// The spool could not be synced at the end of a flush.
    FlushSync,
}

/// The throttle and what the last drop message of each reason reported.
#[derive(Debug)]
struct Logs {
    throttle: KeyedThrottle<LogKind>,
    drops_reported: [u64; 8],
}

fn reason_index(reason: DropReason) -> usize {
    match reason {
        DropReason::SpoolFull => 0,
        DropReason::Permanent => 1,
        DropReason::SpoolUnavailable => 2,
        DropReason::ShutDown => 3,
        DropReason::TooLarge => 4,
        DropReason::Expired => 5,
        DropReason::Evicted => 6,
        DropReason::Corrupt => 7,
    }
}

/// Bit 0 of [`Shared::backlog`]: a backlog exists. The other bits count appends.
const BACKLOG_BIT: u64 = 1;
/// What one append adds to [`Shared::backlog`].
const ONE_APPEND: u64 = 2;

pub(crate) struct Shared {
    pub(crate) exporter: Arc<dyn DynExporter>,
    /// The exporter bounds every export within this time itself (see
    /// `Exporter::export_timeout`), if it does.
    exporter_timeout: Option<Duration>,
    pub(crate) settings: Settings,
    pub(crate) recovery: RecoverySettings,
    spool: RwLock<Option<Arc<Spool>>>,
    /// Why the spool could not be opened, if it could not.
    open_error: Option<Arc<SpoolError>>,
    pub(crate) counters: Counters,
    /// Backlog flag (bit 0) and append counter (bits 1..): the drain task clears the flag
    /// only if no append happened since it found the spool empty (one compare-and-swap).
    backlog: AtomicU64,
    /// A [`BackendState`] (see `state_code`): online, or why not.
    backend: AtomicU8,
    /// What the last failed attempt said about the backend (a [`BackendState`] code): the
    /// state the client goes to when it decides the backend is down.
    last_failure: AtomicU8,
    accepting: AtomicBool,
    /// Set once the drain task has been stopped by shutdown.
    pub(crate) stopped: AtomicBool,
    /// Direct exports under way (a flush waits for them too).
    direct_in_flight: AtomicUsize,
    /// Incremented by every `force_flush`: the drain task skips its backoff wait when it sees
    /// a value it has not acted on.
    pub(crate) flush_epoch: AtomicU64,
    /// New records were appended: wakes an idle drain task.
    pub(crate) work: Notify,
    /// A flush was requested: wakes a drain task waiting out its backoff.
    pub(crate) flush_now: Notify,
    /// Something a flush waits for changed (backlog gone, direct export finished, batch done).
    pub(crate) progress: Notify,
    /// The highest flush epoch whose attempt failed: a flush that sees its own epoch here
    /// knows the drain task tried for it.
    failed_epoch: AtomicU64,
    /// When the drain task will next try (probe or attempt), while it waits.
    next_attempt_at: Mutex<Option<tokio::time::Instant>>,
    /// Acknowledgements the spool refused (the records are delivered again later).
    pub(crate) ack_failures: AtomicU64,
    /// The `Retry-After` of the direct failure that created the backlog, for the drain task's
    /// first delay.
    retry_after_hint: Mutex<Option<Duration>>,
    logs: Mutex<Logs>,
    /// Spool gauges at the moment it was closed, for stats after shutdown.
    closed_stats: Mutex<Option<SpoolStats>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("spool_dir", &self.settings.spool.root())
            .field("spool_available", &self.spool_available())
            .field("backlog", &self.has_backlog())
            .field("backend", &self.backend_state())
            .field("accepting", &self.is_accepting())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while these locks are held; if something did, the data is still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_std() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// `start + d`, saturated: a `d` too large for an `Instant` (e.g. `Duration::MAX`, "no
/// limit") gives a deadline about 30 years away, which no timer reaches.
pub(crate) fn deadline_after(start: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    const FAR: [Duration; 3] = [
        Duration::from_secs(30 * 365 * 24 * 3600),
        Duration::from_secs(24 * 3600),
        Duration::from_secs(1),
    ];
    start
        .checked_add(d)
        .or_else(|| FAR.iter().find_map(|far| start.checked_add(*far)))
        .unwrap_or(start)
}

impl Shared {
    pub(crate) fn new(
        exporter: Arc<dyn DynExporter>,
        settings: Settings,
        recovery: RecoverySettings,
        spool: Option<Arc<Spool>>,
        open_error: Option<Arc<SpoolError>>,
        backlog: bool,
    ) -> Shared {
        let warn_interval = settings.warn_interval;
        let exporter_timeout = exporter.export_timeout_dyn();
        Shared {
            exporter,
            exporter_timeout,
            settings,
            recovery,
            spool: RwLock::new(spool),
            open_error,
            counters: Counters::default(),
            backlog: AtomicU64::new(if backlog { BACKLOG_BIT } else { 0 }),
            backend: AtomicU8::new(state_code(BackendState::Online)),
            last_failure: AtomicU8::new(state_code(BackendState::Offline)),
            accepting: AtomicBool::new(true),
            stopped: AtomicBool::new(false),
            direct_in_flight: AtomicUsize::new(0),
            flush_epoch: AtomicU64::new(0),
            work: Notify::new(),
            flush_now: Notify::new(),
            progress: Notify::new(),
            failed_epoch: AtomicU64::new(0),
            next_attempt_at: Mutex::new(None),
            ack_failures: AtomicU64::new(0),
            retry_after_hint: Mutex::new(None),
            logs: Mutex::new(Logs {
                throttle: KeyedThrottle::new(warn_interval),
                drops_reported: [0; 8],
            }),
            closed_stats: Mutex::new(None),
        }
    }

    // ----- spool access -----

    /// The spool, if it is open.
    pub(crate) fn spool(&self) -> Option<Arc<Spool>> {
        self.spool
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn spool_available(&self) -> bool {
        self.spool
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Whether spool calls are made inline (page-cache writes in `OsWrite` mode) rather than
    /// on the blocking pool (`FsyncEveryAppend` mode waits for the disk).
    pub(crate) fn spool_calls_inline(&self) -> bool {
        matches!(self.settings.durability, Durability::OsWrite { .. })
    }

    /// Current spool gauges: live, or as they were when the spool was closed.
    pub(crate) fn spool_stats(&self) -> Option<SpoolStats> {
        match self.spool() {
            Some(s) => Some(s.stats()),
            None => lock(&self.closed_stats).clone(),
        }
    }

    /// Takes the spool out (no new appends or reads can start), syncs it and closes it.
    /// If an export still holds it, it is synced and released when that export finishes.
    pub(crate) fn close_spool(&self) -> Result<(), SpoolError> {
        let taken = self
            .spool
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(spool) = taken else {
            return Ok(());
        };
        *lock(&self.closed_stats) = Some(spool.stats());
        match Arc::try_unwrap(spool) {
            Ok(spool) => spool.close(),
            Err(shared) => shared.sync(),
        }
    }

    // ----- state flags -----

    pub(crate) fn has_backlog(&self) -> bool {
        self.backlog.load(Ordering::Acquire) & BACKLOG_BIT != 0
    }

    /// A value to hand to [`try_clear_backlog`](Self::try_clear_backlog) after finding the
    /// spool empty. Taken *before* reading the spool.
    pub(crate) fn backlog_snapshot(&self) -> u64 {
        self.backlog.load(Ordering::Acquire)
    }

    /// Clears the backlog flag unless an append happened since `snapshot`.
    pub(crate) fn try_clear_backlog(&self, snapshot: u64) -> bool {
        snapshot & BACKLOG_BIT != 0
            && self
                .backlog
                .compare_exchange(
                    snapshot,
                    snapshot & !BACKLOG_BIT,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    /// Records that an append completed: a backlog exists now.
    fn mark_appended(&self) {
        // Count first, then flag: a drain task that took its snapshot before this append
        // sees the count change and does not clear the flag.
        self.backlog.fetch_add(ONE_APPEND, Ordering::AcqRel);
        self.backlog.fetch_or(BACKLOG_BIT, Ordering::AcqRel);
        self.work.notify_one();
    }

    pub(crate) fn is_online(&self) -> bool {
        self.backend_state() == BackendState::Online
    }

    /// Online, or why not.
    pub(crate) fn backend_state(&self) -> BackendState {
        state_from_code(self.backend.load(Ordering::Acquire))
    }

    /// Sets the online flag; going offline takes the state the last failed attempt showed
    /// (unreachable, failing, or unclassified). A change is logged at info level.
    pub(crate) fn set_online(&self, online: bool) {
        let state = if online {
            BackendState::Online
        } else {
            state_from_code(self.last_failure.load(Ordering::Acquire))
        };
        self.set_backend_state(state);
    }

    /// Sets the backend's state; a change is logged at info level.
    pub(crate) fn set_backend_state(&self, state: BackendState) {
        let before = state_from_code(self.backend.swap(state_code(state), Ordering::AcqRel));
        if before == state {
            return;
        }
        if state == BackendState::Online {
            tracing::info!(
                online = true,
                backend = state.as_str(),
                "outlast: backend reachable again"
            );
        } else {
            let (records, bytes) = self.spool_stats().map_or((0, 0), |s| (s.records, s.bytes));
            tracing::info!(
                online = false,
                backend = state.as_str(),
                spool_records = records,
                spool_bytes = bytes,
                "outlast: backend {}; payloads go to the spool",
                state.describe()
            );
        }
    }

    /// Remembers what a failed attempt said about the backend.
    pub(crate) fn note_failure(&self, error: &ExportError) {
        let state = classify(error);
        self.last_failure
            .store(state_code(state), Ordering::Release);
    }

    /// Records that the drain task's attempt for flush `epoch` (or a later one) failed.
    pub(crate) fn answer_flush(&self, epoch: u64) {
        self.failed_epoch.fetch_max(epoch, Ordering::AcqRel);
        self.progress.notify_waiters();
    }

    /// Whether the drain task tried for flush `epoch` and found the backend unreachable at
    /// the transport level: nothing more can be done before the next probe.
    pub(crate) fn offline_for(&self, epoch: u64) -> bool {
        self.failed_epoch.load(Ordering::Acquire) >= epoch
            && self.backend_state() == BackendState::Unreachable
    }

    /// Publishes when the drain task tries next (`None`: it is not waiting).
    pub(crate) fn set_next_attempt_at(&self, at: Option<tokio::time::Instant>) {
        *lock(&self.next_attempt_at) = at;
    }

    /// How long until the drain task tries next, if it is waiting.
    pub(crate) fn next_attempt_in(&self) -> Option<Duration> {
        lock(&self.next_attempt_at)
            .map(|at| at.saturating_duration_since(tokio::time::Instant::now()))
    }

    /// Sets the backlog flag after records appeared in the spool without an append (lanes
    /// adopted from another process), and wakes the drain task.
    pub(crate) fn mark_adopted(&self) {
        self.mark_appended();
    }

    pub(crate) fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
    }

    pub(crate) fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::Release);
    }

    pub(crate) fn set_retry_after_hint(&self, hint: Option<Duration>) {
        *lock(&self.retry_after_hint) = hint;
    }

    pub(crate) fn take_retry_after_hint(&self) -> Option<Duration> {
        lock(&self.retry_after_hint).take()
    }

    /// Whether there is nothing left to deliver and nothing under way.
    pub(crate) fn is_drained(&self) -> bool {
        !self.has_backlog() && self.direct_in_flight.load(Ordering::Acquire) == 0
    }

    pub(crate) fn enter_direct(&self) -> DirectGuard<'_> {
        self.direct_in_flight.fetch_add(1, Ordering::AcqRel);
        DirectGuard(self)
    }

    // ----- export attempts -----

    /// One export attempt bounded by the attempt timeout.
    pub(crate) async fn attempt(&self, payload: &Payload) -> Result<(), ExportError> {
        self.attempt_by(payload, None).await.0
    }

    /// One export attempt bounded by the attempt timeout and by `deadline`. The flag is true
    /// when the attempt was cut short by the deadline (not by the attempt timeout): its
    /// failure then says nothing about the backend and is not remembered.
    pub(crate) async fn attempt_by(
        &self,
        payload: &Payload,
        deadline: Option<tokio::time::Instant>,
    ) -> (Result<(), ExportError>, bool) {
        let mut limit = self.settings.attempt_timeout;
        let mut cut = false;
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(tokio::time::Instant::now());
            if left < limit {
                limit = left;
                cut = true;
            }
        }
        let result = if self.exporter_timeout.is_some_and(|t| t <= limit) {
            // The exporter's own timeout is not longer than ours (see `Exporter::export_timeout`).
            self.exporter.export_boxed(payload).await
        } else {
            match tokio::time::timeout(limit, self.exporter.export_boxed(payload)).await {
                Ok(result) => result,
                Err(_) => Err(ExportError::Timeout { after: limit }),
            }
        };
        let cut_short = cut && matches!(result, Err(ExportError::Timeout { .. }));
        if let Err(e) = &result
            && !cut_short
        {
            self.note_failure(e);
        }
        (result, cut_short)
    }

    // ----- spooling -----

    /// Takes over released lanes of this client's identity and marks a backlog if any were
    /// adopted. A directory listing and a non-blocking lock attempt per lane: inline in
    /// `OsWrite` mode, as the spool's other quick calls, so that no spool handle outlives the
    /// client on the blocking pool; on the blocking pool in `FsyncEveryAppend` mode.
    pub(crate) async fn adopt_released_on(&self, spool: Arc<Spool>) {
        let adopted = if self.spool_calls_inline() {
            Some(spool.adopt_released())
        } else {
            match tokio::task::spawn_blocking(move || spool.adopt_released()).await {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::error!(error = %e, "outlast: spool task failed");
                    None
                }
            }
        };
        match adopted {
            Some(Ok(0)) | None => {}
            Some(Ok(n)) => {
                tracing::info!(
                    lanes = n,
                    "outlast: adopted spool lanes released by another process"
                );
                self.mark_adopted();
            }
            Some(Err(e)) => self.warn_spool_trouble("adopt", &e),
        }
    }

    /// Appends `payload` to `spool` and does the bookkeeping (counters, backlog flag, wake the
    /// drain task). Synchronous, so it also completes when run on the blocking pool for an
    /// export whose future was dropped.
    #[allow(
        clippy::result_large_err,
        reason = "the error hands the payload back; boxing it is a change to DropError"
    )]
    pub(crate) fn append_to(&self, spool: &Spool, payload: Payload) -> Result<Delivery, DropError> {
        // Stored gzipped when that pays; an error hands back the payload as it was given.
        let (stored, original) = crate::compress::stored_form(payload);
        match spool.append(stored) {
            Ok(appended) => {
                Counters::bump(&self.counters.spooled);
                if appended.evicted.records > 0 {
                    self.record_drop(DropReason::Evicted, appended.evicted.records);
                }
                self.mark_appended();
                Ok(Delivery::Spooled)
            }
            Err(e) => {
                let payload = original.unwrap_or(e.payload);
                let err = match e.kind {
                    AppendErrorKind::Full { max_total_bytes } => DropError::SpoolFull {
                        payload,
                        max_total_bytes,
                    },
                    AppendErrorKind::TooLarge { size, max } => {
                        DropError::TooLarge { payload, size, max }
                    }
                    AppendErrorKind::Io(io) => DropError::SpoolUnavailable {
                        payload,
                        source: SpoolFault::Write(io),
                    },
                    AppendErrorKind::Closed => DropError::ShutDown { payload },
                    // The spool's error kinds are non-exhaustive: a kind added later is still
                    // a spool that cannot take the payload.
                    other => DropError::SpoolUnavailable {
                        payload,
                        source: SpoolFault::Write(std::io::Error::other(other.to_string())),
                    },
                };
                self.record_drop(err.reason(), 1);
                Err(err)
            }
        }
    }

    /// The error for a payload that needs the spool when there is none.
    pub(crate) fn no_spool(&self, payload: Payload) -> DropError {
        let err = match &self.open_error {
            Some(e) if self.is_accepting() => DropError::SpoolUnavailable {
                payload,
                source: SpoolFault::Open(Arc::clone(e)),
            },
            // No open error: the spool was closed by shutdown.
            _ => DropError::ShutDown { payload },
        };
        self.record_drop(err.reason(), 1);
        err
    }

    // ----- logging -----

    /// Counts `n` drops for `reason` and logs them at error level, rate-limited per reason.
    pub(crate) fn record_drop(&self, reason: DropReason, n: u64) {
        if n == 0 {
            return;
        }
        self.counters.add_dropped(reason, n);
        let total = self.counters.dropped().get(reason);
        let mut logs = lock(&self.logs);
        if logs
            .throttle
            .check(LogKind::Dropped(reason), now_std())
            .is_some()
        {
            let since_last = total - logs.drops_reported[reason_index(reason)];
            logs.drops_reported[reason_index(reason)] = total;
            drop(logs);
            tracing::error!(
                reason = reason.as_str(),
                dropped = since_last,
                dropped_total = total,
                "outlast: dropped {since_last} payload(s) ({reason}); {total} dropped for this reason since start"
            );
        }
    }

    /// Logs that exports are being retried, at most once per warn interval.
    pub(crate) fn warn_retrying(&self, delay: Duration, next_probe: Option<Duration>) {
        let due = lock(&self.logs)
            .throttle
            .check(LogKind::Retrying, now_std())
            .is_some();
        if due {
            let (n, b) = self
                .spool_stats()
                .map_or((0, 0), |s| (s.records, s.pending_bytes));
            let state = self.backend_state();
            let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            tracing::warn!(
                records = n,
                bytes = b,
                backend = state.as_str(),
                next_attempt_in_ms = ms(delay),
                next_probe_in_ms = next_probe.map(ms),
                "currently retrying {n} failed export(s) ({b} bytes)"
            );
        }
    }

    /// Logs that the spool could not be synced at the end of a flush, rate-limited. Nothing
    /// retries it: the data is still written to the OS, and the next periodic sync, flush or
    /// shutdown tries again.
    pub(crate) fn warn_flush_sync(&self, error: &SpoolError) {
        let due = lock(&self.logs)
            .throttle
            .check(LogKind::FlushSync, now_std())
            .is_some();
        if due {
            tracing::warn!(error = %error, "outlast: spool sync at the end of a flush failed; written data is still with the OS, the next sync tries again");
        }
    }

    /// Logs a spool read or acknowledgement failure, rate-limited.
    pub(crate) fn warn_spool_trouble(&self, what: &'static str, error: &SpoolError) {
        let due = lock(&self.logs)
            .throttle
            .check(LogKind::SpoolTrouble, now_std())
            .is_some();
        if what == "ack" {
            self.ack_failures.fetch_add(1, Ordering::AcqRel);
        }
        if due {
            tracing::warn!(operation = what, error = %error, "outlast: spool {what} failed; retrying with backoff");
        }
    }
}

/// The code of `state` in [`Shared`]'s atomics.
fn state_code(state: BackendState) -> u8 {
    match state {
        BackendState::Online => 0,
        BackendState::Unreachable => 1,
        BackendState::Failing => 2,
        BackendState::Offline => 3,
    }
}

fn state_from_code(code: u8) -> BackendState {
    match code {
        0 => BackendState::Online,
        1 => BackendState::Unreachable,
        2 => BackendState::Failing,
        _ => BackendState::Offline,
    }
}

/// What a failed attempt says about the backend:
///
/// - [`BackendState::Unreachable`]: no answer at the transport level. An attempt that timed
///   out; an [`HttpError`](crate::http::HttpError) that is a connect, transport or timeout
///   failure; an I/O error (anywhere in the source chain) whose kind is a refused, reset,
///   aborted or unreachable connection, a timeout or a broken pipe.
/// - [`BackendState::Failing`]: the backend answered with a failure: an HTTP status or an
///   invalid response, or any error that carries a `Retry-After`.
/// - [`BackendState::Offline`]: nothing says which (an exporter's own error type).
pub(crate) fn classify(error: &ExportError) -> BackendState {
    use std::io::ErrorKind;
    if error.is_timeout() {
        return BackendState::Unreachable;
    }
    if error.retry_after().is_some() {
        return BackendState::Failing;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = cause {
        if let Some(h) = e.downcast_ref::<crate::http::HttpError>() {
            if h.is_connect() || h.is_transport() || h.is_timeout() {
                return BackendState::Unreachable;
            }
            if h.is_status() || h.is_invalid_response() {
                return BackendState::Failing;
            }
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::NotConnected
                    | ErrorKind::TimedOut
                    | ErrorKind::BrokenPipe
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable
                    | ErrorKind::AddrNotAvailable
                    | ErrorKind::UnexpectedEof
            )
        {
            return BackendState::Unreachable;
        }
        cause = e.source();
    }
    BackendState::Offline
}

/// Counts a direct export as under way until dropped, then wakes flush waiters.
pub(crate) struct DirectGuard<'a>(&'a Shared);

impl Drop for DirectGuard<'_> {
    fn drop(&mut self) {
        self.0.direct_in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.progress.notify_waiters();
    }
}
