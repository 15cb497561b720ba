//! The client's configuration: a builder with `Option` fields, named defaults, and validation
//! that rejects nonsense instead of clamping it.

use std::path::PathBuf;
use std::time::Duration;

use outlast_core::ConfigError;
use outlast_core::retry::{
    DEFAULT_IMMEDIATE_RETRY_DELAY, DEFAULT_INITIAL_BACKOFF, DEFAULT_JITTER, DEFAULT_MAX_BACKOFF,
    DEFAULT_MAX_RETRY_AFTER, RetryPolicy,
};
use outlast_core::throttle::DEFAULT_WARN_INTERVAL;
use outlast_core::units::saturate;
use outlast_spool::{
    Adoption, DEFAULT_MAX_RECORD_BYTES, DEFAULT_SEGMENT_BYTES, DEFAULT_SPOOL_MAX_BYTES, Durability,
    FullPolicy, SpoolConfig, SpoolError,
};

/// Time limit of one export attempt (direct or replay) and of one probe: 10 s is far above a
/// healthy backend's answer time and short enough that a hung connection is noticed quickly.
pub(crate) const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Records read from the spool per replay batch: 100 keeps a batch's memory small (at most
/// 100 payloads) while amortising the per-batch acknowledgement (one cursor write).
pub(crate) const DEFAULT_BATCH_SIZE: usize = 100;
/// Bytes read from the spool per replay batch (at least one record is always read): 4 MiB
/// bounds the memory a replay holds however large the payloads.
pub(crate) const DEFAULT_BATCH_MAX_BYTES: u64 = 4 * 1024 * 1024;
/// Requests in flight at once while replaying (further limited by the exporter's own
/// `max_in_flight`): 4 hides most of a round trip without overloading a recovering backend.
pub(crate) const DEFAULT_MAX_IN_FLIGHT: usize = 4;
/// The most replay requests that may be in flight at once: far above what any backend
/// needs, and small enough that the window's bookkeeping stays a few kilobytes.
pub(crate) const MAX_IN_FLIGHT_LIMIT: usize = 1024;
/// Pause between two replay batches: none, so a backlog drains at the backend's speed.
pub(crate) const DEFAULT_BATCH_DELAY: Duration = Duration::ZERO;
// ----- Coalesced replay (see `Exporter::coalescing`) -----

/// Records per merged replay request, for exporters that merge: with the default
/// `batch_size` (100) and `max_in_flight` (4), four full merged requests fill the replay
/// window, so merging keeps the pipelining and the crash duplicate window stays
/// `batch_size` records.
pub(crate) const DEFAULT_COALESCE_MAX_RECORDS: usize = 25;
/// Payload bytes per merged replay request: under the request-size limits of common
/// collectors and intakes (a few MB and up), and a failed merged request resends little.
pub(crate) const DEFAULT_COALESCE_MAX_BYTES: u64 = 1024 * 1024;

/// The variables the builder itself names: the spool directory's (read by
/// [`default_spool_dir`]), and the two a record-size error names. The environment's table
/// (`env.rs`, which stands on this file) declares them with these names.
pub(crate) const SPOOL_DIR_VAR: &str = "OUTLAST_SPOOL_DIR";
pub(crate) const SEGMENT_BYTES_VAR: &str = "OUTLAST_SPOOL_SEGMENT_BYTES";
pub(crate) const MAX_RECORD_BYTES_VAR: &str = "OUTLAST_MAX_RECORD_BYTES";

/// Prefix of the default spool directory's name under [`std::env::temp_dir`]; the
/// service's name and the user id follow (see [`default_spool_dir`]).
pub(crate) const DEFAULT_SPOOL_DIR_PREFIX: &str = "outlast-";

/// The default spool directory: `OUTLAST_SPOOL_DIR` if set and not empty, else a directory
/// of this service under the temporary directory:
/// `<temp dir>/outlast-<executable name>-<user id>` (e.g. `/tmp/outlast-checkout-api-1000`;
/// without the user id on systems that have none).
///
/// The name is per service so that two services on one host, each with the defaults, never
/// share a spool: a client adopts the records it finds in its directory, and must not send
/// another service's telemetry to its own backend. The user id keeps two users' runs of the
/// same program apart (outlast refuses a directory owned by another user anyway). The
/// executable's name is taken from [`std::env::current_exe`], with every character other
/// than ASCII letters, digits, `.`, `_` and `-` replaced by `_` (at most 64 of them); if it
/// cannot be found, `process` is used.
///
/// The temporary directory is a fallback that works everywhere (including serverless
/// sandboxes, where `/tmp` is the only writable place); on a server it may be wiped at reboot,
/// so point the spool at persistent storage (e.g. `/var/lib/<app>/outlast`).
pub fn default_spool_dir() -> PathBuf {
    match std::env::var_os(SPOOL_DIR_VAR) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => std::env::temp_dir().join(default_spool_dir_name(
            std::env::current_exe().ok().as_deref(),
            user_id(),
        )),
    }
}

