//! What the client knows about the backend, owned by the drain task: online or why not, the
//! backoff and the probe's cadence, and when it tries next.
//!
//! [`Health`] is the state machine, with no I/O and no clock of its own (every call takes
//! the time): the drain task owns the only one and feeds it the outcomes of its probes and
//! replays, and of the direct exports (which report to it through the client's mailbox). It
//! answers with [`Change`]s to log and the next instant to wake at. What other rooms read is
//! the published copy, [`HealthView`], which only the drain task writes.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use outlast_core::retry::{Backoff, RetryPolicy};
use outlast_core::{ExportError, Reachability};
use tokio::time::Instant;

/// What the client knows about the backend (see [`ClientStats::backend`](crate::ClientStats::backend)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BackendState {
    /// The last attempt succeeded, or none failed.
    #[default]
    Online,
    /// Unreachable at the transport level (connection refused, reset, timed out, DNS): the
    /// drain task probes it every `probe_interval` (when the exporter has a probe) and
    /// replays at once when a probe gets through.
    Unreachable,
    /// The backend answers, with failures (HTTP 429, 5xx): attempts follow the backoff and
    /// `Retry-After`.
    Failing,
    /// Offline, and the exporter's errors do not say whether the backend answered:
    /// attempts follow the backoff.
    Offline,
}

impl BackendState {
    /// A short name for logs and metrics: `online`, `offline-transport`,
    /// `backend-failing`, `offline`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Online => "online",
            BackendState::Unreachable => "offline-transport",
            BackendState::Failing => "backend-failing",
            BackendState::Offline => "offline",
        }
    }

    /// A phrase for log messages.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            BackendState::Online => "reachable",
            BackendState::Unreachable => "unreachable (transport level); probing for its return",
            BackendState::Failing => "answering with failures; retrying with backoff",
            BackendState::Offline => "unreachable; retrying with backoff",
        }
    }

    /// Its code in an atomic.
    pub(crate) fn code(self) -> u8 {
        match self {
            BackendState::Online => 0,
            BackendState::Unreachable => 1,
            BackendState::Failing => 2,
            BackendState::Offline => 3,
        }
    }

    pub(crate) fn from_code(code: u8) -> BackendState {
        match code {
            0 => BackendState::Online,
            1 => BackendState::Unreachable,
            2 => BackendState::Failing,
            _ => BackendState::Offline,
        }
    }
}

impl std::fmt::Display for BackendState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a failed attempt says about the backend, as the error classifies itself:
///
/// - [`BackendState::Unreachable`]: no answer at the transport level
///   ([`ExportError::is_unreachable`]: an unreachable failure, a timeout, a retryable failure
///   carrying a connection error).
/// - [`BackendState::Failing`]: the backend answered with a failure
///   ([`ExportError::is_answered`]: a failing or permanent failure, a `Retry-After`).
/// - [`BackendState::Offline`]: nothing says which.
pub(crate) fn classify(error: &ExportError) -> BackendState {
    if error.is_unreachable() {
        BackendState::Unreachable
    } else if error.is_answered() {
        BackendState::Failing
    } else {
        BackendState::Offline
    }
}

/// An outcome reported to [`Health`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A direct export was delivered.
    Delivered,
    /// A direct export gave up on the backend (after its retry, or a live send beside a
    /// backlog): it went to the spool, and so do the next ones. `class` is what its last
    /// failure said ([`classify`]); `retry_after` the server's hint, for the drain task's
    /// first delay.
    GaveUp {
        class: BackendState,
        retry_after: Option<Duration>,
    },
    /// A replayed attempt failed (the replay stops after it): `class` is what it said.
    ReplayFailed { class: BackendState },
    /// Replayed records were acknowledged: `delivered` of them delivered (the others
    /// rejected or dropped on purpose).
    Acknowledged { delivered: u64 },
}

/// A change of the backend's state, to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) from: BackendState,
    pub(crate) to: BackendState,
    /// Back online: how long the backend was not (from the first failure).
    pub(crate) outage: Option<Duration>,
}

/// When the drain task wakes next while the backend is not online, and for what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wake {
    pub(crate) at: Instant,
    /// A probe (a successful one starts the replay early); else the attempt itself.
    pub(crate) probe: bool,
}

