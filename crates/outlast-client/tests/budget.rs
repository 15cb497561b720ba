//! One time budget per invocation: `export_by` spools instead of retrying past its deadline,
//! and `force_flush` returns at once, with the records synced, when the backend is
//! unreachable.

mod common;

use std::time::Duration;

use common::{Backend, BackendMode, builder, payload, spool_dir};
use outlast_client::http::HttpExporter;
use outlast_client::testing::{Mode, TestReceiver};
use outlast_client::{BackendState, Client, Delivery, FlushOptions, FlushOutcome};
use tokio::time::Instant;

const BUDGET: Duration = Duration::from_millis(800);

#[tokio::test(start_paused = true)]
async fn a_flush_during_an_outage_returns_at_once_with_the_records_synced() {
    let dir = spool_dir();
    let backend = Backend::new(BackendMode::Refusing);
    let c = builder(dir.path()).build(backend.clone()).expect("valid");
    let start = Instant::now();
    let deadline = start + BUDGET;
    assert_eq!(
        c.export_by(payload("a"), deadline).await.expect("spooled"),
        Delivery::Spooled
    );
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "no quick retry past the deadline"
    );
    let report = c
        .force_flush(deadline.saturating_duration_since(Instant::now()))
        .await;
    assert_eq!(report.outcome, FlushOutcome::Offline, "{report:?}");
    assert!(!report.complete && report.synced, "{report:?}");
    assert_eq!(report.backend, BackendState::Unreachable);
    assert_eq!(report.remaining_records, 1);
    assert!(report.next_attempt_in.is_some(), "{report:?}");
    assert_eq!(start.elapsed(), Duration::ZERO, "{report:?}");
    // The flush did try: one direct attempt and the flush's probe.
    assert_eq!(backend.attempts().len(), 1);
    assert_eq!(backend.probes().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_flush_asked_to_keep_trying_uses_its_whole_time_and_delivers_when_the_backend_returns() {
    let dir = spool_dir();
    let backend = Backend::new(BackendMode::Refusing);
    let c = builder(dir.path()).build(backend.clone()).expect("valid");
    assert!(c.export(payload("a")).await.expect("spooled").is_spooled());
    let flusher = c.clone();
    let start = Instant::now();
    let flush = tokio::spawn(async move {
        flusher
            .force_flush_with(
                Duration::from_secs(5),
                FlushOptions::new().keep_trying(true),
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    backend.set_mode(BackendMode::Up);
    let report = flush.await.expect("flush task");
    assert!(report.complete, "{report:?}");
    assert_eq!(backend.received(), ["a"]);
    // Delivered at the first probe after the return, within the probe interval.
    assert!(
        start.elapsed() <= Duration::from_millis(3500),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn concurrent_flushes_each_get_their_own_answer_from_the_drain_task() {
    let dir = spool_dir();
    let backend = Backend::new(BackendMode::Refusing);
    let c = builder(dir.path()).build(backend.clone()).expect("valid");
    assert!(c.export(payload("a")).await.expect("spooled").is_spooled());
    let attempts = backend.attempts().len();
    let start = Instant::now();
    let flush = |keep_trying: bool, secs: u64| {
        let c = c.clone();
        tokio::spawn(async move {
            let options = FlushOptions::new().keep_trying(keep_trying);
            let report = c.force_flush_with(Duration::from_secs(secs), options).await;
            (report, start.elapsed())
        })
    };
    let quick = [flush(false, 5), flush(false, 7)];
    let patient = flush(true, 3);
    for f in quick {
        let (report, took) = f.await.expect("flush task");
        assert_eq!(report.outcome, FlushOutcome::Offline, "{report:?}");
        assert_eq!(took, Duration::ZERO, "answered by the first attempt");
    }
    let (report, took) = patient.await.expect("flush task");
    assert_eq!(report.outcome, FlushOutcome::TimedOut, "{report:?}");
    assert_eq!(took, Duration::from_secs(3), "its whole time");
    // The flushes probed; no payload was sent to a backend refusing connections.
    assert_eq!(backend.attempts().len(), attempts);
    assert!(!backend.probes().is_empty());
    backend.set_mode(BackendMode::Up);
    let flushes: Vec<_> = (0..4).map(|_| flush(false, 5)).collect();
    for f in flushes {
        let (report, _) = f.await.expect("flush task");
        assert!(report.complete, "{report:?}");
    }
    assert_eq!(backend.received(), ["a"]);
}

#[tokio::test(start_paused = true)]
async fn a_flush_answers_once_the_direct_exports_under_way_have_ended() {
    let dir = spool_dir();
    let exporter = outlast_client::testing::MemoryExporter::new();
    exporter.set_mode(outlast_client::testing::Outcome::SlowAccept(
        Duration::from_secs(2),
    ));
    let c = builder(dir.path()).build(exporter.clone()).expect("valid");
    let exporting = c.clone();
    let start = Instant::now();
    let export = tokio::spawn(async move { exporting.export(payload("slow")).await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let report = c.force_flush(Duration::from_secs(10)).await;
    assert_eq!(report.outcome, FlushOutcome::Drained, "{report:?}");
    assert!(report.complete && report.delivered == 1, "{report:?}");
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(2),
        "when the export ended"
    );
    assert_eq!(
        export.await.expect("export task").expect("delivered"),
        Delivery::Delivered
    );
}

#[tokio::test(start_paused = true)]
async fn a_flush_waiting_when_the_client_shuts_down_hears_so_at_once() {
    let dir = spool_dir();
    let backend = Backend::new(BackendMode::Hanging);
    let c = builder(dir.path()).build(backend.clone()).expect("valid");
    assert!(
        c.export_within(payload("a"), Duration::ZERO)
            .await
            .expect("spooled")
            .is_spooled()
    );
    let flusher = c.clone();
    let start = Instant::now();
    let flush = tokio::spawn(async move { flusher.force_flush(Duration::from_secs(600)).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let shutdown = c.shutdown(Duration::from_secs(2)).await;
    let report = flush.await.expect("flush task");
    assert_eq!(report.outcome, FlushOutcome::ShutDown, "{report:?}");
    assert!(
        start.elapsed() <= Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(report.remaining_records, 1);
    let shutdown = shutdown.expect("shut down");
    assert_eq!(shutdown.remaining_records, 1);
}

#[tokio::test(start_paused = true)]
async fn a_flush_with_the_backend_up_delivers_within_its_timeout() {
    let dir = spool_dir();
    let backend = Backend::new(BackendMode::Refusing);
    let c = builder(dir.path()).build(backend.clone()).expect("valid");
    for n in ["a", "b", "c"] {
        assert!(c.export(payload(n)).await.expect("spooled").is_spooled());
    }
    backend.set_mode(BackendMode::Up);
    let report = c.force_flush(BUDGET).await;
    assert!(report.complete, "{report:?}");
    assert_eq!(report.outcome, FlushOutcome::Drained);
    assert_eq!(report.delivered, 3);
    assert!(report.synced);
    assert_eq!(backend.received(), ["a", "b", "c"]);
}

#[tokio::test(start_paused = true)]
async fn a_flush_against_a_failing_backend_keeps_its_time_rather_than_claim_it_is_offline() {
    let dir = spool_dir();
    let backend = Backend::new(BackendMode::Failing(None));
    let c = builder(dir.path()).build(backend.clone()).expect("valid");
    assert!(c.export(payload("a")).await.expect("spooled").is_spooled());
    let start = Instant::now();
    let report = c.force_flush(BUDGET).await;
    assert_eq!(report.outcome, FlushOutcome::TimedOut, "{report:?}");
    assert_eq!(report.backend, BackendState::Failing);
    assert_eq!(start.elapsed(), BUDGET);
}

#[tokio::test(start_paused = true)]
async fn an_export_by_a_deadline_spools_a_hanging_attempt_at_the_deadline() {
    let dir = spool_dir();
    let backend = Backend::new(BackendMode::Hanging);
    let c = builder(dir.path()).build(backend.clone()).expect("valid");
    let start = Instant::now();
    assert_eq!(
        c.export_within(payload("a"), BUDGET)
            .await
            .expect("spooled"),
        Delivery::Spooled
    );
    assert_eq!(start.elapsed(), BUDGET);
    let report = c.force_flush(Duration::ZERO).await;
    assert_eq!(report.remaining_records, 1, "{report:?}");
    assert_eq!(report.outcome, FlushOutcome::TimedOut);
    // Without a deadline, the same export takes two attempt timeouts and the quick retry.
    let other_dir = spool_dir();
    let d = builder(other_dir.path())
        .attempt_timeout(Duration::from_secs(2))
        .build(Backend::new(BackendMode::Hanging))
        .expect("valid");
    let start = Instant::now();
    assert!(d.export(payload("b")).await.expect("spooled").is_spooled());
    assert_eq!(start.elapsed(), Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn a_zero_budget_spools_without_touching_the_network() {
    let dir = spool_dir();
    let backend = Backend::new(BackendMode::Up);
    let c = builder(dir.path()).build(backend.clone()).expect("valid");
    assert_eq!(
        c.export_within(payload("a"), Duration::ZERO)
            .await
            .expect("spooled"),
        Delivery::Spooled
    );
    assert!(backend.attempts().is_empty());
    let report = c.force_flush(BUDGET).await;
    assert!(report.complete, "{report:?}");
    assert_eq!(backend.received(), ["a"]);
}

/// One serverless invocation: export by the deadline, flush with what is left.
async fn invocation(c: &Client, text: &str) -> (Duration, Delivery, outlast_client::FlushReport) {
    let start = Instant::now();
    let deadline = start + BUDGET;
    let delivery = c
        .export_by(payload(text), deadline)
        .await
        .expect("accepted");
    let report = c
        .force_flush(deadline.saturating_duration_since(Instant::now()))
        .await;
    (start.elapsed(), delivery, report)
}

/// Real sockets and real time: what the bound may overshoot by on a loaded machine.
const SLACK: Duration = Duration::from_millis(250);

/// Runs one invocation against a receiver in `mode`, then brings the receiver back and
/// checks that the payload is delivered (nothing accepted is lost).
async fn invocation_against(mode: Mode) -> (Duration, Delivery, outlast_client::FlushReport) {
    let receiver = TestReceiver::start().await.expect("receiver");
    let dir = spool_dir();
    let exporter = HttpExporter::builder(receiver.url())
        .build()
        .expect("valid exporter");
    let c = Client::builder()
        .spool_dir(dir.path())
        .build(exporter)
        .expect("valid");
    receiver.set_mode(mode).await.expect("mode");
    let outcome = invocation(&c, "payload").await;

    // Down ends hung connections; up again, a flush that keeps trying delivers the record.
    receiver.set_mode(Mode::Down).await.expect("down");
    receiver.set_mode(Mode::Up).await.expect("up");
    let report = c
        .force_flush_with(
            Duration::from_secs(20),
            FlushOptions::new().keep_trying(true),
        )
        .await;
    assert!(report.complete, "{report:?}");
    let delivered: Vec<Vec<u8>> = receiver
        .received()
        .iter()
        .filter(|r| r.answer.is_accepted())
        .filter_map(|r| r.decoded_body().ok().flatten())
        .map(|b| b.to_vec())
        .collect();
    assert!(delivered.contains(&b"payload".to_vec()), "{delivered:?}");
    let s = c.stats();
    assert_eq!(s.exported + s.replayed, 1, "{s:?}");
    let _ = c.shutdown(Duration::from_secs(1)).await.expect("shutdown");
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_invocation_against_a_refusing_receiver_returns_early_with_the_record_synced() {
    let (took, delivery, report) = invocation_against(Mode::Down).await;
    assert_eq!(delivery, Delivery::Spooled);
    assert_eq!(report.outcome, FlushOutcome::Offline, "{report:?}");
    assert!(report.synced && report.remaining_records == 1, "{report:?}");
    assert!(took <= BUDGET / 2, "{took:?} {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_invocation_against_a_hanging_receiver_holds_its_budget() {
    let (took, delivery, report) = invocation_against(Mode::Hang).await;
    assert_eq!(delivery, Delivery::Spooled);
    assert!(!report.complete, "{report:?}");
    assert!(took <= BUDGET + SLACK, "{took:?} {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_invocation_against_a_healthy_receiver_delivers_within_its_budget() {
    let (took, delivery, report) = invocation_against(Mode::Up).await;
    assert_eq!(delivery, Delivery::Delivered);
    assert!(report.complete, "{report:?}");
    assert!(took <= BUDGET + SLACK, "{took:?} {report:?}");
}
