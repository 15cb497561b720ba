//! Rate limiting for log messages: at most one message per interval per kind, carrying the
//! count of what was held back.
//!
//! The caller passes the current time in, so this does no I/O and is testable without sleeping.
//! Under Tokio, pass `tokio::time::Instant::now().into_std()`, which follows a paused clock.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Default interval between two messages of the same kind: one a minute keeps a long
/// outage visible in the logs without flooding them.
pub const DEFAULT_WARN_INTERVAL: Duration = Duration::from_secs(60);

/// Lets one message through per interval and counts the others.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// use outlast_core::throttle::Throttle;
///
/// let mut t = Throttle::new(Duration::from_secs(60));
/// let now = Instant::now();
/// assert_eq!(t.check(now), Some(0)); // first message goes out
/// assert_eq!(t.check(now + Duration::from_secs(1)), None); // held back
/// assert_eq!(t.check(now + Duration::from_secs(61)), Some(1)); // out, with one suppressed
/// ```
#[derive(Debug, Clone)]
pub struct Throttle {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// A throttle letting one message through per `interval`.
    pub fn new(interval: Duration) -> Throttle {
        Throttle {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// Whether a message may be emitted at `now`. `Some(n)`: emit it, and say that `n`
    /// messages were suppressed since the last one. `None`: suppress it (it is counted).
    pub fn check(&mut self, now: Instant) -> Option<u64> {
        let due = match self.last {
            None => true,
            Some(last) => now.saturating_duration_since(last) >= self.interval,
        };
        if due {
            self.last = Some(now);
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            None
        }
    }

    /// Messages suppressed since the last one let through.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

/// One [`Throttle`] per kind of message (e.g. per warning or per drop reason).
#[derive(Debug, Clone)]
pub struct KeyedThrottle<K> {
    interval: Duration,
    by_kind: HashMap<K, Throttle>,
}

impl<K: Eq + Hash> KeyedThrottle<K> {
    /// A throttle letting one message of each kind through per `interval`.
    pub fn new(interval: Duration) -> KeyedThrottle<K> {
        KeyedThrottle {
            interval,
            by_kind: HashMap::new(),
        }
    }

    /// As [`Throttle::check`], for messages of kind `kind`.
    pub fn check(&mut self, kind: K, now: Instant) -> Option<u64> {
        let interval = self.interval;
        self.by_kind
            .entry(kind)
            .or_insert_with(|| Throttle::new(interval))
            .check(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn kinds_are_limited_independently() {
        let mut t = KeyedThrottle::new(DEFAULT_WARN_INTERVAL);
        let now = Instant::now();
        assert_eq!(t.check("retrying", now), Some(0));
        assert_eq!(t.check("dropped", now), Some(0));
        assert_eq!(t.check("retrying", now + Duration::from_secs(5)), None);
        assert_eq!(t.check("dropped", now + Duration::from_secs(5)), None);
        assert_eq!(t.check("dropped", now + Duration::from_secs(6)), None);
        assert_eq!(t.check("retrying", now + Duration::from_secs(60)), Some(1));
        assert_eq!(t.check("dropped", now + Duration::from_secs(60)), Some(2));
    }

    #[tokio::test(start_paused = true)]
    async fn follows_a_paused_tokio_clock() {
        let mut t = Throttle::new(Duration::from_secs(60));
        let mut emitted = 0;
        // One check a second for ten virtual minutes: exactly ten messages go out.
        for _ in 0..600 {
            if t.check(tokio::time::Instant::now().into_std()).is_some() {
                emitted += 1;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(emitted, 10);
    }

    proptest! {
        #[test]
        fn never_more_than_one_per_interval_and_nothing_uncounted(
            gaps_ms in proptest::collection::vec(0u64..30_000, 1..300)
        ) {
            let interval = Duration::from_secs(60);
            let mut t = Throttle::new(interval);
            let start = Instant::now();
            let mut now = start;
            let mut last_emit: Option<Instant> = None;
            let mut emitted = 0u64;
            let mut reported_suppressed = 0u64;
            for g in &gaps_ms {
                now += Duration::from_millis(*g);
                if let Some(n) = t.check(now) {
                    if let Some(prev) = last_emit {
                        prop_assert!(now - prev >= interval);
                    }
                    last_emit = Some(now);
                    emitted += 1;
                    reported_suppressed += n;
                }
            }
            let total = gaps_ms.len() as u64;
            prop_assert_eq!(emitted + reported_suppressed + t.suppressed(), total);
        }
    }
}
