//! `outlast gen`: a load generator. Exports payloads with unique keys through the full
//! pipeline (`Client` + `HttpExporter`) from concurrent callers, optionally paced, and
//! reports outcomes, the latency each caller saw, wall time and peak memory as JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use outlast_client::http::HttpExporter;
use outlast_client::{Client, Delivery, DropCounts, Payload};
use serde::Serialize;
use tokio::time::Instant;

use crate::args::GenArgs;
use crate::console::{peak_rss_bytes, print_json_line, secs};
use crate::error::CliError;

/// Drops by reason, as JSON.
#[derive(Debug, Serialize, Default, Clone, Copy)]
pub(crate) struct DropView {
    pub(crate) total: u64,
    pub(crate) spool_full: u64,
    pub(crate) permanent: u64,
    pub(crate) spool_unavailable: u64,
    pub(crate) shut_down: u64,
    pub(crate) too_large: u64,
    pub(crate) expired: u64,
    pub(crate) evicted: u64,
    pub(crate) corrupt: u64,
    pub(crate) cancelled: u64,
}

impl From<DropCounts> for DropView {
    fn from(d: DropCounts) -> DropView {
        DropView {
            total: d.total(),
            spool_full: d.spool_full,
            permanent: d.permanent,
            spool_unavailable: d.spool_unavailable,
            shut_down: d.shut_down,
            too_large: d.too_large,
            expired: d.expired,
            evicted: d.evicted,
            corrupt: d.corrupt,
            cancelled: d.cancelled,
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Serialize, Default, PartialEq, Eq)]
pub(crate) struct Latency {
    p50: u64,
    p99: u64,
    max: u64,
}

impl Latency {
    /// Percentiles of `samples` (nearest rank); sorts them.
    pub(crate) fn of(samples: &mut [u64]) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let rank = |q: f64| {
            // Nearest-rank percentile: ceil(q * n), 1-based.
            let n = samples.len();
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let r = ((q * n as f64).ceil() as usize).clamp(1, n);
            samples[r - 1]
        };
        Latency {
            p50: rank(0.50),
            p99: rank(0.99),
            max: samples[samples.len() - 1],
        }
    }
}

/// What the flush at the end achieved.
#[derive(Debug, Serialize)]
struct FlushView {
    complete: bool,
    delivered: u64,
    remaining_records: u64,
    remaining_bytes: u64,
    elapsed_s: f64,
}

/// The JSON summary of `gen`. `delivered + spooled + dropped.total == sent`.
#[derive(Debug, Serialize)]
struct GenSummary {
    sent: u64,
    /// `export` answered delivered.
    delivered: u64,
    /// `export` answered spooled.
    spooled: u64,
    /// `export` answered dropped, by reason.
    dropped: DropView,
    latency_us: Latency,
    wall_s: f64,
    rate_per_s: f64,
    peak_rss_bytes: Option<u64>,
    /// Spooled payloads the drain task delivered before the end.
    replayed: u64,
    /// The final `force_flush` (with `--flush-timeout`).
    flush: Option<FlushView>,
    /// Records still in the spool at the end.
    remaining_records: u64,
    spool_dir: PathBuf,
    spool_kept: bool,
}

/// What one caller counted.
#[derive(Debug, Default)]
struct Tally {
    delivered: u64,
    spooled: u64,
    dropped: BTreeMap<&'static str, u64>,
    latencies_us: Vec<u64>,
}

