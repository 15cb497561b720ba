//! `outlast demo`: what outlast does, in one command. An embedded loopback receiver, a stream
//! of keyed payloads exported through the real pipeline (`Client` + `HttpExporter`), an
//! outage of the receiver in the middle, a live progress line, the library's own
//! rate-limited warnings, and a JSON summary in which `lost` is counted by the receiver.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use outlast_client::http::HttpExporter;
use outlast_client::testing::{Mode, Recording, TestReceiver};
use outlast_client::{Client, Delivery, Payload};
use serde::Serialize;
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;

use crate::args::DemoArgs;
use crate::console::{
    Console, PROGRESS_LOG_EVERY, PROGRESS_REFRESH, human_bytes, print_json_line, secs,
};
use crate::error::CliError;
use crate::generate::bytes_of;

/// Least time between two "currently retrying" warnings in the demo: short, so that a
/// 10 s outage shows the warning more than once (the library default is 60 s).
const DEMO_WARN_INTERVAL: Duration = Duration::from_secs(5);
/// Cap on the drain task's backoff in the demo: the receiver's return is noticed within about
/// 2 s (the library default is 128 s, right for production, too long to watch).
const DEMO_MAX_BACKOFF: Duration = Duration::from_secs(2);
/// First backoff delay in the demo (default 1 s): a little quicker to start probing.
const DEMO_INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// Time limit of one export attempt in the demo: the receiver is on loopback, so 2 s is
/// generous (the library default is 10 s).
const DEMO_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time the final `force_flush` may take: far more than a loopback replay of the default
/// run needs, and bounded so the demo always ends.
const DEMO_FLUSH_TIMEOUT: Duration = Duration::from_secs(30);
/// Exports under way at once, like concurrent request handlers of a service.
const DEMO_CONCURRENCY: usize = 64;
/// The receiver goes down once this fraction of the payloads has been sent.
const OUTAGE_AFTER_FRACTION: u64 = 5;
/// Time given to the client's shutdown at the end.
const DEMO_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// The final summary line, in this field order.
#[derive(Debug, Serialize)]
struct DemoSummary {
    sent: u64,
    /// Keys sent that the receiver accepted at least once.
    delivered: u64,
    /// `export` calls answered "spooled".
    spooled: u64,
    /// `export` calls answered "dropped" (any reason).
    dropped: u64,
    /// Keys accepted by the client (delivered or spooled) that the receiver never got.
    lost: u64,
    /// Requests the receiver accepted for a key it had already accepted.
    duplicates: u64,
    elapsed_s: f64,
}

/// What the export tasks counted.
#[derive(Debug, Default)]
struct Outcomes {
    sent: AtomicU64,
    delivered: AtomicU64,
    spooled: AtomicU64,
    dropped: AtomicU64,
}

/// Runs `outlast demo`.
///
/// # Errors
///
/// [`CliError::Receiver`] if the loopback receiver cannot start or switch modes;
/// [`CliError::Io`] for the temporary directory or stdout; [`CliError::Lost`] if any payload
/// the client accepted never reached the receiver.
pub(crate) async fn run(args: &DemoArgs, console: &Console) -> Result<(), CliError> {
    if args.otel {
        return crate::demo_otel::run(args, console).await;
    }
    let size = usize::try_from(args.size).map_err(|_| CliError::InvalidArgument {
        arg: "--size",
        reason: "too large for this machine".into(),
    })?;
    let (spool_dir, temp) = crate::console::spool_dir_or_temp(
        args.spool_dir.as_ref(),
        "outlast-demo-",
        "creating a temporary spool directory",
    )?;
    let receiver = Arc::new(
        TestReceiver::builder()
            .recording(Recording::KeysAndSizes)
            .start()
            .await?,
    );
    let exporter = HttpExporter::builder(receiver.url())
        .timeout(DEMO_ATTEMPT_TIMEOUT)
        .build()
        .map_err(|source| CliError::Config {
            context: "demo exporter",
            source,
        })?;
    let client = Client::builder()
        .spool_dir(&spool_dir)
        .warn_interval(DEMO_WARN_INTERVAL)
        .initial_backoff(DEMO_INITIAL_BACKOFF)
        .max_backoff(DEMO_MAX_BACKOFF)
        .attempt_timeout(DEMO_ATTEMPT_TIMEOUT)
        .replay_order(args.order)
        .replay_bytes_per_sec(args.replay_rate)
        .build(exporter)
        .map_err(|source| CliError::Config {
            context: "demo client",
            source,
        })?;

    intro(args, &receiver, &spool_dir, temp.is_some(), console);
    let result = drive(args, size, &client, &receiver, console).await;
    console.finish();
    if let Err(e) = client.shutdown(DEMO_SHUTDOWN_TIMEOUT).await {
        tracing::warn!(error = %e, "demo: client shutdown did not complete cleanly");
    }
    receiver.shutdown().await;
    crate::console::remove_temp(temp, "spool");
    let summary = result?;
    print_json_line(&summary)?;
    if summary.lost > 0 {
        return Err(CliError::Lost { lost: summary.lost });
    }
    Ok(())
}

