//! The errors of the `outlast` command and the exit code each one maps to.

use std::path::PathBuf;

use outlast_client::ConfigError;
use outlast_client::testing::ReceiverError;
use outlast_spool::SpoolError;

/// Exit code of a usage error: bad arguments, numbers, durations or URLs.
pub(crate) const EXIT_USAGE: i32 = 2;
/// Exit code of a runtime failure: a spool that cannot be used, corruption found, records
/// lost or left undelivered.
pub(crate) const EXIT_FAILURE: i32 = 1;

/// Why a command failed. Each variant says which exit code it gets ([`CliError::exit_code`]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// An argument was rejected after parsing (a combination clap cannot check).
    #[error("invalid {arg}: {reason}")]
    InvalidArgument {
        /// The option, as typed (`--rate`).
        arg: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// The client or exporter configuration was rejected (for example a bad `--endpoint`).
    #[error("invalid {context}: {source}")]
    Config {
        /// What was being configured (`--endpoint`).
        context: &'static str,
        /// The configuration error, naming the parameter.
        #[source]
        source: ConfigError,
    },
    /// The spool directory does not exist.
    #[error("{}: no such directory", path.display())]
    NoSuchDirectory {
        /// The path given.
        path: PathBuf,
    },
    /// The path exists but is not an outlast spool (no `lane-<n>` directory in it).
    #[error("{}: not an outlast spool (no lane-<n> directory in it)", path.display())]
    NotASpool {
        /// The path given.
        path: PathBuf,
    },
    /// A lane of the spool is held by a live process: replaying it would race with that
    /// process.
    #[error("{}: lane {lane} is locked by a live process{}; stop it first, or let it drain its own spool", path.display(), owner.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked {
        /// The spool root.
        path: PathBuf,
        /// The lane.
        lane: u32,
        /// The process holding the lock, when the system says.
        owner: Option<u32>,
    },
    /// The spool holds files of a newer format version, which this build cannot read.
    #[error("{}: format version {version} is newer than this build of outlast understands (it reads version {known}); use a newer outlast", path.display())]
    NewerVersion {
        /// The first such file.
        path: PathBuf,
        /// Its format version.
        version: u16,
        /// The version this build reads.
        known: u16,
    },
    /// The spool could not be read or opened.
    #[error("{0}")]
    Spool(#[from] SpoolError),
    /// `verify` found damage (already printed, one line per problem).
    #[error("{problems} problem(s) found in {}", path.display())]
    Corrupt {
        /// The spool root.
        path: PathBuf,
        /// How many problems were printed.
        problems: usize,
    },
    /// The client could not use the spool directory (permissions, read-only file system...).
    #[error("{}: the spool could not be opened (see the warning above)", path.display())]
    SpoolUnavailable {
        /// The spool root.
        path: PathBuf,
    },
    /// Records were still waiting when the time ran out.
    #[error(
        "{remaining_records} record(s) ({remaining_bytes} bytes) not delivered within {timeout_s:.1}s; they are still in the spool"
    )]
    Incomplete {
        /// Records left.
        remaining_records: u64,
        /// Bytes of spool files left.
        remaining_bytes: u64,
        /// The time limit, in seconds.
        timeout_s: f64,
    },
    /// Records on disk that no client can deliver as things are (a lane whose cursor or lock
    /// is not a regular file, a renamed segment that cannot be placed): reported, not lost.
    #[error(
        "{records} record(s) in {lanes} lane(s) of {} are stranded: no client can deliver them until the lanes are repaired (see `outlast verify`)",
        path.display()
    )]
    Stranded {
        /// The spool directory.
        path: PathBuf,
        /// Lanes no client can use.
        lanes: usize,
        /// Their records.
        records: u64,
    },
    /// Accepted records were still in the spool at the end (the endpoint was unreachable):
    /// the spool is kept.
    #[error(
        "{records} record(s) were not delivered; they are kept in {} (deliver them with `outlast replay {} --endpoint URL`)",
        path.display(),
        path.display()
    )]
    LeftBehind {
        /// The spool directory.
        path: PathBuf,
        /// Records left in it.
        records: u64,
    },
    /// The demo's receiver never got payloads that the client had accepted.
    #[error("{lost} payload(s) accepted by the client never reached the receiver")]
    Lost {
        /// How many.
        lost: u64,
    },
    /// The demo's embedded receiver failed.
    #[error("demo receiver: {0}")]
    Receiver(#[from] ReceiverError),
    /// A local I/O operation failed (temporary directory, writing the output, the runtime).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl CliError {
    /// The process exit code: [`EXIT_USAGE`] for bad input on the command line,
    /// [`EXIT_FAILURE`] otherwise.
    pub(crate) fn exit_code(&self) -> i32 {
        if self.is_usage() {
            EXIT_USAGE
        } else {
            EXIT_FAILURE
        }
    }

    /// Whether the command line itself was wrong.
    pub(crate) fn is_usage(&self) -> bool {
        matches!(
            self,
            CliError::InvalidArgument { .. } | CliError::Config { .. }
        )
    }

    /// A local I/O failure.
    pub(crate) fn io(what: &'static str, source: std::io::Error) -> CliError {
        CliError::Io { what, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_exit_2_and_runtime_failures_exit_1() {
        let usage = CliError::InvalidArgument {
            arg: "--rate",
            reason: "must be positive".into(),
        };
        assert_eq!(usage.exit_code(), 2);
        let runtime = CliError::Lost { lost: 3 };
        assert_eq!(runtime.exit_code(), 1);
        assert!(!runtime.to_string().contains('\n'));
    }

    #[test]
    fn locked_error_names_the_owner_when_known() {
        let e = CliError::Locked {
            path: "/s".into(),
            lane: 0,
            owner: Some(42),
        };
        assert!(e.to_string().contains("pid 42"), "{e}");
    }
}
