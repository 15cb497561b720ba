//! End to end through a flapping backend: payloads exported while a real HTTP receiver on
//! 127.0.0.1 goes up, down, 503, 429 with Retry-After, hang, reset mid-request, slow, and
//! 400; afterwards everything the client accepted has arrived, oldest first, and only the
//! payloads the backend refused for good were dropped.
//!
//! # What is guaranteed, and asserted
//!
//! - **At least once.** Every payload `export` answered `Delivered` or `Spooled` reaches the
//!   receiver (is answered 2xx) at least once, once a flush with the receiver up reports
//!   `complete`.
//! - **Drops.** Only payloads exported while the receiver answered 400 (and no backlog
//!   existed, so they went to the network directly) are dropped, as
//!   `DropError::Permanent`, each counted once in `stats().dropped.permanent`.
//! - **Order.** Exports are made one after another from one task. A direct export happens
//!   only while no backlog exists, i.e. after every older spooled record was acknowledged,
//!   and the drain task reads the spool oldest first and acknowledges only a delivered
//!   prefix. So with `max_in_flight(1)` the receiver's order of *first acceptance* of keys
//!   is exactly export order (direct and spooled payloads alike). With up to `k` requests
//!   in flight (a sliding window over the spool), when a key is first accepted fewer than
//!   `k` keys exported before it are still missing: that bounded overtaking is what the
//!   pipelined variant asserts (see `outlast_tests::assert_arrival_order` for why it holds).
//! - **Exactly once, except after a timeout.** A key reaches the receiver twice only if an
//!   attempt the receiver accepted failed on the client's side, i.e. the answer was late
//!   (slow receiver, past the attempt timeout) or lost (connection dropped after the
//!   answer). The schedule below never takes the receiver down straight after an accepting
//!   mode (a non-accepting mode sits in between, long enough for answers in flight to
//!   arrive), and the attempt timeout (1 s) is far above what an answer from an up receiver
//!   takes, so duplicates can only come from a `Slow` phase. The test asserts that every
//!   duplicated key was accepted during a `Slow` phase, and counts the duplicates.

use std::time::Duration;

use outlast_client::testing::{Answer, Mode, TestReceiver};
use outlast_client::{Client, Delivery, DropReason};
use outlast_tests::{
    GENEROUS_FLUSH, INITIAL_BACKOFF, Ledger, MAX_BACKOFF, MAX_RETRY_AFTER, assert_arrival_order,
    bounded, http_exporter_with_timeout,
};

/// Attempt timeout of this test: a hanging receiver costs 1 s per attempt, and an up
/// receiver never times out even on a loaded machine (see the crate doc).
const FLAP_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// What a phase's exports must have answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Every export `Delivered` (receiver up, no backlog).
    Delivered,
    /// Every export `Spooled` (receiver failing retryably, or a backlog exists).
    Spooled,
    /// Delivered or spooled, not dropped.
    Accepted,
    /// Every export dropped as permanent (receiver answering 400, no backlog).
    Permanent,
}

struct Flapper {
    receiver: TestReceiver,
    client: Client,
    ledger: Ledger,
    next: usize,
    /// Receiver's request count when each phase began, with the phase's mode.
    phases: Vec<(u64, Mode)>,
}

impl Flapper {
    /// Switches the receiver to `mode`, exports `n` payloads expecting `expect`, then lets
    /// the drain task work against that mode for `linger`.
    async fn phase(&mut self, mode: Mode, n: usize, expect: Expect, linger: Duration) {
        self.receiver
            .set_mode(mode.clone())
            .await
            .expect("receiver switches mode");
        self.phases
            .push((self.receiver.request_count(), mode.clone()));
        for _ in 0..n {
            let i = self.next;
            self.next += 1;
            let got = self.ledger.export(&self.client, i).await;
            let ok = match expect {
                Expect::Delivered => got == Ok(Delivery::Delivered),
                Expect::Spooled => got == Ok(Delivery::Spooled),
                Expect::Accepted => got.is_ok(),
                Expect::Permanent => got == Err(DropReason::Permanent),
            };
            assert!(
                ok,
                "export #{i} in mode {mode:?}: expected {expect:?}, got {got:?}"
            );
        }
        tokio::time::sleep(linger).await;
    }

    /// Switches to `Up`, flushes with a generous bound, and asserts the flush completed.
    async fn recover(&mut self) {
        self.receiver
            .set_mode(Mode::Up)
            .await
            .expect("receiver comes back up");
        self.phases.push((self.receiver.request_count(), Mode::Up));
        let report = self.client.force_flush(GENEROUS_FLUSH).await;
        assert!(
            report.complete,
            "flush with the receiver up did not complete: {report:?}"
        );
        assert_eq!(report.remaining_records, 0, "{report:?}");
    }

    /// The mode that produced an accepted request with this sequence number: the last
    /// accepting phase (`Up` or `Slow`) begun at or before it. Non-accepting phases answer
    /// nothing with 2xx, so a 2xx recorded in one is a straggler of the accepting phase
    /// before it.
    fn accepting_mode_at(&self, seq: u64) -> Option<&Mode> {
        self.phases
            .iter()
            .rev()
            .filter(|(start, _)| *start <= seq)
            .map(|(_, m)| m)
            .find(|m| matches!(m, Mode::Up | Mode::Slow(_)))
    }
}

