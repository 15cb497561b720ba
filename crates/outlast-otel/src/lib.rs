//! OpenTelemetry spans, logs and metrics that survive a dead collector, `kill -9` and a
//! redeploy: OTLP/HTTP exporters for the OpenTelemetry SDK (0.33) that hand every batch to an
//! outlast [`Client`](outlast_client::Client), which delivers it or keeps it on disk and
//! delivers it later.
//!
//! # Set-up
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use outlast_otel::Pipeline;
//! # #[cfg(feature = "trace")]
//! use outlast_otel::opentelemetry::trace::TracerProvider as _; // brings `.tracer(name)`
//!
//! # #[cfg(feature = "trace")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let otel = Pipeline::builder_from_env()?
//!     .spool_root("/var/lib/my-service/otel")
//!     .build()?;
//! let provider = otel.tracer_provider().ok_or("feature `trace` is off")?;
//! // Install it globally, or hand `provider.tracer("my-service")` to tracing-opentelemetry.
//! outlast_otel::opentelemetry::global::set_tracer_provider(provider.clone());
//! // ... on the way out: hand the SDK's queues to outlast, deliver what can be in 5 s,
//! // keep the rest on disk for the next start (`shutdown_blocking` without an executor).
//! let report = otel.shutdown(Duration::from_secs(5)).await;
//! # let _ = report;
//! # Ok(()) }
//! ```
//!
//! `opentelemetry` and `opentelemetry_sdk` are re-exported ([`opentelemetry`],
//! [`opentelemetry_sdk`]) so that a service uses the versions this crate is built on.
//! `docs/opentelemetry.md` in the repository has the `Cargo.toml` lines and a whole `tracing`
//! service with traces and logs.
//!
//! [`Pipeline`] builds one outlast client per signal, each with its own URL
//! (`<endpoint>/v1/traces`, `/v1/logs`, `/v1/metrics`) and its own spool
//! (`<root>/traces`, `<root>/logs`, `<root>/metrics`), and the SDK providers (batch span and
//! log processors, a periodic metric reader) that feed them. The exporters
//! ([`OutlastSpanExporter`], [`OutlastLogExporter`], [`OutlastMetricExporter`]) can also be
//! used on providers of your own. Which signals run is chosen by the cargo features and, at
//! run time, by [`PipelineBuilder::traces`], [`logs`](PipelineBuilder::logs) and
//! [`metrics`](PipelineBuilder::metrics) (or `OTEL_{TRACES,LOGS,METRICS}_EXPORTER=none`).
//!
//! # Batches larger than a record
//!
//! A batch whose encoding is larger than the client's `max_record_bytes` (8 MiB by default)
//! is cut by its items (spans, log records, metric data points) into requests that fit, each
//! keeping its resource and scope; only a single item larger than the limit is dropped, and
//! counted once.
//!
//! # What an export answers
//!
//! The SDK calls the exporters from its own threads, without a Tokio runtime; the exporters
//! encode the batch (OTLP protobuf, with the official conversion functions, so the bytes are
//! what the official exporter sends) and hand it to a task on the pipeline's runtime, then
//! wait for the client's answer for at most the
//! [export timeout](PipelineBuilder::export_timeout):
//!
//! - `Ok(())`: the batch was delivered to the collector, or written to the signal's spool
//!   (it survives a crash of the process and a restart, and is delivered later).
//! - `Err(InternalFailure)`: outlast dropped the batch; the message says why (the
//!   collector rejected it permanently, spool full, spool unusable during an outage, shut
//!   down, a single item larger than `max_record_bytes`); for a batch sent in several
//!   requests, how many of its items. Counted in [`Pipeline::stats`] and in the next
//!   [`PipelineFlush`].
//! - `Err(Timeout)`: the client had not answered in time. The batch is **not** abandoned:
//!   the task goes on and the batch ends delivered, spooled or dropped (counted in the
//!   stats). The SDK may then log a failure for a batch that still arrives.
//! - `Err(AlreadyShutdown)`: after shutdown.
//!
//! # OTLP status rules
//!
//! Only 429, 502, 503, 504 and transport failures are retried (with `Retry-After` honoured on
//! 429 and 503); every other status is a permanent rejection, dropped and counted, its
//! `google.rpc.Status` message in the error ([`CollectorError`]). The list is
//! [`OTLP_RETRYABLE_STATUSES`], given to each signal's `HttpExporter`.
//!
//! # Log events
//!
//! This crate's `tracing` events have the target [`LOG_TARGET`] (`outlast::otel`).
//!
//! # Features
//!
//! - `trace` (default): spans.
//! - `logs`: log records.
//! - `metrics`: metric data points (every kind the SDK produces).
//! - `with-serde`: OTLP/JSON ([`Encoding::Json`], `OTEL_EXPORTER_OTLP_PROTOCOL=http/json`).

