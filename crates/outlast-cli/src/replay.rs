//! `outlast replay DIR --endpoint URL`: drains a spool left behind (by a dead process or
//! another host) to an endpoint, with a progress line and a JSON summary.
//!
//! Built on a [`Client`](outlast_client::Client) whose spool directory is DIR: opening the spool adopts every lane
//! whose owner is gone, and `force_flush` drains them through the same code path (batches,
//! acknowledgements, backoff) a running application uses. Lanes held by a live process are
//! skipped (and named); the others are drained.
//!
//! Lanes of the replaying exporter's identity (its endpoint) and lanes that declare none are
//! delivered. Lanes recorded for another identity (another service's backend) are left alone
//! unless asked for: `--identity ID` (repeatable) or `--any-identity` opens the client with
//! a wider adoption rule ([`Adoption`]), so that it takes those lanes under its own locks
//! and drains them. Their identity files are never touched: no other process can take them
//! while the replay runs, and whatever is left undelivered (a timeout, Ctrl-C, a kill) is
//! still theirs.

use std::time::Duration;

use outlast_client::ClientBuilder;
use outlast_client::env;
use outlast_client::http::{ENV_ENDPOINT, HttpExporterBuilder};
use serde::Serialize;
use tokio::time::Instant;

use crate::args::ReplayArgs;
use crate::console::{Console, PROGRESS_REFRESH, human_bytes, print_json_line, secs};
use crate::error::CliError;
use crate::generate::DropView;
use crate::spoolview::{held_lanes, identity_text, locked, newer_version, scan_spool};
use outlast_client::Adoption;
use outlast_spool::identity;

/// Cap on the drain task's backoff during a replay: the operator is watching, so a backend
/// that comes back is noticed within seconds (the library default is 128 s).
const REPLAY_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The client variables a replay takes from the environment, as the application's client
/// would: the largest record the application accepted (a record stored compressed is decoded
/// up to it; one beyond it is counted `too_large`), and the replay rate caps
/// (`--replay-rate` wins over `OUTLAST_REPLAY_BYTES_PER_SEC`). The others (spool size,
/// backoff, batch sizes...) are the replay's own.
const REPLAY_CLIENT_VARS: [&str; 3] = [
    env::MAX_RECORD_BYTES,
    env::REPLAY_BYTES_PER_SEC,
    env::REPLAY_REQUESTS_PER_SEC,
];

/// Time given to the final shutdown (sync and release the spool) after the flush.
const REPLAY_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// The JSON summary of a replay.
#[derive(Debug, Serialize)]
struct ReplaySummary {
    /// Unacknowledged records found before starting.
    records: u64,
    delivered: u64,
    dropped: DropView,
    remaining_records: u64,
    remaining_bytes: u64,
    complete: bool,
    elapsed_s: f64,
    /// Lanes held by a live process: not touched.
    skipped_lanes: Vec<u32>,
    /// Lanes of another identity delivered on purpose (`--identity`, `--any-identity`).
    other_identity_lanes: Vec<u32>,
    /// Lanes no client can use as they are, and their records: left on disk, neither
    /// delivered nor dropped. `complete` is false while any are.
    stranded_lanes: usize,
    stranded_records: u64,
}

