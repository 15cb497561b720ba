//! The command line: subcommands and options (clap derive). Durations (`500ms`, `10s`, `2m`)
//! and sizes (`1024`, `4KiB`) are read with the workspace's one grammar, `outlast_core::units`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use outlast_core::units;

/// Exit codes, shown at the end of `--help`.
const AFTER_HELP: &str = "\
Exit codes: 0 success; 1 runtime failure (corruption found, records lost or left undelivered, \
spool missing, locked or unreadable); 2 usage error (bad option, number, duration or URL).
Durations: a number with a unit (us, ms, s, m, h): 500ms, 1.5s, 2m, 1h. Sizes: whole bytes, \
or with KiB/MiB/GiB/TiB (powers of 1024) or kB/MB/GB/TB (powers of 1000). Rates: a size per \
second, e.g. 5MiB/s or 5MB/s.";

/// outlast: telemetry export that survives network outages, crashes and restarts.
#[derive(Debug, Parser)]
#[command(name = "outlast", version, about, after_help = AFTER_HELP, arg_required_else_help = true)]
pub(crate) struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Show what outlast does: export through an outage of an embedded receiver, live.
    Demo(DemoArgs),
    /// Load generator: export payloads with unique keys to an endpoint, report outcomes and latency.
    Gen(GenArgs),
    /// Show what a spool holds: lanes, segments, records, bytes, times, damage, locks.
    Inspect(InspectArgs),
    /// Check every record's CRC in a spool; exit 1 if anything is damaged. Changes nothing.
    Verify(VerifyArgs),
    /// Deliver what a spool holds (left by a dead process or another host) to an endpoint.
    Replay(ReplayArgs),
}

/// Options of `outlast demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Payloads to send.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) count: u64,
    /// Bytes per payload.
    #[arg(long, value_name = "BYTES", default_value = "1KiB", value_parser = parse_size)]
    pub(crate) size: u64,
    /// Payloads per second.
    #[arg(long, value_name = "PER_SECOND", default_value_t = 200.0, value_parser = parse_rate)]
    pub(crate) rate: f64,
    /// How long the receiver stays down.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub(crate) outage: Duration,
    /// Spool directory (default: a fresh temporary directory, removed at the end).
    #[arg(long, value_name = "DIR")]
    pub(crate) spool_dir: Option<PathBuf>,
    /// What reaches the receiver first once it is back: `oldest-first` (the backlog, then
    /// new payloads behind it) or `live-first` (new payloads at once, the backlog beside
    /// them).
    #[arg(long, value_name = "ORDER", default_value = "oldest-first", value_parser = parse_order)]
    pub(crate) order: outlast_client::ReplayOrder,
    /// Cap on the replay's rate, a size per second (e.g. `5MiB/s`); default: no cap.
    #[arg(long, value_name = "RATE", value_parser = parse_replay_rate)]
    pub(crate) replay_rate: Option<u64>,
    /// Emit OpenTelemetry spans through the SDK and outlast-otel (one span per `--count`,
    /// `--size` unused), across an outage and a restart of the pipeline.
    #[arg(long)]
    pub(crate) otel: bool,
}

/// Default number of concurrent callers: a handful of request handlers exporting at once,
/// enough to exercise the pipeline's concurrency without needing a big machine.
const DEFAULT_CONCURRENCY: u64 = 8;

/// Options of `outlast gen`.
#[derive(Debug, Args)]
pub(crate) struct GenArgs {
    /// Where to send (http:// or https://).
    #[arg(long, value_name = "URL")]
    pub(crate) endpoint: String,
    /// Payloads to send.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) count: u64,
    /// Bytes per payload.
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub(crate) size: u64,
    /// Payloads per second, over all workers (default: as fast as they go).
    #[arg(long, value_name = "PER_SECOND", value_parser = parse_rate)]
    pub(crate) rate: Option<f64>,
    /// Spool directory (default: a fresh temporary directory, removed at the end).
    #[arg(long, value_name = "DIR")]
    pub(crate) spool: Option<PathBuf>,
    /// Concurrent callers of `export`.
    #[arg(long, default_value_t = DEFAULT_CONCURRENCY, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub(crate) concurrency: u64,
    /// End with `force_flush(D)` and report what remains.
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub(crate) flush_timeout: Option<Duration>,
}

