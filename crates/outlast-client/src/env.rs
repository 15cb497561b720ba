//! Reading the client's settings from `OUTLAST_*` environment variables, so operators can tune
//! without a rebuild. Parsing is separate from the process environment so it is testable.

use std::path::PathBuf;
use std::time::Duration;

use outlast_core::ConfigError;
use outlast_spool::{DEFAULT_FSYNC_INTERVAL, Durability, FullPolicy};

use crate::ClientBuilder;

/// `OUTLAST_SPOOL_DIR`: the spool directory.
pub const SPOOL_DIR: &str = "OUTLAST_SPOOL_DIR";
/// `OUTLAST_SPOOL_MAX_BYTES`: cap on the spool's size.
pub const SPOOL_MAX_BYTES: &str = "OUTLAST_SPOOL_MAX_BYTES";
/// `OUTLAST_SPOOL_SEGMENT_BYTES`: size of one segment file.
pub const SPOOL_SEGMENT_BYTES: &str = "OUTLAST_SPOOL_SEGMENT_BYTES";
/// `OUTLAST_MAX_RECORD_BYTES`: largest payload accepted.
pub const MAX_RECORD_BYTES: &str = "OUTLAST_MAX_RECORD_BYTES";
/// `OUTLAST_SPOOL_FULL_POLICY`: `drop_newest` or `drop_oldest`.
pub const SPOOL_FULL_POLICY: &str = "OUTLAST_SPOOL_FULL_POLICY";
/// `OUTLAST_MAX_RECORD_AGE`: a duration, or `none`.
pub const MAX_RECORD_AGE: &str = "OUTLAST_MAX_RECORD_AGE";
/// `OUTLAST_DURABILITY`: `os_write` or `fsync_every_append`.
pub const DURABILITY: &str = "OUTLAST_DURABILITY";
/// `OUTLAST_FSYNC_INTERVAL`: fsync interval in `os_write` mode.
pub const FSYNC_INTERVAL: &str = "OUTLAST_FSYNC_INTERVAL";
/// `OUTLAST_ATTEMPT_TIMEOUT`: time limit of one attempt.
pub const ATTEMPT_TIMEOUT: &str = "OUTLAST_ATTEMPT_TIMEOUT";
/// `OUTLAST_IMMEDIATE_RETRY_DELAY`: delay before the quick retry.
pub const IMMEDIATE_RETRY_DELAY: &str = "OUTLAST_IMMEDIATE_RETRY_DELAY";
/// `OUTLAST_INITIAL_BACKOFF`: first backoff delay.
pub const INITIAL_BACKOFF: &str = "OUTLAST_INITIAL_BACKOFF";
/// `OUTLAST_MAX_BACKOFF`: backoff cap.
pub const MAX_BACKOFF: &str = "OUTLAST_MAX_BACKOFF";
/// `OUTLAST_BACKOFF_JITTER`: randomised fraction of each delay, in `[0, 1]`.
pub const BACKOFF_JITTER: &str = "OUTLAST_BACKOFF_JITTER";
/// `OUTLAST_MAX_RETRY_AFTER`: cap on a server's `Retry-After`.
pub const MAX_RETRY_AFTER: &str = "OUTLAST_MAX_RETRY_AFTER";
/// `OUTLAST_WARN_INTERVAL`: least time between two warnings of a kind.
pub const WARN_INTERVAL: &str = "OUTLAST_WARN_INTERVAL";
/// `OUTLAST_BATCH_SIZE`: records per replay batch.
pub const BATCH_SIZE: &str = "OUTLAST_BATCH_SIZE";
/// `OUTLAST_BATCH_MAX_BYTES`: bytes per replay batch.
pub const BATCH_MAX_BYTES: &str = "OUTLAST_BATCH_MAX_BYTES";
/// `OUTLAST_MAX_IN_FLIGHT`: replay requests in flight at once.
pub const MAX_IN_FLIGHT: &str = "OUTLAST_MAX_IN_FLIGHT";
/// `OUTLAST_BATCH_DELAY`: pause between two replay batches.
pub const BATCH_DELAY: &str = "OUTLAST_BATCH_DELAY";

// ----- recovery detection -----
/// `OUTLAST_PROBE_INTERVAL`: how often an unreachable backend is probed.
pub const PROBE_INTERVAL: &str = "OUTLAST_PROBE_INTERVAL";

