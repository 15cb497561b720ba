//! A caller that drops the `export` future (a timeout around it, a `select!`) loses the
//! payload, but never the count: it is counted once as `cancelled`, unless its outcome was
//! already counted (delivered, or spooled). And the quick retry's delay, which `export`
//! waits out, is bounded at `build()`.

mod common;

use std::time::Duration;

use common::{payload, spool_dir};
use outlast_client::testing::{MemoryExporter, Outcome};
use outlast_client::{Client, ClientBuilder, ClientStats, ConfigError, DropReason};
use outlast_spool::Durability;

/// Every payload handed to `export`: delivered, spooled, or dropped for one reason.
fn outcomes(s: &ClientStats) -> u64 {
    s.exported + s.spooled + s.dropped.total()
}

#[tokio::test(start_paused = true)]
async fn a_timeout_around_export_against_a_hanging_backend_counts_the_payload_as_cancelled() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    exporter.set_mode(Outcome::Hang);
    let c = common::client(dir.path(), &exporter);
    let cut = tokio::time::timeout(Duration::from_secs(1), c.export(payload("a"))).await;
    assert!(cut.is_err(), "the attempt hangs for the attempt timeout");
    let s = c.stats();
    assert_eq!(s.dropped.cancelled, 1, "{s:?}");
    assert_eq!(s.dropped.get(DropReason::Cancelled), 1);
    assert_eq!(outcomes(&s), 1, "{s:?}");
    assert_eq!(s.spool_records, 0);
}

#[tokio::test(start_paused = true)]
async fn a_select_that_drops_export_during_the_quick_retry_counts_it_as_cancelled() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    exporter.set_mode(Outcome::Fail);
    let c = common::builder(dir.path())
        .immediate_retry_delay(Duration::from_secs(5))
        .build(exporter.clone())
        .expect("valid");
    tokio::select! {
        r = c.export(payload("a")) => panic!("the quick retry waits 5 s: {r:?}"),
        () = tokio::time::sleep(Duration::from_secs(2)) => {}
    }
    assert_eq!(
        exporter.attempts(),
        1,
        "dropped while waiting for the retry"
    );
    let s = c.stats();
    assert_eq!(s.dropped.cancelled, 1, "{s:?}");
    assert_eq!(outcomes(&s), 1, "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn an_export_answered_before_the_drop_is_delivered_not_cancelled() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    exporter.set_mode(Outcome::SlowAccept(Duration::from_millis(500)));
    let c = common::client(dir.path(), &exporter);
    let done = tokio::time::timeout(Duration::from_secs(1), c.export(payload("a")))
        .await
        .expect("answered within the timeout")
        .expect("delivered");
    assert!(done.is_delivered());
    let s = c.stats();
    assert_eq!((s.exported, s.dropped.total()), (1, 0), "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn a_payload_already_spooled_is_not_cancelled_by_a_timeout_around_export() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    exporter.set_mode(Outcome::Fail);
    let c = common::builder(dir.path())
        .immediate_retry_delay(Duration::ZERO)
        .build(exporter.clone())
        .expect("valid");
    // The first payload finds the backend down and creates the backlog; the others go
    // straight to the spool, within the first poll: a timeout of zero cannot cut them.
    assert!(c.export(payload("a")).await.expect("spooled").is_spooled());
    for i in 0..5 {
        let r = tokio::time::timeout(Duration::ZERO, c.export(payload(&format!("{i}")))).await;
        assert!(r.expect("no await before the append").is_ok());
    }
    let s = c.stats();
    assert_eq!((s.spooled, s.dropped.cancelled), (6, 0), "{s:?}");
    assert_eq!(outcomes(&s), 6);
}

/// Cuts `export` at every moment of its path (the first attempt, the quick retry's wait,
/// the second attempt, the spill) against a backend that fails, hangs, or answers late, and
/// checks after each cut that every payload is counted exactly once.
#[tokio::test(start_paused = true)]
async fn export_dropped_at_any_moment_leaves_every_payload_counted_once() {
    for (label, outcomes_script) in [
        ("fail", vec![Outcome::Fail, Outcome::Fail]),
        ("hang", vec![Outcome::Hang, Outcome::Hang]),
        (
            "fail then slow",
            vec![
                Outcome::Fail,
                Outcome::SlowAccept(Duration::from_millis(300)),
            ],
        ),
        (
            "slow",
            vec![Outcome::SlowAccept(Duration::from_millis(700))],
        ),
    ] {
        let mut cancelled = 0;
        for cut_ms in (0..1200).step_by(50) {
            let dir = spool_dir();
            let exporter = MemoryExporter::new();
            exporter.push_outcomes(outcomes_script.clone());
            let c = common::builder(dir.path())
                .attempt_timeout(Duration::from_millis(400))
                .immediate_retry_delay(Duration::from_millis(200))
                .build(exporter.clone())
                .expect("valid");
            let p = payload(&format!("{label}-{cut_ms}"));
            let _ = tokio::time::timeout(Duration::from_millis(cut_ms), c.export(p)).await;
            let s = c.stats();
            assert_eq!(outcomes(&s), 1, "{label}, cut at {cut_ms} ms: {s:?}");
            cancelled += s.dropped.cancelled;
            // Whatever the cut, the rest of the pipeline agrees: what is not delivered or
            // dropped is in the spool.
            let report = c.shutdown(Duration::from_secs(5)).await.expect("shutdown");
            let s = c.stats();
            assert_eq!(
                s.exported + s.replayed + report.remaining_records + s.dropped.total(),
                1,
                "{label}, cut at {cut_ms} ms: {s:?} {report:?}"
            );
        }
        assert!(cancelled > 0, "{label}: some cuts cancelled");
    }
}

#[test]
fn export_cut_while_an_fsync_every_append_append_runs_is_spooled_not_cancelled() {
    // The append runs on the blocking pool and finishes without the caller: it counts
    // itself, and the guard must not count it again.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let dir = spool_dir();
        let exporter = MemoryExporter::new();
        exporter.set_mode(Outcome::Fail);
        let c = common::builder(dir.path())
            .immediate_retry_delay(Duration::ZERO)
            .durability(Durability::FsyncEveryAppend)
            .build(exporter.clone())
            .expect("valid");
        assert!(c.export(payload("a")).await.expect("spooled").is_spooled());
        let mut cut = 0;
        for i in 0..20 {
            // Dropped at its first await: the hand-off to the blocking pool.
            let p = payload(&format!("{i}"));
            let mut fut = Box::pin(c.export(p));
            let polled = futures_poll_once(fut.as_mut()).await;
            if polled.is_none() {
                cut += 1;
            }
            drop(fut);
        }
        // Let the appends finish.
        let report = c.shutdown(Duration::from_secs(10)).await.expect("shutdown");
        let s = c.stats();
        assert!(cut > 0, "some exports were cut mid-append");
        assert_eq!(s.dropped.cancelled, 0, "{s:?}");
        assert_eq!(s.spooled, 21, "{s:?}");
        assert_eq!(report.remaining_records, 21);
    });
}

