//! The drain task under paused Tokio time: ordering, backoff growth and reset, Retry-After,
//! poison records, probes, pipelined replay, and force_flush's time limit.

mod common;

use std::time::Duration;

use common::{about, client, payload, spool_dir, texts};
use outlast_client::testing::{MemoryExporter, Outcome, ProbeMode};
use outlast_client::{Delivery, Reachability};
use tokio::time::Instant;

/// Makes the backend fail and spools `names` (the first through the direct path, the rest
/// through the offline fast path).
async fn spool_while_down(c: &outlast_client::Client, exporter: &MemoryExporter, names: &[&str]) {
    exporter.set_mode(Outcome::Fail);
    for n in names {
        assert_eq!(
            c.export(payload(n)).await.expect("spooled"),
            Delivery::Spooled
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_backlog_is_delivered_oldest_first_and_new_payloads_queue_behind_it() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    let c = client(dir.path(), &exporter);
    spool_while_down(&c, &exporter, &["a", "b", "c", "d"]).await;

    exporter.set_mode(Outcome::Accept);
    // The backend is back, but the client does not know yet: new payloads go behind the
    // backlog rather than overtaking it.
    assert_eq!(
        c.export(payload("e")).await.expect("queued"),
        Delivery::Spooled
    );
    let report = c.force_flush(Duration::from_secs(60)).await;
    assert!(report.complete, "{report:?}");
    assert_eq!(report.remaining_records, 0);
    assert_eq!(report.delivered, 5);
    assert_eq!(texts(&exporter), ["a", "b", "c", "d", "e"]);

    // Backlog gone: direct export again.
    assert_eq!(
        c.export(payload("f")).await.expect("delivered"),
        Delivery::Delivered
    );
    let s = c.stats();
    assert_eq!(s.replayed, 5);
    assert_eq!(s.exported, 1);
    assert!(s.online() && !s.backlog);
}

#[tokio::test(start_paused = true)]
async fn backoff_doubles_while_the_backend_stays_down_and_resets_after_a_success() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    let c = client(dir.path(), &exporter);
    spool_while_down(&c, &exporter, &["a"]).await;
    assert_eq!(exporter.attempts(), 2);

    // Let the drain task fail five times: 1 s, 2 s, 4 s, 8 s, 16 s apart.
    tokio::time::sleep(Duration::from_secs(1 + 2 + 4 + 8 + 16) + Duration::from_millis(100)).await;
    let times = exporter.attempt_times();
    assert_eq!(times.len(), 2 + 5, "{times:?}");
    let gaps: Vec<Duration> = times.windows(2).skip(1).map(|w| w[1] - w[0]).collect();
    for (gap, expected) in gaps.iter().zip([1, 2, 4, 8, 16]) {
        assert!(
            about(*gap, Duration::from_secs(expected)),
            "gaps {gaps:?}, expected {expected}s"
        );
    }
    assert_eq!(c.stats().replay_failures, 5);

    // The backend comes back: the next attempt (32 s later) delivers, and the backoff resets.
    exporter.set_mode(Outcome::Accept);
    tokio::time::sleep(Duration::from_secs(33)).await;
    assert_eq!(texts(&exporter), ["a"]);
    assert!(c.stats().online());

    // Down again: the first delay is 1 s again, not 64 s.
    spool_while_down(&c, &exporter, &["b"]).await;
    let before = exporter.attempts();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(exporter.attempts(), before + 1, "retried after ~1 s");
    let last = *exporter.attempt_times().last().expect("an attempt");
    assert!(about(last - t0, Duration::from_secs(1)), "{:?}", last - t0);
}

#[tokio::test(start_paused = true)]
async fn retry_after_from_the_backend_raises_the_drain_delay() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    let c = client(dir.path(), &exporter);
    spool_while_down(&c, &exporter, &["a"]).await;
    exporter.set_mode(Outcome::Throttle(Duration::from_secs(30)));
    // First drain attempt after 1 s is throttled with Retry-After: 30 s.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(exporter.attempts(), 3);
    exporter.set_mode(Outcome::Accept);
    // Not before 30 s...
    tokio::time::sleep(Duration::from_secs(28)).await;
    assert_eq!(exporter.attempts(), 3);
    // ...but right after.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(texts(&exporter), ["a"]);
    let t = exporter.attempt_times();
    assert!(about(t[3] - t[2], Duration::from_secs(30)), "{t:?}");
}

