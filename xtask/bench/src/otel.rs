//! Row group 11, the OpenTelemetry bridge: spans through the SDK's batch span processor into
//! outlast-otel beside the same into opentelemetry-otlp's own OTLP/HTTP exporter (reqwest's
//! blocking client, default retry), with the same batch settings and the same kind of
//! loopback receiver, which decodes every request and counts spans.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter,
};
use outlast_client::testing::{Mode, Recording, TestReceiver};

use crate::measure::{Collector, SideSpec, Unit};
use crate::report::{Row, Target};
use crate::rows::Ctx;

/// Spans per exported batch on both sides (the SDK's default).
const BATCH: usize = 512;
/// Spans emitted per second during the outage row.
const OUTAGE_RATE: u64 = 2000;
/// Spool bytes of spans the backlog row's child holds (row 11c).
const BACKLOG_BYTES: u64 = 256 * crate::measure::MIB;
/// Bytes of the text attribute each span of the backlog row carries, so that the backlog
/// is built in seconds; pseudo-random letters, which compress about as well as ids do.
const BACKLOG_ATTR_LEN: usize = 1024;
/// Spans the backlog child emits between two flushes of the SDK's queue (within its
/// default queue of 2048, so that the SDK drops none).
const BACKLOG_BURST: usize = 2048;

/// Which exporter a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Outlast,
    Otlp,
}

/// Times every `export` call of the wrapped exporter (the cost the SDK's thread pays),
/// except the first one (during an outage, the one that finds the collector down).
#[derive(Debug)]
struct Timed<E> {
    inner: E,
    nanos: Arc<AtomicU64>,
    spans: Arc<AtomicU64>,
    calls: AtomicU64,
}

impl<E: SpanExporter> SpanExporter for Timed<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let started = Instant::now();
        let got = self.inner.export(batch).await;
        let spent = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if self.calls.fetch_add(1, Ordering::Relaxed) > 0 {
            self.nanos.fetch_add(spent, Ordering::Relaxed);
            self.spans.fetch_add(n, Ordering::Relaxed);
        }
        got
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// A provider on `side` to `receiver`, its spools (outlast side) under `root`; with the
/// export time and span counters of its exporter.
struct Provider {
    provider: SdkTracerProvider,
    pipeline: Option<outlast_otel::Pipeline>,
    nanos: Arc<AtomicU64>,
    spans: Arc<AtomicU64>,
}

fn provider(
    ctx: &Ctx<'_>,
    side: Side,
    receiver: &TestReceiver,
    root: &std::path::Path,
    queue: usize,
) -> anyhow::Result<Provider> {
    let nanos = Arc::new(AtomicU64::new(0));
    let spans = Arc::new(AtomicU64::new(0));
    let config = BatchConfigBuilder::default()
        .with_max_export_batch_size(BATCH)
        .with_max_queue_size(queue)
        .with_scheduled_delay(Duration::from_millis(100))
        .build();
    let (processor, pipeline) = match side {
        Side::Outlast => {
            let _rt = ctx.rt.enter();
            let pipeline = outlast_otel::Pipeline::builder()
                .endpoint(receiver.url())
                .spool_root(root)
                .build()
                .context("building the outlast-otel pipeline")?;
            let exporter = pipeline
                .span_exporter()
                .context("outlast-otel built without traces")?;
            let timed = Timed {
                inner: exporter,
                nanos: nanos.clone(),
                spans: spans.clone(),
                calls: AtomicU64::new(0),
            };
            (
                BatchSpanProcessor::builder(timed)
                    .with_batch_config(config)
                    .build(),
                Some(pipeline),
            )
        }
        Side::Otlp => {
            use opentelemetry_otlp::WithExportConfig as _;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(format!("{}v1/traces", receiver.url()))
                .with_timeout(Duration::from_secs(10))
                .build()
                .context("building the opentelemetry-otlp exporter")?;
            let timed = Timed {
                inner: exporter,
                nanos: nanos.clone(),
                spans: spans.clone(),
                calls: AtomicU64::new(0),
            };
            (
                BatchSpanProcessor::builder(timed)
                    .with_batch_config(config)
                    .build(),
                None,
            )
        }
    };
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .build();
    Ok(Provider {
        provider,
        pipeline,
        nanos,
        spans,
    })
}

