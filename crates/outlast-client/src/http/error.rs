//! Why an HTTP export failed: the source carried inside an [`ExportError`].

use std::error::Error as StdError;
use std::time::Duration;

use http::StatusCode;
use outlast_core::{BoxError, ExportError};

/// Why one HTTP export attempt failed.
///
/// [`HttpExporter`](super::HttpExporter) returns an [`ExportError`] whose
/// [`source`](StdError::source) is an `HttpError` (except for a timeout, which maps to
/// [`ExportError::Timeout`]). Downcast it to learn the details:
///
/// ```
/// use outlast_client::ExportError;
/// use outlast_client::http::HttpError;
///
/// fn status_of(e: &ExportError) -> Option<http::StatusCode> {
///     std::error::Error::source(e)?
///         .downcast_ref::<HttpError>()?
///         .status()
/// }
/// ```
///
/// A transport failure and an HTTP status are different variants: no status code is made up
/// for a connection that never produced one.
///
/// `Display` is this error's own message; the underlying client or I/O error is the
/// [`source`](StdError::source). `Debug` prints both on one line
/// ([`ErrorChain`](outlast_core::ErrorChain)).
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The server answered with a status that is not a success.
    #[error("HTTP status {status}{}", excerpt_suffix(body_excerpt))]
    Status {
        /// The status the server returned.
        status: StatusCode,
        /// The start of the response body (at most
        /// [`BODY_EXCERPT_BYTES`](super::BODY_EXCERPT_BYTES) bytes, decoded as lossy UTF-8).
        body_excerpt: String,
    },
    /// No connection could be made (refused, unreachable, DNS failure, TLS handshake or
    /// certificate verification failure).
    #[error("cannot connect to the endpoint")]
    Connect {
        /// The underlying client error (its own source is the I/O or TLS error).
        #[source]
        source: BoxError,
    },
    /// The connection failed while the request was sent or the response read (reset,
    /// closed before the response was complete).
    #[error("connection failed during the request")]
    Transport {
        /// The underlying client or I/O error.
        #[source]
        source: BoxError,
    },
    /// The request did not complete (connect, send, response head and body) within the
    /// request timeout.
    #[error("request timed out after {:.3}s", after.as_secs_f64())]
    Timeout {
        /// The request timeout that was exceeded.
        after: Duration,
    },
    /// The request body could not be gzip-compressed (not expected to happen: compression
    /// writes to memory). Permanent: the same payload would fail the same way.
    #[error("cannot compress the request body")]
    Compress {
        /// The compressor's error.
        #[source]
        source: std::io::Error,
    },
    /// The server's answer was not valid HTTP.
    #[error("invalid HTTP response")]
    InvalidResponse {
        /// The parse error.
        #[source]
        source: BoxError,
    },
}

/// `: "<excerpt>"` (quoted, control characters escaped), or nothing for an empty body.
fn excerpt_suffix(excerpt: &str) -> String {
    if excerpt.is_empty() {
        String::new()
    } else {
        format!(": {excerpt:?}")
    }
}

impl HttpError {
    /// The HTTP status, if the server answered with one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            HttpError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The start of the response body, if the server answered with a status.
    pub fn body_excerpt(&self) -> Option<&str> {
        match self {
            HttpError::Status { body_excerpt, .. } => Some(body_excerpt),
            _ => None,
        }
    }

    /// Whether the server answered with a status.
    pub fn is_status(&self) -> bool {
        matches!(self, HttpError::Status { .. })
    }

    /// Whether no connection could be made.
    pub fn is_connect(&self) -> bool {
        matches!(self, HttpError::Connect { .. })
    }

    /// Whether the connection failed during the request.
    pub fn is_transport(&self) -> bool {
        matches!(self, HttpError::Transport { .. })
    }

    /// Whether the request timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, HttpError::Timeout { .. })
    }

    /// Whether the server's answer was not valid HTTP.
    pub fn is_invalid_response(&self) -> bool {
        matches!(self, HttpError::InvalidResponse { .. })
    }

    /// Whether a later attempt may succeed: transport failures, timeouts, invalid responses
    /// and the statuses 408, 429, 500, 502, 503 and 504.
    pub fn is_retryable(&self) -> bool {
        match self {
            HttpError::Status { status, .. } => is_retryable_status(*status),
            HttpError::Connect { .. }
            | HttpError::Transport { .. }
            | HttpError::Timeout { .. }
            | HttpError::InvalidResponse { .. } => true,
            HttpError::Compress { .. } => false,
        }
    }

    /// Classifies this failure for the pipeline: a timeout becomes
    /// [`ExportError::Timeout`]; a connect or transport failure
    /// [`ExportError::Unreachable`] (no answer came); a retryable status or an invalid
    /// response [`ExportError::retryable_after`] with `retry_after` if given, else
    /// [`ExportError::Failing`] (the backend answered); the rest [`ExportError::Permanent`].
    pub fn into_export_error(self, retry_after: Option<Duration>) -> ExportError {
        match self {
            HttpError::Timeout { after } => ExportError::Timeout { after },
            e @ (HttpError::Connect { .. } | HttpError::Transport { .. }) => {
                ExportError::unreachable(e)
            }
            e if e.is_retryable() => answered_retryable(e, retry_after),
            e => ExportError::permanent(e),
        }
    }

    /// Classifies an error of the pooled client: a connect failure, an invalid response
    /// (hyper parse error) or another transport failure.
    pub(crate) fn from_client(e: hyper_util::client::legacy::Error) -> HttpError {
        if e.is_connect() {
            return HttpError::Connect {
                source: Box::new(e),
            };
        }
        if find_hyper_error(&e).is_some_and(|h| h.is_parse() || h.is_parse_status()) {
            return HttpError::InvalidResponse {
                source: Box::new(e),
            };
        }
        HttpError::Transport {
            source: Box::new(e),
        }
    }
}

