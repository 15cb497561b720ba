//! The replay under paused Tokio time: the rate cap paces it (and only it), 429/503 stop the
//! whole window for the Retry-After, live-first sends new payloads ahead of a draining
//! backlog without losing or double-counting any, and the drain rate shows in stats.

mod common;

use std::time::Duration;

use common::{builder, payload, spool_dir, texts};
use outlast_client::testing::{MemoryExporter, Outcome};
use outlast_client::{Client, ClientBuilder, Delivery, ReplayOrder};
use tokio::time::Instant;

/// A 100-byte payload whose text starts with `name`.
fn record(name: &str) -> outlast_client::Payload {
    payload(&format!("{name:-<100}"))
}

fn name_of(text: &str) -> &str {
    text.trim_end_matches('-')
}

/// Spools `n` 100-byte records named `r0`, `r1`, ... while the backend fails, then lets it
/// accept again.
async fn spool_backlog(c: &Client, exporter: &MemoryExporter, n: usize) {
    exporter.set_mode(Outcome::Fail);
    for i in 0..n {
        assert_eq!(
            c.export(record(&format!("r{i}"))).await.expect("spooled"),
            Delivery::Spooled
        );
    }
    exporter.set_mode(Outcome::Accept);
}

/// The times of the attempts after the first `skip`.
fn attempts_after(exporter: &MemoryExporter, skip: usize) -> Vec<Instant> {
    exporter.attempt_times().into_iter().skip(skip).collect()
}

fn build(b: ClientBuilder, exporter: &MemoryExporter) -> Client {
    b.build(exporter.clone()).expect("valid configuration")
}

#[tokio::test(start_paused = true)]
async fn the_rate_cap_spaces_replay_requests_by_their_bytes_over_the_rate() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    let c = build(
        builder(dir.path()).replay_bytes_per_sec(Some(1000)),
        &exporter,
    );
    spool_backlog(&c, &exporter, 20).await;
    let direct = exporter.attempts() as usize;
    let report = c.force_flush(Duration::from_secs(60)).await;
    assert!(report.complete, "{report:?}");
    assert_eq!(report.delivered, 20);
    let times = attempts_after(&exporter, direct);
    assert_eq!(times.len(), 20);
    // 100 bytes at 1000 bytes per second: one request every 100 ms (the timer may fire up
    // to a millisecond late, and the bucket gives that millisecond back to the next one).
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    for gap in &gaps {
        assert!(
            *gap >= Duration::from_millis(98) && *gap <= Duration::from_millis(102),
            "{gaps:?}"
        );
    }
    let span = times[19] - times[0];
    assert!(
        span >= Duration::from_millis(1900) && span <= Duration::from_millis(1905),
        "{span:?}"
    );
    assert_eq!(c.stats().replayed, 20);
}