/// `outlast-<sanitised executable stem>[-<uid>]`.
fn default_spool_dir_name(exe: Option<&std::path::Path>, uid: Option<u32>) -> String {
    let stem = exe
        .and_then(std::path::Path::file_stem)
        .map(|s| s.to_string_lossy())
        .unwrap_or_default();
    let mut name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    // A name of dots only would be `.` or `..` after the prefix is dropped by a careless
    // reader; and an empty one says nothing.
    if name.chars().all(|c| c == '.') {
        name = "process".to_owned();
    }
    match uid {
        Some(uid) => format!("{DEFAULT_SPOOL_DIR_PREFIX}{name}-{uid}"),
        None => format!("{DEFAULT_SPOOL_DIR_PREFIX}{name}"),
    }
}

#[cfg(unix)]
fn user_id() -> Option<u32> {
    Some(rustix::process::getuid().as_raw())
}

#[cfg(not(unix))]
fn user_id() -> Option<u32> {
    None
}

/// Configures and builds a [`Client`](crate::Client).
///
/// Every setting is optional; unset settings take the default named in its method's
/// documentation. [`ClientBuilder::from_env`] fills the builder from `OUTLAST_*` environment
/// variables (see the [crate documentation](crate#configuration) for the table); methods
/// called afterwards override what the environment said.
///
/// No value panics, now or later. Every duration is saturated to
/// [`MAX_DURATION`](outlast_core::units::MAX_DURATION) (about 30 years), so `Duration::MAX`
/// means "no limit"; sizes and counts outside what the client can honour are refused by
/// [`build`](ClientBuilder::build) with [`ConfigError::Invalid`] naming the parameter.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use outlast_client::{ClientBuilder, Durability};
///
/// let builder = ClientBuilder::new()
///     .spool_dir("/var/lib/myapp/outlast")
///     .spool_max_bytes(64 * 1024 * 1024)
///     .attempt_timeout(Duration::from_secs(5))
///     .durability(Durability::FsyncEveryAppend);
/// # let _ = builder;
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ClientBuilder {
    pub(crate) attempt_timeout: Option<Duration>,
    pub(crate) immediate_retry_delay: Option<Duration>,
    pub(crate) initial_backoff: Option<Duration>,
    pub(crate) max_backoff: Option<Duration>,
    pub(crate) jitter: Option<f64>,
    pub(crate) max_retry_after: Option<Duration>,
    pub(crate) warn_interval: Option<Duration>,
    pub(crate) spool_dir: Option<PathBuf>,
    pub(crate) spool_max_bytes: Option<u64>,
    pub(crate) segment_bytes: Option<u64>,
    pub(crate) max_record_bytes: Option<u64>,
    pub(crate) full_policy: Option<FullPolicy>,
    pub(crate) max_record_age: Option<Option<Duration>>,
    pub(crate) durability: Option<Durability>,
    pub(crate) batch_size: Option<usize>,
    pub(crate) batch_max_bytes: Option<u64>,
    pub(crate) max_in_flight: Option<usize>,
    pub(crate) batch_delay: Option<Duration>,
    pub(crate) coalesce_max_records: Option<usize>,
    pub(crate) coalesce_max_bytes: Option<u64>,
    pub(crate) runtime: Option<tokio::runtime::Handle>,
    // ----- lane identity and recovery detection (see the block at the end of the file) -----
    pub(crate) identity: Option<String>,
    pub(crate) adoption: Option<Adoption>,
    pub(crate) probe_interval: Option<Duration>,
    // ----- replay order and rate cap (see the block at the end of the file) -----
    pub(crate) replay_order: Option<ReplayOrder>,
    pub(crate) replay_bytes_per_sec: Option<Option<u64>>,
    pub(crate) replay_requests_per_sec: Option<Option<u64>>,
    /// Settings that came from environment variables: (builder parameter, variable), so that
    /// `build()` can name the variable when it rejects the value.
    pub(crate) from_env: Vec<(&'static str, &'static str)>,
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.$name = Some(value);
            self.forget_env(stringify!($name));
            self
        }
    };
}

impl ClientBuilder {
    /// A builder with every setting at its default (the environment is not read).
    pub fn new() -> ClientBuilder {
        ClientBuilder::default()
    }

    fn forget_env(&mut self, param: &'static str) {
        self.from_env.retain(|(p, _)| *p != param);
    }

