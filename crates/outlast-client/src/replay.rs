//! The drain's replay: a sliding window of pipelined attempts over the spool, read ahead,
//! acknowledged in order as the delivered prefix grows.
//!
//! [`ReplayWindow`] is the bookkeeping, with no I/O: it admits records into sends, settles
//! their outcomes and hands out the settled prefix to acknowledge; its unit tests drive it
//! step by step. [`Replayer`] runs it against the spool and the exporter.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use outlast_core::{Coalescing, ContentEncoding, ExportError, Payload};
use outlast_spool::{ReadBatch, Record, RecordId, Spool, SpoolError};

use crate::compress::{self, Undecodable};
use crate::health::{self, Health, classify, deadline_after};
use crate::mailbox::Inbox;
use crate::pace::RateCap;
use crate::shared::Shared;
use crate::{DropReason, ReplayOrder};

/// An attempt under way; it hands back its payloads with the result.
type Attempt<'a> = Pin<Box<dyn Future<Output = Sent> + Send + 'a>>;

/// A spool operation running on the blocking pool.
type SpoolOp<T> = Pin<Box<dyn Future<Output = Option<T>> + Send>>;

/// What a replay works with: the client's shared state, and the drain task's own: the
/// backend's state (which the outcomes of the replay's attempts and acknowledgements feed),
/// its mailbox (taken in while the replay runs) and its replay rate cap, which paces the
/// sends.
pub(crate) struct Replayer<'a, 'b> {
    shared: &'a Shared,
    health: &'b mut Health,
    inbox: &'b mut Inbox,
    cap: &'b mut RateCap,
}

impl<'a, 'b> Replayer<'a, 'b> {
    pub(crate) fn new(
        shared: &'a Shared,
        health: &'b mut Health,
        inbox: &'b mut Inbox,
        cap: &'b mut RateCap,
    ) -> Replayer<'a, 'b> {
        Replayer {
            shared,
            health,
            inbox,
            cap,
        }
    }

    /// Feeds the backend's state an outcome of this replay and publishes it.
    fn report(&mut self, outcome: health::Outcome) {
        let change = self.health.on_outcome(outcome, tokio::time::Instant::now());
        self.shared.publish(self.health, change);
    }

    /// How long `send` must wait for the rate cap before it goes (zero without a cap). The
    /// tokens are taken now: sends go in the order they were admitted.
    fn pace(&mut self, send: &Outgoing) -> Duration {
        if !self.cap.is_on() {
            return Duration::ZERO;
        }
        let bytes = send
            .payloads
            .iter()
            .fold(0u64, |n, p| n.saturating_add(p.len() as u64));
        self.cap.take(tokio::time::Instant::now().into_std(), bytes)
    }

    /// Gives back to the rate cap what [`pace`](Self::pace) took for `send`, not sent.
    fn unpace(&mut self, send: &Outgoing) {
        if !self.cap.is_on() {
            return;
        }
        let bytes = send
            .payloads
            .iter()
            .fold(0u64, |n, p| n.saturating_add(p.len() as u64));
        self.cap
            .give_back(tokio::time::Instant::now().into_std(), bytes);
    }

    /// Replay sends the window may count as under way besides its own: with
    /// [`ReplayOrder::LiveFirst`], the direct exports under way take their place in the
    /// in-flight limit first, but never all of it: the replay keeps one send going.
    fn live_share(&self, running: usize) -> usize {
        if self.shared.settings.pacing.order != ReplayOrder::LiveFirst || running == 0 {
            return running;
        }
        running.saturating_add(self.shared.direct.in_flight())
    }