/// The backend's state machine (see the module documentation).
#[derive(Debug)]
pub(crate) struct Health {
    state: BackendState,
    /// What the last failed attempt said: the state taken when the backend is found down.
    last_failure: BackendState,
    /// The `Retry-After` of the direct failure that created the backlog, for the first delay.
    hint: Option<Duration>,
    /// When the backend was last found down (`None` while online).
    offline_since: Option<Instant>,
    backoff: Backoff,
    /// When the next attempt may be made (after a failure).
    retry_at: Option<Instant>,
    /// When the next probe is due, while the backend is unreachable at the transport level
    /// (before `retry_at`: a successful probe starts the replay early).
    probe_at: Option<Instant>,
    /// The probe's cadence, jittered (initial and maximum delay are the probe interval).
    probe_delays: Backoff,
    /// False once the exporter answered a probe with `Unsupported`.
    probe_supported: bool,
    /// False after a replay started by a successful probe failed all the same (a port that
    /// accepts connections but a backend that does not answer): until the next delivery,
    /// the probe's word does not start replays early.
    probe_trusted: bool,
    /// The replay about to start was started by a successful probe.
    probe_led: bool,
}

impl Health {
    /// Online, with `retry` for the backoff and probes every `probe_interval` (jittered as
    /// `retry` says).
    pub(crate) fn new(retry: RetryPolicy, probe_interval: Duration) -> Health {
        let probe_policy = RetryPolicy {
            initial_backoff: probe_interval,
            max_backoff: probe_interval,
            ..retry
        };
        Health {
            state: BackendState::Online,
            last_failure: BackendState::Offline,
            hint: None,
            offline_since: None,
            backoff: Backoff::new(retry),
            retry_at: None,
            probe_at: None,
            probe_delays: Backoff::new(probe_policy),
            probe_supported: true,
            probe_trusted: true,
            probe_led: false,
        }
    }

    pub(crate) fn state(&self) -> BackendState {
        self.state
    }

    pub(crate) fn is_online(&self) -> bool {
        self.state == BackendState::Online
    }

    /// Takes in an outcome; the change of state, if any.
    pub(crate) fn on_outcome(&mut self, outcome: Outcome, now: Instant) -> Option<Change> {
        match outcome {
            Outcome::Delivered => self.set(BackendState::Online, now),
            Outcome::Acknowledged { delivered } => {
                if delivered > 0 {
                    // The backend is back: the backoff starts again from its first delay.
                    self.backoff.reset();
                }
                self.set(BackendState::Online, now)
            }
            Outcome::GaveUp { class, retry_after } => {
                self.last_failure = class;
                self.hint = retry_after;
                self.set(class, now)
            }
            Outcome::ReplayFailed { class } => {
                self.last_failure = class;
                None
            }
        }
    }

    /// A backlog is waiting and nothing is scheduled: if the backend was just found down by
    /// a direct export, the first retry waits one backoff delay (with the server's hint)
    /// instead of hitting it again at once.
    pub(crate) fn on_backlog(&mut self, now: Instant) {
        if !self.is_online() && self.retry_at.is_none() {
            let hint = self.hint.take();
            self.schedule_retry(hint, now);
        }
    }

    /// When to wake next, and for what: the probe if it comes first, else the attempt;
    /// `None` when nothing is scheduled (try now).
    pub(crate) fn next_wake(&self) -> Option<Wake> {
        let retry_at = self.retry_at?;
        Some(
            match self.probe_at.filter(|p| *p < retry_at && self.probing()) {
                Some(at) => Wake { at, probe: true },
                None => Wake {
                    at: retry_at,
                    probe: false,
                },
            },
        )
    }

    /// A flush asks for an attempt now: the backoff starts again and nothing is scheduled.
    pub(crate) fn try_now(&mut self) {
        self.backoff.reset();
        self.clear_schedule();
    }

    /// The attempt is about to be made: nothing scheduled any more.
    pub(crate) fn clear_schedule(&mut self) {
        self.retry_at = None;
        self.probe_at = None;
    }

    /// The answer of a probe made while waiting for the next attempt. True when it reached
    /// the backend: the replay starts now, its window open.
    pub(crate) fn on_waiting_probe(&mut self, answer: Reachability, now: Instant) -> bool {
        match answer {
            Reachability::Reachable => {
                self.probe_led = true;
                true
            }
            Reachability::Unsupported => {
                self.probe_supported = false;
                self.probe_at = None;
                false
            }
            Reachability::Unreachable => {
                self.schedule_probe(now);
                false
            }
        }
    }

    /// Whether the attempt about to be made may open its window: the backend is online, or
    /// a probe just reached it. Takes the probe's word (it counts for one replay).
    pub(crate) fn take_reachable(&mut self) -> (bool, bool) {
        let probe_led = std::mem::take(&mut self.probe_led);
        (self.is_online() || probe_led, probe_led)
    }

