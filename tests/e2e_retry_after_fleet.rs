//! End to end, a fleet throttled with one `Retry-After`: clients told the same delay come back
//! no sooner than it, and spread above it (by up to a tenth with the default jitter) rather
//! than at one instant.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use outlast_client::testing::{Answer, Mode, TestReceiver};
use outlast_client::{Client, Delivery};
use outlast_tests::{
    CALM_ATTEMPT_TIMEOUT, bounded, fast_builder, http_exporter_with_timeout, key, keyed_payload,
};

/// The clients of the fleet, each with its own spool and drain task.
const CLIENTS: usize = 10;

/// What the throttling receiver asks every client to wait.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Scheduling slack allowed above the spread on a loaded two-core machine.
const SLACK: Duration = Duration::from_millis(1500);

/// Least spread of the clients' waits expected: ten waits drawn uniformly over the 200 ms
/// above the `Retry-After` all fall within 40 ms of each other with a probability of about
/// 4 × 10⁻⁶; waits of exactly the `Retry-After` differ only by scheduling noise.
const LEAST_SPREAD: Duration = Duration::from_millis(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_told_the_same_retry_after_comes_back_spread_above_it_and_never_before() {
    bounded("the fleet Retry-After test", async {
        let receiver = TestReceiver::builder()
            .mode(Mode::TooManyRequests {
                retry_after: Some(RETRY_AFTER),
            })
            .start()
            .await
            .expect("receiver starts");
        let dirs: Vec<tempfile::TempDir> = (0..CLIENTS)
            .map(|_| tempfile::tempdir().expect("temporary spool directory"))
            .collect();
        // The default jitter (0.5); backoff delays far below the Retry-After, so the
        // Retry-After is the floor of every client's next attempt.
        let clients: Vec<Client> = dirs
            .iter()
            .map(|d| {
                fast_builder(d.path())
                    .attempt_timeout(CALM_ATTEMPT_TIMEOUT)
                    .max_retry_after(Duration::from_secs(10))
                    .build(http_exporter_with_timeout(
                        &receiver.url(),
                        CALM_ATTEMPT_TIMEOUT,
                    ))
                    .expect("valid client settings")
            })
            .collect();
        // Each client's first try is answered 429 with Retry-After: 2, longer than the quick
        // retry: the payload is spooled at once.
        for (i, c) in clients.iter().enumerate() {
            let outcome = c.export(keyed_payload(i)).await;
            assert!(matches!(outcome, Ok(Delivery::Spooled)), "{outcome:?}");
        }
        receiver.set_mode(Mode::Up).await.expect("receiver up");

        // Wait for every client's second attempt (no flush: a flush would try at once).
        let deadline = Instant::now() + RETRY_AFTER * 2 + SLACK * 2;
        let waits = loop {
            let mut by_key: BTreeMap<String, Vec<(Instant, Answer)>> = BTreeMap::new();
            for r in receiver.received() {
                if let Some(k) = r.key.clone() {
                    by_key.entry(k).or_default().push((r.received_at, r.answer));
                }
            }
            let waits: Vec<Duration> = (0..CLIENTS)
                .filter_map(|i| {
                    let arrivals = by_key.get(&key(i))?;
                    let (first, answer) = arrivals.first()?;
                    assert!(!answer.is_accepted(), "{arrivals:?}");
                    let (second, _) = arrivals.get(1)?;
                    Some(*second - *first)
                })
                .collect();
            if waits.len() == CLIENTS {
                break waits;
            }
            assert!(
                Instant::now() < deadline,
                "not every client came back: {by_key:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        for w in &waits {
            assert!(
                *w >= RETRY_AFTER,
                "came back before the Retry-After: {waits:?}"
            );
            assert!(
                *w <= RETRY_AFTER + RETRY_AFTER / 10 + SLACK,
                "waited far past the spread above the Retry-After: {waits:?}"
            );
        }
        let (shortest, longest) = (
            waits.iter().min().copied().unwrap_or_default(),
            waits.iter().max().copied().unwrap_or_default(),
        );
        assert!(
            longest - shortest >= LEAST_SPREAD,
            "the fleet came back together: waits {waits:?}"
        );
        for c in &clients {
            let report = c.force_flush(Duration::from_secs(5)).await;
            assert!(report.complete, "{report:?}");
            let closed = c.shutdown(Duration::from_secs(5)).await.expect("shutdown");
            assert!(closed.complete, "{closed:?}");
        }
        let mut got = receiver.unique_keys();
        got.sort();
        let mut want: Vec<String> = (0..CLIENTS).map(key).collect();
        want.sort();
        assert_eq!(got, want, "every payload delivered");
    })
    .await;
}