fn intro(
    args: &DemoArgs,
    receiver: &TestReceiver,
    spool_dir: &std::path::Path,
    temp: bool,
    console: &Console,
) {
    let secs_sending = args.count as f64 / args.rate;
    console.note(&format!(
        "outlast demo: {} payloads of {} at {}/s (about {:.0}s) to a receiver on {}",
        args.count,
        human_bytes(args.size),
        args.rate,
        secs_sending,
        receiver.url()
    ));
    console.note(&format!(
        "  spool: {}{}",
        spool_dir.display(),
        if temp {
            " (temporary, removed at the end)"
        } else {
            ""
        }
    ));
    console.note(&format!(
        "  the receiver goes down for {:.1}s after 1/{OUTAGE_AFTER_FRACTION} of the payloads; each payload has a unique key, and the receiver counts what arrives",
        args.outage.as_secs_f64()
    ));
    console.note(&format!(
        "  demo settings: warnings at most every {}s (default 60s), backoff {}ms..{}s (default 1s..128s), attempt timeout {}s (default 10s)",
        DEMO_WARN_INTERVAL.as_secs(),
        DEMO_INITIAL_BACKOFF.as_millis(),
        DEMO_MAX_BACKOFF.as_secs(),
        DEMO_ATTEMPT_TIMEOUT.as_secs()
    ));
    console.note(&format!(
        "  replay: {}, {}",
        args.order,
        args.replay_rate.map_or_else(
            || "no rate cap".to_owned(),
            |r| format!("capped at {}/s", human_bytes(r))
        )
    ));
}

