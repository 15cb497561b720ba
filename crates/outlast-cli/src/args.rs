//! The command line: subcommands and options (clap derive), and the parsers for durations
//! (`500ms`, `10s`, `2m`) and sizes (`1024`, `4KiB`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Exit codes, shown at the end of `--help`.
const AFTER_HELP: &str = "\
Exit codes: 0 success; 1 runtime failure (corruption found, records lost or left undelivered, \
spool missing, locked or unreadable); 2 usage error (bad option, number, duration or URL).
Durations: a number with a unit: 500ms, 10s, 2m, 1h. Sizes: bytes, or with KiB/MiB/GiB.";

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
    /// Emit OpenTelemetry spans through the SDK and outlast-otel (one span per `--count`,
    /// `--size` unused), across an outage and a restart of the pipeline.
    #[arg(long)]
    pub(crate) otel: bool,
}

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
    #[arg(long, default_value_t = crate::generate::DEFAULT_CONCURRENCY, value_parser = clap::value_parser!(u64).range(1..=4096))]
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
    /// (`OUTLAST_HTTP_TIMEOUT`, `OUTLAST_HTTP_GZIP`, `OUTLAST_CA_FILE`) apply too.
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

/// Why a duration or size was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ValueError {
    /// Nothing was given.
    #[error("empty value")]
    Empty,
    /// The number part is not a non-negative decimal number.
    #[error("'{0}' is not a number")]
    NotANumber(String),
    /// A duration without a unit (ambiguous: seconds or milliseconds?).
    #[error("missing unit: write e.g. 500ms, 10s, 2m or 1h")]
    MissingUnit,
    /// The unit is not known.
    #[error("unknown unit '{0}'")]
    UnknownUnit(String),
    /// The value does not fit.
    #[error("value too large")]
    TooLarge,
    /// A rate that is not a positive finite number.
    #[error("must be a positive number of payloads per second")]
    BadRate,
}

/// Splits `10s` into (`10`, `s`).
fn split_number(s: &str) -> Result<(f64, &str), ValueError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(ValueError::Empty);
    }
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(end);
    let value: f64 = num
        .parse()
        .map_err(|_| ValueError::NotANumber(num.to_owned()))?;
    if !value.is_finite() || value < 0.0 {
        return Err(ValueError::NotANumber(num.to_owned()));
    }
    Ok((value, unit.trim()))
}

/// Parses `500ms`, `10s`, `1.5s`, `2m`, `1h`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, ValueError> {
    let (value, unit) = split_number(s)?;
    let seconds = match unit {
        "" => return Err(ValueError::MissingUnit),
        "ms" => value / 1000.0,
        "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(ValueError::UnknownUnit(other.to_owned())),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| ValueError::TooLarge)
}

/// Parses a size in bytes: `1024`, `4KiB`, `1MiB`, `1GiB` (also `K`, `M`, `G`, `B`).
pub(crate) fn parse_size(s: &str) -> Result<u64, ValueError> {
    let (value, unit) = split_number(s)?;
    let factor: f64 = match unit {
        "" | "B" => 1.0,
        "K" | "k" | "KiB" | "kiB" => 1024.0,
        "M" | "MiB" => 1024.0 * 1024.0,
        "G" | "GiB" => 1024.0 * 1024.0 * 1024.0,
        other => return Err(ValueError::UnknownUnit(other.to_owned())),
    };
    let bytes = (value * factor).round();
    if bytes > u64::MAX as f64 / 2.0 {
        return Err(ValueError::TooLarge);
    }
    // In range and non-negative: checked above.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(bytes as u64)
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
    }

    #[test]
    fn durations_without_unit_or_with_garbage_are_rejected() {
        assert_eq!(parse_duration("10"), Err(ValueError::MissingUnit));
        assert_eq!(parse_duration(""), Err(ValueError::Empty));
        assert!(matches!(
            parse_duration("5x"),
            Err(ValueError::UnknownUnit(_))
        ));
        assert!(matches!(
            parse_duration("-1s"),
            Err(ValueError::NotANumber(_))
        ));
        assert!(matches!(
            parse_duration("abc"),
            Err(ValueError::NotANumber(_))
        ));
        assert_eq!(
            parse_duration("1e30h"),
            Err(ValueError::UnknownUnit("e30h".into()))
        );
    }

    #[test]
    fn sizes_accept_bytes_and_binary_units() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("1MiB"), Ok(1024 * 1024));
        assert!(parse_size("1PB").is_err());
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
}
