//! The drain task: replays the spool oldest first, acknowledges only what the backend
//! confirmed, backs off while the backend is down, and probes it when the exporter can.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use outlast_core::Reachability;
use outlast_core::retry::{Backoff, RetryPolicy};
use outlast_spool::Spool;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::BackendState;
use crate::pace::RateCap;
use crate::replay::{Replayed, Replayer, Window};
use crate::shared::Shared;
use crate::stats::Counters;

/// Runs the drain loop until `stop` fires or its sender is dropped (the last `Client` went
/// away). The loop itself never returns and never panics on I/O or exporter errors.
///
/// As it stops, the task waits (at most [`SPOOL_CALLS_STOP_WAIT`]) for spool calls still
/// running on the blocking pool that it or a flush started and stopped waiting for (an
/// adoption of released lanes, a flush's sync), so that when it ends, none of them holds the
/// spool any more. When the last `Client` was dropped (no `shutdown` closes the spool), it
/// then hands the spool's close (the background thread's join, the fdatasync, the release of
/// its locks) to the blocking pool, so that no worker thread waits for the disk. (A read or
/// acknowledgement of the replay under way is not waited for: it takes one batch.)
pub(crate) async fn run(shared: Arc<Shared>, stop: oneshot::Receiver<()>) {
    let last_client_gone = {
        let mut drain = Drain::new(&shared);
        tokio::select! {
            biased;
            stopped = stop => stopped.is_err(),
            () = drain.run() => false,
        }
    };
    shared.wait_for_spool_calls(SPOOL_CALLS_STOP_WAIT).await;
    if last_client_gone {
        // No `shutdown` closes the spool: close it here, on the blocking pool, so that
        // neither this worker thread nor the thread that dropped the client waits for the
        // background thread's join and the fdatasync.
        shared.release_spool_in_background();
    }
    tracing::debug!("outlast: drain task ended");
}

/// How long a stopping drain task waits for spool calls still under way (an adoption reads
/// the segments of each lane it takes: about a second per few hundred MiB). Past it, the task
/// ends anyway and each call lets the spool go when it returns.
const SPOOL_CALLS_STOP_WAIT: Duration = Duration::from_secs(10);

struct Drain<'a> {
    shared: &'a Shared,
    backoff: Backoff,
    /// When the next attempt may be made (after a failure).
    retry_at: Option<Instant>,
    /// When the next probe is due, while the backend is unreachable at the transport level
    /// (before `retry_at`: a successful probe starts the replay early).
    probe_at: Option<Instant>,
    /// The probe's cadence, jittered (initial and maximum delay are `probe_interval`).
    probe_delays: Backoff,
    /// False once the exporter answered a probe with `Unsupported`.
    probe_supported: bool,
    /// False after a replay started by a successful probe failed all the same (a port that
    /// accepts connections but a backend that does not answer): until the next delivery,
    /// the probe's word does not start replays early.
    probe_trusted: bool,
    /// The replay about to start was started by a successful probe.
    probe_led: bool,
    /// The last flush request acted on.
    seen_flush: u64,
    /// When the idle task last looked for released lanes.
    last_adopt: Instant,
    /// The replay rate cap (its buckets keep their level from one replay to the next).
    cap: RateCap,
}

/// How often an idle drain task looks for lanes of its identity that another process
/// released: once a second keeps a directory listing per second off the hot path while a
/// lane left by an exiting process is picked up about as fast as a person would look.
const ADOPT_INTERVAL: Duration = Duration::from_secs(1);

