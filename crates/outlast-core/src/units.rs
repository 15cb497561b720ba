//! The one grammar for durations and sizes written as text (environment variables, command
//! lines), and the ceiling every duration a user passes is saturated to.
//!
//! - A **duration** is a decimal number followed by a unit — `us`/`µs`, `ms`, `s`/`sec`/`secs`,
//!   `m`/`min`/`mins`, `h` — or a plain number of seconds: `250us`, `500ms`, `1.5s`, `10`,
//!   `2m`, `1h`. A value too large for a [`Duration`] reads as [`Duration::MAX`] ("no limit").
//! - A **size** is a whole number of bytes, optionally followed by a unit (case-insensitive,
//!   spaces allowed before it): `B`; the binary `K`/`KiB`, `M`/`MiB`, `G`/`GiB`, `T`/`TiB`
//!   (powers of 1024); or the decimal (SI) `kB`, `MB`, `GB`, `TB` (powers of 1000):
//!   `1048576`, `64KiB`, `512 MiB`, `16MB` (16 000 000), `10kB` (10 000). `B` is always bytes,
//!   never bits (`Mb` is `MB`). A size above 2⁶⁴ − 1 bytes is refused, never wrapped.
//!
//! - A **rate** (the replay rate cap) is a size per second: a size, optionally followed by
//!   `/s`: `5MiB/s`, `5MB/s`, `512KiB`, `1048576/s`.
//!
//! Watch the `m`: in a duration it means minutes, in a size it means MiB (a bare `M` is
//! binary, `MB` decimal: `16M` is 16 777 216 bytes, `16MB` 16 000 000).

use std::fmt;
use std::time::Duration;

/// The longest duration outlast works with: about 30 years (the same horizon Tokio uses for
/// "never"). Every duration a user passes is saturated to it ([`saturate`]), so
/// `Duration::MAX` and anything above this mean "no limit" in practice, and adding it to
/// the current [`Instant`](std::time::Instant) can never overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// `d`, or [`MAX_DURATION`] if `d` is longer.
pub fn saturate(d: Duration) -> Duration {
    d.min(MAX_DURATION)
}

/// Why a text value is not a duration or a size. `Debug` prints the same line as `Display`.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnitError {
    /// The value is not a duration in the grammar of this module.
    NotADuration {
        /// The value, as given.
        value: String,
    },
    /// The value is not a size in the grammar of this module.
    NotASize {
        /// The value, as given.
        value: String,
    },
    /// The size is larger than 2⁶⁴ − 1 bytes.
    SizeTooLarge {
        /// The value, as given.
        value: String,
    },
}

impl fmt::Display for UnitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnitError::NotADuration { value } => write!(
                f,
                "{value:?} is not a duration (expected e.g. 10s, 500ms, 2m, 1h or plain seconds)"
            ),
            UnitError::NotASize { value } => write!(
                f,
                "{value:?} is not a size (expected bytes, or a whole number with KiB, MiB, GiB, TiB or kB, MB, GB, TB)"
            ),
            UnitError::SizeTooLarge { value } => {
                write!(f, "{value:?} does not fit in 64 bits of bytes")
            }
        }
    }
}

impl fmt::Debug for UnitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for UnitError {}

