//! What `Client::export` answers: delivered, spooled, or dropped with the reason and the
//! payload handed back; and the errors of shutdown.

use std::fmt;
use std::sync::Arc;

use outlast_core::{ErrorChain, ExportError, Payload};
use outlast_spool::SpoolError;

use crate::DropReason;

/// Where an accepted payload went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[must_use]
pub enum Delivery {
    /// The backend confirmed it (on the first attempt or on the quick retry).
    Delivered,
    /// It is in the spool; the drain task will deliver it.
    Spooled,
}

impl Delivery {
    /// Whether the backend confirmed the payload.
    pub fn is_delivered(self) -> bool {
        matches!(self, Delivery::Delivered)
    }

    /// Whether the payload went to the spool.
    pub fn is_spooled(self) -> bool {
        matches!(self, Delivery::Spooled)
    }
}

/// Why the spool could not take a payload. `Display` is the message; the cause is the
/// [`source`](std::error::Error::source).
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum SpoolFault {
    /// The spool could not be opened when the client was built; the client runs without it.
    #[error("the spool could not be opened")]
    Open(#[source] Arc<SpoolError>),
    /// Writing the record failed (disk full, read-only file system, I/O error).
    #[error("the spool could not be written")]
    Write(#[source] std::io::Error),
}

/// `Debug` of the public errors: the message and its causes on one line ([`ErrorChain`]).
macro_rules! debug_as_chain {
    ($($t:ty),*) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&ErrorChain(self), f)
            }
        }
    )*};
}
debug_as_chain!(SpoolFault, DropError, ShutdownError, crate::http::HttpError);

/// A payload the client did not deliver and did not spool. The payload comes back.
///
/// Each such drop is counted in [`ClientStats`](crate::ClientStats) under its
/// [`DropReason`] and logged (rate-limited).
///
/// `Display` is complete: it includes the cause once (for an HTTP 401,
/// `payload dropped: the backend rejected it permanently: HTTP status 401 Unauthorized:
/// "invalid token"`). So that a chain printer does not repeat it,
/// [`source`](std::error::Error::source) is `None`; the structured cause is the variant's
/// `source` field ([`export_error`](Self::export_error), [`spool_fault`](Self::spool_fault)).
/// `Debug` prints the same line, without the payload.
#[non_exhaustive]
pub enum DropError {
    /// The backend was unreachable and the spool is full (its size cap, drop-newest policy).
    SpoolFull {
        /// The payload, handed back.
        payload: Payload,
        /// The spool's size cap.
        spool_max_bytes: u64,
    },
    /// The backend rejected the payload permanently (e.g. HTTP 400); it was not retried.
    Permanent {
        /// The payload, handed back.
        payload: Payload,
        /// The exporter's error (printed by `Display`, not returned by `source()`).
        source: ExportError,
    },
    /// The backend was unreachable and the spool is unavailable.
    SpoolUnavailable {
        /// The payload, handed back.
        payload: Payload,
        /// What is wrong with the spool (printed by `Display`, not returned by `source()`).
        source: SpoolFault,
    },
    /// The client has been shut down (or shut down while this export was under way).
    ShutDown {
        /// The payload, handed back.
        payload: Payload,
    },
    /// The payload is larger than the largest record the spool accepts, so the client could
    /// not keep it through an outage; it is refused up front.
    TooLarge {
        /// The payload, handed back.
        payload: Payload,
        /// Its size.
        size: u64,
        /// The limit (`max_record_bytes`).
        max: u64,
    },
    /// The payload's key and content type take more room than a spooled record's header
    /// may hold (64 KiB): refused at `export`, whether the backend is up or not, since the
    /// spool could never hold it.
    KeyTooLarge {
        /// The payload, handed back.
        payload: Payload,
        /// The encoded size of its key and content type.
        size: u64,
        /// The spool format's limit.
        max: u64,
    },
}

impl fmt::Display for DropError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DropError::SpoolFull {
                spool_max_bytes, ..
            } => write!(
                f,
                "payload dropped: the backend is unreachable and the spool is full ({spool_max_bytes} bytes)"
            ),
            DropError::Permanent { source, .. } => write!(
                f,
                "payload dropped: the backend rejected it permanently: {}",
                permanent_cause(source)
            ),
            DropError::SpoolUnavailable { source, .. } => write!(
                f,
                "payload dropped: the backend is unreachable and the spool is unavailable: {}",
                ErrorChain(source)
            ),
            DropError::ShutDown { .. } => {
                f.write_str("payload refused: the client has been shut down")
            }
            DropError::TooLarge { size, max, .. } => write!(
                f,
                "payload refused: {size} bytes exceeds max_record_bytes ({max} bytes)"
            ),
            DropError::KeyTooLarge { size, max, .. } => write!(
                f,
                "payload refused: its key and content type take {size} bytes, over the spool's limit of {max} bytes"
            ),
        }
    }
}