/// Polls `fut` once: `Some` if it finished.
async fn futures_poll_once<F: std::future::Future + Unpin>(fut: F) -> Option<F::Output> {
    let mut fut = fut;
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut fut).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

#[tokio::test]
async fn an_immediate_retry_delay_above_the_limit_is_refused_by_name() {
    let dir = spool_dir();
    for d in [
        Duration::MAX,
        ClientBuilder::MAX_IMMEDIATE_RETRY_DELAY + Duration::from_millis(1),
    ] {
        let e = common::builder(dir.path())
            .immediate_retry_delay(d)
            .build(MemoryExporter::new())
            .expect_err("refused");
        assert!(
            matches!(
                e,
                ConfigError::Invalid {
                    param: "immediate_retry_delay",
                    ..
                }
            ),
            "{e}"
        );
    }
    let vars = [("OUTLAST_IMMEDIATE_RETRY_DELAY".to_owned(), "1h".to_owned())];
    let e = ClientBuilder::from_env_vars(vars)
        .expect("parses")
        .spool_dir(dir.path())
        .build(MemoryExporter::new())
        .expect_err("refused");
    assert!(
        matches!(
            e,
            ConfigError::Invalid {
                param: "OUTLAST_IMMEDIATE_RETRY_DELAY",
                ..
            }
        ),
        "{e}"
    );
    let c = Client::builder()
        .spool_dir(dir.path())
        .immediate_retry_delay(ClientBuilder::MAX_IMMEDIATE_RETRY_DELAY)
        .build(MemoryExporter::new());
    assert!(c.is_ok(), "the limit itself is accepted");
}

#[tokio::test(start_paused = true)]
async fn export_returns_within_two_attempt_timeouts_and_the_longest_retry_delay_while_down() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    exporter.set_mode(Outcome::Hang);
    let timeout = Duration::from_secs(10);
    let c = common::builder(dir.path())
        .attempt_timeout(timeout)
        .immediate_retry_delay(ClientBuilder::MAX_IMMEDIATE_RETRY_DELAY)
        .build(exporter.clone())
        .expect("valid");
    let start = tokio::time::Instant::now();
    let r = c.export(payload("a")).await.expect("spooled");
    assert!(r.is_spooled());
    assert!(
        start.elapsed()
            <= timeout * 2 + ClientBuilder::MAX_IMMEDIATE_RETRY_DELAY + Duration::from_millis(50)
    );
}

#[tokio::test(start_paused = true)]
async fn an_export_future_dropped_before_its_first_poll_counts_its_payload_as_cancelled() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    let c = common::client(dir.path(), &exporter);
    // A biased `select!` whose first branch is ready never polls the export.
    tokio::select! {
        biased;
        () = std::future::ready(()) => {}
        r = c.export(payload("a")) => panic!("never polled: {r:?}"),
    }
    drop(c.export_within(payload("b"), Duration::from_secs(1)));
    drop(c.export_by(payload("c"), tokio::time::Instant::now()));
    assert_eq!(exporter.attempts(), 0);
    let s = c.stats();
    assert_eq!(s.dropped.cancelled, 3, "{s:?}");
    assert_eq!(outcomes(&s), 3, "{s:?}");
}