    /// Whether a probe is worth making before the attempt: the exporter has one.
    pub(crate) fn probe_supported(&self) -> bool {
        self.probe_supported
    }

    /// The answer of the probe made in place of an attempt (the backend not known to be
    /// reachable). `Some` when it found the backend unreachable: the change to log and the
    /// delay until the next attempt (the attempt is not made).
    pub(crate) fn on_probe(
        &mut self,
        answer: Reachability,
        now: Instant,
    ) -> Option<(Option<Change>, Duration)> {
        match answer {
            Reachability::Reachable => None,
            Reachability::Unsupported => {
                self.probe_supported = false;
                None
            }
            Reachability::Unreachable => {
                self.last_failure = BackendState::Unreachable;
                let change = self.set(BackendState::Unreachable, now);
                let (also, delay) = self.on_failure(None, now);
                Some((change.or(also), delay))
            }
        }
    }

    /// A replay ended with a retryable failure (with the largest `Retry-After` it was
    /// given); `probe_led` if a probe had started it. The change to log and the delay until
    /// the next attempt.
    pub(crate) fn on_replay_failed(
        &mut self,
        retry_after: Option<Duration>,
        probe_led: bool,
        now: Instant,
    ) -> (Option<Change>, Duration) {
        if probe_led && self.probe_trusted {
            tracing::debug!(target: crate::LOG_TARGET,
                "outlast: the backend accepted the probe but not the replay; probing no longer starts replays early"
            );
            self.probe_trusted = false;
        }
        // The state the last failed attempt showed, even if the backend was already down
        // for another reason (failing, now unreachable).
        let change = self.set(self.last_failure, now);
        let (also, delay) = self.on_failure(retry_after, now);
        (change.or(also), delay)
    }

    /// The spool could not be read or acknowledged: retry after a backoff delay, without
    /// declaring the backend unreachable.
    pub(crate) fn on_spool_trouble(&mut self, now: Instant) {
        self.schedule_retry(None, now);
    }

    /// A replay ended without a retryable failure: while online, a probe can be trusted
    /// again and nothing is scheduled.
    pub(crate) fn on_replayed(&mut self) {
        if self.is_online() {
            self.probe_trusted = true;
            self.probe_at = None;
        }
    }

    /// The next probe's time, while one is scheduled.
    pub(crate) fn probe_at(&self) -> Option<Instant> {
        self.probe_at
    }

    /// A retryable failure (of an attempt or of the probe): offline, and the next attempt
    /// scheduled one backoff delay (at least `retry_after`) from now.
    fn on_failure(
        &mut self,
        retry_after: Option<Duration>,
        now: Instant,
    ) -> (Option<Change>, Duration) {
        let change = if self.is_online() {
            self.set(self.last_failure, now)
        } else {
            None
        };
        let delay = self.schedule_retry(retry_after, now);
        (change, delay)
    }

    fn schedule_retry(&mut self, retry_after: Option<Duration>, now: Instant) -> Duration {
        let delay = self.backoff.next_delay(retry_after);
        self.retry_at = Some(deadline_after(now, delay));
        self.schedule_probe(now);
        delay
    }

    /// Sets the next probe one (jittered) probe interval from now, if probing.
    fn schedule_probe(&mut self, now: Instant) {
        self.probe_at = if self.probing() {
            let delay = self.probe_delays.next_delay(None);
            Some(deadline_after(now, delay))
        } else {
            None
        };
    }

    /// Whether the backend is probed on the probe's own cadence: it is unreachable at the
    /// transport level, the exporter has a probe, and the probe has not been misleading.
    fn probing(&self) -> bool {
        self.probe_supported && self.probe_trusted && self.state == BackendState::Unreachable
    }

    fn set(&mut self, to: BackendState, now: Instant) -> Option<Change> {
        let from = std::mem::replace(&mut self.state, to);
        if from == to {
            return None;
        }
        let outage = if to == BackendState::Online {
            self.offline_since
                .take()
                .map(|at| now.saturating_duration_since(at))
        } else {
            self.offline_since.get_or_insert(now);
            None
        };
        Some(Change { from, to, outage })
    }
}

/// The published copy of [`Health`]: written by the drain task only, read by every room.
#[derive(Debug)]
pub(crate) struct HealthView {
    state: AtomicU8,
    /// When the drain task tries next (probe or attempt), while it waits.
    next_attempt_at: Mutex<Option<Instant>>,
}

