//! The export path under paused Tokio time: direct delivery, the one quick retry, the spill,
//! the offline fast path, permanent failures, timeouts and oversized payloads.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{about, client, payload, spool_dir};
use outlast_client::testing::{MemoryExporter, Outcome};
use outlast_client::{Delivery, DropError, DropReason};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn export_delivers_directly_when_the_backend_is_up() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    let c = client(dir.path(), &exporter);
    let start = Instant::now();
    assert_eq!(
        c.export(payload("a")).await.expect("delivered"),
        Delivery::Delivered
    );
    assert_eq!(start.elapsed(), Duration::ZERO);
    let s = c.stats();
    assert_eq!((s.exported, s.retried, s.spooled), (1, 0, 0));
    assert!(s.online() && !s.backlog && s.spool_available());
    assert_eq!(common::texts(&exporter), ["a"]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_attempt_is_retried_once_after_one_second() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    exporter.push_outcomes([Outcome::Fail]);
    let c = client(dir.path(), &exporter);
    let start = Instant::now();
    let d = c.export(payload("a")).await.expect("delivered on retry");
    assert_eq!(d, Delivery::Delivered);
    assert!(
        about(start.elapsed(), Duration::from_secs(1)),
        "{:?}",
        start.elapsed()
    );
    let times = exporter.attempt_times();
    assert_eq!(times.len(), 2);
    assert!(about(times[1] - times[0], Duration::from_secs(1)));
    assert_eq!(c.stats().retried, 1);
    assert_eq!(c.stats().spooled, 0);
}

#[tokio::test(start_paused = true)]
async fn a_payload_is_spooled_when_the_retry_fails_too() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    exporter.set_mode(Outcome::Fail);
    let c = client(dir.path(), &exporter);
    let start = Instant::now();
    let d = c.export(payload("a")).await.expect("spooled");
    assert_eq!(d, Delivery::Spooled);
    assert!(about(start.elapsed(), Duration::from_secs(1)));
    assert_eq!(exporter.attempts(), 2);
    let s = c.stats();
    assert_eq!((s.exported, s.retried, s.spooled), (0, 1, 1));
    assert!(s.backlog && !s.online());
    assert_eq!(s.spool_records, 1);
    assert!(exporter.received().is_empty());
}

#[tokio::test(start_paused = true)]
async fn while_offline_exports_go_straight_to_the_spool_without_touching_the_network() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    exporter.set_mode(Outcome::Fail);
    let c = client(dir.path(), &exporter);
    assert!(
        c.export(payload("first"))
            .await
            .expect("spooled")
            .is_spooled()
    );
    let attempts = exporter.attempts();

    let start = Instant::now();
    for i in 0..200 {
        let d = c.export(payload(&format!("p{i}"))).await.expect("spooled");
        assert_eq!(d, Delivery::Spooled);
    }
    // No virtual time passed and the exporter was not called: no retry delay, no timeout.
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(exporter.attempts(), attempts);
    assert_eq!(c.stats().spooled, 201);
    assert_eq!(c.stats().spool_records, 201);
}

#[tokio::test(start_paused = true)]
async fn a_permanent_failure_is_neither_retried_nor_spooled_and_hands_the_payload_back() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    exporter.set_mode(Outcome::Reject);
    let c = client(dir.path(), &exporter);
    let err = c.export(payload("bad")).await.expect_err("rejected");
    assert!(err.is_permanent());
    assert_eq!(err.reason(), DropReason::Permanent);
    assert_eq!(err.payload().bytes().as_ref(), b"bad");
    assert_eq!(exporter.attempts(), 1);
    let s = c.stats();
    assert_eq!(s.dropped.permanent, 1);
    assert_eq!(s.spooled, 0);
    assert!(!s.backlog);
}

#[tokio::test(start_paused = true)]
async fn each_attempt_is_bounded_by_the_attempt_timeout() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    exporter.set_mode(Outcome::Hang);
    let c = common::builder(dir.path())
        .attempt_timeout(Duration::from_secs(3))
        .build(exporter.clone())
        .expect("valid");
    let start = Instant::now();
    let d = c.export(payload("a")).await.expect("spooled");
    assert_eq!(d, Delivery::Spooled);
    // Two attempts of 3 s each and the 1 s pause between them.
    assert!(
        about(start.elapsed(), Duration::from_secs(7)),
        "{:?}",
        start.elapsed()
    );
}

