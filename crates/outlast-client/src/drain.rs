//! The drain task: replays the spool oldest first, acknowledges only what the backend
//! confirmed, backs off while the backend is down, probes it when the exporter can, and
//! answers flushes.
//!
//! It owns the backend's state ([`Health`]), the flushes waiting on it and the adoption of
//! released lanes; the other rooms tell it things through its mailbox (direct exports'
//! outcomes, flush requests) and read what it publishes.

use std::sync::Arc;
use std::time::Duration;

use outlast_core::Reachability;
use outlast_spool::{Spool, SpoolError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::health::{Change, Health, deadline_after};
use crate::mailbox::{Inbox, Msg};
use crate::pace::RateCap;
use crate::replay::{Replayed, Replayer};
use crate::shared::Shared;
use crate::stats::Count;
use crate::window::Window;

/// Runs the drain loop until `stop` fires or its sender is dropped (the last `Client` went
/// away). The loop itself never returns and never panics on I/O or exporter errors.
///
/// As it stops, the flushes still waiting on it are dropped (their callers see the drain
/// task gone), and the task waits (at most [`SPOOL_CALLS_STOP_WAIT`]) for spool calls still
/// running on the blocking pool that it or a flush started and stopped waiting for (an
/// adoption of released lanes, a flush's sync, the replay's read or acknowledgement, each
/// of which counts what it did itself), so that when it ends, none of them holds the spool
/// any more. It then settles the replay's reading (see [`settle`]). When the last `Client`
/// was dropped (no `shutdown` closes the spool), it then hands the spool's close (the
/// background thread's join, the fdatasync, the release of its locks) to the blocking pool,
/// so that no worker thread waits for the disk.
pub(crate) async fn run(shared: Arc<Shared>, inbox: Inbox, stop: oneshot::Receiver<()>) {
    // Held until the replay's reading is settled as the task ends (see `settle`), so that
    // the spool is not closed under it when a call that outlived a shutdown lets it go.
    let held = shared.store.spool();
    let last_client_gone = {
        let mut drain = Drain::new(&shared, inbox);
        tokio::select! {
            biased;
            stopped = stop => stopped.is_err(),
            () = drain.run() => false,
        }
    };
    shared.store.wait_for_calls(SPOOL_CALLS_STOP_WAIT).await;
    if let Some(spool) = held {
        settle(&shared, spool).await;
    }
    if last_client_gone {
        // No `shutdown` closes the spool: close it here, on the blocking pool, so that
        // neither this worker thread nor the thread that dropped the client waits for the
        // background thread's join and the fdatasync.
        shared.store.release_in_background();
    }
    tracing::debug!(target: crate::LOG_TARGET, "outlast: drain task ended");
}

/// Ends the replay's reading for good: what it had read and not seen acknowledged is
/// waiting again, except records whose segment was evicted, or that expired, while they
/// were in flight: those are lost, and counted here, once (no later read would report
/// them, and close counts them in the spool's own figures only). On the blocking pool: it
/// takes each lane's consumer lock, which a read holds while it reads from disk; `spool`
/// is let go there too (if a shutdown took the spool out meanwhile, this may be its last
/// handle, and its close waits for the disk).
async fn settle(shared: &Arc<Shared>, spool: Arc<Spool>) {
    // Counted in the call, before it notes the gauges (see `SpoolSlot::spawn_call`), so
    // that `stats()` never shows these records neither waiting nor dropped.
    let counter = Arc::clone(shared);
    let call = shared
        .store
        .spawn_call(spool, move |s| counter.count_read_losses(&s.settle()));
    if let Err(e) = call.await {
        tracing::error!(target: crate::LOG_TARGET, error = %e, "outlast: spool task failed");
    }
}

/// How long a stopping drain task waits for spool calls still under way (an adoption reads
/// the segments of each lane it takes: about a second per few hundred MiB). Past it, the task
/// ends anyway and each call lets the spool go when it returns.
const SPOOL_CALLS_STOP_WAIT: Duration = Duration::from_secs(10);

/// How often an idle drain task looks for lanes of its identity that another process
/// released: once a second keeps a directory listing per second off the hot path while a
/// lane left by an exiting process is picked up about as fast as a person would look.
const ADOPT_INTERVAL: Duration = Duration::from_secs(1);

struct Drain<'a> {
    shared: &'a Arc<Shared>,
    health: Health,
    inbox: Inbox,
    /// When the idle task last looked for released lanes.
    last_adopt: Instant,
    /// A flush arrived: released lanes are adopted before its attempt, within its deadline
    /// (the latest of the flushes that asked).
    adopt_for_flush: Option<Instant>,
    /// The adoption of released lanes running on the blocking pool, if one is: one at a
    /// time, kept here when a flush's deadline stopped the wait for it, so that the next
    /// adoption waits for it and counts its outcome.
    adoption: Option<JoinHandle<Result<usize, SpoolError>>>,
    /// The replay rate cap (its buckets keep their level from one replay to the next).
    cap: RateCap,
}

