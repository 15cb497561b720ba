//! The drain task's coalesced replay under paused Tokio time, with the memory exporter:
//! merged calls within the caps, a poison record narrowed down to itself, a retryable
//! failure of a merged call, and a backlog that does not merge.

mod common;

use std::time::Duration;

use common::{payload, spool_dir, texts};
use outlast_client::testing::{MemoryExporter, Outcome};
use outlast_client::{Client, Coalescing, Delivery, DropReason};

/// Makes the backend fail and spools `n` payloads named `r00`, `r01`...
async fn spool_while_down(c: &Client, exporter: &MemoryExporter, n: usize) -> Vec<String> {
    exporter.set_mode(Outcome::Fail);
    let names: Vec<String> = (0..n).map(|i| format!("r{i:02}")).collect();
    for name in &names {
        assert_eq!(
            c.export(payload(name)).await.expect("spooled"),
            Delivery::Spooled
        );
    }
    exporter.set_mode(Outcome::Accept);
    names
}

fn coalescing_client(dir: &std::path::Path, exporter: &MemoryExporter, merge: usize) -> Client {
    common::builder(dir)
        .coalesce_max_records(merge)
        .build(exporter.clone())
        .expect("valid")
}

#[tokio::test(start_paused = true)]
async fn a_backlog_goes_in_merged_calls_within_the_caps_oldest_first() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new().with_coalescing(Coalescing::UNLIMITED);
    let c = coalescing_client(dir.path(), &exporter, 4);
    let names = spool_while_down(&c, &exporter, 11).await;
    let before = exporter.call_sizes().len();

    let report = c.force_flush(Duration::from_secs(60)).await;
    assert!(report.complete, "{report:?}");
    assert_eq!(texts(&exporter), names, "each record once, in order");
    // After the failed direct attempts: one record alone (offline, no probe), then
    // merged calls of at most 4.
    assert_eq!(exporter.call_sizes()[before..], [1, 4, 4, 2]);
    assert_eq!(c.stats().replayed, 11);
    assert_eq!(c.stats().spool_records, 0);
}

#[tokio::test(start_paused = true)]
async fn the_exporter_caps_its_merged_calls_too() {
    let dir = spool_dir();
    // Each payload is 3 bytes: at most two fit in 7 bytes.
    let exporter = MemoryExporter::new().with_coalescing(Coalescing::new(usize::MAX, 7));
    let c = coalescing_client(dir.path(), &exporter, 25);
    let names = spool_while_down(&c, &exporter, 5).await;
    let before = exporter.call_sizes().len();
    assert!(c.force_flush(Duration::from_secs(60)).await.complete);
    assert_eq!(texts(&exporter), names);
    assert_eq!(exporter.call_sizes()[before..], [1, 2, 2]);
}

#[tokio::test(start_paused = true)]
async fn a_poison_record_in_a_merged_call_is_the_only_one_dropped() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new().with_coalescing(Coalescing::UNLIMITED);
    let c = coalescing_client(dir.path(), &exporter, 5);
    let names = spool_while_down(&c, &exporter, 11).await;
    exporter.reject_if(|p| p.bytes().as_ref() == b"r03");
    let before = exporter.call_sizes().len();

    let report = c.force_flush(Duration::from_secs(60)).await;
    assert!(report.complete, "{report:?}");
    let want: Vec<String> = names.into_iter().filter(|n| n != "r03").collect();
    assert_eq!(
        texts(&exporter),
        want,
        "the neighbours are delivered once, in order"
    );
    // r00 alone; r01..r05 merged and rejected; then each of them alone; then the rest.
    assert_eq!(exporter.call_sizes()[before..], [1, 5, 1, 1, 1, 1, 1, 5]);
    let stats = c.stats();
    assert_eq!(stats.dropped.get(DropReason::Permanent), 1);
    assert_eq!(stats.replayed, 10);
    assert_eq!(stats.spool_records, 0);
}

#[tokio::test(start_paused = true)]
async fn a_merged_call_that_fails_is_sent_again_after_the_backoff_and_nothing_is_lost() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new().with_coalescing(Coalescing::UNLIMITED);
    let c = coalescing_client(dir.path(), &exporter, 8);
    let names = spool_while_down(&c, &exporter, 6).await;
    // The single probe record goes through; the merged call of the other five fails.
    exporter.push_outcomes([Outcome::Accept, Outcome::Fail]);
    let before = exporter.call_sizes().len();

    let report = c.force_flush(Duration::from_secs(60)).await;
    assert!(report.complete, "{report:?}");
    assert_eq!(texts(&exporter), names, "nothing lost, nothing twice");
    // After the failure the client is offline again: the oldest record alone first (this
    // exporter has no probe), then the rest merged.
    assert_eq!(exporter.call_sizes()[before..], [1, 5, 1, 4]);
    assert_eq!(c.stats().dropped.total(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_exporter_that_does_not_merge_gets_one_call_per_record() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    let c = coalescing_client(dir.path(), &exporter, 25);
    let names = spool_while_down(&c, &exporter, 6).await;
    let before = exporter.call_sizes().len();
    assert!(c.force_flush(Duration::from_secs(60)).await.complete);
    assert_eq!(texts(&exporter), names);
    assert!(exporter.call_sizes()[before..].iter().all(|n| *n == 1));
}
