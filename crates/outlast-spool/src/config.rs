//! Spool configuration: where records are stored, how much, and how durably.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::SpoolError;
use crate::format::{FORMAT_MAX_RECORD_BYTES, FRAME_OVERHEAD, SEGMENT_HEADER_LEN};

/// Default cap on the bytes all segment files may take: 512 MiB, the product's documented
/// default (about ten minutes of a busy service's telemetry, small next to a disk).
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 512 * 1024 * 1024;
/// Default size at which a segment is sealed and a new one started: 16 MiB, small enough that
/// acked data is freed promptly (a segment is deleted whole), large enough that rotation
/// (one fsync and one file creation) is rare.
pub const DEFAULT_SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// Default largest record: 8 MiB, above any sane OTLP batch, and half a default segment.
pub const DEFAULT_MAX_RECORD_BYTES: u64 = 8 * 1024 * 1024;
/// Share of the file system's free space (measured when the spool opens, and again when an
/// append does not fit under the cap or segments are freed) that the spool may fill on top
/// of what it already holds: 90 %. The cap in force is the smaller of
/// `spool_max_bytes` and that, so the spool never fills a disk to the last byte (the rest
/// of the host keeps room for its logs and temporary files); a disk filled by others
/// anyway is survived too (see the crate documentation, "Full disk").
pub const DISK_FREE_SHARE_PERCENT: u64 = 90;

/// The cap in force: `configured`, lowered to what the spool holds (`held`) plus
/// [`DISK_FREE_SHARE_PERCENT`] of the free space (`free`, when it could be measured).
pub(crate) fn effective_cap(configured: u64, held: u64, free: Option<u64>) -> u64 {
    match free {
        Some(free) => {
            let share = u64::try_from(u128::from(free) * u128::from(DISK_FREE_SHARE_PERCENT) / 100)
                .unwrap_or(u64::MAX);
            configured.min(held.saturating_add(share))
        }
        None => configured,
    }
}

/// Default fsync interval in [`Durability::OsWrite`] mode: 1 s, the product's documented
/// default (at most about one second of data lost on power loss).
pub const DEFAULT_FSYNC_INTERVAL: Duration = Duration::from_secs(1);

/// What an append does when the spool has reached its size cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FullPolicy {
    /// Refuse the new record ([`AppendErrorKind::Full`](crate::AppendErrorKind::Full)); keep
    /// what is stored. The default: old data is as valuable as new, and refusing is cheap.
    #[default]
    DropNewest,
    /// Delete the oldest whole segment to make room; the dropped records are counted in
    /// [`Appended::evicted`](crate::Appended::evicted).
    DropOldest,
}

/// How durable a record is when [`Spool::append`](crate::Spool::append) returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The frame is handed to the OS with one `write(2)` on every append: it survives a crash
    /// or `kill -9` of the process. Data is fsynced every `fsync_interval` (by a small
    /// background thread), right after each segment rotation (by the same thread, while
    /// appends go on), on [`Spool::sync`](crate::Spool::sync) and on close: a power loss or
    /// kernel crash loses at most about the last interval.
    OsWrite {
        /// How often written data is fsynced.
        fsync_interval: Duration,
    },
    /// The record is fsynced (`fdatasync`) before `append` returns: it survives power loss.
    /// Concurrent appenders share one fsync (group commit).
    FsyncEveryAppend,
}

impl Default for Durability {
    fn default() -> Self {
        Durability::OsWrite {
            fsync_interval: DEFAULT_FSYNC_INTERVAL,
        }
    }
}

/// Where records are stored, and how.
///
/// Setters are named `with_<field>` and getters `<field>`, as on
/// [`Payload`](crate::Payload) and in the OpenTelemetry SDK's builders. The workspace's
/// other builders (`ClientBuilder`, `HttpExporterBuilder`) name their setters after the field
/// alone, but they are consumed by `build()` and need no getters; a `SpoolConfig` is kept and
/// read back by the spool and its users, and Rust has no overloading, so a setter and a getter
/// cannot both take the field's name. The `with_` prefix goes on the setter so that reading a
/// setting, the common case, uses the plain name.
///
/// # Examples
///
/// ```
/// use outlast_spool::{Durability, FullPolicy, SpoolConfig};
///
/// let config = SpoolConfig::new("/var/lib/myapp/outlast")
///     .with_spool_max_bytes(64 * 1024 * 1024)
///     .with_full_policy(FullPolicy::DropOldest)
///     .with_durability(Durability::FsyncEveryAppend);
/// assert!(config.validate().is_ok());
/// assert_eq!(config.spool_max_bytes(), 64 * 1024 * 1024);
/// ```
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    root: PathBuf,
    spool_max_bytes: u64,
    segment_bytes: u64,
    max_record_bytes: u64,
    full_policy: FullPolicy,
    max_record_age: Option<Duration>,
    durability: Durability,
    identity: Option<String>,
    adoption: Adoption,
}

/// Which lanes of the spool directory a spool takes besides its own identity's: the rule of
/// adoption. Whatever the rule, a spool never rewrites another lane's identity file, and
/// its own lane (the one it appends to) is always one of its own identity: a lane taken
/// under a wider rule is only drained.
///
/// The default, [`Adoption::Own`], is what an application wants. The wider rules are for an
/// operator delivering another identity's records on purpose (`outlast replay --identity`,
/// `--any-identity`): the spool takes those lanes under its own locks, so that no other
/// process can take them meanwhile, and leaves their identity as it was for whoever takes
/// what is left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Adoption {
    /// Lanes recorded with this spool's identity, and lanes with no identity file (written
    /// before identities were recorded). The default.
    #[default]
    Own,
    /// As [`Own`](Adoption::Own), and lanes recorded for one of these identities, and lanes
    /// whose spool declared no identity.
    Also(Vec<String>),
    /// Every lane, whatever identity it records (even one that cannot be read).
    Any,
}

