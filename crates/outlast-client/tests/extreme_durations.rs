//! Every duration a caller can hand the client's async methods, from zero to
//! `Duration::MAX` ("no limit"), is accepted without a panic, with paused time.

mod common;

use std::time::Duration;

use common::{payload, spool_dir};
use outlast_client::Client;
use outlast_client::testing::{MemoryExporter, Outcome};
use proptest::prelude::*;

/// The durations every case covers, besides the random ones.
const EDGES: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_nanos(1),
    Duration::from_millis(800),
    Duration::MAX,
];

/// Exports, flushes and shuts down with `d` as every time limit, against a backend that
/// fails, hangs, fails again and then accepts (so a flush without limit ends). Returns what
/// was delivered plus what stayed in the spool, which must be everything exported.
fn exercise(d: Duration) -> (u64, u64) {
    exercise_with(d, None)
}

/// As [`exercise`], with live-first replay and a replay rate cap of `cap` bytes and
/// requests per second when given (a flush without limit then completes only if the cap
/// lets the records through in time, so completion is asserted only for the largest cap).
fn exercise_with(d: Duration, cap: Option<u64>) -> (u64, u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        let dir = spool_dir();
        let exporter = MemoryExporter::new();
        exporter.push_outcomes([Outcome::Fail, Outcome::Hang, Outcome::Fail, Outcome::Fail]);
        let mut b = Client::builder().spool_dir(dir.path()).jitter(0.0);
        if let Some(cap) = cap {
            b = b
                .replay_order(outlast_client::ReplayOrder::LiveFirst)
                .replay_bytes_per_sec(Some(cap))
                .replay_requests_per_sec(Some(cap));
        }
        let c = b.build(exporter.clone()).expect("valid configuration");
        let mut accepted = 0;
        for i in 0..3 {
            if c.export_within(payload(&format!("p{i}")), d).await.is_ok() {
                accepted += 1;
            }
        }
        let flushed = c.force_flush(d).await;
        if d == Duration::MAX && cap.is_none_or(|c| c == u64::MAX) {
            assert!(flushed.complete, "{flushed:?}");
        }
        let report = c.shutdown(d).await.expect("shutdown");
        let delivered = exporter.received().len() as u64;
        assert_eq!(delivered + report.remaining_records, accepted, "{report:?}");
        (accepted, delivered)
    })
}

#[test]
fn the_edge_durations_never_panic_and_lose_nothing() {
    for d in EDGES {
        let (accepted, delivered) = exercise(d);
        assert_eq!(accepted, 3, "{d:?}");
        if d == Duration::MAX {
            assert_eq!(delivered, 3);
        }
    }
}

#[test]
fn the_edge_durations_with_live_first_and_the_extreme_rate_caps_never_panic_and_lose_nothing() {
    for cap in [1, u64::MAX] {
        for d in EDGES {
            let (accepted, delivered) = exercise_with(d, Some(cap));
            assert_eq!(accepted, 3, "{d:?}, cap {cap}");
            if d == Duration::MAX && cap == u64::MAX {
                assert_eq!(delivered, 3);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn any_duration_never_panics_and_loses_nothing(nanos in any::<u64>(), secs in any::<u64>()) {
        let d = Duration::new(secs, u32::try_from(nanos % 1_000_000_000).unwrap_or(0));
        let (accepted, _) = exercise(d);
        prop_assert_eq!(accepted, 3);
    }
}

/// Builds a client with `d` as every duration setting (or learns that `build` refuses it
/// with a clear error), then exports, flushes and shuts down within a second each against a
/// backend that refuses, then accepts.
fn exercise_settings(d: Duration) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        let dir = spool_dir();
        let backend = common::Backend::new(common::BackendMode::Refusing);
        let built = Client::builder()
            .spool_dir(dir.path())
            .attempt_timeout(d)
            .immediate_retry_delay(d)
            .initial_backoff(d)
            .max_backoff(d)
            .max_retry_after(d)
            .warn_interval(d)
            .probe_interval(d)
            .batch_delay(d)
            .max_record_age(Some(d))
            .build(backend.clone());
        let c = match built {
            Ok(c) => c,
            Err(e) => {
                assert!(!e.to_string().is_empty());
                return;
            }
        };
        let second = Duration::from_secs(1);
        let accepted = c.export_within(payload("a"), second).await.is_ok();
        backend.set_mode(common::BackendMode::Up);
        let _ = c.force_flush(second).await;
        let report = c.shutdown(second).await.expect("shutdown");
        let s = c.stats();
        assert_eq!(
            u64::from(accepted),
            s.exported + s.replayed + report.remaining_records + s.dropped.total(),
            "{s:?} {report:?}"
        );
    });
}

#[test]
fn every_duration_setting_at_its_edges_is_used_or_refused_without_a_panic() {
    for d in EDGES {
        exercise_settings(d);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn any_duration_setting_is_used_or_refused_without_a_panic(secs in any::<u64>(), nanos in 0u32..1_000_000_000) {
        exercise_settings(Duration::new(secs, nanos));
    }
}