impl<'a> Drain<'a> {
    fn new(shared: &'a Shared) -> Drain<'a> {
        let probe_interval = shared.recovery.probe_interval;
        let probe_policy = RetryPolicy {
            initial_backoff: probe_interval,
            max_backoff: probe_interval,
            ..shared.settings.retry
        };
        Drain {
            shared,
            backoff: Backoff::new(shared.settings.retry),
            retry_at: None,
            probe_at: None,
            probe_delays: Backoff::new(probe_policy),
            probe_supported: true,
            probe_trusted: true,
            probe_led: false,
            // Epochs start at 0 when the client is built: a flush made before this task first
            // ran is still to be answered.
            seen_flush: 0,
            last_adopt: Instant::now(),
            cap: RateCap::new(
                shared.settings.pacing.bytes_per_sec,
                shared.settings.pacing.requests_per_sec,
            ),
        }
    }

    async fn run(&mut self) {
        let shared = self.shared;
        loop {
            if !shared.has_backlog() {
                self.idle().await;
                continue;
            }
            if !shared.is_online() && self.retry_at.is_none() {
                // The records come from a failed direct export (the backend was just found
                // down): the first retry waits one backoff delay instead of hitting it again.
                let hint = shared.take_retry_after_hint();
                self.schedule_retry(hint);
            }
            self.wait_for_next_try().await;
            // Flush requests made before this attempt are answered by it.
            self.seen_flush = shared.flush_epoch.load(Ordering::Acquire);
            let Some(spool) = shared.spool() else {
                // No spool (closed by shutdown): nothing can be drained any more.
                std::future::pending::<()>().await;
                continue;
            };
            // A probe that reached the backend opens the window at once: sending the oldest
            // record alone first would only add a round trip.
            let probe_led = std::mem::take(&mut self.probe_led);
            let mut reachable = shared.is_online() || probe_led;
            if !reachable && self.probe_supported {
                match self.probe().await {
                    Reachability::Reachable => reachable = true,
                    Reachability::Unsupported => self.probe_supported = false,
                    Reachability::Unreachable => {
                        shared.set_backend_state(BackendState::Unreachable);
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
                Replayed::Empty => self.on_delivered(),
                Replayed::Batch { full } => {
                    self.on_delivered();
                    // Pause only when more records may follow (the batch was full).
                    if !pause.is_zero() && full {
                        tokio::time::sleep(pause).await;
                    }
                }
                Replayed::Failed(retry_after) => {
                    spool.rewind();
                    if probe_led && self.probe_trusted {
                        tracing::debug!(
                            "outlast: the backend accepted the probe but not the replay; probing no longer starts replays early"
                        );
                        self.probe_trusted = false;
                    }
                    shared.set_online(false);
                    self.on_failure(retry_after);
                }
                Replayed::SpoolTrouble => {
                    spool.rewind();
                    self.on_spool_trouble();
                    shared.progress.notify_waiters();
                }
            }
        }
    }

    /// After a replay that ended without a retryable failure: a probe can be trusted again
    /// once something was delivered.
    fn on_delivered(&mut self) {
        if self.shared.is_online() {
            self.shared.set_next_attempt_at(None);
            self.probe_trusted = true;
            self.probe_at = None;
        }
    }

    /// Waits for new records, looking for released lanes of this client's identity about
    /// once a second meanwhile.
    async fn idle(&mut self) {
        let shared = self.shared;
        shared.progress.notify_waiters();
        let work = shared.work.notified();
        tokio::pin!(work);
        work.as_mut().enable();
        while !shared.has_backlog() {
            let adopt_at = crate::shared::deadline_after(self.last_adopt, ADOPT_INTERVAL);
            tokio::select! {
                () = &mut work => break,
                () = tokio::time::sleep_until(adopt_at) => {
                    self.last_adopt = Instant::now();
                    self.adopt_released().await;
                }
            }
        }
    }

    /// Takes over released lanes of this identity; a backlog is marked if any were adopted.
    async fn adopt_released(&self) {
        let shared = self.shared;
        if let Some(spool) = shared.spool() {
            shared.adopt_released(spool).await;
        }
    }

    /// Waits until the next attempt is due, probing meanwhile while the backend is
    /// unreachable at the transport level: a successful probe ends the wait early.
    async fn wait_for_next_try(&mut self) {
        while let Some(retry_at) = self.retry_at {
            let probe_at = self.probe_at.filter(|p| *p < retry_at && self.probing());
            let wake = probe_at.unwrap_or(retry_at);
            self.shared.set_next_attempt_at(Some(wake));
            if !self.wait_until(wake).await {
                // A flush: try now.
                break;
            }
            if probe_at.is_none() {
                break;
            }
            match self.probe().await {
                Reachability::Reachable => {
                    tracing::debug!("outlast: probe reached the backend; replaying now");
                    self.probe_led = true;
                    break;
                }
                Reachability::Unsupported => {
                    self.probe_supported = false;
                    self.probe_at = None;
                }
                Reachability::Unreachable => self.schedule_probe(),
            }
        }
        self.retry_at = None;
        self.probe_at = None;
    }

    /// Whether the backend is probed on the probe's own cadence: it is unreachable at the
    /// transport level, the exporter has a probe, and the probe has not been misleading.
    fn probing(&self) -> bool {
        self.probe_supported
            && self.probe_trusted
            && self.shared.backend_state() == BackendState::Unreachable
    }

    /// Sleeps until `at`, or until a flush asks to drain now (which also resets the
    /// backoff). True if `at` was reached.
    async fn wait_until(&mut self, at: Instant) -> bool {
        let shared = self.shared;
        let flush = shared.flush_now.notified();
        tokio::pin!(flush);
        flush.as_mut().enable();
        if shared.flush_epoch.load(Ordering::Acquire) == self.seen_flush {
            tokio::select! {
                () = tokio::time::sleep_until(at) => return true,
                () = &mut flush => {}
            }
        }
        tracing::debug!("outlast: flush requested; retrying now");
        self.backoff.reset();
        false
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
        self.retry_at = Some(crate::shared::deadline_after(Instant::now(), delay));
        self.schedule_probe();
        delay
    }

    /// Sets the next probe one (jittered) probe interval from now, if probing.
    fn schedule_probe(&mut self) {
        self.probe_at = if self.probing() {
            let delay = self.probe_delays.next_delay(None);
            Some(crate::shared::deadline_after(Instant::now(), delay))
        } else {
            None
        };
    }

    /// A retryable failure (of an attempt or of the probe): back off, tell the flushes
    /// waiting for this attempt, warn (rate-limited).
    fn on_failure(&mut self, retry_after: Option<Duration>) {
        let shared = self.shared;
        Counters::bump(&shared.counters.replay_failures);
        if shared.is_online() {
            shared.set_online(false);
        }
        let delay = self.schedule_retry(retry_after);
        let next_probe = self
            .probe_at
            .map(|at| at.saturating_duration_since(Instant::now()));
        shared.set_next_attempt_at(self.probe_at.or(self.retry_at));
        shared.warn_retrying(delay, next_probe);
        shared.answer_flush(self.seen_flush);
    }

    /// The spool could not be read or acknowledged: retry after a backoff delay, without
    /// declaring the backend unreachable.
    fn on_spool_trouble(&mut self) {
        self.schedule_retry(None);
    }

    /// Replays the spool through the sliding window of [`crate::replay`].
    async fn replay(&mut self, spool: &Arc<Spool>, w: Window) -> Replayed {
        Replayer::new(self.shared, &mut self.backoff, &mut self.cap)
            .replay(spool, w)
            .await
    }
}
