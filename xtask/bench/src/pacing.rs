//! Row group 13: recovery that serves the present and spares the collector. Fresh-record
//! delivery time during a drain, live-first against oldest-first (13a); the replay rate cap
//! honoured, against an uncapped replay (13b, 13c); several replaying clients into one
//! rate-limited receiver, uncapped against capped per client (13d).
//!
//! Each measurement starts its own loopback `TestReceiver` (recording keys, sizes and
//! arrival times) so that its mode and its log belong to that run alone.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use outlast_client::http::HttpExporter;
use outlast_client::testing::{Mode, Recording, TestReceiver};
use outlast_client::{Client, FlushOutcome, Payload, ReplayOrder};

use crate::measure::{Cell, Collector, KIB, MIB, SideSpec, Unit, quantile, size};
use crate::report::{Row, Target};
use crate::rows::Ctx;

/// Record size of every backlog in this group.
const RECORD: u64 = 16 * KIB;
/// Size of a fresh (live) payload in 13a.
const LIVE_RECORD: usize = 1024;
/// How often a fresh payload is exported during the drain in 13a.
const LIVE_EVERY: Duration = Duration::from_millis(20);
/// 13a's receiver: a backend of fixed throughput.
const PACED_RATE: u64 = 20_000_000;
/// 13b/13c's cap.
const CAP: u64 = 5_000_000;
/// 13d's receiver: 429 above this many bytes per second.
const FLEET_RATE: u64 = 10_000_000;
/// 13d: the clients replaying at once.
const FLEET: usize = 4;
/// 13d's Retry-After.
const FLEET_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Bound of every flush here.
const FLUSH: Duration = Duration::from_secs(600);

const SECS: (&str, Unit) = ("seconds", Unit::Seconds);

fn progress(msg: &str) {
    eprintln!("[bench] {msg}");
}

/// Row group 13.
pub(crate) fn group_pacing(ctx: &Ctx<'_>) -> Vec<Row> {
    let mut rows = vec![fresh_delivery_row(ctx)];
    rows.extend(rate_cap_rows(ctx));
    rows.push(fleet_row(ctx));
    rows
}

/// A receiver recording keys, sizes and arrival times, down until switched.
async fn receiver() -> anyhow::Result<TestReceiver> {
    TestReceiver::builder()
        .recording(Recording::KeysAndSizes)
        .mode(Mode::Down)
        .start()
        .await
        .context("starting the receiver")
}

/// A client on `dir` sending one payload per request to `rcv` (no merging: each replay
/// request is one 16 KiB record), with the given order and cap.
fn client(
    rcv: &TestReceiver,
    dir: &Path,
    order: ReplayOrder,
    cap: Option<u64>,
) -> anyhow::Result<Client> {
    let exporter = HttpExporter::builder(rcv.url())
        .build()
        .context("building the HTTP exporter")?;
    Client::builder()
        .spool_dir(dir)
        .immediate_retry_delay(Duration::ZERO)
        .spool_max_bytes(2048 * MIB)
        .replay_order(order)
        .replay_bytes_per_sec(cap)
        .build(exporter)
        .context("building the client")
}

/// Spools `count` records keyed `<prefix><i>` while the receiver is down, then syncs the
/// spool with a flush that ends offline (as a service's flush during the outage would).
async fn spool_backlog(c: &Client, prefix: &str, count: u64, body: &Bytes) -> anyhow::Result<()> {
    for i in 0..count {
        let p = Payload::new(body.clone()).with_key(format!("{prefix}{i}"));
        let d = c
            .export(p)
            .await
            .map_err(|e| anyhow::anyhow!("export dropped: {}", e.reason()))?;
        anyhow::ensure!(d.is_spooled(), "export {i} during the outage was {d:?}");
    }
    let offline = c.force_flush(FLUSH).await;
    anyhow::ensure!(
        offline.outcome == FlushOutcome::Offline,
        "the flush during the outage did not end offline: {offline:?}"
    );
    Ok(())
}

/// Arrival time of the first accepted request carrying each key.
fn arrivals(rcv: &TestReceiver) -> std::collections::HashMap<String, Instant> {
    let mut out = std::collections::HashMap::new();
    for r in rcv.received() {
        if r.answer.is_accepted() {
            for k in r.keys {
                out.entry(k).or_insert(r.received_at);
            }
        }
    }
    out
}