/// No `source()`: `Display` already prints the cause.
impl std::error::Error for DropError {}

/// The cause of a permanent rejection: what is under the exporter's "rejected permanently"
/// (the HTTP status and body, say), or the exporter's error itself if it has no cause.
fn permanent_cause(e: &ExportError) -> ErrorChain<'_> {
    match std::error::Error::source(e) {
        Some(cause) => ErrorChain(cause),
        None => ErrorChain(e),
    }
}

impl DropError {
    /// The exporter's error, for [`DropError::Permanent`].
    pub fn export_error(&self) -> Option<&ExportError> {
        match self {
            DropError::Permanent { source, .. } => Some(source),
            _ => None,
        }
    }

    /// What is wrong with the spool, for [`DropError::SpoolUnavailable`].
    pub fn spool_fault(&self) -> Option<&SpoolFault> {
        match self {
            DropError::SpoolUnavailable { source, .. } => Some(source),
            _ => None,
        }
    }

    /// Why the payload was dropped.
    pub fn reason(&self) -> DropReason {
        match self {
            DropError::SpoolFull { .. } => DropReason::SpoolFull,
            DropError::Permanent { .. } => DropReason::Permanent,
            DropError::SpoolUnavailable { .. } => DropReason::SpoolUnavailable,
            DropError::ShutDown { .. } => DropReason::ShutDown,
            DropError::TooLarge { .. } | DropError::KeyTooLarge { .. } => DropReason::TooLarge,
        }
    }

    /// The refused payload.
    pub fn payload(&self) -> &Payload {
        match self {
            DropError::SpoolFull { payload, .. }
            | DropError::Permanent { payload, .. }
            | DropError::SpoolUnavailable { payload, .. }
            | DropError::ShutDown { payload }
            | DropError::TooLarge { payload, .. }
            | DropError::KeyTooLarge { payload, .. } => payload,
        }
    }

    /// Takes the refused payload back.
    pub fn into_payload(self) -> Payload {
        match self {
            DropError::SpoolFull { payload, .. }
            | DropError::Permanent { payload, .. }
            | DropError::SpoolUnavailable { payload, .. }
            | DropError::ShutDown { payload }
            | DropError::TooLarge { payload, .. }
            | DropError::KeyTooLarge { payload, .. } => payload,
        }
    }

    /// Whether the client was shut down.
    pub fn is_shut_down(&self) -> bool {
        matches!(self, DropError::ShutDown { .. })
    }

    /// Whether the backend rejected the payload permanently.
    pub fn is_permanent(&self) -> bool {
        matches!(self, DropError::Permanent { .. })
    }

    /// Whether the payload was dropped for lack of room or of a usable spool, i.e. whether
    /// trying again later (once the backend is back) could succeed.
    pub fn is_retryable_later(&self) -> bool {
        matches!(
            self,
            DropError::SpoolFull { .. } | DropError::SpoolUnavailable { .. }
        )
    }
}

/// What went wrong while shutting down. The flush report is kept. `Display` is the message;
/// the cause is the [`source`](std::error::Error::source); `Debug` prints both on one line.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum ShutdownError {
    /// The client had already been shut down completely.
    #[error("the client has already been shut down")]
    AlreadyShutDown,
    /// Closing the spool failed: what was not synced may be lost on a power failure
    /// (a process crash loses nothing in the default durability mode).
    #[error("closing the spool failed")]
    Spool {
        /// What the final flush achieved.
        report: crate::FlushReport,
        /// The spool's error.
        #[source]
        source: SpoolError,
    },
    /// The exporter's own shutdown failed or did not finish in time.
    #[error("the exporter's shutdown failed")]
    Exporter {
        /// What the final flush achieved.
        report: crate::FlushReport,
        /// The exporter's error.
        #[source]
        source: ExportError,
    },
}