    /// Counts what the spool skipped while reading (expired or damaged records).
    fn count_skipped(&self, batch: ReadBatch) -> ReadBatch {
        self.shared
            .record_drop(DropReason::Expired, batch.expired.records);
        self.shared
            .record_drop(DropReason::Corrupt, batch.corrupt_skipped);
        // Records handed out earlier, evicted by the drop-oldest policy while in flight, and
        // not delivered after all: the spool reports them once, here or with an append.
        self.shared
            .record_drop(DropReason::Evicted, batch.evicted.records);
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
        // Counted among the client's spool calls, so a stopping drain task waits for it and
        // no spool handle outlives the client by more than this one read or acknowledgement.
        let task = self.shared.store.spawn_call(Arc::clone(spool), f);
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

    /// Starts reading the next batch, with its records decoded ahead as far as `decoding`
    /// allows ([`prepare`]). Reading and decoding run on the blocking pool; with nothing
    /// else under way in `OsWrite` mode the read runs inline (a page-cache read), and the
    /// decoding still goes to the blocking pool if any record is compressed, so the drain
    /// task's worker thread never gunzips a batch.
    fn start_read(
        &self,
        spool: &Arc<Spool>,
        idle: bool,
        max_records: usize,
        max_bytes: u64,
        decoding: Decoding,
    ) -> SpoolOp<Result<Prepared, SpoolError>> {
        let read = move |s: &Spool| s.read_batch(max_records, max_bytes);
        if !(idle && self.shared.spool_calls_inline()) {
            return self.spool_op(spool, false, move |s| {
                read(s).map(|mut batch| {
                    let records = std::mem::take(&mut batch.records);
                    (batch, prepare(records, decoding))
                })
            });
        }
        let mut batch = match read(spool) {
            Ok(batch) => batch,
            Err(e) => return Box::pin(std::future::ready(Some(Err(e)))),
        };
        let records = std::mem::take(&mut batch.records);
        if records
            .iter()
            .all(|r| r.payload.content_encoding() == ContentEncoding::Identity)
        {
            // Nothing to decode: measuring them is all there is.
            let queued = prepare(records, decoding);
            return Box::pin(std::future::ready(Some(Ok((batch, queued)))));
        }
        let task = tokio::task::spawn_blocking(move || prepare(records, decoding));
        Box::pin(async move {
            match task.await {
                Ok(queued) => Some(Ok((batch, queued))),
                Err(e) => {
                    tracing::error!(error = %e, "outlast: decoding task failed");
                    None
                }
            }
        })
    }

    /// Handles the outcome of a read: counts what the spool skipped; `None` if the read
    /// failed (logged).
    fn on_read(&self, read: Option<Result<Prepared, SpoolError>>) -> Option<Vec<Queued>> {
        match read {
            Some(Ok((batch, queued))) => {
                self.count_skipped(batch);
                Some(queued)
            }
            Some(Err(e)) => {
                self.shared.warn_spool_trouble("read", &e);
                None
            }
            None => None,
        }
    }

    /// Starts acknowledging `acks`; the counts travel with the operation.
    fn start_ack(
        &self,
        spool: &Arc<Spool>,
        idle: bool,
        acks: Acks,
    ) -> (SpoolOp<Result<(), SpoolError>>, Acks) {
        let ids = acks.ids.clone();
        let op = self.spool_op(spool, idle, move |s| -> Result<(), SpoolError> {
            // Every lane is acknowledged even if one fails; an error that left an
            // acknowledgement uncounted outranks one that did not (see `ack_counted`).
            let mut result = Ok(());
            for id in ids {
                if let Err(e) = s.ack(id)
                    && (result.is_ok() || !ack_counted(&e))
                {
                    result = Err(e);
                }
            }
            result
        });
        (op, acks)
    }

    /// Handles the outcome of an acknowledgement: counts it. False if the spool refused
    /// (logged, counted in `ack_failures`). The records were delivered all the same: when the
    /// acknowledgement still counts in memory (see `ack_counted`) they are not read again by
    /// this process, so they are counted as replayed (or dropped) now, once; a crash before
    /// the next cursor write delivers them again (at least once).
    fn on_acked(&mut self, acked: Option<Result<(), SpoolError>>, acks: &Acks) -> bool {
        let shared = self.shared;
        let count = |acks: &Acks| {
            shared
                .counters
                .replayed
                .fetch_add(acks.delivered, Ordering::Relaxed);
            shared.record_drop(DropReason::Permanent, acks.rejected);
            shared.record_drop(DropReason::Corrupt, acks.corrupt);
            shared.record_drop(DropReason::TooLarge, acks.too_large);
        };
        match acked {
            Some(Ok(())) => {
                count(acks);
                // The backend answered: online, and with deliveries the backoff starts again
                // from its first delay.
                self.report(health::Outcome::Acknowledged {
                    delivered: acks.delivered,
                });
                shared.report_drain_rate();
                true
            }
            Some(Err(e)) => {
                shared.warn_spool_trouble("ack", &e);
                if ack_counted(&e) {
                    count(acks);
                }
                false
            }
            None => false,
        }
    }

    /// Starts the attempt for `send`: one payload through `export`, several (merged)
    /// through `export_many`, each bounded by the attempt timeout.
    fn start(&self, send: Outgoing) -> Attempt<'a> {
        let shared = self.shared;
        Box::pin(async move {
            let result = shared.attempts.attempt(&send.payloads).await;
            Sent {
                first: send.first,
                payloads: send.payloads,
                result,
            }
        })
    }

    /// Replays the spool through a sliding window: up to `in_flight` attempts run at all
    /// times, none more than `max_records` (the batch size) past the oldest record not yet
    /// settled; consecutive records the exporter can merge go in one attempt (within the
    /// coalescing caps); the next batch is read while the current one is still being sent; the
    /// delivered prefix is acknowledged, in order, as it grows (one acknowledgement at a
    /// time: those that arrive meanwhile are coalesced into the next), while later attempts
    /// go on. [`ReplayWindow`] keeps the books; this drives the I/O.
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
        let caps = Coalescing::new(
            shared.settings.coalesce_max_records,
            shared.settings.coalesce_max_bytes,
        );
        let mut window = ReplayWindow::new(w, max_bytes, caps);
        window.accepts_gzip = shared
            .exporter()
            .accepts_encoding_dyn(ContentEncoding::Gzip);
        window.max_record_bytes = shared.settings.max_record_bytes;
        let merge = |p: &Payload| shared.exporter().coalescing_dyn(p);
        let mut running: FuturesUnordered<Attempt<'a>> = FuturesUnordered::new();
        let mut reading: Option<SpoolOp<Result<Prepared, SpoolError>>> = None;
        let mut acking: Option<(SpoolOp<Result<(), SpoolError>>, Acks)> = None;
        // A send admitted but held back by the rate cap until the instant given.
        let mut paced: Option<(Outgoing, tokio::time::Instant)> = None;
        // Taken before the last read: that read found nothing more after it.
        let mut snapshot = 0;
        loop {
            // Wakes the loop when a direct export ends (it may free room for replay sends).
            let live_done = shared.direct.done.notified();
            tokio::pin!(live_done);
            live_done.as_mut().enable();
            if reading.is_none() && window.wants_read() {
                snapshot = shared.backlog.snapshot();
                let max_records = w.max_records;
                let idle = running.is_empty() && acking.is_none();
                let decoding = window.decoding();
                reading = Some(self.start_read(spool, idle, max_records, max_bytes, decoding));
            }
            while paced.is_none()
                && let Some(send) = window.admit(self.live_share(running.len()), merge)
            {
                let wait = self.pace(&send);
                if wait.is_zero() {
                    running.push(self.start(send));
                } else {
                    let at = deadline_after(tokio::time::Instant::now(), wait);
                    paced = Some((send, at));
                }
            }
            // Held back by live sends: room may free up when one ends.
            let held_by_live = paced.is_none()
                && !running.is_empty()
                && self.live_share(running.len()) > running.len();
            if window.stopped().is_some()
                && let Some((send, _)) = paced.take()
            {
                // The replay stopped while this send waited for the cap: it is not sent
                // (it will be read again), nobody waits out its turn, and its tokens go
                // back to the bucket.
                self.unpace(&send);
                window.settle(Sent {
                    first: send.first,
                    payloads: send.payloads,
                    result: Err(ExportError::retryable("not sent: the replay stopped")),
                });
            }
            let idle = running.is_empty() && reading.is_none() && paced.is_none();
            if acking.is_none()
                && let Some(acks) = window.take_acks(idle)
            {
                acking = Some(self.start_ack(spool, idle, acks));
            }
            if idle && acking.is_none() {
                // Nothing under way, everything settled is acknowledged.
                match window.stopped() {
                    Some(Stop::Failed(retry_after)) => return Replayed::Failed(retry_after),
                    Some(Stop::SpoolTrouble) => return Replayed::SpoolTrouble,
                    None => {}
                }
                if window.is_exhausted() {
                    if shared.backlog.try_clear(snapshot) {
                        tracing::info!("outlast: backlog delivered; exporting directly again");
                        return Replayed::Empty;
                    }
                    // Appended since the spool was found empty: read again.
                    window.read_again();
                    continue;
                }
                if let Some(full) = window.batch_done() {
                    return Replayed::Batch { full };
                }
                continue;
            }
            let paced_at = paced.as_ref().map(|(_, at)| *at);
            tokio::select! {
                Some(sent) = running.next(), if !running.is_empty() => {
                    match &sent.result {
                        Ok(()) => shared.record_drained(&sent.payloads),
                        Err(e) => self.report(health::Outcome::ReplayFailed { class: classify(e) }),
                    }
                    window.settle(sent);
                }
                msg = self.inbox.recv() => {
                    if let Some(msg) = msg {
                        let change = self.inbox.take(msg, self.health, &shared.health, tokio::time::Instant::now());
                        shared.publish(self.health, change);
                    }
                }
                () = sleep_until_some(paced_at), if paced_at.is_some() => {
                    if let Some((send, _)) = paced.take() {
                        running.push(self.start(send));
                    }
                }
                () = &mut live_done, if held_by_live => {}
                read = until_done(reading.as_mut()), if reading.is_some() => {
                    reading = None;
                    match self.on_read(read) {
                        Some(queued) => window.on_read_queued(queued),
                        None => window.stop_for_spool(),
                    }
                }
                acked = until_done(acking.as_mut().map(|(op, _)| op)), if acking.is_some() => {
                    if let Some((_, acks)) = acking.take()
                        && !self.on_acked(acked, &acks)
                    {
                        // Let the attempts under way finish, then back off.
                        window.stop_for_spool();
                    }
                }
            }
        }
    }
}