/// Takes 5 s per export and declares `declared` as the bound of its own exports.
#[derive(Debug)]
struct SelfBounded {
    declared: Duration,
}

impl outlast_client::Exporter for SelfBounded {
    async fn export(
        &self,
        _payload: &outlast_client::Payload,
    ) -> Result<(), outlast_client::ExportError> {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok(())
    }

    fn export_timeout(&self) -> Option<Duration> {
        Some(self.declared)
    }
}

/// Exports one payload through `SelfBounded { declared }` with a 3 s attempt timeout: what
/// `export` answered and how long it took.
async fn export_self_bounded(declared: Duration) -> (Delivery, Duration) {
    let dir = spool_dir();
    let c = common::builder(dir.path())
        .attempt_timeout(Duration::from_secs(3))
        .build(SelfBounded { declared })
        .expect("valid");
    let start = Instant::now();
    let delivery = c.export(payload("a")).await.expect("not dropped");
    (delivery, start.elapsed())
}

#[tokio::test(start_paused = true)]
async fn an_exporter_that_breaks_its_declared_bound_is_cut_off_by_the_clients_timer_and_grace() {
    // The exporter declares 2 s and takes 5 s: the client's 3 s timer, plus its grace for an
    // exporter that bounds its own calls, cuts each attempt.
    let (delivery, took) = export_self_bounded(Duration::from_secs(2)).await;
    assert_eq!(delivery, Delivery::Spooled);
    // Two attempts cut at 3.1 s each and the 1 s pause between them.
    assert!(about(took, Duration::from_millis(7200)), "{took:?}");
}

#[tokio::test(start_paused = true)]
async fn an_exporter_bound_longer_than_the_attempt_timeout_is_still_cut_off_by_the_client() {
    let (delivery, took) = export_self_bounded(Duration::from_secs(4)).await;
    assert_eq!(delivery, Delivery::Spooled);
    // Two attempts cut at 3 s each and the 1 s pause between them.
    assert!(about(took, Duration::from_secs(7)), "{took:?}");
}

