//! Many tasks exporting at once on a multi-threaded runtime while the backend flaps: every
//! payload is delivered at least once and accounted for exactly once.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{payload, spool_dir};
use outlast_client::testing::{MemoryExporter, Outcome};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_exports_during_a_flapping_outage_lose_nothing() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new().with_max_in_flight(4);
    let c = common::builder(dir.path())
        .immediate_retry_delay(Duration::from_millis(1))
        .initial_backoff(Duration::from_millis(5))
        .max_backoff(Duration::from_millis(20))
        .batch_size(16)
        .build(exporter.clone())
        .expect("valid");

    let flapper = {
        let e = exporter.clone();
        tokio::spawn(async move {
            for i in 0..40 {
                e.set_mode(if i % 2 == 0 {
                    Outcome::Fail
                } else {
                    Outcome::Accept
                });
                tokio::time::sleep(Duration::from_millis(7)).await;
            }
            e.set_mode(Outcome::Accept);
        })
    };
    let mut tasks = Vec::new();
    for t in 0..8 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..150 {
                let d = c
                    .export(payload(&format!("{t}-{i}")))
                    .await
                    .expect("never dropped: the spool has room");
                let _ = d;
                if i % 16 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("export task");
    }
    flapper.await.expect("flapper");
    exporter.set_mode(Outcome::Accept);
    let report = c.force_flush(Duration::from_secs(20)).await;
    assert!(report.complete, "{report:?}");

    let got: HashSet<String> = common::texts(&exporter).into_iter().collect();
    for t in 0..8 {
        for i in 0..150 {
            assert!(got.contains(&format!("{t}-{i}")), "{t}-{i} never delivered");
        }
    }
    let s = c.stats();
    assert_eq!(s.exported + s.spooled, 1200, "{s:?}");
    assert_eq!(s.replayed, s.spooled, "{s:?}");
    assert_eq!(s.dropped.total(), 0);
    assert_eq!(s.spool_records, 0);
    let report = c.shutdown(Duration::from_secs(5)).await.expect("shutdown");
    assert!(report.complete, "{report:?}");
}
