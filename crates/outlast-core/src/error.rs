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
    /// No answer came at the transport level: the connection was refused, reset or aborted,
    /// the host or network is unreachable, the name did not resolve, the TLS handshake
    /// failed. Retryable. While the backend is unreachable the pipeline probes it on its
    /// short cadence (about 1 s) rather than wait out the backoff, and a flush returns at
    /// once instead of waiting out its time.
    Unreachable {
        /// The underlying cause.
        source: BoxError,
    },
    /// The backend answered, with a failure that may pass (an HTTP 500 or 502, a response
    /// that is not valid HTTP). Retryable. The pipeline follows the backoff: a probe that
    /// reaches the backend proves nothing while it answers with failures.
    Failing {
        /// The underlying cause.
        source: BoxError,
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

    /// A retryable failure at the transport level, caused by `source`: the backend could not
    /// be reached (see [`ExportError::Unreachable`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use outlast_core::ExportError;
    ///
    /// let e = ExportError::unreachable("no route to the broker");
    /// assert!(e.is_retryable() && e.is_unreachable());
    /// ```
    pub fn unreachable(source: impl Into<BoxError>) -> ExportError {
        ExportError::Unreachable {
            source: source.into(),
        }
    }

    /// A retryable failure the backend answered with, caused by `source` (see
    /// [`ExportError::Failing`]). A failure with a `Retry-After` delay is an answer too:
    /// [`retryable_after`](ExportError::retryable_after) says so already.
    pub fn failing(source: impl Into<BoxError>) -> ExportError {
        ExportError::Failing {
            source: source.into(),
        }
    }

    /// Whether trying the same payload again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ExportError::Retryable { .. }
                | ExportError::Timeout { .. }
                | ExportError::Unreachable { .. }
                | ExportError::Failing { .. }
        )
    }

    /// Whether the backend could not be reached at the transport level: an
    /// [`Unreachable`](ExportError::Unreachable) failure or a
    /// [`Timeout`](ExportError::Timeout). A [`retryable`](ExportError::retryable) failure
    /// without a `Retry-After` counts too when an [`std::io::Error`] anywhere in its source
    /// chain is of a connection kind (refused, reset, aborted, not connected, timed out,
    /// broken pipe, host or network unreachable, address not available, unexpected end of
    /// file), so that an exporter wrapping its socket's errors needs no special constructor.
    pub fn is_unreachable(&self) -> bool {
        match self {
            ExportError::Unreachable { .. } | ExportError::Timeout { .. } => true,
            ExportError::Retryable {
                retry_after: None,
                source,
            } => io_says_unreachable(source.as_ref()),
            _ => false,
        }
    }

    /// Whether the backend answered: a [`Failing`](ExportError::Failing) or
    /// [`Permanent`](ExportError::Permanent) failure, or a retryable one with a
    /// `Retry-After` delay. A plain [`retryable`](ExportError::retryable) failure says
    /// neither this nor [`is_unreachable`](ExportError::is_unreachable) (unless its source
    /// chain holds a connection error, see there): the pipeline does not know where it
    /// failed.
    pub fn is_answered(&self) -> bool {
        match self {
            ExportError::Failing { .. } | ExportError::Permanent { .. } => true,
            ExportError::Retryable { retry_after, .. } => retry_after.is_some(),
            _ => false,
        }
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
            }
            | ExportError::Unreachable { .. }
            | ExportError::Failing { .. } => f.write_str("export failed, retryable"),
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
            ExportError::Retryable { source, .. }
            | ExportError::Permanent { source }
            | ExportError::Unreachable { source }
            | ExportError::Failing { source } => Some(source.as_ref()),
            ExportError::Timeout { .. } => None,
        }
    }
}

/// Whether an [`std::io::Error`] in `error`'s source chain (itself included) is of a kind that
/// means no answer came at the transport level.
fn io_says_unreachable(error: &(dyn StdError + 'static)) -> bool {
    use std::io::ErrorKind;
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::NotConnected
                    | ErrorKind::TimedOut
                    | ErrorKind::BrokenPipe
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable
                    | ErrorKind::AddrNotAvailable
                    | ErrorKind::UnexpectedEof
            )
        {
            return true;
        }
        cause = e.source();
    }
    false
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

    /// A cause of an exporter's own type that wraps another error, as a client library's
    /// error wraps its socket's.
    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl fmt::Display for Wrapped {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("send failed")
        }
    }

    impl StdError for Wrapped {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn where_a_failure_happened_is_the_exporters_to_say() {
        let u = ExportError::unreachable("no route to the broker");
        assert!(u.is_retryable() && u.is_unreachable() && !u.is_answered());
        assert!(!u.is_permanent() && !u.is_timeout());
        assert_eq!(u.retry_after(), None);
        assert_eq!(
            u.source().map(ToString::to_string).as_deref(),
            Some("no route to the broker")
        );

        let f = ExportError::failing("HTTP 502");
        assert!(f.is_retryable() && f.is_answered() && !f.is_unreachable());
        assert_eq!(f.retry_after(), None);

        let t = ExportError::Timeout {
            after: Duration::from_secs(1),
        };
        assert!(t.is_unreachable() && !t.is_answered());

        let after = ExportError::retryable_after("429", Duration::from_secs(2));
        assert!(after.is_answered() && !after.is_unreachable());
        assert!(ExportError::permanent("400").is_answered());
        assert!(!ExportError::permanent("400").is_unreachable());

        // A plain retryable failure says neither, unless it carries a connection error.
        let plain = ExportError::retryable("the broker said no");
        assert!(!plain.is_unreachable() && !plain.is_answered());
        let disk = std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory");
        assert!(!ExportError::retryable(disk).is_unreachable());
    }

    #[test]
    fn a_connection_error_in_a_retryable_failures_chain_means_unreachable() {
        use std::io::ErrorKind;
        for kind in [
            ErrorKind::ConnectionRefused,
            ErrorKind::ConnectionReset,
            ErrorKind::ConnectionAborted,
            ErrorKind::NotConnected,
            ErrorKind::TimedOut,
            ErrorKind::BrokenPipe,
            ErrorKind::HostUnreachable,
            ErrorKind::NetworkUnreachable,
            ErrorKind::AddrNotAvailable,
            ErrorKind::UnexpectedEof,
        ] {
            let direct = ExportError::retryable(std::io::Error::new(kind, "io"));
            assert!(direct.is_unreachable() && !direct.is_answered(), "{kind:?}");
            let deep = ExportError::retryable(Wrapped(std::io::Error::new(kind, "io")));
            assert!(deep.is_unreachable(), "{kind:?} under another error");
            // A Retry-After is an answer, whatever the chain holds.
            let asked = ExportError::retryable_after(
                std::io::Error::new(kind, "io"),
                Duration::from_secs(1),
            );
            assert!(!asked.is_unreachable() && asked.is_answered(), "{kind:?}");
        }
        let other = ExportError::retryable(Wrapped(std::io::Error::other("disk full")));
        assert!(!other.is_unreachable());
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
                ExportError::unreachable("connection refused"),
                "export failed, retryable",
                "export failed, retryable: connection refused",
            ),
            (
                ExportError::failing("HTTP 502"),
                "export failed, retryable",
                "export failed, retryable: HTTP 502",
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
