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
pub struct FlushReport {
    /// Whether everything was delivered (or dropped on purpose): the spool is empty and no
    /// export is under way.
    pub complete: bool,
    /// Records still waiting in the spool; they stay on disk for a later flush, the drain
    /// task, or the next process using the same spool directory.
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
// sees the channel close and ends, releasing the spool (whose Drop syncs it).

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
    pub fn build<E: Exporter>(self, exporter: E) -> Result<Client, ConfigError> {
        self.build_dyn(Arc::new(exporter))
    }

    /// As [`build`](ClientBuilder::build), for an exporter already behind a pointer.
    ///
    /// # Errors
    ///
    /// As [`build`](ClientBuilder::build).
    pub fn build_dyn(self, exporter: Arc<dyn DynExporter>) -> Result<Client, ConfigError> {
        let settings = self.resolve()?;
        let runtime = match self.runtime {
            Some(h) => h,
            None => tokio::runtime::Handle::try_current().map_err(|_| {
                ConfigError::invalid(
                    "runtime",
                    "build() must be called within a Tokio runtime, or be given one with ClientBuilder::runtime",
                )
            })?,
        };
        let (spool, open_error, recovered) = match Spool::open(settings.spool.clone()) {
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
            spool,
            open_error,
            recovered.records > 0,
        ));
        if recovered.corrupt_frames_skipped > 0 {
            shared.record_drop(DropReason::Corrupt, recovered.corrupt_frames_skipped);
        }
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
    /// - While a backlog exists (the backend was found unreachable, or an earlier run left
    ///   records), the payload goes straight to the spool without touching the network, so
    ///   it is delivered after the older records, and the call returns within microseconds
    ///   (in the default `OsWrite` durability mode; `FsyncEveryAppend` waits for the disk).
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
    /// backend may still have received it) and the payload is neither retried nor spooled,
    /// except in `FsyncEveryAppend` mode once the append has started on the blocking pool: it
    /// then completes and is counted as spooled.
    pub async fn export(&self, payload: Payload) -> Result<Delivery, DropError> {
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
        if shared.has_backlog() {
            // Offline fast path, and ordering: behind the backlog, without the network.
            return self.spool(payload).await;
        }

        let _direct = shared.enter_direct();
        let mut attempt = 1;
        loop {
            let error = match shared.attempt(&payload).await {
                Ok(()) => {
                    Counters::bump(&shared.counters.exported);
                    shared.set_online(true);
                    return Ok(Delivery::Delivered);
                }
                Err(e) => e,
            };
            match shared.settings.retry.on_direct_failure(attempt, &error) {
                Decision::Drop => {
                    shared.record_drop(DropReason::Permanent, 1);
                    return Err(DropError::Permanent {
                        payload,
                        source: error,
                    });
                }
                Decision::RetryAfter(delay) => {
                    tokio::time::sleep(delay).await;
                    if shared.has_backlog() {
                        // Another export found the backend down meanwhile: queue behind it.
                        return self.spool(payload).await;
                    }
                    Counters::bump(&shared.counters.retried);
                    attempt += 1;
                }
                Decision::Spill => {
                    tracing::debug!(error = %outlast_core::ErrorChain(&error), attempts = attempt, "outlast: direct export failed; spooling");
                    shared.set_retry_after_hint(error.retry_after());
                    shared.set_online(false);
                    return self.spool(payload).await;
                }
            }
        }
    }

