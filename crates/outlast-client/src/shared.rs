//! State shared by a client's handles and its drain task: spool access (the handle, appends,
//! calls on the blocking pool, the close), the counters and the backlog flag, the published
//! copy of the backend's state, the drain task's mailbox, and logging (rate-limited).
//!
//! Nothing here decides anything about the backend or a flush: the drain task owns those
//! (`health`, `flush`); the other rooms report to it through [`Shared::mailbox`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use outlast_core::throttle::KeyedThrottle;
use outlast_core::{DynExporter, Payload};
use outlast_spool::{AppendErrorKind, Durability, ReadBatch, Spool, SpoolError, SpoolStats};

use crate::attempt::Attempts;
use crate::config::{RecoverySettings, Settings};
use crate::fill::{
    Capacity, SpillRate, approx, describe_drain, fill_percent, rate_per_sec, time_to_full,
};
use crate::health::{BackendState, Change, Health, HealthView};
use crate::mailbox::Mailbox;
use crate::pace::{DrainMeter, human_bytes, human_duration, time_to_drain};
use crate::stats::{Count, Counters};
use crate::store::SpoolSlot;
use crate::work::{Backlog, DirectExports};
use crate::{ClientStats, Delivery, DropError, DropReason, SpoolFault};

/// An append handed to the blocking pool, until it has counted its outcome: dropped before
/// (the task panicked, or was dropped unrun with the runtime), it counts the payload as
/// dropped for [`DropReason::SpoolUnavailable`].
struct PendingAppend {
    shared: Arc<Shared>,
    counted: bool,
}

impl PendingAppend {
    #[allow(
        clippy::result_large_err,
        reason = "the error hands the payload back; boxing it is a change to DropError"
    )]
    fn run(mut self, spool: &Spool, payload: Payload) -> Result<Delivery, DropError> {
        let result = self.shared.append_to(spool, payload);
        self.counted = true;
        result
    }
}

impl Drop for PendingAppend {
    fn drop(&mut self) {
        if !self.counted {
            tracing::error!(target: crate::LOG_TARGET, "outlast: a spool append on the blocking pool did not finish");
            self.shared.record_drop(DropReason::SpoolUnavailable, 1);
        }
    }
}

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

pub(crate) struct Shared {
    /// The exporter and the bound on each attempt.
    pub(crate) attempts: Attempts,
    pub(crate) settings: Settings,
    pub(crate) recovery: RecoverySettings,
    /// The spool, while it is open.
    pub(crate) store: SpoolSlot,
    pub(crate) counters: Counters,
    pub(crate) backlog: Backlog,
    pub(crate) direct: DirectExports,
    /// The backend's state as the drain task last published it.
    pub(crate) health: HealthView,
    /// Where direct exports and flushes tell the drain task.
    pub(crate) mailbox: Mailbox,
    accepting: AtomicBool,
    /// Set once the drain task has been stopped by shutdown.
    stopped: AtomicBool,
    /// Acknowledgements the spool refused (the records count as delivered all the same; see
    /// `ClientStats::ack_failures`).
    pub(crate) ack_failures: AtomicU64,
    /// Records in lanes of another identity when the spool opened (left alone).
    pub(crate) foreign_records: AtomicU64,
    /// The recent rate of bytes appended to the spool.
    spill_rate: Mutex<SpillRate>,
    /// The replay's recent deliveries, for the drain rate and the time left.
    drain_meter: Mutex<DrainMeter>,
    /// The backend came back with a backlog, before the drain rate was known: the drain
    /// rate is logged once it is.
    drain_report_due: AtomicBool,
    logs: Mutex<Logs>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("spool_dir", &self.settings.spool.root())
            .field("spool_available", &self.store.is_open())
            .field("backlog", &self.backlog.exists())
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

impl Shared {
    pub(crate) fn new(
        exporter: Arc<dyn DynExporter>,
        settings: Settings,
        recovery: RecoverySettings,
        spool: Option<Arc<Spool>>,
        open_error: Option<Arc<SpoolError>>,
        backlog: bool,
        mailbox: Mailbox,
    ) -> Shared {
        let warn_interval = settings.warn_interval;
        Shared {
            attempts: Attempts::new(exporter, settings.attempt_timeout),
            settings,
            recovery,
            store: SpoolSlot::new(spool, open_error),
            counters: Counters::default(),
            backlog: Backlog::new(backlog),
            direct: DirectExports::default(),
            health: HealthView::default(),
            mailbox,
            accepting: AtomicBool::new(true),
            stopped: AtomicBool::new(false),
            ack_failures: AtomicU64::new(0),
            foreign_records: AtomicU64::new(0),
            spill_rate: Mutex::new(SpillRate::default()),
            drain_meter: Mutex::new(DrainMeter::default()),
            drain_report_due: AtomicBool::new(backlog),
            logs: Mutex::new(Logs {
                throttle: KeyedThrottle::new(warn_interval),
                drops_reported: [0; DropReason::COUNT],
            }),
        }
    }

    pub(crate) fn exporter(&self) -> &dyn DynExporter {
        &*self.attempts.exporter
    }