impl SpoolConfig {
    /// A configuration for a spool rooted at `root`, with every other setting at its default.
    pub fn new(root: impl Into<PathBuf>) -> SpoolConfig {
        SpoolConfig {
            root: root.into(),
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            full_policy: FullPolicy::default(),
            max_record_age: None,
            durability: Durability::default(),
            identity: None,
            adoption: Adoption::Own,
        }
    }

    /// Names who the records of this spool's lanes are for (e.g. the exporter's destination).
    /// It is recorded in every lane this spool creates; lanes recorded with another identity
    /// are left alone and reported, never adopted. `None` (the default) records no identity.
    #[must_use]
    pub fn with_identity(mut self, identity: Option<String>) -> Self {
        self.identity = identity;
        self
    }

    /// The identity set with [`SpoolConfig::with_identity`].
    pub fn identity(&self) -> Option<&str> {
        self.identity.as_deref()
    }

    /// Sets which lanes of other identities the spool takes (default [`Adoption::Own`]:
    /// none). Identity files are never rewritten, whatever the rule.
    #[must_use]
    pub fn with_adoption(mut self, adoption: Adoption) -> Self {
        self.adoption = adoption;
        self
    }

    /// The rule set with [`SpoolConfig::with_adoption`].
    pub fn adoption(&self) -> &Adoption {
        &self.adoption
    }

    /// Caps the bytes all segment files may take (default [`DEFAULT_SPOOL_MAX_BYTES`]).
    #[must_use]
    pub fn with_spool_max_bytes(mut self, bytes: u64) -> Self {
        self.spool_max_bytes = bytes;
        self
    }

    /// Size at which a segment is sealed (default [`DEFAULT_SEGMENT_BYTES`]).
    #[must_use]
    pub fn with_segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes;
        self
    }

    /// Largest record accepted, framing included (default [`DEFAULT_MAX_RECORD_BYTES`]).
    #[must_use]
    pub fn with_max_record_bytes(mut self, bytes: u64) -> Self {
        self.max_record_bytes = bytes;
        self
    }

    /// What to do when the cap is reached (default [`FullPolicy::DropNewest`]).
    #[must_use]
    pub fn with_full_policy(mut self, p: FullPolicy) -> Self {
        self.full_policy = p;
        self
    }

    /// Records created longer ago than this are dropped (counted) instead of delivered
    /// (default `None`: records never expire).
    #[must_use]
    pub fn with_max_record_age(mut self, age: Option<Duration>) -> Self {
        self.max_record_age = age;
        self
    }

    /// Durability of appends (default [`Durability::OsWrite`] with a 1 s fsync interval).
    #[must_use]
    pub fn with_durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }

    /// Checks that the settings make sense together.
    ///
    /// # Errors
    ///
    /// [`SpoolError::Config`] naming the parameter and the reason.
    pub fn validate(&self) -> Result<(), SpoolError> {
        let bad = |param: &'static str, reason: String| Err(SpoolError::Config { param, reason });
        if self.root.as_os_str().is_empty() {
            return bad("root", "must not be empty".into());
        }
        let min_record = FRAME_OVERHEAD + 64;
        if self.max_record_bytes < min_record {
            return bad(
                "max_record_bytes",
                format!(
                    "{} is below the minimum of {min_record}",
                    self.max_record_bytes
                ),
            );
        }
        if self.max_record_bytes > FORMAT_MAX_RECORD_BYTES {
            return bad(
                "max_record_bytes",
                format!(
                    "{} is above the format's limit of {FORMAT_MAX_RECORD_BYTES}",
                    self.max_record_bytes
                ),
            );
        }
        if self.segment_bytes < self.max_record_bytes + SEGMENT_HEADER_LEN {
            return bad(
                "segment_bytes",
                format!(
                    "{} must hold the segment header and one record of max_record_bytes ({})",
                    self.segment_bytes, self.max_record_bytes
                ),
            );
        }
        if self.spool_max_bytes < self.segment_bytes {
            return bad(
                "spool_max_bytes",
                format!(
                    "{} must be at least segment_bytes ({})",
                    self.spool_max_bytes, self.segment_bytes
                ),
            );
        }
        if let Some(age) = self.max_record_age
            && age.is_zero()
        {
            return bad("max_record_age", "must be greater than zero".into());
        }
        if let Durability::OsWrite { fsync_interval } = self.durability
            && fsync_interval.is_zero()
        {
            return bad(
                "durability",
                "fsync_interval must be greater than zero (use FsyncEveryAppend)".into(),
            );
        }
        Ok(())
    }

    /// The root directory holding the lanes.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The cap on the bytes of all segment files.
    pub fn spool_max_bytes(&self) -> u64 {
        self.spool_max_bytes
    }

    /// The size at which a segment is sealed.
    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes
    }

    /// The largest record accepted, framing included.
    pub fn max_record_bytes(&self) -> u64 {
        self.max_record_bytes
    }

    /// What an append does when the cap is reached.
    pub fn full_policy(&self) -> FullPolicy {
        self.full_policy
    }

    /// The maximum record age, if any.
    pub fn max_record_age(&self) -> Option<Duration> {
        self.max_record_age
    }

    /// The durability mode.
    pub fn durability(&self) -> Durability {
        self.durability
    }
}