/// `OUTLAST_COALESCE_MAX_RECORDS`: records per merged replay request.
pub const COALESCE_MAX_RECORDS: &str = "OUTLAST_COALESCE_MAX_RECORDS";
/// `OUTLAST_COALESCE_MAX_BYTES`: payload bytes per merged replay request.
pub const COALESCE_MAX_BYTES: &str = "OUTLAST_COALESCE_MAX_BYTES";

/// Every variable the client reads, in the order of the documentation table.
pub const ALL: [&str; 22] = [
    SPOOL_DIR,
    SPOOL_MAX_BYTES,
    SPOOL_SEGMENT_BYTES,
    MAX_RECORD_BYTES,
    SPOOL_FULL_POLICY,
    MAX_RECORD_AGE,
    DURABILITY,
    FSYNC_INTERVAL,
    ATTEMPT_TIMEOUT,
    IMMEDIATE_RETRY_DELAY,
    INITIAL_BACKOFF,
    MAX_BACKOFF,
    BACKOFF_JITTER,
    MAX_RETRY_AFTER,
    WARN_INTERVAL,
    BATCH_SIZE,
    BATCH_MAX_BYTES,
    MAX_IN_FLIGHT,
    BATCH_DELAY,
    PROBE_INTERVAL,
    COALESCE_MAX_RECORDS,
    COALESCE_MAX_BYTES,
];

impl ClientBuilder {
    /// A builder filled from the process's `OUTLAST_*` environment variables (see the
    /// [crate documentation](crate#configuration)). Unset or empty variables keep their
    /// defaults; other variables are ignored.
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
        let mut durability_mode: Option<&'static str> = None;
        let mut fsync_interval: Option<Duration> = None;
        for (name, value) in vars {
            let Some(var) = ALL.iter().copied().find(|v| *v == name) else {
                continue;
            };
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            match var {
                SPOOL_DIR => {
                    b.spool_dir = Some(PathBuf::from(value));
                    b.from_env.push(("spool_dir", var));
                }
                SPOOL_MAX_BYTES => {
                    b.spool_max_bytes = Some(parse_size(var, value)?);
                    b.from_env.push(("spool_max_bytes", var));
                }
                SPOOL_SEGMENT_BYTES => {
                    b.segment_bytes = Some(parse_size(var, value)?);
                    b.from_env.push(("segment_bytes", var));
                }
                MAX_RECORD_BYTES => {
                    b.max_record_bytes = Some(parse_size(var, value)?);
                    b.from_env.push(("max_record_bytes", var));
                }
                SPOOL_FULL_POLICY => {
                    b.full_policy = Some(match normalise(value).as_str() {
                        "drop_newest" => FullPolicy::DropNewest,
                        "drop_oldest" => FullPolicy::DropOldest,
                        _ => {
                            return Err(ConfigError::invalid(
                                var,
                                format!("{value:?} is not drop_newest or drop_oldest"),
                            ));
                        }
                    });
                    b.from_env.push(("full_policy", var));
                }
                MAX_RECORD_AGE => {
                    b.max_record_age = Some(match normalise(value).as_str() {
                        "none" | "off" => None,
                        _ => Some(parse_duration(var, value)?),
                    });
                    b.from_env.push(("max_record_age", var));
                }
                DURABILITY => {
                    durability_mode = Some(match normalise(value).as_str() {
                        "os_write" => "os_write",
                        "fsync_every_append" | "fsync" => "fsync_every_append",
                        _ => {
                            return Err(ConfigError::invalid(
                                var,
                                format!("{value:?} is not os_write or fsync_every_append"),
                            ));
                        }
                    });
                }
                FSYNC_INTERVAL => fsync_interval = Some(parse_duration(var, value)?),
                ATTEMPT_TIMEOUT => {
                    b.attempt_timeout = Some(parse_duration(var, value)?);
                    b.from_env.push(("attempt_timeout", var));
                }
                IMMEDIATE_RETRY_DELAY => {
                    b.immediate_retry_delay = Some(parse_duration(var, value)?);
                    b.from_env.push(("immediate_retry_delay", var));
                }
                INITIAL_BACKOFF => {
                    b.initial_backoff = Some(parse_duration(var, value)?);
                    b.from_env.push(("initial_backoff", var));
                }
                MAX_BACKOFF => {
                    b.max_backoff = Some(parse_duration(var, value)?);
                    b.from_env.push(("max_backoff", var));
                }
                BACKOFF_JITTER => {
                    let j: f64 = value.parse().map_err(|_| {
                        ConfigError::invalid(var, format!("{value:?} is not a number in [0, 1]"))
                    })?;
                    b.jitter = Some(j);
                    b.from_env.push(("jitter", var));
                }
                MAX_RETRY_AFTER => {
                    b.max_retry_after = Some(parse_duration(var, value)?);
                    b.from_env.push(("max_retry_after", var));
                }
                WARN_INTERVAL => {
                    b.warn_interval = Some(parse_duration(var, value)?);
                    b.from_env.push(("warn_interval", var));
                }
                BATCH_SIZE => {
                    b.batch_size = Some(parse_count(var, value)?);
                    b.from_env.push(("batch_size", var));
                }
                BATCH_MAX_BYTES => {
                    b.batch_max_bytes = Some(parse_size(var, value)?);
                    b.from_env.push(("batch_max_bytes", var));
                }
                MAX_IN_FLIGHT => {
                    b.max_in_flight = Some(parse_count(var, value)?);
                    b.from_env.push(("max_in_flight", var));
                }
                BATCH_DELAY => {
                    b.batch_delay = Some(parse_duration(var, value)?);
                    b.from_env.push(("batch_delay", var));
                }
                PROBE_INTERVAL => {
                    b.probe_interval = Some(parse_duration(var, value)?);
                    b.from_env.push(("probe_interval", var));
                }
                COALESCE_MAX_RECORDS => {
                    b.coalesce_max_records = Some(parse_count(var, value)?);
                    b.from_env.push(("coalesce_max_records", var));
                }
                COALESCE_MAX_BYTES => {
                    b.coalesce_max_bytes = Some(parse_size(var, value)?);
                    b.from_env.push(("coalesce_max_bytes", var));
                }
                _ => {}
            }
        }
        match (durability_mode, fsync_interval) {
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
        Ok(b)
    }
}