/// Options of `outlast inspect`.
#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// The spool directory.
    pub(crate) dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Mark lanes of any other identity as foreign (the identity a client records: for the
    /// HTTP exporter its endpoint URL).
    #[arg(long, value_name = "ID")]
    pub(crate) identity: Option<String>,
}

/// Options of `outlast verify`.
#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The spool directory.
    pub(crate) dir: PathBuf,
}

/// Options of `outlast replay`.
#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    /// The spool directory to drain.
    pub(crate) dir: PathBuf,
    /// Where to send (http:// or https://).
    #[arg(long, value_name = "URL")]
    pub(crate) endpoint: String,
    /// An extra request header, `NAME=VALUE` (repeatable), e.g. an `authorization` token.
    /// Headers from `OUTLAST_HEADERS` and the other `OUTLAST_*` HTTP variables
    /// (`OUTLAST_HTTP_TIMEOUT`, `OUTLAST_HTTP_GZIP`, `OUTLAST_CA_FILE`) apply too, and
    /// `OUTLAST_MAX_RECORD_BYTES` (a record stored compressed that decodes past it is
    /// counted `too_large`, not sent).
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    pub(crate) headers: Vec<(String, String)>,
    /// Give up after this long; what is not delivered stays in the spool.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
    /// Also deliver the lanes recorded for this identity (repeatable; `outlast inspect`
    /// shows each lane's). Without it, only lanes of the replaying client's own identity
    /// and lanes written before identities were recorded are delivered.
    #[arg(long = "identity", value_name = "ID", conflicts_with = "any_identity")]
    pub(crate) identities: Vec<String>,
    /// Deliver the lanes of every identity to this endpoint, on purpose.
    #[arg(long)]
    pub(crate) any_identity: bool,
    /// Cap on the replay's rate, a size per second (e.g. `5MiB/s`), to spare the
    /// endpoint; default: `OUTLAST_REPLAY_BYTES_PER_SEC` if set (this flag wins over it),
    /// else no cap. `OUTLAST_REPLAY_REQUESTS_PER_SEC` caps the requests per second as well.
    /// A variable that cannot be read is an error naming it.
    #[arg(long, value_name = "RATE", value_parser = parse_replay_rate)]
    pub(crate) replay_rate: Option<u64>,
}

/// Parses a `NAME=VALUE` header argument.
fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("expected NAME=VALUE, got '{s}'")),
    }
}

/// Why a duration, size or rate was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ValueError {
    /// A duration without a unit (ambiguous: seconds or milliseconds?).
    #[error("missing unit: write e.g. 500ms, 10s, 2m or 1h")]
    MissingUnit,
    /// Not a duration in the shared grammar.
    #[error("'{0}' is not a duration (write e.g. 500ms, 10s, 2m or 1h)")]
    NotADuration(String),
    /// Not a size in the shared grammar, or too large.
    #[error(transparent)]
    Size(units::UnitError),
    /// A rate that is not a number.
    #[error("'{0}' is not a number")]
    NotANumber(String),
    /// A rate that is not a positive finite number.
    #[error("must be a positive number of payloads per second")]
    BadRate,
    /// A replay rate cap of zero bytes per second.
    #[error("must be at least 1 byte per second (leave it out for no cap)")]
    ZeroRate,
}

/// Parses a duration in the grammar of [`outlast_core::units`] (`500ms`, `10s`, `1.5s`,
/// `2m`, `1h`, ...), saturated to [`units::MAX_DURATION`], except that a bare number is
/// refused.
///
/// Why the command line refuses what the environment accepts: `units` reads a bare number
/// as seconds, which suits `OUTLAST_*` variables (set once, documented next to the value).
/// On a command line a bare `--outage 10` or `--timeout 500` is typed from memory, and the
/// OpenTelemetry variables many users know (`OTEL_EXPORTER_OTLP_TIMEOUT`) count
/// milliseconds: refusing costs one retype, guessing wrong costs a run. So the check below
/// runs first, and everything else is the shared grammar.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, ValueError> {
    let v = s.trim();
    if v.bytes().any(|b| b.is_ascii_digit()) && v.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(ValueError::MissingUnit);
    }
    units::parse_duration(v)
        .map(units::saturate)
        .map_err(|_| ValueError::NotADuration(s.to_owned()))
}

