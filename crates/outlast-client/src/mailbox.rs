//! The drain task's mailbox: how the other rooms tell it something. Direct exports report
//! their outcomes ([`Outcome`]) and flushes send their requests ([`FlushRequest`]); the drain
//! task, the only owner of the backend's state and of the waiting flushes, takes them in.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::time::Instant;

use crate::flush::{FlushRequest, Flushes};
use crate::health::{BackendState, Change, Health, HealthView, Outcome};

/// A message to the drain task.
#[derive(Debug)]
pub(crate) enum Msg {
    Outcome(Outcome),
    Flush(FlushRequest),
}

/// The sending end, held by the client's shared state.
///
/// A direct export that gives up on the backend must be seen at once by the next export
/// (it goes to the spool without trying) and by `stats()`, before the drain task has taken
/// the report in: the mailbox counts the give-ups sent (the senders' counter) and taken in
/// (the drain task's), and while some are in the mailbox, [`backend_state`](Self::backend_state)
/// answers with what the latest one said.
#[derive(Debug)]
pub(crate) struct Mailbox {
    tx: mpsc::UnboundedSender<Msg>,
    /// Give-ups sent, and what the latest said: written by the senders only.
    gave_up_sent: AtomicU64,
    gave_up_class: AtomicU8,
    /// Give-ups taken in: written by the drain task only (after it published their effect).
    gave_up_taken: Arc<AtomicU64>,
}

/// The receiving end and the flushes it brought, owned by the drain task.
#[derive(Debug)]
pub(crate) struct Inbox {
    rx: mpsc::UnboundedReceiver<Msg>,
    pub(crate) flushes: Flushes,
    gave_up_taken: Arc<AtomicU64>,
}

/// A new mailbox and its inbox.
pub(crate) fn mailbox() -> (Mailbox, Inbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let taken = Arc::new(AtomicU64::new(0));
    (
        Mailbox {
            tx,
            gave_up_sent: AtomicU64::new(0),
            gave_up_class: AtomicU8::new(BackendState::Offline.code()),
            gave_up_taken: Arc::clone(&taken),
        },
        Inbox {
            rx,
            flushes: Flushes::default(),
            gave_up_taken: taken,
        },
    )
}

impl Mailbox {
    /// Reports a direct export's outcome to the drain task. A delivery while the published
    /// state says online changes nothing and is not sent (the hot path stays one atomic
    /// load). Each message is one export's, so the queue holds no more than the exports
    /// made since the drain task last looked.
    pub(crate) fn report(&self, outcome: Outcome, view: &HealthView) {
        match outcome {
            Outcome::Delivered if self.backend_state(view) == BackendState::Online => return,
            Outcome::GaveUp { class, .. } => {
                // The class first, then the count: a reader that sees the count sees it.
                self.gave_up_class.store(class.code(), Ordering::Release);
                self.gave_up_sent.fetch_add(1, Ordering::AcqRel);
            }
            _ => {}
        }
        // The drain task is gone only once the client is shut down or dropped: nobody is
        // left to tell.
        let _ = self.tx.send(Msg::Outcome(outcome));
    }

    /// The backend's state: as the drain task published it in `view`, or, while a give-up
    /// it has not taken in yet is in the mailbox, as the latest give-up said.
    pub(crate) fn backend_state(&self, view: &HealthView) -> BackendState {
        // Taken first: the drain task published the effect of what it counted here.
        let taken = self.gave_up_taken.load(Ordering::Acquire);
        let published = view.state();
        if self.gave_up_sent.load(Ordering::Acquire) > taken {
            BackendState::from_code(self.gave_up_class.load(Ordering::Acquire))
        } else {
            published
        }
    }

    /// Sends a flush to the drain task; false if the drain task has ended (its reply then
    /// never comes).
    pub(crate) fn flush(&self, request: FlushRequest) -> bool {
        self.tx.send(Msg::Flush(request)).is_ok()
    }
}