impl Default for HealthView {
    fn default() -> HealthView {
        HealthView {
            state: AtomicU8::new(BackendState::Online.code()),
            next_attempt_at: Mutex::new(None),
        }
    }
}

impl HealthView {
    /// Online, or why not.
    pub(crate) fn state(&self) -> BackendState {
        BackendState::from_code(self.state.load(Ordering::Acquire))
    }

    /// How long until the drain task tries next, if it is waiting.
    pub(crate) fn next_attempt_in(&self) -> Option<Duration> {
        self.next_attempt_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Publishes `health`'s state (the drain task's call).
    pub(crate) fn publish_state(&self, health: &Health) {
        self.state.store(health.state.code(), Ordering::Release);
    }

    /// Publishes when the drain task tries next (`None`: it is not waiting).
    pub(crate) fn publish_next_attempt(&self, at: Option<Instant>) {
        *self
            .next_attempt_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = at;
    }
}

/// `start + d`, saturated: a `d` too large for an `Instant` (e.g. `Duration::MAX`, "no
/// limit") gives a deadline about 30 years away, which no timer reaches.
pub(crate) fn deadline_after(start: Instant, d: Duration) -> Instant {
    const FAR: [Duration; 3] = [
        Duration::from_secs(30 * 365 * 24 * 3600),
        Duration::from_secs(24 * 3600),
        Duration::from_secs(1),
    ];
    start
        .checked_add(d)
        .or_else(|| FAR.iter().find_map(|far| start.checked_add(*far)))
        .unwrap_or(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    /// Backoff 2, 4, 8 … 16 s without jitter; probes every 1 s without jitter.
    fn health() -> Health {
        let retry = RetryPolicy {
            initial_backoff: 2 * SEC,
            max_backoff: 16 * SEC,
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        Health::new(retry, SEC)
    }

    fn gave_up(class: BackendState, retry_after: Option<Duration>) -> Outcome {
        Outcome::GaveUp { class, retry_after }
    }

    #[test]
    fn a_direct_give_up_takes_the_backend_down_and_its_hint_sets_the_first_delay() {
        let t0 = Instant::now();
        let mut h = health();
        assert!(h.is_online() && h.next_wake().is_none());
        let change = h.on_outcome(gave_up(BackendState::Failing, Some(5 * SEC)), t0);
        assert_eq!(
            change,
            Some(Change {
                from: BackendState::Online,
                to: BackendState::Failing,
                outage: None
            })
        );
        // Told twice, changed once.
        assert_eq!(h.on_outcome(gave_up(BackendState::Failing, None), t0), None);
        h.on_outcome(gave_up(BackendState::Failing, Some(5 * SEC)), t0);
        h.on_backlog(t0);
        assert_eq!(
            h.next_wake(),
            Some(Wake {
                at: t0 + 5 * SEC,
                probe: false
            }),
            "the Retry-After, above the first backoff delay"
        );
        // Scheduled once: a second look at the backlog changes nothing.
        h.on_backlog(t0 + SEC);
        assert_eq!(h.next_wake().map(|w| w.at), Some(t0 + 5 * SEC));
    }

    #[test]
    fn while_unreachable_the_probe_wakes_the_task_before_the_attempt() {
        let t0 = Instant::now();
        let mut h = health();
        h.on_outcome(gave_up(BackendState::Unreachable, None), t0);
        h.on_backlog(t0);
        assert_eq!(
            h.next_wake(),
            Some(Wake {
                at: t0 + SEC,
                probe: true
            })
        );
        // An unanswered probe: the next one a probe interval later, the attempt unchanged.
        assert!(!h.on_waiting_probe(Reachability::Unreachable, t0 + SEC));
        assert_eq!(
            h.next_wake(),
            Some(Wake {
                at: t0 + 2 * SEC,
                probe: false
            }),
            "the attempt (at 2 s) is not after the probe (at 2 s)"
        );
        // An answered probe starts the replay with its window open.
        assert!(h.on_waiting_probe(Reachability::Reachable, t0 + 2 * SEC));
        h.clear_schedule();
        assert_eq!(h.take_reachable(), (true, true));
        assert_eq!(h.take_reachable(), (false, false), "its word counts once");
    }

    #[test]
    fn a_replay_failing_after_a_probe_got_through_stops_trusting_the_probe_until_a_delivery() {
        let t0 = Instant::now();
        let mut h = health();
        h.on_outcome(gave_up(BackendState::Unreachable, None), t0);
        h.on_backlog(t0);
        assert!(h.on_waiting_probe(Reachability::Reachable, t0 + SEC));
        h.clear_schedule();
        let (_, probe_led) = h.take_reachable();
        h.on_outcome(
            Outcome::ReplayFailed {
                class: BackendState::Unreachable,
            },
            t0 + SEC,
        );
        let (change, delay) = h.on_replay_failed(None, probe_led, t0 + SEC);
        assert_eq!(change, None, "still unreachable");
        // The backoff went on from where the give-up left it: 2 s, then 4 s.
        assert_eq!(delay, 4 * SEC);
        assert_eq!(
            h.next_wake(),
            Some(Wake {
                at: t0 + 5 * SEC,
                probe: false
            }),
            "no probe: it was misleading"
        );
        // The drain task waits for it, then replays: a delivery brings the backend back and
        // the probe's word with it.
        h.clear_schedule();
        let back = h.on_outcome(Outcome::Acknowledged { delivered: 3 }, t0 + 6 * SEC);
        assert_eq!(
            back,
            Some(Change {
                from: BackendState::Unreachable,
                to: BackendState::Online,
                outage: Some(6 * SEC)
            })
        );
        h.on_replayed();
        h.on_outcome(gave_up(BackendState::Unreachable, None), t0 + 7 * SEC);
        h.on_backlog(t0 + 7 * SEC);
        assert_eq!(
            h.next_wake(),
            Some(Wake {
                at: t0 + 8 * SEC,
                probe: true
            }),
            "probing again, and the backoff started again at 2 s (after the probe)"
        );
    }

    #[test]
    fn a_replay_failure_takes_the_state_its_attempts_showed() {
        let t0 = Instant::now();
        let mut h = health();
        h.on_outcome(gave_up(BackendState::Unreachable, None), t0);
        h.on_outcome(
            Outcome::ReplayFailed {
                class: BackendState::Failing,
            },
            t0,
        );
        let (change, delay) = h.on_replay_failed(Some(10 * SEC), false, t0);
        assert_eq!(
            change.map(|c| (c.from, c.to)),
            Some((BackendState::Unreachable, BackendState::Failing))
        );
        assert_eq!(delay, 10 * SEC, "at least the Retry-After");
        assert_eq!(
            h.next_wake(),
            Some(Wake {
                at: t0 + 10 * SEC,
                probe: false
            }),
            "no probing while the backend answers"
        );
    }

    #[test]
    fn a_flush_tries_now_and_starts_the_backoff_again() {
        let t0 = Instant::now();
        let mut h = health();
        h.on_outcome(gave_up(BackendState::Offline, None), t0);
        for _ in 0..5 {
            let _ = h.on_replay_failed(None, false, t0);
        }
        assert_eq!(h.next_wake().map(|w| w.at), Some(t0 + 16 * SEC), "capped");
        h.try_now();
        assert_eq!(h.next_wake(), None);
        let (_, delay) = h.on_replay_failed(None, false, t0);
        assert_eq!(delay, 2 * SEC);
    }

    #[test]
    fn a_probe_in_place_of_the_attempt_that_finds_nothing_backs_off() {
        let t0 = Instant::now();
        let mut h = health();
        // Offline, cause unknown (an earlier run's backlog, or an unclassified failure).
        h.on_outcome(gave_up(BackendState::Offline, None), t0);
        let (change, delay) = h
            .on_probe(Reachability::Unreachable, t0)
            .expect("unreachable: no attempt");
        assert_eq!(change.map(|c| c.to), Some(BackendState::Unreachable));
        assert_eq!(delay, 2 * SEC);
        assert!(h.on_probe(Reachability::Reachable, t0).is_none());
        assert!(h.on_probe(Reachability::Unsupported, t0).is_none());
        assert!(!h.probe_supported());
        assert!(
            !h.next_wake().is_some_and(|w| w.probe),
            "no probe once the exporter said it has none"
        );
    }

    #[test]
    fn a_retry_after_of_any_size_schedules_without_overflow() {
        let t0 = Instant::now();
        let mut h = health();
        h.on_outcome(gave_up(BackendState::Failing, Some(Duration::MAX)), t0);
        h.on_backlog(t0);
        let wake = h.next_wake().expect("scheduled");
        assert!(wake.at > t0);
        let (_, delay) = h.on_replay_failed(Some(Duration::MAX), false, t0);
        assert!(delay >= 16 * SEC);
        assert!(deadline_after(t0, Duration::MAX) > t0);
    }
}