/// Parses a size in bytes in the grammar of [`outlast_core::units`]: a whole number,
/// optionally with `B`, `KiB`, `MiB`, `GiB` or `TiB` (also `K`, `M`, `G`, `T`; powers of
/// 1024) or `kB`, `MB`, `GB`, `TB` (powers of 1000).
pub(crate) fn parse_size(s: &str) -> Result<u64, ValueError> {
    units::parse_size(s).map_err(ValueError::Size)
}

/// Parses a replay rate cap: a size per second in the grammar of [`outlast_core::units`]
/// (`5MiB/s`, `512KiB`), at least one byte.
pub(crate) fn parse_replay_rate(s: &str) -> Result<u64, ValueError> {
    match units::parse_rate(s).map_err(ValueError::Size)? {
        0 => Err(ValueError::ZeroRate),
        r => Ok(r),
    }
}

/// Parses a replay order: `oldest-first` or `live-first` (`_` for `-` accepted).
pub(crate) fn parse_order(s: &str) -> Result<outlast_client::ReplayOrder, String> {
    s.parse()
        .map_err(|_| format!("'{s}' is not oldest-first or live-first"))
}

/// Parses a positive finite rate (payloads per second).
pub(crate) fn parse_rate(s: &str) -> Result<f64, ValueError> {
    let r: f64 = s
        .trim()
        .parse()
        .map_err(|_| ValueError::NotANumber(s.to_owned()))?;
    if r.is_finite() && r > 0.0 {
        Ok(r)
    } else {
        Err(ValueError::BadRate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_the_documented_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
    }

    #[test]
    fn durations_are_saturated_to_the_shared_ceiling() {
        assert_eq!(
            parse_duration("99999999999999999999999h"),
            Ok(units::MAX_DURATION)
        );
    }

    #[test]
    fn durations_without_unit_or_with_garbage_are_rejected() {
        assert_eq!(parse_duration("10"), Err(ValueError::MissingUnit));
        assert_eq!(parse_duration(" 1.5 "), Err(ValueError::MissingUnit));
        for bad in ["", "5x", "-1s", "abc", "1e30h", "."] {
            assert_eq!(
                parse_duration(bad),
                Err(ValueError::NotADuration(bad.into())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn sizes_accept_bytes_and_binary_units() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("1MiB"), Ok(1024 * 1024));
        assert_eq!(parse_size("512 kib"), Ok(512 * 1024));
        assert_eq!(parse_size("64KB"), Ok(64_000));
        assert_eq!(parse_size("16MB"), Ok(16_000_000));
    }

    #[test]
    fn sizes_outside_the_shared_grammar_are_rejected() {
        for bad in ["1PB", "1.5KiB", "1.5MB", "64KiBps", "-1", ""] {
            assert!(
                matches!(parse_size(bad), Err(ValueError::Size(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn rates_must_be_positive_and_finite() {
        assert_eq!(parse_rate("2.5"), Ok(2.5));
        assert_eq!(parse_rate("0"), Err(ValueError::BadRate));
        assert_eq!(parse_rate("inf"), Err(ValueError::BadRate));
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn replay_rates_and_orders_read_as_documented() {
        assert_eq!(parse_replay_rate("5MiB/s"), Ok(5 << 20));
        assert_eq!(parse_replay_rate("512KiB"), Ok(512 << 10));
        assert_eq!(parse_replay_rate("0/s"), Err(ValueError::ZeroRate));
        assert_eq!(parse_replay_rate("5MB/s"), Ok(5_000_000));
        assert!(matches!(
            parse_replay_rate("5 furlongs/s"),
            Err(ValueError::Size(_))
        ));
        assert_eq!(
            parse_order("live-first"),
            Ok(outlast_client::ReplayOrder::LiveFirst)
        );
        assert_eq!(
            parse_order("oldest_first"),
            Ok(outlast_client::ReplayOrder::OldestFirst)
        );
        assert!(parse_order("newest-first").is_err());
    }
}
