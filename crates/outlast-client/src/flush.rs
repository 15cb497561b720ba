//! A flush: what a caller asks ([`FlushOptions`]) and is told ([`FlushReport`]), and the
//! drain task's side of it: a flush is a message with its deadline and options and a
//! one-shot reply ([`FlushRequest`]); the drain task keeps the flushes waiting on it
//! ([`Flushes`]) and answers each when the backlog is delivered, or when its attempt found
//! the backend unreachable.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::BackendState;

/// What a [`Client::force_flush`](crate::Client::force_flush) (or the flush inside [`Client::shutdown`](crate::Client::shutdown)) achieved.
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
    /// ([`ClientStats::foreign_lanes`](crate::ClientStats::foreign_lanes) and [`ClientStats::foreign_records`](crate::ClientStats::foreign_records) report them).
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
    /// report of [`Client::shutdown`](crate::Client::shutdown), whether closing the spool (which syncs it) finished
    /// within the shutdown's time.
    pub synced: bool,
    /// Acknowledgements the spool refused while the flush ran: those records were
    /// delivered but may be delivered again (at least once).
    pub ack_failures: u64,
    /// Records of this client's identity still waiting in the spool; they stay on disk for
    /// a later flush, the drain task, or the next process using the same spool directory.
    pub remaining_records: u64,
    /// Framed bytes of the records still waiting (see [`ClientStats::pending_bytes`](crate::ClientStats::pending_bytes)).
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

/// How a [`Client::force_flush_with`](crate::Client::force_flush_with) behaves.
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

/// A flush sent to the drain task.
#[derive(Debug)]
pub(crate) struct FlushRequest {
    /// The caller stops waiting then (and drops its end of `reply`).
    pub(crate) deadline: Instant,
    pub(crate) keep_trying: bool,
    pub(crate) reply: oneshot::Sender<Answer>,
}

/// The drain task's answer to a flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Nothing is left to deliver and no direct export is under way.
    Drained,
    /// An attempt made after the flush arrived found the backend unreachable at the
    /// transport level (and the flush does not keep trying).
    Offline,
}

/// The flushes waiting on the drain task, owned by it. Pure bookkeeping: the drain task says
/// when an attempt starts, fails or the backlog is gone; the answers go out on the replies.
#[derive(Debug, Default)]
pub(crate) struct Flushes {
    waiting: Vec<Waiting>,
    /// The latest deadline of the flushes added since [`take_new`](Self::take_new).
    new: Option<Instant>,
}

#[derive(Debug)]
struct Waiting {
    request: FlushRequest,
    /// An attempt started after this flush arrived: its failure answers the flush.
    tried: bool,
}

impl Flushes {
    /// A flush arrived.
    pub(crate) fn add(&mut self, request: FlushRequest) {
        self.new = self.new.max(Some(request.deadline));
        self.waiting.push(Waiting {
            request,
            tried: false,
        });
    }

    /// Whether flushes arrived since the last call, and the latest of their deadlines: the
    /// drain task adopts released lanes for them within it.
    pub(crate) fn take_new(&mut self) -> Option<Instant> {
        self.new.take()
    }

    /// Whether a flush waits for an attempt not started yet: the drain task tries now
    /// rather than wait out its backoff.
    pub(crate) fn wants_attempt(&self) -> bool {
        self.waiting.iter().any(|w| !w.tried)
    }

    /// An attempt (a probe or a replay) starts: it is the one each waiting flush hears of.
    pub(crate) fn attempt_started(&mut self) {
        for w in &mut self.waiting {
            w.tried = true;
        }
    }

    /// Nothing is left to deliver: every flush is answered.
    pub(crate) fn drained(&mut self) {
        for w in self.waiting.drain(..) {
            // A caller that stopped waiting dropped its receiver: nothing to tell.
            let _ = w.request.reply.send(Answer::Drained);
        }
    }

    /// An attempt failed and the backend is unreachable at the transport level: the
    /// flushes it was made for that do not keep trying are answered.
    pub(crate) fn unreachable(&mut self) {
        let answered = self
            .waiting
            .extract_if(.., |w| w.tried && !w.request.keep_trying);
        for w in answered {
            let _ = w.request.reply.send(Answer::Offline);
        }
    }

    /// Forgets the flushes whose caller stopped waiting (past its deadline, or dropped).
    pub(crate) fn prune(&mut self, now: Instant) {
        self.waiting
            .retain(|w| !w.request.reply.is_closed() && w.request.deadline > now);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(keep_trying: bool) -> (FlushRequest, oneshot::Receiver<Answer>) {
        let (reply, rx) = oneshot::channel();
        let deadline = Instant::now() + Duration::from_secs(60);
        (
            FlushRequest {
                deadline,
                keep_trying,
                reply,
            },
            rx,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_flush_is_answered_offline_only_by_an_attempt_made_after_it_arrived() {
        let mut f = Flushes::default();
        let (early, mut early_rx) = request(false);
        let deadline = early.deadline;
        f.add(early);
        assert_eq!(f.take_new(), Some(deadline));
        assert_eq!(f.take_new(), None, "taken once");
        assert!(f.wants_attempt());
        f.attempt_started();
        assert!(!f.wants_attempt());
        // A second flush arrives while the attempt is under way.
        let (late, mut late_rx) = request(false);
        f.add(late);
        let (patient, mut patient_rx) = request(true);
        f.add(patient);
        f.unreachable();
        assert_eq!(early_rx.try_recv(), Ok(Answer::Offline));
        assert!(late_rx.try_recv().is_err(), "its attempt is still to come");
        assert!(patient_rx.try_recv().is_err(), "keeps trying");
        assert!(f.wants_attempt());
        f.attempt_started();
        f.unreachable();
        assert_eq!(late_rx.try_recv(), Ok(Answer::Offline));
        assert!(patient_rx.try_recv().is_err());
        f.drained();
        assert_eq!(patient_rx.try_recv(), Ok(Answer::Drained));
        assert!(f.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn flushes_whose_caller_left_or_whose_deadline_passed_are_forgotten() {
        let mut f = Flushes::default();
        let (gone, gone_rx) = request(false);
        f.add(gone);
        drop(gone_rx);
        let (late, _late_rx) = request(false);
        let deadline = late.deadline;
        f.add(late);
        let (kept, mut kept_rx) = request(false);
        f.add(FlushRequest {
            deadline: deadline + Duration::from_secs(1),
            ..kept
        });
        f.prune(deadline);
        assert!(!f.is_empty());
        assert_eq!(
            f.waiting.len(),
            1,
            "the dropped receiver and the passed deadline"
        );
        f.drained();
        assert_eq!(kept_rx.try_recv(), Ok(Answer::Drained));
    }
}