/// Whether an acknowledgement that failed with `e` still counts in the spool's memory: every
/// failure past the spool's checks (writing the cursor, deleting segments) leaves it counted,
/// and its records are not handed out again; only a closed spool or an id the spool does not
/// know leave it undone.
fn ack_counted(e: &SpoolError) -> bool {
    !matches!(e, SpoolError::Closed | SpoolError::UnknownRecord { .. })
}

/// Sleeps until `at`; never completes without one.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Awaits the operation; never completes without one.
async fn until_done<T>(op: Option<&mut SpoolOp<T>>) -> Option<T> {
    match op {
        Some(op) => op.as_mut().await,
        None => std::future::pending().await,
    }
}

/// How many records to read and send at once: the limits of a [`ReplayWindow`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    /// Records per spool read, and records past the oldest one not yet settled.
    pub(crate) max_records: usize,
    /// Sends under way at most.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Failed(Option<Duration>),
    SpoolTrouble,
}

/// The payloads of one attempt, consecutive in the window from index `first`.
#[derive(Debug)]
struct Outgoing {
    first: u64,
    payloads: Vec<Payload>,
}

/// A finished attempt: its payloads, given back, and its result.
#[derive(Debug)]
struct Sent {
    first: u64,
    payloads: Vec<Payload>,
    result: Result<(), ExportError>,
}

/// A started record, in spool order, and its outcome once settled.
#[derive(Debug)]
struct Slot {
    id: RecordId,
    result: Option<Outcome>,
}

/// How a record settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Delivered,
    Rejected,
    /// Its stored bytes do not decode as their encoding says: dropped, never sent.
    Corrupt,
    /// It decodes to more than `max_record_bytes`: dropped, never sent.
    TooLarge,
    /// A retryable failure: the replay stops before this record.
    Failed,
}

/// The books of one replay, without I/O: records read but not started, started records in
/// spool order with their outcomes, the settled prefix waiting to be acknowledged, and why
/// no more sends start.
///
/// The window never reaches more than `max_records` past the oldest record not yet
/// settled, merged requests included: a stalled attempt holds the others back, so what a
/// crash can make the client send again stays bounded (see docs/delivery-guarantees.md).
///
/// Consecutive compatible records the exporter accepts to merge go out as one send, within
/// the caps. A merged send rejected permanently is not dropped: its records are sent again
/// one by one, before anything new, so that only those rejected on their own are dropped.
#[derive(Debug)]
struct ReplayWindow {
    limits: Window,
    max_bytes: u64,
    /// The client's caps on a merged send.
    caps: Coalescing,
    /// Records of a merged send rejected permanently, to send again one by one: their
    /// window index and payload.
    singles: VecDeque<(u64, Payload)>,
    /// Read, not started yet, in spool order: each record as stored, decoded (to what the
    /// exporter takes: stored bytes decompressed unless it accepts their encoding) only
    /// when it is next to go, so that the records waiting here hold their stored size.
    queued: VecDeque<Queued>,
    /// Whether the exporter takes gzip-encoded payloads as they are.
    accepts_gzip: bool,
    /// No record is decoded past this (the client's `max_record_bytes`).
    max_record_bytes: u64,
    /// Bytes the queued records hold in memory (stored, or decoded for the one decoded).
    queued_bytes: u64,
    /// Started, in spool order; `base` is the index of the first.
    slots: VecDeque<Slot>,
    base: u64,
    /// The index the next started record gets.
    next: u64,
    /// The settled prefix not yet handed to an acknowledgement, and whether it grew since
    /// the last one.
    acks: Acks,
    ack_due: bool,
    stop: Option<Stop>,
    /// The last read found nothing more to hand out.
    exhausted: bool,
    /// Reads that returned records, and whether the last one was full.
    batches: usize,
    last_full: bool,
}

