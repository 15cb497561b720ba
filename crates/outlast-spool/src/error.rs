//! Errors of the spool: [`SpoolError`] for operations, [`AppendError`] for a refused append
//! (which hands the payload back).

use std::fmt;
use std::io;
use std::path::PathBuf;

use outlast_core::Payload;

use crate::types::RecordId;

/// Why a spool operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// A configuration value was rejected.
    #[error("invalid spool configuration: {param}: {reason}")]
    Config {
        /// The parameter's name, as in [`SpoolConfig`](crate::SpoolConfig).
        param: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// No lane could be locked or created under the root.
    #[error("spool is locked: no lane could be locked or created under {}", path.display())]
    Locked {
        /// The root directory.
        path: PathBuf,
    },
    /// The root is not safe to use: a symlink, not a directory, or owned by another user.
    #[error("unsafe spool root {}: {reason}", path.display())]
    UnsafeRoot {
        /// The offending path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file operation failed (permission denied, read-only file system, disk full, EIO...).
    ///
    /// The message names the OS error, so the error is not also returned by `source()`: a
    /// chain printed cause by cause shows it once.
    #[error("spool I/O error on {}: {error}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        error: io::Error,
    },
    /// An ack named a record that was never appended to that lane.
    #[error("ack of unknown record {id:?} (the lane's newest record is {newest})")]
    UnknownRecord {
        /// The record named by the ack.
        id: RecordId,
        /// The newest sequence number of that lane (0: none).
        newest: u64,
    },
    /// The spool was closed (or a previous failure made it unusable).
    #[error("spool is closed")]
    Closed,
}

impl SpoolError {
    /// Whether the error comes from a file operation.
    pub fn is_io(&self) -> bool {
        matches!(self, SpoolError::Io { .. })
    }

    /// Whether the error is a rejected configuration or an unusable root (a fix is needed
    /// from whoever configured the spool; retrying will not help).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            SpoolError::Config { .. } | SpoolError::UnsafeRoot { .. }
        )
    }

    /// Whether the spool was closed.
    pub fn is_closed(&self) -> bool {
        matches!(self, SpoolError::Closed)
    }

    /// Whether the disk is full (ENOSPC or EDQUOT).
    pub fn is_disk_full(&self) -> bool {
        match self {
            SpoolError::Io { error, .. } => is_disk_full(error),
            _ => false,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, error: io::Error) -> SpoolError {
        SpoolError::Io {
            path: path.into(),
            error,
        }
    }
}

pub(crate) fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// Why an append was refused.
#[derive(Debug)]
#[non_exhaustive]
pub enum AppendErrorKind {
    /// The spool is at its cap and the policy is [`FullPolicy::DropNewest`](crate::FullPolicy).
    Full {
        /// The configured cap.
        spool_max_bytes: u64,
    },
    /// The record (framing included) is larger than `max_record_bytes`.
    TooLarge {
        /// The framed size of the record.
        size: u64,
        /// The configured maximum.
        max: u64,
    },
    /// The record's header (its key and content type) encodes to more bytes than the format
    /// allows ([`MAX_HEADER_BYTES`](crate::format::MAX_HEADER_BYTES)): a reader would
    /// discard it, so it is refused here.
    HeaderTooLarge {
        /// The encoded header's size.
        size: u64,
        /// The format's limit.
        max: u64,
    },
    /// Writing failed (ENOSPC, EIO, read-only...). Nothing stored before is harmed. In
    /// [`Durability::FsyncEveryAppend`](crate::Durability) mode a failed fsync also lands
    /// here; the frame was then already written and may still be delivered later
    /// (at-least-once), or not.
    Io(io::Error),
    /// The spool was closed.
    Closed,
}

impl fmt::Display for AppendErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppendErrorKind::Full { spool_max_bytes } => {
                write!(f, "spool is full ({spool_max_bytes} bytes)")
            }
            AppendErrorKind::TooLarge { size, max } => {
                write!(
                    f,
                    "record of {size} bytes exceeds the maximum of {max} bytes"
                )
            }
            AppendErrorKind::HeaderTooLarge { size, max } => write!(
                f,
                "record header (key and content type) of {size} bytes exceeds the format's limit of {max} bytes"
            ),
            AppendErrorKind::Io(e) => write!(f, "spool write failed: {e}"),
            AppendErrorKind::Closed => f.write_str("spool is closed"),
        }
    }
}

/// An append that was refused; the payload is handed back.
#[derive(Debug, thiserror::Error)]
#[error("append refused: {kind}")]
pub struct AppendError {
    /// Why it was refused.
    pub kind: AppendErrorKind,
    /// The payload, unchanged.
    pub payload: Payload,
}

impl AppendError {
    pub(crate) fn new(kind: AppendErrorKind, payload: Payload) -> AppendError {
        AppendError { kind, payload }
    }

    /// Takes the payload back.
    pub fn into_payload(self) -> Payload {
        self.payload
    }

    /// Why it was refused.
    pub fn kind(&self) -> &AppendErrorKind {
        &self.kind
    }

    /// Whether the spool is full (drop-newest policy).
    pub fn is_full(&self) -> bool {
        matches!(self.kind, AppendErrorKind::Full { .. })
    }

    /// Whether the record is too large to ever be stored (the whole record, or its header).
    pub fn is_too_large(&self) -> bool {
        matches!(
            self.kind,
            AppendErrorKind::TooLarge { .. } | AppendErrorKind::HeaderTooLarge { .. }
        )
    }

    /// Whether writing failed.
    pub fn is_io(&self) -> bool {
        matches!(self.kind, AppendErrorKind::Io(_))
    }

    /// Whether the disk is full (ENOSPC or EDQUOT).
    pub fn is_disk_full(&self) -> bool {
        matches!(&self.kind, AppendErrorKind::Io(e) if is_disk_full(e))
    }

    /// Whether the spool was closed.
    pub fn is_closed(&self) -> bool {
        matches!(self.kind, AppendErrorKind::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_prints_its_cause_once_in_a_chain() {
        let e = SpoolError::io("/s/cursor", io::Error::from_raw_os_error(28));
        let mut chain = e.to_string();
        let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(&e);
        while let Some(c) = cur {
            chain.push_str(&format!(": {c}"));
            cur = c.source();
        }
        assert_eq!(
            chain.matches("No space left on device").count(),
            1,
            "{chain}"
        );
        assert!(e.is_disk_full());
    }
}