impl<'a> Drain<'a> {
    fn new(shared: &'a Arc<Shared>, inbox: Inbox) -> Drain<'a> {
        Drain {
            shared,
            health: Health::new(shared.settings.retry, shared.recovery.probe_interval),
            inbox,
            last_adopt: Instant::now(),
            adopt_for_flush: None,
            adoption: None,
            cap: RateCap::new(
                shared.settings.pacing.bytes_per_sec,
                shared.settings.pacing.requests_per_sec,
            ),
        }
    }

    async fn run(&mut self) {
        let shared = self.shared;
        loop {
            self.take_mail();
            if let Some(deadline) = self.adopt_for_flush.take() {
                self.adopt_released(Some(deadline)).await;
            }
            if !shared.backlog.exists() {
                self.idle().await;
                continue;
            }
            self.health.on_backlog(Instant::now());
            self.wait_for_next_try().await;
            if let Some(deadline) = self.adopt_for_flush.take() {
                // A flush came during the wait: its lanes join this attempt.
                self.adopt_released(Some(deadline)).await;
            }
            // The flushes waiting now hear of this attempt.
            self.inbox.flushes.attempt_started();
            let Some(spool) = shared.store.spool() else {
                // No spool (closed by shutdown): nothing can be drained any more.
                std::future::pending::<()>().await;
                continue;
            };
            // A probe that reached the backend opens the window at once: sending the oldest
            // record alone first would only add a round trip.
            let (mut reachable, probe_led) = self.health.take_reachable();
            if !reachable && self.health.probe_supported() {
                let answer = self.probe().await;
                if let Some((change, delay)) = self.health.on_probe(answer, Instant::now()) {
                    self.after_failure(change, delay);
                    continue;
                }
                reachable = answer == Reachability::Reachable;
            }
            match self.replay(&spool, window(shared, reachable)).await {
                Replayed::Empty => self.after_replay(),
                Replayed::Batch { full } => {
                    self.after_replay();
                    // Pause only when more records may follow (the batch was full).
                    let pause = shared.settings.batch_delay;
                    if !pause.is_zero() && full {
                        tokio::time::sleep(pause).await;
                    }
                }
                Replayed::Failed(retry_after) => {
                    spool.rewind();
                    let (change, delay) =
                        self.health
                            .on_replay_failed(retry_after, probe_led, Instant::now());
                    self.after_failure(change, delay);
                }
                Replayed::SpoolTrouble => {
                    spool.rewind();
                    self.health.on_spool_trouble(Instant::now());
                }
            }
        }
    }

    /// Takes in the messages waiting in the mailbox.
    fn take_mail(&mut self) {
        let now = Instant::now();
        let changes = self
            .inbox
            .take_waiting(&mut self.health, &self.shared.health, now);
        self.shared.log_changes(changes);
        self.note_flushes();
        // Flushes whose caller stopped waiting ask for nothing any more.
        self.inbox.flushes.prune(now);
    }

    /// Takes in one message.
    fn take(&mut self, msg: Msg) {
        let change = self
            .inbox
            .take(msg, &mut self.health, &self.shared.health, Instant::now());
        self.shared.log_changes(change);
        self.note_flushes();
    }

    /// New flushes adopt released lanes first, within the latest of their deadlines.
    fn note_flushes(&mut self) {
        if let Some(deadline) = self.inbox.flushes.take_new() {
            self.adopt_for_flush = self.adopt_for_flush.max(Some(deadline));
        }
    }

    /// After a replay that ended without a retryable failure.
    fn after_replay(&mut self) {
        self.health.on_replayed();
        if self.health.is_online() {
            self.shared.health.publish_next_attempt(None);
        }
    }

    /// A retryable failure (of an attempt or of the probe): counted, published, warned
    /// about (rate-limited); the flushes it was made for hear of it when the backend is
    /// unreachable at the transport level.
    fn after_failure(&mut self, change: Option<Change>, delay: Duration) {
        let shared = self.shared;
        shared.counters.add(Count::ReplayFailures, 1);
        shared.publish(&self.health, change);
        let now = Instant::now();
        shared
            .health
            .publish_next_attempt(self.health.next_wake().map(|w| w.at));
        let next_probe = self
            .health
            .probe_at()
            .map(|at| at.saturating_duration_since(now));
        shared.warn_retrying(delay, next_probe);
        if self.health.state() == crate::BackendState::Unreachable {
            self.inbox.flushes.unreachable();
        }
    }

    /// Waits for new records, answering flushes once nothing is left to deliver and looking
    /// for released lanes of this client's identity about once a second meanwhile.
    async fn idle(&mut self) {
        let shared = self.shared;
        loop {
            let work = shared.backlog.work.notified();
            tokio::pin!(work);
            work.as_mut().enable();
            self.take_mail();
            if let Some(deadline) = self.adopt_for_flush.take() {
                self.adopt_released(Some(deadline)).await;
            }
            if shared.backlog.exists() {
                return;
            }
            // The end of a direct export matters only to a flush waiting for it: without
            // one, the task is not woken by every export.
            let direct_done = shared.direct.done.notified();
            tokio::pin!(direct_done);
            if !self.inbox.flushes.is_empty() {
                direct_done.as_mut().enable();
            }
            if shared.is_drained() {
                self.inbox.flushes.drained();
            }
            let flushes_wait = !self.inbox.flushes.is_empty();
            let adopt_at = deadline_after(self.last_adopt, ADOPT_INTERVAL);
            tokio::select! {
                () = &mut work => {}
                () = &mut direct_done, if flushes_wait => {}
                msg = self.inbox.recv() => {
                    if let Some(msg) = msg {
                        self.take(msg);
                    }
                }
                () = tokio::time::sleep_until(adopt_at) => {
                    self.last_adopt = Instant::now();
                    self.adopt_released(None).await;
                }
            }
        }
    }

    /// Takes over released lanes of this identity and marks a backlog if any were adopted.
    /// [`Spool::adopt_released`] lists the lanes, try-locks them and recovers each one it
    /// takes (it reads their segments): it runs on the blocking pool, one call at a time. A
    /// `deadline` (a flush's) bounds the wait; the call then goes on, kept for the next one.
    async fn adopt_released(&mut self, deadline: Option<Instant>) {
        let shared = self.shared;
        let Some(spool) = shared.store.spool() else {
            return;
        };
        let far = deadline_after(Instant::now(), Duration::MAX);
        let deadline = deadline.unwrap_or(far);
        // An earlier call still running is waited for (and counted) first.
        if !self.finish_adoption(deadline).await {
            return;
        }
        self.adoption = Some(shared.store.spawn_call(spool, Spool::adopt_released));
        self.finish_adoption(deadline).await;
    }

    /// Waits, until `deadline`, for the adoption under way (if one is) and counts its
    /// outcome. False if the deadline came first: the call goes on, kept for the next wait.
    async fn finish_adoption(&mut self, deadline: Instant) -> bool {
        let Some(call) = self.adoption.as_mut() else {
            return true;
        };
        let Ok(joined) = tokio::time::timeout_at(deadline, call).await else {
            return false;
        };
        self.adoption = None;
        self.shared.on_adopted(joined);
        true
    }

    /// Waits until the next attempt is due, probing meanwhile while the backend is
    /// unreachable at the transport level: a successful probe ends the wait early, and so
    /// does a flush (the backoff then starts again).
    async fn wait_for_next_try(&mut self) {
        while let Some(wake) = self.health.next_wake() {
            self.shared.health.publish_next_attempt(Some(wake.at));
            if !self.wait_until(wake.at).await {
                tracing::debug!(target: crate::LOG_TARGET, "outlast: flush requested; retrying now");
                self.health.try_now();
                break;
            }
            if !wake.probe {
                break;
            }
            let answer = self.probe().await;
            if self.health.on_waiting_probe(answer, Instant::now()) {
                tracing::debug!(target: crate::LOG_TARGET, "outlast: probe reached the backend; replaying now");
                break;
            }
        }
        self.health.clear_schedule();
    }

    /// Sleeps until `at`, taking in messages meanwhile. False if a flush asks for an attempt
    /// first.
    async fn wait_until(&mut self, at: Instant) -> bool {
        loop {
            self.take_mail();
            if self.inbox.flushes.wants_attempt() {
                return false;
            }
            tokio::select! {
                () = tokio::time::sleep_until(at) => return true,
                msg = self.inbox.recv() => {
                    if let Some(msg) = msg {
                        self.take(msg);
                    }
                }
            }
        }
    }

    async fn probe(&self) -> Reachability {
        let limit = self.shared.settings.attempt_timeout;
        match tokio::time::timeout(limit, self.shared.exporter().probe_boxed()).await {
            Ok(r) => r,
            Err(_) => Reachability::Unreachable,
        }
    }

    /// Replays the spool through the sliding window of [`crate::replay`].
    async fn replay(&mut self, spool: &Arc<Spool>, w: Window) -> Replayed {
        Replayer::new(
            self.shared,
            &mut self.health,
            &mut self.inbox,
            &mut self.cap,
        )
        .replay(spool, w)
        .await
    }
}

/// The replay's window: while offline without a probe, only the oldest record is sent, as a
/// probe; once it goes through, the window opens. With a pause between batches, batches go
/// one at a time.
fn window(shared: &Shared, reachable: bool) -> Window {
    if !reachable {
        return Window {
            max_records: 1,
            in_flight: 1,
            one_batch: true,
        };
    }
    let exporter_limit = shared.exporter().max_in_flight_dyn().max(1);
    Window {
        max_records: shared.settings.batch_size,
        in_flight: shared.settings.max_in_flight.min(exporter_limit),
        one_batch: !shared.settings.batch_delay.is_zero(),
    }
}