impl ReplayWindow {
    fn new(limits: Window, max_bytes: u64, caps: Coalescing) -> ReplayWindow {
        ReplayWindow {
            limits,
            max_bytes,
            caps,
            singles: VecDeque::new(),
            queued: VecDeque::new(),
            accepts_gzip: false,
            max_record_bytes: u64::MAX,
            queued_bytes: 0,
            slots: VecDeque::new(),
            base: 0,
            next: 0,
            acks: Acks::default(),
            ack_due: false,
            stop: None,
            exhausted: false,
            batches: 0,
            last_full: false,
        }
    }

    /// Whether this replay may read another batch (one batch only, if so limited).
    fn may_read(&self) -> bool {
        !(self.limits.one_batch && self.batches > 0)
    }

    /// Whether a spool read should start now (the caller knows whether one is under way).
    fn wants_read(&self) -> bool {
        self.stop.is_none()
            && !self.exhausted
            && self.may_read()
            && self.queued.len() < self.limits.max_records
            && self.queued_bytes < self.max_bytes
    }

    /// How the records of the next read may be decoded ahead (see [`prepare`]): at most
    /// `max_bytes` of them, what a read may hold as stored.
    fn decoding(&self) -> Decoding {
        Decoding {
            accepts_gzip: self.accepts_gzip,
            limit: self.max_record_bytes,
            budget: self.max_bytes,
        }
    }

    /// Takes the records a read returned, as stored; none means the spool had nothing more.
    #[cfg(test)]
    fn on_read(&mut self, records: Vec<Record>) {
        self.on_read_queued(
            records
                .into_iter()
                .map(|r| Queued {
                    id: r.id,
                    state: QueuedState::Stored(r.payload),
                })
                .collect(),
        );
    }

    /// Takes the records a read returned, decoded ahead or not ([`prepare`]); none means
    /// the spool had nothing more.
    fn on_read_queued(&mut self, queued: Vec<Queued>) {
        let n = queued.len();
        if n == 0 {
            self.exhausted = true;
            return;
        }
        self.batches += 1;
        self.last_full = n >= self.limits.max_records;
        for q in queued {
            self.queued_bytes += q.state.bytes();
            self.queued.push_back(q);
        }
    }

    /// Decodes the first queued record if it is still as stored (one not decoded ahead):
    /// bounded by `max_record_bytes`.
    fn decode_front(&mut self) {
        let decoding = self.decoding();
        let Some(front) = self.queued.front_mut() else {
            return;
        };
        let QueuedState::Stored(stored) = &front.state else {
            return;
        };
        let stored = stored.clone();
        let before = front.state.bytes();
        front.state = decode(stored, decoding);
        self.queued_bytes = self
            .queued_bytes
            .saturating_sub(before)
            .saturating_add(front.state.bytes());
    }

    /// The first queued record, decoded, if it decodes.
    fn peek_ready(&mut self) -> Option<&compress::Ready> {
        self.decode_front();
        match self.queued.front() {
            Some(Queued {
                state: QueuedState::Ready(ready),
                ..
            }) => Some(ready),
            _ => None,
        }
    }

    /// The next queued record that decodes; those that do not are settled as corrupt or
    /// too large on the way (each takes its slot, so that it is acknowledged in order,
    /// never sent).
    fn pop_decodable(&mut self) -> Option<(RecordId, compress::Ready)> {
        loop {
            self.decode_front();
            let q = self.queued.pop_front()?;
            let outcome = match q.state {
                QueuedState::Ready(ready) => return Some((q.id, ready)),
                // `decode_front` decoded it.
                QueuedState::Stored(_) | QueuedState::Undecodable(Undecodable::Corrupt) => {
                    tracing::warn!(
                        lane = q.id.lane,
                        seq = q.id.seq,
                        "outlast: spooled record does not decode as its recorded encoding; dropping it as corrupt"
                    );
                    Outcome::Corrupt
                }
                QueuedState::Undecodable(Undecodable::TooLarge) => {
                    tracing::warn!(
                        lane = q.id.lane,
                        seq = q.id.seq,
                        max_record_bytes = self.max_record_bytes,
                        "outlast: spooled record decodes to more than max_record_bytes; dropping it as too large"
                    );
                    Outcome::TooLarge
                }
            };
            self.slots.push_back(Slot {
                id: q.id,
                result: Some(outcome),
            });
            self.next += 1;
            self.grow_settled_prefix();
        }
    }

    /// The next send to start while `running` sends are under way, if the limits allow.
    /// `merge` says whether, and up to what size, the exporter merges a payload with its
    /// neighbours ([`Exporter::coalescing`](outlast_core::Exporter::coalescing)).
    fn admit(
        &mut self,
        running: usize,
        merge: impl Fn(&Payload) -> Option<Coalescing>,
    ) -> Option<Outgoing> {
        if self.stop.is_some() || running >= self.limits.in_flight {
            return None;
        }
        if let Some((first, payload)) = self.singles.pop_front() {
            // Already in the window: it takes no room.
            return Some(Outgoing {
                first,
                payloads: vec![payload],
            });
        }
        let room = self.limits.max_records.saturating_sub(self.slots.len());
        if room == 0 {
            return None;
        }
        let (id, ready) = self.pop_decodable()?;
        let room = self.limits.max_records.saturating_sub(self.slots.len());
        if room == 0 {
            // Records settled on the way (undecodable) took the room: it comes next time.
            self.queued.push_front(Queued {
                id,
                state: QueuedState::Ready(ready),
            });
            return None;
        }
        let (max_records, max_bytes) = match merge(&ready.payload) {
            Some(c) => (
                c.max_records.min(self.caps.max_records).min(room),
                c.max_bytes.min(self.caps.max_bytes),
            ),
            None => (1, 0),
        };
        // Merging is measured in decoded bytes: what the backend (or an exporter that
        // decodes records to join them) holds for the request.
        let mut bytes = ready.decoded_len;
        let mut payloads = vec![self.take(id, ready)];
        while payloads.len() < max_records {
            let Some(next) = self.peek_ready() else {
                break;
            };
            let len = next.decoded_len;
            if !Coalescing::compatible(&payloads[0], &next.payload)
                || bytes.saturating_add(len) > max_bytes
                || merge(&next.payload).is_none()
            {
                break;
            }
            bytes += len;
            let Some((id, ready)) = self.pop_decodable() else {
                break;
            };
            payloads.push(self.take(id, ready));
        }
        let first = self.next;
        self.next += payloads.len() as u64;
        Some(Outgoing { first, payloads })
    }