/// Sends, takes the receiver down and up, flushes, and counts.
async fn drive(
    args: &DemoArgs,
    size: usize,
    client: &Client,
    receiver: &Arc<TestReceiver>,
    console: &Console,
) -> Result<DemoSummary, CliError> {
    let start = Instant::now();
    let outcomes = Arc::new(Outcomes::default());
    let dropped_keys = Arc::new(Mutex::new(Vec::<u64>::new()));

    let ticker = tokio::spawn(progress(
        client.clone(),
        Arc::clone(receiver),
        Arc::clone(&outcomes),
        args.count,
        console.clone(),
    ));
    let outage = tokio::spawn(outage(
        Arc::clone(receiver),
        Arc::clone(&outcomes),
        (args.count / OUTAGE_AFTER_FRACTION).max(1),
        args.outage,
    ));

    let body = bytes_of(size);
    let permits = Arc::new(Semaphore::new(DEMO_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.count {
        tokio::time::sleep_until(crate::console::due(start, i, args.rate)).await;
        // The semaphore is never closed, so acquiring only fails if it were.
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break;
        };
        let client = client.clone();
        let outcomes = Arc::clone(&outcomes);
        let dropped_keys = Arc::clone(&dropped_keys);
        let payload = Payload::new(body.bytes().clone()).with_key(key(i));
        outcomes.sent.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(async move {
            match client.export(payload).await {
                Ok(Delivery::Delivered) => outcomes.delivered.fetch_add(1, Ordering::Relaxed),
                Ok(Delivery::Spooled) => outcomes.spooled.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    tracing::error!(
                        key = i,
                        reason = e.reason().as_str(),
                        "demo: export dropped a payload"
                    );
                    dropped_keys.lock().await.push(i);
                    outcomes.dropped.fetch_add(1, Ordering::Relaxed)
                }
            };
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    // The outage task only ends after bringing the receiver back (or failing to).
    let outage_result = outage.await;
    let outage_result = match outage_result {
        Ok(r) => r,
        Err(_) => Ok(()),
    };
    if let Err(e) = outage_result {
        ticker.abort();
        return Err(e);
    }

    tracing::info!(
        "demo: every payload handed to the client; force_flush (up to {}s) delivers the rest",
        DEMO_FLUSH_TIMEOUT.as_secs()
    );
    let report = client.force_flush(DEMO_FLUSH_TIMEOUT).await;
    ticker.abort();
    console.finish();
    if !report.complete {
        tracing::warn!(
            remaining_records = report.remaining_records,
            "demo: force_flush timed out with records still in the spool"
        );
    }

    let sent = outcomes.sent.load(Ordering::Relaxed);
    let received: HashSet<String> = receiver.unique_keys().into_iter().collect();
    let dropped: HashSet<u64> = dropped_keys.lock().await.iter().copied().collect();
    let delivered = (0..sent).filter(|i| received.contains(&key(*i))).count() as u64;
    let lost = (0..sent)
        .filter(|i| !dropped.contains(i) && !received.contains(&key(*i)))
        .count() as u64;
    let stats = client.stats();
    console.note(&format!(
        "demo: the client answered delivered {} / spooled {} / dropped {}; the drain task replayed {}; the receiver got {} request(s), {} distinct key(s), {} duplicate(s) (delivery is at least once: a payload whose answer was cut off by the outage is sent again)",
        outcomes.delivered.load(Ordering::Relaxed),
        outcomes.spooled.load(Ordering::Relaxed),
        outcomes.dropped.load(Ordering::Relaxed),
        stats.replayed,
        receiver.request_count(),
        received.len(),
        receiver.duplicates()
    ));
    Ok(DemoSummary {
        sent,
        delivered,
        spooled: outcomes.spooled.load(Ordering::Relaxed),
        dropped: outcomes.dropped.load(Ordering::Relaxed),
        lost,
        duplicates: receiver.duplicates(),
        elapsed_s: secs(start.elapsed()),
    })
}

/// The key of payload `i`.
fn key(i: u64) -> String {
    format!("demo-{i}")
}

/// Takes the receiver down once `after` payloads were sent, for `outage`, then brings it back.
async fn outage(
    receiver: Arc<TestReceiver>,
    outcomes: Arc<Outcomes>,
    after: u64,
    outage: Duration,
) -> Result<(), CliError> {
    while outcomes.sent.load(Ordering::Relaxed) < after {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(
        "demo: receiver DOWN for {:.1}s (connections refused)",
        outage.as_secs_f64()
    );
    receiver.set_mode(Mode::Down).await?;
    tokio::time::sleep(outage).await;
    receiver.set_mode(Mode::Up).await?;
    tracing::info!("demo: receiver UP again");
    Ok(())
}

/// Redraws the progress line until aborted.
async fn progress(
    client: Client,
    receiver: Arc<TestReceiver>,
    outcomes: Arc<Outcomes>,
    count: u64,
    console: Console,
) {
    let period = if console.is_tty() {
        PROGRESS_REFRESH
    } else {
        PROGRESS_LOG_EVERY
    };
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let s = client.stats();
        let receiver_state = if receiver.mode() == Mode::Down {
            "down"
        } else {
            "up"
        };
        let drain = match (s.drain_rate, s.drain_time_left) {
            (0, _) => String::new(),
            (rate, left) => format!(
                " draining {}/s{}",
                human_bytes(rate),
                left.map_or_else(String::new, |d| format!(", {:.1}s left", d.as_secs_f64()))
            ),
        };
        console.progress(&format!(
            "sent {}/{count} | delivered {} | spooled {} | backlog {} rec, {}{drain} | {} | receiver {receiver_state}",
            outcomes.sent.load(Ordering::Relaxed),
            s.delivered(),
            s.spooled,
            s.spool_records,
            human_bytes(s.pending_bytes),
            if s.online() { "online" } else { "OFFLINE" },
        ));
    }
}
