//! End to end, the offline fast path: once the backend has been found down and a payload
//! spilled, further exports go straight to the spool without touching the network, and
//! the backlog is delivered oldest first when the backend returns.

use std::time::Duration;

use outlast_client::testing::{Mode, TestReceiver};
use outlast_client::{ClientBuilder, Delivery};
use outlast_tests::{
    CALM_ATTEMPT_TIMEOUT, GENEROUS_FLUSH, Ledger, assert_arrival_order, bounded, fast_builder,
    http_exporter_with_timeout,
};

/// Exports after the first spill, each expected to skip the network.
const FAST_PATH_EXPORTS: usize = 200;

/// Records per replay batch here.
const BATCH: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_first_spill_exports_are_spooled_without_any_request_or_connection() {
    bounded("the fast-path test", async {
        let dir = tempfile::tempdir().expect("temporary spool directory");
        // A receiver that accepts connections but fails every request retryably, so that
        // both connections and requests are visible to it.
        let receiver = TestReceiver::builder()
            .mode(Mode::Status(503))
            .start()
            .await
            .expect("receiver starts");
        // The drain task's first retry is 20 s away (no jitter), far beyond this test's
        // exports: any request the receiver sees meanwhile would come from `export`.
        let client = fast_builder(dir.path())
            .attempt_timeout(CALM_ATTEMPT_TIMEOUT)
            .initial_backoff(Duration::from_secs(20))
            .max_backoff(Duration::from_secs(40))
            .jitter(0.0)
            .batch_size(BATCH)
            .build(http_exporter_with_timeout(
                &receiver.url(),
                CALM_ATTEMPT_TIMEOUT,
            ))
            .expect("valid client settings");
        let mut ledger = Ledger::default();

        // The first export tries the network: one attempt, one quick retry, then the spool.
        assert_eq!(ledger.export(&client, 0).await, Ok(Delivery::Spooled));
        assert_eq!(receiver.request_count(), 2, "{:?}", receiver.received());
        let connections = receiver.connections_accepted();
        assert!(connections >= 1);
        let stats = client.stats();
        assert!(stats.backlog && !stats.online(), "{stats:?}");

        for i in 1..=FAST_PATH_EXPORTS {
            assert_eq!(ledger.export(&client, i).await, Ok(Delivery::Spooled));
        }
        assert_eq!(
            receiver.request_count(),
            2,
            "an export during the outage reached the backend"
        );
        assert_eq!(
            receiver.connections_accepted(),
            connections,
            "an export during the outage opened a connection"
        );
        let stats = client.stats();
        assert_eq!(stats.spooled, FAST_PATH_EXPORTS as u64 + 1, "{stats:?}");
        assert_eq!(
            stats.spool_records,
            FAST_PATH_EXPORTS as u64 + 1,
            "{stats:?}"
        );
        assert_eq!(stats.exported, 0, "{stats:?}");
        assert_eq!(stats.retried, 1, "only the first export retried: {stats:?}");

        // The backend returns; a flush resets the 20 s backoff and replays the backlog.
        receiver
            .set_mode(Mode::Up)
            .await
            .expect("receiver comes up");
        let report = client.force_flush(GENEROUS_FLUSH).await;
        assert!(report.complete, "{report:?}");
        assert_eq!(report.remaining_records, 0, "{report:?}");
        assert_eq!(report.delivered, FAST_PATH_EXPORTS as u64 + 1, "{report:?}");

        // Oldest first (up to the attempts under way at once); and exactly once: nothing timed out or was reset.
        assert_arrival_order(
            &receiver.unique_keys(),
            &ledger.accepted,
            ClientBuilder::DEFAULT_MAX_IN_FLIGHT,
        );
        assert_eq!(receiver.duplicates(), 0, "{:?}", receiver.duplicate_keys());
        assert_eq!(client.stats().dropped.total(), 0);
        ledger.assert_counters_add_up(&client.stats());

        // With the backlog gone, exports are direct again.
        assert_eq!(
            ledger.export(&client, FAST_PATH_EXPORTS + 1).await,
            Ok(Delivery::Delivered)
        );
    })
    .await;
}