#[tokio::test(start_paused = true)]
async fn a_poison_record_is_dropped_without_blocking_the_queue() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    let c = client(dir.path(), &exporter);
    spool_while_down(&c, &exporter, &["a", "poison", "b"]).await;
    exporter.reject_if(|p| p.bytes().as_ref() == b"poison");
    exporter.set_mode(Outcome::Accept);
    let report = c.force_flush(Duration::from_secs(30)).await;
    assert!(report.complete, "{report:?}");
    assert_eq!(report.dropped, 1);
    assert_eq!(texts(&exporter), ["a", "b"]);
    let s = c.stats();
    assert_eq!(s.dropped.permanent, 1);
    assert_eq!(s.spool_records, 0);
}

#[tokio::test(start_paused = true)]
async fn force_flush_returns_within_its_timeout_when_the_backend_hangs() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    let c = client(dir.path(), &exporter);
    spool_while_down(&c, &exporter, &["a", "b"]).await;
    exporter.set_mode(Outcome::Hang);
    let start = Instant::now();
    let report = c.force_flush(Duration::from_secs(3)).await;
    // The attempt timeout is 10 s: the flush does not wait for it.
    assert!(
        about(start.elapsed(), Duration::from_secs(3)),
        "{:?}",
        start.elapsed()
    );
    assert!(!report.complete);
    assert_eq!(report.remaining_records, 2);
    assert!(report.remaining_bytes > 0);
    assert_eq!(report.delivered, 0);
    assert!(about(report.elapsed, Duration::from_secs(3)));
}

#[tokio::test(start_paused = true)]
async fn force_flush_resets_the_backoff_and_drains_now() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    let c = client(dir.path(), &exporter);
    spool_while_down(&c, &exporter, &["a"]).await;
    // Several failures: the next attempt is a minute away.
    tokio::time::sleep(Duration::from_secs(1 + 2 + 4 + 8 + 16 + 1)).await;
    exporter.set_mode(Outcome::Accept);
    let start = Instant::now();
    let report = c.force_flush(Duration::from_secs(5)).await;
    assert!(report.complete, "{report:?}");
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(texts(&exporter), ["a"]);
}

#[tokio::test(start_paused = true)]
async fn force_flush_with_nothing_pending_is_complete_at_once() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    let c = client(dir.path(), &exporter);
    let report = c.force_flush(Duration::from_secs(5)).await;
    assert!(report.complete);
    assert_eq!(report.elapsed, Duration::ZERO);
    assert_eq!(report.remaining_records, 0);
}

#[tokio::test(start_paused = true)]
async fn the_probe_is_used_while_offline_instead_of_real_payloads() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new().with_probe(ProbeMode::FollowMode);
    let c = client(dir.path(), &exporter);
    spool_while_down(&c, &exporter, &["a", "b"]).await;
    // The first retry (1 s) probes; once a probe failed, the backend is known to be
    // unreachable and the probe runs every second, while the backoff (1 s, 2 s, 4 s) paces
    // what counts as a failed attempt.
    tokio::time::sleep(Duration::from_secs(1 + 2 + 4) + Duration::from_millis(100)).await;
    assert_eq!(exporter.probes(), 7);
    assert_eq!(exporter.attempts(), 2, "only the two direct attempts");
    assert_eq!(c.stats().replay_failures, 3);
    assert_eq!(c.stats().backend, outlast_client::BackendState::Unreachable);
    exporter.set_mode(Outcome::Accept);
    let back = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(texts(&exporter), ["a", "b"]);
    let first = exporter.attempt_times()[2];
    assert!(first - back <= Duration::from_secs(1), "{:?}", first - back);
}

#[tokio::test(start_paused = true)]
async fn without_a_probe_the_oldest_record_alone_tests_the_backend() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new().with_probe(ProbeMode::Fixed(Reachability::Unsupported));
    let c = client(dir.path(), &exporter);
    spool_while_down(&c, &exporter, &["a", "b", "c"]).await;
    tokio::time::sleep(Duration::from_secs(1 + 2) + Duration::from_millis(100)).await;
    // Two drain attempts, one record each, not the whole batch.
    assert_eq!(exporter.attempts(), 2 + 2);
    assert_eq!(exporter.probes(), 1, "asked once, then not again");
    exporter.set_mode(Outcome::Accept);
    let report = c.force_flush(Duration::from_secs(10)).await;
    assert!(report.complete);
    assert_eq!(texts(&exporter), ["a", "b", "c"]);
}