/// Runs `outlast gen`.
///
/// # Errors
///
/// [`CliError::Config`] for a bad endpoint, [`CliError::Io`] if no temporary spool can be
/// created or stdout cannot be written.
pub(crate) async fn run(args: &GenArgs) -> Result<(), CliError> {
    let size = usize::try_from(args.size).map_err(|_| CliError::InvalidArgument {
        arg: "--size",
        reason: "too large for this machine".into(),
    })?;
    let exporter = HttpExporter::builder(args.endpoint.as_str())
        .build()
        .map_err(|source| CliError::Config {
            context: "--endpoint",
            source,
        })?;
    let (spool_dir, temp) = crate::console::spool_dir_or_temp(
        args.spool.as_ref(),
        "outlast-gen-",
        "creating a temporary spool directory",
    )?;
    let client = Client::builder()
        .spool_dir(&spool_dir)
        .build(exporter)
        .map_err(|source| CliError::Config {
            context: "client configuration",
            source,
        })?;

    let run_id = format!(
        "{:x}-{:x}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    let body = bytes_of(size);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let client = client.clone();
        let next = Arc::clone(&next);
        let body = body.clone();
        let run_id = run_id.clone();
        let (count, rate) = (args.count, args.rate);
        workers.spawn(async move {
            let mut tally = Tally::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                if let Some(rate) = rate {
                    let due = crate::console::due(start, i, rate);
                    tokio::time::sleep_until(due).await;
                }
                let payload =
                    Payload::new(body.bytes().clone()).with_key(format!("gen-{run_id}-{i}"));
                let t0 = Instant::now();
                let result = client.export(payload).await;
                let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                tally.latencies_us.push(us);
                match result {
                    Ok(Delivery::Delivered) => tally.delivered += 1,
                    Ok(Delivery::Spooled) => tally.spooled += 1,
                    Err(e) => *tally.dropped.entry(e.reason().as_str()).or_insert(0) += 1,
                }
            }
            tally
        });
    }
    let mut total = Tally::default();
    while let Some(joined) = workers.join_next().await {
        // A worker only ends by finishing its loop; a join error would be a bug in a worker.
        let Ok(t) = joined else { continue };
        total.delivered += t.delivered;
        total.spooled += t.spooled;
        for (k, v) in t.dropped {
            *total.dropped.entry(k).or_insert(0) += v;
        }
        total.latencies_us.extend(t.latencies_us);
    }
    let wall = start.elapsed();
    let sent = total.latencies_us.len() as u64;

    let flush = match args.flush_timeout {
        Some(d) => {
            let r = client.force_flush(d).await;
            Some(FlushView {
                complete: r.complete,
                delivered: r.delivered,
                remaining_records: r.remaining_records,
                remaining_bytes: r.remaining_bytes,
                elapsed_s: secs(r.elapsed),
            })
        }
        None => None,
    };
    let stats = client.stats();
    if let Err(e) = client.shutdown(Duration::ZERO).await {
        tracing::warn!(error = %e, "outlast gen: shutdown did not complete cleanly");
    }
    let dropped = dropped_view(&total.dropped);
    let summary = GenSummary {
        sent,
        delivered: total.delivered,
        spooled: total.spooled,
        dropped,
        latency_us: Latency::of(&mut total.latencies_us),
        wall_s: secs(wall),
        rate_per_s: if wall.is_zero() {
            0.0
        } else {
            (sent as f64 / wall.as_secs_f64() * 10.0).round() / 10.0
        },
        peak_rss_bytes: peak_rss_bytes(),
        replayed: stats.replayed,
        flush,
        remaining_records: stats.spool_records,
        spool_dir: spool_dir.clone(),
        spool_kept: temp.is_none() || stats.spool_records > 0,
    };
    let left = stats.spool_records;
    match temp {
        // Undelivered records are never deleted: the temporary spool stays, and says so.
        Some(t) if left > 0 => {
            let _ = t.keep();
        }
        Some(t) => {
            if let Err(e) = t.close() {
                tracing::warn!(error = %e, "outlast gen: could not remove the temporary spool");
            }
        }
        None => {}
    }
    print_json_line(&summary)?;
    if left > 0 {
        return Err(CliError::LeftBehind {
            path: spool_dir,
            records: left,
        });
    }
    Ok(())
}

/// Drops counted by the callers, by the reason's label.
fn dropped_view(by_reason: &BTreeMap<&'static str, u64>) -> DropView {
    let get = |k: &str| by_reason.get(k).copied().unwrap_or(0);
    DropView {
        total: by_reason.values().sum(),
        spool_full: get("spool_full"),
        permanent: get("permanent"),
        spool_unavailable: get("spool_unavailable"),
        shut_down: get("shut_down"),
        too_large: get("too_large"),
        expired: get("expired"),
        evicted: get("evicted"),
        corrupt: get("corrupt"),
        cancelled: get("cancelled"),
    }
}

/// A template payload of `size` bytes of printable filler; every payload shares its bytes.
pub(crate) fn bytes_of(size: usize) -> Payload {
    let filler: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    Payload::new(filler)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentiles_use_nearest_rank() {
        let mut s: Vec<u64> = (1..=100).collect();
        assert_eq!(
            Latency::of(&mut s),
            Latency {
                p50: 50,
                p99: 99,
                max: 100
            }
        );
        assert_eq!(Latency::of(&mut []), Latency::default());
        let mut one = vec![7];
        assert_eq!(
            Latency::of(&mut one),
            Latency {
                p50: 7,
                p99: 7,
                max: 7
            }
        );
    }
}
