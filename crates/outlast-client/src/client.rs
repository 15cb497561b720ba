//! The `Client` applications call: the export path (direct attempt, one quick retry, spill),
//! the offline fast path, `force_flush`, `shutdown` and `stats`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use outlast_core::retry::Decision;
use outlast_core::{ConfigError, DynExporter, Exporter, Payload};
use outlast_spool::Spool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::shared::Shared;
use crate::stats::Counters;
use crate::{ClientBuilder, ClientStats, Delivery, DropError, DropReason, ShutdownError};

/// What a [`Client::force_flush`] (or the flush inside [`Client::shutdown`]) achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
#[must_use = "a flush can end without delivering everything: look at `complete` and `outcome`"]
pub struct FlushReport {
    /// Whether everything was delivered (or dropped on purpose): the spool is empty, no
    /// export is under way, and every delivered record is acknowledged in the spool (never
    /// true while an acknowledgement failed and no later sync wrote it).
    ///
    /// This covers this client's identity only: lanes of another identity in the same
    /// directory are left alone, never delivered by this client, and not counted here
    /// ([`ClientStats::foreign_lanes`] and [`ClientStats::foreign_records`] report them).
    pub complete: bool,
    /// Why the flush ended.
    pub outcome: FlushOutcome,
    /// What the client knows about the backend as the flush ends.
    pub backend: BackendState,
    /// While the backend is not online: how long until the drain task's next try (a probe
    /// or an attempt; zero if it is under way).
    pub next_attempt_in: Option<Duration>,
    /// Whether the spool was synced (fsync of its data and read progress) before the flush
    /// answered: the records still waiting survive a power loss, and those delivered are
    /// not sent again after a crash. False if the sync failed or no time was left for it;
    /// the data is then still with the operating system (it survives the process). In the
    /// report of [`Client::shutdown`], whether closing the spool (which syncs it) finished
    /// within the shutdown's time.
    pub synced: bool,
    /// Acknowledgements the spool refused while the flush ran: those records were
    /// delivered but may be delivered again (at least once).
    pub ack_failures: u64,
    /// Records of this client's identity still waiting in the spool; they stay on disk for
    /// a later flush, the drain task, or the next process using the same spool directory.
    pub remaining_records: u64,
    /// Framed bytes of the records still waiting (see [`ClientStats::pending_bytes`]).
    pub remaining_bytes: u64,
    /// Payloads delivered while the flush ran (direct exports and replayed records).
    pub delivered: u64,
    /// Payloads dropped while the flush ran (all reasons).
    pub dropped: u64,
    /// How long the flush took.
    pub elapsed: Duration,
}

/// Why a flush ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlushOutcome {
    /// Nothing is left to deliver (see [`FlushReport::complete`] for the acknowledgements).
    Drained,
    /// The flush's attempt found the backend unreachable at the transport level (connection
    /// refused, reset, timed out, DNS): it returned at once rather than wait out its time,
    /// since nothing can be delivered before the next probe. The records stay in the spool
    /// ([`FlushReport::synced`] says whether they reached the disk).
    Offline,
    /// The time limit passed first.
    TimedOut,
    /// The client was shut down: nothing drains any more.
    ShutDown,
}

/// What the client knows about the backend (see [`ClientStats::backend`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BackendState {
    /// The last attempt succeeded, or none failed.
    #[default]
    Online,
    /// Unreachable at the transport level (connection refused, reset, timed out, DNS): the
    /// drain task probes it every `probe_interval` (when the exporter has a probe) and
    /// replays at once when a probe gets through.
    Unreachable,
    /// The backend answers, with failures (HTTP 429, 5xx): attempts follow the backoff and
    /// `Retry-After`.
    Failing,
    /// Offline, and the exporter's errors do not say whether the backend answered:
    /// attempts follow the backoff.
    Offline,
}

impl BackendState {
    /// A short name for logs and metrics: `online`, `offline-transport`,
    /// `backend-failing`, `offline`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Online => "online",
            BackendState::Unreachable => "offline-transport",
            BackendState::Failing => "backend-failing",
            BackendState::Offline => "offline",
        }
    }

    /// A phrase for log messages.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            BackendState::Online => "reachable",
            BackendState::Unreachable => "unreachable (transport level); probing for its return",
            BackendState::Failing => "answering with failures; retrying with backoff",
            BackendState::Offline => "unreachable; retrying with backoff",
        }
    }
}

impl std::fmt::Display for BackendState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a [`Client::force_flush_with`] behaves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlushOptions {
    /// Keep trying until the time limit even when the backend is found unreachable
    /// (default false: return at once, see [`FlushOutcome::Offline`]).
    pub keep_trying: bool,
}

impl FlushOptions {
    /// The default options: return early when the backend is unreachable.
    pub fn new() -> FlushOptions {
        FlushOptions::default()
    }

