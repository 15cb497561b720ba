//! The error an [`Exporter`](crate::Exporter) returns, and how the pipeline classifies it.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

/// A boxed error that can cross threads: the source of an [`ExportError`].
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Displays an error followed by each of its causes on one line, `error: cause: root cause`.
///
/// outlast's errors follow the rule that an error either prints its cause or returns it
/// from [`source`](StdError::source), never both: their `Display` is their own message only,
/// so a chain printer (this one, `anyhow`'s `{:#}`, a logging layer) shows each cause once.
/// Their `Debug` is this chain too, so `main() -> Result<(), Box<dyn Error>>` prints a
/// readable line.
///
/// # Examples
///
/// ```
/// use outlast_core::{ErrorChain, ExportError};
///
/// let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
/// let e = ExportError::retryable(io);
/// assert_eq!(e.to_string(), "export failed, retryable");
/// assert_eq!(ErrorChain(&e).to_string(), "export failed, retryable: connection refused");
/// assert_eq!(format!("{e:?}"), "export failed, retryable: connection refused");
/// ```
#[derive(Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn StdError + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

impl fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why an export attempt failed, classified by what the pipeline should do next.
///
/// The classification is the exporter's to make: only it knows that an HTTP 400 will never
/// succeed while a 503 may. The underlying cause is kept as the [`source`](StdError::source)
/// so that it is never flattened into a string.
///
/// `Display` is this error's own message (the classification); the cause is the
/// [`source`](StdError::source). [`ErrorChain`] prints both, as does `Debug`.
#[non_exhaustive]
pub enum ExportError {
    /// The attempt failed but may succeed later (the backend is down, overloaded or slow).
    /// The pipeline retries once, then spools the payload and retries with backoff.
    Retryable {
        /// How long the backend asked us to wait (e.g. from a `Retry-After` header).
        retry_after: Option<Duration>,
        /// The underlying cause.
        source: BoxError,
    },
    /// The backend rejected the payload and will reject it again (e.g. HTTP 400, 413).
    /// The pipeline neither retries nor spools it: it is dropped and counted.
    Permanent {
        /// The underlying cause.
        source: BoxError,
    },
    /// The attempt did not finish within its time limit. Retryable. The pipeline produces this
    /// when it drops an exporter's future on timeout; exporters may return it too.
    Timeout {
        /// The limit that was exceeded.
        after: Duration,
    },
}

impl ExportError {
    /// A retryable failure caused by `source`.
    pub fn retryable(source: impl Into<BoxError>) -> ExportError {
        ExportError::Retryable {
            retry_after: None,
            source: source.into(),
        }
    }

    /// A retryable failure for which the backend asked us to wait `retry_after` first.
    pub fn retryable_after(source: impl Into<BoxError>, retry_after: Duration) -> ExportError {
        ExportError::Retryable {
            retry_after: Some(retry_after),
            source: source.into(),
        }
    }

    /// A permanent failure caused by `source`.
    pub fn permanent(source: impl Into<BoxError>) -> ExportError {
        ExportError::Permanent {
            source: source.into(),
        }
    }

    /// Whether trying the same payload again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ExportError::Retryable { .. } | ExportError::Timeout { .. }
        )
    }

    /// Whether the backend will never accept this payload.
    pub fn is_permanent(&self) -> bool {
        matches!(self, ExportError::Permanent { .. })
    }

    /// Whether the attempt timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, ExportError::Timeout { .. })
    }

    /// The delay the backend asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ExportError::Retryable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl fmt::Display for ExportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExportError::Retryable {
                retry_after: Some(d),
                ..
            } => write!(
                f,
                "export failed, retryable (retry after {:.3}s)",
                d.as_secs_f64()
            ),
            ExportError::Retryable {
                retry_after: None, ..
            } => f.write_str("export failed, retryable"),
            ExportError::Permanent { .. } => f.write_str("export rejected permanently"),
            ExportError::Timeout { after } => {
                write!(f, "export timed out after {:.3}s", after.as_secs_f64())
            }
        }
    }
}

impl fmt::Debug for ExportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&ErrorChain(self), f)
    }
}

impl StdError for ExportError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            ExportError::Retryable { source, .. } | ExportError::Permanent { source } => {
                Some(source.as_ref())
            }
            ExportError::Timeout { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync_static<T: Send + Sync + 'static>() {}

    #[test]
    fn export_error_is_send_sync_static() {
        assert_send_sync_static::<ExportError>();
    }

    #[test]
    fn classifiers_agree_with_variants() {
        let r = ExportError::retryable_after("503", Duration::from_secs(3));
        assert!(r.is_retryable() && !r.is_permanent());
        assert_eq!(r.retry_after(), Some(Duration::from_secs(3)));

        let p = ExportError::permanent("400 bad request");
        assert!(p.is_permanent() && !p.is_retryable());
        assert_eq!(p.retry_after(), None);

        let t = ExportError::Timeout {
            after: Duration::from_secs(10),
        };
        assert!(t.is_retryable() && t.is_timeout());
    }

    #[test]
    fn source_is_kept_not_flattened() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = ExportError::retryable(io);
        let src = e.source().expect("source kept");
        let io_back = src
            .downcast_ref::<std::io::Error>()
            .expect("source is the io::Error");
        assert_eq!(io_back.kind(), std::io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn display_is_the_own_message_and_the_chain_prints_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let cases = [
            (
                ExportError::retryable(io),
                "export failed, retryable",
                "export failed, retryable: refused",
            ),
            (
                ExportError::retryable_after("HTTP 503", Duration::from_millis(1500)),
                "export failed, retryable (retry after 1.500s)",
                "export failed, retryable (retry after 1.500s): HTTP 503",
            ),
            (
                ExportError::permanent("HTTP 400"),
                "export rejected permanently",
                "export rejected permanently: HTTP 400",
            ),
            (
                ExportError::Timeout {
                    after: Duration::from_secs(2),
                },
                "export timed out after 2.000s",
                "export timed out after 2.000s",
            ),
        ];
        for (e, display, chain) in cases {
            assert_eq!(e.to_string(), display);
            assert_eq!(ErrorChain(&e).to_string(), chain);
            assert_eq!(format!("{e:?}"), chain);
        }
    }
}