    setter!(
        /// Time limit of each export attempt and probe (default [`DEFAULT_ATTEMPT_TIMEOUT`](ClientBuilder::DEFAULT_ATTEMPT_TIMEOUT)).
        /// An attempt that exceeds it is dropped and counts as a retryable failure.
        attempt_timeout: Duration
    );
    setter!(
        /// Delay before the one quick retry of a failed direct export (default
        /// [`DEFAULT_IMMEDIATE_RETRY_DELAY`](ClientBuilder::DEFAULT_IMMEDIATE_RETRY_DELAY),
        /// 1 s), at most
        /// [`MAX_IMMEDIATE_RETRY_DELAY`](ClientBuilder::MAX_IMMEDIATE_RETRY_DELAY) (60 s).
        /// The retry waits inside the caller's `export`: while the backend is down, a call
        /// returns within two attempt timeouts plus this delay. A longer value (e.g.
        /// `Duration::MAX`) makes [`build`](ClientBuilder::build) fail with
        /// [`ConfigError::Invalid`] naming `immediate_retry_delay` (or
        /// `OUTLAST_IMMEDIATE_RETRY_DELAY`); it is not clamped.
        immediate_retry_delay: Duration
    );
    setter!(
        /// First delay of the drain task's backoff (default [`DEFAULT_INITIAL_BACKOFF`](ClientBuilder::DEFAULT_INITIAL_BACKOFF), 1 s).
        initial_backoff: Duration
    );
    setter!(
        /// Cap on the drain task's backoff (default [`DEFAULT_MAX_BACKOFF`](ClientBuilder::DEFAULT_MAX_BACKOFF), 128 s).
        max_backoff: Duration
    );
    setter!(
        /// Randomised fraction of each backoff delay, in `[0, 1]` (default [`DEFAULT_JITTER`](ClientBuilder::DEFAULT_JITTER)).
        jitter: f64
    );
    setter!(
        /// Cap on a delay raised by a server's `Retry-After` (default
        /// [`DEFAULT_MAX_RETRY_AFTER`](ClientBuilder::DEFAULT_MAX_RETRY_AFTER), 128 s).
        max_retry_after: Duration
    );
    setter!(
        /// Least time between two "currently retrying" warnings, and between two error
        /// messages about drops of the same reason (default [`DEFAULT_WARN_INTERVAL`](ClientBuilder::DEFAULT_WARN_INTERVAL), 60 s).
        warn_interval: Duration
    );
    setter!(
        /// Cap on the spool's size in bytes (default [`DEFAULT_SPOOL_MAX_BYTES`](ClientBuilder::DEFAULT_SPOOL_MAX_BYTES), 512 MiB).
        spool_max_bytes: u64
    );
    setter!(
        /// Size at which a spool segment file is sealed (default [`DEFAULT_SEGMENT_BYTES`](ClientBuilder::DEFAULT_SEGMENT_BYTES)).
        segment_bytes: u64
    );
    setter!(
        /// Largest spool record (default [`DEFAULT_MAX_RECORD_BYTES`](ClientBuilder::DEFAULT_MAX_RECORD_BYTES)). `export` refuses a
        /// payload whose bytes exceed it with
        /// [`DropError::TooLarge`](crate::DropError::TooLarge) before any attempt. The spool
        /// adds a frame of a few dozen bytes plus the payload's key and content type, so a
        /// payload within that margin of the limit is delivered directly when the backend is
        /// up but refused as too large if it has to be spooled.
        max_record_bytes: u64
    );
    setter!(
        /// What happens when the spool is full (default [`FullPolicy::DropNewest`]).
        full_policy: FullPolicy
    );
    setter!(
        /// Spooled records older than this are dropped (counted) instead of delivered
        /// (default `None`: records never expire).
        max_record_age: Option<Duration>
    );
    setter!(
        /// How durable a spooled payload is when `export` returns
        /// (default [`Durability::OsWrite`] with a 1 s fsync interval: survives `kill -9`).
        durability: Durability
    );
    setter!(
        /// Records read from the spool per replay batch (default [`DEFAULT_BATCH_SIZE`](ClientBuilder::DEFAULT_BATCH_SIZE)).
        batch_size: usize
    );
    setter!(
        /// Bytes read from the spool per replay batch; one record is always read
        /// (default [`DEFAULT_BATCH_MAX_BYTES`](ClientBuilder::DEFAULT_BATCH_MAX_BYTES)).
        batch_max_bytes: u64
    );
    setter!(
        /// Most replay requests in flight at once (default [`DEFAULT_MAX_IN_FLIGHT`](ClientBuilder::DEFAULT_MAX_IN_FLIGHT), at most
        /// [`MAX_IN_FLIGHT_LIMIT`](ClientBuilder::MAX_IN_FLIGHT_LIMIT)); the exporter's own `max_in_flight` limits it further.
        max_in_flight: usize
    );
    setter!(
        /// Pause between two replay batches (default [`DEFAULT_BATCH_DELAY`](ClientBuilder::DEFAULT_BATCH_DELAY): none).
        batch_delay: Duration
    );

