//! End to end, what a restart re-sends when one record stalls mid-replay.
//!
//! The drain task replays through a sliding window that never reaches more than
//! `batch_size` records past the oldest record not yet delivered. While one record's attempt
//! is slow, the window fills and stops; a process that ends then re-sends at most that
//! window after the restart (crate doc of outlast-client, "Durability").

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use outlast_client::http::HttpExporter;
use outlast_client::testing::Mode;
use outlast_client::{Delivery, ExportError, Exporter, Payload, Reachability};
use outlast_tests::{
    CALM_ATTEMPT_TIMEOUT, GENEROUS_FLUSH, Ledger, TEST_BOUND, bounded, fast_builder,
    http_exporter_with_timeout, key,
};

/// Records per replay batch.
const BATCH: usize = 10;

/// An HTTP exporter that holds back the first attempt of one key for a while (well within
/// the attempt timeout), as a slow request on a busy connection would be.
#[derive(Debug, Clone)]
struct StallOnce {
    inner: HttpExporter,
    key: String,
    stall: Duration,
    stalled: Arc<AtomicBool>,
}

impl Exporter for StallOnce {
    async fn export(&self, payload: &Payload) -> Result<(), ExportError> {
        if payload.meta().key.as_deref() == Some(self.key.as_str())
            && !self.stalled.swap(true, Ordering::SeqCst)
        {
            tokio::time::sleep(self.stall).await;
        }
        self.inner.export(payload).await
    }

    async fn probe(&self) -> Reachability {
        self.inner.probe().await
    }

    fn max_in_flight(&self) -> usize {
        Exporter::max_in_flight(&self.inner)
    }

    // A wrapper delivers to the same backend as the exporter it wraps: the restarted process,
    // built on the bare exporter, takes this lane as its own.
    fn identity(&self) -> Option<String> {
        self.inner.identity()
    }
}

#[test]
fn a_restart_after_a_stalled_record_re_sends_at_most_one_batch() {
    let dir = tempfile::tempdir().expect("temporary spool directory");
    let server = outlast_tests::runtime();
    let receiver = outlast_tests::receiver_down(&server);
    let url = receiver.url();
    let mut ledger = Ledger::default();

    // First process: spools 300, then replays with key #5 stalled for 2 s, and ends
    // (client and runtime dropped) while the stall holds the window.
    let first = outlast_tests::runtime();
    first.block_on(bounded("the first process", async {
        let exporter = StallOnce {
            inner: http_exporter_with_timeout(&url, CALM_ATTEMPT_TIMEOUT),
            key: key(5),
            stall: Duration::from_secs(2),
            stalled: Arc::default(),
        };
        let client = fast_builder(dir.path())
            .attempt_timeout(CALM_ATTEMPT_TIMEOUT)
            .batch_size(BATCH)
            .build(exporter)
            .expect("valid client settings");
        for i in 0..300 {
            assert_eq!(ledger.export(&client, i).await, Ok(Delivery::Spooled));
        }
        receiver
            .set_mode(Mode::Up)
            .await
            .expect("receiver comes up");
        let flush = client.force_flush(TEST_BOUND);
        // Keys 0..=4, then the window of BATCH records from key #5 on, less key #5 itself.
        let window_full = 5 + BATCH - 1;
        let delivered = receiver.wait_for_unique_keys(window_full, TEST_BOUND);
        tokio::select! {
            report = flush => panic!("the replay finished during the stall: {report:?}"),
            reached = delivered => assert!(reached, "the replay reached the window's end"),
        }
        // Well within the 2 s stall: the window stays at its bound.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            receiver.unique_keys().len(),
            window_full,
            "no attempt starts more than {BATCH} records past the stalled one"
        );
        assert!(
            !receiver.unique_keys().contains(&key(5)),
            "key #5 is still stalled"
        );
        drop(client);
    }));
    first.shutdown_timeout(Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));

    // Second process: delivers the rest.
    let second = outlast_tests::runtime();
    second.block_on(bounded("the second process", async {
        let client = fast_builder(dir.path())
            .attempt_timeout(CALM_ATTEMPT_TIMEOUT)
            .batch_size(BATCH)
            .build(http_exporter_with_timeout(&url, CALM_ATTEMPT_TIMEOUT))
            .expect("valid client settings");
        let report = client.force_flush(GENEROUS_FLUSH).await;
        assert!(report.complete, "{report:?}");
    }));
    second.shutdown_timeout(Duration::from_secs(5));

    assert_eq!(receiver.unique_keys().len(), 300, "nothing lost");
    assert!(
        receiver.duplicates() <= BATCH as u64,
        "{} record(s) delivered twice after the restart (documented: at most the window of \
         {BATCH})",
        receiver.duplicates()
    );
    drop(receiver);
    server.shutdown_timeout(Duration::from_secs(5));
}