#[tokio::test(start_paused = true)]
async fn a_large_backlog_is_replayed_with_several_requests_in_flight() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new().with_max_in_flight(8);
    let c = common::builder(dir.path())
        .max_in_flight(4)
        .batch_size(50)
        .build(exporter.clone())
        .expect("valid");
    let names: Vec<String> = (0..200).map(|i| format!("r{i:03}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    spool_while_down(&c, &exporter, &refs).await;

    exporter.set_mode(Outcome::SlowAccept(Duration::from_millis(100)));
    let start = Instant::now();
    let report = c.force_flush(Duration::from_secs(60)).await;
    assert!(report.complete, "{report:?}");
    assert_eq!(report.delivered, 200);
    // Four at a time: about 200 / 4 round trips of 100 ms, not 200.
    assert!(
        start.elapsed() <= Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        exporter.peak_in_flight(),
        4,
        "limited by the client setting"
    );
    let mut got = texts(&exporter);
    got.sort();
    assert_eq!(got, names);
}

#[tokio::test(start_paused = true)]
async fn a_failure_in_a_pipelined_batch_acknowledges_only_the_delivered_prefix() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new().with_max_in_flight(4);
    let c = common::builder(dir.path())
        .max_in_flight(4)
        .build(exporter.clone())
        .expect("valid");
    spool_while_down(&c, &exporter, &["a", "b", "c", "d", "e", "f"]).await;
    exporter.set_mode(Outcome::Accept);
    // The first drain attempt (offline: one record) succeeds; the next batch of five meets
    // one failure on its second record.
    exporter.push_outcomes([Outcome::Accept, Outcome::Accept, Outcome::Fail]);
    let report = c.force_flush(Duration::from_secs(30)).await;
    assert!(report.complete, "{report:?}");
    let got = texts(&exporter);
    // Everything arrives; records after the failure may arrive twice (at least once).
    for n in ["a", "b", "c", "d", "e", "f"] {
        assert!(got.iter().any(|g| g == n), "{n} missing from {got:?}");
    }
    assert_eq!(&got[..2], ["a", "b"]);
    assert_eq!(c.stats().spool_records, 0);
}

#[tokio::test(start_paused = true)]
async fn a_delay_between_batches_paces_the_replay() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    let c = common::builder(dir.path())
        .batch_size(2)
        .batch_delay(Duration::from_secs(1))
        .build(exporter.clone())
        .expect("valid");
    spool_while_down(&c, &exporter, &["a", "b", "c", "d", "e"]).await;
    exporter.set_mode(Outcome::Accept);
    let start = Instant::now();
    let report = c.force_flush(Duration::from_secs(30)).await;
    assert!(report.complete);
    // Batches: [a] (offline probe record), [b c], [d e]; a pause after each.
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(texts(&exporter), ["a", "b", "c", "d", "e"]);
}

#[tokio::test(start_paused = true)]
async fn records_older_than_the_maximum_age_are_dropped_and_counted() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    let c = common::builder(dir.path())
        .max_record_age(Some(Duration::from_secs(3600)))
        .build(exporter.clone())
        .expect("valid");
    exporter.set_mode(Outcome::Fail);
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    for n in ["old1", "old2"] {
        let p = payload(n).with_created_at(two_hours_ago);
        assert!(c.export(p).await.expect("spooled").is_spooled());
    }
    assert!(
        c.export(payload("fresh"))
            .await
            .expect("spooled")
            .is_spooled()
    );
    exporter.set_mode(Outcome::Accept);
    let report = c.force_flush(Duration::from_secs(30)).await;
    assert!(report.complete, "{report:?}");
    assert_eq!(texts(&exporter), ["fresh"]);
    assert_eq!(c.stats().dropped.expired, 2);
    assert_eq!(report.dropped, 2);
}

#[tokio::test(start_paused = true)]
async fn the_drop_oldest_policy_evicts_old_records_and_counts_them() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    let c = common::builder(dir.path())
        .max_record_bytes(4096)
        .segment_bytes(16 * 1024)
        .spool_max_bytes(32 * 1024)
        .full_policy(outlast_client::FullPolicy::DropOldest)
        .build(exporter.clone())
        .expect("valid");
    exporter.set_mode(Outcome::Fail);
    for i in 0..100u8 {
        let d = c
            .export(outlast_client::Payload::new(common::incompressible(
                i, 2000,
            )))
            .await
            .expect("never refused under drop-oldest");
        assert!(d.is_spooled());
    }
    let s = c.stats();
    assert!(s.dropped.evicted > 0, "{s:?}");
    assert_eq!(s.dropped.spool_full, 0);
    exporter.set_mode(Outcome::Accept);
    let report = c.force_flush(Duration::from_secs(30)).await;
    assert!(report.complete, "{report:?}");
    let got = exporter.received();
    assert_eq!(got.len() as u64 + s.dropped.evicted, 100);
    // What survived is the newest data, in order.
    let firsts: Vec<u8> = got.iter().map(|p| p.bytes()[0]).collect();
    assert!(firsts.windows(2).all(|w| w[0] < w[1]), "{firsts:?}");
    assert_eq!(firsts.last(), Some(&99));
}

