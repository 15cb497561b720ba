//! An example service: `tracing` spans exported through `tracing-opentelemetry` and
//! `tracing` events exported as OpenTelemetry log records through
//! `opentelemetry-appender-tracing`, both to an OTLP/HTTP collector through outlast-otel, so
//! that they survive the collector being down and the service restarting.
//!
//! Run it with a collector on `localhost:4318` (or none, to see the spool at work):
//!
//! ```text
//! OTEL_SERVICE_NAME=checkout cargo run -p outlast-otel --features logs --example service -- 20
//! ```
//!
//! The settings come from the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, ...) and the `OUTLAST_*` ones; the spools live under
//! `OUTLAST_SPOOL_DIR` (default `<temp dir>/outlast-service-<user id>`). Run it again after an
//! outage: it delivers what the previous run left on disk.

use std::time::Duration;

use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
use outlast_otel::Pipeline;
use outlast_otel::opentelemetry::trace::TracerProvider as _;
use tracing::Instrument as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::prelude::*;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let requests: u32 = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(20);

    // Set-up: the pipeline, and two `tracing` layers feeding its providers.
    let otel = Pipeline::builder_from_env()?.build()?;
    let tracer = otel
        .tracer_provider()
        .ok_or("traces are off")?
        .tracer("service");
    let logger_provider = otel.logger_provider().ok_or("logs are off")?;
    // The exporters' own events (outlast's, the SDK's, the HTTP stack's) are not exported:
    // during an outage they would feed the backlog they describe. They go to stderr.
    let not_internal = || filter_fn(|meta| !is_internal(meta.target()));
    tracing_subscriber::registry()
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(not_internal()),
        )
        .with(OpenTelemetryTracingBridge::new(&logger_provider).with_filter(not_internal()))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(
                    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
                ),
        )
        .init();

    for i in 0..requests {
        handle(i).await;
    }

    // On the way out: the SDK's queues into outlast, then as much as can be delivered in
    // 5 s; the rest stays on disk for the next start.
    let report = otel.shutdown(Duration::from_secs(5)).await;
    println!(
        "shut down: complete = {}, {} request(s) left in {}, {} item(s) dropped",
        report.complete,
        report.remaining_records(),
        otel.spool_root().display(),
        report.dropped_items
    );
    Ok(())
}

/// Whether a `tracing` target belongs to the export machinery rather than the service.
fn is_internal(target: &str) -> bool {
    ["outlast", "opentelemetry", "hyper", "h2", "rustls", "tokio"]
        .iter()
        .any(|prefix| target.starts_with(prefix))
}

/// One "request": a span with a child span, and a log event inside it.
async fn handle(i: u32) {
    let span = tracing::info_span!("handle_request", request = i);
    async {
        tokio::time::sleep(Duration::from_millis(2))
            .instrument(tracing::info_span!("query", table = "orders"))
            .await;
        tracing::info!(request = i, "request handled");
    }
    .instrument(span)
    .await;
}
