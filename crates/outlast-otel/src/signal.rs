//! The three OpenTelemetry signals and what differs between them: URL path, spool folder,
//! environment variable names.

use std::fmt;

/// One OpenTelemetry signal. Each has its own collector path, its own spool (a folder under
/// the spool root) and its own `OTEL_EXPORTER_OTLP_<SIGNAL>_*` variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// Spans (`/v1/traces`).
    Traces,
    /// Log records (`/v1/logs`).
    Logs,
    /// Metric data points (`/v1/metrics`).
    Metrics,
}

impl Signal {
    /// Every signal, in the order traces, logs, metrics.
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Logs, Signal::Metrics];

    /// The lower-case name: `traces`, `logs`, `metrics` (also the spool folder's name).
    pub fn name(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Logs => "logs",
            Signal::Metrics => "metrics",
        }
    }

    /// The path appended to a collector's base endpoint: `/v1/traces`, `/v1/logs`,
    /// `/v1/metrics`.
    pub fn path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Logs => "/v1/logs",
            Signal::Metrics => "/v1/metrics",
        }
    }

    /// What one item of this signal is called in messages: span, log record, data point.
    pub(crate) fn item(self) -> &'static str {
        match self {
            Signal::Traces => "span(s)",
            Signal::Logs => "log record(s)",
            Signal::Metrics => "data point(s)",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Signal::Traces => 0,
            Signal::Logs => 1,
            Signal::Metrics => 2,
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
