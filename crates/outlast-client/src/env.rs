//! Reading the client's settings from `OUTLAST_*` environment variables, so operators can tune
//! without a rebuild. Parsing is separate from the process environment so it is testable.

use std::path::PathBuf;
use std::time::Duration;

use outlast_core::{ConfigError, units};
use outlast_spool::{DEFAULT_FSYNC_INTERVAL, Durability, FullPolicy};

use crate::config::{self, ClientBuilder, ReplayOrder};

pub(crate) mod setting;

pub use setting::Setting;
use setting::{parse_duration, parse_size};

/// Declares the client's environment variables, each once: constant, variable name, builder
/// parameter, how its value is read, its format and default as the docs show them, and its
/// doc line. From that one list come the constants, [`ALL`], the documentation rows (the
/// [`SETTINGS`] table, checked against `docs/configuration.md` and the crate doc by a test)
/// and the reader: nothing else lists the variables.
macro_rules! env_settings {
    ($(
        $(#[doc = $doc:literal])*
        $konst:ident = $var:expr => $param:ident: $kind:ident,
            format $format:literal, default $default:literal;
    )*) => {
        $( $(#[doc = $doc])* pub const $konst: &str = $var; )*

        /// Every variable the client reads, in the order of the documentation table.
        pub const ALL: [&str; [$($var),*].len()] = [$($konst),*];

        /// Every variable of [`ALL`] (same order) with its builder parameter, format and
        /// default: what the documentation tables show (a test checks that they do).
        pub const SETTINGS: [Setting; [$($var),*].len()] = [$(Setting {
            var: $konst,
            param: stringify!($param),
            format: $format,
            default: $default,
        }),*];

        /// Reads one variable (already known to be one of [`ALL`], with a non-empty value)
        /// into the builder, or into `pending` for the two that make one `Durability`.
        fn read_variable(
            b: &mut ClientBuilder,
            pending: &mut PendingDurability,
            var: &'static str,
            value: &str,
        ) -> Result<(), ConfigError> {
            match var {
                $( $konst => env_settings!(@read $kind, b, pending, $param, var, value), )*
                _ => {}
            }
            Ok(())
        }
    };
    // How each kind of value is read and stored.
    (@read path, $b:ident, $p:ident, $param:ident, $var:ident, $value:ident) => {{
        $b.$param = Some(PathBuf::from($value));
        $b.from_env.push((stringify!($param), $var));
    }};
    (@read text, $b:ident, $p:ident, $param:ident, $var:ident, $value:ident) => {{
        $b.$param = Some($value.to_owned());
        $b.from_env.push((stringify!($param), $var));
    }};
    // The two variables of `durability` wait in `pending` until all are read.
    (@read durability_mode, $b:ident, $p:ident, $param:ident, $var:ident, $value:ident) => {{
        $p.mode = Some(parse_durability_mode($var, $value)?);
    }};
    (@read fsync_interval, $b:ident, $p:ident, $param:ident, $var:ident, $value:ident) => {{
        $p.fsync_interval = Some(parse_duration($var, $value)?);
    }};
    (@read $kind:ident, $b:ident, $p:ident, $param:ident, $var:ident, $value:ident) => {{
        $b.$param = Some(env_settings!(@parse $kind, $var, $value));
        $b.from_env.push((stringify!($param), $var));
    }};
    (@parse size, $var:ident, $value:ident) => { parse_size($var, $value)? };
    (@parse count, $var:ident, $value:ident) => { parse_count($var, $value)? };
    (@parse duration, $var:ident, $value:ident) => { parse_duration($var, $value)? };
    (@parse fraction, $var:ident, $value:ident) => { parse_fraction($var, $value)? };
    (@parse full_policy, $var:ident, $value:ident) => { parse_full_policy($var, $value)? };
    (@parse duration_or_none, $var:ident, $value:ident) => {
        parse_duration_or_none($var, $value)?
    };
    (@parse replay_order, $var:ident, $value:ident) => { parse_replay_order($var, $value)? };
    (@parse rate_or_none, $var:ident, $value:ident) => { parse_rate_or_none($var, $value)? };
    (@parse count_or_none, $var:ident, $value:ident) => { parse_count_or_none($var, $value)? };
}

env_settings! {
    /// `OUTLAST_SPOOL_DIR`: the spool directory.
    SPOOL_DIR = config::SPOOL_DIR_VAR => spool_dir: path,
        format "path",
        default "`<temp dir>/outlast-<executable name>-<user id>`";
    /// `OUTLAST_SPOOL_MAX_BYTES`: cap on the spool's size.
    SPOOL_MAX_BYTES = "OUTLAST_SPOOL_MAX_BYTES" => spool_max_bytes: size,
        format "size", default "512 MiB";
    /// `OUTLAST_SPOOL_SEGMENT_BYTES`: size of one segment file.
    SPOOL_SEGMENT_BYTES = config::SEGMENT_BYTES_VAR => segment_bytes: size,
        format "size", default "16 MiB";
    /// `OUTLAST_MAX_RECORD_BYTES`: largest payload accepted.
    MAX_RECORD_BYTES = config::MAX_RECORD_BYTES_VAR => max_record_bytes: size,
        format "size", default "8 MiB";
    /// `OUTLAST_SPOOL_FULL_POLICY`: `drop_newest` or `drop_oldest`.
    SPOOL_FULL_POLICY = "OUTLAST_SPOOL_FULL_POLICY" => full_policy: full_policy,
        format "`drop_newest` or `drop_oldest`", default "`drop_newest`";
    /// `OUTLAST_MAX_RECORD_AGE`: a duration, or `none`.
    MAX_RECORD_AGE = "OUTLAST_MAX_RECORD_AGE" => max_record_age: duration_or_none,
        format "duration, or `none` / `off`", default "none (records never expire)";
    /// `OUTLAST_DURABILITY`: `os_write` or `fsync_every_append`.
    DURABILITY = "OUTLAST_DURABILITY" => durability: durability_mode,
        format "`os_write` or `fsync_every_append` (`fsync` is accepted too)",
        default "`os_write`";
    /// `OUTLAST_FSYNC_INTERVAL`: fsync interval in `os_write` mode.
    FSYNC_INTERVAL = "OUTLAST_FSYNC_INTERVAL" => durability: fsync_interval,
        format "duration (only with `os_write`)", default "1 s";
    /// `OUTLAST_ATTEMPT_TIMEOUT`: time limit of one attempt.
    ATTEMPT_TIMEOUT = "OUTLAST_ATTEMPT_TIMEOUT" => attempt_timeout: duration,
        format "duration", default "10 s";
    /// `OUTLAST_IMMEDIATE_RETRY_DELAY`: delay before the quick retry.
    IMMEDIATE_RETRY_DELAY = "OUTLAST_IMMEDIATE_RETRY_DELAY" => immediate_retry_delay: duration,
        format "duration, at most 60 s", default "1 s";
    /// `OUTLAST_INITIAL_BACKOFF`: first backoff delay.
    INITIAL_BACKOFF = "OUTLAST_INITIAL_BACKOFF" => initial_backoff: duration,
        format "duration", default "1 s";
    /// `OUTLAST_MAX_BACKOFF`: backoff cap.
    MAX_BACKOFF = "OUTLAST_MAX_BACKOFF" => max_backoff: duration,
        format "duration", default "128 s";
    /// `OUTLAST_BACKOFF_JITTER`: randomised fraction of each delay, in `[0, 1]`.
    BACKOFF_JITTER = "OUTLAST_BACKOFF_JITTER" => jitter: fraction,
        format "number in `[0, 1]`", default "0.5";
    /// `OUTLAST_MAX_RETRY_AFTER`: cap on a server's `Retry-After`.
    MAX_RETRY_AFTER = "OUTLAST_MAX_RETRY_AFTER" => max_retry_after: duration,
        format "duration", default "128 s";
    /// `OUTLAST_WARN_INTERVAL`: least time between two warnings of a kind.
    WARN_INTERVAL = "OUTLAST_WARN_INTERVAL" => warn_interval: duration,
        format "duration", default "60 s";
    /// `OUTLAST_BATCH_SIZE`: records per replay batch.
    BATCH_SIZE = "OUTLAST_BATCH_SIZE" => batch_size: count,
        format "count", default "100";
    /// `OUTLAST_BATCH_MAX_BYTES`: bytes per replay batch.
    BATCH_MAX_BYTES = "OUTLAST_BATCH_MAX_BYTES" => batch_max_bytes: size,
        format "size", default "4 MiB";
    /// `OUTLAST_MAX_IN_FLIGHT`: replay requests in flight at once.
    MAX_IN_FLIGHT = "OUTLAST_MAX_IN_FLIGHT" => max_in_flight: count,
        format "count, 1 to 1024", default "4";
    /// `OUTLAST_BATCH_DELAY`: pause between two replay batches.
    BATCH_DELAY = "OUTLAST_BATCH_DELAY" => batch_delay: duration,
        format "duration", default "0";
    /// `OUTLAST_REPLAY_ORDER`: `oldest_first` or `live_first`.
    REPLAY_ORDER = "OUTLAST_REPLAY_ORDER" => replay_order: replay_order,
        format "`oldest_first` or `live_first`", default "`oldest_first`";
    /// `OUTLAST_REPLAY_BYTES_PER_SEC`: cap on the replay's payload bytes per second.
    REPLAY_BYTES_PER_SEC = "OUTLAST_REPLAY_BYTES_PER_SEC" => replay_bytes_per_sec: rate_or_none,
        format "rate (a size per second: `5MiB/s`), or `none` / `off`", default "none (no cap)";
    /// `OUTLAST_REPLAY_REQUESTS_PER_SEC`: cap on the replay's requests per second.
    REPLAY_REQUESTS_PER_SEC = "OUTLAST_REPLAY_REQUESTS_PER_SEC" => replay_requests_per_sec: count_or_none,
        format "count (per second), or `none` / `off`", default "none (no cap)";
    /// `OUTLAST_PROBE_INTERVAL`: how often an unreachable backend is probed.
    PROBE_INTERVAL = "OUTLAST_PROBE_INTERVAL" => probe_interval: duration,
        format "duration", default "1 s";
    /// `OUTLAST_COALESCE_MAX_RECORDS`: records per merged replay request.
    COALESCE_MAX_RECORDS = "OUTLAST_COALESCE_MAX_RECORDS" => coalesce_max_records: count,
        format "count", default "25";
    /// `OUTLAST_COALESCE_MAX_BYTES`: payload bytes per merged replay request.
    COALESCE_MAX_BYTES = "OUTLAST_COALESCE_MAX_BYTES" => coalesce_max_bytes: size,
        format "size", default "1 MiB";
    /// `OUTLAST_IDENTITY`: whose records this client's spool lanes hold.
    IDENTITY = "OUTLAST_IDENTITY" => identity: text,
        format "text",
        default "the exporter's identity (`HttpExporter`: its endpoint without the query), else its type name";
}

/// An `OUTLAST_*` variable that no part of outlast reads: most likely a misspelling.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnknownVariable {
    /// The variable's name, as set.
    pub name: String,
    /// The known variable it most resembles, if one is close.
    pub did_you_mean: Option<&'static str>,
}

/// The `OUTLAST_*` names among `names` that neither the client ([`ALL`]) nor the HTTP
/// exporter reads, each with the closest known name when one is close. Names without the
/// `OUTLAST_` prefix are not outlast's business and are never reported.
///
/// [`ClientBuilder::from_env`] logs a warning for each of them.
///
/// # Examples
///
/// ```
/// use outlast_client::env::unknown_variables;
///
/// let unknown = unknown_variables(["OUTLAST_ATTEMP_TIMEOUT", "OUTLAST_BATCH_SIZE", "PATH"]);
/// assert_eq!(unknown.len(), 1);
/// assert_eq!(unknown[0].name, "OUTLAST_ATTEMP_TIMEOUT");
/// assert_eq!(unknown[0].did_you_mean, Some("OUTLAST_ATTEMPT_TIMEOUT"));
/// ```
pub fn unknown_variables<S: AsRef<str>>(
    names: impl IntoIterator<Item = S>,
) -> Vec<UnknownVariable> {
    names
        .into_iter()
        .filter_map(|name| {
            let name = name.as_ref();
            // The client's variables and the HTTP exporter's.
            let known = ALL
                .iter()
                .copied()
                .chain(crate::http::SETTINGS.iter().map(|s| s.var));
            if !name.starts_with("OUTLAST_") || known.clone().any(|k| k == name) {
                return None;
            }
            Some(UnknownVariable {
                name: name.to_owned(),
                did_you_mean: closest(name, known),
            })
        })
        .collect()
}

/// The known name closest to `name`: one that contains the other's words, or within an edit
/// distance of a third of its length (after the common `OUTLAST_` prefix).
fn closest<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    fn short(n: &str) -> &str {
        n.strip_prefix("OUTLAST_").unwrap_or(n)
    }
    let wanted = short(name).to_ascii_uppercase();
    known
        .filter_map(|k| {
            let candidate = short(k);
            let d = edit_distance(&wanted, candidate);
            let close = d <= candidate.len().max(wanted.len()) / 3
                || (!wanted.is_empty()
                    && (candidate.contains(wanted.as_str()) || wanted.contains(candidate)));
            close.then_some((d, k))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance over bytes (the names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

impl ClientBuilder {
    /// A builder filled from the process's `OUTLAST_*` environment variables (see the
    /// [crate documentation](crate#configuration)). Unset or empty variables keep their
    /// defaults; other variables are ignored, but an `OUTLAST_*` name that neither the
    /// client nor the HTTP exporter reads is logged as a warning naming the closest known
    /// variable (see [`unknown_variables`]).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] whose `param` is the variable's name, for a value that cannot
    /// be parsed. Values that parse but are rejected in combination are reported by
    /// [`build`](ClientBuilder::build), also naming the variable.
    pub fn from_env() -> Result<ClientBuilder, ConfigError> {
        ClientBuilder::from_env_vars(std::env::vars_os().filter_map(|(k, v)| {
            // Variables that are not valid Unicode cannot be ours (ours are ASCII names) —
            // unless the value is not Unicode, which is reported below as unparsable.
            let k = k.into_string().ok()?;
            Some((k, v.to_string_lossy().into_owned()))
        }))
    }

    /// A builder filled from the given `(name, value)` pairs, as [`from_env`](Self::from_env)
    /// does from the process environment. Lets tests and embedders supply the variables
    /// without touching the process environment.
    ///
    /// # Errors
    ///
    /// As [`from_env`](Self::from_env).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use outlast_client::{ClientBuilder, ConfigError};
    ///
    /// let vars = [("OUTLAST_ATTEMPT_TIMEOUT".to_string(), "500ms".to_string())];
    /// assert!(ClientBuilder::from_env_vars(vars).is_ok());
    ///
    /// let bad = [("OUTLAST_SPOOL_MAX_BYTES".to_string(), "lots".to_string())];
    /// let err = ClientBuilder::from_env_vars(bad).unwrap_err();
    /// assert!(matches!(err, ConfigError::Invalid { param: "OUTLAST_SPOOL_MAX_BYTES", .. }));
    /// ```
    pub fn from_env_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<ClientBuilder, ConfigError> {
        let mut b = ClientBuilder::new();
        let mut pending = PendingDurability::default();
        for (name, value) in vars {
            let Some(var) = ALL.iter().copied().find(|v| *v == name) else {
                warn_if_unknown(&name);
                continue;
            };
            let value = value.trim();
            if !value.is_empty() {
                read_variable(&mut b, &mut pending, var, value)?;
            }
        }
        pending.apply(&mut b)?;
        Ok(b)
    }
}

/// Logs a warning if `name` is an `OUTLAST_*` variable nothing reads.
fn warn_if_unknown(name: &str) {
    for unknown in unknown_variables([name]) {
        match unknown.did_you_mean {
            Some(known) => tracing::warn!(target: crate::LOG_TARGET,
                variable = %unknown.name,
                did_you_mean = known,
                "outlast: unknown environment variable {} ignored (did you mean {known}?)",
                unknown.name
            ),
            None => tracing::warn!(target: crate::LOG_TARGET,
                variable = %unknown.name,
                "outlast: unknown environment variable {} ignored",
                unknown.name
            ),
        }
    }
}

/// `OUTLAST_DURABILITY` and `OUTLAST_FSYNC_INTERVAL`, which together make one
/// [`Durability`].
#[derive(Debug, Default)]
struct PendingDurability {
    /// `os_write` or `fsync_every_append`.
    mode: Option<&'static str>,
    fsync_interval: Option<Duration>,
}

impl PendingDurability {
    /// Sets the builder's `durability` from what was read, if anything.
    fn apply(self, b: &mut ClientBuilder) -> Result<(), ConfigError> {
        match (self.mode, self.fsync_interval) {
            (Some("fsync_every_append"), Some(_)) => {
                return Err(ConfigError::invalid(
                    FSYNC_INTERVAL,
                    "only applies when OUTLAST_DURABILITY is os_write",
                ));
            }
            (Some("fsync_every_append"), None) => {
                b.durability = Some(Durability::FsyncEveryAppend);
                b.from_env.push(("durability", DURABILITY));
            }
            (Some(_), interval) | (None, interval @ Some(_)) => {
                b.durability = Some(Durability::OsWrite {
                    fsync_interval: interval.unwrap_or(DEFAULT_FSYNC_INTERVAL),
                });
                let var = if interval.is_some() {
                    FSYNC_INTERVAL
                } else {
                    DURABILITY
                };
                b.from_env.push(("durability", var));
            }
            (None, None) => {}
        }
        Ok(())
    }
}

fn parse_durability_mode(var: &'static str, value: &str) -> Result<&'static str, ConfigError> {
    match normalise(value).as_str() {
        "os_write" => Ok("os_write"),
        "fsync_every_append" | "fsync" => Ok("fsync_every_append"),
        _ => Err(ConfigError::invalid(
            var,
            format!("{value:?} is not os_write or fsync_every_append"),
        )),
    }
}

fn parse_full_policy(var: &'static str, value: &str) -> Result<FullPolicy, ConfigError> {
    match normalise(value).as_str() {
        "drop_newest" => Ok(FullPolicy::DropNewest),
        "drop_oldest" => Ok(FullPolicy::DropOldest),
        _ => Err(ConfigError::invalid(
            var,
            format!("{value:?} is not drop_newest or drop_oldest"),
        )),
    }
}

/// A duration, or `none` / `off` for "no limit".
fn parse_duration_or_none(var: &'static str, value: &str) -> Result<Option<Duration>, ConfigError> {
    match normalise(value).as_str() {
        "none" | "off" => Ok(None),
        _ => parse_duration(var, value).map(Some),
    }
}

/// `oldest_first` or `live_first`.
fn parse_replay_order(var: &'static str, value: &str) -> Result<ReplayOrder, ConfigError> {
    value.parse().map_err(|_| {
        ConfigError::invalid(var, format!("{value:?} is not oldest_first or live_first"))
    })
}

/// A rate in bytes per second ([`outlast_core::units::parse_rate`]), or `none` / `off`.
fn parse_rate_or_none(var: &'static str, value: &str) -> Result<Option<u64>, ConfigError> {
    match normalise(value).as_str() {
        "none" | "off" => Ok(None),
        _ => units::parse_rate(value)
            .map(Some)
            .map_err(|e| ConfigError::invalid(var, e.to_string())),
    }
}

/// A whole number, or `none` / `off`.
fn parse_count_or_none(var: &'static str, value: &str) -> Result<Option<u64>, ConfigError> {
    match normalise(value).as_str() {
        "none" | "off" => Ok(None),
        v => v.parse().map(Some).map_err(|_| {
            ConfigError::invalid(var, format!("{value:?} is not a whole number, none or off"))
        }),
    }
}

/// A number in `[0, 1]` (checked by `build`; here only parsed).
fn parse_fraction(var: &'static str, value: &str) -> Result<f64, ConfigError> {
    value
        .parse()
        .map_err(|_| ConfigError::invalid(var, format!("{value:?} is not a number in [0, 1]")))
}

/// Lower case, `-` as `_`: `Drop-Oldest` and `drop_oldest` are the same.
fn normalise(value: &str) -> String {
    value.to_ascii_lowercase().replace('-', "_")
}

/// Parses a whole number (a count).
fn parse_count(var: &'static str, value: &str) -> Result<usize, ConfigError> {
    value
        .trim()
        .parse()
        .map_err(|_| ConfigError::invalid(var, format!("{value:?} is not a whole number")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn param_of(e: ConfigError) -> &'static str {
        match e {
            ConfigError::Invalid { param, .. } => param,
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn durations_accept_units_and_plain_seconds() {
        let ok = [
            ("10s", Duration::from_secs(10)),
            ("500ms", Duration::from_millis(500)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("7", Duration::from_secs(7)),
            ("1.5", Duration::from_millis(1500)),
            ("250us", Duration::from_micros(250)),
        ];
        for (s, d) in ok {
            assert_eq!(parse_duration("X", s), Ok(d), "{s}");
        }
        for s in ["", "s", "ten", "10 parsecs", "-1s", "1e3", "1.2.3s"] {
            assert!(parse_duration("X", s).is_err(), "accepted {s:?}");
        }
    }

    #[test]
    fn sizes_accept_bytes_and_binary_units() {
        assert_eq!(parse_size("X", "4096"), Ok(4096));
        assert_eq!(parse_size("X", "64KiB"), Ok(64 * 1024));
        assert_eq!(parse_size("X", "512 MiB"), Ok(512 * 1024 * 1024));
        assert_eq!(parse_size("X", "2GiB"), Ok(2 * 1024 * 1024 * 1024));
        assert_eq!(parse_size("X", "3m"), Ok(3 * 1024 * 1024));
        for s in ["", "MiB", "1.5MiB", "12 parsecs", "-5", "99999999999TiB"] {
            assert!(parse_size("X", s).is_err(), "accepted {s:?}");
        }
    }

    #[test]
    fn env_values_fill_the_builder() {
        let b = ClientBuilder::from_env_vars(vars(&[
            ("OUTLAST_SPOOL_DIR", "/var/lib/app/outlast"),
            ("OUTLAST_SPOOL_MAX_BYTES", "64MiB"),
            ("OUTLAST_ATTEMPT_TIMEOUT", "500ms"),
            ("OUTLAST_SPOOL_FULL_POLICY", "drop-oldest"),
            ("OUTLAST_DURABILITY", "fsync_every_append"),
            ("OUTLAST_MAX_RECORD_AGE", "none"),
            ("OUTLAST_BATCH_SIZE", "7"),
            ("OUTLAST_UNRELATED", "whatever"),
            ("PATH", "/usr/bin"),
        ]))
        .expect("valid variables");
        assert_eq!(
            b.spool_dir.as_deref(),
            Some(std::path::Path::new("/var/lib/app/outlast"))
        );
        assert_eq!(b.spool_max_bytes, Some(64 * 1024 * 1024));
        assert_eq!(b.attempt_timeout, Some(Duration::from_millis(500)));
        assert_eq!(b.full_policy, Some(FullPolicy::DropOldest));
        assert_eq!(b.durability, Some(Durability::FsyncEveryAppend));
        assert_eq!(b.max_record_age, Some(None));
        assert_eq!(b.batch_size, Some(7));
        let s = b.resolve().expect("valid");
        assert_eq!(s.batch_size, 7);
    }

    #[test]
    fn coalescing_caps_come_from_their_variables() {
        let b = ClientBuilder::from_env_vars(vars(&[
            ("OUTLAST_COALESCE_MAX_RECORDS", "50"),
            ("OUTLAST_COALESCE_MAX_BYTES", "256KiB"),
        ]))
        .expect("valid variables");
        assert_eq!(b.coalesce_max_records, Some(50));
        assert_eq!(b.coalesce_max_bytes, Some(256 * 1024));
        let e = ClientBuilder::from_env_vars(vars(&[("OUTLAST_COALESCE_MAX_RECORDS", "0")]))
            .expect("parses")
            .resolve()
            .expect_err("zero is rejected");
        assert_eq!(param_of(e), "OUTLAST_COALESCE_MAX_RECORDS");
    }

    #[test]
    fn the_replay_order_and_rate_cap_come_from_their_variables() {
        let b = ClientBuilder::from_env_vars(vars(&[
            ("OUTLAST_REPLAY_ORDER", "Live-First"),
            ("OUTLAST_REPLAY_BYTES_PER_SEC", "5MiB/s"),
            ("OUTLAST_REPLAY_REQUESTS_PER_SEC", "200"),
        ]))
        .expect("valid variables");
        let p = b.resolve().expect("valid").pacing;
        assert_eq!(p.order, ReplayOrder::LiveFirst);
        assert_eq!(p.bytes_per_sec, Some(5 << 20));
        assert_eq!(p.requests_per_sec, Some(200));
        let off = ClientBuilder::from_env_vars(vars(&[
            ("OUTLAST_REPLAY_BYTES_PER_SEC", "off"),
            ("OUTLAST_REPLAY_REQUESTS_PER_SEC", "none"),
        ]))
        .expect("valid variables");
        let p = off.resolve().expect("valid").pacing;
        assert_eq!((p.bytes_per_sec, p.requests_per_sec), (None, None));
        for (var, bad) in [
            ("OUTLAST_REPLAY_ORDER", "newest_first"),
            ("OUTLAST_REPLAY_BYTES_PER_SEC", "5 furlongs/s"),
            ("OUTLAST_REPLAY_BYTES_PER_SEC", "1.5MB/s"),
            ("OUTLAST_REPLAY_REQUESTS_PER_SEC", "-1"),
        ] {
            let e = ClientBuilder::from_env_vars(vars(&[(var, bad)])).expect_err(bad);
            assert_eq!(param_of(e), var);
        }
        // Zero parses, and is refused by the build, naming the variable.
        for var in [
            "OUTLAST_REPLAY_BYTES_PER_SEC",
            "OUTLAST_REPLAY_REQUESTS_PER_SEC",
        ] {
            let e = ClientBuilder::from_env_vars(vars(&[(var, "0")]))
                .expect("parses")
                .resolve()
                .expect_err("zero is refused");
            assert_eq!(param_of(e), var);
        }
    }

    #[test]
    fn fsync_interval_alone_selects_os_write_mode() {
        let b = ClientBuilder::from_env_vars(vars(&[("OUTLAST_FSYNC_INTERVAL", "250ms")]))
            .expect("valid");
        assert_eq!(
            b.durability,
            Some(Durability::OsWrite {
                fsync_interval: Duration::from_millis(250)
            })
        );
    }

    #[test]
    fn unparsable_values_name_the_variable() {
        let cases = [
            ("OUTLAST_SPOOL_MAX_BYTES", "lots"),
            ("OUTLAST_ATTEMPT_TIMEOUT", "soon"),
            ("OUTLAST_BACKOFF_JITTER", "half"),
            ("OUTLAST_SPOOL_FULL_POLICY", "drop_middle"),
            ("OUTLAST_DURABILITY", "eventually"),
            ("OUTLAST_BATCH_SIZE", "-1"),
            ("OUTLAST_MAX_IN_FLIGHT", "many"),
            ("OUTLAST_MAX_RECORD_AGE", "forever"),
        ];
        for (var, value) in cases {
            let e = ClientBuilder::from_env_vars(vars(&[(var, value)]))
                .expect_err("bad value rejected");
            assert_eq!(param_of(e), var);
        }
        let e = ClientBuilder::from_env_vars(vars(&[
            ("OUTLAST_DURABILITY", "fsync_every_append"),
            ("OUTLAST_FSYNC_INTERVAL", "1s"),
        ]))
        .expect_err("contradiction rejected");
        assert_eq!(param_of(e), "OUTLAST_FSYNC_INTERVAL");
    }

    #[test]
    fn values_rejected_by_build_name_the_variable_unless_overridden() {
        let b = ClientBuilder::from_env_vars(vars(&[
            ("OUTLAST_BATCH_SIZE", "0"),
            ("OUTLAST_MAX_BACKOFF", "10ms"),
        ]))
        .expect("parses");
        let e = b.clone().resolve().expect_err("zero batch rejected");
        // Parameters are checked in a fixed order; the backoff pair comes first.
        assert_eq!(param_of(e), "OUTLAST_MAX_BACKOFF");
        let e = b
            .clone()
            .max_backoff(Duration::from_secs(1))
            .resolve()
            .expect_err("zero batch rejected");
        assert_eq!(param_of(e), "OUTLAST_BATCH_SIZE");
        let e = b
            .max_backoff(Duration::from_millis(10))
            .batch_size(1)
            .resolve()
            .expect_err("builder value rejected");
        assert_eq!(param_of(e), "max_backoff");
    }

    #[test]
    fn misspelt_variables_are_reported_with_the_closest_known_name() {
        let unknown = unknown_variables([
            "OUTLAST_ATTEMP_TIMEOUT",
            "OUTLAST_SPOOL_MAX_SIZE",
            "OUTLAST_TIMEOUT",
            "outlast_batch_size",
            "OUTLAST_BATCH_SIZE",
            "OUTLAST_ENDPOINT",
            "OUTLAST_ZZZ",
            "PATH",
        ]);
        let got: Vec<(&str, Option<&str>)> = unknown
            .iter()
            .map(|u| (u.name.as_str(), u.did_you_mean))
            .collect();
        assert_eq!(
            got,
            [
                ("OUTLAST_ATTEMP_TIMEOUT", Some("OUTLAST_ATTEMPT_TIMEOUT")),
                ("OUTLAST_SPOOL_MAX_SIZE", Some("OUTLAST_SPOOL_MAX_BYTES")),
                ("OUTLAST_TIMEOUT", Some("OUTLAST_HTTP_TIMEOUT")),
                ("OUTLAST_ZZZ", None),
            ]
        );
    }

    #[test]
    fn edit_distance_counts_insertions_deletions_and_substitutions() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("abc", "abd"), 1);
        assert_eq!(edit_distance("abc", "ab"), 1);
        assert_eq!(edit_distance("ab", "abc"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    /// The rows of the first Markdown table after the line `heading` (or the first table if
    /// `heading` is empty) whose header row starts with `first_header`, as maps from the
    /// (lower-cased) header to the cell.
    fn table_rows(
        text: &str,
        heading: &str,
        first_header: &str,
    ) -> Vec<std::collections::HashMap<String, String>> {
        let cells = |line: &str| -> Vec<String> {
            line.trim()
                .trim_start_matches('|')
                .trim_end_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_owned())
                .collect()
        };
        let lines: Vec<&str> = text
            .lines()
            .map(|l| l.trim_start_matches("//!").trim())
            .skip_while(|l| !heading.is_empty() && *l != heading)
            .collect();
        let start = lines
            .iter()
            .position(|l| l.starts_with('|') && cells(l)[0].eq_ignore_ascii_case(first_header))
            .unwrap_or_else(|| panic!("no table starting with {first_header:?}"));
        let header: Vec<String> = cells(lines[start])
            .into_iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        lines[start + 2..]
            .iter()
            .take_while(|l| l.starts_with('|'))
            .map(|l| header.iter().cloned().zip(cells(l)).collect())
            .collect()
    }

    /// Checks one documentation table against [`SETTINGS`]: the same variables in the same
    /// order, each with its builder parameter, format and default.
    fn check_table(
        name: &str,
        text: &str,
        heading: &str,
        first_header: &str,
        settings: &[Setting],
    ) {
        let rows: Vec<_> = table_rows(text, heading, first_header)
            .into_iter()
            .filter(|r| r["variable"].starts_with("`OUTLAST_"))
            .collect();
        let vars: Vec<&str> = rows
            .iter()
            .map(|r| r["variable"].split('`').nth(1).unwrap_or_default())
            .collect();
        let expected: Vec<&str> = settings.iter().map(|s| s.var).collect();
        assert_eq!(vars, expected, "{name}: variables");
        for (row, setting) in rows.iter().zip(settings) {
            let method = &row["builder method"];
            assert!(
                method.contains(setting.param),
                "{name}: {} names {method}",
                setting.var
            );
            assert_eq!(
                row["format"], setting.format,
                "{name}: format of {}",
                setting.var
            );
            let default = &row["default"];
            let rest = default.strip_prefix(setting.default).unwrap_or_else(|| {
                panic!(
                    "{name}: default of {} is {default:?}, not {:?}",
                    setting.var, setting.default
                )
            });
            assert!(
                rest.is_empty() || rest.starts_with([' ', ',']),
                "{name}: default of {} is {default:?}",
                setting.var
            );
        }
    }

    #[test]
    fn the_documentation_tables_show_every_variable_as_declared() {
        let page = include_str!("../../../docs/configuration.md");
        check_table(
            "docs/configuration.md",
            page,
            "## Client settings",
            "builder method",
            &SETTINGS,
        );
        check_table(
            "crate documentation",
            include_str!("lib.rs"),
            "",
            "variable",
            &SETTINGS,
        );
        check_table(
            "docs/configuration.md, HTTP exporter",
            page,
            "## The HTTP exporter",
            "builder method",
            &crate::http::SETTINGS,
        );
    }

    #[test]
    fn the_declared_defaults_are_the_defaults_the_client_uses() {
        let resolved = |b: &ClientBuilder| format!("{:?} {:?}", b.resolve(), b.resolve_recovery());
        let default = resolved(&ClientBuilder::new());
        for setting in SETTINGS {
            if matches!(setting.format, "path" | "text") {
                continue; // a description, not a value
            }
            // The value is the default's text before any remark, without Markdown quotes.
            let value = setting
                .default
                .split(" (")
                .next()
                .unwrap_or_default()
                .replace('`', "");
            let b = ClientBuilder::from_env_vars(vars(&[(setting.var, &value)]))
                .unwrap_or_else(|e| panic!("{}={value}: {e}", setting.var));
            assert_eq!(
                resolved(&b),
                default,
                "{}={value} is not the default",
                setting.var
            );
        }
    }

    #[test]
    fn every_variable_sets_the_parameter_it_declares() {
        for setting in SETTINGS {
            let value = match setting.format {
                "path" => "/x",
                "text" => "svc",
                f if f.starts_with("size") => "1MiB",
                f if f.starts_with("count") => "3",
                f if f.starts_with("duration") => "3s",
                f if f.starts_with("number") => "0.25",
                f if f.starts_with("rate") => "1MiB/s",
                f if f.contains("live_first") => "live_first",
                f if f.contains("drop_newest") => "drop_oldest",
                _ => "fsync",
            };
            let b = ClientBuilder::from_env_vars(vars(&[(setting.var, value)])).expect(setting.var);
            assert_eq!(
                b.from_env,
                [(setting.param, setting.var)],
                "{}",
                setting.var
            );
        }
    }

    #[test]
    fn empty_values_keep_the_defaults() {
        let b = ClientBuilder::from_env_vars(vars(&[("OUTLAST_ATTEMPT_TIMEOUT", "  ")]))
            .expect("empty is unset");
        assert_eq!(b.attempt_timeout, None);
    }
}
