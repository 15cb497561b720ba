//! The retry schedule: one quick retry, then jittered exponential backoff, raised by
//! `Retry-After`, never above a cap.
//!
//! # Why not the `backoff` crate?
//!
//! It is unmaintained (RUSTSEC-2025-0012), pulls in the unmaintained `instant` crate, and its
//! randomisation is applied *after* the cap, so a delay can exceed the configured maximum.
//! The schedule here is small, pure and deterministic under a seed: the backoff's jitter only
//! ever *shortens* a delay, so no backoff delay exceeds the cap, and tests need no sleeping.
//!
//! # Why a delay raised by `Retry-After` is spread *above* it
//!
//! A server that throttles a fleet tells every client the same `Retry-After`. Were that the
//! delay, the whole fleet would come back at the same instant and be throttled again
//! together. A `Retry-After` is a promise not to come back earlier, so the spread can only
//! go above it: a delay raised to a server's `Retry-After` (the floor, at most
//! `max_retry_after`) is drawn from `[floor, floor + min(floor × min(jitter, 10 %), 10 s)]`
//! ([`MAX_RETRY_AFTER_SPREAD_FRACTION`], [`MAX_RETRY_AFTER_SPREAD`]), saturating at
//! [`Duration::MAX`]. With the default jitter that is up to a tenth above the floor; a policy
//! without jitter (`jitter = 0`) keeps every delay deterministic, the floor included.

use std::fmt;
use std::time::{Duration, SystemTime};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::ConfigError;
use crate::error::ExportError;

/// Delay before the single quick retry of a failed direct export.
/// One second rides out a dropped connection or a collector restart without making the
/// caller wait long.
pub const DEFAULT_IMMEDIATE_RETRY_DELAY: Duration = Duration::from_secs(1);
/// Longest `immediate_retry_delay` accepted: the quick retry is a wait inside the caller's
/// `export`, so its delay bounds how long a call can take while the backend is down (about
/// two attempt timeouts plus this delay). A minute is far beyond a collector's restart; a
/// longer wait is the drain task's job, which does not hold the caller.
pub const MAX_IMMEDIATE_RETRY_DELAY: Duration = Duration::from_secs(60);
/// First backoff delay of the drain task after a failure: short, so a blip costs little.
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Longest backoff delay: about two minutes bounds how stale data gets once the backend is
/// back, while keeping a dead backend's load negligible (one attempt every ~2 min).
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(128);
/// Fraction of each delay that is randomised: the delay is drawn from
/// `[d * (1 - jitter), d]`. One half spreads a fleet's retries over half a period, enough to
/// avoid a thundering herd, while keeping every delay within a factor of two of its nominal value.
pub const DEFAULT_JITTER: f64 = 0.5;
/// Longest delay a server's `Retry-After` may impose (before the spread above it,
/// [`MAX_RETRY_AFTER_SPREAD_FRACTION`]). Equal to the backoff cap by default so that no
/// sleep exceeds 128 s (plus at most 10 s of spread) unless the operator allows it.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = DEFAULT_MAX_BACKOFF;
/// Largest fraction of a server's `Retry-After` by which a delay raised to it is spread
/// *above* it. The fraction is the policy's `jitter`, at most this: with the default jitter
/// (0.5) the delay is drawn from `[ra, ra + ra / 10]`, never more than
/// [`MAX_RETRY_AFTER_SPREAD`] above `ra`; with `jitter = 0`, exactly `ra`. A tenth spreads a
/// fleet told the same `Retry-After` over a tenth of the wait (100 ms of a one-second window)
/// without making any client wait much longer than the server asked.
pub const MAX_RETRY_AFTER_SPREAD_FRACTION: f64 = 0.1;
/// Most that a delay raised to a server's `Retry-After` is spread above it: a long wait does
/// not need a long spread, and ten seconds keep a client's return close to the time asked.
pub const MAX_RETRY_AFTER_SPREAD: Duration = Duration::from_secs(10);