/// 13a: p99 and p50 of the time from `export` to arrival of fresh payloads exported while a
/// backlog drains into a receiver of fixed throughput.
fn fresh_delivery_row(ctx: &Ctx<'_>) -> Row {
    let backlog = ctx.plan.volume_bytes.max(64 * MIB);
    let count = backlog / RECORD;
    progress(&format!(
        "row 13a: fresh payloads during the drain of {}",
        size(backlog)
    ));
    let figs = [("p99", Unit::Seconds), ("p50", Unit::Seconds), SECS];
    let mut live = Collector::new(SideSpec::new("live-first", &figs));
    let mut oldest = Collector::new(SideSpec::new("oldest-first", &figs));
    for _ in 0..ctx.plan.reps {
        for (side, order) in [
            (&mut live, ReplayOrder::LiveFirst),
            (&mut oldest, ReplayOrder::OldestFirst),
        ] {
            side.run(|| {
                let d = ctx.fresh_dir("pacing-fresh")?;
                let r = ctx.rt.block_on(fresh_delivery(&d, order, count));
                std::fs::remove_dir_all(&d).context("cleaning the spool")?;
                r
            });
        }
    }
    Row::new(
        "13a",
        "Fresh-record delivery time during a drain, live-first vs oldest-first",
        format!(
            "{count} × {} records spooled during an outage; the receiver comes back as a pipe of {} MB/s (requests pass one after the other); from the moment the client sees it answer, a {} payload is exported every {} ms until the backlog is gone; time from `export` to the payload's arrival (p99, p50) and the drain's length",
            size(RECORD),
            PACED_RATE / 1_000_000,
            size(LIVE_RECORD as u64),
            LIVE_EVERY.as_millis()
        ),
        live.finish(),
        oldest.finish(),
        Target::AtMost {
            max: 0.1,
            unit: Unit::Seconds,
            note: Some("p99, median of runs".into()),
        },
    )
}