impl ShutdownError {
    /// The final flush report, when shutdown got that far.
    pub fn report(&self) -> Option<&crate::FlushReport> {
        match self {
            ShutdownError::AlreadyShutDown => None,
            ShutdownError::Spool { report, .. } | ShutdownError::Exporter { report, .. } => {
                Some(report)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync_static<T: Send + Sync + 'static>() {}

    #[test]
    fn public_errors_are_send_sync_static() {
        assert_send_sync_static::<DropError>();
        assert_send_sync_static::<ShutdownError>();
        assert_send_sync_static::<SpoolFault>();
    }

    /// Every error in the chain prints its own message, not its source's.
    fn assert_each_cause_once(e: &(dyn std::error::Error + 'static)) {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = cur {
            if let Some(src) = err.source() {
                assert!(
                    !err.to_string().contains(&src.to_string()),
                    "{err} repeats its source {src}"
                );
            }
            cur = err.source();
        }
    }

    #[test]
    fn drop_errors_print_their_cause_once_and_debug_reads_like_display() {
        let p = Payload::new(&b"abc"[..]);
        let cases: Vec<(DropError, &str)> = vec![
            (
                DropError::Permanent {
                    payload: p.clone(),
                    source: ExportError::permanent("HTTP status 401 Unauthorized: \"bad token\""),
                },
                "payload dropped: the backend rejected it permanently: HTTP status 401 Unauthorized: \"bad token\"",
            ),
            (
                // An exporter error without a cause: its own message is the cause.
                DropError::Permanent {
                    payload: p.clone(),
                    source: ExportError::Timeout {
                        after: std::time::Duration::from_secs(1),
                    },
                },
                "payload dropped: the backend rejected it permanently: export timed out after 1.000s",
            ),
            (
                DropError::SpoolUnavailable {
                    payload: p.clone(),
                    source: SpoolFault::Write(std::io::Error::other("disk full")),
                },
                "payload dropped: the backend is unreachable and the spool is unavailable: the spool could not be written: disk full",
            ),
            (
                DropError::SpoolFull {
                    payload: p.clone(),
                    spool_max_bytes: 1024,
                },
                "payload dropped: the backend is unreachable and the spool is full (1024 bytes)",
            ),
            (
                DropError::ShutDown { payload: p.clone() },
                "payload refused: the client has been shut down",
            ),
            (
                DropError::TooLarge {
                    payload: p.clone(),
                    size: 3,
                    max: 2,
                },
                "payload refused: 3 bytes exceeds max_record_bytes (2 bytes)",
            ),
            (
                DropError::KeyTooLarge {
                    payload: p.clone(),
                    size: 70000,
                    max: 65536,
                },
                "payload refused: its key and content type take 70000 bytes, over the spool's limit of 65536 bytes",
            ),
        ];
        for (e, expected) in cases {
            assert_eq!(e.to_string(), expected);
            assert_eq!(format!("{e:?}"), expected);
            assert!(std::error::Error::source(&e).is_none(), "{e}");
            assert_eq!(ErrorChain(&e).to_string(), expected);
        }
    }

    #[test]
    fn spool_and_shutdown_errors_print_their_own_message_and_return_the_cause() {
        let write = SpoolFault::Write(std::io::Error::other("disk full"));
        assert_eq!(write.to_string(), "the spool could not be written");
        assert_eq!(
            format!("{write:?}"),
            "the spool could not be written: disk full"
        );
        assert_each_cause_once(&write);
        let open = SpoolFault::Open(Arc::new(SpoolError::Closed));
        assert_eq!(open.to_string(), "the spool could not be opened");
        assert_eq!(
            ErrorChain(&open).to_string(),
            "the spool could not be opened: spool is closed"
        );
        let report = crate::FlushReport {
            complete: true,
            outcome: crate::FlushOutcome::Drained,
            backend: crate::BackendState::Online,
            next_attempt_in: None,
            synced: true,
            ack_failures: 0,
            remaining_records: 0,
            remaining_bytes: 0,
            delivered: 0,
            dropped: 0,
            elapsed: std::time::Duration::ZERO,
        };
        let e = ShutdownError::Exporter {
            report: report.clone(),
            source: ExportError::retryable("connection reset"),
        };
        assert_eq!(e.to_string(), "the exporter's shutdown failed");
        assert_eq!(
            format!("{e:?}"),
            "the exporter's shutdown failed: export failed, retryable: connection reset"
        );
        assert_each_cause_once(&e);
        let e = ShutdownError::Spool {
            report,
            source: SpoolError::Closed,
        };
        assert_eq!(
            format!("{e:?}"),
            "closing the spool failed: spool is closed"
        );
        assert_each_cause_once(&e);
        let e = ShutdownError::AlreadyShutDown;
        assert_eq!(format!("{e:?}"), "the client has already been shut down");
    }

    #[test]
    fn every_drop_error_hands_the_payload_back() {
        let p = Payload::new(&b"abc"[..]);
        let errors = [
            DropError::SpoolFull {
                payload: p.clone(),
                spool_max_bytes: 1,
            },
            DropError::Permanent {
                payload: p.clone(),
                source: ExportError::permanent("400"),
            },
            DropError::SpoolUnavailable {
                payload: p.clone(),
                source: SpoolFault::Write(std::io::Error::other("disk full")),
            },
            DropError::ShutDown { payload: p.clone() },
            DropError::TooLarge {
                payload: p.clone(),
                size: 3,
                max: 2,
            },
            DropError::KeyTooLarge {
                payload: p.clone(),
                size: 3,
                max: 2,
            },
        ];
        for e in errors {
            assert_eq!(e.payload(), &p);
            assert!(!e.to_string().is_empty());
            let reason = e.reason();
            assert_eq!(e.into_payload(), p, "{reason}");
        }
    }
}
