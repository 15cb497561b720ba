//! Noticing a backend's return, with paused time: the probe watches a backend that is
//! unreachable at the transport level every `probe_interval`, whatever the outage's length,
//! while a backend that answers with failures is only retried on the backoff and
//! `Retry-After`.

mod common;

use std::time::Duration;

use common::{Backend, BackendMode, builder, payload, spool_dir};
use outlast_client::{BackendState, Client};
use tokio::time::Instant;

/// Spools one record through a failed direct export.
async fn spool_one(c: &Client) {
    assert!(c.export(payload("a")).await.expect("spooled").is_spooled());
}

/// Sleeps in small steps until `done` or `limit`; the virtual time it took.
async fn until(limit: Duration, done: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !done() && start.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

#[tokio::test(start_paused = true)]
async fn recovery_is_noticed_within_the_probe_interval_after_outages_of_2_s_2_min_and_20_min() {
    for outage in [
        Duration::from_secs(2),
        Duration::from_secs(120),
        Duration::from_secs(1200),
    ] {
        let dir = spool_dir();
        let backend = Backend::new(BackendMode::Refusing);
        // Default jitter: the probe runs every 0.5 to 1 s.
        let c = Client::builder()
            .spool_dir(dir.path())
            .build(backend.clone())
            .expect("valid");
        spool_one(&c).await;
        tokio::time::sleep(outage).await;
        assert_eq!(c.stats().backend, BackendState::Unreachable);
        assert_eq!(
            backend.attempts().len(),
            2,
            "only the direct attempt and its quick retry: the probe watches"
        );

        backend.set_mode(BackendMode::Up);
        let back = Instant::now();
        let took = until(Duration::from_secs(10), || !backend.received().is_empty()).await;
        assert_eq!(backend.received(), ["a"], "after {outage:?}");
        let first = backend.attempts()[2];
        assert!(
            first - back <= outlast_client::ClientBuilder::DEFAULT_PROBE_INTERVAL,
            "first delivery {:?} after the return of a backend down for {outage:?} ({took:?})",
            first - back
        );
        assert!(c.stats().online());
        // The probe ran on its own cadence, not the backoff's (which reaches 128 s).
        let probes = backend.probes().len() as f64;
        assert!(
            probes >= outage.as_secs_f64() * 0.9,
            "{probes} probes in {outage:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_probe_interval_is_a_setting() {
    let dir = spool_dir();
    let backend = Backend::new(BackendMode::Refusing);
    let c = builder(dir.path())
        .probe_interval(Duration::from_millis(250))
        .build(backend.clone())
        .expect("valid");
    spool_one(&c).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    backend.set_mode(BackendMode::Up);
    let back = Instant::now();
    until(Duration::from_secs(5), || !backend.received().is_empty()).await;
    let first = backend.attempts()[2];
    assert!(
        first - back <= Duration::from_millis(250),
        "{:?}",
        first - back
    );
}

#[tokio::test(start_paused = true)]
async fn no_attempts_faster_than_the_backoff_while_the_backend_answers_503() {
    let dir = spool_dir();
    let backend = Backend::new(BackendMode::Failing(None));
    let c = builder(dir.path()).build(backend.clone()).expect("valid");
    spool_one(&c).await;
    assert_eq!(
        backend.attempts().len(),
        2,
        "the direct attempt and its quick retry"
    );
    let spilled = Instant::now();
    tokio::time::sleep(Duration::from_secs(1 + 2 + 4 + 8 + 16) + Duration::from_millis(500)).await;
    assert_eq!(c.stats().backend, BackendState::Failing);
    let drain: Vec<Duration> = backend.attempts()[2..]
        .iter()
        .map(|t| *t - spilled)
        .collect();
    let expected: Vec<Duration> = [1, 3, 7, 15, 31].map(Duration::from_secs).to_vec();
    assert_eq!(drain.len(), expected.len(), "{drain:?}");
    for (at, want) in drain.iter().zip(&expected) {
        assert!(
            *at >= *want && *at <= *want + Duration::from_millis(50),
            "{drain:?}"
        );
    }
    // The TCP probe proves nothing here: it is asked no more often than the attempts.
    assert!(
        backend.probes().len() <= drain.len(),
        "{:?}",
        backend.probes()
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_obeyed_while_the_backend_answers_429() {
    let dir = spool_dir();
    let backend = Backend::new(BackendMode::Failing(Some(Duration::from_secs(30))));
    let c = builder(dir.path()).build(backend.clone()).expect("valid");
    // The server asks for more than the quick retry's delay: spooled at once.
    spool_one(&c).await;
    assert_eq!(backend.attempts().len(), 1);
    let spilled = Instant::now();
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert_eq!(backend.attempts().len(), 1, "nothing before Retry-After");
    tokio::time::sleep(Duration::from_secs(62)).await;
    let drain: Vec<Duration> = backend.attempts()[1..]
        .iter()
        .map(|t| *t - spilled)
        .collect();
    assert_eq!(drain.len(), 3, "{drain:?}");
    for (at, want) in drain.iter().zip([30, 60, 90]) {
        let want = Duration::from_secs(want);
        assert!(
            *at >= want && *at <= want + Duration::from_millis(50),
            "{drain:?}"
        );
    }
    backend.set_mode(BackendMode::Up);
    let report = c.force_flush(Duration::from_secs(1)).await;
    assert!(report.complete, "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_accepts_connections_and_never_answers_is_not_flooded_by_probe_led_replays()
{
    let dir = spool_dir();
    let backend = Backend::new(BackendMode::Hanging);
    let c = builder(dir.path())
        .attempt_timeout(Duration::from_secs(2))
        .build(backend.clone())
        .expect("valid");
    spool_one(&c).await;
    assert_eq!(backend.attempts().len(), 2);
    tokio::time::sleep(Duration::from_secs(300)).await;
    // One probe-led replay may find out that the probe's word is worthless; after that the
    // attempts follow the backoff (1, 2, 4, ... 128 s, each plus a 2 s timeout).
    let drain = backend.attempts().len() - 2;
    assert!(
        drain <= 9,
        "{drain} attempts in 5 minutes: {:?}",
        backend.attempts()
    );
}

#[test]
fn the_probe_interval_comes_from_the_environment_and_zero_is_refused_naming_the_variable() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let _guard = rt.enter();
    let dir = spool_dir();
    let vars = |v: &str| [("OUTLAST_PROBE_INTERVAL".to_string(), v.to_string())];
    let ok = outlast_client::ClientBuilder::from_env_vars(vars("250ms")).expect("parsed");
    assert!(
        ok.spool_dir(dir.path())
            .build(Backend::new(BackendMode::Up))
            .is_ok()
    );
    let zero = outlast_client::ClientBuilder::from_env_vars(vars("0s")).expect("parsed");
    match zero
        .spool_dir(dir.path())
        .build(Backend::new(BackendMode::Up))
    {
        Err(outlast_client::ConfigError::Invalid { param, .. }) => {
            assert_eq!(param, "OUTLAST_PROBE_INTERVAL");
        }
        other => panic!("a zero probe interval was not refused: {other:?}"),
    }
}
