//! Lane identity: a client replays only records written for its own identity, and takes over
//! the lanes of its identity that another process releases while it runs.

mod common;

use std::time::Duration;

use common::{payload, settle, spool_dir, texts};
use outlast_client::http::HttpExporter;
use outlast_client::testing::{MemoryExporter, Mode, Outcome, TestReceiver};
use outlast_client::{Client, Delivery, Exporter};

/// A short-timeout HTTP exporter to `url`.
fn http_exporter(url: &str) -> HttpExporter {
    HttpExporter::builder(url)
        .timeout(Duration::from_millis(500))
        .build()
        .expect("valid exporter")
}

/// A request's body, decompressed.
fn body(r: &outlast_client::testing::ReceivedRequest) -> Vec<u8> {
    r.decoded_body()
        .ok()
        .flatten()
        .map(|b| b.to_vec())
        .unwrap_or_default()
}

#[test]
fn the_http_exporter_names_its_endpoint_without_the_query() {
    let e = HttpExporter::builder("http://collector.example:4318/v1/logs?token=abc")
        .build()
        .expect("valid exporter");
    assert_eq!(
        e.identity().as_deref(),
        Some("http://collector.example:4318/v1/logs")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_with_different_exporters_on_one_directory_never_deliver_each_others_records() {
    let dir = spool_dir();
    let backend_a = TestReceiver::start().await.expect("receiver A");
    let backend_b = TestReceiver::start().await.expect("receiver B");
    backend_a.set_mode(Mode::Down).await.expect("A down");

    // Service A spools a record while its backend is down, then goes away.
    let a = Client::builder()
        .spool_dir(dir.path())
        .immediate_retry_delay(Duration::from_millis(10))
        .build(http_exporter(&backend_a.url()))
        .expect("client A");
    let secret = payload("service A secret");
    assert_eq!(a.export(secret).await.expect("spooled"), Delivery::Spooled);
    let _ = a
        .shutdown(Duration::from_millis(200))
        .await
        .expect("A shut down");

    // Service B, another backend, the same directory: it must not send A's record.
    let b = Client::builder()
        .spool_dir(dir.path())
        .build(http_exporter(&backend_b.url()))
        .expect("client B");
    assert_eq!(
        b.export(payload("service B")).await.expect("delivered"),
        Delivery::Delivered
    );
    let report = b.force_flush(Duration::from_secs(5)).await;
    assert!(report.complete, "{report:?}");
    let bodies: Vec<Vec<u8>> = backend_b.received().iter().map(body).collect();
    assert_eq!(
        bodies,
        [b"service B".to_vec()],
        "B's backend got only B's record"
    );
    let _ = b
        .shutdown(Duration::from_secs(1))
        .await
        .expect("B shut down");

    // A's record waited for A: the next client of A's identity delivers it.
    backend_a.set_mode(Mode::Up).await.expect("A up");
    let a2 = Client::builder()
        .spool_dir(dir.path())
        .build(http_exporter(&backend_a.url()))
        .expect("client A again");
    let report = a2.force_flush(Duration::from_secs(5)).await;
    assert!(report.complete, "{report:?}");
    let bodies: Vec<Vec<u8>> = backend_a
        .received()
        .iter()
        .filter(|r| r.answer.is_accepted())
        .map(body)
        .collect();
    assert_eq!(bodies, [b"service A secret".to_vec()]);
    assert_eq!(backend_b.received().len(), 1, "still nothing more at B");
    let _ = a2
        .shutdown(Duration::from_secs(1))
        .await
        .expect("A shut down");
}

#[tokio::test(start_paused = true)]
async fn a_lane_released_after_open_is_adopted_without_a_restart_and_delivered_by_force_flush() {
    let dir = spool_dir();
    let down = MemoryExporter::new();
    down.set_mode(Outcome::Fail);
    let first = Client::builder()
        .spool_dir(dir.path())
        .identity("svc")
        .build(down.clone())
        .expect("first client");
    assert!(
        first
            .export(payload("left"))
            .await
            .expect("spooled")
            .is_spooled()
    );

    // A second process of the same service starts while the first still holds its lane.
    let up = MemoryExporter::new();
    let second = Client::builder()
        .spool_dir(dir.path())
        .identity("svc")
        .build(up.clone())
        .expect("second client");
    settle().await;
    assert!(texts(&up).is_empty(), "the lane is still held");

    // The first one exits: its lane is released, and the next flush of the second takes it.
    let _ = first
        .shutdown(Duration::ZERO)
        .await
        .expect("first shut down");
    let report = second.force_flush(Duration::from_secs(5)).await;
    assert!(report.complete, "{report:?}");
    assert_eq!(report.delivered, 1, "{report:?}");
    assert_eq!(texts(&up), ["left"]);
    assert_eq!(second.stats().replayed, 1);
}

#[tokio::test(start_paused = true)]
async fn an_idle_client_adopts_a_released_lane_of_its_identity_within_about_a_second() {
    let dir = spool_dir();
    let down = MemoryExporter::new();
    down.set_mode(Outcome::Fail);
    let first = Client::builder()
        .spool_dir(dir.path())
        .identity("svc")
        .build(down.clone())
        .expect("first client");
    assert!(
        first
            .export(payload("left"))
            .await
            .expect("spooled")
            .is_spooled()
    );
    let up = MemoryExporter::new();
    let second = Client::builder()
        .spool_dir(dir.path())
        .identity("svc")
        .build(up.clone())
        .expect("second client");
    let _ = first
        .shutdown(Duration::ZERO)
        .await
        .expect("first shut down");

    // No flush, no new payload: the idle drain task looks for released lanes once a second.
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        settle().await;
        if !texts(&up).is_empty() {
            break;
        }
    }
    assert_eq!(texts(&up), ["left"]);
    assert_eq!(second.stats().replayed, 1);
}

#[tokio::test(start_paused = true)]
async fn a_client_with_another_identity_leaves_a_released_lane_alone() {
    let dir = spool_dir();
    let down = MemoryExporter::new();
    down.set_mode(Outcome::Fail);
    let first = Client::builder()
        .spool_dir(dir.path())
        .identity("svc-a")
        .build(down.clone())
        .expect("first client");
    assert!(
        first
            .export(payload("for a"))
            .await
            .expect("spooled")
            .is_spooled()
    );
    let other = MemoryExporter::new();
    let second = Client::builder()
        .spool_dir(dir.path())
        .identity("svc-b")
        .build(other.clone())
        .expect("second client");
    let _ = first
        .shutdown(Duration::ZERO)
        .await
        .expect("first shut down");
    let report = second.force_flush(Duration::from_secs(5)).await;
    assert!(report.complete, "{report:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(texts(&other).is_empty(), "{:?}", texts(&other));
}

#[test]
fn an_empty_identity_is_refused_when_the_client_is_built() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let _guard = rt.enter();
    let dir = spool_dir();
    let err = Client::builder()
        .spool_dir(dir.path())
        .identity("  ")
        .build(MemoryExporter::new())
        .expect_err("an empty identity is refused");
    assert!(err.to_string().contains("identity"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn records_of_another_identity_are_reported_in_stats_and_left_out_of_a_complete_flush() {
    let dir = spool_dir();
    // Another service left three records in the directory.
    {
        let config =
            outlast_spool::SpoolConfig::new(dir.path()).with_identity(Some("other service".into()));
        let (spool, _) = outlast_spool::Spool::open(config).expect("open");
        for i in 0..3 {
            spool
                .append(payload(&format!("other {i}")))
                .expect("append");
        }
        spool.close().expect("close");
    }

    let exporter = MemoryExporter::new();
    let c = Client::builder()
        .spool_dir(dir.path())
        .identity("svc")
        .build(exporter.clone())
        .expect("client");
    let s = c.stats();
    assert_eq!(s.foreign_lanes, 1);
    assert_eq!(s.foreign_records, 3);
    assert_eq!(s.spool_records, 0, "not this client's records");
    assert!(!s.backlog);

    // Its own records are spooled and delivered; the flush is complete for them.
    exporter.set_mode(Outcome::Fail);
    assert!(
        c.export(payload("mine"))
            .await
            .expect("spooled")
            .is_spooled()
    );
    exporter.set_mode(Outcome::Accept);
    let report = c.force_flush(Duration::from_secs(30)).await;
    assert!(report.complete, "{report:?}");
    assert_eq!(report.remaining_records, 0);
    assert_eq!(texts(&exporter), ["mine"]);

    // The other service's records are still there, still reported, after the client looked
    // for released lanes again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    settle().await;
    let s = c.stats();
    assert_eq!((s.foreign_lanes, s.foreign_records), (1, 3));
    let _ = c.shutdown(Duration::from_secs(1)).await.expect("shut down");
    let config =
        outlast_spool::SpoolConfig::new(dir.path()).with_identity(Some("other service".into()));
    let (_spool, report) = outlast_spool::Spool::open(config).expect("reopen");
    assert_eq!(report.records, 3, "left for a client of their identity");
}