    /// Directory of the spool (default [`default_spool_dir`]: `OUTLAST_SPOOL_DIR`, else
    /// `<temp dir>/outlast-<executable name>-<user id>`, one per service). Servers should
    /// point it at persistent storage.
    ///
    /// If the directory cannot be used, the client still builds: it warns once and runs
    /// without a spool (payloads that cannot be delivered are then dropped and counted).
    pub fn spool_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.spool_dir = Some(dir.into());
        self.forget_env("spool_dir");
        self
    }

    /// The Tokio runtime the drain task runs on (default: the runtime current when
    /// [`build`](ClientBuilder::build) is called).
    pub fn runtime(mut self, handle: tokio::runtime::Handle) -> Self {
        self.runtime = Some(handle);
        self
    }

    /// Checks the settings and resolves the defaults.
    pub(crate) fn resolve(&self) -> Result<Settings, ConfigError> {
        self.resolve_inner().map_err(|e| self.name_env_variable(e))
    }

    /// If the rejected parameter came from an environment variable, name the variable.
    fn name_env_variable(&self, e: ConfigError) -> ConfigError {
        match e {
            ConfigError::Invalid { param, reason } => {
                match self.from_env.iter().find(|(p, _)| *p == param) {
                    Some((_, var)) => {
                        ConfigError::invalid(var, format!("{reason} (builder parameter {param})"))
                    }
                    None => ConfigError::Invalid { param, reason },
                }
            }
            other => other,
        }
    }

    /// The error of a `max_record_bytes` too large for one segment: it names both settings,
    /// their variables, and the fix (the setting a user changed is often only the record
    /// limit, while the spool's rule is on the segment).
    fn record_outgrows_segment(&self, segment: u64, record: u64) -> ConfigError {
        let from_env = |param| self.from_env.iter().any(|(p, _)| *p == param);
        let (record_var, segment_var) = (MAX_RECORD_BYTES_VAR, SEGMENT_BYTES_VAR);
        let param = if from_env("max_record_bytes") {
            record_var
        } else if from_env("segment_bytes") {
            segment_var
        } else {
            "segment_bytes"
        };
        ConfigError::invalid(
            param,
            format!(
                "a record of max_record_bytes ({record_var}) = {record} bytes does not fit in a \
                 spool segment of segment_bytes ({segment_var}) = {segment} bytes with its \
                 header: set {segment_var} (segment_bytes) above the record limit (twice it, \
                 {} bytes, is a good value), or lower {record_var}",
                record.saturating_mul(2)
            ),
        )
    }

    fn resolve_inner(&self) -> Result<Settings, ConfigError> {
        // Every duration is saturated here, at the edge: `Duration::MAX` means "no limit",
        // and nothing downstream can overflow an `Instant` with what it is given.
        let retry = RetryPolicy {
            immediate_retry_delay: saturate(
                self.immediate_retry_delay
                    .unwrap_or(DEFAULT_IMMEDIATE_RETRY_DELAY),
            ),
            initial_backoff: saturate(self.initial_backoff.unwrap_or(DEFAULT_INITIAL_BACKOFF)),
            max_backoff: saturate(self.max_backoff.unwrap_or(DEFAULT_MAX_BACKOFF)),
            jitter: self.jitter.unwrap_or(DEFAULT_JITTER),
            max_retry_after: saturate(self.max_retry_after.unwrap_or(DEFAULT_MAX_RETRY_AFTER)),
        };
        retry.validate()?;

        let attempt_timeout = saturate(self.attempt_timeout.unwrap_or(DEFAULT_ATTEMPT_TIMEOUT));
        if attempt_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "attempt_timeout",
                "must be greater than zero, or every attempt times out",
            ));
        }
        let batch_size = self.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
        if batch_size == 0 {
            return Err(ConfigError::invalid(
                "batch_size",
                "must be at least 1, or the backlog is never replayed",
            ));
        }
        let batch_max_bytes = self.batch_max_bytes.unwrap_or(DEFAULT_BATCH_MAX_BYTES);
        if batch_max_bytes == 0 {
            return Err(ConfigError::invalid(
                "batch_max_bytes",
                "must be at least 1 byte",
            ));
        }
        let max_in_flight = self.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT);
        if max_in_flight == 0 {
            return Err(ConfigError::invalid(
                "max_in_flight",
                "must be at least 1, or the backlog is never replayed",
            ));
        }
        if max_in_flight > MAX_IN_FLIGHT_LIMIT {
            return Err(ConfigError::invalid(
                "max_in_flight",
                format!("{max_in_flight} is above the limit of {MAX_IN_FLIGHT_LIMIT}"),
            ));
        }

        let spool_max_bytes = self.spool_max_bytes.unwrap_or(DEFAULT_SPOOL_MAX_BYTES);
        let segment_bytes = self.segment_bytes.unwrap_or(DEFAULT_SEGMENT_BYTES);
        let max_record_bytes = self.max_record_bytes.unwrap_or(DEFAULT_MAX_RECORD_BYTES);
        let durability = match self.durability.unwrap_or_default() {
            Durability::OsWrite { fsync_interval } => Durability::OsWrite {
                fsync_interval: saturate(fsync_interval),
            },
            other => other,
        };
        let spool = SpoolConfig::new(self.spool_dir.clone().unwrap_or_else(default_spool_dir))
            .with_spool_max_bytes(spool_max_bytes)
            .with_segment_bytes(segment_bytes)
            .with_max_record_bytes(max_record_bytes)
            .with_full_policy(self.full_policy.unwrap_or_default())
            .with_max_record_age(self.max_record_age.unwrap_or(None).map(saturate))
            .with_durability(durability)
            .with_adoption(self.adoption.clone().unwrap_or_default());
        match spool.validate() {
            Ok(()) => {}
            // The spool's directory is never a reason to refuse building: a client without a
            // spool still delivers while the backend is up.
            Err(SpoolError::Config { param: "root", .. }) => {}
            // The spool's one rule on segment_bytes: a segment holds its header and a record.
            Err(SpoolError::Config {
                param: "segment_bytes",
                ..
            }) => {
                return Err(self.record_outgrows_segment(segment_bytes, max_record_bytes));
            }
            // The spool's parameters have the builder's names (`durability` is rejected for
            // its fsync interval).
            Err(SpoolError::Config { param, reason }) => {
                return Err(ConfigError::invalid(param, reason));
            }
            Err(other) => {
                return Err(ConfigError::invalid("spool", other.to_string()));
            }
        }

        let (coalesce_max_records, coalesce_max_bytes) = self.resolve_coalescing()?;
        let pacing = self.resolve_pacing()?;

        Ok(Settings {
            retry,
            attempt_timeout,
            warn_interval: saturate(self.warn_interval.unwrap_or(DEFAULT_WARN_INTERVAL)),
            spool,
            max_record_bytes,
            durability,
            batch_size,
            batch_max_bytes,
            max_in_flight,
            batch_delay: saturate(self.batch_delay.unwrap_or(DEFAULT_BATCH_DELAY)),
            coalesce_max_records,
            coalesce_max_bytes,
            pacing,
        })
    }
}