/// Spans in the accepted trace requests `receiver` got.
fn spans_received(receiver: &TestReceiver) -> u64 {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;
    receiver
        .received()
        .into_iter()
        .filter(|r| r.answer.is_accepted() && r.path == "/v1/traces")
        .filter_map(|r| r.decoded_body().ok().flatten())
        .filter_map(|b| ExportTraceServiceRequest::decode(&b[..]).ok())
        .flat_map(|req| req.resource_spans)
        .flat_map(|r| r.scope_spans)
        .map(|s| s.spans.len() as u64)
        .sum()
}

fn start_receiver(ctx: &Ctx<'_>, mode: Mode) -> anyhow::Result<TestReceiver> {
    ctx.rt
        .block_on(
            TestReceiver::builder()
                .recording(Recording::Full)
                .mode(mode)
                .start(),
        )
        .context("starting the receiver")
}

/// Happy path: `n` spans emitted as fast as possible, then flushed; spans delivered per
/// second, from the first span to the last delivered.
fn happy(ctx: &Ctx<'_>, side: Side, n: u64) -> anyhow::Result<Vec<f64>> {
    let receiver = start_receiver(ctx, Mode::Up)?;
    let root = ctx.fresh_dir("otel-happy")?;
    let queue = usize::try_from(n).unwrap_or(usize::MAX);
    let p = provider(ctx, side, &receiver, &root, queue)?;
    let tracer = p.provider.tracer("bench");
    let started = Instant::now();
    for _ in 0..n {
        tracer.start("op").end();
    }
    let emitted_in = started.elapsed();
    p.provider.force_flush().ok();
    let flushed_in = started.elapsed();
    let deadline = started + Duration::from_secs(300);
    while spans_received(&receiver) < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = started.elapsed();
    eprintln!(
        "  {side:?}: emitted in {emitted_in:?}, SDK flushed in {flushed_in:?}, all received in {elapsed:?}"
    );
    let got = spans_received(&receiver);
    let _ = p.provider.shutdown();
    if let Some(pl) = &p.pipeline {
        ctx.rt.block_on(pl.shutdown(Duration::from_secs(5)));
    }
    std::fs::remove_dir_all(&root).context("cleaning the spool")?;
    anyhow::ensure!(got >= n, "only {got} of {n} spans arrived");
    Ok(vec![n as f64 / elapsed.as_secs_f64().max(1e-9)])
}

/// What the outage run of one side found.
#[derive(Debug, Clone, Copy)]
struct OutageResult {
    emitted: u64,
    delivered: u64,
    per_span_us: f64,
}