#[tokio::test(start_paused = true)]
async fn without_a_cap_or_with_the_largest_one_the_replay_does_not_wait() {
    for cap in [None, Some(u64::MAX)] {
        let dir = spool_dir();
        let exporter = MemoryExporter::new();
        let c = build(builder(dir.path()).replay_bytes_per_sec(cap), &exporter);
        spool_backlog(&c, &exporter, 20).await;
        let direct = exporter.attempts() as usize;
        let report = c.force_flush(Duration::from_secs(60)).await;
        assert!(report.complete, "{cap:?}: {report:?}");
        let times = attempts_after(&exporter, direct);
        assert_eq!(times.len(), 20);
        assert!(
            times[19] - times[0] < Duration::from_millis(5),
            "{cap:?}: {:?}",
            times[19] - times[0]
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_rate_cap_counts_requests_not_bytes() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    let c = build(
        builder(dir.path()).replay_requests_per_sec(Some(10)),
        &exporter,
    );
    spool_backlog(&c, &exporter, 11).await;
    let direct = exporter.attempts() as usize;
    let report = c.force_flush(Duration::from_secs(60)).await;
    assert!(report.complete, "{report:?}");
    let times = attempts_after(&exporter, direct);
    // A burst of one request, then one every 100 ms.
    let span = times[10] - times[0];
    assert!(
        span >= Duration::from_millis(1000) && span <= Duration::from_millis(1005),
        "{span:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn direct_exports_are_not_paced_by_the_replay_cap() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    let c = build(builder(dir.path()).replay_bytes_per_sec(Some(1)), &exporter);
    let t0 = Instant::now();
    for i in 0..50 {
        assert_eq!(
            c.export(record(&format!("d{i}"))).await.expect("delivered"),
            Delivery::Delivered
        );
    }
    assert_eq!(
        Instant::now(),
        t0,
        "no wait for 5000 bytes at a cap of 1 byte/s"
    );
}

#[tokio::test(start_paused = true)]
async fn a_record_far_larger_than_the_bucket_neither_hangs_a_flush_nor_is_lost() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    // 1 byte per second: a 100-byte record waits about 100 s for its turn.
    let c = build(builder(dir.path()).replay_bytes_per_sec(Some(1)), &exporter);
    spool_backlog(&c, &exporter, 2).await;
    let t0 = Instant::now();
    let report = c.force_flush(Duration::from_secs(5)).await;
    assert!(Instant::now() - t0 <= Duration::from_secs(5) + Duration::from_millis(20));
    assert!(!report.complete);
    assert_eq!(report.remaining_records, 2, "{report:?}");
    // The shutdown returns within its time too; the records stay on disk.
    let t0 = Instant::now();
    let report = c.shutdown(Duration::from_secs(1)).await.expect("shut down");
    assert!(Instant::now() - t0 <= Duration::from_secs(1) + Duration::from_millis(20));
    assert_eq!(report.remaining_records, 2);
    let s = c.stats();
    assert_eq!(s.spooled, 2);
    assert_eq!(s.replayed + s.dropped.total() + s.spool_records, 2);
    // The next run, without the cap, delivers them.
    let next = MemoryExporter::new();
    let c = build(builder(dir.path()), &next);
    assert!(c.force_flush(Duration::from_secs(5)).await.complete);
    assert_eq!(texts(&next).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_replay_that_meets_a_429_starts_nothing_more_until_its_retry_after_has_passed() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new().with_max_in_flight(4);
    let c = build(builder(dir.path()).max_in_flight(4), &exporter);
    spool_backlog(&c, &exporter, 30).await;
    let direct = exporter.attempts() as usize;
    // The oldest record (sent alone while the backend's state is not known) and two more
    // go through; the next is throttled for 30 s.
    exporter.push_outcomes([
        Outcome::Accept,
        Outcome::Accept,
        Outcome::Accept,
        Outcome::Throttle(Duration::from_secs(30)),
    ]);
    let t0 = Instant::now();
    let report = c.force_flush(Duration::from_secs(120)).await;
    assert!(report.complete, "{report:?}");
    let times = attempts_after(&exporter, direct);
    // The throttled attempt is the fourth; what was already under way finishes, and
    // nothing new starts for 30 s.
    let throttled_at = times[3];
    let after: Vec<Duration> = times[4..]
        .iter()
        .map(|t| *t - throttled_at)
        .filter(|d| *d > Duration::ZERO)
        .collect();
    assert!(!after.is_empty());
    assert!(
        after.iter().all(|d| *d >= Duration::from_secs(30)),
        "started during the Retry-After: {after:?}"
    );
    assert!(Instant::now() - t0 >= Duration::from_secs(30));
    // Nothing lost, each record delivered (records sent again after the failure are
    // delivered at least once, in order of the backlog).
    let got = texts(&exporter);
    for i in 0..30 {
        assert!(
            got.iter().any(|t| name_of(t) == format!("r{i}")),
            "r{i} missing"
        );
    }
    let s = c.stats();
    assert_eq!(s.replayed, 30);
    assert_eq!(s.spool_records, 0);
    assert_eq!(s.replay_failures, 1);
}

#[tokio::test(start_paused = true)]
async fn a_replay_stopped_by_a_failure_does_not_wait_out_the_turn_of_a_send_held_by_the_cap() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new().with_max_in_flight(4);
    // 100-byte records at 20 bytes per second: each waits about 5 s for its turn.
    let c = build(
        builder(dir.path())
            .max_in_flight(4)
            .attempt_timeout(Duration::from_secs(1))
            .replay_bytes_per_sec(Some(20)),
        &exporter,
    );
    spool_backlog(&c, &exporter, 5).await;
    // The oldest record goes through; the next one hangs until the attempt timeout, while
    // the one after it waits for its turn.
    exporter.push_outcomes([Outcome::Accept, Outcome::Hang]);
    let t0 = Instant::now();
    let flush = {
        let c = c.clone();
        tokio::spawn(async move {
            c.force_flush_with(
                Duration::from_secs(600),
                outlast_client::FlushOptions::new().keep_trying(true),
            )
            .await
        })
    };
    // r0 at about 4.75 s, r1 at about 9.75 s, timed out at about 10.75 s; r2's turn would
    // come at about 14.75 s.
    tokio::time::sleep_until(t0 + Duration::from_secs(11)).await;
    assert_eq!(
        c.stats().replay_failures,
        1,
        "the failure waited for the held send's turn"
    );
    let report = flush.await.expect("joined");
    assert!(report.complete, "{report:?}");
    let got: Vec<String> = texts(&exporter)
        .iter()
        .map(|t| name_of(t).to_owned())
        .collect();
    assert_eq!(got, ["r0", "r1", "r2", "r3", "r4"]);
    let s = c.stats();
    assert_eq!((s.replayed, s.spool_records), (5, 0));
}

/// A client with a slow (paced) drain of `n` records, live-first or not, whose backend is
/// known reachable again (the first replayed record was acknowledged).
async fn draining(order: ReplayOrder, n: usize) -> (tempfile::TempDir, MemoryExporter, Client) {
    let dir = spool_dir();
    let exporter = MemoryExporter::new().with_max_in_flight(4);
    let c = build(
        builder(dir.path())
            .max_in_flight(4)
            .replay_order(order)
            .replay_bytes_per_sec(Some(1000)),
        &exporter,
    );
    spool_backlog(&c, &exporter, n).await;
    // Wake the drain task and let it deliver the first records.
    let report = c.force_flush(Duration::from_millis(300)).await;
    assert!(!report.complete);
    assert!(c.stats().online(), "{:?}", c.stats());
    assert!(c.stats().backlog);
    (dir, exporter, c)
}

#[tokio::test(start_paused = true)]
async fn live_first_delivers_new_payloads_at_once_while_the_backlog_drains_beside_them() {
    let (_dir, exporter, c) = draining(ReplayOrder::LiveFirst, 20).await;
    let t0 = Instant::now();
    assert_eq!(
        c.export(record("live")).await.expect("delivered"),
        Delivery::Delivered
    );
    assert_eq!(Instant::now(), t0);
    let report = c.force_flush(Duration::from_secs(60)).await;
    assert!(report.complete, "{report:?}");
    let got: Vec<String> = texts(&exporter)
        .iter()
        .map(|t| name_of(t).to_owned())
        .collect();
    let live = got.iter().position(|t| t == "live").expect("delivered");
    assert!(
        live < 10,
        "the live payload came after most of the backlog: {got:?}"
    );
    assert_eq!(got.len(), 21, "{got:?}");
    let s = c.stats();
    assert_eq!((s.exported, s.replayed, s.spooled), (1, 20, 20));
    assert_eq!(s.dropped.total(), 0);
}

#[tokio::test(start_paused = true)]
async fn oldest_first_queues_new_payloads_behind_the_backlog() {
    let (_dir, exporter, c) = draining(ReplayOrder::OldestFirst, 20).await;
    assert_eq!(
        c.export(record("live")).await.expect("spooled"),
        Delivery::Spooled
    );
    let report = c.force_flush(Duration::from_secs(60)).await;
    assert!(report.complete, "{report:?}");
    let got = texts(&exporter);
    assert_eq!(got.len(), 21);
    assert_eq!(name_of(&got[20]), "live");
}

#[tokio::test(start_paused = true)]
async fn a_failed_live_send_spills_behind_the_backlog_once_without_a_quick_retry() {
    let (_dir, exporter, c) = draining(ReplayOrder::LiveFirst, 10).await;
    let before = exporter.attempts();
    exporter.set_mode(Outcome::Fail);
    let t0 = Instant::now();
    assert_eq!(
        c.export(record("flap")).await.expect("spooled"),
        Delivery::Spooled
    );
    assert_eq!(Instant::now(), t0, "no quick retry beside a backlog");
    assert_eq!(exporter.attempts(), before + 1, "one attempt");
    // The backend is taken as down: the next payload goes to the spool at once.
    assert_eq!(
        c.export(record("next")).await.expect("spooled"),
        Delivery::Spooled
    );
    assert_eq!(exporter.attempts(), before + 1);
    exporter.set_mode(Outcome::Accept);
    let report = c.force_flush(Duration::from_secs(60)).await;
    assert!(report.complete, "{report:?}");
    let got: Vec<String> = texts(&exporter)
        .iter()
        .map(|t| name_of(t).to_owned())
        .collect();
    assert_eq!(got.iter().filter(|t| *t == "flap").count(), 1, "{got:?}");
    // Behind the backlog it was spooled after.
    let flap = got.iter().position(|t| t == "flap").expect("delivered");
    let last_backlog = got
        .iter()
        .rposition(|t| t.starts_with('r'))
        .expect("backlog");
    assert!(flap > last_backlog, "{got:?}");
    let s = c.stats();
    assert_eq!(s.exported, 0);
    assert_eq!(s.spooled, 12);
    assert_eq!(s.replayed, 12);
    assert_eq!(s.dropped.total(), 0);
    assert_eq!(s.spool_records, 0);
}

#[tokio::test(start_paused = true)]
async fn live_sends_take_the_in_flight_limit_before_replay_requests() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new().with_max_in_flight(4);
    let c = build(
        builder(dir.path())
            .max_in_flight(4)
            .replay_order(ReplayOrder::LiveFirst),
        &exporter,
    );
    spool_backlog(&c, &exporter, 200).await;
    exporter.set_mode(Outcome::SlowAccept(Duration::from_secs(1)));
    let _ = c.force_flush(Duration::from_millis(2500)).await;
    assert!(c.stats().online());
    let before = exporter.attempts() as usize;
    let t0 = Instant::now();
    // Three live sends, each taking a second, started together.
    let live: Vec<_> = (0..3)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.export(record(&format!("live{i}"))).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(900)).await;
    let started: Vec<Instant> = attempts_after(&exporter, before)
        .into_iter()
        .filter(|t| *t >= t0 && *t < t0 + Duration::from_millis(900))
        .collect();
    // The three live sends, and at most one replay request (the replay keeps one going)
    // while they hold three of the four places; without precedence, each replay request
    // that ended would have been replaced at once.
    assert!(started.len() <= 4, "{} attempts started", started.len());
    for l in live {
        assert_eq!(
            l.await.expect("joined").expect("delivered"),
            Delivery::Delivered
        );
    }
    assert!(exporter.peak_in_flight() <= 4 + 3);
    let report = c.force_flush(Duration::from_secs(600)).await;
    assert!(report.complete, "{report:?}");
    let s = c.stats();
    assert_eq!((s.exported, s.replayed), (3, 200));
}

