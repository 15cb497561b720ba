//! End to end, `force_flush` against a hanging backend: it returns within its timeout, says
//! the flush is incomplete and how much is left, and what is left is delivered later.

use std::time::{Duration, Instant};

use outlast_client::testing::{Mode, TestReceiver};
use outlast_client::{ClientBuilder, Delivery};
use outlast_tests::{
    GENEROUS_FLUSH, Ledger, assert_arrival_order, bounded, fast_builder, http_exporter_with_timeout,
};

/// The flush bound under test.
const FLUSH_TIMEOUT: Duration = Duration::from_millis(500);

/// Slack allowed past the flush bound for scheduling on a loaded two-core machine; far
/// below the attempt timeout, so a flush that waited for the hanging attempt would fail.
const SLACK: Duration = Duration::from_millis(1500);

/// Each attempt may take this long: much longer than the flush, so only the flush's own
/// deadline can end it in time.
const LONG_ATTEMPT: Duration = Duration::from_secs(10);

const BACKLOG: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_flush_against_a_hanging_receiver_returns_in_time_reporting_the_backlog_left() {
    bounded("the hanging-flush test", async {
        let dir = tempfile::tempdir().expect("temporary spool directory");
        let receiver = TestReceiver::builder()
            .mode(Mode::Down)
            .start()
            .await
            .expect("receiver starts");
        let client = fast_builder(dir.path())
            .attempt_timeout(LONG_ATTEMPT)
            .batch_size(5)
            .build(http_exporter_with_timeout(&receiver.url(), LONG_ATTEMPT))
            .expect("valid client settings");
        let mut ledger = Ledger::default();
        // Connections are refused at once: the backlog builds quickly.
        for i in 0..BACKLOG {
            assert_eq!(ledger.export(&client, i).await, Ok(Delivery::Spooled));
        }

        receiver.set_mode(Mode::Hang).await.expect("receiver hangs");
        let started = Instant::now();
        let report = client.force_flush(FLUSH_TIMEOUT).await;
        let took = started.elapsed();
        assert!(
            took <= FLUSH_TIMEOUT + SLACK,
            "force_flush({FLUSH_TIMEOUT:?}) took {took:?} against a hanging receiver"
        );
        assert!(!report.complete, "{report:?}");
        assert_eq!(report.remaining_records, BACKLOG as u64, "{report:?}");
        assert!(report.remaining_bytes > 0, "{report:?}");
        assert_eq!(report.delivered, 0, "{report:?}");
        assert_eq!(report.dropped, 0, "{report:?}");
        assert!(report.elapsed <= FLUSH_TIMEOUT + SLACK, "{report:?}");
        // The flush really was up against a hanging request, not idle.
        assert!(
            receiver.wait_for_requests(1, Duration::from_secs(5)).await,
            "the drain task sent the oldest record to the hanging receiver"
        );
        assert_eq!(receiver.accepted_count(), 0);

        // Down ends the hanging connection (the attempt fails at once); up again, a
        // generous flush delivers everything, exactly once (a hung request is not accepted).
        receiver.set_mode(Mode::Down).await.expect("receiver down");
        receiver.set_mode(Mode::Up).await.expect("receiver up");
        let report = client.force_flush(GENEROUS_FLUSH).await;
        assert!(report.complete, "{report:?}");
        assert_eq!(report.remaining_records, 0, "{report:?}");
        ledger.assert_counters_add_up(&client.stats());
        assert_arrival_order(
            &receiver.unique_keys(),
            &ledger.accepted,
            ClientBuilder::DEFAULT_MAX_IN_FLIGHT,
        );
        assert_eq!(receiver.duplicates(), 0, "{:?}", receiver.duplicate_keys());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_flush_during_a_hanging_direct_export_returns_in_time_as_incomplete() {
    bounded("the hanging direct export test", async {
        let dir = tempfile::tempdir().expect("temporary spool directory");
        let receiver = TestReceiver::builder()
            .mode(Mode::Hang)
            .start()
            .await
            .expect("receiver starts");
        let client = fast_builder(dir.path())
            .attempt_timeout(LONG_ATTEMPT)
            .build(http_exporter_with_timeout(&receiver.url(), LONG_ATTEMPT))
            .expect("valid client settings");

        // A direct export (no backlog) hangs in its first attempt.
        let exporting = {
            let client = client.clone();
            tokio::spawn(async move {
                let mut ledger = Ledger::default();
                let got = ledger.export(&client, 0).await;
                (got, ledger)
            })
        };
        assert!(
            receiver.wait_for_requests(1, Duration::from_secs(10)).await,
            "the direct export reached the receiver"
        );

        let started = Instant::now();
        let report = client.force_flush(FLUSH_TIMEOUT).await;
        let took = started.elapsed();
        assert!(
            took <= FLUSH_TIMEOUT + SLACK,
            "force_flush({FLUSH_TIMEOUT:?}) took {took:?} during a hanging export"
        );
        assert!(
            !report.complete,
            "an export under way is not flushed: {report:?}"
        );
        assert_eq!(
            report.remaining_records, 0,
            "nothing spooled yet: {report:?}"
        );

        // Release the export: the receiver goes down (the hanging attempt fails), the
        // quick retry is refused, and the payload is spooled; then delivered once up.
        receiver.set_mode(Mode::Down).await.expect("receiver down");
        let (got, ledger) = exporting.await.expect("export task");
        assert_eq!(got, Ok(Delivery::Spooled));
        receiver.set_mode(Mode::Up).await.expect("receiver up");
        let report = client.force_flush(GENEROUS_FLUSH).await;
        assert!(report.complete, "{report:?}");
        assert_eq!(receiver.unique_keys(), ledger.accepted);
    })
    .await;
}