#[tokio::test(start_paused = true)]
async fn stats_say_how_full_the_spool_is_and_how_long_until_it_is_full_at_the_spill_rate() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    let cap = 32 * 1024 * 1024;
    let c = common::builder(dir.path())
        .spool_max_bytes(cap)
        .build(exporter.clone())
        .expect("valid");
    let s = c.stats();
    // The cap in force: as configured, unless the disk has less room.
    assert!(s.spool_max_bytes > 0 && s.spool_max_bytes <= cap, "{s:?}");
    assert_eq!((s.spill_rate, s.spool_full_in), (0, None));

    // An outage: 1000 bytes spilled every second for five minutes (incompressible, so the
    // spool stores them as they are: the rate counts the bytes the spool fills with).
    exporter.set_mode(Outcome::Fail);
    let record = common::incompressible(7, 1000);
    for _ in 0..300 {
        assert!(
            c.export(outlast_client::Payload::new(record.clone()))
                .await
                .expect("spooled")
                .is_spooled()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let s = c.stats();
    // About 1000 bytes a second (the average lags a steady flow by e^-5 after five minutes).
    assert!((980..=1010).contains(&s.spill_rate), "{s:?}");
    let room = s.spool_max_bytes - s.spool_bytes;
    let full_in = s.spool_full_in.expect("filling");
    let expected = room / s.spill_rate;
    assert!(
        full_in.as_secs().abs_diff(expected) <= expected / 50,
        "{full_in:?} vs {expected} s: {s:?}"
    );
    let fill = s.spool_bytes as f64 / s.spool_max_bytes as f64;
    assert!(
        s.spool_fill() > 0.0 && (s.spool_fill() - fill).abs() < 1e-12,
        "{s:?}"
    );

    // The backend is back: the spool is emptying, not filling.
    exporter.set_mode(Outcome::Accept);
    let report = c.force_flush(Duration::from_secs(60)).await;
    assert!(report.complete, "{report:?}");
    assert_eq!(c.stats().spool_full_in, None);
}

/// An exporter of the application's own (not HTTP) whose backend never answers: its exports
/// fail as `unreachable` says (an error saying it could not be reached) or as a plain
/// retryable error; its probe never gets through.
#[derive(Clone)]
struct Broker {
    transport_level: bool,
    attempts: std::sync::Arc<std::sync::atomic::AtomicU64>,
    probes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Broker {
    fn new(transport_level: bool) -> Self {
        Broker {
            transport_level,
            attempts: std::sync::Arc::default(),
            probes: std::sync::Arc::default(),
        }
    }

    fn attempts(&self) -> u64 {
        self.attempts.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn probes(&self) -> u64 {
        self.probes.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl outlast_client::Exporter for Broker {
    async fn export(&self, _: &outlast_client::Payload) -> Result<(), outlast_client::ExportError> {
        self.attempts
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let cause = "the broker did not answer";
        Err(if self.transport_level {
            outlast_client::ExportError::unreachable(cause)
        } else {
            outlast_client::ExportError::retryable(cause)
        })
    }

    async fn probe(&self) -> Reachability {
        self.probes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Reachability::Unreachable
    }
}

/// Spools one payload through a client of `broker` whose backoff starts at 30 s, then lets
/// ten and a half seconds pass.
async fn ten_seconds_down(dir: &std::path::Path, broker: &Broker) -> outlast_client::Client {
    let c = common::builder(dir)
        .initial_backoff(Duration::from_secs(30))
        .build(broker.clone())
        .expect("valid configuration");
    assert!(c.export(payload("a")).await.expect("spooled").is_spooled());
    assert_eq!(
        broker.attempts(),
        2,
        "the direct attempt and its quick retry"
    );
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    c
}

#[tokio::test(start_paused = true)]
async fn a_custom_exporters_unreachable_failure_gets_the_probe_cadence() {
    let dir = spool_dir();
    let broker = Broker::new(true);
    let c = ten_seconds_down(dir.path(), &broker).await;
    assert_eq!(c.stats().backend, outlast_client::BackendState::Unreachable);
    // A probe every second, while the backoff (30 s) keeps the payload back.
    assert_eq!(broker.probes(), 10);
    assert_eq!(broker.attempts(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_custom_exporters_plain_retryable_failure_follows_the_backoff_only() {
    let dir = spool_dir();
    let broker = Broker::new(false);
    let c = ten_seconds_down(dir.path(), &broker).await;
    assert_eq!(c.stats().backend, outlast_client::BackendState::Offline);
    assert_eq!(
        broker.probes(),
        0,
        "nothing says the backend is unreachable"
    );
    assert_eq!(broker.attempts(), 2);
    // The first drain attempt, after the backoff's 30 s, probes: from its answer on, the
    // probe cadence holds.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(c.stats().backend, outlast_client::BackendState::Unreachable);
    assert_eq!(broker.probes(), 1);
    assert_eq!(broker.attempts(), 2);
}
