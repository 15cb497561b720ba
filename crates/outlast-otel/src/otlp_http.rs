//! OTLP/HTTP on top of outlast's [`HttpExporter`]: which failures are retried, and what a
//! collector's failure body and partial success say.
//!
//! [`HttpExporter`] follows outlast's general mapping (408 and 500 are retried there). OTLP
//! is stricter: only 429, 502, 503 and 504 (and transport failures) may be retried; every
//! other 4xx or 5xx is permanent. The pipeline builds each signal's [`HttpExporter`] with
//! that list ([`HttpExporterBuilder::retryable_statuses`](outlast_client::http::HttpExporterBuilder::retryable_statuses)
//! with [`OTLP_RETRYABLE_STATUSES`]); `OtlpHttpExporter` only decodes the
//! `google.rpc.Status` body of a failure into the error and counts the rejections.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::StatusCode;
use outlast_client::http::{HttpError, HttpExporter, SuccessResponse};
use outlast_client::{Coalescing, ExportError, Exporter, Payload, Reachability};
use outlast_core::ContentEncoding;
use prost::Message as _;

use crate::logging::LOG_TARGET;
use crate::signal::Signal;
use crate::stats::Counters;

/// The statuses OTLP/HTTP allows retrying: 429, 502, 503, 504. For an [`HttpExporter`] of
/// your own sending OTLP, pass them to
/// [`HttpExporterBuilder::retryable_statuses`](outlast_client::http::HttpExporterBuilder::retryable_statuses).
pub const OTLP_RETRYABLE_STATUSES: [StatusCode; 4] = [
    StatusCode::TOO_MANY_REQUESTS,
    StatusCode::BAD_GATEWAY,
    StatusCode::SERVICE_UNAVAILABLE,
    StatusCode::GATEWAY_TIMEOUT,
];

/// Whether OTLP/HTTP allows retrying a request answered with `status`: 429, 502, 503, 504.
pub fn is_otlp_retryable_status(status: StatusCode) -> bool {
    OTLP_RETRYABLE_STATUSES.contains(&status)
}

/// A collector's failure status, with the message it gave.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("OTLP collector answered {status} for {signal}: {message}")]
pub struct CollectorError {
    /// The signal of the request.
    pub signal: Signal,
    /// The HTTP status.
    pub status: StatusCode,
    /// The `google.rpc.Status` message of the body (`code <n>: <message>`), or the body as
    /// text when it is not one, or `(empty body)`.
    pub message: String,
}

/// `google.rpc.Status`, the failure body of OTLP/HTTP (only the fields we read).
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<RpcAny>,
}

/// `google.protobuf.Any`, as found in `google.rpc.Status.details`.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// Describes a failure body: a protobuf `google.rpc.Status` as `code <n>: <message>` (with
/// the type of each detail), anything else as (lossy) text.
pub fn describe_failure_body(body: &[u8]) -> String {
    if body.is_empty() {
        return "(empty body)".to_owned();
    }
    if let Ok(status) = RpcStatus::decode(body)
        && (status.code != 0 || !status.message.is_empty())
    {
        let mut s = format!("code {}: {}", status.code, status.message);
        for d in &status.details {
            s.push_str(&format!(" [detail {}]", d.type_url));
        }
        return s;
    }
    String::from_utf8_lossy(body).trim().to_owned()
}

/// The `partial_success` of a 2xx OTLP response: how many items the collector rejected,
/// and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialSuccess {
    /// Rejected spans, log records or data points.
    pub rejected: i64,
    /// The collector's explanation (may be empty).
    pub message: String,
}

/// Decodes the `partial_success` of a successful `Export*ServiceResponse` body of `signal`;
/// `None` for an empty body, a body without one, or one that rejected nothing.
///
/// # Errors
///
/// The protobuf decode error of a body that is not a response of that signal.
pub fn partial_success(
    signal: Signal,
    body: &[u8],
) -> Result<Option<PartialSuccess>, prost::DecodeError> {
    /// The three `Export*PartialSuccess` messages share their layout: a count (tag 1) and
    /// a message (tag 2), inside the response's field 1.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Partial {
        #[prost(int64, tag = "1")]
        rejected: i64,
        #[prost(string, tag = "2")]
        message: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Response {
        #[prost(message, optional, tag = "1")]
        partial_success: Option<Partial>,
    }
    let _ = signal; // Same layout for every signal; kept for the message and the future.
    let response = Response::decode(body)?;
    Ok(response
        .partial_success
        .filter(|p| p.rejected != 0 || !p.message.is_empty())
        .map(|p| PartialSuccess {
            rejected: p.rejected,
            message: p.message,
        }))
}

/// Least time between two warnings about items a collector rejected in a partial success.
const PARTIAL_SUCCESS_WARN_INTERVAL: Duration = Duration::from_secs(60);