/// Outage: spans emitted at [`OUTAGE_RATE`] for `outage` with the collector down; then the
/// process ends, the collector comes back and a new process starts (outlast: on the same
/// spool root, as after a redeploy).
fn outage(ctx: &Ctx<'_>, side: Side, outage: Duration) -> anyhow::Result<OutageResult> {
    let receiver = start_receiver(ctx, Mode::Down)?;
    let root = ctx.fresh_dir("otel-outage")?;
    let emitted = {
        let p = provider(ctx, side, &receiver, &root, 1 << 16)?;
        let tracer = p.provider.tracer("bench");
        let started = Instant::now();
        let mut emitted = 0u64;
        while started.elapsed() < outage {
            tracer.start("op").end();
            emitted += 1;
            let due = started + Duration::from_secs_f64(emitted as f64 / OUTAGE_RATE as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        // The process ends: its SDK hands over what it holds (bounded), then it is gone.
        let _ = p.provider.shutdown_with_timeout(Duration::from_secs(5));
        if let Some(pl) = &p.pipeline {
            ctx.rt.block_on(pl.shutdown(Duration::from_secs(1)));
        }
        let spans = p.spans.load(Ordering::Relaxed).max(1);
        let per_span_us = p.nanos.load(Ordering::Relaxed) as f64 / 1e3 / spans as f64;
        (emitted, per_span_us)
    };
    let (emitted, per_span_us) = emitted;
    // The collector is back; the next process starts on the same spool root.
    ctx.rt
        .block_on(receiver.set_mode(Mode::Up))
        .context("receiver comes up")?;
    if side == Side::Outlast {
        let _rt = ctx.rt.enter();
        let pl = outlast_otel::Pipeline::builder()
            .endpoint(receiver.url())
            .spool_root(&root)
            .build()
            .context("building the next process's pipeline")?;
        ctx.rt.block_on(pl.force_flush(Duration::from_secs(120)));
        ctx.rt.block_on(pl.shutdown(Duration::from_secs(5)));
    }
    let delivered = spans_received(&receiver);
    std::fs::remove_dir_all(&root).context("cleaning the spool")?;
    Ok(OutageResult {
        emitted,
        delivered,
        per_span_us,
    })
}

/// Row 11c, in a child process: spans through the SDK's batch span processor (its default
/// queue, batches of [`BATCH`]) into outlast-otel while the collector at `url` is down,
/// until the traces spool holds `bytes`; then says `result <peak rss> <spool bytes> <spans>`
/// (peak RSS is this process's `VmHWM`, so the harness's own allocations do not count).
///
/// # Errors
///
/// The pipeline cannot be built, the SDK's flush fails, or `VmHWM` cannot be read.
pub(crate) fn child_backlog(url: &str, dir: &std::path::Path, bytes: u64) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the runtime")?;
    let pipeline = {
        let _rt = rt.enter();
        outlast_otel::Pipeline::builder()
            .endpoint(url)
            .spool_root(dir)
            .build()
            .context("building the outlast-otel pipeline")?
    };
    let exporter = pipeline
        .span_exporter()
        .context("outlast-otel built without traces")?;
    let config = BatchConfigBuilder::default()
        .with_max_export_batch_size(BATCH)
        .with_scheduled_delay(Duration::from_millis(100))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(config)
                .build(),
        )
        .build();
    let tracer = provider.tracer("bench");
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut spans = 0u64;
    let held = |p: &outlast_otel::Pipeline| p.stats().traces.map_or(0, |t| t.client.pending_bytes);
    let deadline = Instant::now() + Duration::from_secs(600);
    while held(&pipeline) < bytes {
        if let Some(t) = pipeline.stats().traces
            && t.requests_dropped > 0
        {
            anyhow::bail!(
                "outlast-otel dropped {} request(s): {:?}; spool {} of {} bytes",
                t.requests_dropped,
                t.client.dropped,
                t.client.spool_bytes,
                t.client.spool_max_bytes
            );
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the spool did not reach {bytes} bytes within 600 s"
        );
        for _ in 0..BACKLOG_BURST {
            let text: String = (0..BACKLOG_ATTR_LEN)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    char::from(b'a' + (state % 26) as u8)
                })
                .collect();
            let mut span = tracer.start("op");
            span.set_attribute(opentelemetry::KeyValue::new("payload", text));
            span.end();
        }
        spans += BACKLOG_BURST as u64;
        provider
            .force_flush()
            .map_err(|e| anyhow::anyhow!("SDK flush: {e}"))?;
    }
    let peak = crate::machine::peak_rss_bytes().context("reading VmHWM")?;
    crate::childproc::say(&format!("result {peak} {} {spans}", held(&pipeline)));
    let _ = provider.shutdown_with_timeout(Duration::from_secs(1));
    rt.block_on(pipeline.shutdown(Duration::from_secs(1)));
    Ok(())
}