    /// Moves a queued record into the window: its slot, and its payload for the send.
    fn take(&mut self, id: RecordId, ready: compress::Ready) -> Payload {
        self.queued_bytes = self.queued_bytes.saturating_sub(ready.payload.len() as u64);
        self.slots.push_back(Slot { id, result: None });
        ready.payload
    }

    /// Takes the outcome of a send: a retryable failure stops new sends (keeping the
    /// largest `Retry-After`); a permanent rejection of a merged send queues its records to
    /// be sent again one by one; the settled prefix grows.
    fn settle(&mut self, sent: Sent) {
        let outcome = match &sent.result {
            Ok(()) => Outcome::Delivered,
            Err(e) if e.is_permanent() && sent.payloads.len() > 1 => {
                tracing::debug!(error = %outlast_core::ErrorChain(e), records = sent.payloads.len(), "outlast: merged replay request rejected permanently; sending its records one by one");
                // They go before anything not started yet, oldest first.
                self.singles.extend((sent.first..).zip(sent.payloads));
                self.singles
                    .make_contiguous()
                    .sort_unstable_by_key(|(i, _)| *i);
                return;
            }
            Err(e) if e.is_permanent() => {
                tracing::debug!(error = %outlast_core::ErrorChain(e), index = sent.first, "outlast: spooled record rejected permanently; dropping it");
                Outcome::Rejected
            }
            Err(e) => {
                self.stop = Some(match self.stop {
                    Some(Stop::SpoolTrouble) => Stop::SpoolTrouble,
                    Some(Stop::Failed(d)) => Stop::Failed(d.max(e.retry_after())),
                    None => Stop::Failed(e.retry_after()),
                });
                Outcome::Failed
            }
        };
        for i in 0..sent.payloads.len() as u64 {
            // Started records are at or after `base`, within the window.
            let offset = (sent.first + i)
                .checked_sub(self.base)
                .and_then(|o| usize::try_from(o).ok())
                .unwrap_or(usize::MAX);
            if let Some(slot) = self.slots.get_mut(offset) {
                slot.result = Some(outcome);
            }
        }
        self.grow_settled_prefix();
    }

    /// Grows the settled prefix; it is acknowledged as soon as no other acknowledgement is
    /// being written (acknowledgements coalesce).
    fn grow_settled_prefix(&mut self) {
        while let Some(slot) = self.slots.front() {
            match slot.result {
                Some(Outcome::Delivered) => self.acks.push(slot.id, true),
                Some(Outcome::Rejected) => self.acks.push(slot.id, false),
                Some(Outcome::Corrupt) => self.acks.push_corrupt(slot.id),
                Some(Outcome::TooLarge) => self.acks.push_too_large(slot.id),
                Some(Outcome::Failed) | None => break,
            }
            self.ack_due = true;
            self.slots.pop_front();
            self.base += 1;
        }
    }

    /// The settled prefix to acknowledge now, if it grew since the last one or nothing is
    /// under way (`idle`); the caller has no acknowledgement being written.
    fn take_acks(&mut self, idle: bool) -> Option<Acks> {
        if self.acks.ids.is_empty() || !(self.ack_due || idle) {
            return None;
        }
        self.ack_due = false;
        Some(std::mem::take(&mut self.acks))
    }

    /// The spool could not be read or acknowledged: start nothing more.
    fn stop_for_spool(&mut self) {
        self.stop = Some(Stop::SpoolTrouble);
    }

    /// Why no more sends start, if they do not.
    fn stopped(&self) -> Option<Stop> {
        self.stop
    }

    /// Whether the last read found the spool empty.
    fn is_exhausted(&self) -> bool {
        self.exhausted
    }

    /// Something was appended after the spool was found empty: read again.
    fn read_again(&mut self) {
        self.exhausted = false;
    }

    /// With one batch allowed: `Some(full)` once it has all been started (and, with nothing
    /// under way, settled).
    fn batch_done(&self) -> Option<bool> {
        (!self.may_read() && self.queued.is_empty() && self.singles.is_empty())
            .then_some(self.last_full)
    }
}

/// The settled prefix not yet acknowledged: the last id of each lane, in order of
/// appearance (acknowledging it acknowledges the lane's records up to it), and counts.
#[derive(Debug, Default)]
struct Acks {
    ids: Vec<RecordId>,
    delivered: u64,
    rejected: u64,
    /// Dropped because their stored bytes do not decode.
    corrupt: u64,
    /// Dropped because they decode to more than `max_record_bytes`.
    too_large: u64,
}

/// A batch as read, its records taken out and prepared for the window.
type Prepared = (ReadBatch, Vec<Queued>);

/// How records are decoded for the exporter (see [`prepare`]).
#[derive(Debug, Clone, Copy)]
struct Decoding {
    /// Whether the exporter takes gzip-encoded payloads as they are.
    accepts_gzip: bool,
    /// No record is decoded past this (`max_record_bytes`).
    limit: u64,
    /// Records of one read are decoded ahead while their decoded bytes stay under this.
    budget: u64,
}

/// A stored record as the exporter takes it, or why it cannot be sent.
fn decode(stored: Payload, d: Decoding) -> QueuedState {
    let accepts = move |e: ContentEncoding| {
        e == ContentEncoding::Identity || (d.accepts_gzip && e == ContentEncoding::Gzip)
    };
    match compress::for_exporter(stored, accepts, d.limit) {
        Ok(ready) => QueuedState::Ready(ready),
        Err(why) => QueuedState::Undecodable(why),
    }
}

