//! `outlast replay DIR --endpoint URL`: drains a spool left behind (by a dead process or
//! another host) to an endpoint, with a progress line and a JSON summary.
//!
//! Built on a [`Client`] whose spool directory is DIR: opening the spool adopts every lane
//! whose owner is gone, and `force_flush` drains them through the same code path (batches,
//! acknowledgements, backoff) a running application uses. Lanes held by a live process are
//! refused up front, before anything is opened.

use std::time::Duration;

use outlast_client::Client;
use outlast_client::http::{ENV_ENDPOINT, HttpExporterBuilder};
use serde::Serialize;
use tokio::time::Instant;

use crate::args::ReplayArgs;
use crate::console::{Console, PROGRESS_REFRESH, human_bytes, print_json_line, secs};
use crate::error::CliError;
use crate::generate::DropView;
use crate::spoolview::{locked_lane, newer_version, scan_spool};

/// Cap on the drain task's backoff during a replay: the operator is watching, so a backend
/// that comes back is noticed within seconds (the library default is 128 s).
const REPLAY_MAX_BACKOFF: Duration = Duration::from_secs(5);

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
}

/// Runs `outlast replay`.
///
/// # Errors
///
/// [`CliError::Config`] for a bad endpoint; those of [`scan_spool`];
/// [`CliError::NewerVersion`], [`CliError::Locked`], [`CliError::SpoolUnavailable`];
/// [`CliError::Incomplete`] when records remain after the timeout.
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
    let inspection = scan_spool(&args.dir)?;
    if let Some(e) = newer_version(&inspection) {
        return Err(e);
    }
    if let Some(e) = locked_lane(&inspection) {
        return Err(e);
    }
    let records = inspection.unacked_records();
    let start = Instant::now();
    console.note(&format!(
        "outlast replay: {records} record(s) ({}) in {} to {}",
        human_bytes(inspection.total_bytes()),
        args.dir.display(),
        args.endpoint
    ));

    let client = Client::builder()
        .spool_dir(&args.dir)
        .max_backoff(REPLAY_MAX_BACKOFF)
        .build(exporter)
        .map_err(|source| CliError::Config {
            context: "client configuration",
            source,
        })?;
    if !client.stats().spool_available {
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
                    s.replayed + s.exported,
                    s.dropped.total(),
                    s.spool_records,
                    human_bytes(s.pending_bytes),
                    if s.online { "online" } else { "offline" },
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
        delivered: stats.replayed + stats.exported,
        dropped: DropView::from(stats.dropped),
        remaining_records: report.remaining_records,
        remaining_bytes: report.remaining_bytes,
        complete: report.complete,
        elapsed_s: secs(start.elapsed()),
    };
    print_json_line(&summary)?;
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
