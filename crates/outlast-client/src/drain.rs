//! The drain task: replays the spool oldest first, acknowledges only what the backend
//! confirmed, backs off while the backend is down, and probes it when the exporter can.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use outlast_core::retry::{Backoff, RetryPolicy};
use outlast_core::{ExportError, Reachability};
use outlast_spool::{ReadBatch, Record, RecordId, Spool, SpoolError};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::shared::Shared;
use crate::stats::Counters;
use crate::{BackendState, DropReason};

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

/// An attempt under way: its index in the replay and its result.
type AttemptFuture<'a> = Pin<Box<dyn Future<Output = (u64, Result<(), ExportError>)> + Send + 'a>>;

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
            shared.adopt_released_on(spool).await;
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

    /// Counts what the spool skipped while reading (expired or damaged records).
    fn count_skipped(&self, batch: ReadBatch) -> ReadBatch {
        self.shared
            .record_drop(DropReason::Expired, batch.expired.records);
        self.shared
            .record_drop(DropReason::Corrupt, batch.corrupt_skipped);
        batch
    }

    /// Starts a spool operation that runs while attempts are under way: on the blocking
    /// pool, so that reading the next batch and acknowledging the last one overlap with
    /// sending (done inline, they held up every attempt's completion for about a
    /// millisecond per batch). The output is `None` if the blocking task failed.
    ///
    /// With nothing else under way there is nothing to overlap: in `OsWrite` mode the
    /// operation then runs inline (no thread hand-off), as `idle` says.
    fn spool_op<T: Send + 'static>(
        &self,
        spool: &Arc<Spool>,
        idle: bool,
        f: impl FnOnce(&Spool) -> T + Send + 'static,
    ) -> SpoolOp<T> {
        if idle && self.shared.spool_calls_inline() {
            let v = f(spool);
            return Box::pin(std::future::ready(Some(v)));
        }
        let spool = Arc::clone(spool);
        let task = tokio::task::spawn_blocking(move || f(&spool));
        Box::pin(async move {
            match task.await {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::error!(error = %e, "outlast: spool task failed");
                    None
                }
            }
        })
    }

    /// Handles the outcome of a read: counts what the spool skipped; `None` if the read
    /// failed (logged).
    fn on_read(&self, read: Option<Result<ReadBatch, SpoolError>>) -> Option<ReadBatch> {
        match read {
            Some(Ok(batch)) => Some(self.count_skipped(batch)),
            Some(Err(e)) => {
                self.shared.warn_spool_trouble("read", &e);
                None
            }
            None => None,
        }
    }

    /// Starts acknowledging what `acks` holds; the counts travel with the operation.
    fn start_ack(
        &self,
        spool: &Arc<Spool>,
        idle: bool,
        acks: &mut Acks,
    ) -> (SpoolOp<Result<(), SpoolError>>, Acks) {
        let taken = std::mem::take(acks);
        let ids = taken.ids.clone();
        let op = self.spool_op(spool, idle, move |s| -> Result<(), SpoolError> {
            for id in ids {
                s.ack(id)?;
            }
            Ok(())
        });
        (op, taken)
    }

    /// Handles the outcome of an acknowledgement: counts it. False if the spool refused
    /// (logged): those records are delivered again later (at least once).
    fn on_acked(&mut self, acked: Option<Result<(), SpoolError>>, acks: &Acks) -> bool {
        let shared = self.shared;
        match acked {
            Some(Ok(())) => {
                shared
                    .counters
                    .replayed
                    .fetch_add(acks.delivered, Ordering::Relaxed);
                shared.record_drop(DropReason::Permanent, acks.rejected);
                if acks.delivered > 0 {
                    // A success: the backend is back and the backoff starts again from its
                    // first delay.
                    self.backoff.reset();
                }
                shared.set_online(true);
                true
            }
            Some(Err(e)) => {
                shared.warn_spool_trouble("ack", &e);
                false
            }
            None => false,
        }
    }

    /// Starts the attempt for `record`, the `index`-th of this replay.
    fn start(&self, index: u64, record: Record) -> AttemptFuture<'a> {
        let shared = self.shared;
        Box::pin(async move { (index, shared.attempt(&record.payload).await) })
    }

    /// Replays the spool through a sliding window: up to `in_flight` attempts run at all
    /// times, none more than `max_records` (the batch size) past the oldest record not yet
    /// settled; the next batch is read while the current one is still being sent; the
    /// delivered prefix is acknowledged, in order, as it grows (one acknowledgement at a
    /// time: those that arrive meanwhile are coalesced into the next), while later attempts
    /// go on.
    ///
    /// After the first retryable failure (or a spool failure) no new attempt starts; those
    /// under way finish (each bounded by the attempt timeout), the delivered prefix is
    /// acknowledged, and the caller rewinds the spool. Records after the failure that did
    /// go through are not acknowledged: they are sent again (at least once).
    ///
    /// Why not whole batches one after the other: waiting for the slowest attempt of each
    /// batch, then reading and acknowledging while nothing was in flight, left the backend
    /// idle at every batch boundary.
    async fn replay(&mut self, spool: &Arc<Spool>, w: Window) -> Replayed {
        let shared = self.shared;
        let max_bytes = shared.settings.batch_max_bytes;
        // Read, not started yet.
        let mut queued: VecDeque<Record> = VecDeque::new();
        let mut queued_bytes: u64 = 0;
        // Started, in spool order; `base` is the index of the first.
        let mut window: VecDeque<Slot> = VecDeque::new();
        let mut base: u64 = 0;
        let mut next: u64 = 0;
        let mut running: Vec<AttemptFuture<'a>> = Vec::with_capacity(w.in_flight);
        // The settled prefix not yet handed to an acknowledgement, and whether it reached
        // the end of a read batch.
        let mut acks = Acks::default();
        let mut ack_due = false;
        let mut reading: Option<SpoolOp<Result<ReadBatch, SpoolError>>> = None;
        let mut acking: Option<(SpoolOp<Result<(), SpoolError>>, Acks)> = None;
        let mut stop: Option<Stop> = None;
        // The last read found nothing more to hand out (it started after `snapshot`).
        let mut exhausted = false;
        let mut snapshot = 0;
        let mut batches = 0usize;
        let mut last_full = false;
        loop {
            let may_read = !(w.one_batch && batches > 0);
            if stop.is_none()
                && !exhausted
                && may_read
                && reading.is_none()
                && queued.len() < w.max_records
                && queued_bytes < max_bytes
            {
                snapshot = shared.backlog_snapshot();
                let max_records = w.max_records;
                let idle = running.is_empty() && acking.is_none();
                reading =
                    Some(self.spool_op(spool, idle, move |s| s.read_batch(max_records, max_bytes)));
            }
            // The window never reaches more than `max_records` past the oldest record not yet
            // settled: a stalled attempt holds the others back, so what a crash can make us
            // send again stays bounded (see the crate docs, "Durability").
            while stop.is_none() && running.len() < w.in_flight && window.len() < w.max_records {
                let Some(record) = queued.pop_front() else {
                    break;
                };
                queued_bytes = queued_bytes.saturating_sub(record.payload.len() as u64);
                window.push_back(Slot {
                    id: record.id,
                    result: None,
                });
                running.push(self.start(next, record));
                next += 1;
            }
            let idle = running.is_empty() && reading.is_none();
            if acking.is_none() && !acks.ids.is_empty() && (ack_due || idle) {
                ack_due = false;
                acking = Some(self.start_ack(spool, idle, &mut acks));
            }
            if idle && acking.is_none() {
                // Nothing under way, everything settled is acknowledged.
                match stop {
                    Some(Stop::Failed(retry_after)) => return Replayed::Failed(retry_after),
                    Some(Stop::SpoolTrouble) => return Replayed::SpoolTrouble,
                    None => {}
                }
                if exhausted {
                    if shared.try_clear_backlog(snapshot) {
                        tracing::info!("outlast: backlog delivered; exporting directly again");
                        shared.progress.notify_waiters();
                        return Replayed::Empty;
                    }
                    // Appended since the spool was found empty: read again.
                    exhausted = false;
                    continue;
                }
                if !may_read && queued.is_empty() {
                    shared.progress.notify_waiters();
                    return Replayed::Batch { full: last_full };
                }
                continue;
            }
            let event = tokio::select! {
                finished = poll_fn(|cx| poll_attempts(&mut running, cx)), if !running.is_empty() => {
                    Event::Finished(finished)
                }
                read = until_done(reading.as_mut()), if reading.is_some() => {
                    Event::Read(read)
                }
                acked = until_done(acking.as_mut().map(|(op, _)| op)), if acking.is_some() => {
                    Event::Acked(acked)
                }
            };
            match event {
                Event::Read(read) => {
                    reading = None;
                    match self.on_read(read) {
                        Some(batch) => {
                            let n = batch.records.len();
                            if n == 0 {
                                exhausted = true;
                            } else {
                                batches += 1;
                                last_full = n >= w.max_records;
                                queued_bytes += batch
                                    .records
                                    .iter()
                                    .map(|r| r.payload.len() as u64)
                                    .sum::<u64>();
                                queued.extend(batch.records);
                            }
                        }
                        None => stop = Some(Stop::SpoolTrouble),
                    }
                }
                Event::Acked(acked) => {
                    if let Some((_, counts)) = acking.take()
                        && !self.on_acked(acked, &counts)
                    {
                        // Let the attempts under way finish, then back off.
                        stop = Some(Stop::SpoolTrouble);
                    }
                }
                Event::Finished(finished) => {
                    for (index, result) in finished {
                        if let Err(e) = &result
                            && !e.is_permanent()
                        {
                            stop = Some(match stop {
                                Some(Stop::SpoolTrouble) => Stop::SpoolTrouble,
                                Some(Stop::Failed(d)) => Stop::Failed(d.max(e.retry_after())),
                                None => Stop::Failed(e.retry_after()),
                            });
                        }
                        // Running attempts are at or after `base`, within the window.
                        let offset = index
                            .checked_sub(base)
                            .and_then(|o| usize::try_from(o).ok())
                            .unwrap_or(usize::MAX);
                        if let Some(slot) = window.get_mut(offset) {
                            slot.result = Some(result);
                        }
                    }
                    // Grow the settled prefix; it is acknowledged as soon as no other
                    // acknowledgement is being written (acknowledgements coalesce).
                    while let Some(slot) = window.front() {
                        match &slot.result {
                            Some(Ok(())) => acks.push(slot.id, true),
                            Some(Err(e)) if e.is_permanent() => {
                                tracing::debug!(error = %e, lane = slot.id.lane, seq = slot.id.seq, "outlast: spooled record rejected permanently; dropping it");
                                acks.push(slot.id, false);
                            }
                            _ => break,
                        }
                        ack_due = true;
                        window.pop_front();
                        base += 1;
                    }
                }
            }
        }
    }
}