/// Parses a duration (see the [module documentation](self)).
///
/// # Errors
///
/// [`UnitError::NotADuration`] for anything outside the grammar (negative numbers, exponents,
/// unknown units, an empty value).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use outlast_core::units::parse_duration;
///
/// assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
/// assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
/// assert_eq!(parse_duration("99999999999999999999999h"), Ok(Duration::MAX));
/// assert!(parse_duration("1e3").is_err());
/// ```
pub fn parse_duration(value: &str) -> Result<Duration, UnitError> {
    let bad = || UnitError::NotADuration {
        value: value.to_owned(),
    };
    let v = value.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    if number.is_empty() || !number.bytes().any(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let nanos_per_unit: u128 = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1_000_000_000,
        "ms" => 1_000_000,
        "us" | "µs" => 1_000,
        "m" | "min" | "mins" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return Err(bad()),
    };
    let max_nanos = Duration::MAX.as_nanos();
    if !number.contains('.') {
        // Whole numbers are exact (no float rounding); too many digits is "no limit".
        let nanos = number
            .parse::<u128>()
            .ok()
            .and_then(|n| n.checked_mul(nanos_per_unit))
            .filter(|n| *n <= max_nanos);
        return Ok(nanos.map_or(Duration::MAX, |n| {
            // Both parts fit: n <= Duration::MAX's nanoseconds.
            let secs = u64::try_from(n / 1_000_000_000).unwrap_or(u64::MAX);
            let sub = u32::try_from(n % 1_000_000_000).unwrap_or(0);
            Duration::new(secs, sub)
        }));
    }
    let n: f64 = number.parse().map_err(|_| bad())?;
    #[allow(clippy::cast_precision_loss)] // a unit is at most 3.6e12 ns: exact in f64
    let secs = n * (nanos_per_unit as f64 / 1e9);
    if !secs.is_finite() || secs >= Duration::MAX.as_secs_f64() {
        // Only digits and one dot got here: the number is non-negative, just very large.
        return Ok(Duration::MAX);
    }
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

/// Parses a size in bytes (see the [module documentation](self)).
///
/// # Errors
///
/// [`UnitError::NotASize`] for anything outside the grammar (fractions, negative numbers,
/// unknown units, an empty value), [`UnitError::SizeTooLarge`] above 2⁶⁴ − 1 bytes.
///
/// # Examples
///
/// ```
/// use outlast_core::units::parse_size;
///
/// assert_eq!(parse_size("64KiB"), Ok(64 * 1024));
/// assert_eq!(parse_size("3m"), Ok(3 << 20));
/// assert_eq!(parse_size("10MB"), Ok(10_000_000));
/// assert_eq!(parse_size("10kB"), Ok(10_000));
/// assert!(parse_size("1.5MB").is_err());
/// assert!(parse_size("18446744073710MB").is_err()); // above 2^64 - 1 bytes
/// ```
pub fn parse_size(value: &str) -> Result<u64, UnitError> {
    let bad = || UnitError::NotASize {
        value: value.to_owned(),
    };
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    if number.is_empty() {
        return Err(bad());
    }
    let bytes_per_unit: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    let too_large = || UnitError::SizeTooLarge {
        value: value.to_owned(),
    };
    // Only digits got here: a number that does not parse has too many of them.
    let n: u64 = number.parse().map_err(|_| too_large())?;
    n.checked_mul(bytes_per_unit).ok_or_else(too_large)
}

/// Parses a rate in bytes per second: a size (see [`parse_size`]), optionally followed by
/// `/s` (see the [module documentation](self)).
///
/// # Errors
///
/// As [`parse_size`].
///
/// # Examples
///
/// ```
/// use outlast_core::units::parse_rate;
///
/// assert_eq!(parse_rate("5MiB/s"), Ok(5 << 20));
/// assert_eq!(parse_rate("5MB/s"), Ok(5_000_000));
/// assert_eq!(parse_rate("512 KiB"), Ok(512 << 10));
/// assert!(parse_rate("5 furlongs/s").is_err());
/// ```
pub fn parse_rate(value: &str) -> Result<u64, UnitError> {
    let v = value.trim();
    let size = v.strip_suffix("/s").unwrap_or(v);
    parse_size(size).map_err(|e| match e {
        UnitError::NotASize { .. } => UnitError::NotASize {
            value: value.to_owned(),
        },
        UnitError::SizeTooLarge { .. } => UnitError::SizeTooLarge {
            value: value.to_owned(),
        },
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations_accept_units_and_plain_seconds() {
        let ok = [
            ("10s", Duration::from_secs(10)),
            ("500ms", Duration::from_millis(500)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("7", Duration::from_secs(7)),
            ("1.5", Duration::from_millis(1500)),
            (" 3s ", Duration::from_secs(3)),
            ("250us", Duration::from_micros(250)),
            ("250µs", Duration::from_micros(250)),
            ("2 min", Duration::from_secs(120)),
            ("0", Duration::ZERO),
        ];
        for (s, d) in ok {
            assert_eq!(parse_duration(s), Ok(d), "{s}");
        }
        for s in [
            "",
            "s",
            ".",
            ".s",
            "ten",
            "10 parsecs",
            "-1s",
            "1e3",
            "1.2.3s",
            "10d",
            "NaN",
            "inf",
        ] {
            assert_eq!(
                parse_duration(s),
                Err(UnitError::NotADuration {
                    value: s.to_owned()
                }),
                "accepted {s:?}"
            );
        }
    }

    #[test]
    fn durations_too_large_for_a_duration_read_as_no_limit() {
        assert_eq!(parse_duration("18446744073709551616"), Ok(Duration::MAX));
        assert_eq!(
            parse_duration("99999999999999999999999h"),
            Ok(Duration::MAX)
        );
        let d = parse_duration("10000000000000000000").expect("a duration");
        assert_eq!(d, Duration::from_secs(10_000_000_000_000_000_000));
        assert_eq!(saturate(d), MAX_DURATION);
    }

    #[test]
    fn sizes_accept_bytes_and_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(64 * 1024));
        assert_eq!(parse_size("512 MiB"), Ok(512 * 1024 * 1024));
        assert_eq!(parse_size("2GiB"), Ok(2 * 1024 * 1024 * 1024));
        assert_eq!(parse_size("3m"), Ok(3 * 1024 * 1024));
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
        for s in [
            "",
            "MiB",
            "MB",
            "1.5MiB",
            "1.5MB",
            "12 parsecs",
            "-5",
            "10PB",
            "10 bytes",
            "10iB",
            "10KBi",
            "10mbps",
        ] {
            assert_eq!(
                parse_size(s),
                Err(UnitError::NotASize {
                    value: s.to_owned()
                }),
                "{s:?}"
            );
        }
        for s in ["99999999999TiB", "18446744073709551616", "16777216TiB"] {
            assert_eq!(
                parse_size(s),
                Err(UnitError::SizeTooLarge {
                    value: s.to_owned()
                }),
                "{s:?}"
            );
        }
    }

    #[test]
    fn sizes_accept_decimal_units_in_any_case() {
        let ok: [(&str, u64); 14] = [
            ("10kB", 10_000),
            ("10KB", 10_000),
            ("10kb", 10_000),
            ("10 Kb", 10_000),
            ("16MB", 16_000_000),
            ("16mb", 16_000_000),
            ("16 Mb", 16_000_000),
            ("5GB", 5_000_000_000),
            ("5gB", 5_000_000_000),
            ("2TB", 2_000_000_000_000),
            ("0MB", 0),
            ("0TB", 0),
            // Binary units stay binary beside them.
            ("16MiB", 16 << 20),
            ("16M", 16 << 20),
        ];
        for (s, n) in ok {
            assert_eq!(parse_size(s), Ok(n), "{s:?}");
            assert_eq!(parse_rate(&format!("{s}/s")), Ok(n), "{s:?}/s");
        }
    }

    #[test]
    fn decimal_sizes_at_the_edge_of_u64_fit_or_are_refused() {
        // u64::MAX = 18 446 744 073 709 551 615.
        let fits: [(&str, u64); 5] = [
            ("18446744073709551615B", u64::MAX),
            ("18446744073709551kB", 18_446_744_073_709_551_000),
            ("18446744073709MB", 18_446_744_073_709_000_000),
            ("18446744073GB", 18_446_744_073_000_000_000),
            ("18446744TB", 18_446_744_000_000_000_000),
        ];
        for (s, n) in fits {
            assert_eq!(parse_size(s), Ok(n), "{s:?}");
        }
        for s in [
            "18446744073709552kB",
            "18446744073710MB",
            "18446744074GB",
            "18446745TB",
            "18446744073709551615kB",
            "18446744073709551616B",
            "99999999999999999999999999999999TB",
        ] {
            assert_eq!(
                parse_size(s),
                Err(UnitError::SizeTooLarge {
                    value: s.to_owned()
                }),
                "{s:?}"
            );
            let rate = format!("{s}/s");
            assert_eq!(
                parse_rate(&rate),
                Err(UnitError::SizeTooLarge {
                    value: rate.clone()
                }),
                "{rate:?}"
            );
        }
    }

    #[test]
    fn errors_quote_the_value_and_give_examples() {
        let e = parse_duration("soon").expect_err("not a duration");
        assert_eq!(
            e.to_string(),
            "\"soon\" is not a duration (expected e.g. 10s, 500ms, 2m, 1h or plain seconds)"
        );
    }

    #[test]
    fn saturation_leaves_room_to_add_to_now() {
        assert_eq!(saturate(Duration::MAX), MAX_DURATION);
        assert_eq!(saturate(Duration::from_secs(5)), Duration::from_secs(5));
        assert!(
            std::time::Instant::now()
                .checked_add(MAX_DURATION)
                .is_some()
        );
        assert!(
            std::time::SystemTime::now()
                .checked_add(MAX_DURATION)
                .is_some()
        );
    }

    proptest! {
        #[test]
        fn the_duration_parser_never_panics(s in ".{0,40}") {
            let _ = parse_duration(&s);
        }

        #[test]
        fn the_size_parser_never_panics(s in ".{0,40}") {
            let _ = parse_size(&s);
        }

        #[test]
        fn whole_milliseconds_round_trip(ms in 0u64..=u64::from(u32::MAX)) {
            prop_assert_eq!(parse_duration(&format!("{ms}ms")), Ok(Duration::from_millis(ms)));
        }

        #[test]
        fn decimal_sizes_are_exact_multiples_or_refused(
            n in prop_oneof![any::<u64>(), 0u64..=20_000_000_000_000_000],
            unit in prop::sample::select(vec![
                ("kB", 1_000u64), ("MB", 1_000_000), ("GB", 1_000_000_000),
                ("TB", 1_000_000_000_000), ("KiB", 1 << 10), ("MiB", 1 << 20),
                ("GiB", 1 << 30), ("TiB", 1 << 40),
            ]),
            lower in any::<bool>(),
        ) {
            let (name, per) = unit;
            let name = if lower { name.to_ascii_lowercase() } else { name.to_owned() };
            let s = format!("{n}{name}");
            let expected = n.checked_mul(per).ok_or(UnitError::SizeTooLarge { value: s.clone() });
            prop_assert_eq!(parse_size(&s), expected);
        }

        #[test]
        fn whole_sizes_round_trip(n in any::<u64>()) {
            prop_assert_eq!(parse_size(&n.to_string()), Ok(n));
            let kib = n >> 10;
            prop_assert_eq!(parse_size(&format!("{kib}KiB")), Ok(kib << 10));
        }
    }
}