// ----- lane identity and recovery detection -----

/// How often the drain task probes a backend that is unreachable at the transport level
/// (connection refused, reset, timed out, DNS), jittered by the backoff's jitter: about a
/// second notices a backend's return within a second, while a TCP connect per second costs a
/// dead backend nothing worth mentioning.
pub(crate) const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(1);

impl ClientBuilder {
    /// Names who this client's spooled records are for (default: the exporter's
    /// [`identity`](outlast_core::Exporter::identity), else its type name). It is recorded
    /// with the lanes the client writes, and the client replays only lanes of its own
    /// identity: two services sharing a spool directory never deliver each other's records.
    /// Must not be empty.
    pub fn identity(mut self, identity: impl Into<String>) -> Self {
        self.identity = Some(identity.into());
        self.forget_env("identity");
        self
    }

    /// Which lanes of other identities in the spool directory this client also delivers
    /// (default [`Adoption::Own`]: none). For an operator's tool that delivers another
    /// service's records on purpose (`outlast replay --identity`, `--any-identity`), not
    /// for applications: records of another identity go to this client's exporter. Those
    /// lanes are taken under the spool's own locks, only drained (never appended to), and
    /// their identity files are never rewritten, so whatever is left of them stays theirs.
    pub fn adoption(mut self, adoption: Adoption) -> Self {
        self.adoption = Some(adoption);
        self
    }

    setter!(
        /// How often the backend is probed while it is unreachable at the transport level
        /// (default [`DEFAULT_PROBE_INTERVAL`](ClientBuilder::DEFAULT_PROBE_INTERVAL), 1 s; jittered like the backoff). A successful
        /// probe starts the replay at once. Real export attempts keep following the backoff;
        /// exporters without a probe, and backends that answer with an HTTP failure, are not
        /// probed.
        probe_interval: Duration
    );

    /// Checks and resolves the identity and recovery settings.
    pub(crate) fn resolve_recovery(&self) -> Result<RecoverySettings, ConfigError> {
        if self
            .identity
            .as_deref()
            .is_some_and(|i| i.trim().is_empty())
        {
            return Err(self.name_env_variable(ConfigError::invalid(
                "identity",
                "must not be empty: it names whose records a spool lane holds",
            )));
        }
        let probe_interval = saturate(self.probe_interval.unwrap_or(DEFAULT_PROBE_INTERVAL));
        if probe_interval.is_zero() {
            return Err(self.name_env_variable(ConfigError::invalid(
                "probe_interval",
                "must be greater than zero, or an unreachable backend is probed in a busy loop",
            )));
        }
        Ok(RecoverySettings {
            identity: self.identity.clone(),
            probe_interval,
        })
    }
}

