//! The drain's replay: a sliding window of pipelined attempts over the spool, read ahead,
//! acknowledged in order as the delivered prefix grows.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use outlast_core::ExportError;
use outlast_core::retry::Backoff;
use outlast_spool::{ReadBatch, Record, RecordId, Spool, SpoolError};

use crate::DropReason;
use crate::shared::Shared;

/// An attempt under way: its index in the replay and its result.
type AttemptFuture<'a> = Pin<Box<dyn Future<Output = (u64, Result<(), ExportError>)> + Send + 'a>>;

/// What a replay works with: the client's shared state, and the drain task's backoff, which
/// a delivery resets.
pub(crate) struct Replayer<'a, 'b> {
    shared: &'a Shared,
    backoff: &'b mut Backoff,
}

impl<'a, 'b> Replayer<'a, 'b> {
    pub(crate) fn new(shared: &'a Shared, backoff: &'b mut Backoff) -> Replayer<'a, 'b> {
        Replayer { shared, backoff }
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
    pub(crate) async fn replay(&mut self, spool: &Arc<Spool>, w: Window) -> Replayed {
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
pub(crate) struct Window {
    /// Records per spool read.
    pub(crate) max_records: usize,
    /// Attempts under way at most.
    pub(crate) in_flight: usize,
    /// Send one batch and return (offline probing with one record, or paced replay).
    pub(crate) one_batch: bool,
}

/// How a replay ended.
pub(crate) enum Replayed {
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
