//! State shared by a client's handles and its drain task: the exporter, the spool, the
//! backlog and online flags, the counters, the wake-up signals and the log throttle.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use outlast_core::throttle::KeyedThrottle;
use outlast_core::{DynExporter, ExportError, Payload};
use outlast_spool::{AppendErrorKind, Durability, Spool, SpoolError, SpoolStats};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::config::{RecoverySettings, Settings};
use crate::pace::{DrainMeter, human_bytes, human_duration, human_rate, time_to_drain};
use crate::stats::{Counters, SpoolState};
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
    /// A spooled record's fsync failed (`FsyncEveryAppend` mode).
    NotDurable,
}

/// The throttle and what the last drop message of each reason reported.
#[derive(Debug)]
struct Logs {
    throttle: KeyedThrottle<LogKind>,
    drops_reported: [u64; DropReason::COUNT],
}

/// How much longer than the attempt timeout the client waits for an exporter that bounds
/// its own calls within it (`Exporter::export_timeout`): long enough for the exporter's own
/// timeout to fire first and report its own error, short enough that an exporter that does
/// not keep its promise holds an attempt only a moment longer.
pub(crate) const EXPORTER_TIMEOUT_GRACE: Duration = Duration::from_millis(100);

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
    /// Acknowledgements the spool refused (the records count as delivered all the same; see
    /// `ClientStats::ack_failures`).
    pub(crate) ack_failures: AtomicU64,
    /// Records in lanes of another identity when the spool opened (left alone).
    pub(crate) foreign_records: AtomicU64,
    /// The recent rate of bytes appended to the spool.
    spill_rate: Mutex<SpillRate>,
    /// The replay's recent deliveries, for the drain rate and the time left.
    drain_meter: Mutex<DrainMeter>,
    /// When the backend was last found down (`None` while online).
    offline_since: Mutex<Option<tokio::time::Instant>>,
    /// The backend came back with a backlog, before the drain rate was known: the drain
    /// rate is logged once it is.
    drain_report_due: AtomicBool,
    /// A direct export ended: wakes a replay that left it room in the in-flight limit
    /// (live-first).
    pub(crate) live_done: Notify,
    /// The `Retry-After` of the direct failure that created the backlog, for the drain task's
    /// first delay.
    retry_after_hint: Mutex<Option<Duration>>,
    logs: Mutex<Logs>,
    /// Spool gauges at the moment it was closed, for stats after shutdown.
    closed_stats: Mutex<Option<SpoolStats>>,
    /// Set once the spool taken out by a shutdown has been closed (or synced) without error,
    /// even after the shutdown stopped waiting for it.
    close_synced: Arc<AtomicBool>,
    /// The adoption of released lanes running on the blocking pool, if one is: one at a
    /// time, and kept here when its caller stops waiting (a flush's deadline) so that the
    /// next caller waits for it and counts its outcome.
    adoption: tokio::sync::Mutex<Option<JoinHandle<Result<usize, SpoolError>>>>,
    /// Spool calls running on the blocking pool that this module started (adoption, a
    /// flush's sync, an append in `FsyncEveryAppend` mode): the drain task waits for them as
    /// it stops.
    spool_calls: Arc<SpoolCalls>,
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
            foreign_records: AtomicU64::new(0),
            spill_rate: Mutex::new(SpillRate::default()),
            drain_meter: Mutex::new(DrainMeter::default()),
            offline_since: Mutex::new(None),
            drain_report_due: AtomicBool::new(backlog),
            live_done: Notify::new(),
            retry_after_hint: Mutex::new(None),
            logs: Mutex::new(Logs {
                throttle: KeyedThrottle::new(warn_interval),
                drops_reported: [0; DropReason::COUNT],
            }),
            closed_stats: Mutex::new(None),
            close_synced: Arc::default(),
            adoption: tokio::sync::Mutex::new(None),
            spool_calls: Arc::default(),
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

    /// The spool's state for [`ClientStats::spool`](crate::ClientStats::spool).
    pub(crate) fn spool_state(&self) -> SpoolState {
        match &self.open_error {
            _ if self.spool_available() => SpoolState::Available,
            Some(e) => SpoolState::Unavailable {
                reason: Arc::clone(e),
            },
            None => SpoolState::Closed,
        }
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

    /// Takes the spool out (no new appends or reads can start), and syncs and closes it on
    /// the blocking pool (joining its background thread and an fdatasync take as long as
    /// the disk does), waiting at most `limit`. If an export still holds it, it is synced,
    /// and released when that export finishes.
    ///
    /// `Ok(true)` once it is closed (or synced) within `limit`; `Ok(false)` if it did not
    /// finish in time: it goes on in the background and the spool's lock is released when
    /// it is done. Without a spool, `Ok(true)`.
    ///
    /// # Errors
    ///
    /// The spool's error if the sync or close failed within `limit`.
    pub(crate) async fn close_spool_within(&self, limit: Duration) -> Result<bool, SpoolError> {
        let Some(spool) = self.take_spool() else {
            return Ok(true);
        };
        let synced = Arc::clone(&self.close_synced);
        let close = tokio::task::spawn_blocking(move || {
            let result = close_or_sync(spool);
            synced.store(result.is_ok(), Ordering::Release);
            result
        });
        match tokio::time::timeout(limit, close).await {
            Ok(Ok(result)) => result.map(|()| true),
            // The blocking task panicked or was cancelled with the runtime: nothing known.
            Ok(Err(_)) => Ok(false),
            Err(_) => {
                tracing::warn!(
                    "outlast: closing the spool did not finish within the shutdown's time; it goes on in the background"
                );
                Ok(false)
            }
        }
    }

    /// Takes the spool out and closes it on the blocking pool without waiting (the last
    /// `Client` was dropped): the worker thread running the drain task never waits for the
    /// disk. Without a runtime to hand it to, it is closed here.
    pub(crate) fn release_spool_in_background(&self) {
        let Some(spool) = self.take_spool() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(move || {
                    if let Err(e) = close_or_sync(spool) {
                        tracing::warn!(error = %e, "outlast: closing the spool failed");
                    }
                });
            }
            Err(_) => {
                if let Err(e) = close_or_sync(spool) {
                    tracing::warn!(error = %e, "outlast: closing the spool failed");
                }
            }
        }
    }

    /// Whether the spool a shutdown took out has been closed (or synced) without error.
    pub(crate) fn close_synced(&self) -> bool {
        self.close_synced.load(Ordering::Acquire)
    }

    /// Takes the spool out of the shared state, keeping its gauges for `stats()`.
    fn take_spool(&self) -> Option<Arc<Spool>> {
        let spool = self
            .spool
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take()?;
        *lock(&self.closed_stats) = Some(spool.stats());
        Some(spool)
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
            self.log_recovered();
        } else {
            lock(&self.offline_since).get_or_insert_with(tokio::time::Instant::now);
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

    /// Logs that the backend is reachable again: after how long, and the backlog waiting
    /// (its size, its oldest record's age, and the drain rate and time left if measured;
    /// if not yet, they are logged once they are, by [`report_drain_rate`](Self::report_drain_rate)).
    fn log_recovered(&self) {
        let outage = lock(&self.offline_since).take().map(|at| at.elapsed());
        let spool = self.spool_stats().unwrap_or_default();
        let after = outage.map_or_else(String::new, |d| format!(" after {}", human_duration(d)));
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if spool.records == 0 {
            tracing::info!(
                online = true,
                backend = BackendState::Online.as_str(),
                outage_ms = outage.map(ms),
                "outlast: backend reachable again{after}"
            );
            return;
        }
        let oldest = self.oldest_record_age(&spool);
        let oldest_text =
            oldest.map_or_else(String::new, |d| format!(" (oldest {})", human_duration(d)));
        let drain = self.drain_progress(&spool);
        let drain_text = match drain {
            Some((rate, left)) => format!(", {}", describe_drain(rate, left)),
            None => {
                self.drain_report_due.store(true, Ordering::Release);
                String::new()
            }
        };
        tracing::info!(
            online = true,
            backend = BackendState::Online.as_str(),
            outage_ms = outage.map(ms),
            backlog_records = spool.records,
            backlog_bytes = spool.pending_bytes,
            oldest_record_age_ms = oldest.map(ms),
            drain_bytes_per_sec = drain.map(|(r, _)| r),
            drain_left_ms = drain.and_then(|(_, l)| l).map(ms),
            "outlast: backend reachable again{after}; backlog {}{oldest_text}{drain_text}",
            human_bytes(spool.pending_bytes)
        );
    }

    /// Counts payloads the replay delivered, for the drain rate.
    pub(crate) fn record_drained(&self, payloads: &[Payload]) {
        let bytes = payloads
            .iter()
            .fold(0u64, |n, p| n.saturating_add(p.len() as u64));
        lock(&self.drain_meter).record(now_std(), bytes, payloads.len() as u64);
    }

    /// The drain rate (payload bytes per second) and, at the recent record rate, the time
    /// left to deliver the backlog; `None` until measured (see [`DrainMeter::rate`]).
    pub(crate) fn drain_progress(&self, spool: &SpoolStats) -> Option<(u64, Option<Duration>)> {
        let rate = lock(&self.drain_meter).rate(now_std())?;
        Some((
            rate_per_sec(rate.bytes_per_sec),
            time_to_drain(spool.records, rate.records_per_sec),
        ))
    }

    /// The oldest waiting record's age.
    pub(crate) fn oldest_record_age(&self, spool: &SpoolStats) -> Option<Duration> {
        spool.oldest_created_at.map(|t| {
            std::time::SystemTime::now()
                .duration_since(t)
                .unwrap_or_default()
        })
    }

    /// Logs the drain rate and the time left once they are measured after the backend came
    /// back (once per recovery).
    pub(crate) fn report_drain_rate(&self) {
        if !self.drain_report_due.load(Ordering::Acquire) {
            return;
        }
        let spool = self.spool_stats().unwrap_or_default();
        let Some((rate, left)) = self.drain_progress(&spool) else {
            return;
        };
        if !self.drain_report_due.swap(false, Ordering::AcqRel) {
            return;
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        tracing::info!(
            backlog_records = spool.records,
            backlog_bytes = spool.pending_bytes,
            drain_bytes_per_sec = rate,
            drain_left_ms = left.map(ms),
            "outlast: backlog {} {}",
            human_bytes(spool.pending_bytes),
            describe_drain(rate, left)
        );
    }

    /// Direct exports under way.
    pub(crate) fn direct_in_flight(&self) -> usize {
        self.direct_in_flight.load(Ordering::Acquire)
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

    /// One export attempt bounded by the attempt timeout: one payload through `export`,
    /// several (merged) through `export_many`.
    pub(crate) async fn attempt(&self, payloads: &[Payload]) -> Result<(), ExportError> {
        self.attempt_by(payloads, None).await.0
    }

    /// One export attempt of `payloads` (one through `export`, several merged through
    /// `export_many`) bounded by the attempt timeout and by `deadline`. The flag is true
    /// when the attempt was cut short by the deadline (not by the attempt timeout): its
    /// failure then says nothing about the backend and is not remembered.
    pub(crate) async fn attempt_by(
        &self,
        payloads: &[Payload],
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
        let send = match payloads {
            [payload] => self.exporter.export_boxed(payload),
            merged => self.exporter.export_many_boxed(merged),
        };
        // The client's timer bounds every attempt, whatever the exporter declares: an
        // exporter that says it bounds its calls and then hangs must not hang `export` or
        // the replay. When its own bound is not longer than ours, ours waits a little longer
        // (not past a caller's deadline), so that the exporter's own timeout, with its own
        // error, is the one that normally ends the attempt.
        let timer = if !cut && self.exporter_timeout.is_some_and(|t| t <= limit) {
            limit.saturating_add(EXPORTER_TIMEOUT_GRACE)
        } else {
            limit
        };
        let result = match tokio::time::timeout(timer, send).await {
            Ok(result) => result,
            Err(_) => Err(ExportError::Timeout { after: timer }),
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

    /// Runs `f` on the blocking pool with `spool`, counted in [`Shared::spool_calls`] until
    /// it has returned and let `spool` go.
    pub(crate) fn spawn_spool_call<T: Send + 'static>(
        &self,
        spool: Arc<Spool>,
        f: impl FnOnce(&Spool) -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let running = self.spool_calls.start();
        tokio::task::spawn_blocking(move || {
            let v = f(&spool);
            drop(spool);
            drop(running);
            v
        })
    }

    /// Takes over released lanes of this client's identity and marks a backlog if any were
    /// adopted. [`Spool::adopt_released`] lists the lanes, try-locks them and recovers each
    /// one it takes (it reads their segments): it runs on the blocking pool, one call at a
    /// time. Returns once the call (and any earlier one still running) has finished.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a call that was started keeps running and stays in [`Shared::adoption`];
    /// the next caller (the idle drain task within a second, or the next flush) waits for it
    /// and marks the backlog if it adopted lanes. A stopping drain task waits for it too
    /// ([`Shared::wait_for_spool_calls`]).
    pub(crate) async fn adopt_released(&self, spool: Arc<Spool>) {
        let mut slot = self.adoption.lock().await;
        if let Some(earlier) = slot.as_mut() {
            let joined = earlier.await;
            *slot = None;
            self.on_adopted(joined);
        }
        let call = slot.insert(self.spawn_spool_call(spool, Spool::adopt_released));
        let joined = call.await;
        *slot = None;
        self.on_adopted(joined);
    }

    /// Waits, at most `limit`, until no spool call started through
    /// [`spawn_spool_call`](Shared::spawn_spool_call) is running: once they have returned,
    /// they hold no spool handle any more.
    pub(crate) async fn wait_for_spool_calls(&self, limit: Duration) {
        if tokio::time::timeout(limit, self.spool_calls.idle())
            .await
            .is_err()
        {
            tracing::debug!(
                "outlast: a spool call is still running; it releases the spool when it returns"
            );
        }
    }

    /// The bookkeeping of an adoption: logs, and marks a backlog if lanes were adopted.
    fn on_adopted(&self, joined: Result<Result<usize, SpoolError>, tokio::task::JoinError>) {
        let adopted = match joined {
            Ok(adopted) => adopted,
            Err(e) => {
                tracing::error!(error = %e, "outlast: spool task failed");
                return;
            }
        };
        match adopted {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(
                    lanes = n,
                    "outlast: adopted spool lanes released by another process"
                );
                self.mark_adopted();
            }
            Err(e) => self.warn_spool_trouble("adopt", &e),
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
        // What the spool's fill grows by: the stored (possibly compressed) bytes.
        let len = u64::try_from(stored.len()).unwrap_or(u64::MAX);
        match spool.append(stored) {
            Ok(appended) => {
                lock(&self.spill_rate).record(now_std(), len);
                Counters::bump(&self.counters.spooled);
                if let Some(e) = &appended.sync_error {
                    // Written, indexed and going to be replayed: spooled, not dropped; only
                    // not yet safe from a power loss. Counted, and the drain task told.
                    self.warn_not_durable(e);
                }
                if appended.evicted.records > 0 {
                    self.record_drop(DropReason::Evicted, appended.evicted.records);
                }
                self.mark_appended();
                Ok(Delivery::Spooled)
            }
            Err(e) => {
                let payload = original.unwrap_or(e.payload);
                let err = match e.kind {
                    AppendErrorKind::Full { spool_max_bytes } => DropError::SpoolFull {
                        payload,
                        spool_max_bytes,
                    },
                    AppendErrorKind::TooLarge { size, max } => {
                        DropError::TooLarge { payload, size, max }
                    }
                    AppendErrorKind::HeaderTooLarge { size, max } => {
                        DropError::KeyTooLarge { payload, size, max }
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

    /// How full the spool is and, at the recent spill rate, how long until it is full.
    pub(crate) fn capacity(&self, spool: &SpoolStats) -> Capacity {
        let rate = lock(&self.spill_rate).rate(now_std());
        // While the backend is online the drain task is emptying the spool as it fills.
        let filling = !self.is_online();
        Capacity {
            rate: rate_per_sec(rate),
            full_in: time_to_full(spool.bytes, spool.spool_max_bytes, rate, filling),
        }
    }

    // ----- logging -----

    /// Counts `n` drops for `reason` and logs them at error level, rate-limited per reason.
    pub(crate) fn record_drop(&self, reason: DropReason, n: u64) {
        if n == 0 {
            return;
        }
        self.counters.add_dropped(reason, n);
        let total = self.counters.dropped_for(reason);
        let mut logs = lock(&self.logs);
        if logs
            .throttle
            .check(LogKind::Dropped(reason), now_std())
            .is_some()
        {
            let since_last = total - logs.drops_reported[reason.index()];
            logs.drops_reported[reason.index()] = total;
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
            let spool = self.spool_stats().unwrap_or_default();
            let (n, b) = (spool.records, spool.pending_bytes);
            let capacity = self.capacity(&spool);
            let percent = fill_percent(spool.bytes, spool.spool_max_bytes);
            let until_full = match capacity.full_in {
                Some(d) => format!("full in about {} at the recent spill rate", approx(d)),
                None => "not filling".to_owned(),
            };
            let state = self.backend_state();
            let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            tracing::warn!(
                records = n,
                bytes = b,
                backend = state.as_str(),
                next_attempt_in_ms = ms(delay),
                next_probe_in_ms = next_probe.map(ms),
                spool_fill_percent = percent,
                spill_bytes_per_sec = capacity.rate,
                spool_full_in_secs = capacity.full_in.map(|d| d.as_secs()),
                "currently retrying {n} failed export(s) ({b} bytes); spool {percent}% full, {until_full}"
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

    /// Counts a record spooled whose fsync failed (`FsyncEveryAppend` mode) and logs it,
    /// rate-limited.
    fn warn_not_durable(&self, error: &std::io::Error) {
        let total = self
            .counters
            .spooled_not_durable
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        let due = lock(&self.logs)
            .throttle
            .check(LogKind::NotDurable, now_std())
            .is_some();
        if due {
            tracing::warn!(error = %error, spooled_not_durable = total, "outlast: a spooled record's fsync failed; it is in the spool and will be delivered, but a power loss before the next successful sync may take it");
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

/// Closes `spool` if this is its last handle, else syncs it (the last holder's drop
/// releases it). Blocks on the disk: for the blocking pool.
fn close_or_sync(spool: Arc<Spool>) -> Result<(), SpoolError> {
    match Arc::try_unwrap(spool) {
        Ok(spool) => spool.close(),
        Err(shared) => shared.sync(),
    }
}

/// Counts spool calls running on the blocking pool.
#[derive(Debug, Default)]
pub(crate) struct SpoolCalls {
    running: AtomicUsize,
    done: Notify,
}

impl SpoolCalls {
    fn start(self: &Arc<Self>) -> SpoolCallGuard {
        self.running.fetch_add(1, Ordering::AcqRel);
        SpoolCallGuard(Arc::clone(self))
    }

    /// Returns once no call is running.
    async fn idle(&self) {
        loop {
            let done = self.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.running.load(Ordering::Acquire) == 0 {
                return;
            }
            done.await;
        }
    }
}

/// One running spool call (see [`Shared::spawn_spool_call`]).
#[derive(Debug)]
pub(crate) struct SpoolCallGuard(Arc<SpoolCalls>);

impl Drop for SpoolCallGuard {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.done.notify_waiters();
        }
    }
}

/// The time constant of [`SpillRate`]: the rate follows what was appended over about the
/// last minute.
const SPILL_RATE_WINDOW: Duration = Duration::from_secs(60);

/// Below this many bytes per second the spool is not filling (an exponential average never
/// quite reaches zero once spills stop).
const MIN_FILL_RATE: f64 = 1.0;

/// An exponentially weighted rate of bytes appended to the spool: each append adds its bytes
/// divided by the time constant, and the sum decays by `e^(-elapsed / 60 s)`. A steady flow
/// of `r` bytes per second converges to `r` (to 63 % of it after one minute of it); an
/// append a minute old weighs `1/e` of a new one. Pure: every call takes the time.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SpillRate {
    /// Bytes per second as of `at`.
    rate: f64,
    at: Option<std::time::Instant>,
}

impl SpillRate {
    /// Counts `bytes` appended at `now` (a `now` earlier than the last one counts as the
    /// same moment).
    pub(crate) fn record(&mut self, now: std::time::Instant, bytes: u64) {
        // A rate, not an exact count: `as f64` rounds beyond 2^53 bytes.
        self.rate = self.rate(now) + bytes as f64 / SPILL_RATE_WINDOW.as_secs_f64();
        self.at = Some(self.at.map_or(now, |at| at.max(now)));
    }

    /// Bytes per second at `now`.
    pub(crate) fn rate(&self, now: std::time::Instant) -> f64 {
        match self.at {
            None => 0.0,
            Some(at) => {
                let elapsed = now.saturating_duration_since(at).as_secs_f64();
                self.rate * (-elapsed / SPILL_RATE_WINDOW.as_secs_f64()).exp()
            }
        }
    }
}

/// How full the spool is, in time (see [`Shared::capacity`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Capacity {
    /// Recent spill rate, bytes per second (rounded).
    pub(crate) rate: u64,
    /// How long until the spool's files reach the cap at that rate; `None` when not filling.
    pub(crate) full_in: Option<Duration>,
}

/// A rate in whole bytes per second (saturating).
fn rate_per_sec(rate: f64) -> u64 {
    // `as` saturates, and maps NaN to 0.
    rate.round() as u64
}

/// Time until `bytes` reaches `cap` at `rate` bytes per second: zero when already there,
/// `None` when not `filling` or the rate is below [`MIN_FILL_RATE`].
pub(crate) fn time_to_full(bytes: u64, cap: u64, rate: f64, filling: bool) -> Option<Duration> {
    if !filling || rate.is_nan() || rate < MIN_FILL_RATE {
        return None;
    }
    let room = cap.saturating_sub(bytes) as f64;
    Some(Duration::try_from_secs_f64(room / rate).unwrap_or(Duration::MAX))
}

/// `bytes` as a whole percentage of `cap` (0 with no cap; more than 100 is possible when the
/// cap was lowered below what the spool holds).
pub(crate) fn fill_percent(bytes: u64, cap: u64) -> u64 {
    if cap == 0 {
        return 0;
    }
    u64::try_from(u128::from(bytes) * 100 / u128::from(cap)).unwrap_or(u64::MAX)
}

/// A duration for people: seconds under two minutes, minutes under two hours, then hours.
pub(crate) fn approx(d: Duration) -> String {
    let s = d.as_secs();
    if s < 120 {
        format!("{s} s")
    } else if s < 120 * 60 {
        format!("{} min", s / 60)
    } else {
        format!("{} h", s / 3600)
    }
}

/// `draining at 12 MB/s, about 3.4 s left`.
fn describe_drain(rate: u64, left: Option<Duration>) -> String {
    let left = left.map_or_else(String::new, |d| {
        format!(", about {} left", human_duration(d))
    });
    // A rate, not an exact count.
    format!("draining at {}{left}", human_rate(rate as f64))
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

/// What a failed attempt says about the backend, as the error classifies itself:
///
/// - [`BackendState::Unreachable`]: no answer at the transport level
///   ([`ExportError::is_unreachable`]: an unreachable failure, a timeout, a retryable failure
///   carrying a connection error).
/// - [`BackendState::Failing`]: the backend answered with a failure
///   ([`ExportError::is_answered`]: a failing or permanent failure, a `Retry-After`).
/// - [`BackendState::Offline`]: nothing says which.
pub(crate) fn classify(error: &ExportError) -> BackendState {
    if error.is_unreachable() {
        BackendState::Unreachable
    } else if error.is_answered() {
        BackendState::Failing
    } else {
        BackendState::Offline
    }
}

/// Counts a direct export as under way until dropped, then wakes flush waiters.
pub(crate) struct DirectGuard<'a>(&'a Shared);

impl Drop for DirectGuard<'_> {
    fn drop(&mut self) {
        self.0.direct_in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.progress.notify_waiters();
        self.0.live_done.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: std::time::Instant, secs: u64) -> std::time::Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn a_steady_spill_rate_converges_to_its_bytes_per_second() {
        let t0 = std::time::Instant::now();
        let mut r = SpillRate::default();
        assert_eq!(r.rate(t0), 0.0);
        // 1000 bytes a second for ten minutes.
        for s in 0..600 {
            r.record(at(t0, s), 1000);
        }
        let rate = r.rate(at(t0, 599));
        assert!((990.0..=1010.0).contains(&rate), "{rate}");
        // After one minute of it, about 63 % of the way.
        let mut fresh = SpillRate::default();
        for s in 1..=60 {
            fresh.record(at(t0, s), 1000);
        }
        let rate = fresh.rate(at(t0, 60));
        assert!((620.0..=650.0).contains(&rate), "{rate}");
    }

    #[test]
    fn a_spill_rate_decays_by_e_each_minute_once_spills_stop() {
        let t0 = std::time::Instant::now();
        let mut r = SpillRate::default();
        r.record(t0, 6000);
        assert!((r.rate(t0) - 100.0).abs() < 1e-9);
        let later = r.rate(at(t0, 60));
        assert!(
            (later - 100.0 / std::f64::consts::E).abs() < 1e-6,
            "{later}"
        );
        // A time before the last append counts as that moment.
        r.record(t0 - Duration::from_secs(5), 6000);
        assert!((r.rate(t0) - 200.0).abs() < 1e-9);
    }

    #[test]
    fn time_to_full_is_the_room_left_over_the_rate_and_none_when_not_filling() {
        assert_eq!(
            time_to_full(400, 1000, 10.0, true),
            Some(Duration::from_secs(60))
        );
        assert_eq!(time_to_full(1000, 1000, 10.0, true), Some(Duration::ZERO));
        assert_eq!(time_to_full(2000, 1000, 10.0, true), Some(Duration::ZERO));
        assert_eq!(time_to_full(400, 1000, 10.0, false), None);
        assert_eq!(time_to_full(400, 1000, 0.5, true), None);
        assert_eq!(time_to_full(400, 1000, f64::NAN, true), None);
        assert_eq!(
            time_to_full(0, u64::MAX, MIN_FILL_RATE, true),
            Some(Duration::MAX),
            "saturated"
        );
    }

    #[test]
    fn fill_is_a_whole_percentage_of_the_cap() {
        assert_eq!(fill_percent(0, 1000), 0);
        assert_eq!(fill_percent(999, 1000), 99);
        assert_eq!(fill_percent(1000, 1000), 100);
        assert_eq!(fill_percent(5, 0), 0);
        assert_eq!(fill_percent(u64::MAX, 1), u64::MAX);
    }

    #[test]
    fn durations_read_in_seconds_minutes_or_hours() {
        assert_eq!(approx(Duration::from_secs(45)), "45 s");
        assert_eq!(approx(Duration::from_secs(119)), "119 s");
        assert_eq!(approx(Duration::from_secs(600)), "10 min");
        assert_eq!(approx(Duration::from_secs(3 * 3600)), "3 h");
        assert!(approx(Duration::MAX).ends_with(" h"));
    }
}