/// How failed exports are retried.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use outlast_core::retry::{Backoff, RetryPolicy};
///
/// let policy = RetryPolicy::default();
/// let mut backoff = Backoff::with_seed(policy, 7);
/// let first = backoff.next_delay(None);
/// assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Delay before the one quick retry of a direct export.
    pub immediate_retry_delay: Duration,
    /// First backoff delay.
    pub initial_backoff: Duration,
    /// Cap on the backoff delay.
    pub max_backoff: Duration,
    /// Randomised fraction of each delay, in `[0, 1]`.
    pub jitter: f64,
    /// Cap on a delay raised by `Retry-After`.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            immediate_retry_delay: DEFAULT_IMMEDIATE_RETRY_DELAY,
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            jitter: DEFAULT_JITTER,
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
        }
    }
}

/// What to do after a direct export attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Wait this long, then try the same payload again.
    RetryAfter(Duration),
    /// Give up on the direct path: put the payload in the spool for the drain task.
    Spill,
    /// The payload can never be delivered: drop it (and count it).
    Drop,
}

impl RetryPolicy {
    /// Checks that the values make sense together.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the first bad parameter.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.immediate_retry_delay > MAX_IMMEDIATE_RETRY_DELAY {
            return Err(ConfigError::invalid(
                "immediate_retry_delay",
                format!(
                    "{:?} is above the limit of {:?}: the quick retry waits inside the caller's export",
                    self.immediate_retry_delay, MAX_IMMEDIATE_RETRY_DELAY
                ),
            ));
        }
        if self.initial_backoff.is_zero() {
            return Err(ConfigError::invalid(
                "initial_backoff",
                "must be greater than zero, or a dead backend is retried in a busy loop",
            ));
        }
        if self.max_backoff < self.initial_backoff {
            return Err(ConfigError::invalid(
                "max_backoff",
                format!(
                    "{:?} is less than initial_backoff {:?}",
                    self.max_backoff, self.initial_backoff
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) || self.jitter.is_nan() {
            return Err(ConfigError::invalid(
                "jitter",
                format!("{} is outside [0, 1]", self.jitter),
            ));
        }
        Ok(())
    }

    /// The nominal (un-jittered) backoff after `failures` consecutive failures (0-based):
    /// `initial_backoff * 2^failures`, capped at `max_backoff`.
    pub fn nominal_backoff(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.min(31)).unwrap_or(u32::MAX);
        self.initial_backoff
            .checked_mul(factor)
            .map_or(self.max_backoff, |d| d.min(self.max_backoff))
    }

    /// Decides what follows a failed direct export. `attempt` counts from 1 (the first try).
    ///
    /// - A permanent error is dropped.
    /// - After the first retryable failure, retry once after `immediate_retry_delay` — unless
    ///   the server asked for a longer wait, in which case the caller should not be made to
    ///   wait for it: spill, and let the drain task honour it.
    /// - Any later retryable failure spills.
    pub fn on_direct_failure(&self, attempt: u32, error: &ExportError) -> Decision {
        if !error.is_retryable() {
            return Decision::Drop;
        }
        let server_wants_longer = error
            .retry_after()
            .is_some_and(|ra| ra > self.immediate_retry_delay);
        if attempt <= 1 && !server_wants_longer {
            Decision::RetryAfter(self.immediate_retry_delay)
        } else {
            Decision::Spill
        }
    }
}

/// The backoff state of one retry loop: consecutive failures and a random source.
///
/// Deterministic when built with [`Backoff::with_seed`].
#[derive(Clone)]
pub struct Backoff {
    policy: RetryPolicy,
    failures: u32,
    rng: SmallRng,
}

impl fmt::Debug for Backoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backoff")
            .field("policy", &self.policy)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

impl Backoff {
    /// A backoff seeded from the operating system's random source.
    pub fn new(policy: RetryPolicy) -> Backoff {
        Backoff {
            policy,
            failures: 0,
            rng: SmallRng::from_os_rng(),
        }
    }

