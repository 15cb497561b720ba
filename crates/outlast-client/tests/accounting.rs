//! Every accepted payload is counted once: delivered (directly or replayed), dropped for one
//! reason, or still in the spool, even when the spool refuses an acknowledgement.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{payload, spool_dir, texts};
use outlast_client::ClientStats;
use outlast_client::testing::{MemoryExporter, Outcome};
use outlast_spool::fault::{FaultFs, WriteFault};

/// Payloads accounted for: delivered, dropped, or waiting in the spool.
fn accounted(s: &ClientStats) -> u64 {
    s.exported + s.replayed + s.dropped.total() + s.spool_records
}

#[tokio::test(start_paused = true)]
async fn records_delivered_whose_acknowledgement_failed_are_counted_as_replayed_once() {
    let dir = spool_dir();
    let fs = FaultFs::new();
    let exporter = MemoryExporter::new();
    let c = common::builder(dir.path())
        .build_with_spool_fs(exporter.clone(), Arc::new(fs.clone()))
        .expect("valid");
    exporter.set_mode(Outcome::Fail);
    for i in 0..5 {
        assert!(
            c.export(payload(&format!("{i}")))
                .await
                .expect("spooled")
                .is_spooled()
        );
    }
    assert_eq!(accounted(&c.stats()), 5);

    // The next write is the cursor's, when the replayed records are acknowledged: it fails.
    fs.fail_write(WriteFault::Fail(std::io::ErrorKind::Other));
    exporter.set_mode(Outcome::Accept);
    let report = c.force_flush(Duration::from_secs(30)).await;
    assert!(
        report.complete,
        "the end-of-flush sync wrote the cursor: {report:?}"
    );
    assert_eq!(report.ack_failures, 1);
    assert_eq!(report.delivered, 5);
    assert_eq!(
        texts(&exporter),
        ["0", "1", "2", "3", "4"],
        "each sent once"
    );

    let s = c.stats();
    assert_eq!(s.ack_failures, 1);
    assert_eq!(s.replayed, 5, "{s:?}");
    assert_eq!(s.spool_records, 0);
    assert_eq!(accounted(&s), 5, "{s:?}");

    // Nothing is delivered or counted a second time later.
    tokio::time::sleep(Duration::from_secs(120)).await;
    common::settle().await;
    let s = c.stats();
    assert_eq!(s.replayed, 5);
    assert_eq!(exporter.received_bytes().len(), 5);
    let _ = c.shutdown(Duration::from_secs(1)).await.expect("shut down");
}
