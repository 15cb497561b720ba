//! A model of callers that cut `export` at random moments (a timeout around it) while the
//! backend accepts, fails, hangs or answers slowly, and flushes come and go: after every
//! step each payload handed to `export` is delivered, spooled or dropped, once; in the end
//! every payload whose export answered reaches the backend, those cut are counted
//! `cancelled`, and nothing else arrives (a cut attempt may have reached the backend before
//! its answer: at least once).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{accounted, payload, spool_dir};
use outlast_client::testing::{MemoryExporter, Outcome};
use outlast_client::{ClientStats, FlushOptions};
use outlast_spool::Durability;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    /// `export` inside a timeout of this many milliseconds (`None`: no timeout).
    Export(Option<u16>),
    /// The backend's behaviour from now on.
    Backend(u8),
    /// `force_flush` with this limit in milliseconds.
    Flush(u16),
    /// Time passes.
    Wait(u16),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => proptest::option::of(0u16..3000).prop_map(Step::Export),
        1 => (0u8..4).prop_map(Step::Backend),
        1 => (0u16..3000).prop_map(Step::Flush),
        1 => (0u16..3000).prop_map(Step::Wait),
    ]
}

fn mode(code: u8) -> Outcome {
    match code {
        0 => Outcome::Accept,
        1 => Outcome::Fail,
        2 => Outcome::Hang,
        _ => Outcome::SlowAccept(Duration::from_millis(700)),
    }
}

/// Payloads whose `export` answered: delivered, spooled, or dropped for a reason.
fn answered(s: &ClientStats) -> u64 {
    s.exported + s.spooled + s.dropped.total() - s.dropped.cancelled
}

fn run(steps: Vec<Step>, fsync: bool, live_first: bool) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        let dir = spool_dir();
        let exporter = MemoryExporter::new();
        let mut b = common::builder(dir.path())
            .attempt_timeout(Duration::from_millis(500))
            .immediate_retry_delay(Duration::from_millis(300));
        if fsync {
            b = b.durability(Durability::FsyncEveryAppend);
        }
        if live_first {
            b = b.replay_order(outlast_client::ReplayOrder::LiveFirst);
        }
        let c = b.build(exporter.clone()).expect("valid");
        let mut accepted = 0u64;
        let mut cut = 0u64;
        let mut kept = BTreeSet::new();
        let mut cut_texts = BTreeSet::new();
        for (i, step) in steps.into_iter().enumerate() {
            match step {
                Step::Export(limit) => {
                    accepted += 1;
                    let text = format!("p{i}");
                    let export = c.export(payload(&text));
                    let result = match limit {
                        Some(ms) => {
                            tokio::time::timeout(Duration::from_millis(u64::from(ms)), export).await
                        }
                        None => Ok(export.await),
                    };
                    match result {
                        Err(_) => {
                            cut += 1;
                            cut_texts.insert(text);
                        }
                        Ok(Ok(_)) => {
                            kept.insert(text);
                        }
                        Ok(Err(e)) => prop_assert!(false, "no drop expected: {e}"),
                    }
                }
                Step::Backend(code) => exporter.set_mode(mode(code)),
                Step::Flush(ms) => {
                    let _ = c.force_flush(Duration::from_millis(u64::from(ms))).await;
                }
                Step::Wait(ms) => tokio::time::sleep(Duration::from_millis(u64::from(ms))).await,
            }
            let s = c.stats();
            // An append cut in `FsyncEveryAppend` mode finishes on the blocking pool: wait
            // for it before counting.
            if fsync {
                for _ in 0..100 {
                    if s.exported + s.spooled + s.dropped.total() == accepted {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            let s = c.stats();
            prop_assert_eq!(
                s.exported + s.spooled + s.dropped.total(),
                accepted,
                "after step {}: {:?}",
                i,
                s
            );
            if !fsync {
                prop_assert_eq!(s.dropped.cancelled, cut, "{:?}", s);
            }
        }
        exporter.set_mode(Outcome::Accept);
        let report = c
            .force_flush_with(
                Duration::from_secs(3600),
                FlushOptions::new().keep_trying(true),
            )
            .await;
        prop_assert!(report.complete, "{:?}", report);
        let s = c.stats();
        prop_assert_eq!(accounted(&s), accepted, "{:?}", s);
        let received: BTreeSet<String> = common::texts(&exporter).into_iter().collect();
        prop_assert!(kept.is_subset(&received), "every answered payload arrives");
        let possible: BTreeSet<String> = kept.union(&cut_texts).cloned().collect();
        prop_assert!(received.is_subset(&possible), "nothing else arrives");
        if fsync {
            // A cut append completes on the blocking pool: spooled, not cancelled.
            prop_assert!(s.dropped.cancelled <= cut);
        } else {
            prop_assert_eq!(s.dropped.cancelled, cut);
            prop_assert_eq!(answered(&s), accepted - cut);
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn every_payload_is_counted_once_whatever_moment_its_export_is_cut(
        steps in proptest::collection::vec(step(), 1..25),
        fsync in any::<bool>(),
        live_first in any::<bool>(),
    ) {
        run(steps, fsync, live_first)?;
    }
}