/// Lower case, `-` as `_`: `Drop-Oldest` and `drop_oldest` are the same.
fn normalise(value: &str) -> String {
    value.to_ascii_lowercase().replace('-', "_")
}

/// Parses a duration: a number with a unit (`ms`, `s`, `m`, `h`; `us` too), or a plain number
/// of seconds. Decimals are allowed (`1.5s`, `0.25`).
///
/// # Errors
///
/// [`ConfigError::Invalid`] naming `var`.
pub(crate) fn parse_duration(var: &'static str, value: &str) -> Result<Duration, ConfigError> {
    let bad = || {
        ConfigError::invalid(
            var,
            format!(
                "{value:?} is not a duration (expected e.g. 10s, 500ms, 2m, 1h or plain seconds)"
            ),
        )
    };
    let v = value.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    if number.is_empty() {
        return Err(bad());
    }
    let n: f64 = number.parse().map_err(|_| bad())?;
    let seconds_per_unit = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" | "mins" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(n * seconds_per_unit).map_err(|_| bad())
}

/// Parses a size in bytes: a plain integer, or an integer with `B`, `KiB`, `MiB`, `GiB` or
/// `TiB` (powers of 1024; `K`, `M`, `G`, `T` are accepted as the same).
///
/// # Errors
///
/// [`ConfigError::Invalid`] naming `var`.
pub(crate) fn parse_size(var: &'static str, value: &str) -> Result<u64, ConfigError> {
    let bad = || {
        ConfigError::invalid(
            var,
            format!(
                "{value:?} is not a size (expected bytes, or a whole number with KiB, MiB, GiB or TiB)"
            ),
        )
    };
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    if number.is_empty() {
        return Err(bad());
    }
    let n: u64 = number.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift).ok_or_else(|| {
        ConfigError::invalid(var, format!("{value:?} does not fit in 64 bits of bytes"))
    })
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
    fn empty_values_keep_the_defaults() {
        let b = ClientBuilder::from_env_vars(vars(&[("OUTLAST_ATTEMPT_TIMEOUT", "  ")]))
            .expect("empty is unset");
        assert_eq!(b.attempt_timeout, None);
    }
}
