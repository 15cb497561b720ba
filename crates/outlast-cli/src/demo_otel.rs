//! `outlast demo --otel`: spans emitted through the real OpenTelemetry SDK (its batch span
//! processor) into an outlast-otel `Pipeline`, across an outage of a loopback collector and a
//! restart of the pipeline on the same spool root in the middle of the outage. The collector
//! decodes every OTLP/protobuf request and counts span ids; the summary's `lost` is the set of
//! spans emitted that it never got.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_sdk::trace::SdkTracer;
use outlast_client::Client;
use outlast_client::testing::{Mode, TestReceiver};
use outlast_otel::{Pipeline, PipelineFlush};
use prost::Message as _;
use serde::Serialize;
use tokio::time::Instant;

use crate::args::DemoArgs;
use crate::console::{Console, print_json_line, secs};
use crate::error::CliError;

/// Time limit of one request to the loopback collector.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time the shutdown of the first pipeline (the "restart") may take; what it cannot deliver
/// stays on disk for the next pipeline.
const RESTART_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);
/// Time the final flush may take: far more than a loopback replay needs, and bounded.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);
/// Time the final shutdown may take.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);
/// The collector goes down once this fraction of the spans has been emitted.
const OUTAGE_AFTER_FRACTION: u64 = 5;
/// Name of the tracer (instrumentation scope) of the demo's spans.
const TRACER_NAME: &str = "outlast-demo";

/// The final summary line, in this field order.
#[derive(Debug, Serialize)]
struct OtelSummary {
    /// Spans started and ended through the SDK.
    spans_emitted: u64,
    /// Distinct emitted span ids the collector accepted at least once.
    spans_received: u64,
    /// Spans emitted that the collector never got.
    lost: u64,
    /// Spans the collector accepted more than once.
    duplicates: u64,
    /// Requests left on disk by the first pipeline when it was shut down mid-outage.
    left_on_disk_at_restart: u64,
    elapsed_s: f64,
}

/// Runs `outlast demo --otel`.
///
/// # Errors
///
/// [`CliError::Receiver`] if the loopback collector cannot start or switch modes;
/// [`CliError::Config`] if a pipeline cannot be built (a spool that cannot be opened);
/// [`CliError::Io`] for the temporary directory or stdout; [`CliError::Lost`] if any
/// emitted span never reached the collector.
pub(crate) async fn run(args: &DemoArgs, console: &Console) -> Result<(), CliError> {
    let (root, temp) = crate::console::spool_dir_or_temp(
        args.spool_dir.as_ref(),
        "outlast-demo-otel-",
        "creating a temporary spool root",
    )?;
    let receiver = TestReceiver::start().await?;
    console.note(&format!(
        "outlast demo --otel: {} spans at {}/s (about {:.0}s) through the OpenTelemetry SDK's batch span processor and outlast-otel to a collector on {}",
        args.count,
        args.rate,
        args.count as f64 / args.rate,
        receiver.url()
    ));
    console.note(&format!(
        "  spool root: {}{}",
        root.display(),
        if temp.is_some() {
            " (temporary, removed at the end)"
        } else {
            ""
        }
    ));
    console.note(&format!(
        "  the collector goes down for {:.1}s after 1/{OUTAGE_AFTER_FRACTION} of the spans; half-way through the outage the pipeline is shut down and a new one is built on the same spool root; the collector decodes OTLP and counts span ids",
        args.outage.as_secs_f64()
    ));

    let result = drive(args, &root, &receiver).await;
    console.finish();
    receiver.shutdown().await;
    crate::console::remove_temp(temp, "spool root");
    let summary = result?;
    print_json_line(&summary)?;
    if summary.lost > 0 {
        return Err(CliError::Lost { lost: summary.lost });
    }
    Ok(())
}