    /// Keep trying until the time limit even when the backend is found unreachable.
    #[must_use]
    pub fn keep_trying(mut self, keep_trying: bool) -> FlushOptions {
        self.keep_trying = keep_trying;
        self
    }
}

/// The drain task's handle and its stop signal.
#[derive(Debug)]
struct DrainControl {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct ClientInner {
    shared: Arc<Shared>,
    drain: Mutex<DrainControl>,
    /// Serialises shutdowns; `true` once one completed.
    shutdown: tokio::sync::Mutex<bool>,
}

// Dropping the last `Client` drops `ClientInner` and with it the stop sender: the drain task
// sees the channel close, waits for an adoption of released lanes still running on the
// blocking pool (bounded), hands the spool's close to the blocking pool, and ends.

impl Drop for ClientInner {
    fn drop(&mut self) {
        // A shutdown that took the drain task and was dropped before it closed the spool
        // left the spool open with no task to close it: close it on the blocking pool, not
        // on the thread dropping the client. (With the task still there, it does this.)
        let task_gone = self
            .drain
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .task
            .is_none();
        if task_gone {
            self.shared.release_spool_in_background();
        }
    }
}

/// The least a shutdown waits for the drain task to end, even with no time left.
const STOP_GRACE: Duration = Duration::from_millis(10);

/// The export pipeline: hand it payloads, it delivers them now or keeps them on disk and
/// delivers them later, oldest first.
///
/// Cheap to clone (one `Arc`); all clones share one pipeline and one drain task. The drain
/// task ends when the last clone is dropped or [`shutdown`](Client::shutdown) is called.
/// See the [crate documentation](crate) for the whole picture.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

impl ClientBuilder {
    /// Builds a client that exports through `exporter`, opens the spool (recovering what an
    /// earlier process left there), and starts the drain task on the Tokio runtime (the
    /// current one, or the one given to [`runtime`](ClientBuilder::runtime); it must have its
    /// time driver enabled, as `#[tokio::main]` and `Builder::enable_all` do).
    ///
    /// Opening the spool does blocking file I/O (it reads segment headers and scans the last
    /// segment): call this at start-up.
    ///
    /// A spool that cannot be opened (permissions, read-only, not a directory) does not make
    /// this fail: the client warns once and runs without one.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] for an invalid setting (naming it, or the environment
    /// variable it came from), or (`param: "runtime"`) when called outside a Tokio runtime
    /// and no [`runtime`](ClientBuilder::runtime) was given.
    ///
    /// The client's identity (see [`identity`](ClientBuilder::identity)) is the builder's,
    /// else the exporter's [`identity`](Exporter::identity), else the exporter's type name.
    pub fn build<E: Exporter>(self, exporter: E) -> Result<Client, ConfigError> {
        let type_name = std::any::type_name::<E>();
        self.build_named(Arc::new(exporter), Some(type_name), None)
    }

    /// As [`build`](ClientBuilder::build), for an exporter already behind a pointer.
    ///
    /// The exporter's type is not known here: without an
    /// [`identity`](ClientBuilder::identity) on the builder or the exporter, the client's
    /// lanes record no identity, and it shares them with every other client that has none.
    ///
    /// # Errors
    ///
    /// As [`build`](ClientBuilder::build).
    pub fn build_dyn(self, exporter: Arc<dyn DynExporter>) -> Result<Client, ConfigError> {
        self.build_named(exporter, None, None)
    }

    /// As [`build`](ClientBuilder::build), with every operation on the spool's segment and
    /// cursor files going through `fs` (see [`Spool::open_with_fs`]; lane directories and
    /// lock files are handled directly): tests inject disk faults this way. Not for
    /// production use. Available with the `testing` feature.
    ///
    /// # Errors
    ///
    /// As [`build`](ClientBuilder::build).
    #[cfg(feature = "testing")]
    pub fn build_with_spool_fs<E: Exporter>(
        self,
        exporter: E,
        fs: Arc<dyn outlast_spool::fs::SpoolFs>,
    ) -> Result<Client, ConfigError> {
        let type_name = std::any::type_name::<E>();
        self.build_named(Arc::new(exporter), Some(type_name), Some(fs))
    }