/// The records of one read, decoded ahead in order while what they hold decoded stays
/// under the budget (so one read never holds more than the budget plus one record
/// decoded); the rest stay as stored, decoded one at a time when next to go. Runs on the
/// blocking pool with the read.
fn prepare(records: Vec<Record>, d: Decoding) -> Vec<Queued> {
    let mut held = 0u64;
    records
        .into_iter()
        .map(|r| {
            let state = if held < d.budget {
                let state = decode(r.payload, d);
                held = held.saturating_add(state.bytes());
                state
            } else {
                QueuedState::Stored(r.payload)
            };
            Queued { id: r.id, state }
        })
        .collect()
}

/// A record read and not started yet.
#[derive(Debug)]
struct Queued {
    id: RecordId,
    state: QueuedState,
}

/// A queued record as stored, or decoded (as the exporter takes it), or why it cannot be
/// sent.
#[derive(Debug)]
enum QueuedState {
    Stored(Payload),
    Ready(compress::Ready),
    Undecodable(Undecodable),
}

impl QueuedState {
    /// Bytes it holds in memory.
    fn bytes(&self) -> u64 {
        match self {
            QueuedState::Stored(p) => p.len() as u64,
            QueuedState::Ready(r) => r.payload.len() as u64,
            QueuedState::Undecodable(_) => 0,
        }
    }
}

impl Acks {
    fn note(&mut self, id: RecordId) {
        match self.ids.iter_mut().find(|i| i.lane == id.lane) {
            Some(i) => *i = id,
            None => self.ids.push(id),
        }
    }

    fn push_corrupt(&mut self, id: RecordId) {
        self.note(id);
        self.corrupt += 1;
    }

    fn push_too_large(&mut self, id: RecordId) {
        self.note(id);
        self.too_large += 1;
    }