async fn fresh_delivery(dir: &Path, order: ReplayOrder, count: u64) -> anyhow::Result<Vec<f64>> {
    let rcv = receiver().await?;
    let c = client(&rcv, dir, order, None)?;
    let body = crate::ol::otlp_like(usize::try_from(RECORD)?, 13);
    spool_backlog(&c, "b", count, &body).await?;
    rcv.set_mode(Mode::Paced {
        bytes_per_sec: PACED_RATE,
    })
    .await
    .context("switching the receiver")?;
    let start = Instant::now();
    let flush = {
        let c = c.clone();
        tokio::spawn(async move { c.force_flush(FLUSH).await })
    };
    // Fresh payloads count from the moment the client has seen the backend answer.
    while !c.stats().online() {
        anyhow::ensure!(start.elapsed() < FLUSH, "the backend never answered");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let live_body = Bytes::from(vec![b'l'; LIVE_RECORD]);
    let mut exported = Vec::new();
    let mut tick = tokio::time::interval(LIVE_EVERY);
    while c.stats().backlog {
        tick.tick().await;
        let key = format!("l{}", exported.len());
        let at = Instant::now();
        let _delivered_or_spooled = c
            .export(Payload::new(live_body.clone()).with_key(key.clone()))
            .await
            .map_err(|e| anyhow::anyhow!("fresh export dropped: {}", e.reason()))?;
        exported.push((key, at));
    }
    let report = flush.await.context("the flush task")?;
    let drained = start.elapsed();
    let tail = c.force_flush(FLUSH).await;
    anyhow::ensure!(
        report.complete || tail.complete,
        "flush incomplete: {tail:?}"
    );
    let _ = c.shutdown(Duration::from_secs(5)).await;
    let arrived = arrivals(&rcv);
    let missing = (0..count)
        .filter(|i| !arrived.contains_key(&format!("b{i}")))
        .count();
    anyhow::ensure!(missing == 0, "{missing} backlog record(s) never arrived");
    let mut delays = Vec::with_capacity(exported.len());
    for (key, at) in &exported {
        let got = arrived
            .get(key)
            .with_context(|| format!("fresh payload {key} never arrived"))?;
        delays.push(got.saturating_duration_since(*at).as_secs_f64());
    }
    anyhow::ensure!(!delays.is_empty(), "the drain ended before a fresh export");
    delays.sort_by(f64::total_cmp);
    Ok(vec![
        quantile(&delays, 0.99),
        quantile(&delays, 0.5),
        drained.as_secs_f64(),
    ])
}

/// 13b and 13c: the highest rate over any one-second window, and the mean over the drain,
/// of a replay capped at [`CAP`] into a fast receiver; the reference is the same replay
/// without a cap.
fn rate_cap_rows(ctx: &Ctx<'_>) -> Vec<Row> {
    let backlog = ctx.plan.volume_bytes.min(64 * MIB);
    let count = backlog / RECORD;
    progress(&format!(
        "row 13b/13c: a {} replay capped at {} MB/s",
        size(backlog),
        CAP / 1_000_000
    ));
    let figs = [("max 1 s window", Unit::MbPerSec), ("mean", Unit::MbPerSec)];
    let mut capped = Collector::new(SideSpec::new("replay capped at 5 MB/s", &figs));
    let mut free = Collector::new(SideSpec::new("replay without a cap", &figs));
    for _ in 0..ctx.plan.reps {
        for (side, cap) in [(&mut capped, Some(CAP)), (&mut free, None)] {
            side.run(|| {
                let d = ctx.fresh_dir("pacing-cap")?;
                let r = ctx.rt.block_on(capped_replay(&d, cap, count));
                std::fs::remove_dir_all(&d).context("cleaning the spool")?;
                r
            });
        }
    }
    let capped = capped.finish();
    let free = free.finish();
    let workload = format!(
        "{count} × {} records spooled during an outage, replayed into a loopback receiver that answers at once; payload bytes by arrival time at the receiver",
        size(RECORD)
    );
    let mean_cell = |c: &Cell| match c {
        Cell::Measured { name, figures } => Cell::Measured {
            name: name.clone(),
            figures: figures.iter().rev().cloned().collect(),
        },
        other => other.clone(),
    };
    vec![
        Row::new(
            "13b",
            "Replay rate cap: highest rate over any 1-second window",
            workload.clone(),
            capped.clone(),
            free.clone(),
            Target::AtMost {
                max: 1.1 * CAP as f64 / 1e6,
                unit: Unit::MbPerSec,
                note: Some("1.1 × the cap".into()),
            },
        ),
        Row::new(
            "13c",
            "Replay rate cap: mean rate over the drain",
            workload,
            mean_cell(&capped),
            mean_cell(&free),
            Target::AtLeast {
                min: 0.9 * CAP as f64 / 1e6,
                unit: Unit::MbPerSec,
            },
        ),
    ]
}

async fn capped_replay(dir: &Path, cap: Option<u64>, count: u64) -> anyhow::Result<Vec<f64>> {
    let rcv = receiver().await?;
    let c = client(&rcv, dir, ReplayOrder::OldestFirst, cap)?;
    let body = crate::ol::otlp_like(usize::try_from(RECORD)?, 14);
    spool_backlog(&c, "b", count, &body).await?;
    rcv.set_mode(Mode::Up)
        .await
        .context("switching the receiver")?;
    let report = c.force_flush(FLUSH).await;
    anyhow::ensure!(report.complete, "flush incomplete: {report:?}");
    let _ = c.shutdown(Duration::from_secs(5)).await;
    let mut seen = std::collections::HashSet::new();
    let mut at: Vec<(Instant, u64)> = rcv
        .received()
        .into_iter()
        .filter(|r| r.answer.is_accepted())
        .map(|r| {
            for k in &r.keys {
                seen.insert(k.clone());
            }
            (r.received_at, r.body_len)
        })
        .collect();
    anyhow::ensure!(
        seen.len() as u64 == count,
        "{} of {count} arrived",
        seen.len()
    );
    at.sort_by_key(|(t, _)| *t);
    let (max, mean) = window_rates(&at);
    Ok(vec![max / 1e6, mean / 1e6])
}

/// The highest byte rate over any one-second window starting at an arrival, and the mean
/// from the first arrival to the last (both in bytes per second).
fn window_rates(at: &[(Instant, u64)]) -> (f64, f64) {
    let (Some(first), Some(last)) = (at.first(), at.last()) else {
        return (0.0, 0.0);
    };
    let mut max = 0u64;
    let mut end = 0;
    let mut in_window = 0u64;
    for (i, (t, _)) in at.iter().enumerate() {
        while end < at.len() && at[end].0 < *t + Duration::from_secs(1) {
            in_window += at[end].1;
            end += 1;
        }
        max = max.max(in_window);
        in_window -= at[i].1;
    }
    let total: u64 = at.iter().map(|(_, n)| n).sum();
    let span = last.0.duration_since(first.0).as_secs_f64();
    let mean = if span > 0.0 { total as f64 / span } else { 0.0 };
    (max as f64, mean)
}

/// 13d: [`FLEET`] clients with spooled backlogs replay at once into a receiver answering
/// 429 + Retry-After above [`FLEET_RATE`]; uncapped against each capped at a share of it.
fn fleet_row(ctx: &Ctx<'_>) -> Row {
    let per_client = ctx.plan.volume_bytes.min(32 * MIB);
    let count = per_client / RECORD;
    progress(&format!(
        "row 13d: {FLEET} replayers of {} each into a receiver limited to {} MB/s",
        size(per_client),
        FLEET_RATE / 1_000_000
    ));
    let figs = [
        ("offered", Unit::MbPerSec),
        ("accepted", Unit::MbPerSec),
        ("429 answers", Unit::RecordsPerSec),
        SECS,
    ];
    let mut free = Collector::new(SideSpec::new("4 replayers, no cap (429s pace them)", &figs));
    let mut capped = Collector::new(SideSpec::new(
        "4 replayers capped at a quarter of the receiver's rate each",
        &figs,
    ));
    let share = FLEET_RATE / FLEET as u64;
    for _ in 0..ctx.plan.reps {
        for (side, cap) in [(&mut free, None), (&mut capped, Some(share))] {
            side.run(|| {
                let d = ctx.fresh_dir("pacing-fleet")?;
                let r = ctx.rt.block_on(fleet(&d, cap, count));
                std::fs::remove_dir_all(&d).context("cleaning the spools")?;
                r
            });
        }
    }
    Row::new(
        "13d",
        "Many replayers into a rate-limited receiver: load offered to it",
        format!(
            "{FLEET} clients (each with its own spool and drain task, in one process) with {count} × {} records spooled each replay at once into a receiver answering 429 with Retry-After: {} s above {} MB/s per one-second window; offered = all request bytes the receiver read per second of the drain, accepted = those it took; every key checked to arrive; then the 429 answers per second",
            size(RECORD),
            FLEET_RETRY_AFTER.as_secs(),
            FLEET_RATE / 1_000_000
        ),
        free.finish(),
        capped.finish(),
        Target::AtMost {
            max: 1.1 * FLEET_RATE as f64 / 1e6,
            unit: Unit::MbPerSec,
            note: Some("offered load, 1.1 × the receiver's rate".into()),
        },
    )
}

async fn fleet(dir: &Path, cap: Option<u64>, count: u64) -> anyhow::Result<Vec<f64>> {
    let rcv = Arc::new(receiver().await?);
    let body = crate::ol::otlp_like(usize::try_from(RECORD)?, 15);
    let mut clients = Vec::new();
    for j in 0..FLEET {
        let d = dir.join(format!("client-{j}"));
        std::fs::create_dir_all(&d).context("a client's spool directory")?;
        let c = client(&rcv, &d, ReplayOrder::OldestFirst, cap)?;
        spool_backlog(&c, &format!("c{j}-"), count, &body).await?;
        clients.push(c);
    }
    rcv.set_mode(Mode::RateLimited {
        bytes_per_sec: FLEET_RATE,
        retry_after: Some(FLEET_RETRY_AFTER),
    })
    .await
    .context("switching the receiver")?;
    let start = Instant::now();
    let flushes: Vec<_> = clients
        .iter()
        .map(|c| {
            let c = c.clone();
            tokio::spawn(async move { c.force_flush(FLUSH).await })
        })
        .collect();
    for f in flushes {
        let report = f.await.context("a flush task")?;
        anyhow::ensure!(report.complete, "flush incomplete: {report:?}");
    }
    let elapsed = start.elapsed().as_secs_f64();
    for c in &clients {
        let _ = c.shutdown(Duration::from_secs(5)).await;
    }
    let received = rcv.received();
    let offered: u64 = received.iter().map(|r| r.body_len).sum();
    let accepted: u64 = received
        .iter()
        .filter(|r| r.answer.is_accepted())
        .map(|r| r.body_len)
        .sum();
    let refused = received.iter().filter(|r| !r.answer.is_accepted()).count();
    let unique = rcv.unique_keys().len() as u64;
    anyhow::ensure!(
        unique == count * FLEET as u64,
        "lost: {unique} of {} keys arrived",
        count * FLEET as u64
    );
    Ok(vec![
        offered as f64 / 1e6 / elapsed,
        accepted as f64 / 1e6 / elapsed,
        refused as f64 / elapsed,
        elapsed,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_rates_find_the_busiest_second_and_the_mean() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let at = [
            (ms(0), 100),
            (ms(500), 100),
            (ms(900), 300),
            (ms(1500), 100),
            (ms(2000), 0),
        ];
        let (max, mean) = window_rates(&at);
        assert_eq!(max, 500.0, "0..1 s holds 100 + 100 + 300");
        assert_eq!(mean, 300.0, "600 bytes over 2 s");
        assert_eq!(window_rates(&[]), (0.0, 0.0));
    }
}
