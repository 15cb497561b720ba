//! An example service: `tracing` spans exported through `tracing-opentelemetry` and log
//! records through the OpenTelemetry logs API, both to a local OTLP/HTTP collector through
//! outlast-otel, so that they survive the collector being down and the service restarting.
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

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::trace::TracerProvider as _;
use tracing_subscriber::layer::SubscriberExt as _;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let requests: u32 = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(20);

    // The three lines of set-up.
    let otel = outlast_otel::Pipeline::builder_from_env()?.build()?;
    let tracer = otel
        .tracer_provider()
        .ok_or("traces are off")?
        .tracer("service");
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
    tracing::subscriber::set_global_default(subscriber)?;

    let logger = otel
        .logger_provider()
        .ok_or("logs are off")?
        .logger("service");
    for i in 0..requests {
        handle(i, &logger).await;
    }

    // On the way out: the SDK's queues into outlast, then as much as can be delivered in
    // 5 s; the rest stays on disk for the next start.
    let report = otel.shutdown(Duration::from_secs(5)).await;
    println!(
        "shut down: complete = {}, {} request(s) left in {}",
        report.complete,
        report.remaining_records(),
        otel.spool_root().display()
    );
    Ok(())
}

/// One "request": a span with a child span, and a log record.
async fn handle(i: u32, logger: &opentelemetry_sdk::logs::SdkLogger) {
    use tracing::Instrument as _;
    let span = tracing::info_span!("handle_request", request = i);
    tokio::time::sleep(Duration::from_millis(2))
        .instrument(tracing::info_span!(parent: &span, "query", table = "orders"))
        .await;
    let mut record = logger.create_log_record();
    record.set_severity_number(Severity::Info);
    record.set_body(AnyValue::from(format!("request {i} handled")));
    record.add_attribute("request", i64::from(i));
    logger.emit(record);
}
