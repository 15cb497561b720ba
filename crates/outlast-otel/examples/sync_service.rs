//! A program without an async runtime of its own: the pipeline starts a small one, spans
//! are emitted with the OpenTelemetry API, and the pipeline is shut down with
//! `shutdown_blocking`.
//!
//! ```text
//! cargo run -p outlast-otel --example sync_service
//! ```

use std::time::Duration;

use outlast_otel::Pipeline;
use outlast_otel::opentelemetry::global;
use outlast_otel::opentelemetry::trace::{Tracer as _, TracerProvider as _};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Built outside any Tokio runtime: the pipeline runs its clients on one of its own.
    let otel = Pipeline::builder_from_env()?.build()?;
    let provider = otel.tracer_provider().ok_or("traces are off")?;
    global::set_tracer_provider(provider.clone());

    let tracer = provider.tracer("sync-service");
    for i in 0..10 {
        tracer.in_span(format!("job-{i}"), |_cx| {
            std::thread::sleep(Duration::from_millis(1));
        });
    }

    // Blocks the thread at most 5 s; what is not delivered stays on disk for the next run.
    let report = otel.shutdown_blocking(Duration::from_secs(5));
    println!(
        "shut down: complete = {}, {} request(s) left on disk",
        report.complete,
        report.remaining_records()
    );
    Ok(())
}