    /// Whether spool calls are made inline (page-cache writes in `OsWrite` mode) rather than
    /// on the blocking pool (`FsyncEveryAppend` mode waits for the disk).
    pub(crate) fn spool_calls_inline(&self) -> bool {
        matches!(self.settings.durability, Durability::OsWrite { .. })
    }

    // ----- the backend, accepting, stopped, drained -----

    /// The backend's state as the drain task published it, or as a direct export that gave
    /// up on it said, until the drain task has taken that in (see [`Mailbox`]).
    pub(crate) fn backend_state(&self) -> BackendState {
        self.mailbox.backend_state(&self.health)
    }

    pub(crate) fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
    }

    pub(crate) fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::Release);
    }

    /// Whether shutdown has stopped the drain task.
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    pub(crate) fn mark_stopped(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    /// Whether there is nothing left to deliver and nothing under way.
    pub(crate) fn is_drained(&self) -> bool {
        !self.backlog.exists() && self.direct.in_flight() == 0
    }

    /// The bookkeeping of an adoption of released lanes: logs, and marks a backlog if lanes
    /// were adopted.
    pub(crate) fn on_adopted(
        &self,
        joined: Result<Result<usize, SpoolError>, tokio::task::JoinError>,
    ) {
        let adopted = match joined {
            Ok(adopted) => adopted,
            Err(e) => {
                tracing::error!(target: crate::LOG_TARGET, error = %e, "outlast: spool task failed");
                return;
            }
        };
        match adopted {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(target: crate::LOG_TARGET,
                    lanes = n,
                    "outlast: adopted spool lanes released by another process"
                );
                self.backlog.mark();
            }
            Err(e) => self.warn_spool_trouble("adopt", &e),
        }
    }

    // ----- spooling -----

    /// Appends `payload` to the spool: inline in `OsWrite` mode (one `write(2)`, no
    /// allocation beyond the frame), on the blocking pool in `FsyncEveryAppend` mode. There
    /// the append counts its own outcome (spooled, or dropped for its reason) whether the
    /// caller still waits for it or not, and `started` is called once it is on its way: a
    /// task that panics or never runs (the runtime shutting down) counts its payload as
    /// dropped for [`DropReason::SpoolUnavailable`] as it is dropped.
    #[allow(
        clippy::result_large_err,
        reason = "the error hands the payload back; boxing it is a change to DropError"
    )]
    pub(crate) async fn spool(
        self: &Arc<Self>,
        payload: Payload,
        started: impl FnOnce(),
    ) -> Result<Delivery, DropError> {
        let Some(spool) = self.store.spool() else {
            return Err(self.no_spool(payload));
        };
        if self.spool_calls_inline() {
            return self.append_to(&spool, payload);
        }
        // Kept to hand back if the blocking task fails (a spool bug): cloning is cheap.
        let kept = payload.clone();
        let pending = PendingAppend {
            shared: Arc::clone(self),
            counted: false,
        };
        let append = self
            .store
            .spawn_call(spool, move |s| pending.run(s, payload));
        started();
        match append.await {
            Ok(result) => result,
            // Counted by the task's `PendingAppend` as it was dropped.
            Err(join_error) => Err(DropError::SpoolUnavailable {
                payload: kept,
                source: SpoolFault::Write(std::io::Error::other(format!(
                    "the spool append task failed: {join_error}"
                ))),
            }),
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
                self.counters.add(Count::Spooled, 1);
                if let Some(e) = &appended.sync_error {
                    // Written, indexed and going to be replayed: spooled, not dropped; only
                    // not yet safe from a power loss. Counted, and the drain task told.
                    self.warn_not_durable(e);
                }
                if appended.evicted.records > 0 {
                    self.record_drop(DropReason::Evicted, appended.evicted.records);
                }
                self.backlog.mark();
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
        let err = match self.store.open_error() {
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
        let filling = self.backend_state() != BackendState::Online;
        Capacity {
            rate: rate_per_sec(rate),
            full_in: time_to_full(spool.bytes, spool.spool_max_bytes, rate, filling),
        }
    }

    // ----- the backend's state, and the drain -----

    /// Publishes the drain task's `health` and logs its `changes`, in order: the drain
    /// task's call, the only writer of [`Shared::health`].
    pub(crate) fn publish(&self, health: &Health, changes: impl IntoIterator<Item = Change>) {
        self.health.publish_state(health);
        self.log_changes(changes);
    }

    /// Logs changes of the backend's state, in order (the mailbox published them as it took
    /// them in).
    pub(crate) fn log_changes(&self, changes: impl IntoIterator<Item = Change>) {
        for change in changes {
            self.log_change(change);
        }
    }

    /// Logs a change of the backend's state at info level (the drain task publishes the
    /// state itself).
    fn log_change(&self, change: Change) {
        if change.to == BackendState::Online {
            self.log_recovered(change.outage);
            return;
        }
        let (records, bytes) = self.store.stats().map_or((0, 0), |s| (s.records, s.bytes));
        tracing::info!(target: crate::LOG_TARGET,
            online = false,
            backend = change.to.as_str(),
            spool_records = records,
            spool_bytes = bytes,
            "outlast: backend {}; payloads go to the spool",
            change.to.describe()
        );
    }

    /// Logs that the backend is reachable again: after how long, and the backlog waiting
    /// (its size, its oldest record's age, and the drain rate and time left if measured;
    /// if not yet, they are logged once they are, by [`report_drain_rate`](Self::report_drain_rate)).
    fn log_recovered(&self, outage: Option<Duration>) {
        let spool = self.store.stats().unwrap_or_default();
        let after = outage.map_or_else(String::new, |d| format!(" after {}", human_duration(d)));
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if spool.records == 0 {
            tracing::info!(target: crate::LOG_TARGET,
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
        tracing::info!(target: crate::LOG_TARGET,
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
        let spool = self.store.stats().unwrap_or_default();
        let Some((rate, left)) = self.drain_progress(&spool) else {
            return;
        };
        if !self.drain_report_due.swap(false, Ordering::AcqRel) {
            return;
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        tracing::info!(target: crate::LOG_TARGET,
            backlog_records = spool.records,
            backlog_bytes = spool.pending_bytes,
            drain_bytes_per_sec = rate,
            drain_left_ms = left.map(ms),
            "outlast: backlog {} {}",
            human_bytes(spool.pending_bytes),
            describe_drain(rate, left)
        );
    }

    /// The counters and gauges of [`Client::stats`](crate::Client::stats).
    pub(crate) fn stats(&self) -> ClientStats {
        let shared = self;
        let c = &shared.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let spool = shared.store.stats().unwrap_or_default();
        let capacity = shared.capacity(&spool);
        let drain = shared.drain_progress(&spool);
        let spool_state = shared.store.state();
        ClientStats {
            exported: c.get(Count::Exported),
            retried: c.get(Count::Retried),
            spooled: c.get(Count::Spooled),
            spooled_not_durable: c.get(Count::SpooledNotDurable),
            replayed: c.get(Count::Replayed),
            replay_failures: c.get(Count::ReplayFailures),
            dropped: c.dropped(),
            spool_records: spool.records,
            spool_bytes: spool.bytes,
            pending_bytes: spool.pending_bytes,
            spool_max_bytes: spool.spool_max_bytes,
            spill_rate: capacity.rate,
            spool_full_in: capacity.full_in,
            oldest_record_age: spool
                .oldest_created_at
                .map(|t| SystemTime::now().duration_since(t).unwrap_or_default()),
            drain_rate: drain.map_or(0, |(rate, _)| rate),
            drain_time_left: drain.and_then(|(_, left)| left),
            foreign_lanes: spool.foreign_lanes,
            stranded_lanes: spool.stranded_lanes,
            stranded_records: spool.stranded_records,
            foreign_records: if spool.foreign_lanes == 0 {
                0
            } else {
                load(&shared.foreign_records)
            },
            backend: shared.backend_state(),
            ack_failures: load(&shared.ack_failures),
            backlog: shared.backlog.exists(),
            spool: spool_state,
            shut_down: !shared.is_accepting(),
        }
    }

    /// Counts the losses a read of the spool reports ([`ReadBatch`]: records expired, lost
    /// to damage, or lost to eviction while in flight), each once; so does
    /// [`Spool::settle`]'s batch.
    pub(crate) fn count_read_losses(&self, batch: &ReadBatch) {
        self.record_drop(DropReason::Expired, batch.expired.records);
        self.record_drop(DropReason::Corrupt, batch.corrupt_skipped);
        self.record_drop(DropReason::Evicted, batch.evicted.records);
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
            tracing::error!(target: crate::LOG_TARGET,
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
            let spool = self.store.stats().unwrap_or_default();
            let (n, b) = (spool.records, spool.pending_bytes);
            let capacity = self.capacity(&spool);
            let percent = fill_percent(spool.bytes, spool.spool_max_bytes);
            let until_full = match capacity.full_in {
                Some(d) => format!("full in about {} at the recent spill rate", approx(d)),
                None => "not filling".to_owned(),
            };
            let state = self.backend_state();
            let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            tracing::warn!(target: crate::LOG_TARGET,
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
            tracing::warn!(target: crate::LOG_TARGET, error = %error, "outlast: spool sync at the end of a flush failed; written data is still with the OS, the next sync tries again");
        }
    }

    /// Counts a record spooled whose fsync failed (`FsyncEveryAppend` mode) and logs it,
    /// rate-limited.
    fn warn_not_durable(&self, error: &std::io::Error) {
        let total = self.counters.add(Count::SpooledNotDurable, 1);
        let due = lock(&self.logs)
            .throttle
            .check(LogKind::NotDurable, now_std())
            .is_some();
        if due {
            tracing::warn!(target: crate::LOG_TARGET, error = %error, spooled_not_durable = total, "outlast: a spooled record's fsync failed; it is in the spool and will be delivered, but a power loss before the next successful sync may take it");
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
            tracing::warn!(target: crate::LOG_TARGET, operation = what, error = %error, "outlast: spool {what} failed; retrying with backoff");
        }
    }
}