impl Inbox {
    /// Waits for the next message (never `None` while the client's shared state, which
    /// holds the sender, lives).
    pub(crate) async fn recv(&mut self) -> Option<Msg> {
        self.rx.recv().await
    }

    /// Takes in every message already waiting; the changes of the backend's state, in
    /// order (the last one is where it stands).
    /// `health` is published in `view` (the caller logs the changes).
    pub(crate) fn take_waiting(
        &mut self,
        health: &mut Health,
        view: &HealthView,
        now: Instant,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        loop {
            match self.rx.try_recv() {
                Ok(msg) => changes.extend(self.take(msg, health, view, now)),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return changes,
            }
        }
    }

    /// Takes in one message: an outcome goes to `health`, published in `view` (the caller
    /// logs the change); a flush joins those waiting.
    pub(crate) fn take(
        &mut self,
        msg: Msg,
        health: &mut Health,
        view: &HealthView,
        now: Instant,
    ) -> Option<Change> {
        match msg {
            Msg::Outcome(outcome) => {
                let change = health.on_outcome(outcome, now);
                view.publish_state(health);
                if matches!(outcome, Outcome::GaveUp { .. }) {
                    // Published: the give-up no longer stands in for the state.
                    self.gave_up_taken.fetch_add(1, Ordering::AcqRel);
                }
                change
            }
            Msg::Flush(request) => {
                self.flushes.add(request);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use outlast_core::retry::RetryPolicy;

    use super::*;

    fn parts() -> (Mailbox, Inbox, Health, HealthView) {
        let (mailbox, inbox) = mailbox();
        let health = Health::new(RetryPolicy::default(), Duration::from_secs(1));
        (mailbox, inbox, health, HealthView::default())
    }

    #[test]
    fn a_give_up_shows_at_once_and_the_drain_tasks_state_once_it_is_taken_in() {
        let (mailbox, mut inbox, mut health, view) = parts();
        assert_eq!(mailbox.backend_state(&view), BackendState::Online);
        mailbox.report(
            Outcome::GaveUp {
                class: BackendState::Unreachable,
                retry_after: None,
            },
            &view,
        );
        assert_eq!(view.state(), BackendState::Online, "not published yet");
        assert_eq!(mailbox.backend_state(&view), BackendState::Unreachable);
        // A delivery after it is sent too (the state it would skip on is not online).
        mailbox.report(Outcome::Delivered, &view);
        let changes = inbox.take_waiting(&mut health, &view, Instant::now());
        let states: Vec<_> = changes.iter().map(|c| c.to).collect();
        assert_eq!(states, [BackendState::Unreachable, BackendState::Online]);
        assert_eq!(mailbox.backend_state(&view), BackendState::Online);
    }

    #[test]
    fn a_delivery_while_online_is_not_sent() {
        let (mailbox, mut inbox, mut health, view) = parts();
        mailbox.report(Outcome::Delivered, &view);
        assert!(
            inbox
                .take_waiting(&mut health, &view, Instant::now())
                .is_empty()
        );
        assert!(inbox.rx.try_recv().is_err(), "nothing was sent");
    }

    #[test]
    fn a_flush_request_joins_the_waiting_flushes() {
        let (mailbox, mut inbox, mut health, view) = parts();
        let (reply, _rx) = tokio::sync::oneshot::channel();
        let deadline = Instant::now() + Duration::from_secs(5);
        assert!(mailbox.flush(FlushRequest {
            deadline,
            keep_trying: false,
            reply,
        }));
        inbox.take_waiting(&mut health, &view, Instant::now());
        assert!(!inbox.flushes.is_empty());
        assert_eq!(inbox.flushes.take_new(), Some(deadline));
        drop(inbox);
        let (reply, _rx) = tokio::sync::oneshot::channel();
        assert!(
            !mailbox.flush(FlushRequest {
                deadline,
                keep_trying: false,
                reply,
            }),
            "the drain task is gone"
        );
    }
}