    fn build_named(
        self,
        exporter: Arc<dyn DynExporter>,
        type_name: Option<&'static str>,
        fs: Option<Arc<dyn outlast_spool::fs::SpoolFs>>,
    ) -> Result<Client, ConfigError> {
        let mut settings = self.resolve()?;
        let recovery = self.resolve_recovery()?;
        let identity = recovery
            .identity
            .clone()
            .or_else(|| exporter.identity_dyn().filter(|i| !i.trim().is_empty()))
            .or_else(|| type_name.map(str::to_owned));
        settings.spool = settings.spool.with_identity(identity);
        let runtime = match self.runtime {
            Some(h) => h,
            None => tokio::runtime::Handle::try_current().map_err(|_| {
                ConfigError::invalid(
                    "runtime",
                    "build() must be called within a Tokio runtime, or be given one with ClientBuilder::runtime",
                )
            })?,
        };
        let opened = match fs {
            Some(fs) => Spool::open_with_fs(settings.spool.clone(), fs),
            None => Spool::open(settings.spool.clone()),
        };
        let (spool, open_error, recovered) = match opened {
            Ok((spool, report)) => {
                if report.records > 0
                    || report.corrupt_frames_skipped > 0
                    || report.torn_tail_bytes_truncated > 0
                {
                    tracing::info!(
                        dir = %settings.spool.root().display(),
                        records = report.records,
                        bytes = report.bytes,
                        torn_tail_bytes_truncated = report.torn_tail_bytes_truncated,
                        corrupt_frames_skipped = report.corrupt_frames_skipped,
                        adopted_lanes = report.adopted_lanes.len(),
                        "outlast: spool recovered; draining what an earlier run left"
                    );
                }
                if !report.newer_version_files.is_empty() {
                    tracing::warn!(
                        dir = %settings.spool.root().display(),
                        files = report.newer_version_files.len(),
                        "outlast: spool files of a newer format version left untouched"
                    );
                }
                (Some(Arc::new(spool)), None, report)
            }
            Err(e) => {
                tracing::warn!(
                    dir = %settings.spool.root().display(),
                    error = %e,
                    "outlast: spool unavailable, continuing without it: payloads that cannot be delivered will be dropped"
                );
                (None, Some(Arc::new(e)), Default::default())
            }
        };
        let shared = Arc::new(Shared::new(
            exporter,
            settings,
            recovery,
            spool,
            open_error,
            recovered.records > 0,
        ));
        if recovered.corrupt_frames_skipped > 0 {
            shared.record_drop(DropReason::Corrupt, recovered.corrupt_frames_skipped);
        }
        // The spool warned about lanes of another identity as it opened (once): they are
        // only counted here, for `stats()`.
        let foreign: u64 = recovered.foreign_lanes.iter().map(|l| l.records).sum();
        shared
            .foreign_records
            .store(foreign, std::sync::atomic::Ordering::Release);
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = runtime.spawn(crate::drain::run(Arc::clone(&shared), stop_rx));
        Ok(Client {
            inner: Arc::new(ClientInner {
                shared,
                drain: Mutex::new(DrainControl {
                    stop: Some(stop_tx),
                    task: Some(task),
                }),
                shutdown: tokio::sync::Mutex::new(false),
            }),
        })
    }
}

impl Client {
    /// A builder with default settings (the environment is not read; see
    /// [`ClientBuilder::from_env`]).
    pub fn builder() -> ClientBuilder {
        ClientBuilder::new()
    }

    /// Exports one payload: delivers it, or puts it in the spool for the drain task.
    ///
    /// - With no backlog, the exporter is tried directly; a retryable failure is retried once
    ///   after `immediate_retry_delay` (1 s), unless the server asked for a longer wait; a
    ///   second failure puts the payload in the spool. Each attempt is bounded by
    ///   `attempt_timeout`, so the call takes at most about two timeouts plus the retry delay.
    /// - To bound the whole call by a deadline (a serverless invocation's budget), use
    ///   [`export_by`](Client::export_by) instead: it spools rather than retry past it.
    /// - While a backlog exists (the backend was found unreachable, or an earlier run left
    ///   records), the payload goes straight to the spool without touching the network, so
    ///   it is delivered after the older records, and the call returns within microseconds
    ///   (in the default `OsWrite` durability mode; `FsyncEveryAppend` waits for the disk).
    /// - With [`ReplayOrder::LiveFirst`](crate::ReplayOrder::LiveFirst), while a backlog
    ///   exists and the backend is reachable, the payload is sent directly instead, once (no
    ///   quick retry); a retryable failure puts it in the spool behind the backlog.
    ///
    /// # Errors
    ///
    /// [`DropError`] with the payload handed back: the backend rejected it permanently, the
    /// spool is full or unavailable while the backend is unreachable, the payload exceeds
    /// `max_record_bytes`, or the client has been shut down. Every drop is counted and logged
    /// (rate-limited).
    ///
    /// Must be awaited within a Tokio runtime with its time driver enabled (attempts are
    /// bounded with `tokio::time`).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future abandons the export: an attempt in progress is dropped (the
    /// backend may still have received it) and the payload is neither retried nor spooled.
    /// It is counted all the same, once, as dropped for
    /// [`DropReason::Cancelled`] — unless its outcome was already counted: a payload whose
    /// attempt the backend had answered with success is delivered (the answer and the count
    /// happen in one poll), and in `FsyncEveryAppend` mode an append that has started on the
    /// blocking pool completes and counts itself (spooled, or dropped for its reason). An
    /// attempt whose answer had not arrived when the future was dropped is `cancelled` even
    /// if the backend received it (delivery is at least once: such a payload may reach the
    /// backend and be counted as cancelled). So `accepted = delivered + spooled + Σ drops`
    /// holds whatever the caller does with the future.
    pub fn export(
        &self,
        payload: Payload,
    ) -> impl Future<Output = Result<Delivery, DropError>> + Send + '_ {
        self.export_inner(payload, None)
    }