#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
// Without a signal feature (`trace`, `logs`, `metrics`) the crate has no exporter to offer:
// the machinery they share is then unused, and says nothing about it.
#![cfg_attr(
    not(any(feature = "trace", feature = "logs", feature = "metrics")),
    allow(dead_code, unused_imports, unused_macros, unused_mut, unused_variables)
)]

mod config;
mod encode;
mod exporters;
mod handoff;
#[cfg(feature = "metrics")]
mod instruments;
mod logging;
mod otlp_http;
mod pipeline;
mod runtime;
mod signal;
mod stats;

pub use config::default_replay_order;
pub use config::{
    DEFAULT_ENDPOINT, DEFAULT_EXPORT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, ENV_OTLP_COMPRESSION,
    ENV_OTLP_ENDPOINT, ENV_OTLP_HEADERS, ENV_OTLP_PROTOCOL, ENV_OTLP_TIMEOUT, ENV_SIGNAL_EXPORTER,
    ENV_SPOOL_ROOT, PipelineBuilder,
};
pub use encode::Encoding;
#[cfg(feature = "logs")]
pub use exporters::OutlastLogExporter;
#[cfg(feature = "metrics")]
pub use exporters::OutlastMetricExporter;
#[cfg(feature = "trace")]
pub use exporters::OutlastSpanExporter;
pub use logging::LOG_TARGET;
/// The OpenTelemetry API this crate is built on (0.33), re-exported so that a service uses
/// the same version: `use outlast_otel::opentelemetry;`.
pub use opentelemetry;
/// The OpenTelemetry SDK this crate is built on (0.33), re-exported so that a service uses
/// the same version: `use outlast_otel::opentelemetry_sdk;`.
pub use opentelemetry_sdk;
pub use otlp_http::{
    CollectorError, OTLP_RETRYABLE_STATUSES, PartialSuccess, describe_failure_body,
    is_otlp_retryable_status, partial_success,
};
pub use outlast_client::ReplayOrder;
pub use outlast_client::{ClientBuilder, ConfigError};
pub use pipeline::{Pipeline, PipelineFlush};
pub use signal::Signal;
pub use stats::{PipelineStats, SignalStats};

// The pages that show how to use this crate are compiled as doctests, so they cannot drift.
#[cfg(all(doctest, feature = "trace", feature = "logs"))]
#[doc = include_str!("../../../docs/opentelemetry.md")]
struct OpenTelemetryDocDoctests;

#[cfg(all(doctest, feature = "trace"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    /// The public names at the crate root: what a `pub use` or a `pub const` of this file
    /// brings there.
    fn root_names(source: &str) -> Vec<String> {
        let code = source.split("#[cfg(test)]").next().unwrap_or_default();
        let mut names = Vec::new();
        for statement in code.split("pub use ").skip(1) {
            let statement = statement.split(';').next().unwrap_or_default();
            let list = match (statement.find('{'), statement.rfind('}')) {
                (Some(a), Some(b)) => &statement[a + 1..b],
                _ => statement.rsplit("::").next().unwrap_or_default(),
            };
            names.extend(
                list.split(',')
                    .map(|i| i.trim().rsplit(" as ").next().unwrap_or_default().trim())
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned),
            );
        }
        for line in code.lines().filter(|l| l.starts_with("pub const ")) {
            let name = line["pub const ".len()..]
                .split(':')
                .next()
                .unwrap_or_default();
            names.push(name.trim().to_owned());
        }
        names.sort();
        names
    }

    /// The committed listing of this crate's public root: a change to the public surface
    /// shows here, on purpose.
    #[test]
    fn the_public_root_is_the_committed_listing() {
        let expected = [
            "ClientBuilder",
            "CollectorError",
            "ConfigError",
            "DEFAULT_ENDPOINT",
            "DEFAULT_EXPORT_TIMEOUT",
            "DEFAULT_REQUEST_TIMEOUT",
            "ENV_OTLP_COMPRESSION",
            "ENV_OTLP_ENDPOINT",
            "ENV_OTLP_HEADERS",
            "ENV_OTLP_PROTOCOL",
            "ENV_OTLP_TIMEOUT",
            "ENV_SIGNAL_EXPORTER",
            "ENV_SPOOL_ROOT",
            "Encoding",
            "LOG_TARGET",
            "OTLP_RETRYABLE_STATUSES",
            "OutlastLogExporter",
            "OutlastMetricExporter",
            "OutlastSpanExporter",
            "PartialSuccess",
            "Pipeline",
            "PipelineBuilder",
            "PipelineFlush",
            "PipelineStats",
            "ReplayOrder",
            "Signal",
            "SignalStats",
            "default_replay_order",
            "describe_failure_body",
            "is_otlp_retryable_status",
            "opentelemetry",
            "opentelemetry_sdk",
            "partial_success",
        ];
        let mut expected: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
        expected.sort();
        assert_eq!(root_names(include_str!("lib.rs")), expected);
    }
}