/// Runs `outlast replay`.
///
/// # Errors
///
/// [`CliError::Config`] for a bad endpoint or client variable; those of [`scan_spool`];
/// [`CliError::NewerVersion`], [`CliError::Locked`], [`CliError::SpoolUnavailable`];
/// [`CliError::Incomplete`] when records remain after the timeout; [`CliError::Stranded`]
/// when records are left on disk that no client can deliver.
pub(crate) async fn run(args: &ReplayArgs, console: &Console) -> Result<(), CliError> {
    // The endpoint comes from --endpoint; headers, timeout, gzip and CA from the same
    // OUTLAST_* variables an application would use, plus any --header.
    let vars = std::env::vars_os()
        .filter(|(k, _)| k != ENV_ENDPOINT)
        .chain(std::iter::once((
            ENV_ENDPOINT.into(),
            args.endpoint.clone().into(),
        )));
    let mut builder =
        HttpExporterBuilder::from_env_vars(vars).map_err(|source| CliError::Config {
            context: "--endpoint",
            source,
        })?;
    for (name, value) in &args.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let exporter = builder.build().map_err(|source| CliError::Config {
        context: "--header",
        source,
    })?;
    // The application's variables that shape a replay, read as its client reads them.
    let client_vars = std::env::vars_os()
        .filter(|(k, _)| REPLAY_CLIENT_VARS.iter().any(|v| k == v))
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.to_string_lossy().into_owned())));
    let mut client_builder =
        ClientBuilder::from_env_vars(client_vars).map_err(|source| CliError::Config {
            context: "environment variable",
            source,
        })?;
    if let Some(rate) = args.replay_rate {
        // The flag wins over OUTLAST_REPLAY_BYTES_PER_SEC.
        client_builder = client_builder.replay_bytes_per_sec(Some(rate));
    }
    let inspection = scan_spool(&args.dir)?;
    if let Some(e) = newer_version(&inspection) {
        return Err(e);
    }
    let skipped_lanes = skip_held_lanes(&inspection, console)?;
    let records: u64 = inspection
        .lanes
        .iter()
        .filter(|l| !skipped_lanes.contains(&l.lane))
        .map(|l| l.unacked_records())
        .sum();
    let mine = outlast_client::Exporter::identity(&exporter);
    let rule = adoption_rule(args);
    let other_identity_lanes =
        other_identity_lanes(&inspection, &skipped_lanes, mine.as_deref(), &rule, console);
    let start = Instant::now();
    console.note(&format!(
        "outlast replay: {records} record(s) ({}) in {} to {}",
        human_bytes(inspection.total_bytes()),
        args.dir.display(),
        args.endpoint
    ));

    let built = client_builder
        .spool_dir(&args.dir)
        .max_backoff(REPLAY_MAX_BACKOFF)
        .adoption(rule)
        .build(exporter);
    let client = match built {
        Ok(c) => c,
        Err(source) => {
            return Err(CliError::Config {
                context: "client configuration",
                source,
            });
        }
    };
    if !client.stats().spool_available() {
        let _ = client.shutdown(Duration::ZERO).await;
        return Err(CliError::SpoolUnavailable {
            path: args.dir.clone(),
        });
    }

    let ticker = {
        let client = client.clone();
        let console = console.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(if console.is_tty() {
                PROGRESS_REFRESH
            } else {
                crate::console::PROGRESS_LOG_EVERY
            });
            loop {
                tick.tick().await;
                let s = client.stats();
                console.progress(&format!(
                    "replay: delivered {} | dropped {} | waiting {} record(s), {} | {}",
                    s.delivered(),
                    s.dropped.total(),
                    s.spool_records,
                    human_bytes(s.pending_bytes),
                    if s.online() { "online" } else { "offline" },
                ));
            }
        })
    };
    let report = client.force_flush(args.timeout).await;
    ticker.abort();
    console.finish();
    let stats = client.stats();
    if let Err(e) = client.shutdown(REPLAY_SHUTDOWN_TIMEOUT).await {
        tracing::warn!(error = %e, "outlast replay: shutdown did not complete cleanly");
    }
    let summary = ReplaySummary {
        records,
        delivered: stats.delivered(),
        dropped: DropView::from(stats.dropped),
        remaining_records: report.remaining_records,
        remaining_bytes: report.remaining_bytes,
        complete: report.complete && stats.stranded_records == 0 && stats.stranded_lanes == 0,
        elapsed_s: secs(start.elapsed()),
        skipped_lanes,
        other_identity_lanes,
        stranded_lanes: stats.stranded_lanes,
        stranded_records: stats.stranded_records,
    };
    print_json_line(&summary)?;
    if report.complete && (stats.stranded_lanes > 0 || stats.stranded_records > 0) {
        return Err(CliError::Stranded {
            path: args.dir.clone(),
            lanes: stats.stranded_lanes,
            records: stats.stranded_records,
        });
    }
    if report.complete {
        Ok(())
    } else {
        Err(CliError::Incomplete {
            remaining_records: report.remaining_records,
            remaining_bytes: report.remaining_bytes,
            timeout_s: args.timeout.as_secs_f64(),
        })
    }
}

/// The adoption rule `--identity` and `--any-identity` ask for: every lane, or besides the
/// replaying exporter's own, lanes of the identities named and lanes of no declared
/// identity (which belong to no one in particular: the directory the operator named is
/// reason enough to deliver them).
fn adoption_rule(args: &ReplayArgs) -> Adoption {
    if args.any_identity {
        Adoption::Any
    } else {
        Adoption::Also(args.identities.clone())
    }
}

/// The free lanes of another identity that `rule` delivers on purpose, each named on the
/// console; lanes of another identity it leaves alone are named too.
fn other_identity_lanes(
    inspection: &outlast_spool::inspect::Inspection,
    held: &[u32],
    mine: Option<&str>,
    rule: &Adoption,
    console: &Console,
) -> Vec<u32> {
    let mut lanes = Vec::new();
    for l in &inspection.lanes {
        let Some(recorded) = &l.identity else {
            continue; // No identity recorded: any client adopts it anyway.
        };
        if held.contains(&l.lane) || identity::accepts(Some(recorded), mine) {
            continue;
        }
        if !identity::adoptable(Some(recorded), mine, rule) {
            console.note(&format!(
                "outlast replay: lane {} ({} record(s)) is recorded for identity {}: delivered only if that is this client's, or with --identity / --any-identity",
                l.lane,
                l.unacked_records(),
                identity_text(Some(recorded))
            ));
            continue;
        }
        console.note(&format!(
            "outlast replay: delivering lane {} of identity {} ({} record(s)) on purpose",
            l.lane,
            identity_text(Some(recorded)),
            l.unacked_records()
        ));
        lanes.push(l.lane);
    }
    lanes
}

/// The lanes held by a live process, each named on the console: replay leaves them to
/// their owner. Refuses ([`CliError::Locked`]) only when every lane is held.
fn skip_held_lanes(
    inspection: &outlast_spool::inspect::Inspection,
    console: &Console,
) -> Result<Vec<u32>, CliError> {
    let held = held_lanes(inspection);
    if let Some(first) = held.first()
        && held.len() == inspection.lanes.len()
    {
        return Err(locked(inspection, first));
    }
    for l in &held {
        console.note(&format!(
            "outlast replay: skipping lane {} ({} record(s)): held by a live process{}, which drains it itself",
            l.lane,
            l.unacked_records(),
            crate::spoolview::lock_owner(&l.path.join("lock"))
                .map(|p| format!(" (pid {p})"))
                .unwrap_or_default()
        ));
    }
    Ok(held.iter().map(|l| l.lane).collect())
}
