//! The target of this crate's log events, named once for every file that logs.

/// The target of every log event of this crate (`tracing`), stable across versions: filter on
/// it, e.g. `RUST_LOG=outlast::otel=debug` or `EnvFilter::new("info,outlast::otel=warn")`.
/// The events of the clients under the pipeline have the target `outlast::client`
/// (`outlast_client::LOG_TARGET`); `outlast=warn` filters both.
pub const LOG_TARGET: &str = "outlast::otel";