    /// Appends to the spool: inline in `OsWrite` mode (one `write(2)`, no allocation beyond
    /// the frame), on the blocking pool in `FsyncEveryAppend` mode.
    async fn spool(&self, payload: Payload) -> Result<Delivery, DropError> {
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
        match tokio::task::spawn_blocking(move || task_shared.append_to(&spool, payload)).await {
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

    /// Delivers what is waiting now: resets the backoff, wakes the drain task, and waits
    /// until the spool is empty and no export is under way, or until `timeout`, whichever
    /// comes first. Serverless handlers call this at the end of each invocation.
    ///
    /// It returns within `timeout` even if the backend hangs (attempts are bounded by their
    /// own timeout and the flush does not wait for them past its deadline). What is not
    /// delivered stays in the spool. Before answering, it syncs the spool (data and read
    /// progress) within the time left, so that what the flush delivered is not sent again
    /// after a crash and what it did not deliver survives a power loss.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future changes nothing (the drain task carries on as it
    /// would have).
    pub async fn force_flush(&self, timeout: Duration) -> FlushReport {
        let shared = &self.inner.shared;
        let start = Instant::now();
        let deadline = start + timeout;
        let delivered_before = shared.counters.delivered();
        let dropped_before = shared.counters.dropped().total();

        if !shared.stopped.load(std::sync::atomic::Ordering::Acquire) {
            shared
                .flush_epoch
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            shared.flush_now.notify_waiters();
            shared.work.notify_one();
        }
        let complete = loop {
            let progress = shared.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            if shared.is_drained() {
                break true;
            }
            if shared.stopped.load(std::sync::atomic::Ordering::Acquire) {
                // Shut down: nobody drains any more.
                break false;
            }
            tokio::select! {
                () = &mut progress => {}
                () = tokio::time::sleep_until(deadline) => break shared.is_drained(),
            }
        };
        // Make the outcome durable before answering: the data written and the read progress
        // (so a serverless instance frozen or killed after the flush re-sends as little as
        // possible). Bounded by the time left; the fsync finishes in the background if not.
        if let Some(spool) = shared.spool() {
            let left = deadline.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                let sync = tokio::task::spawn_blocking(move || spool.sync());
                if let Ok(Ok(Err(e))) = tokio::time::timeout(left, sync).await {
                    shared.warn_flush_sync(&e);
                }
            }
        }
        let (remaining_records, remaining_bytes) = shared
            .spool_stats()
            .map_or((0, 0), |s| (s.records, s.pending_bytes));
        FlushReport {
            complete,
            remaining_records,
            remaining_bytes,
            delivered: shared.counters.delivered() - delivered_before,
            dropped: shared.counters.dropped().total() - dropped_before,
            elapsed: start.elapsed(),
        }
    }

    /// Shuts the client down within `timeout`: stops accepting payloads (later `export`
    /// calls get [`DropError::ShutDown`] with the payload back), flushes, stops the drain
    /// task, syncs and closes the spool (releasing its lock; what was not delivered stays on
    /// disk for the next run), and calls the exporter's `shutdown` with the time left.
    ///
    /// Shutting down from one clone shuts down all of them.
    ///
    /// # Errors
    ///
    /// [`ShutdownError::AlreadyShutDown`] if a shutdown already completed;
    /// [`ShutdownError::Spool`] if closing the spool failed; [`ShutdownError::Exporter`] if
    /// the exporter's shutdown failed or did not finish in the time left. The last two carry
    /// the flush report.
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped part-way, the client stays refusing new payloads and a later
    /// call finishes the shutdown.
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
            // The task ends at its next poll; a join error (it panicked or was cancelled by
            // the runtime) leaves nothing to clean up.
            let _ = task.await;
        }
        shared
            .stopped
            .store(true, std::sync::atomic::Ordering::Release);
        shared.progress.notify_waiters();

        let closed = shared.close_spool();
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
            return Err(ShutdownError::Exporter { report, source });
        }
        Ok(report)
    }

    /// Counters and gauges: delivered, retried, spooled, replayed, dropped by reason, spool
    /// size, oldest record age, online or not.
    pub fn stats(&self) -> ClientStats {
        let shared = &self.inner.shared;
        let c = &shared.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let spool = shared.spool_stats().unwrap_or_default();
        ClientStats {
            exported: load(&c.exported),
            retried: load(&c.retried),
            spooled: load(&c.spooled),
            replayed: load(&c.replayed),
            replay_failures: load(&c.replay_failures),
            dropped: c.dropped(),
            spool_records: spool.records,
            spool_bytes: spool.bytes,
            pending_bytes: spool.pending_bytes,
            oldest_record_age: spool
                .oldest_created_at
                .map(|t| SystemTime::now().duration_since(t).unwrap_or_default()),
            online: shared.is_online(),
            backlog: shared.has_backlog(),
            spool_available: shared.spool_available(),
            spool: shared.spool_state(),
            shut_down: !shared.is_accepting(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}

    #[test]
    fn client_is_send_sync_and_clone() {
        assert_send_sync::<Client>();
    }
}