/// The resolved identity and recovery settings.
#[derive(Debug, Clone)]
pub(crate) struct RecoverySettings {
    pub(crate) identity: Option<String>,
    pub(crate) probe_interval: Duration,
}

/// Coalesced replay: caps on what one merged request may carry, for exporters that merge
/// consecutive spooled records (see [`Exporter::coalescing`](outlast_core::Exporter::coalescing)).
impl ClientBuilder {
    setter!(
        /// Most records in one merged replay request (default
        /// [`DEFAULT_COALESCE_MAX_RECORDS`](ClientBuilder::DEFAULT_COALESCE_MAX_RECORDS)); the exporter's own cap limits it further, and
        /// so does the replay window (`batch_size` records). 1 turns merging off.
        coalesce_max_records: usize
    );
    setter!(
        /// Most payload bytes in one merged replay request (default
        /// [`DEFAULT_COALESCE_MAX_BYTES`](ClientBuilder::DEFAULT_COALESCE_MAX_BYTES)); a larger record is sent alone.
        coalesce_max_bytes: u64
    );

    /// Checks and resolves the coalescing caps.
    fn resolve_coalescing(&self) -> Result<(usize, u64), ConfigError> {
        let records = self
            .coalesce_max_records
            .unwrap_or(DEFAULT_COALESCE_MAX_RECORDS);
        if records == 0 {
            return Err(ConfigError::invalid(
                "coalesce_max_records",
                "must be at least 1 (1 sends every record on its own)",
            ));
        }
        let bytes = self
            .coalesce_max_bytes
            .unwrap_or(DEFAULT_COALESCE_MAX_BYTES);
        if bytes == 0 {
            return Err(ConfigError::invalid(
                "coalesce_max_bytes",
                "must be at least 1 byte",
            ));
        }
        Ok((records, bytes))
    }
}

/// The resolved, validated settings a client runs with.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) retry: RetryPolicy,
    pub(crate) attempt_timeout: Duration,
    pub(crate) warn_interval: Duration,
    pub(crate) spool: SpoolConfig,
    pub(crate) max_record_bytes: u64,
    pub(crate) durability: Durability,
    pub(crate) batch_size: usize,
    pub(crate) batch_max_bytes: u64,
    pub(crate) max_in_flight: usize,
    pub(crate) batch_delay: Duration,
    pub(crate) coalesce_max_records: usize,
    pub(crate) coalesce_max_bytes: u64,
    pub(crate) pacing: Pacing,
}

// ----- replay order and rate cap -----

/// In what order a backlog and new exports reach the backend once it answers again (see
/// `docs/delivery-guarantees.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ReplayOrder {
    /// While a backlog exists, new payloads go to the spool behind it: the backend receives
    /// everything in the order it was exported (the client's default).
    #[default]
    OldestFirst,
    /// While a backlog exists and the backend is reachable, new payloads are sent directly
    /// (one attempt; on failure they go to the spool, behind the backlog) while the backlog
    /// drains beside them, and they take precedence over replay requests within the
    /// in-flight limit: fresh data arrives at once, history after it. While the backend is
    /// unreachable, payloads go to the spool as with [`OldestFirst`](Self::OldestFirst).
    LiveFirst,
}

impl ReplayOrder {
    /// The name used in environment variables and on the command line: `oldest_first`,
    /// `live_first`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplayOrder::OldestFirst => "oldest_first",
            ReplayOrder::LiveFirst => "live_first",
        }
    }
}

impl std::fmt::Display for ReplayOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ReplayOrder {
    type Err = ConfigError;

    /// `oldest_first` or `live_first` (case-insensitive; `-` for `_` accepted).
    fn from_str(s: &str) -> Result<ReplayOrder, ConfigError> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "oldest_first" => Ok(ReplayOrder::OldestFirst),
            "live_first" => Ok(ReplayOrder::LiveFirst),
            _ => Err(ConfigError::invalid(
                "replay_order",
                format!("{s:?} is not oldest_first or live_first"),
            )),
        }
    }
}

/// The order of replay against new exports: [`ReplayOrder::OldestFirst`], so the backend
/// sees data in the order it was produced unless told otherwise.
pub(crate) const DEFAULT_REPLAY_ORDER: ReplayOrder = ReplayOrder::OldestFirst;
/// The replay's byte rate cap: none, so a backlog drains at the backend's speed. Set one to
/// spare a recovering collector that a fleet replays into at once.
pub(crate) const DEFAULT_REPLAY_BYTES_PER_SEC: Option<u64> = None;
/// The replay's request rate cap: none.
pub(crate) const DEFAULT_REPLAY_REQUESTS_PER_SEC: Option<u64> = None;