/// A pipeline of traces to `receiver` with its spools under `root`, with demo settings.
fn build_pipeline(receiver: &TestReceiver, root: &Path) -> Result<Pipeline, CliError> {
    let client = Client::builder()
        .attempt_timeout(ATTEMPT_TIMEOUT)
        .immediate_retry_delay(Duration::from_millis(200))
        .initial_backoff(Duration::from_millis(500))
        .max_backoff(Duration::from_secs(2))
        .warn_interval(Duration::from_secs(5));
    Pipeline::builder()
        .endpoint(receiver.url())
        .spool_root(root)
        .client(client)
        .request_timeout(ATTEMPT_TIMEOUT)
        .build()
        .map_err(|source| CliError::Config {
            context: "demo pipeline",
            source,
        })
}

/// What happens next in the demo's timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Collector up, waiting for 1/5 of the spans.
    BeforeOutage,
    /// Collector down since the instant; the pipeline is restarted half-way.
    Down(Instant),
    /// Collector down, the pipeline was restarted; it comes up at the end of the outage.
    Restarted(Instant),
    /// Collector up again.
    After,
}

/// Emits, takes the collector down, restarts the pipeline, brings the collector back,
/// flushes, and counts.
async fn drive(
    args: &DemoArgs,
    root: &Path,
    receiver: &TestReceiver,
) -> Result<OtelSummary, CliError> {
    let start = Instant::now();
    let mut otel = build_pipeline(receiver, root)?;
    let mut tracer = tracer_of(&otel)?;
    let mut emitted: Vec<String> = Vec::new();
    let mut phase = Phase::BeforeOutage;
    let mut left_at_restart = 0;
    let outage_after = (args.count / OUTAGE_AFTER_FRACTION).max(1);
    let half = args.outage / 2;

    for i in 0..args.count {
        tokio::time::sleep_until(crate::console::due(start, i, args.rate)).await;
        if phase == Phase::BeforeOutage && i >= outage_after {
            tracing::info!(
                "demo: collector DOWN for {:.1}s (connections refused)",
                args.outage.as_secs_f64()
            );
            receiver.set_mode(Mode::Down).await?;
            phase = Phase::Down(Instant::now());
        }
        if let Some(next) = advance(phase, half, args.outage) {
            (phase, otel, tracer, left_at_restart) =
                step(next, phase, otel, tracer, left_at_restart, receiver, root).await?;
        }
        let mut span = tracer.start(format!("demo-op-{i}"));
        span.set_attribute(opentelemetry::KeyValue::new("i", i as i64));
        emitted.push(span.span_context().span_id().to_string());
        span.end();
    }
    // The rest of the timeline, if the spans ended before it.
    loop {
        let due = match phase {
            Phase::BeforeOutage | Phase::After => break,
            Phase::Down(at) => at.checked_add(half),
            Phase::Restarted(at) => at.checked_add(args.outage),
        };
        if let Some(due) = due {
            tokio::time::sleep_until(due).await;
        }
        let next = advance(phase, half, args.outage).unwrap_or(Phase::After);
        (phase, otel, tracer, left_at_restart) =
            step(next, phase, otel, tracer, left_at_restart, receiver, root).await?;
    }
    drop(tracer);

    tracing::info!(
        "demo: every span emitted; force_flush (up to {}s) hands the SDK's queue to outlast and delivers the spool",
        FLUSH_TIMEOUT.as_secs()
    );
    let flush = otel.force_flush(FLUSH_TIMEOUT).await;
    if !flush.complete {
        tracing::warn!(
            remaining_records = flush.remaining_records(),
            "demo: force_flush timed out with requests still in the spool"
        );
    }
    let stats = otel.stats();
    let report = otel.shutdown(SHUTDOWN_TIMEOUT).await;
    if !report.complete {
        tracing::warn!(
            remaining_records = report.remaining_records(),
            "demo: shutdown left requests in the spool"
        );
    }
    if let Some(t) = stats.traces {
        tracing::info!(
            requests_accepted = t.requests_accepted,
            items_accepted = t.items_accepted,
            items_dropped = t.items_dropped,
            "demo: outlast-otel's trace exporter"
        );
    }

    let (arrivals, undecodable) = received_span_ids(receiver);
    if undecodable > 0 {
        tracing::warn!(
            undecodable,
            "demo: the collector accepted request(s) that are not OTLP trace requests"
        );
    }
    let arrived: HashSet<&String> = arrivals.iter().collect();
    let emitted_set: HashSet<&String> = emitted.iter().collect();
    let received = emitted_set.intersection(&arrived).count() as u64;
    let lost = emitted_set.difference(&arrived).count() as u64;
    let duplicates = (arrivals.len() - arrived.len()) as u64;
    Ok(OtelSummary {
        spans_emitted: emitted.len() as u64,
        spans_received: received,
        lost,
        duplicates,
        left_on_disk_at_restart: left_at_restart,
        elapsed_s: secs(start.elapsed()),
    })
}

