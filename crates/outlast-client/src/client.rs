//! The `Client` applications call: the export path (direct attempt, one quick retry, spill),
//! the offline fast path, `force_flush`, `shutdown` and `stats`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use outlast_core::Payload;
use outlast_core::retry::Decision;
use outlast_spool::Spool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::flush::{Answer, FlushOptions, FlushOutcome, FlushReport, FlushRequest};
use crate::health::{BackendState, Outcome, classify, deadline_after};
use crate::mailbox::Inbox;
use crate::shared::Shared;
use crate::stats::Count;
use crate::{ClientBuilder, ClientStats, Delivery, DropError, DropReason, ShutdownError};

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
            self.shared.store.release_in_background();
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

impl Client {
    /// A client over `shared`, its drain task started on `runtime` with `inbox`.
    pub(crate) fn start(
        shared: Arc<Shared>,
        inbox: Inbox,
        runtime: &tokio::runtime::Handle,
    ) -> Client {
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = runtime.spawn(crate::drain::run(Arc::clone(&shared), inbox, stop_rx));
        Client {
            inner: Arc::new(ClientInner {
                shared,
                drain: Mutex::new(DrainControl {
                    stop: Some(stop_tx),
                    task: Some(task),
                }),
                shutdown: tokio::sync::Mutex::new(false),
            }),
        }
    }

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
        let deadline = deadline_after(Instant::now(), budget);
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
        let live = shared.backlog.exists() && self.live_first();
        if shared.backlog.exists() && !live {
            // Offline fast path, and ordering: behind the backlog, without the network.
            return self.spool(payload, guard).await;
        }
        let past = |d: Instant| Instant::now() >= d;
        if deadline.is_some_and(past) {
            // No time for an attempt: the spool-first path.
            return self.spool(payload, guard).await;
        }

