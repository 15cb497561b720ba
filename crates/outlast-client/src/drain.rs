//! The drain task: replays the spool oldest first, acknowledges only what the backend
//! confirmed, backs off while the backend is down, and probes it when the exporter can.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use outlast_core::Reachability;
use outlast_core::retry::Backoff;
use outlast_spool::Spool;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::replay::{Replayed, Replayer, Window};
use crate::shared::Shared;
use crate::stats::Counters;

/// Runs the drain loop until `stop` fires or its sender is dropped (the last `Client` went
/// away). The loop itself never returns and never panics on I/O or exporter errors.
pub(crate) async fn run(shared: Arc<Shared>, stop: oneshot::Receiver<()>) {
    {
        let mut drain = Drain::new(&shared);
        tokio::select! {
            biased;
            _ = stop => {}
            () = drain.run() => {}
        }
    }
    tracing::debug!("outlast: drain task ended");
}

struct Drain<'a> {
    shared: &'a Shared,
    backoff: Backoff,
    /// When the next attempt may be made (after a failure).
    retry_at: Option<Instant>,
    /// False once the exporter answered a probe with `Unsupported`.
    probe_supported: bool,
    /// The last flush request acted on.
    seen_flush: u64,
}

impl<'a> Drain<'a> {
    fn new(shared: &'a Shared) -> Drain<'a> {
        Drain {
            shared,
            backoff: Backoff::new(shared.settings.retry),
            retry_at: None,
            probe_supported: true,
            seen_flush: shared.flush_epoch.load(Ordering::Acquire),
        }
    }

    async fn run(&mut self) {
        let shared = self.shared;
        loop {
            if !shared.has_backlog() {
                self.idle().await;
                continue;
            }
            if let Some(at) = self.retry_at.take() {
                self.wait_until(at).await;
            }
            // Flush requests made before this attempt are answered by it.
            self.seen_flush = shared.flush_epoch.load(Ordering::Acquire);
            let Some(spool) = shared.spool() else {
                // No spool (closed by shutdown): nothing can be drained any more.
                std::future::pending::<()>().await;
                continue;
            };
            // A probe that reached the backend opens the window at once: sending the oldest
            // record alone first would only add a round trip.
            let mut reachable = shared.is_online();
            if !reachable && self.probe_supported {
                match self.probe().await {
                    Reachability::Reachable => reachable = true,
                    Reachability::Unsupported => self.probe_supported = false,
                    Reachability::Unreachable => {
                        self.on_failure(None);
                        continue;
                    }
                }
            }
            // While offline without a probe, only the oldest record is sent, as a probe; once
            // it goes through, the window opens. With a pause between batches, batches go one
            // at a time.
            let pause = shared.settings.batch_delay;
            let window = if reachable {
                let exporter_limit = shared.exporter.max_in_flight_dyn().max(1);
                Window {
                    max_records: shared.settings.batch_size,
                    in_flight: shared.settings.max_in_flight.min(exporter_limit),
                    one_batch: !pause.is_zero(),
                }
            } else {
                Window {
                    max_records: 1,
                    in_flight: 1,
                    one_batch: true,
                }
            };
            match self.replay(&spool, window).await {
                Replayed::Empty => {}
                Replayed::Batch { full } => {
                    // Pause only when more records may follow (the batch was full).
                    if !pause.is_zero() && full {
                        tokio::time::sleep(pause).await;
                    }
                }
                Replayed::Failed(retry_after) => {
                    spool.rewind();
                    self.on_failure(retry_after);
                    shared.progress.notify_waiters();
                }
                Replayed::SpoolTrouble => {
                    spool.rewind();
                    self.on_spool_trouble();
                    shared.progress.notify_waiters();
                }
            }
        }
    }

    /// Waits for new records. If they come from a failed direct export (the backend was just
    /// found down), the first retry waits one backoff delay instead of hitting it again.
    async fn idle(&mut self) {
        let shared = self.shared;
        shared.progress.notify_waiters();
        let work = shared.work.notified();
        tokio::pin!(work);
        work.as_mut().enable();
        if !shared.has_backlog() {
            work.await;
        }
        if shared.has_backlog() && !shared.is_online() && self.retry_at.is_none() {
            let hint = shared.take_retry_after_hint();
            self.schedule_retry(hint);
        }
    }

    /// Sleeps until `at`, or until a flush asks to drain now (which also resets the backoff).
    async fn wait_until(&mut self, at: Instant) {
        let shared = self.shared;
        let flush = shared.flush_now.notified();
        tokio::pin!(flush);
        flush.as_mut().enable();
        if shared.flush_epoch.load(Ordering::Acquire) == self.seen_flush {
            tokio::select! {
                () = tokio::time::sleep_until(at) => return,
                () = &mut flush => {}
            }
        }
        tracing::debug!("outlast: flush requested; retrying now");
        self.backoff.reset();
    }

    async fn probe(&self) -> Reachability {
        let limit = self.shared.settings.attempt_timeout;
        match tokio::time::timeout(limit, self.shared.exporter.probe_boxed()).await {
            Ok(r) => r,
            Err(_) => Reachability::Unreachable,
        }
    }

    fn schedule_retry(&mut self, retry_after: Option<Duration>) -> Duration {
        let delay = self.backoff.next_delay(retry_after);
        self.retry_at = Some(Instant::now() + delay);
        delay
    }

    fn on_failure(&mut self, retry_after: Option<Duration>) {
        Counters::bump(&self.shared.counters.replay_failures);
        self.shared.set_online(false);
        let delay = self.schedule_retry(retry_after);
        self.shared.warn_retrying(delay);
    }

    /// The spool could not be read or acknowledged: retry after a backoff delay, without
    /// declaring the backend unreachable.
    fn on_spool_trouble(&mut self) {
        self.schedule_retry(None);
    }

    /// Replays the spool through the sliding window of [`crate::replay`].
    async fn replay(&mut self, spool: &Arc<Spool>, w: Window) -> Replayed {
        Replayer::new(self.shared, &mut self.backoff)
            .replay(spool, w)
            .await
    }
}