    /// Exports one payload within a time budget: as [`export`](Client::export), but the
    /// call returns by `deadline` (plus the few microseconds of a spool append in the
    /// default `OsWrite` mode; `FsyncEveryAppend` adds the fsync of the append). An attempt
    /// is cut off at the deadline, and the quick retry is made only if its delay ends
    /// before the deadline; otherwise the payload goes to the spool at once, for the drain
    /// task or a [`force_flush`](Client::force_flush) to deliver. A deadline already past
    /// spools without touching the network (a spool-first export).
    ///
    /// This is how a serverless handler keeps one budget for a whole invocation: export
    /// by the deadline, then flush with what is left of it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use outlast_client::{Client, Payload};
    /// use tokio::time::Instant;
    ///
    /// # async fn handler(client: &Client, payload: Payload) {
    /// let deadline = Instant::now() + Duration::from_millis(800);
    /// if let Err(e) = client.export_by(payload, deadline).await {
    ///     eprintln!("telemetry dropped: {e}");
    /// }
    /// let report = client
    ///     .force_flush(deadline.saturating_duration_since(Instant::now()))
    ///     .await;
    /// if !report.complete {
    ///     eprintln!("{} record(s) kept for later ({:?})", report.remaining_records, report.outcome);
    /// }
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`export`](Client::export).
    ///
    /// # Cancel safety
    ///
    /// As [`export`](Client::export): dropping the future abandons the payload, counted as
    /// [`DropReason::Cancelled`] (unless an append in `FsyncEveryAppend` mode has started).
    /// Prefer a deadline to a timeout around `export`: the deadline spools what it could not
    /// deliver instead of losing it.
    pub fn export_by(
        &self,
        payload: Payload,
        deadline: impl Into<Instant>,
    ) -> impl Future<Output = Result<Delivery, DropError>> + Send + '_ {
        self.export_inner(payload, Some(deadline.into()))
    }

    /// [`export_by`](Client::export_by) with the deadline `budget` from now
    /// (`Duration::MAX`: no limit; `Duration::ZERO`: spool without trying).
    ///
    /// # Errors
    ///
    /// As [`export`](Client::export).
    ///
    /// # Cancel safety
    ///
    /// As [`export_by`](Client::export_by).
    pub fn export_within(
        &self,
        payload: Payload,
        budget: Duration,
    ) -> impl Future<Output = Result<Delivery, DropError>> + Send + '_ {
        let deadline = crate::shared::deadline_after(Instant::now(), budget);
        self.export_inner(payload, Some(deadline))
    }

    /// [`export_counted`](Client::export_counted), with the payload counted as cancelled if
    /// the future is dropped before its outcome was counted.
    ///
    /// The guard exists from the moment the future is made, so that a future dropped
    /// before it was ever polled (a `select!` whose other branch was ready first) counts its
    /// payload too.
    fn export_inner(
        &self,
        payload: Payload,
        deadline: Option<Instant>,
    ) -> impl Future<Output = Result<Delivery, DropError>> + Send + '_ {
        let mut guard = CancelGuard {
            shared: &self.inner.shared,
            armed: true,
        };
        async move {
            let result = self.export_counted(payload, deadline, &mut guard).await;
            // Every way out of `export_counted` counted its outcome (delivered, spooled or
            // dropped) with no await point since: nothing is left to count.
            guard.disarm();
            result
        }
    }

    /// The export path. Each outcome is counted where it happens; `guard` is disarmed when
    /// the counting is handed to something that finishes without this future (an append
    /// on the blocking pool).
    async fn export_counted(
        &self,
        payload: Payload,
        deadline: Option<Instant>,
        guard: &mut CancelGuard<'_>,
    ) -> Result<Delivery, DropError> {
        let shared = &self.inner.shared;
        if !shared.is_accepting() {
            shared.record_drop(DropReason::ShutDown, 1);
            return Err(DropError::ShutDown { payload });
        }
        let size = payload.len() as u64;
        let max = shared.settings.max_record_bytes;
        if size > max {
            shared.record_drop(DropReason::TooLarge, 1);
            return Err(DropError::TooLarge { payload, size, max });
        }
        if let Some((size, max)) = outlast_spool::header_over_limit(&payload) {
            // Refused whether the backend is up or not: the spool could never hold it.
            shared.record_drop(DropReason::TooLarge, 1);
            return Err(DropError::KeyTooLarge { payload, size, max });
        }
        // Live-first: with a backlog draining and the backend reachable, new payloads go
        // directly, ahead of the backlog (see `live_first`).
        let live = shared.has_backlog() && self.live_first();
        if shared.has_backlog() && !live {
            // Offline fast path, and ordering: behind the backlog, without the network.
            return self.spool(payload, guard).await;
        }
        let past = |d: Instant| Instant::now() >= d;
        if deadline.is_some_and(past) {
            // No time for an attempt: the spool-first path.
            return self.spool(payload, guard).await;
        }

        let _direct = shared.enter_direct();
        let mut attempt = 1;
        loop {
            let (result, cut_short) = shared
                .attempt_by(std::slice::from_ref(&payload), deadline)
                .await;
            let error = match result {
                Ok(()) => {
                    Counters::bump(&shared.counters.exported);
                    shared.set_online(true);
                    return Ok(Delivery::Delivered);
                }
                Err(e) => e,
            };
            if live {
                // A live send beside a backlog gets one attempt: the drain task is already
                // retrying with backoff, and a second attempt a second later would only
                // delay the payload's place in the spool. A failure spills it behind the
                // backlog (delivered by the drain task, counted once as spooled), and
                // until the drain task delivers again, exports go to the spool.
                if !error.is_permanent() && !cut_short {
                    tracing::debug!(error = %outlast_core::ErrorChain(&error), "outlast: live export beside a backlog failed; spooling");
                    shared.set_retry_after_hint(error.retry_after());
                    shared.set_online(false);
                    return self.spool(payload, guard).await;
                }
            }
            if cut_short {
                // The caller's deadline, not the backend, ended the attempt: spool the
                // payload; the drain task tries again at once.
                tracing::debug!(
                    attempts = attempt,
                    "outlast: export deadline reached; spooling"
                );
                return self.spool(payload, guard).await;
            }
            match shared.settings.retry.on_direct_failure(attempt, &error) {
                Decision::Drop => {
                    shared.record_drop(DropReason::Permanent, 1);
                    return Err(DropError::Permanent {
                        payload,
                        source: error,
                    });
                }
                Decision::RetryAfter(delay) if ends_before(delay, deadline) => {
                    tokio::time::sleep(delay).await;
                    if shared.has_backlog() {
                        // Another export found the backend down meanwhile: queue behind it.
                        return self.spool(payload, guard).await;
                    }
                    Counters::bump(&shared.counters.retried);
                    attempt += 1;
                }
                Decision::RetryAfter(_) | Decision::Spill => {
                    tracing::debug!(error = %outlast_core::ErrorChain(&error), attempts = attempt, "outlast: direct export failed; spooling");
                    shared.set_retry_after_hint(error.retry_after());
                    shared.set_online(false);
                    return self.spool(payload, guard).await;
                }
            }
        }
    }

    /// Whether a payload exported now goes directly although a backlog exists: the order is
    /// [`ReplayOrder::LiveFirst`](crate::ReplayOrder::LiveFirst) and the backend is
    /// reachable (the last attempt, direct or replayed, succeeded; at start, with a backlog
    /// an earlier run left, none has failed yet, and the first live attempt finds out).
    fn live_first(&self) -> bool {
        let shared = &self.inner.shared;
        shared.settings.pacing.order == crate::ReplayOrder::LiveFirst && shared.is_online()
    }

    /// Appends to the spool: inline in `OsWrite` mode (one `write(2)`, no allocation beyond
    /// the frame), on the blocking pool in `FsyncEveryAppend` mode.
    #[allow(
        clippy::result_large_err,
        reason = "the error hands the payload back; boxing it is a change to DropError"
    )]
    async fn spool(
        &self,
        payload: Payload,
        guard: &mut CancelGuard<'_>,
    ) -> Result<Delivery, DropError> {
        let shared = &self.inner.shared;
        let Some(spool) = shared.spool() else {
            return Err(shared.no_spool(payload));
        };
        if shared.spool_calls_inline() {
            return shared.append_to(&spool, payload);
        }
        let task_shared = Arc::clone(shared);
        // Kept to hand back if the blocking task fails (a spool bug): cloning is cheap.
        let kept = payload.clone();
        let append = shared.spawn_spool_call(spool, move |s| task_shared.append_to(s, payload));
        // The append counts its own outcome (spooled, or dropped for its reason), whether
        // this future is still there to hear it or not.
        guard.disarm();
        match append.await {
            Ok(result) => result,
            Err(join_error) => {
                tracing::error!(error = %join_error, "outlast: spool append task failed");
                let err = DropError::SpoolUnavailable {
                    payload: kept,
                    source: crate::SpoolFault::Write(std::io::Error::other(
                        "the spool append task failed",
                    )),
                };
                shared.record_drop(DropReason::SpoolUnavailable, 1);
                Err(err)
            }
        }
    }

    /// Delivers what is waiting now: resets the backoff, takes over spool lanes of this
    /// client's identity that another process released, wakes the drain task, and waits
    /// until the spool is empty and no export is under way, or until `timeout`, whichever
    /// comes first. Serverless handlers call this at the end of each invocation.
    ///
    /// It returns within `timeout` even if the backend hangs (attempts are bounded by their
    /// own timeout and the flush does not wait for them past its deadline);
    /// `Duration::MAX` means no limit. When the flush's attempt finds the backend
    /// unreachable at the transport level (connection refused, reset, timed out, DNS), it
    /// returns at once with [`FlushOutcome::Offline`] instead of waiting out its time:
    /// nothing can be delivered before the next probe (see
    /// [`force_flush_with`](Client::force_flush_with) to keep trying instead). What is not
    /// delivered stays in the spool. Before answering, it syncs the spool (data and read
    /// progress) within the time left, so that what the flush delivered is not sent again
    /// after a crash and what it did not deliver survives a power loss
    /// ([`FlushReport::synced`]).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future changes nothing (the drain task carries on as it
    /// would have).
    pub async fn force_flush(&self, timeout: Duration) -> FlushReport {
        self.force_flush_with(timeout, FlushOptions::default())
            .await
    }

    /// As [`force_flush`](Client::force_flush), with options: with
    /// [`FlushOptions::keep_trying`] it does not return early when the backend is found
    /// unreachable, but keeps the drain task trying (probe, then backoff) until the time
    /// limit.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use outlast_client::{Client, FlushOptions};
    ///
    /// # async fn at_exit(client: &Client) {
    /// let report = client
    ///     .force_flush_with(Duration::from_secs(5), FlushOptions::new().keep_trying(true))
    ///     .await;
    /// println!("delivered {}, {} left", report.delivered, report.remaining_records);
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`force_flush`](Client::force_flush).
    pub async fn force_flush_with(&self, timeout: Duration, options: FlushOptions) -> FlushReport {
        let shared = &self.inner.shared;
        let start = Instant::now();
        let deadline = crate::shared::deadline_after(start, timeout);
        let delivered_before = shared.counters.delivered();
        let dropped_before = shared.counters.dropped().total();
        let ack_failures_before = shared
            .ack_failures
            .load(std::sync::atomic::Ordering::Acquire);

        let stopped = || shared.stopped.load(std::sync::atomic::Ordering::Acquire);
        let mut epoch = u64::MAX;
        if !stopped() {
            self.adopt_released(deadline).await;
            epoch = shared
                .flush_epoch
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
                .saturating_add(1);
            shared.flush_now.notify_waiters();
            shared.work.notify_one();
        }
        let outcome = loop {
            let progress = shared.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            if shared.is_drained() {
                break FlushOutcome::Drained;
            }
            if stopped() {
                // Shut down: nobody drains any more.
                break FlushOutcome::ShutDown;
            }
            if !options.keep_trying && shared.offline_for(epoch) {
                break FlushOutcome::Offline;
            }
            tokio::select! {
                () = &mut progress => {}
                () = tokio::time::sleep_until(deadline) => {
                    break if shared.is_drained() { FlushOutcome::Drained } else { FlushOutcome::TimedOut };
                }
            }
        };
        // Make the outcome durable before answering: the data written and the read progress
        // (so a serverless instance frozen or killed after the flush re-sends as little as
        // possible). Bounded by the time left; the fsync finishes in the background if not.
        let mut synced = false;
        if let Some(spool) = shared.spool() {
            let left = deadline.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                let sync = shared.spawn_spool_call(spool, Spool::sync);
                match tokio::time::timeout(left, sync).await {
                    Ok(Ok(Ok(()))) => synced = true,
                    Ok(Ok(Err(e))) => shared.warn_flush_sync(&e),
                    Ok(Err(_)) | Err(_) => {}
                }
            }
        } else {
            // Closed by shutdown, which synced it (once that finished).
            synced = stopped() && shared.close_synced();
        }
        let ack_failures = shared
            .ack_failures
            .load(std::sync::atomic::Ordering::Acquire)
            .saturating_sub(ack_failures_before);
        if ack_failures > 0 && !synced {
            tracing::warn!(
                ack_failures,
                "outlast: delivered records could not be acknowledged in the spool; they may be delivered again"
            );
        }
        let (remaining_records, remaining_bytes) = shared
            .spool_stats()
            .map_or((0, 0), |s| (s.records, s.pending_bytes));
        let backend = shared.backend_state();
        FlushReport {
            // A delivered record whose acknowledgement failed is still on disk as undelivered
            // unless a later sync wrote the read progress.
            complete: outcome == FlushOutcome::Drained && (ack_failures == 0 || synced),
            outcome,
            backend,
            next_attempt_in: if backend == BackendState::Online {
                None
            } else {
                shared.next_attempt_in()
            },
            synced,
            ack_failures,
            remaining_records,
            remaining_bytes,
            delivered: shared.counters.delivered() - delivered_before,
            dropped: shared.counters.dropped().total() - dropped_before,
            elapsed: start.elapsed(),
        }
    }

    /// Takes over released lanes of this client's identity (bounded by `deadline`); marks a
    /// backlog if any were adopted.
    async fn adopt_released(&self, deadline: Instant) {
        let shared = &self.inner.shared;
        let Some(spool) = shared.spool() else {
            return;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if !left.is_zero() {
            let _ = tokio::time::timeout(left, shared.adopt_released(spool)).await;
        }
    }

    /// Shuts the client down within `timeout`: stops accepting payloads (later `export`
    /// calls get [`DropError::ShutDown`] with the payload back), flushes, stops the drain
    /// task, syncs and closes the spool (releasing its lock; what was not delivered stays on
    /// disk for the next run), and calls the exporter's `shutdown` with the time left.
    ///
    /// Closing the spool (joining its background thread, an fdatasync) runs on the blocking
    /// pool, waited for within the time left (at least 10 ms): the report's
    /// [`synced`](FlushReport::synced) is true only if it finished. If it did not, it goes
    /// on in the background; the data is with the operating system either way, and the
    /// spool's lock is released when the close is done.
    ///
    /// Shutting down from one clone shuts down all of them.
    ///
    /// # Errors
    ///
    /// [`ShutdownError::AlreadyShutDown`] if a shutdown already completed;
    /// [`ShutdownError::Spool`] if closing the spool failed; [`ShutdownError::Exporter`] if
    /// the exporter's shutdown failed or did not finish in the time left (also logged as a
    /// warning). The last two carry the flush report; the spool is closed either way.
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped part-way, the client stays refusing new payloads and a later
    /// call finishes the shutdown.
    ///
    /// # Examples
    ///
    /// An exporter whose own shutdown fails: the error comes back, with the flush report.
    ///
    /// ```
    /// use std::time::Duration;
    /// use outlast_client::{Client, ErrorChain, ExportError, Exporter, Payload, ShutdownError};
    ///
    /// #[derive(Debug)]
    /// struct Leaky;
    ///
    /// impl Exporter for Leaky {
    ///     async fn export(&self, _: &Payload) -> Result<(), ExportError> {
    ///         Ok(())
    ///     }
    ///     async fn shutdown(&self) -> Result<(), ExportError> {
    ///         Err(ExportError::permanent("connection pool would not close"))
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// let client = Client::builder().spool_dir(dir.path()).build(Leaky)?;
    /// match client.shutdown(Duration::from_secs(1)).await {
    ///     Err(ShutdownError::Exporter { report, source }) => {
    ///         assert!(report.complete);
    ///         assert!(source.is_permanent());
    ///         assert!(ErrorChain(&source).to_string().contains("would not close"));
    ///     }
    ///     other => panic!("expected the exporter's error, got {other:?}"),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn shutdown(&self, timeout: Duration) -> Result<FlushReport, ShutdownError> {
        let start = Instant::now();
        let shared = &self.inner.shared;
        let mut done = self.inner.shutdown.lock().await;
        if *done {
            return Err(ShutdownError::AlreadyShutDown);
        }
        shared.stop_accepting();
        tracing::info!("outlast: shutting down");
        let report = self
            .force_flush(timeout.saturating_sub(start.elapsed()))
            .await;

        let (stop, task) = {
            let mut drain = self
                .inner
                .drain
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            (drain.stop.take(), drain.task.take())
        };
        if let Some(stop) = stop {
            // The task may already have ended (runtime shutting down): nothing to stop then.
            let _ = stop.send(());
        }
        if let Some(task) = task {
            // The task ends at its next poll, once an adoption of released lanes still under
            // way has returned (bounded, see `drain::run`): waited for within the time left
            // (at least a moment, so that a task with nothing to wait for is seen to end). A
            // task still waiting after that ends by itself, and the spool is then synced
            // rather than closed below. A join error (it panicked or was cancelled by the
            // runtime) leaves nothing to clean up.
            let left = timeout.saturating_sub(start.elapsed()).max(STOP_GRACE);
            let _ = tokio::time::timeout(left, task).await;
        }
        shared
            .stopped
            .store(true, std::sync::atomic::Ordering::Release);
        shared.progress.notify_waiters();

        // At least a moment, as for the drain task: a close with nothing slow to wait for
        // (the usual case) is seen to finish, and the lock is released before this returns.
        let left = timeout.saturating_sub(start.elapsed()).max(STOP_GRACE);
        let closed = shared.close_spool_within(left).await;
        let mut report = report;
        // Closing syncs the data and read progress: the report says whether that finished.
        report.synced = matches!(closed, Ok(true));
        let left = timeout.saturating_sub(start.elapsed());
        let exporter_result =
            match tokio::time::timeout(left, shared.exporter.shutdown_boxed()).await {
                Ok(r) => r,
                Err(_) => Err(outlast_core::ExportError::Timeout { after: left }),
            };
        *done = true;
        tracing::info!(
            complete = report.complete,
            remaining_records = report.remaining_records,
            "outlast: shut down"
        );
        if let Err(source) = closed {
            return Err(ShutdownError::Spool { report, source });
        }
        if let Err(source) = exporter_result {
            tracing::warn!(
                error = %outlast_core::ErrorChain(&source),
                "outlast: the exporter's shutdown failed"
            );
            return Err(ShutdownError::Exporter { report, source });
        }
        Ok(report)
    }

    /// The largest payload [`export`](Client::export) takes, in bytes (the
    /// [`max_record_bytes`](ClientBuilder::max_record_bytes) setting): a payload above it is
    /// refused as [`DropError::TooLarge`]. A producer that can split its data (as an
    /// OpenTelemetry batch can be split by spans) splits it below this instead.
    pub fn max_record_bytes(&self) -> u64 {
        self.inner.shared.settings.max_record_bytes
    }

    /// Counters and gauges: delivered, retried, spooled, replayed, dropped by reason, spool
    /// size, how full the spool is and how long until it is full at the recent spill rate,
    /// oldest record age, lanes of another identity left alone, online or not.
    pub fn stats(&self) -> ClientStats {
        let shared = &self.inner.shared;
        let c = &shared.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let spool = shared.spool_stats().unwrap_or_default();
        let capacity = shared.capacity(&spool);
        let drain = shared.drain_progress(&spool);
        let spool_state = shared.spool_state();
        ClientStats {
            exported: load(&c.exported),
            retried: load(&c.retried),
            spooled: load(&c.spooled),
            spooled_not_durable: load(&c.spooled_not_durable),
            replayed: load(&c.replayed),
            replay_failures: load(&c.replay_failures),
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
            backlog: shared.has_backlog(),
            spool: spool_state,
            shut_down: !shared.is_accepting(),
        }
    }
}