/// A retryable failure the server answered with: it asked to wait `retry_after`, or not.
pub(crate) fn answered_retryable(e: HttpError, retry_after: Option<Duration>) -> ExportError {
    match retry_after {
        Some(d) => ExportError::retryable_after(e, d),
        None => ExportError::failing(e),
    }
}

/// Whether an HTTP status means "try again later": 408, 429, 500, 502, 503, 504.
pub fn is_retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
}

/// The first `hyper::Error` in a source chain.
fn find_hyper_error<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a hyper::Error> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            return Some(h);
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync_static<T: Send + Sync + 'static>() {}

    #[test]
    fn http_error_is_send_sync_static() {
        assert_send_sync_static::<HttpError>();
    }

    #[test]
    fn only_the_listed_statuses_are_retryable() {
        let retryable: Vec<u16> = (100..600)
            .filter(|s| {
                StatusCode::from_u16(*s)
                    .map(is_retryable_status)
                    .unwrap_or(false)
            })
            .collect();
        assert_eq!(retryable, [408, 429, 500, 502, 503, 504]);
    }

    #[test]
    fn status_error_maps_to_permanent_or_retryable_and_keeps_itself_as_source() {
        let bad = HttpError::Status {
            status: StatusCode::BAD_REQUEST,
            body_excerpt: "no".into(),
        };
        let e = bad.into_export_error(None);
        assert!(e.is_permanent());
        let src = StdError::source(&e)
            .and_then(|s| s.downcast_ref::<HttpError>())
            .expect("HttpError is the source");
        assert_eq!(src.status(), Some(StatusCode::BAD_REQUEST));
        assert_eq!(src.body_excerpt(), Some("no"));

        let busy = HttpError::Status {
            status: StatusCode::SERVICE_UNAVAILABLE,
            body_excerpt: String::new(),
        };
        let e = busy.into_export_error(Some(Duration::from_secs(3)));
        assert!(e.is_retryable());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
    }

    #[test]
    fn each_error_prints_its_own_message_and_returns_its_cause() {
        let io = || -> BoxError { Box::new(std::io::Error::other("connection refused")) };
        let cases: Vec<(HttpError, &str, &str)> = vec![
            (
                HttpError::Status {
                    status: StatusCode::UNAUTHORIZED,
                    body_excerpt: "bad\ntoken".into(),
                },
                "HTTP status 401 Unauthorized: \"bad\\ntoken\"",
                "HTTP status 401 Unauthorized: \"bad\\ntoken\"",
            ),
            (
                HttpError::Status {
                    status: StatusCode::NOT_FOUND,
                    body_excerpt: String::new(),
                },
                "HTTP status 404 Not Found",
                "HTTP status 404 Not Found",
            ),
            (
                HttpError::Connect { source: io() },
                "cannot connect to the endpoint",
                "cannot connect to the endpoint: connection refused",
            ),
            (
                HttpError::Transport { source: io() },
                "connection failed during the request",
                "connection failed during the request: connection refused",
            ),
            (
                HttpError::InvalidResponse { source: io() },
                "invalid HTTP response",
                "invalid HTTP response: connection refused",
            ),
            (
                HttpError::Compress {
                    source: std::io::Error::other("out of memory"),
                },
                "cannot compress the request body",
                "cannot compress the request body: out of memory",
            ),
            (
                HttpError::Timeout {
                    after: Duration::from_millis(1500),
                },
                "request timed out after 1.500s",
                "request timed out after 1.500s",
            ),
        ];
        for (e, display, chain) in cases {
            assert_eq!(e.to_string(), display);
            assert_eq!(outlast_core::ErrorChain(&e).to_string(), chain);
            assert_eq!(format!("{e:?}"), chain);
        }
    }

    #[test]
    fn transport_failures_are_unreachable_and_answers_are_failing() {
        let io = || -> BoxError { Box::new(std::io::Error::other("gone")) };
        for e in [
            HttpError::Connect { source: io() },
            HttpError::Transport { source: io() },
        ] {
            let e = e.into_export_error(None);
            assert!(
                e.is_retryable() && e.is_unreachable() && !e.is_answered(),
                "{e:?}"
            );
        }
        for e in [
            HttpError::Status {
                status: StatusCode::BAD_GATEWAY,
                body_excerpt: String::new(),
            },
            HttpError::InvalidResponse { source: io() },
        ] {
            let e = e.into_export_error(None);
            assert!(
                e.is_retryable() && e.is_answered() && !e.is_unreachable(),
                "{e:?}"
            );
            assert_eq!(e.retry_after(), None);
        }
        let rejected = HttpError::Status {
            status: StatusCode::BAD_REQUEST,
            body_excerpt: String::new(),
        }
        .into_export_error(None);
        assert!(rejected.is_permanent() && rejected.is_answered());
    }

    #[test]
    fn timeout_maps_to_export_timeout() {
        let e = HttpError::Timeout {
            after: Duration::from_millis(200),
        }
        .into_export_error(None);
        assert!(e.is_timeout());
    }
}