impl ClientBuilder {
    setter!(
        /// The order of the backlog and new exports once the backend answers again (default
        /// [`DEFAULT_REPLAY_ORDER`](ClientBuilder::DEFAULT_REPLAY_ORDER), [`ReplayOrder::OldestFirst`]).
        replay_order: ReplayOrder
    );
    setter!(
        /// Cap on the replay's rate in payload bytes per second (default
        /// [`DEFAULT_REPLAY_BYTES_PER_SEC`](ClientBuilder::DEFAULT_REPLAY_BYTES_PER_SEC): `None`, no cap). A token bucket paces the
        /// drain task's requests so that over any time `t` it sends at most
        /// `rate × (t + 50 ms)` bytes; a record larger than that is never refused, it waits
        /// its turn. Direct exports are not limited. Must not be `Some(0)`.
        replay_bytes_per_sec: Option<u64>
    );
    setter!(
        /// Cap on the replay's requests per second (default
        /// [`DEFAULT_REPLAY_REQUESTS_PER_SEC`](ClientBuilder::DEFAULT_REPLAY_REQUESTS_PER_SEC): `None`, no cap); a merged request counts
        /// once. Direct exports are not limited. Must not be `Some(0)`.
        replay_requests_per_sec: Option<u64>
    );

    /// The replay order set on this builder, by [`replay_order`](Self::replay_order) or
    /// `OUTLAST_REPLAY_ORDER`; `None` if neither did (the client then uses
    /// [`DEFAULT_REPLAY_ORDER`](ClientBuilder::DEFAULT_REPLAY_ORDER)). Lets a layer above the client pick its own default
    /// without overriding the user's choice.
    pub fn configured_replay_order(&self) -> Option<ReplayOrder> {
        self.replay_order
    }

    /// Checks and resolves the replay order and rate cap.
    fn resolve_pacing(&self) -> Result<Pacing, ConfigError> {
        let bytes = self
            .replay_bytes_per_sec
            .unwrap_or(DEFAULT_REPLAY_BYTES_PER_SEC);
        if bytes == Some(0) {
            return Err(ConfigError::invalid(
                "replay_bytes_per_sec",
                "must be at least 1 byte per second, or the backlog is never replayed (None: no cap)",
            ));
        }
        let requests = self
            .replay_requests_per_sec
            .unwrap_or(DEFAULT_REPLAY_REQUESTS_PER_SEC);
        if requests == Some(0) {
            return Err(ConfigError::invalid(
                "replay_requests_per_sec",
                "must be at least 1 request per second, or the backlog is never replayed (None: no cap)",
            ));
        }
        Ok(Pacing {
            order: self.replay_order.unwrap_or(DEFAULT_REPLAY_ORDER),
            bytes_per_sec: bytes,
            requests_per_sec: requests,
        })
    }
}