#[tokio::test(start_paused = true)]
async fn a_long_retry_after_spills_at_once_instead_of_making_the_caller_wait() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    exporter.push_outcomes([Outcome::Throttle(Duration::from_secs(30))]);
    let c = client(dir.path(), &exporter);
    let start = Instant::now();
    assert_eq!(
        c.export(payload("a")).await.expect("spooled"),
        Delivery::Spooled
    );
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(exporter.attempts(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_oversized_payload_is_refused_up_front_with_the_payload_back() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    let c = common::builder(dir.path())
        .max_record_bytes(4096)
        .segment_bytes(64 * 1024)
        .build(exporter.clone())
        .expect("valid");
    let big = outlast_client::Payload::new(vec![7u8; 5000]);
    match c.export(big).await {
        Err(DropError::TooLarge {
            payload, size, max, ..
        }) => {
            assert_eq!(payload.len(), 5000);
            assert_eq!((size, max), (5000, 4096));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(exporter.attempts(), 0);
    assert_eq!(c.stats().dropped.too_large, 1);
}

#[tokio::test(start_paused = true)]
async fn a_full_spool_drops_the_newest_payload_and_says_so() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    exporter.set_mode(Outcome::Fail);
    let c = common::builder(dir.path())
        .max_record_bytes(4096)
        .segment_bytes(16 * 1024)
        .spool_max_bytes(32 * 1024)
        .build(exporter.clone())
        .expect("valid");
    let mut full = None;
    for i in 0..100 {
        match c
            .export(outlast_client::Payload::new(common::incompressible(
                i as u8, 2000,
            )))
            .await
        {
            Ok(d) => assert_eq!(d, Delivery::Spooled),
            Err(e) => {
                full = Some(e);
                break;
            }
        }
    }
    let err = full.expect("the spool fills up");
    assert_eq!(err.reason(), DropReason::SpoolFull);
    assert!(err.is_retryable_later());
    assert_eq!(err.into_payload().len(), 2000);
    assert_eq!(c.stats().dropped.spool_full, 1);
}

#[tokio::test(start_paused = true)]
async fn a_key_too_large_for_the_spool_is_refused_even_with_the_backend_up() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    let c = client(dir.path(), &exporter);
    // Delivered directly it might pass; spooled it could not: refused either way, so what
    // is accepted does not depend on the backend's state.
    let err = c
        .export(payload("body").with_key("k".repeat(70 * 1024)))
        .await
        .expect_err("refused");
    assert!(matches!(err, DropError::KeyTooLarge { .. }), "{err:?}");
    assert_eq!(exporter.received().len(), 0, "never sent");
    assert_eq!(c.stats().dropped.too_large, 1);
    // A key just under the limit goes through, and would spool.
    let fits = "k".repeat(60 * 1024);
    assert_eq!(
        c.export(payload("body").with_key(fits))
            .await
            .expect("delivered"),
        Delivery::Delivered
    );
    assert_eq!(exporter.received().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_key_too_large_for_the_spool_is_refused_with_the_payload_and_counted() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    exporter.set_mode(Outcome::Fail);
    let c = client(dir.path(), &exporter);
    // In an outage the payload must go to the spool, whose record header holds at most 64 KiB.
    let key = "k".repeat(70 * 1024);
    let big = payload("body").with_key(key.clone());
    match c.export(big).await {
        Err(e @ DropError::KeyTooLarge { .. }) => {
            assert_eq!(e.reason(), DropReason::TooLarge);
            assert!(e.to_string().contains("key and content type"), "{e}");
            assert_eq!(e.payload().meta().key.as_deref(), Some(key.as_str()));
        }
        other => panic!("expected KeyTooLarge, got {other:?}"),
    }
    let s = c.stats();
    assert_eq!(s.dropped.too_large, 1);
    assert_eq!(s.spooled, 0);
    assert_eq!(
        s.spool_records, 0,
        "nothing half-written is left to vanish later"
    );
    // An ordinary payload still spools after it.
    assert!(
        c.export(payload("small"))
            .await
            .expect("spooled")
            .is_spooled()
    );
}

/// Declares that it bounds its exports within 1 s, and hangs on its first `hangs` calls
/// (then accepts).
#[derive(Debug, Clone)]
struct HangsDespiteItsBound {
    hangs: Arc<AtomicU64>,
    delivered: Arc<AtomicU64>,
}

impl outlast_client::Exporter for HangsDespiteItsBound {
    async fn export(
        &self,
        _payload: &outlast_client::Payload,
    ) -> Result<(), outlast_client::ExportError> {
        let hang = self
            .hangs
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if hang {
            std::future::pending::<()>().await;
        }
        self.delivered.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn export_timeout(&self) -> Option<Duration> {
        Some(Duration::from_secs(1))
    }
}

#[tokio::test(start_paused = true)]
async fn an_exporter_that_declares_a_bound_and_hangs_hangs_neither_export_nor_the_replay() {
    let dir = spool_dir();
    let exporter = HangsDespiteItsBound {
        hangs: Arc::new(AtomicU64::new(3)),
        delivered: Arc::new(AtomicU64::new(0)),
    };
    let c = common::builder(dir.path())
        .attempt_timeout(Duration::from_secs(2))
        .build(exporter.clone())
        .expect("valid");
    let start = Instant::now();
    let delivery = tokio::time::timeout(Duration::from_secs(60), c.export(payload("a")))
        .await
        .expect("export answers although the exporter hangs");
    assert_eq!(delivery.expect("spooled"), Delivery::Spooled);
    // Two attempts of 2 s plus the grace, and the 1 s pause.
    assert!(
        about(start.elapsed(), Duration::from_millis(5200)),
        "{:?}",
        start.elapsed()
    );
    // The drain task's first replay attempt hangs too: it is cut off, and the next one
    // delivers.
    let report = c
        .force_flush_with(
            Duration::from_secs(300),
            outlast_client::FlushOptions::new().keep_trying(true),
        )
        .await;
    assert!(report.complete, "{report:?}");
    assert_eq!(exporter.delivered.load(Ordering::SeqCst), 1);
    let s = c.stats();
    assert_eq!((s.replayed, s.dropped.total()), (1, 0), "{s:?}");
}