/// The phase the timeline has reached now, if it moved on from `phase`.
fn advance(phase: Phase, half: Duration, outage: Duration) -> Option<Phase> {
    let now = Instant::now();
    let passed = |at: Instant, d: Duration| at.checked_add(d).is_none_or(|t| now >= t);
    match phase {
        Phase::Down(at) if passed(at, half) => Some(Phase::Restarted(at)),
        Phase::Restarted(at) if passed(at, outage) => Some(Phase::After),
        _ => None,
    }
}

/// Carries out the move from `phase` to `next`: the restart of the pipeline, or the end of
/// the outage.
async fn step(
    next: Phase,
    phase: Phase,
    otel: Pipeline,
    tracer: SdkTracer,
    left_at_restart: u64,
    receiver: &TestReceiver,
    root: &Path,
) -> Result<(Phase, Pipeline, SdkTracer, u64), CliError> {
    match next {
        Phase::Restarted(_) => {
            drop(tracer);
            let report: PipelineFlush = otel.shutdown(RESTART_SHUTDOWN_TIMEOUT).await;
            let left = report.remaining_records();
            drop(otel);
            tracing::info!(
                left_on_disk = left,
                sdk_flushed = report.sdk_flushed,
                "demo: pipeline SHUT DOWN mid-outage; a new one starts on the same spool root"
            );
            let otel = build_pipeline(receiver, root)?;
            let tracer = tracer_of(&otel)?;
            Ok((next, otel, tracer, left))
        }
        Phase::After => {
            receiver.set_mode(Mode::Up).await?;
            tracing::info!("demo: collector UP again");
            Ok((next, otel, tracer, left_at_restart))
        }
        Phase::BeforeOutage | Phase::Down(_) => Ok((phase, otel, tracer, left_at_restart)),
    }
}

/// The demo's tracer on `otel`'s tracer provider.
fn tracer_of(otel: &Pipeline) -> Result<SdkTracer, CliError> {
    let provider = otel.tracer_provider().ok_or(CliError::InvalidArgument {
        arg: "--otel",
        reason: "this build of outlast-otel has no traces".into(),
    })?;
    Ok(provider.tracer(TRACER_NAME))
}

/// The span ids (hex) of every span in the trace requests the collector accepted, once per
/// arrival, and how many accepted requests were not OTLP trace requests.
fn received_span_ids(receiver: &TestReceiver) -> (Vec<String>, u64) {
    let mut ids = Vec::new();
    let mut undecodable = 0;
    for r in receiver.received() {
        if !r.answer.is_accepted() || r.path != "/v1/traces" {
            continue;
        }
        let Ok(Some(body)) = r.decoded_body() else {
            undecodable += 1;
            continue;
        };
        let Ok(req) = ExportTraceServiceRequest::decode(&body[..]) else {
            undecodable += 1;
            continue;
        };
        ids.extend(
            req.resource_spans
                .into_iter()
                .flat_map(|r| r.scope_spans)
                .flat_map(|s| s.spans)
                .map(|s| hex(&s.span_id)),
        );
    }
    (ids, undecodable)
}

/// Lower-case hex of `bytes`, as `SpanId`'s `Display` writes it.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
