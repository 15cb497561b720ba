//! The drain's replay: a sliding window of pipelined attempts over the spool, read ahead,
//! acknowledged in order as the delivered prefix grows.
//!
//! [`ReplayWindow`] (in `window.rs`) is the bookkeeping, with no I/O; [`Replayer`] runs it
//! against the spool and the exporter, on the drain task, feeding the outcomes of its
//! attempts and acknowledgements to the drain task's `Health`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use outlast_core::{Coalescing, ContentEncoding, ExportError, Payload};
use outlast_spool::{Spool, SpoolError};

use crate::health::{self, Health, classify, deadline_after};
use crate::mailbox::Inbox;
use crate::pace::RateCap;
use crate::shared::Shared;
use crate::stats::Count;
use crate::window::{
    Acks, Decoding, Outgoing, Prepared, Queued, ReplayWindow, Sent, Stop, Window, prepare,
};
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
    shared: &'a Arc<Shared>,
    health: &'b mut Health,
    inbox: &'b mut Inbox,
    cap: &'b mut RateCap,
}

impl<'a, 'b> Replayer<'a, 'b> {
    pub(crate) fn new(
        shared: &'a Arc<Shared>,
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
                    tracing::error!(target: crate::LOG_TARGET, error = %e, "outlast: spool task failed");
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
        // What the spool skipped is counted where the read is made, so that a replay
        // stopped while it runs (a shutdown) cannot leave it uncounted.
        let shared = Arc::clone(self.shared);
        let read = move |s: &Spool| {
            let read = s.read_batch(max_records, max_bytes);
            if let Ok(batch) = &read {
                shared.count_read_losses(batch);
            }
            read
        };
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
                    tracing::error!(target: crate::LOG_TARGET, error = %e, "outlast: decoding task failed");
                    None
                }
            }
        })
    }

    /// Handles the outcome of a read: counts what the spool skipped; `None` if the read
    /// failed (logged).
    fn on_read(&self, read: Option<Result<Prepared, SpoolError>>) -> Option<Vec<Queued>> {
        match read {
            // Its losses were counted where it was made (`start_read`).
            Some(Ok((_, queued))) => Some(queued),
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
        let counts = AckCounts::of(&acks);
        let shared = Arc::clone(self.shared);
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
            // Counted where the acknowledgement is made, so that a replay stopped while it
            // runs (a shutdown) cannot leave records acknowledged and uncounted. A refused
            // acknowledgement that still counts in memory (see `ack_counted`) is counted
            // too: those records are not read again by this process (a crash before the
            // next cursor write delivers them again: at least once).
            if result.as_ref().map_or_else(ack_counted, |()| true) {
                counts.count(&shared);
            }
            result
        });
        (op, acks)
    }

    /// Handles the outcome of an acknowledgement (counted where it was made, see
    /// `start_ack`). False if the spool refused (logged, counted in `ack_failures`).
    fn on_acked(&mut self, acked: Option<Result<(), SpoolError>>, acks: &Acks) -> bool {
        let shared = self.shared;
        match acked {
            Some(Ok(())) => {
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
                window.start_read(!idle || paced.is_some());
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
                    if window.take_recheck() {
                        // Found empty while earlier records were outstanding: the spool
                        // may have held an expired record back until they were
                        // acknowledged, as they now are.
                        window.read_again();
                        continue;
                    }
                    if shared.backlog.try_clear(snapshot) {
                        tracing::info!(target: crate::LOG_TARGET, "outlast: backlog delivered; exporting directly again");
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
                        shared.log_changes(change);
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

/// What one acknowledgement settles, counted by the operation that makes it.
#[derive(Debug, Clone, Copy)]
struct AckCounts {
    delivered: u64,
    rejected: u64,
    corrupt: u64,
    too_large: u64,
}

impl AckCounts {
    fn of(acks: &Acks) -> AckCounts {
        AckCounts {
            delivered: acks.delivered,
            rejected: acks.rejected,
            corrupt: acks.corrupt,
            too_large: acks.too_large,
        }
    }

    /// Delivered records as replayed, the others as dropped for their reason.
    fn count(self, shared: &Shared) {
        shared.counters.add(Count::Replayed, self.delivered);
        shared.record_drop(DropReason::Permanent, self.rejected);
        shared.record_drop(DropReason::Corrupt, self.corrupt);
        shared.record_drop(DropReason::TooLarge, self.too_large);
    }
}