        let _direct = shared.direct.enter();
        let mut attempt = 1;
        loop {
            let (result, cut_short) = shared
                .attempts
                .attempt_by(std::slice::from_ref(&payload), deadline)
                .await;
            let error = match result {
                Ok(()) => {
                    shared.counters.add(Count::Exported, 1);
                    shared.mailbox.report(Outcome::Delivered, &shared.health);
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
                    tracing::debug!(target: crate::LOG_TARGET, error = %outlast_core::ErrorChain(&error), "outlast: live export beside a backlog failed; spooling");
                    self.gave_up(&error);
                    return self.spool(payload, guard).await;
                }
            }
            if cut_short {
                // The caller's deadline, not the backend, ended the attempt: spool the
                // payload; the drain task tries again at once.
                tracing::debug!(target: crate::LOG_TARGET,
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
                    if shared.backlog.exists() {
                        // Another export found the backend down meanwhile: queue behind it.
                        return self.spool(payload, guard).await;
                    }
                    shared.counters.add(Count::Retried, 1);
                    attempt += 1;
                }
                Decision::RetryAfter(_) | Decision::Spill => {
                    tracing::debug!(target: crate::LOG_TARGET, error = %outlast_core::ErrorChain(&error), attempts = attempt, "outlast: direct export failed; spooling");
                    self.gave_up(&error);
                    return self.spool(payload, guard).await;
                }
            }
        }
    }

    /// Tells the drain task that a direct export gave up on the backend after `error`: the
    /// backend's state becomes what the error says ([`classify`]), and the first replay
    /// waits for its `Retry-After`. Sent before the payload is spooled, so that the drain
    /// task, woken by the append, has it already.
    fn gave_up(&self, error: &outlast_core::ExportError) {
        let shared = &self.inner.shared;
        let outcome = Outcome::GaveUp {
            class: classify(error),
            retry_after: error.retry_after(),
        };
        shared.mailbox.report(outcome, &shared.health);
    }

    /// Whether a payload exported now goes directly although a backlog exists: the order is
    /// [`ReplayOrder::LiveFirst`](crate::ReplayOrder::LiveFirst) and the backend is
    /// reachable (the last attempt, direct or replayed, succeeded; at start, with a backlog
    /// an earlier run left, none has failed yet, and the first live attempt finds out).
    fn live_first(&self) -> bool {
        let shared = &self.inner.shared;
        shared.settings.pacing.order == crate::ReplayOrder::LiveFirst
            && shared.backend_state() == BackendState::Online
    }

    /// Appends to the spool ([`Shared::spool`]); `guard` is disarmed once an append on the
    /// blocking pool has started: it counts its own outcome.
    async fn spool(
        &self,
        payload: Payload,
        guard: &mut CancelGuard<'_>,
    ) -> Result<Delivery, DropError> {
        self.inner.shared.spool(payload, || guard.disarm()).await
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
        let deadline = deadline_after(start, timeout);
        let delivered_before = shared.counters.delivered();
        let dropped_before = shared.counters.dropped().total();
        let ack_failures_before = shared
            .ack_failures
            .load(std::sync::atomic::Ordering::Acquire);

        // The drain task adopts released lanes for the flush, tries at once (the backoff
        // starts again), and answers once nothing is left to deliver, or when its attempt
        // found the backend unreachable.
        let (reply, answer) = oneshot::channel();
        let request = FlushRequest {
            deadline,
            keep_trying: options.keep_trying,
            reply,
        };
        let sent = !shared.is_stopped() && shared.mailbox.flush(request);
        // `None`: the time ran out; `Some(None)`: the drain task is gone (stopped by a
        // shutdown): nobody drains any more.
        let answer = if sent {
            match tokio::time::timeout_at(deadline, answer).await {
                Ok(answered) => Some(answered.ok()),
                Err(_) => None,
            }
        } else {
            Some(None)
        };
        let outcome = match answer {
            Some(Some(Answer::Drained)) => FlushOutcome::Drained,
            Some(Some(Answer::Offline)) => FlushOutcome::Offline,
            _ if shared.is_drained() => FlushOutcome::Drained,
            Some(None) => FlushOutcome::ShutDown,
            None => FlushOutcome::TimedOut,
        };
        let synced = self.sync_for_flush(deadline).await;
        let ack_failures = shared
            .ack_failures
            .load(std::sync::atomic::Ordering::Acquire)
            .saturating_sub(ack_failures_before);
        if ack_failures > 0 && !synced {
            tracing::warn!(target: crate::LOG_TARGET,
                ack_failures,
                "outlast: delivered records could not be acknowledged in the spool; they may be delivered again"
            );
        }
        let (remaining_records, remaining_bytes) = shared
            .store
            .stats()
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
                shared.health.next_attempt_in()
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

    /// Makes a flush's outcome durable before it answers: the data written and the read
    /// progress (so a serverless instance frozen or killed after the flush re-sends as little
    /// as possible). Bounded by `deadline`; the fsync finishes in the background if not.
    async fn sync_for_flush(&self, deadline: Instant) -> bool {
        let shared = &self.inner.shared;
        let Some(spool) = shared.store.spool() else {
            // Closed by shutdown, which synced it (once that finished).
            return shared.is_stopped() && shared.store.close_synced();
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let sync = shared.store.spawn_call(spool, Spool::sync);
        match tokio::time::timeout(left, sync).await {
            Ok(Ok(Ok(()))) => true,
            Ok(Ok(Err(e))) => {
                shared.warn_flush_sync(&e);
                false
            }
            Ok(Err(_)) | Err(_) => false,
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
        tracing::info!(target: crate::LOG_TARGET, "outlast: shutting down");
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
        shared.mark_stopped();

        // At least a moment, as for the drain task: a close with nothing slow to wait for
        // (the usual case) is seen to finish, and the lock is released before this returns.
        let left = timeout.saturating_sub(start.elapsed()).max(STOP_GRACE);
        let closed = shared.store.close_within(left).await;
        let mut report = report;
        // Closing syncs the data and read progress: the report says whether that finished.
        report.synced = matches!(closed, Ok(true));
        let left = timeout.saturating_sub(start.elapsed());
        let exporter_result =
            match tokio::time::timeout(left, shared.exporter().shutdown_boxed()).await {
                Ok(r) => r,
                Err(_) => Err(outlast_core::ExportError::Timeout { after: left }),
            };
        *done = true;
        tracing::info!(target: crate::LOG_TARGET,
            complete = report.complete,
            remaining_records = report.remaining_records,
            "outlast: shut down"
        );
        if let Err(source) = closed {
            return Err(ShutdownError::Spool { report, source });
        }
        if let Err(source) = exporter_result {
            tracing::warn!(target: crate::LOG_TARGET,
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
        self.inner.shared.stats()
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
            tracing::debug!(target: crate::LOG_TARGET,
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
    use outlast_core::Exporter;

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
