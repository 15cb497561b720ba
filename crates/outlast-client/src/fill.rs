//! How full the spool is and how fast it fills: the recent spill rate, the time until the
//! cap is reached, the fill percentage, and durations and drain rates in words. Pure
//! functions and one rate meter, for the client's stats and its log lines.

use std::time::Duration;

use crate::pace::{human_duration, human_rate};

/// The time constant of [`SpillRate`]: the rate follows what was appended over about the
/// last minute.
const SPILL_RATE_WINDOW: Duration = Duration::from_secs(60);

/// Below this many bytes per second the spool is not filling (an exponential average never
/// quite reaches zero once spills stop).
const MIN_FILL_RATE: f64 = 1.0;

/// An exponentially weighted rate of bytes appended to the spool: each append adds its bytes
/// divided by the time constant, and the sum decays by `e^(-elapsed / 60 s)`. A steady flow
/// of `r` bytes per second converges to `r` (to 63 % of it after one minute of it); an
/// append a minute old weighs `1/e` of a new one. Pure: every call takes the time.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SpillRate {
    /// Bytes per second as of `at`.
    rate: f64,
    at: Option<std::time::Instant>,
}

impl SpillRate {
    /// Counts `bytes` appended at `now` (a `now` earlier than the last one counts as the
    /// same moment).
    pub(crate) fn record(&mut self, now: std::time::Instant, bytes: u64) {
        // A rate, not an exact count: `as f64` rounds beyond 2^53 bytes.
        self.rate = self.rate(now) + bytes as f64 / SPILL_RATE_WINDOW.as_secs_f64();
        self.at = Some(self.at.map_or(now, |at| at.max(now)));
    }

    /// Bytes per second at `now`.
    pub(crate) fn rate(&self, now: std::time::Instant) -> f64 {
        match self.at {
            None => 0.0,
            Some(at) => {
                let elapsed = now.saturating_duration_since(at).as_secs_f64();
                self.rate * (-elapsed / SPILL_RATE_WINDOW.as_secs_f64()).exp()
            }
        }
    }
}

/// How full the spool is, in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Capacity {
    /// Recent spill rate, bytes per second (rounded).
    pub(crate) rate: u64,
    /// How long until the spool's files reach the cap at that rate; `None` when not filling.
    pub(crate) full_in: Option<Duration>,
}

/// A rate in whole bytes per second (saturating).
pub(crate) fn rate_per_sec(rate: f64) -> u64 {
    // `as` saturates, and maps NaN to 0.
    rate.round() as u64
}

/// Time until `bytes` reaches `cap` at `rate` bytes per second: zero when already there,
/// `None` when not `filling` or the rate is below [`MIN_FILL_RATE`].
pub(crate) fn time_to_full(bytes: u64, cap: u64, rate: f64, filling: bool) -> Option<Duration> {
    if !filling || rate.is_nan() || rate < MIN_FILL_RATE {
        return None;
    }
    let room = cap.saturating_sub(bytes) as f64;
    Some(Duration::try_from_secs_f64(room / rate).unwrap_or(Duration::MAX))
}

/// `bytes` as a whole percentage of `cap` (0 with no cap; more than 100 is possible when the
/// cap was lowered below what the spool holds).
pub(crate) fn fill_percent(bytes: u64, cap: u64) -> u64 {
    if cap == 0 {
        return 0;
    }
    u64::try_from(u128::from(bytes) * 100 / u128::from(cap)).unwrap_or(u64::MAX)
}

/// A duration for people: seconds under two minutes, minutes under two hours, then hours.
pub(crate) fn approx(d: Duration) -> String {
    let s = d.as_secs();
    if s < 120 {
        format!("{s} s")
    } else if s < 120 * 60 {
        format!("{} min", s / 60)
    } else {
        format!("{} h", s / 3600)
    }
}

/// `draining at 12 MB/s, about 3.4 s left`.
pub(crate) fn describe_drain(rate: u64, left: Option<Duration>) -> String {
    let left = left.map_or_else(String::new, |d| {
        format!(", about {} left", human_duration(d))
    });
    // A rate, not an exact count.
    format!("draining at {}{left}", human_rate(rate as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: std::time::Instant, secs: u64) -> std::time::Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn a_steady_spill_rate_converges_to_its_bytes_per_second() {
        let t0 = std::time::Instant::now();
        let mut r = SpillRate::default();
        assert_eq!(r.rate(t0), 0.0);
        // 1000 bytes a second for ten minutes.
        for s in 0..600 {
            r.record(at(t0, s), 1000);
        }
        let rate = r.rate(at(t0, 599));
        assert!((990.0..=1010.0).contains(&rate), "{rate}");
        // After one minute of it, about 63 % of the way.
        let mut fresh = SpillRate::default();
        for s in 1..=60 {
            fresh.record(at(t0, s), 1000);
        }
        let rate = fresh.rate(at(t0, 60));
        assert!((620.0..=650.0).contains(&rate), "{rate}");
    }

    #[test]
    fn a_spill_rate_decays_by_e_each_minute_once_spills_stop() {
        let t0 = std::time::Instant::now();
        let mut r = SpillRate::default();
        r.record(t0, 6000);
        assert!((r.rate(t0) - 100.0).abs() < 1e-9);
        let later = r.rate(at(t0, 60));
        assert!(
            (later - 100.0 / std::f64::consts::E).abs() < 1e-6,
            "{later}"
        );
        // A time before the last append counts as that moment.
        r.record(t0 - Duration::from_secs(5), 6000);
        assert!((r.rate(t0) - 200.0).abs() < 1e-9);
    }

    #[test]
    fn time_to_full_is_the_room_left_over_the_rate_and_none_when_not_filling() {
        assert_eq!(
            time_to_full(400, 1000, 10.0, true),
            Some(Duration::from_secs(60))
        );
        assert_eq!(time_to_full(1000, 1000, 10.0, true), Some(Duration::ZERO));
        assert_eq!(time_to_full(2000, 1000, 10.0, true), Some(Duration::ZERO));
        assert_eq!(time_to_full(400, 1000, 10.0, false), None);
        assert_eq!(time_to_full(400, 1000, 0.5, true), None);
        assert_eq!(time_to_full(400, 1000, f64::NAN, true), None);
        assert_eq!(
            time_to_full(0, u64::MAX, MIN_FILL_RATE, true),
            Some(Duration::MAX),
            "saturated"
        );
    }

    #[test]
    fn fill_is_a_whole_percentage_of_the_cap() {
        assert_eq!(fill_percent(0, 1000), 0);
        assert_eq!(fill_percent(999, 1000), 99);
        assert_eq!(fill_percent(1000, 1000), 100);
        assert_eq!(fill_percent(5, 0), 0);
        assert_eq!(fill_percent(u64::MAX, 1), u64::MAX);
    }

    #[test]
    fn durations_read_in_seconds_minutes_or_hours() {
        assert_eq!(approx(Duration::from_secs(45)), "45 s");
        assert_eq!(approx(Duration::from_secs(119)), "119 s");
        assert_eq!(approx(Duration::from_secs(600)), "10 min");
        assert_eq!(approx(Duration::from_secs(3 * 3600)), "3 h");
        assert!(approx(Duration::MAX).ends_with(" h"));
    }
}