    /// A backoff whose jitter sequence is fixed by `seed` (for tests and reproducible runs).
    pub fn with_seed(policy: RetryPolicy, seed: u64) -> Backoff {
        Backoff {
            policy,
            failures: 0,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// The policy in use.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Consecutive failures since the last [`reset`](Backoff::reset).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records a failure and returns how long to wait before the next attempt.
    ///
    /// The delay is the nominal backoff shortened by up to `jitter` of itself, so it lies in
    /// `[nominal * (1 - jitter), nominal]` and never exceeds `max_backoff`. A server's
    /// `retry_after` raises it: never below `floor = min(retry_after, max_retry_after)`, and
    /// spread above the floor by up to `min(jitter, 10 %)` of it
    /// ([`MAX_RETRY_AFTER_SPREAD_FRACTION`]; at most [`MAX_RETRY_AFTER_SPREAD`]), so that
    /// clients told the same `Retry-After` do not all come back at once; the delay is then at
    /// most `max(backoff delay, floor + min(floor × min(jitter, 0.1), 10 s))`, saturating at
    /// [`Duration::MAX`]. A zero `retry_after` changes nothing; neither does the spread when
    /// `jitter` is 0.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let nominal = self.policy.nominal_backoff(self.failures);
        self.failures = self.failures.saturating_add(1);
        let u: f64 = self.rng.random::<f64>();
        let jittered = jitter_down(nominal, self.policy.jitter, u);
        match retry_after {
            Some(ra) => {
                let floor = ra.min(self.policy.max_retry_after);
                let v: f64 = self.rng.random::<f64>();
                jittered.max(spread_up(floor, self.policy.jitter, v))
            }
            None => jittered,
        }
    }

    /// Forgets past failures: the next delay starts again at `initial_backoff`.
    /// Call after a success, or when a flush asks to try now.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Shortens `nominal` by the fraction `jitter * u`, where `u` is in `[0, 1)`.
/// Integer arithmetic on the subtracted part keeps the result within `[.., nominal]` exactly.
fn jitter_down(nominal: Duration, jitter: f64, u: f64) -> Duration {
    let nanos = nominal.as_nanos() as f64;
    let cut = (nanos * jitter.clamp(0.0, 1.0) * u.clamp(0.0, 1.0)) as u128;
    let cut = cut.min(nominal.as_nanos());
    let kept = nominal.as_nanos() - cut;
    Duration::from_nanos(u64::try_from(kept).unwrap_or(u64::MAX))
}

/// `floor` lengthened by the fraction `v` (in `[0, 1)`) of its spread,
/// `min(floor × min(jitter, MAX_RETRY_AFTER_SPREAD_FRACTION), MAX_RETRY_AFTER_SPREAD)`: never
/// below `floor`, never above it by more than the spread, saturating at `Duration::MAX`.
fn spread_up(floor: Duration, jitter: f64, v: f64) -> Duration {
    // The fraction in millionths, so that the spread is exact integer arithmetic: at most
    // 10^5 × Duration::MAX's 1.8 × 10^28 nanoseconds, far below u128::MAX.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let ppm = (jitter.clamp(0.0, MAX_RETRY_AFTER_SPREAD_FRACTION) * 1e6) as u128; // NaN: 0
    let cap = MAX_RETRY_AFTER_SPREAD.as_nanos();
    // At most ten seconds: fits in a u64, and in an f64 exactly.
    let spread = u64::try_from((floor.as_nanos() * ppm / 1_000_000).min(cap)).unwrap_or(0);
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let extra = ((spread as f64) * v.clamp(0.0, 1.0)) as u64; // `as` saturates; NaN: 0
    floor.saturating_add(Duration::from_nanos(extra.min(spread)))
}

/// A `Retry-After` header value that is neither delta-seconds nor an HTTP-date.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Retry-After value {value:?}: expected delta-seconds or an HTTP-date")]
pub struct RetryAfterError {
    /// The value as received (cut to 64 bytes).
    pub value: String,
}

/// The same line as `Display`.
impl fmt::Debug for RetryAfterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Parses a `Retry-After` header value (RFC 9110 §10.2.3): delta-seconds (`"120"`) or an
/// HTTP-date (`"Wed, 21 Oct 2015 07:28:00 GMT"`), relative to `now`. A date in the past
/// means "now" (zero).
///
/// # Errors
///
/// [`RetryAfterError`] for anything else: negative or fractional numbers, garbage, empty.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use outlast_core::retry::parse_retry_after;
///
/// assert_eq!(parse_retry_after("120", SystemTime::now()).unwrap(), Duration::from_secs(120));
/// assert!(parse_retry_after("soon", SystemTime::now()).is_err());
/// ```
pub fn parse_retry_after(value: &str, now: SystemTime) -> Result<Duration, RetryAfterError> {
    let v = value.trim();
    let err = || RetryAfterError {
        value: value.chars().take(64).collect(),
    };
    if v.is_empty() {
        return Err(err());
    }
    if v.bytes().all(|b| b.is_ascii_digit()) {
        // Saturate absurdly large values: the caller clamps to its own maximum anyway.
        let secs = v.parse::<u64>().unwrap_or(u64::MAX);
        return Ok(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).map_err(|_| err())?;
    Ok(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::default()
    }

    fn assert_send_sync_static<T: Send + Sync + 'static>() {}

    #[test]
    fn retry_after_error_is_send_sync_static() {
        assert_send_sync_static::<RetryAfterError>();
    }

    #[test]
    fn nominal_backoff_doubles_from_one_second_to_the_cap() {
        let p = policy();
        let secs: Vec<u64> = (0..10).map(|f| p.nominal_backoff(f).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 128, 128]);
        assert_eq!(p.nominal_backoff(u32::MAX), Duration::from_secs(128));
    }

    #[test]
    fn same_seed_gives_same_delays() {
        let mut a = Backoff::with_seed(policy(), 42);
        let mut b = Backoff::with_seed(policy(), 42);
        for _ in 0..20 {
            assert_eq!(a.next_delay(None), b.next_delay(None));
        }
    }

    #[test]
    fn reset_starts_again_from_the_initial_delay() {
        let mut b = Backoff::with_seed(policy(), 1);
        for _ in 0..8 {
            b.next_delay(None);
        }
        assert_eq!(b.failures(), 8);
        b.reset();
        let d = b.next_delay(None);
        assert!(
            d <= Duration::from_secs(1) && d >= Duration::from_millis(500),
            "{d:?}"
        );
    }

    /// Asserts `d` lies in `[floor, floor + spread]`.
    fn within_spread(d: Duration, floor: Duration, spread: Duration) {
        assert!(d >= floor, "{d:?} is below the Retry-After floor {floor:?}");
        assert!(
            d <= floor + spread,
            "{d:?} is more than {spread:?} above the floor {floor:?}"
        );
    }

    #[test]
    fn retry_after_raises_the_delay_but_not_past_its_maximum() {
        let mut b = Backoff::with_seed(policy(), 3);
        // 30 s, spread above by up to 3 s.
        within_spread(
            b.next_delay(Some(Duration::from_secs(30))),
            Duration::from_secs(30),
            Duration::from_secs(3),
        );
        // An hour is cut to max_retry_after (128 s), then spread by up to 10 s (not 12.8 s).
        within_spread(
            b.next_delay(Some(Duration::from_secs(3600))),
            DEFAULT_MAX_RETRY_AFTER,
            MAX_RETRY_AFTER_SPREAD,
        );
        // A short Retry-After never lowers the backoff.
        let mut c = Backoff::with_seed(policy(), 3);
        for _ in 0..10 {
            c.next_delay(None);
        }
        assert!(c.next_delay(Some(Duration::from_secs(1))) >= Duration::from_secs(64));
    }

    #[test]
    fn a_fleet_told_the_same_retry_after_comes_back_spread_over_a_tenth_of_it() {
        let ra = Duration::from_secs(1);
        let delays: Vec<Duration> = (0..200)
            .map(|seed| Backoff::with_seed(policy(), seed).next_delay(Some(ra)))
            .collect();
        for d in &delays {
            within_spread(*d, ra, ra / 10);
        }
        let distinct: std::collections::BTreeSet<Duration> = delays.iter().copied().collect();
        assert!(
            distinct.len() > 190,
            "{} distinct delays of 200",
            distinct.len()
        );
        let (lo, hi) = (distinct.first().copied(), distinct.last().copied());
        let width = hi.zip(lo).map(|(h, l)| h - l).unwrap_or_default();
        // Uniform over 100 ms: 200 draws cover most of it.
        assert!(
            width >= Duration::from_millis(80),
            "spread over only {width:?}"
        );
    }

    #[test]
    fn the_spread_above_a_long_retry_after_is_at_most_ten_seconds() {
        let p = RetryPolicy {
            max_retry_after: Duration::MAX,
            ..policy()
        };
        let ra = Duration::from_secs(3600);
        let delays: Vec<Duration> = (0..100)
            .map(|seed| Backoff::with_seed(p, seed).next_delay(Some(ra)))
            .collect();
        for d in &delays {
            within_spread(*d, ra, MAX_RETRY_AFTER_SPREAD);
        }
        assert!(delays.iter().any(|d| *d > ra + Duration::from_secs(5)));
    }

    #[test]
    fn retry_after_at_duration_max_saturates_instead_of_overflowing() {
        let unlimited = RetryPolicy {
            max_retry_after: Duration::MAX,
            max_backoff: Duration::MAX,
            ..policy()
        };
        for seed in 0..50 {
            let mut b = Backoff::with_seed(unlimited, seed);
            assert_eq!(b.next_delay(Some(Duration::MAX)), Duration::MAX);
            // A floor just below the maximum: spread, saturating at it.
            let near = Duration::MAX - Duration::from_secs(1);
            let d = b.next_delay(Some(near));
            assert!(d >= near, "{d:?}");
        }
        // With the default cap, Duration::MAX is cut to 128 s and spread by at most 10 s.
        let mut b = Backoff::with_seed(policy(), 9);
        within_spread(
            b.next_delay(Some(Duration::MAX)),
            DEFAULT_MAX_RETRY_AFTER,
            MAX_RETRY_AFTER_SPREAD,
        );
    }

    #[test]
    fn without_jitter_a_retry_after_delay_is_exactly_the_floor() {
        let exact = RetryPolicy {
            jitter: 0.0,
            ..policy()
        };
        for seed in 0..50 {
            let mut b = Backoff::with_seed(exact, seed);
            assert_eq!(
                b.next_delay(Some(Duration::from_secs(30))),
                Duration::from_secs(30)
            );
        }
    }

    #[test]
    fn a_zero_retry_after_leaves_the_backoff_delay_as_it_is() {
        for seed in 0..50 {
            let mut with_zero = Backoff::with_seed(policy(), seed);
            let mut without = Backoff::with_seed(policy(), seed);
            assert_eq!(
                with_zero.next_delay(Some(Duration::ZERO)),
                without.next_delay(None)
            );
        }
        // A zero cap on Retry-After: the same.
        let zero_cap = RetryPolicy {
            max_retry_after: Duration::ZERO,
            ..policy()
        };
        let mut a = Backoff::with_seed(zero_cap, 5);
        let mut b = Backoff::with_seed(zero_cap, 5);
        assert_eq!(
            a.next_delay(Some(Duration::from_secs(30))),
            b.next_delay(None)
        );
    }

    #[test]
    fn the_spread_is_exact_at_its_edges() {
        let s = Duration::from_secs(1);
        let j = DEFAULT_JITTER;
        assert_eq!(spread_up(s, j, 0.0), s);
        assert!(spread_up(s, j, 0.999_999) <= s + s / 10);
        // Out-of-range draws are clamped, never past the spread.
        assert_eq!(spread_up(s, j, 7.0), s + s / 10);
        assert_eq!(spread_up(s, j, -1.0), s);
        assert_eq!(spread_up(s, j, f64::NAN), s);
        assert_eq!(spread_up(Duration::ZERO, j, 0.5), Duration::ZERO);
        assert_eq!(spread_up(Duration::MAX, j, 0.5), Duration::MAX);
        // The fraction is the jitter, at most a tenth; none without jitter (or a NaN one).
        assert_eq!(spread_up(s, 0.05, 1.0), s + s / 20);
        assert_eq!(spread_up(s, 1.0, 1.0), s + s / 10);
        assert_eq!(spread_up(s, 0.0, 1.0), s);
        assert_eq!(spread_up(s, f64::NAN, 1.0), s);
        assert_eq!(spread_up(s, -3.0, 1.0), s);
        // One nanosecond has no tenth: nothing to spread.
        assert_eq!(
            spread_up(Duration::from_nanos(1), j, 0.9),
            Duration::from_nanos(1)
        );
    }

    #[test]
    fn direct_failures_retry_once_then_spill_and_permanent_drops() {
        let p = policy();
        let retryable = ExportError::retryable("503");
        assert_eq!(
            p.on_direct_failure(1, &retryable),
            Decision::RetryAfter(Duration::from_secs(1))
        );
        assert_eq!(p.on_direct_failure(2, &retryable), Decision::Spill);
        let timeout = ExportError::Timeout {
            after: Duration::from_secs(5),
        };
        assert_eq!(
            p.on_direct_failure(1, &timeout),
            Decision::RetryAfter(Duration::from_secs(1))
        );
        assert_eq!(
            p.on_direct_failure(1, &ExportError::permanent("400")),
            Decision::Drop
        );
        let throttled = ExportError::retryable_after("429", Duration::from_secs(30));
        assert_eq!(p.on_direct_failure(1, &throttled), Decision::Spill);
    }

    #[test]
    fn validate_names_the_bad_parameter() {
        let bad = RetryPolicy {
            max_backoff: Duration::from_millis(10),
            ..policy()
        };
        let e = bad.validate().expect_err("max < initial is rejected");
        assert!(
            matches!(
                e,
                ConfigError::Invalid {
                    param: "max_backoff",
                    ..
                }
            ),
            "{e}"
        );
        let bad = RetryPolicy {
            jitter: 1.5,
            ..policy()
        };
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::Invalid {
                param: "jitter",
                ..
            })
        ));
        let bad = RetryPolicy {
            initial_backoff: Duration::ZERO,
            ..policy()
        };
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::Invalid {
                param: "initial_backoff",
                ..
            })
        ));
        assert!(policy().validate().is_ok());
    }

    #[test]
    fn an_immediate_retry_delay_above_the_limit_is_rejected_by_name() {
        for delay in [
            MAX_IMMEDIATE_RETRY_DELAY + Duration::from_nanos(1),
            Duration::MAX,
        ] {
            let bad = RetryPolicy {
                immediate_retry_delay: delay,
                ..policy()
            };
            assert!(matches!(
                bad.validate(),
                Err(ConfigError::Invalid {
                    param: "immediate_retry_delay",
                    ..
                })
            ));
        }
        for delay in [Duration::ZERO, MAX_IMMEDIATE_RETRY_DELAY] {
            let ok = RetryPolicy {
                immediate_retry_delay: delay,
                ..policy()
            };
            assert!(ok.validate().is_ok(), "{delay:?}");
        }
    }

    #[test]
    fn retry_after_parses_delta_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").expect("valid date");
        assert_eq!(parse_retry_after("0", now), Ok(Duration::ZERO));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Ok(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now),
            Ok(Duration::from_secs(120))
        );
        // RFC 850 and asctime forms are HTTP-dates too.
        assert_eq!(
            parse_retry_after("Wednesday, 21-Oct-15 07:29:00 GMT", now),
            Ok(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed Oct 21 07:28:30 2015", now),
            Ok(Duration::from_secs(30))
        );
        // A date in the past means: now.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Ok(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Ok(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn retry_after_rejects_garbage() {
        let now = SystemTime::now();
        for bad in [
            "",
            " ",
            "-1",
            "1.5",
            "soon",
            "12s",
            "0x10",
            "Wed, 32 Oct 2015 07:28:00 GMT",
        ] {
            assert!(parse_retry_after(bad, now).is_err(), "accepted {bad:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn a_retry_after_delay_is_never_below_its_floor_nor_far_above_it(
            seed in any::<u64>(),
            failures in 0usize..40,
            ra_ms in prop_oneof![0u64..5_000, 0u64..=u64::MAX / 1_000],
            max_ra_ms in prop_oneof![0u64..300_000, Just(u64::MAX / 1_000)],
        ) {
            let p = RetryPolicy { max_retry_after: Duration::from_millis(max_ra_ms), ..policy() };
            let mut b = Backoff::with_seed(p, seed);
            for _ in 0..failures {
                b.next_delay(None);
            }
            let nominal = p.nominal_backoff(failures as u32);
            let ra = Duration::from_millis(ra_ms);
            let d = b.next_delay(Some(ra));
            let floor = ra.min(p.max_retry_after);
            let spread = (floor / 10).min(MAX_RETRY_AFTER_SPREAD);
            prop_assert!(d >= floor, "{d:?} below the floor {floor:?}");
            prop_assert!(
                d <= nominal.max(floor.saturating_add(spread)),
                "{d:?} above both the backoff {nominal:?} and the floor {floor:?} + {spread:?}"
            );
        }

        #[test]
        fn every_delay_lies_in_its_jitter_band_and_never_exceeds_the_cap(
            seed in any::<u64>(),
            failures in 1usize..40,
        ) {
            let p = policy();
            let mut b = Backoff::with_seed(p, seed);
            for f in 0..failures {
                let nominal = p.nominal_backoff(f as u32);
                let d = b.next_delay(None);
                prop_assert!(d <= nominal, "delay {d:?} above nominal {nominal:?}");
                prop_assert!(d <= p.max_backoff);
                prop_assert!(d >= nominal / 2, "delay {d:?} below band of {nominal:?}");
                if nominal == p.max_backoff {
                    prop_assert!(d >= p.max_backoff / 2 && d <= p.max_backoff);
                }
            }
        }

        #[test]
        fn jitter_band_holds_for_any_jitter_fraction(
            seed in any::<u64>(),
            jitter in 0.0f64..=1.0,
            initial_ms in 1u64..5_000,
            cap_factor in 1u32..200,
        ) {
            let p = RetryPolicy {
                jitter,
                initial_backoff: Duration::from_millis(initial_ms),
                max_backoff: Duration::from_millis(initial_ms) * cap_factor,
                ..RetryPolicy::default()
            };
            prop_assert!(p.validate().is_ok());
            let mut b = Backoff::with_seed(p, seed);
            for f in 0..30u32 {
                let nominal = p.nominal_backoff(f);
                let d = b.next_delay(None);
                let floor = nominal.mul_f64(1.0 - jitter);
                prop_assert!(d <= nominal && d <= p.max_backoff);
                // Allow one nanosecond of float rounding at the floor.
                prop_assert!(d + Duration::from_nanos(1) >= floor, "{d:?} < {floor:?}");
            }
        }

        #[test]
        fn retry_after_delay_is_at_least_the_server_value_up_to_the_maximum(
            seed in any::<u64>(),
            ra_secs in 0u64..10_000,
        ) {
            let mut b = Backoff::with_seed(policy(), seed);
            let ra = Duration::from_secs(ra_secs);
            let d = b.next_delay(Some(ra));
            prop_assert!(d >= ra.min(DEFAULT_MAX_RETRY_AFTER));
            // The floor's spread above it: at most a tenth of it, and at most 10 s.
            prop_assert!(
                d <= DEFAULT_MAX_RETRY_AFTER.max(DEFAULT_MAX_BACKOFF) + MAX_RETRY_AFTER_SPREAD
            );
        }

        #[test]
        fn retry_after_parser_never_panics(s in ".{0,64}") {
            let _ = parse_retry_after(&s, SystemTime::now());
        }

        #[test]
        fn delta_seconds_round_trip(secs in 0u64..=u32::MAX as u64) {
            prop_assert_eq!(
                parse_retry_after(&secs.to_string(), SystemTime::now()),
                Ok(Duration::from_secs(secs))
            );
        }
    }

    /// Drives a retry loop the way the drain task does, under paused Tokio time: the virtual
    /// clock advances by the scheduled delays, and nothing sleeps for real.
    #[tokio::test(start_paused = true)]
    async fn a_retry_loop_under_paused_time_waits_exactly_the_scheduled_delays() {
        let mut b = Backoff::with_seed(policy(), 9);
        let start = tokio::time::Instant::now();
        let mut expected = Duration::ZERO;
        for _ in 0..12 {
            let d = b.next_delay(None);
            expected += d;
            tokio::time::sleep(d).await;
        }
        // Tokio's timer wheel has millisecond resolution: each sleep may end up to 1 ms late.
        let elapsed = start.elapsed();
        assert!(elapsed >= expected, "{elapsed:?} < {expected:?}");
        assert!(
            elapsed <= expected + Duration::from_millis(12),
            "{elapsed:?} vs {expected:?}"
        );
        // Twelve failures: at least 1+2+..+64 halved plus five capped delays halved.
        assert!(expected >= Duration::from_secs((127 + 5 * 128) / 2));
        assert!(expected <= Duration::from_secs(127 + 5 * 128));
    }
}