    fn push(&mut self, id: RecordId, delivered: bool) {
        self.note(id);
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
    use outlast_core::ContentType;

    fn id(lane: u32, seq: u64) -> RecordId {
        RecordId { lane, seq }
    }

    /// Records of lane 0 with these sequence numbers; each payload is 10 bytes that start
    /// with its sequence number.
    fn records(seqs: std::ops::Range<u64>) -> Vec<Record> {
        seqs.map(|seq| {
            let mut bytes = seq.to_le_bytes().to_vec();
            bytes.extend_from_slice(&[0, 0]);
            Record {
                id: id(0, seq),
                payload: Payload::new(bytes).with_content_type(ContentType::Protobuf),
            }
        })
        .collect()
    }

    fn seq_of(p: &Payload) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&p.bytes()[..8]);
        u64::from_le_bytes(b)
    }

    fn window(max_records: usize, in_flight: usize) -> ReplayWindow {
        ReplayWindow::new(
            Window {
                max_records,
                in_flight,
                one_batch: false,
            },
            u64::MAX,
            Coalescing::UNLIMITED,
        )
    }

    /// An exporter that never merges.
    fn alone(_: &Payload) -> Option<Coalescing> {
        None
    }

    /// An exporter that merges anything, without caps of its own.
    fn merges(_: &Payload) -> Option<Coalescing> {
        Some(Coalescing::UNLIMITED)
    }

    /// Admits every send the limits allow with `running` already under way.
    fn admit_all(w: &mut ReplayWindow, mut running: usize) -> Vec<Outgoing> {
        admit_all_with(w, &mut running, alone)
    }

    fn admit_all_with(
        w: &mut ReplayWindow,
        running: &mut usize,
        merge: fn(&Payload) -> Option<Coalescing>,
    ) -> Vec<Outgoing> {
        let mut out = Vec::new();
        while let Some(s) = w.admit(*running, merge) {
            *running += 1;
            out.push(s);
        }
        out
    }

    fn sent(send: Outgoing, result: Result<(), ExportError>) -> Sent {
        Sent {
            first: send.first,
            payloads: send.payloads,
            result,
        }
    }

    fn seqs(sends: &[Outgoing]) -> Vec<u64> {
        sends
            .iter()
            .flat_map(|s| s.payloads.iter().map(seq_of))
            .collect()
    }

    /// The sequence numbers of each send, one list per send.
    fn groups(sends: &[Outgoing]) -> Vec<Vec<u64>> {
        sends
            .iter()
            .map(|s| s.payloads.iter().map(seq_of).collect())
            .collect()
    }

    /// Records of lane 0 stored gzipped (as the client stores them), and their originals.
    fn gzipped(seqs: std::ops::Range<u64>) -> (Vec<Record>, Vec<Payload>) {
        seqs.map(|seq| {
            let mut bytes = seq.to_le_bytes().to_vec();
            bytes.extend(std::iter::repeat_n(b'a', 2000));
            let p = Payload::new(bytes).with_content_type(ContentType::Protobuf);
            let stored = compress::for_spool(&p).expect("compressible");
            (
                Record {
                    id: id(0, seq),
                    payload: stored,
                },
                p,
            )
        })
        .unzip()
    }

    #[test]
    fn stored_gzip_goes_out_as_it_is_only_to_an_exporter_that_takes_gzip() {
        let (recs, originals) = gzipped(1..4);
        let stored: Vec<Payload> = recs.iter().map(|r| r.payload.clone()).collect();
        let mut w = window(10, 10);
        w.on_read(recs.clone());
        let sends = admit_all(&mut w, 0);
        let got: Vec<Payload> = sends.into_iter().flat_map(|s| s.payloads).collect();
        assert_eq!(got, originals, "decompressed for an identity-only exporter");

        let mut w = window(10, 10);
        w.accepts_gzip = true;
        w.on_read(recs);
        let sends = admit_all_with(&mut w, &mut 0, merges);
        assert_eq!(sends.len(), 1, "gzip records merge with each other");
        assert_eq!(
            sends[0].payloads, stored,
            "the stored bytes, not compressed again"
        );
    }

    #[test]
    fn a_record_that_does_not_decompress_is_acknowledged_as_corrupt_and_never_sent() {
        let (mut recs, _) = gzipped(1..6);
        let bad = recs[2].payload.clone();
        let mut bytes = bad.bytes().to_vec();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        recs[2].payload = Payload::from_parts(bad.meta().clone(), bytes.into());
        for accepts_gzip in [false, true] {
            let mut w = window(10, 10);
            w.accepts_gzip = accepts_gzip;
            w.on_read(recs.clone());
            let sends = admit_all(&mut w, 0);
            let firsts: Vec<u64> = sends.iter().map(|s| s.first).collect();
            assert_eq!(
                firsts,
                vec![0, 1, 3, 4],
                "the corrupt record takes index 2, unsent"
            );
            for s in sends {
                w.settle(sent(s, Ok(())));
            }
            let acks = w.take_acks(true).expect("acks");
            assert_eq!(acks.ids, vec![id(0, 5)]);
            assert_eq!((acks.delivered, acks.rejected, acks.corrupt), (4, 0, 1));
        }
        // The last record corrupt, nothing else to send: still acknowledged.
        let mut w = window(10, 10);
        w.on_read(recs[2..3].to_vec());
        assert!(admit_all(&mut w, 0).is_empty());
        let acks = w.take_acks(true).expect("acks");
        assert_eq!((acks.ids, acks.corrupt), (vec![id(0, 3)], 1));
    }

    #[test]
    fn a_read_is_decoded_ahead_only_within_its_budget_and_the_rest_when_next_to_go() {
        let (recs, originals) = gzipped(0..6);
        let each = originals[0].len() as u64;
        let d = Decoding {
            accepts_gzip: false,
            limit: u64::MAX,
            budget: 2 * each,
        };
        let queued = prepare(recs, d);
        let decoded: Vec<bool> = queued
            .iter()
            .map(|q| matches!(q.state, QueuedState::Ready(_)))
            .collect();
        assert_eq!(decoded, [true, true, false, false, false, false]);
        let mut w = window(10, 10);
        w.on_read_queued(queued);
        let sends = admit_all(&mut w, 0);
        let got: Vec<Payload> = sends.into_iter().flat_map(|s| s.payloads).collect();
        assert_eq!(got, originals, "the rest decoded one by one as they go");
        assert_eq!(w.queued_bytes, 0);
        // A record that decodes past the limit is settled too large, in order, unsent.
        let (recs, _) = gzipped(0..3);
        let d = Decoding {
            accepts_gzip: true,
            limit: each - 1,
            budget: u64::MAX,
        };
        let mut w = window(10, 10);
        w.on_read_queued(prepare(recs, d));
        assert!(admit_all(&mut w, 0).is_empty());
        let acks = w.take_acks(true).expect("acks");
        assert_eq!((acks.ids, acks.too_large), (vec![id(0, 2)], 3));
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

    #[test]
    fn window_reads_until_a_batch_is_queued_and_admits_up_to_the_in_flight_limit() {
        let mut w = window(4, 2);
        assert!(w.wants_read());
        w.on_read(records(0..4));
        assert!(!w.wants_read(), "a full batch is queued");
        let first = admit_all(&mut w, 0);
        assert_eq!(seqs(&first), vec![0, 1]);
        assert!(w.wants_read(), "room for the next batch while sending");
        assert!(w.admit(2, alone).is_none());
    }

    #[test]
    fn a_stalled_oldest_record_holds_the_window_at_max_records() {
        let mut w = window(3, 8);
        w.on_read(records(0..6));
        let mut sends = admit_all(&mut w, 0);
        assert_eq!(seqs(&sends), vec![0, 1, 2]);
        // Records 1 and 2 settle, 0 stalls: nothing more may start.
        let s2 = sends.pop().expect("send 2");
        let s1 = sends.pop().expect("send 1");
        w.settle(sent(s2, Ok(())));
        w.settle(sent(s1, Ok(())));
        assert!(w.admit(1, alone).is_none());
        assert!(
            w.take_acks(false).is_none(),
            "nothing settled at the front yet"
        );
        // Record 0 settles: the prefix 0..=2 is due and three more may start.
        let s0 = sends.pop().expect("send 0");
        w.settle(sent(s0, Ok(())));
        let acks = w.take_acks(false).expect("prefix due");
        assert_eq!((acks.ids.clone(), acks.delivered), (vec![id(0, 2)], 3));
        assert!(w.take_acks(true).is_none(), "taken once");
        assert_eq!(seqs(&admit_all(&mut w, 0)), vec![3, 4, 5]);
    }

    #[test]
    fn a_permanent_rejection_is_settled_and_acknowledged_as_rejected() {
        let mut w = window(10, 10);
        w.on_read(records(0..3));
        let mut sends = admit_all(&mut w, 0).into_iter();
        for (i, s) in sends.by_ref().enumerate() {
            let r = if i == 1 {
                Err(ExportError::permanent("400"))
            } else {
                Ok(())
            };
            w.settle(sent(s, r));
        }
        let acks = w.take_acks(true).expect("all settled");
        assert_eq!(acks.ids, vec![id(0, 2)]);
        assert_eq!((acks.delivered, acks.rejected), (2, 1));
        assert_eq!(w.stopped(), None);
    }

    #[test]
    fn a_retryable_failure_stops_admission_and_nothing_after_it_is_acknowledged() {
        let mut w = window(10, 10);
        w.on_read(records(0..6));
        let sends: Vec<_> = (0..4).filter_map(|r| w.admit(r, alone)).collect();
        let mut sends = sends.into_iter();
        let (a, b, c, d) = (
            sends.next().expect("0"),
            sends.next().expect("1"),
            sends.next().expect("2"),
            sends.next().expect("3"),
        );
        w.settle(sent(a, Ok(())));
        w.settle(sent(
            b,
            Err(ExportError::retryable_after("503", Duration::from_secs(2))),
        ));
        w.settle(sent(
            d,
            Err(ExportError::retryable_after("429", Duration::from_secs(5))),
        ));
        w.settle(sent(c, Ok(())));
        assert_eq!(
            w.stopped(),
            Some(Stop::Failed(Some(Duration::from_secs(5)))),
            "the largest Retry-After wins"
        );
        assert!(
            w.admit(0, alone).is_none(),
            "no send starts after a failure"
        );
        assert!(!w.wants_read());
        let acks = w.take_acks(true).expect("the delivered prefix");
        assert_eq!((acks.ids, acks.delivered), (vec![id(0, 0)], 1));
        assert!(
            w.take_acks(true).is_none(),
            "record 2 went through after the failure: not acknowledged"
        );
    }

    #[test]
    fn a_one_batch_replay_reads_once_and_reports_whether_the_batch_was_full() {
        let mut w = ReplayWindow::new(
            Window {
                max_records: 1,
                in_flight: 1,
                one_batch: true,
            },
            u64::MAX,
            Coalescing::UNLIMITED,
        );
        assert_eq!(w.batch_done(), None);
        w.on_read(records(0..1));
        assert!(!w.wants_read());
        let s = w.admit(0, merges).expect("the probe record");
        assert_eq!(w.batch_done(), Some(true));
        w.settle(sent(s, Ok(())));
        assert!(w.take_acks(true).is_some());
    }

    #[test]
    fn an_empty_read_exhausts_the_window_until_told_to_read_again() {
        let mut w = window(10, 1);
        w.on_read(Vec::new());
        assert!(w.is_exhausted() && !w.wants_read());
        w.read_again();
        assert!(w.wants_read());
    }

    #[test]
    fn a_spool_failure_stops_admission_and_outranks_a_later_retryable_failure() {
        let mut w = window(10, 10);
        w.on_read(records(0..3));
        let s = w.admit(0, alone).expect("one");
        w.stop_for_spool();
        assert!(w.admit(1, alone).is_none());
        w.settle(sent(s, Err(ExportError::retryable("reset"))));
        assert_eq!(w.stopped(), Some(Stop::SpoolTrouble));
    }

    #[test]
    fn read_ahead_stops_at_the_byte_limit() {
        let mut w = ReplayWindow::new(
            Window {
                max_records: 100,
                in_flight: 1,
                one_batch: false,
            },
            25,
            Coalescing::UNLIMITED,
        );
        w.on_read(records(0..2));
        assert!(w.wants_read(), "20 of 25 bytes queued");
        w.on_read(records(2..3));
        assert!(!w.wants_read(), "30 of 25 bytes queued");
        let _ = w.admit(0, alone);
        assert!(w.wants_read(), "20 bytes queued again");
    }

    #[test]
    fn consecutive_records_merge_up_to_the_caps_and_the_room_in_the_window() {
        let mut w = ReplayWindow::new(
            Window {
                max_records: 10,
                in_flight: 8,
                one_batch: false,
            },
            u64::MAX,
            Coalescing::new(4, 1000),
        );
        w.on_read(records(0..12));
        let mut running = 0;
        let sends = admit_all_with(&mut w, &mut running, merges);
        // Four per send (the record cap), and no more than 10 past the oldest unsettled.
        assert_eq!(
            groups(&sends),
            vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]
        );
        // The exporter's own byte cap (10-byte payloads) is smaller still.
        let mut w = window(10, 8);
        w.on_read(records(0..5));
        let send = w
            .admit(0, |_| Some(Coalescing::new(usize::MAX, 25)))
            .expect("a send");
        assert_eq!(groups(&[send]), vec![vec![0, 1]]);
    }

    #[test]
    fn only_compatible_records_the_exporter_accepts_to_merge_travel_together() {
        let mut w = window(10, 8);
        let mut rs = records(0..8);
        for r in &mut rs[2..4] {
            r.payload = r.payload.clone().with_content_type(ContentType::Json);
        }
        rs[5].payload = rs[5].payload.clone().with_key("opaque");
        w.on_read(rs);
        let mut running = 0;
        let sends = admit_all_with(&mut w, &mut running, |p| {
            p.meta().key.is_none().then_some(Coalescing::UNLIMITED)
        });
        assert_eq!(
            groups(&sends),
            vec![vec![0, 1], vec![2, 3], vec![4], vec![5], vec![6, 7]]
        );
    }

    #[test]
    fn a_merged_send_rejected_permanently_is_retried_one_by_one_and_only_the_poison_is_dropped() {
        let mut w = ReplayWindow::new(
            Window {
                max_records: 10,
                in_flight: 2,
                one_batch: false,
            },
            u64::MAX,
            Coalescing::new(3, u64::MAX),
        );
        w.on_read(records(0..8));
        let mut running = 0;
        let mut sends = admit_all_with(&mut w, &mut running, merges).into_iter();
        let (a, b) = (sends.next().expect("0..3"), sends.next().expect("3..6"));
        // The second merged request is rejected: nothing is dropped yet.
        w.settle(sent(b, Err(ExportError::permanent("400"))));
        w.settle(sent(a, Ok(())));
        let acks = w.take_acks(false).expect("the first request");
        assert_eq!(
            (acks.ids, acks.delivered, acks.rejected),
            (vec![id(0, 2)], 3, 0)
        );
        // Its records go again one by one, before the records not started yet.
        let mut running = 0;
        let singles = admit_all_with(&mut w, &mut running, merges);
        assert_eq!(groups(&singles), vec![vec![3], vec![4]]);
        let mut singles = singles.into_iter();
        w.settle(sent(singles.next().expect("3"), Ok(())));
        w.settle(sent(
            singles.next().expect("4"),
            Err(ExportError::permanent("poison")),
        ));
        let mut running = 1;
        let next = admit_all_with(&mut w, &mut running, merges);
        assert_eq!(
            groups(&next),
            vec![vec![5]],
            "the last single, then new records"
        );
        w.settle(sent(next.into_iter().next().expect("5"), Ok(())));
        let acks = w.take_acks(false).expect("the retried records");
        assert_eq!(
            (acks.ids, acks.delivered, acks.rejected),
            (vec![id(0, 5)], 2, 1)
        );
        let mut running = 0;
        assert_eq!(
            groups(&admit_all_with(&mut w, &mut running, merges)),
            vec![vec![6, 7]]
        );
    }

    #[test]
    fn a_retryable_failure_of_a_merged_send_settles_none_of_its_records() {
        let mut w = window(10, 1);
        w.on_read(records(0..3));
        let send = w.admit(0, merges).expect("all three");
        w.settle(sent(send, Err(ExportError::retryable("503"))));
        assert!(w.take_acks(true).is_none());
        assert_eq!(w.stopped(), Some(Stop::Failed(None)));
    }
}