/// Polls every running attempt once; ready with those that finished (at least one).
fn poll_attempts(
    running: &mut Vec<AttemptFuture<'_>>,
    cx: &mut std::task::Context<'_>,
) -> Poll<Vec<(u64, Result<(), ExportError>)>> {
    let mut done = Vec::new();
    running.retain_mut(|fut| match fut.as_mut().poll(cx) {
        Poll::Ready(r) => {
            done.push(r);
            false
        }
        Poll::Pending => true,
    });
    if done.is_empty() {
        Poll::Pending
    } else {
        Poll::Ready(done)
    }
}

/// Awaits the operation; never completes without one.
async fn until_done<T>(op: Option<&mut SpoolOp<T>>) -> Option<T> {
    match op {
        Some(op) => op.as_mut().await,
        None => std::future::pending().await,
    }
}

/// What the replay loop woke up for.
enum Event {
    Finished(Vec<(u64, Result<(), ExportError>)>),
    Read(Option<Result<ReadBatch, SpoolError>>),
    Acked(Option<Result<(), SpoolError>>),
}

/// A spool operation running on the blocking pool.
type SpoolOp<T> = Pin<Box<dyn Future<Output = Option<T>> + Send>>;

/// How many records to read and send at once.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// Records per spool read.
    max_records: usize,
    /// Attempts under way at most.
    in_flight: usize,
    /// Send one batch and return (offline probing with one record, or paced replay).
    one_batch: bool,
}

