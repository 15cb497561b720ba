//! Terminal output: the tracing subscriber on stderr, the live progress line (which log lines
//! do not garble), the JSON summary on stdout, and small formatting helpers.

use std::io::{IsTerminal as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use outlast_core::units;
use serde::Serialize;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::error::CliError;

/// How often the progress line is redrawn on a terminal: a few times a second, smooth enough
/// to watch without flooding the terminal.
pub(crate) const PROGRESS_REFRESH: Duration = Duration::from_millis(250);

/// How often a progress line is printed when stderr is not a terminal (a log file or a
/// pipe): one line per second keeps logs readable.
pub(crate) const PROGRESS_LOG_EVERY: Duration = Duration::from_secs(1);

/// Clears the current terminal line (carriage return, erase line).
const CLEAR_LINE: &str = "\r\x1b[2K";

/// Shared state of the live progress line.
#[derive(Debug, Clone)]
pub(crate) struct Console {
    /// Whether a progress line is currently drawn (without a newline) on the terminal.
    drawn: Arc<AtomicBool>,
    tty: bool,
}

impl Console {
    /// A console on stderr.
    pub(crate) fn new() -> Console {
        Console {
            drawn: Arc::new(AtomicBool::new(false)),
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// Whether stderr is a terminal (the progress line is then redrawn in place).
    pub(crate) fn is_tty(&self) -> bool {
        self.tty
    }

    /// Draws the progress line: in place on a terminal, as a plain line otherwise.
    pub(crate) fn progress(&self, line: &str) {
        let mut err = std::io::stderr().lock();
        // A failed write to stderr leaves nothing better to do than carry on.
        if self.tty {
            let _ = write!(err, "{CLEAR_LINE}{line}");
            self.drawn.store(true, Ordering::Release);
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// Ends the progress line so that what follows starts on a fresh line.
    pub(crate) fn finish(&self) {
        if self.drawn.swap(false, Ordering::AcqRel) {
            let _ = writeln!(std::io::stderr().lock());
        }
    }

    /// Prints a message on its own line on stderr (clearing the progress line first).
    pub(crate) fn note(&self, message: &str) {
        let mut err = std::io::stderr().lock();
        if self.drawn.swap(false, Ordering::AcqRel) {
            let _ = write!(err, "{CLEAR_LINE}");
        }
        let _ = writeln!(err, "{message}");
    }
}

/// The writer the tracing layer uses: stderr, clearing a drawn progress line first.
#[derive(Debug)]
pub(crate) struct LogWriter {
    console: Console,
}

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut err = std::io::stderr().lock();
        if self.console.drawn.swap(false, Ordering::AcqRel) {
            err.write_all(CLEAR_LINE.as_bytes())?;
        }
        err.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for Console {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        LogWriter {
            console: self.clone(),
        }
    }
}

/// Installs a fmt subscriber on stderr at `default_level` (overridable with `RUST_LOG`),
/// writing through `console` so log lines do not garble the progress line.
pub(crate) fn init_tracing(console: &Console, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(console.clone())
        .with_ansi(console.is_tty())
        .with_target(false)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .try_init();
}

/// Prints `value` as one line of JSON on stdout.
///
/// # Errors
///
/// [`CliError::Io`] if stdout cannot be written (a closed pipe).
pub(crate) fn print_json_line<T: Serialize>(value: &T) -> Result<(), CliError> {
    let line = serde_json::to_string(value)
        .map_err(|e| CliError::io("encoding the JSON summary", e.into()))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| CliError::io("writing to stdout", e))
}

/// Prints `value` as pretty JSON on stdout.
///
/// # Errors
///
/// As [`print_json_line`].
pub(crate) fn print_json_pretty<T: Serialize>(value: &T) -> Result<(), CliError> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| CliError::io("encoding JSON", e.into()))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|e| CliError::io("writing to stdout", e))
}

/// Seconds with millisecond precision, for JSON summaries.
pub(crate) fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// `2024-05-01T12:34:56.789Z` (UTC). Times before the epoch print as the epoch.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let millis = since.subsec_millis();
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    // d is in 1..=31 and m in 1..=12 by construction.
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

/// A short human age: `42s`, `3m10s`, `2h05m`, `3d04h`.
pub(crate) fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// `12.3 KiB`-style sizes for tables.
pub(crate) fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The process's peak resident set size (`VmHWM` in `/proc/self/status`), in bytes; `None`
/// where it is not available.
pub(crate) fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// The spool directory a command works in: `given`, or a new temporary directory named
/// `prefix…`, returned too so that it lives as long as the caller keeps it (see
/// [`remove_temp`]). `what` names it in the error if it cannot be created.
pub(crate) fn spool_dir_or_temp(
    given: Option<&std::path::PathBuf>,
    prefix: &str,
    what: &'static str,
) -> Result<(std::path::PathBuf, Option<tempfile::TempDir>), CliError> {
    match given {
        Some(dir) => Ok((dir.clone(), None)),
        None => {
            let t = tempfile::Builder::new()
                .prefix(prefix)
                .tempdir()
                .map_err(|e| CliError::io(what, e))?;
            Ok((t.path().to_path_buf(), Some(t)))
        }
    }
}

/// Removes the temporary directory made by [`spool_dir_or_temp`], if one was; a failure is
/// only logged (the command's outcome does not depend on it).
pub(crate) fn remove_temp(temp: Option<tempfile::TempDir>, what: &str) {
    if let Some(t) = temp
        && let Err(e) = t.close()
    {
        tracing::warn!(error = %e, "demo: could not remove the temporary {what}");
    }
}

/// When the `i`-th of a run paced at `rate` per second is due: `start + i / rate`,
/// saturated at [`units::MAX_DURATION`] like every other duration (a rate of one payload
/// per millennium is accepted and never overflows).
pub(crate) fn due(start: tokio::time::Instant, i: u64, rate: f64) -> tokio::time::Instant {
    let offset =
        Duration::try_from_secs_f64(i as f64 / rate).map_or(units::MAX_DURATION, units::saturate);
    start + offset
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_saturates_for_any_positive_rate() {
        let start = tokio::time::Instant::now();
        assert_eq!(due(start, 0, 1e-300), start);
        assert!(due(start, 1, 1e-300) > start + Duration::from_secs(365 * 24 * 3600));
        assert_eq!(due(start, 3, 2.0), start + Duration::from_millis(1500));
        let _ = due(start, u64::MAX, f64::MIN_POSITIVE);
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_200_123); // 2024-03-01
        assert_eq!(rfc3339(t), "2024-03-01T00:00:00.123Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400 + 86_399); // 2000-02-29 23:59:59
        assert_eq!(rfc3339(t), "2000-02-29T23:59:59.000Z");
    }

    #[test]
    fn ages_and_sizes_read_naturally() {
        assert_eq!(age(Duration::from_secs(42)), "42s");
        assert_eq!(age(Duration::from_secs(190)), "3m10s");
        assert_eq!(age(Duration::from_secs(7500)), "2h05m");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn peak_rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_bytes().is_some_and(|b| b > 0));
        }
    }
}