/// A hook for [`HttpExporter::with_success_hook`] that decodes the `partial_success` of each
/// successful response of `signal`, adds its rejected items to the signal's stats, and logs
/// them (a warning at most once a minute, with the running total). A body that is not a
/// protobuf response (OTLP/JSON) is left alone.
pub(crate) fn partial_success_hook(
    signal: Signal,
    counters: Arc<Counters>,
) -> impl Fn(&SuccessResponse<'_>) + Send + Sync + 'static {
    let last_warning = std::sync::Mutex::new(None::<std::time::Instant>);
    move |response| {
        if response.body.is_empty() {
            return;
        }
        let partial = match partial_success(signal, response.body) {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(target: LOG_TARGET, %signal, error = %e, "a success response's body is not an OTLP protobuf response");
                return;
            }
        };
        let rejected = u64::try_from(partial.rejected).unwrap_or(0);
        let total = counters
            .partially_rejected_items
            .fetch_add(rejected, Ordering::Relaxed)
            .saturating_add(rejected);
        let now = std::time::Instant::now();
        let mut last = last_warning
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_none_or(|t| now.saturating_duration_since(t) >= PARTIAL_SUCCESS_WARN_INTERVAL) {
            *last = Some(now);
            tracing::warn!(
                target: LOG_TARGET,
                %signal,
                rejected,
                total_rejected = total,
                message = %partial.message,
                "outlast-otel: the collector accepted a request but rejected some of its items (not retried)"
            );
        }
    }
}

/// An [`Exporter`] that sends one signal's requests through an [`HttpExporter`] built with
/// the OTLP status list, and describes a collector's failure: its `google.rpc.Status` body
/// becomes the message of a [`CollectorError`], and permanent rejections are counted in the
/// signal's stats.
#[derive(Clone)]
pub(crate) struct OtlpHttpExporter {
    inner: HttpExporter,
    signal: Signal,
    counters: Arc<Counters>,
}

impl OtlpHttpExporter {
    /// Wraps `inner` (built with [`OTLP_RETRYABLE_STATUSES`]), which sends `signal`'s
    /// requests.
    pub(crate) fn new(inner: HttpExporter, signal: Signal, counters: Arc<Counters>) -> Self {
        OtlpHttpExporter {
            inner,
            signal,
            counters,
        }
    }

    /// Describes a failure of the inner exporter; whether it is retried is the inner
    /// exporter's answer (its status list is OTLP's).
    fn classify(&self, e: ExportError) -> ExportError {
        let status = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<HttpError>())
            .and_then(|h| Some((h.status()?, h.body_excerpt().unwrap_or_default())));
        let Some((status, body)) = status else {
            // Transport failures and timeouts.
            return e;
        };
        let error = CollectorError {
            signal: self.signal,
            status,
            message: describe_failure_body(body.as_bytes()),
        };
        // The collector answered: a retryable status stays an answer, so the client follows
        // the backoff rather than the probe's pace.
        if e.is_retryable() {
            return match e.retry_after() {
                Some(d) => ExportError::retryable_after(error, d),
                None => ExportError::failing(error),
            };
        }
        self.counters
            .rejected_requests
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(target: LOG_TARGET, signal = %self.signal, status = status.as_u16(), message = %error.message,
            "OTLP collector rejected a request permanently");
        ExportError::permanent(error)
    }
}

impl Exporter for OtlpHttpExporter {
    /// Sends through the inner exporter and classifies a failure by the OTLP rules.
    ///
    /// # Errors
    ///
    /// A retryable error the collector answered with for 429, 502, 503 and 504
    /// ([`ExportError::Failing`], or [`ExportError::retryable_after`] with the `Retry-After`
    /// delay of a 429 or 503), its source a [`CollectorError`];
    /// [`ExportError::Unreachable`] for a transport failure; [`ExportError::Timeout`] for a
    /// request timeout; [`ExportError::Permanent`] for every other status, its source a
    /// [`CollectorError`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as the inner exporter.
    async fn export(&self, payload: &Payload) -> Result<(), ExportError> {
        self.inner
            .export(payload)
            .await
            .map_err(|e| self.classify(e))
    }

    async fn probe(&self) -> Reachability {
        self.inner.probe().await
    }

    /// As the inner exporter: spooled protobuf requests of this signal merge on replay.
    fn coalescing(&self, payload: &Payload) -> Option<Coalescing> {
        self.inner.coalescing(payload)
    }

    /// Sends a merged request through the inner exporter, classified by the OTLP rules.
    async fn export_many(&self, payloads: &[Payload]) -> Result<(), ExportError> {
        self.inner
            .export_many(payloads)
            .await
            .map_err(|e| self.classify(e))
    }

    fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight()
    }

    fn export_timeout(&self) -> Option<Duration> {
        self.inner.export_timeout()
    }

    /// As the inner exporter: gzip when its gzip is on, so that a record the client stored
    /// gzipped is sent as stored, without being decompressed and compressed again.
    fn accepts_encoding(&self, encoding: ContentEncoding) -> bool {
        self.inner.accepts_encoding(encoding)
    }

    /// The inner exporter's shutdown.
    async fn shutdown(&self) -> Result<(), ExportError> {
        self.inner.shutdown().await
    }

    /// The inner exporter's identity, else `outlast-otel/<signal>`: stable across versions
    /// of this crate (a type name would change with a refactor and orphan spooled records).
    fn identity(&self) -> Option<String> {
        self.inner
            .identity()
            .or_else(|| Some(format!("outlast-otel/{}", self.signal)))
    }
}

impl fmt::Debug for OtlpHttpExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpHttpExporter")
            .field("inner", &self.inner)
            .field("signal", &self.signal)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_429_502_503_504_are_retryable_under_otlp() {
        for code in 100..600u16 {
            let Ok(status) = StatusCode::from_u16(code) else {
                continue;
            };
            assert_eq!(
                is_otlp_retryable_status(status),
                [429, 502, 503, 504].contains(&code),
                "{code}"
            );
        }
    }

    #[test]
    fn a_status_body_is_decoded_into_its_code_and_message() {
        let body = RpcStatus {
            code: 3,
            message: "span name is empty".into(),
            details: vec![RpcAny {
                type_url: "type.googleapis.com/google.rpc.BadRequest".into(),
                value: vec![1, 2, 3],
            }],
        }
        .encode_to_vec();
        let s = describe_failure_body(&body);
        assert!(s.starts_with("code 3: span name is empty"), "{s}");
        assert!(s.contains("google.rpc.BadRequest"), "{s}");
    }

    #[test]
    fn every_capability_of_the_inner_exporter_is_forwarded() {
        for gzip in [false, true] {
            let inner = HttpExporter::builder("http://127.0.0.1:4318/v1/traces")
                .gzip(gzip)
                .max_in_flight(3)
                .build()
                .expect("valid settings");
            let otlp = OtlpHttpExporter::new(inner.clone(), Signal::Traces, Arc::default());
            for encoding in [ContentEncoding::Identity, ContentEncoding::Gzip] {
                assert_eq!(
                    otlp.accepts_encoding(encoding),
                    inner.accepts_encoding(encoding),
                    "gzip {gzip}, {encoding:?}"
                );
            }
            assert_eq!(otlp.max_in_flight(), inner.max_in_flight());
            assert_eq!(otlp.export_timeout(), inner.export_timeout());
            assert_eq!(otlp.identity(), inner.identity());
        }
    }

    #[test]
    fn the_collectors_answers_stay_answers_and_transport_failures_stay_unreachable() {
        let inner = HttpExporter::builder("http://127.0.0.1:4318/v1/traces")
            .build()
            .expect("valid settings");
        let otlp = OtlpHttpExporter::new(inner, Signal::Traces, Arc::default());
        let status = |code: u16| HttpError::Status {
            status: StatusCode::from_u16(code).expect("a status"),
            body_excerpt: String::new(),
        };

        let busy = otlp.classify(status(502).into_export_error(None));
        assert!(busy.is_retryable() && busy.is_answered() && !busy.is_unreachable());
        let source = std::error::Error::source(&busy).expect("a source");
        assert!(
            source.downcast_ref::<CollectorError>().is_some(),
            "{busy:?}"
        );

        let wait = otlp.classify(status(503).into_export_error(Some(Duration::from_secs(4))));
        assert_eq!(wait.retry_after(), Some(Duration::from_secs(4)));
        assert!(wait.is_answered() && !wait.is_unreachable());

        let refused = HttpError::Connect {
            source: Box::new(std::io::Error::other("refused")),
        };
        let refused = otlp.classify(refused.into_export_error(None));
        assert!(refused.is_retryable() && refused.is_unreachable());
    }

    #[test]
    fn a_text_body_is_kept_as_text() {
        assert_eq!(describe_failure_body(b"too large\n"), "too large");
        assert_eq!(describe_failure_body(b""), "(empty body)");
    }

    #[cfg(feature = "trace")]
    #[test]
    fn partial_success_of_a_response_is_decoded_and_an_empty_one_is_none() {
        use opentelemetry_proto::tonic::collector::trace::v1::{
            ExportTracePartialSuccess, ExportTraceServiceResponse,
        };
        let body = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 7,
                error_message: "7 spans too old".into(),
            }),
        }
        .encode_to_vec();
        let p = partial_success(Signal::Traces, &body).expect("decodes");
        assert_eq!(
            p,
            Some(PartialSuccess {
                rejected: 7,
                message: "7 spans too old".into()
            })
        );
        assert_eq!(partial_success(Signal::Traces, &[]).expect("decodes"), None);
    }
}