/// Row 11c: the peak RSS of a child process holding a [`BACKLOG_BYTES`] backlog of spans
/// in outlast-otel's spool; one sample (MiB).
fn backlog_rss(ctx: &Ctx<'_>) -> anyhow::Result<Vec<f64>> {
    let receiver = start_receiver(ctx, Mode::Down)?;
    let root = ctx.fresh_dir("otel-backlog")?;
    let mut c = crate::childproc::ChildProc::spawn(&[
        "otel-backlog".into(),
        "--url".into(),
        receiver.url(),
        "--dir".into(),
        root.display().to_string(),
        "--bytes".into(),
        BACKLOG_BYTES.to_string(),
    ])?;
    let line = c.expect("result")?;
    c.wait()?;
    let mut words = line.split_whitespace().map(str::parse::<u64>);
    let peak = words.next().context("no peak RSS")?.context("peak RSS")?;
    let held = words
        .next()
        .context("no spool bytes")?
        .context("spool bytes")?;
    let spans = words.next().context("no spans")?.context("spans")?;
    eprintln!(
        "  backlog: {spans} spans, {} in the spool, peak RSS {}",
        crate::measure::size(held),
        crate::measure::size(peak)
    );
    std::fs::remove_dir_all(&root).context("cleaning the spool")?;
    Ok(vec![peak as f64 / crate::measure::MIB as f64])
}

/// Row group 11.
pub(crate) fn group_otel(ctx: &Ctx<'_>) -> Vec<Row> {
    let quick = ctx.plan.http_requests < 20_000;
    let n: u64 = if quick { 50_000 } else { 200_000 };
    let outage_len = if quick {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(30)
    };
    eprintln!("[bench] row 11: OpenTelemetry, {n} spans; outage {outage_len:?}");

    let spans_s = [("spans/s", Unit::RecordsPerSec)];
    let mut ours = Collector::new(SideSpec::new(
        "SDK batch processor → outlast-otel",
        &spans_s,
    ));
    let mut theirs = Collector::new(SideSpec::new(
        "SDK batch processor → opentelemetry-otlp (HTTP)",
        &spans_s,
    ));
    let figs = [("µs/span in export after the first", Unit::Micros)];
    let mut ours_out = Collector::new(SideSpec::new("outlast-otel, then a new process", &figs));
    let mut theirs_out = Collector::new(SideSpec::new("opentelemetry-otlp, default retry", &figs));
    for _ in 0..ctx.plan.reps {
        ours.run(|| happy(ctx, Side::Outlast, n));
        theirs.run(|| happy(ctx, Side::Otlp, n));
    }
    // The outage row is long: one repetition of each.
    let mut delivered = Vec::new();
    for (side, col, name) in [
        (Side::Outlast, &mut ours_out, "outlast-otel"),
        (Side::Otlp, &mut theirs_out, "opentelemetry-otlp"),
    ] {
        col.run(|| {
            let r = outage(ctx, side, outage_len)?;
            delivered.push(format!("{name} {} of {}", r.delivered, r.emitted));
            Ok(vec![r.per_span_us])
        });
    }
    let rss = [("peak RSS", Unit::Mib)];
    let mut ours_rss = Collector::new(SideSpec::new("outlast-otel, collector down", &rss));
    ours_rss.run(|| backlog_rss(ctx));
    vec![
        Row::new(
            "11a",
            "OpenTelemetry happy path: spans/s via outlast-otel vs opentelemetry-otlp",
            format!("{n} spans, batches of {BATCH}, same loopback receiver decoding OTLP"),
            ours.finish(),
            theirs.finish(),
            Target::RatioAtLeast { min: 0.95 },
        ),
        Row::new(
            "11b",
            "OpenTelemetry outage then restart: exporter time per span; spans delivered",
            format!(
                "{OUTAGE_RATE} spans/s for {outage_len:?}, collector down; then the service \
                 restarts with the collector back (one repetition). Delivered: {}",
                delivered.join(", ")
            ),
            ours_out.finish(),
            theirs_out.finish(),
            Target::None,
        ),
        Row::new(
            "11c",
            "OpenTelemetry backlog: peak RSS of a process holding 256 MiB of spooled spans",
            format!(
                "spans with a {BACKLOG_ATTR_LEN}-byte attribute through the SDK's batch span \
                 processor into outlast-otel, collector down, until the traces spool holds {}; \
                 VmHWM of that child process (one repetition)",
                crate::measure::size(BACKLOG_BYTES)
            ),
            ours_rss.finish(),
            crate::measure::Cell::not_measured(
                "opentelemetry-otlp",
                "keeps no backlog: batches are dropped after its retries",
            ),
            Target::None,
        ),
    ]
}