/// The resolved replay order and rate cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pacing {
    pub(crate) order: ReplayOrder,
    pub(crate) bytes_per_sec: Option<u64>,
    pub(crate) requests_per_sec: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected_param(b: &ClientBuilder) -> &'static str {
        match b.resolve() {
            Err(ConfigError::Invalid { param, .. }) => param,
            Ok(_) => panic!("accepted a bad configuration: {b:?}"),
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn a_replay_rate_cap_of_zero_is_refused_and_any_other_is_kept() {
        let b = ClientBuilder::new().replay_bytes_per_sec(Some(0));
        assert_eq!(rejected_param(&b), "replay_bytes_per_sec");
        let b = ClientBuilder::new().replay_requests_per_sec(Some(0));
        assert_eq!(rejected_param(&b), "replay_requests_per_sec");
        let p = ClientBuilder::new()
            .replay_bytes_per_sec(Some(u64::MAX))
            .replay_requests_per_sec(Some(1))
            .replay_order(ReplayOrder::LiveFirst)
            .resolve()
            .expect("valid")
            .pacing;
        assert_eq!(p.bytes_per_sec, Some(u64::MAX));
        assert_eq!(p.requests_per_sec, Some(1));
        assert_eq!(p.order, ReplayOrder::LiveFirst);
        let d = ClientBuilder::new().resolve().expect("valid").pacing;
        assert_eq!(
            (d.order, d.bytes_per_sec, d.requests_per_sec),
            (ReplayOrder::OldestFirst, None, None)
        );
        assert_eq!(
            "Live-First".parse::<ReplayOrder>(),
            Ok(ReplayOrder::LiveFirst)
        );
        assert_eq!(ReplayOrder::LiveFirst.to_string(), "live_first");
        assert!("newest_first".parse::<ReplayOrder>().is_err());
    }

    #[test]
    fn defaults_are_valid_and_match_the_documented_values() {
        let s = ClientBuilder::new().resolve().expect("defaults are valid");
        assert_eq!(s.attempt_timeout, Duration::from_secs(10));
        assert_eq!(s.retry.immediate_retry_delay, Duration::from_secs(1));
        assert_eq!(s.retry.initial_backoff, Duration::from_secs(1));
        assert_eq!(s.retry.max_backoff, Duration::from_secs(128));
        assert_eq!(s.warn_interval, Duration::from_secs(60));
        assert_eq!(s.spool.spool_max_bytes(), 512 * 1024 * 1024);
        assert_eq!(s.batch_delay, Duration::ZERO);
        assert_eq!(s.coalesce_max_records, 25);
        assert_eq!(s.coalesce_max_bytes, 1024 * 1024);
    }

    #[test]
    fn builder_rejects_bad_values_naming_the_parameter() {
        let cases: Vec<(ClientBuilder, &str)> = vec![
            (
                ClientBuilder::new().attempt_timeout(Duration::ZERO),
                "attempt_timeout",
            ),
            (ClientBuilder::new().batch_size(0), "batch_size"),
            (ClientBuilder::new().batch_max_bytes(0), "batch_max_bytes"),
            (ClientBuilder::new().max_in_flight(0), "max_in_flight"),
            (
                ClientBuilder::new().coalesce_max_records(0),
                "coalesce_max_records",
            ),
            (
                ClientBuilder::new().coalesce_max_bytes(0),
                "coalesce_max_bytes",
            ),
            (ClientBuilder::new().jitter(1.5), "jitter"),
            (ClientBuilder::new().jitter(f64::NAN), "jitter"),
            (
                ClientBuilder::new().initial_backoff(Duration::ZERO),
                "initial_backoff",
            ),
            (
                ClientBuilder::new()
                    .initial_backoff(Duration::from_secs(10))
                    .max_backoff(Duration::from_secs(5)),
                "max_backoff",
            ),
            (
                ClientBuilder::new()
                    .segment_bytes(1024 * 1024)
                    .max_record_bytes(2 * 1024 * 1024),
                "segment_bytes",
            ),
            (
                ClientBuilder::new()
                    .spool_max_bytes(1024 * 1024)
                    .segment_bytes(4 * 1024 * 1024)
                    .max_record_bytes(1024 * 1024),
                "spool_max_bytes",
            ),
            (
                ClientBuilder::new().max_record_age(Some(Duration::ZERO)),
                "max_record_age",
            ),
            (
                ClientBuilder::new().durability(Durability::OsWrite {
                    fsync_interval: Duration::ZERO,
                }),
                "durability",
            ),
        ];
        for (builder, param) in cases {
            assert_eq!(rejected_param(&builder), param, "{builder:?}");
        }
    }

    #[test]
    fn the_default_spool_directory_is_named_after_the_executable_and_the_user() {
        use std::path::Path;
        let name = |exe: Option<&str>, uid| default_spool_dir_name(exe.map(Path::new), uid);
        assert_eq!(
            name(Some("/usr/local/bin/checkout-api"), Some(1000)),
            "outlast-checkout-api-1000"
        );
        assert_eq!(
            name(Some("/opt/app/worker.v2.exe"), None),
            "outlast-worker.v2"
        );
        assert_eq!(
            name(Some("/srv/bin/my service größe$(rm)"), Some(0)),
            "outlast-my_service_gr__e__rm_-0"
        );
        assert_eq!(name(Some("/"), Some(7)), "outlast-process-7");
        assert_eq!(name(None, Some(7)), "outlast-process-7");
        assert_eq!(name(Some("/bin/.."), Some(7)), "outlast-process-7");
        let long = format!("/bin/{}", "x".repeat(300));
        assert_eq!(name(Some(&long), None).len(), "outlast-".len() + 64);
        // Two services never share it.
        assert_ne!(
            name(Some("/bin/service-a"), Some(1000)),
            name(Some("/bin/service-b"), Some(1000))
        );
    }

    #[test]
    fn the_default_spool_directory_of_this_process_is_its_own() {
        let exe = std::env::current_exe().expect("current exe");
        let stem = exe
            .file_stem()
            .expect("stem")
            .to_string_lossy()
            .into_owned();
        let dir = default_spool_dir_name(Some(&exe), user_id());
        assert!(dir.starts_with(&format!("outlast-{stem}")), "{dir}");
        #[cfg(unix)]
        assert!(
            dir.ends_with(&format!("-{}", rustix::process::getuid().as_raw())),
            "{dir}"
        );
    }

    #[test]
    fn an_unusable_spool_dir_is_not_a_configuration_error() {
        assert!(ClientBuilder::new().spool_dir("").resolve().is_ok());
        assert!(
            ClientBuilder::new()
                .spool_dir("/proc/definitely/not/writable")
                .resolve()
                .is_ok()
        );
    }
}