async fn flapping_receiver(max_in_flight: usize, batch_size: usize) {
    let dir = tempfile::tempdir().expect("temporary spool directory");
    let receiver = TestReceiver::start().await.expect("receiver starts");
    let client = Client::builder()
        .spool_dir(dir.path())
        .attempt_timeout(FLAP_ATTEMPT_TIMEOUT)
        .immediate_retry_delay(Duration::from_millis(100))
        .initial_backoff(INITIAL_BACKOFF)
        .max_backoff(MAX_BACKOFF)
        .max_retry_after(MAX_RETRY_AFTER)
        .max_in_flight(max_in_flight)
        .batch_size(batch_size)
        .build(http_exporter_with_timeout(
            &receiver.url(),
            FLAP_ATTEMPT_TIMEOUT,
        ))
        .expect("valid client settings");
    let mut f = Flapper {
        receiver,
        client,
        ledger: Ledger::default(),
        next: 0,
        phases: Vec::new(),
    };
    let ms = Duration::from_millis;
    let retry_after = Some(Duration::from_secs(1));

    // First outage: a backlog builds up through every failing mode, then drains.
    f.phase(Mode::Up, 4, Expect::Delivered, ms(0)).await;
    f.phase(Mode::Status(503), 3, Expect::Spooled, ms(150))
        .await;
    f.phase(Mode::Down, 4, Expect::Spooled, ms(300)).await;
    f.phase(
        Mode::TooManyRequests { retry_after },
        3,
        Expect::Spooled,
        ms(300),
    )
    .await;
    f.phase(Mode::Hang, 3, Expect::Spooled, ms(1200)).await;
    f.phase(Mode::ResetMidRequest, 3, Expect::Spooled, ms(300))
        .await;
    f.phase(Mode::Slow(ms(50)), 3, Expect::Accepted, ms(500))
        .await;
    f.phase(Mode::Status(503), 2, Expect::Spooled, ms(200))
        .await;
    f.phase(Mode::Down, 2, Expect::Spooled, ms(200)).await;
    f.recover().await;
    assert!(
        !f.client.stats().backlog,
        "a complete flush leaves no backlog"
    );

    // No backlog: direct exports, then a permanent refusal of a few payloads.
    f.phase(Mode::Up, 3, Expect::Delivered, ms(0)).await;
    f.phase(Mode::Status(400), 3, Expect::Permanent, ms(0))
        .await;

    // Second outage, starting from the direct path in each failing mode.
    f.phase(
        Mode::TooManyRequests { retry_after },
        2,
        Expect::Spooled,
        ms(200),
    )
    .await;
    f.phase(Mode::Hang, 2, Expect::Spooled, ms(1200)).await;
    f.phase(Mode::ResetMidRequest, 2, Expect::Spooled, ms(300))
        .await;
    // Slower than the attempt timeout: the receiver accepts, the client gives up and
    // sends again later (the legitimate duplicate of at-least-once delivery).
    f.phase(Mode::Slow(ms(1500)), 2, Expect::Spooled, ms(1800))
        .await;
    f.phase(Mode::Status(503), 2, Expect::Spooled, ms(300))
        .await;
    f.phase(Mode::Down, 2, Expect::Spooled, ms(200)).await;
    f.recover().await;

    // Drops: only the 400s, each counted once.
    let stats = f.client.stats();
    assert!(
        f.ledger.other_drops.is_empty(),
        "{:?}",
        f.ledger.other_drops
    );
    assert_eq!(f.ledger.permanent.len(), 3);
    assert_eq!(stats.dropped.permanent, 3, "{stats:?}");
    assert_eq!(stats.dropped.total(), 3, "{stats:?}");
    let received = f.receiver.received();
    for k in &f.ledger.permanent {
        let answers: Vec<Answer> = received
            .iter()
            .filter(|r| r.key.as_deref() == Some(k.as_str()))
            .map(|r| r.answer)
            .collect();
        assert_eq!(
            answers,
            vec![Answer::Status(400)],
            "permanent key {k}: sent once, refused, never retried"
        );
    }

    // Everything else arrived, in order (see the crate doc for the window).
    assert_eq!(stats.exported, f.ledger.delivered.len() as u64, "{stats:?}");
    assert_eq!(stats.spooled, f.ledger.spooled.len() as u64, "{stats:?}");
    assert_eq!(stats.replayed, f.ledger.spooled.len() as u64, "{stats:?}");
    assert_eq!(stats.spool_records, 0, "{stats:?}");
    f.ledger.assert_counters_add_up(&stats);
    assert!(f.ledger.spooled.len() >= 30, "the outages spooled payloads");
    assert_arrival_order(&f.receiver.unique_keys(), &f.ledger.accepted, max_in_flight);

    // Duplicates: only of keys a slow receiver accepted.
    let slow_keys: std::collections::HashSet<String> = received
        .iter()
        .filter(|r| r.answer.is_accepted())
        .filter(|r| matches!(f.accepting_mode_at(r.seq), Some(Mode::Slow(_))))
        .filter_map(|r| r.key.clone())
        .collect();
    for (k, n) in f.receiver.duplicate_keys() {
        assert!(
            slow_keys.contains(&k),
            "key {k} accepted {n} times, never by a slow receiver: a re-send without a timeout"
        );
    }
    eprintln!(
        "flapping (in flight {max_in_flight}, batch {batch_size}): {} accepted by the client, \
         {} delivered directly, {} spooled, {} dropped as permanent, {} request(s) at the \
         receiver, {} duplicate(s) {:?}, {} replay failure(s)",
        f.ledger.accepted.len(),
        f.ledger.delivered.len(),
        f.ledger.spooled.len(),
        f.ledger.permanent.len(),
        f.receiver.request_count(),
        f.receiver.duplicates(),
        f.receiver.duplicate_keys(),
        stats.replay_failures,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_receiver_gets_everything_accepted_in_export_order_with_one_request_in_flight() {
    bounded(
        "the flapping run with one request in flight",
        flapping_receiver(1, 100),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_receiver_gets_everything_accepted_oldest_first_up_to_the_requests_in_flight() {
    bounded("the pipelined flapping run", flapping_receiver(4, 8)).await;
}