#[tokio::test(start_paused = true)]
async fn stats_give_the_drain_rate_and_the_time_left() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    let c = build(
        builder(dir.path()).replay_bytes_per_sec(Some(1000)),
        &exporter,
    );
    spool_backlog(&c, &exporter, 40).await;
    let idle = c.stats();
    assert_eq!((idle.drain_rate, idle.drain_time_left), (0, None));
    let _ = c.force_flush(Duration::from_millis(2050)).await;
    let s = c.stats();
    // 100-byte records at 1000 bytes per second: 10 records a second.
    assert!((900..=1100).contains(&s.drain_rate), "{s:?}");
    let left = s.drain_time_left.expect("measured");
    let expected = Duration::from_millis(100) * u32::try_from(s.spool_records).expect("small");
    let diff = left.abs_diff(expected);
    assert!(
        diff <= expected / 10,
        "{left:?} for {} records",
        s.spool_records
    );
    assert!(s.pending_bytes > 0 && s.oldest_record_age.is_some());
}

/// Over loopback HTTP: a backlog replayed into a receiver that answers 429 above 64 KiB a
/// second is delivered whole (duplicates aside: at least once), and the 429s' Retry-After
/// spreads it over the seconds the receiver's rate needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_replayed_into_a_rate_limited_receiver_is_delivered_whole_within_its_rate() {
    use outlast_client::http::PayloadFraming;
    use outlast_client::testing::{Mode, TestReceiver};
    let receiver = TestReceiver::builder()
        .mode(Mode::Down)
        .start()
        .await
        .expect("receiver");
    let dir = spool_dir();
    let c = common::http_client(dir.path(), &receiver, PayloadFraming::Opaque, false, 1, 4);
    for i in 0..200 {
        let p = outlast_client::Payload::new(vec![b'x'; 1024]).with_key(format!("k{i:03}"));
        assert_eq!(c.export(p).await.expect("spooled"), Delivery::Spooled);
    }
    let rate = 64 * 1024;
    receiver
        .set_mode(Mode::RateLimited {
            bytes_per_sec: rate,
            retry_after: Some(Duration::from_secs(1)),
        })
        .await
        .expect("mode");
    let report = c.force_flush(Duration::from_secs(30)).await;
    assert!(report.complete, "{report:?}");
    assert_eq!(receiver.unique_keys().len(), 200);
    let received = receiver.received();
    let refused = received.iter().filter(|r| !r.answer.is_accepted()).count();
    assert!(
        refused > 0,
        "the receiver never refused: the test shows nothing"
    );
    let accepted: Vec<(std::time::Instant, u64)> = received
        .iter()
        .filter(|r| r.answer.is_accepted())
        .map(|r| (r.received_at, r.body_len))
        .collect();
    let first = accepted.first().expect("accepted").0;
    let last = accepted.last().expect("accepted").0;
    let total: u64 = accepted.iter().map(|(_, n)| n).sum();
    // Requests accepted after a refused one in the same window are sent again (at least
    // once): a few duplicates, never a missing key.
    assert!(total >= 200 * 1024, "{total}");
    // 200 KiB at 64 KiB per window: at least two full windows after the first.
    assert!(last - first >= Duration::from_secs(2), "{:?}", last - first);
    let s = c.stats();
    assert_eq!(s.replayed, 200);
    assert_eq!(s.dropped.total(), 0);
    assert!(s.replay_failures >= 1);
}