/// Counts an export's payload as [`DropReason::Cancelled`] when dropped still armed: the
/// caller dropped the `export` future before its outcome was counted.
struct CancelGuard<'a> {
    shared: &'a Shared,
    armed: bool,
}

impl CancelGuard<'_> {
    /// The outcome is counted (or will be, without this future): nothing to count on drop.
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            tracing::debug!(
                "outlast: export future dropped before its payload was delivered or spooled"
            );
            self.shared.record_drop(DropReason::Cancelled, 1);
        }
    }
}

/// Whether a wait of `delay` from now ends before `deadline` (always, without one).
fn ends_before(delay: Duration, deadline: Option<Instant>) -> bool {
    deadline.is_none_or(|d| Instant::now().checked_add(delay).is_some_and(|at| at < d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}

    #[test]
    fn client_is_send_sync_and_clone() {
        assert_send_sync::<Client>();
    }

    #[derive(Debug)]
    struct Named(Option<&'static str>);

    impl Exporter for Named {
        async fn export(&self, _payload: &Payload) -> Result<(), outlast_core::ExportError> {
            Ok(())
        }

        fn identity(&self) -> Option<String> {
            self.0.map(str::to_owned)
        }
    }

    /// The identity the spool of a client built from `builder` records.
    fn identity_of(
        builder: ClientBuilder,
        build: impl FnOnce(ClientBuilder) -> Client,
    ) -> Option<String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let _guard = rt.enter();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let c = build(builder.spool_dir(dir.path()));
        c.inner.shared.settings.spool.identity().map(str::to_owned)
    }

    #[test]
    fn the_identity_is_the_builders_else_the_exporters_else_its_type_name() {
        let build = |e: Named| move |b: ClientBuilder| b.build(e).expect("valid");
        assert_eq!(
            identity_of(Client::builder().identity("svc"), build(Named(Some("x")))).as_deref(),
            Some("svc")
        );
        assert_eq!(
            identity_of(Client::builder(), build(Named(Some("x")))).as_deref(),
            Some("x")
        );
        assert_eq!(
            identity_of(Client::builder(), build(Named(None))).as_deref(),
            Some(std::any::type_name::<Named>())
        );
        // An empty identity from the exporter counts as none.
        assert_eq!(
            identity_of(Client::builder(), build(Named(Some(" ")))).as_deref(),
            Some(std::any::type_name::<Named>())
        );
        // Behind a pointer the type is unknown: no identity unless one is named.
        let dynamic = |b: ClientBuilder| b.build_dyn(Arc::new(Named(None))).expect("valid");
        assert_eq!(identity_of(Client::builder(), dynamic), None);
        let dynamic = |b: ClientBuilder| b.build_dyn(Arc::new(Named(Some("y")))).expect("valid");
        assert_eq!(
            identity_of(Client::builder(), dynamic).as_deref(),
            Some("y")
        );
    }
}