/// How a replay ended.
enum Replayed {
    /// The spool had nothing more to hand out, everything is acknowledged and the backlog
    /// flag is cleared.
    Empty,
    /// One batch was delivered (or dropped on purpose) and acknowledged; `full` if it held
    /// as many records as asked for (more may follow).
    Batch { full: bool },
    /// A retryable failure: back off, with the largest `Retry-After`.
    Failed(Option<Duration>),
    /// The spool could not be read, or delivered records could not be acknowledged: back
    /// off; they will be delivered again (at least once).
    SpoolTrouble,
}

/// Why a replay stopped starting attempts.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Failed(Option<Duration>),
    SpoolTrouble,
}

/// A started attempt, in spool order.
struct Slot {
    id: RecordId,
    result: Option<Result<(), ExportError>>,
}

/// The settled prefix not yet acknowledged: the last id of each lane, in order of
/// appearance (acknowledging it acknowledges the lane's records up to it), and counts.
#[derive(Debug, Default)]
struct Acks {
    ids: Vec<RecordId>,
    delivered: u64,
    rejected: u64,
}

impl Acks {
    fn push(&mut self, id: RecordId, delivered: bool) {
        match self.ids.iter_mut().find(|i| i.lane == id.lane) {
            Some(i) => *i = id,
            None => self.ids.push(id),
        }
        if delivered {
            self.delivered += 1;
        } else {
            self.rejected += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(lane: u32, seq: u64) -> RecordId {
        RecordId { lane, seq }
    }

    #[test]
    fn acks_keep_the_last_record_of_each_lane_in_order_and_count_outcomes() {
        let mut acks = Acks::default();
        for (i, (lane, seq)) in [(3, 7), (3, 8), (0, 1), (0, 2), (0, 3)]
            .into_iter()
            .enumerate()
        {
            acks.push(id(lane, seq), i != 2);
        }
        assert_eq!(acks.ids, vec![id(3, 8), id(0, 3)]);
        assert_eq!((acks.delivered, acks.rejected), (4, 1));
        assert!(Acks::default().ids.is_empty());
    }
}
