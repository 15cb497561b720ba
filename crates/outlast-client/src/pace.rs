//! Pacing and measuring the replay: the token buckets of the replay rate cap, and the meter
//! of the drain rate that the recovery log line and the stats report.
//!
//! Both are pure: every call takes `now`, and the answers are exact, so unit tests drive
//! them step by step without a clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How much a token bucket holds when full, in time at its rate: 50 ms. A cap is honoured
/// over any window of time `w` to within `rate × 50 ms` (a 1-second window sees at most
/// 1.05 × the cap), and the bucket still absorbs the small gaps between requests.
pub(crate) const BURST: Duration = Duration::from_millis(50);

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// A token bucket that answers "wait `d`, then send": tokens flow in at `rate` per second up
/// to a burst of [`BURST`] worth of them (at least one); a send of `n` takes `n` tokens and
/// may leave the bucket in debt, and the sender waits until the debt is paid. A send larger
/// than the bucket is allowed (a record is never refused for its size): it waits for its
/// whole cost at the rate, so the rate holds on average whatever the sizes.
///
/// Tokens are counted in units of 1/10⁹ (`token × 10⁹` per nanosecond-exact arithmetic in
/// `i128`): no rounding drift, no floating point, and no overflow for any `u64` rate or
/// size.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    /// Tokens per second (at least 1).
    rate: u64,
    /// The most the bucket holds, in 10⁻⁹ tokens.
    capacity: i128,
    /// What it holds as of `at` (negative: in debt), in 10⁻⁹ tokens.
    level: i128,
    at: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket of `rate` tokens per second (0 counts as 1).
    pub(crate) fn new(rate: u64) -> TokenBucket {
        let rate = rate.max(1);
        let burst = (u128::from(rate) * BURST.as_nanos() / NANOS_PER_SEC).max(1);
        let capacity = i128::try_from(burst * NANOS_PER_SEC).unwrap_or(i128::MAX);
        TokenBucket {
            rate,
            capacity,
            level: capacity,
            at: None,
        }
    }

    /// Tokens per second.
    #[cfg(test)]
    pub(crate) fn rate(&self) -> u64 {
        self.rate
    }

    /// Fills the bucket for the time since the last call (a `now` earlier than it counts as
    /// the same moment).
    fn refill(&mut self, now: Instant) {
        let Some(at) = self.at else {
            self.at = Some(now);
            return;
        };
        if now <= at {
            return;
        }
        let elapsed = now.duration_since(at).as_nanos();
        let added = elapsed
            .checked_mul(u128::from(self.rate))
            .and_then(|a| i128::try_from(a).ok());
        self.level = match added {
            Some(a) => self.level.saturating_add(a).min(self.capacity),
            None => self.capacity,
        };
        self.at = Some(now);
    }

    /// Takes `n` tokens at `now` and says how long to wait before the send they pay for.
    pub(crate) fn take(&mut self, now: Instant, n: u64) -> Duration {
        self.refill(now);
        let cost = i128::from(n).saturating_mul(NANOS_PER_SEC as i128);
        self.level = self.level.saturating_sub(cost);
        self.debt_wait()
    }

    /// Gives back `n` tokens taken for a send that was not made (never above a full
    /// bucket).
    pub(crate) fn give_back(&mut self, now: Instant, n: u64) {
        self.refill(now);
        let cost = i128::from(n).saturating_mul(NANOS_PER_SEC as i128);
        self.level = self.level.saturating_add(cost).min(self.capacity);
    }

    /// How long until the bucket is out of debt (zero if it is not in debt).
    fn debt_wait(&self) -> Duration {
        if self.level >= 0 {
            return Duration::ZERO;
        }
        // `level` is in 10⁻⁹ tokens and the rate in tokens per second: the debt over the
        // rate is in nanoseconds (rounded up, so the wait never ends early).
        let debt = self.level.unsigned_abs();
        let rate = u128::from(self.rate);
        let nanos = debt.div_ceil(rate);
        let secs = u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX);
        let sub = u32::try_from(nanos % NANOS_PER_SEC).unwrap_or(0);
        Duration::new(secs, 0).saturating_add(Duration::from_nanos(u64::from(sub)))
    }
}

/// The replay rate cap: a bucket of bytes and one of requests, either or both.
#[derive(Debug, Clone, Default)]
pub(crate) struct RateCap {
    bytes: Option<TokenBucket>,
    requests: Option<TokenBucket>,
}

impl RateCap {
    /// A cap of `bytes` per second and `requests` per second (`None`: that one is off).
    pub(crate) fn new(bytes: Option<u64>, requests: Option<u64>) -> RateCap {
        RateCap {
            bytes: bytes.map(TokenBucket::new),
            requests: requests.map(TokenBucket::new),
        }
    }

    /// Whether any cap is on.
    pub(crate) fn is_on(&self) -> bool {
        self.bytes.is_some() || self.requests.is_some()
    }

    /// Takes one request of `bytes` at `now`: how long to wait before sending it (the
    /// longer of the two buckets' waits).
    pub(crate) fn take(&mut self, now: Instant, bytes: u64) -> Duration {
        let b = self
            .bytes
            .as_mut()
            .map_or(Duration::ZERO, |b| b.take(now, bytes));
        let r = self
            .requests
            .as_mut()
            .map_or(Duration::ZERO, |r| r.take(now, 1));
        b.max(r)
    }

    /// Gives back what [`take`](Self::take) took for a request of `bytes` that was not sent.
    pub(crate) fn give_back(&mut self, now: Instant, bytes: u64) {
        if let Some(b) = self.bytes.as_mut() {
            b.give_back(now, bytes);
        }
        if let Some(r) = self.requests.as_mut() {
            r.give_back(now, 1);
        }
    }
}

/// How far back the drain meter looks: 5 s follows a drain's pace within seconds while one
/// slow request does not swing it.
pub(crate) const METER_WINDOW: Duration = Duration::from_secs(5);
/// Deliveries within this time of each other share one sample (bounded memory: at most
/// `METER_WINDOW / METER_SLICE` samples).
const METER_SLICE: Duration = Duration::from_millis(100);
/// The least time between the first and the last sample before a rate is given: one batch
/// alone says nothing about the pace.
pub(crate) const METER_MIN_SPAN: Duration = Duration::from_millis(500);

/// Deliveries of the drain over the last [`METER_WINDOW`]: bytes and records per second.
#[derive(Debug, Clone, Default)]
pub(crate) struct DrainMeter {
    /// (start of the slice, bytes, records), oldest first.
    samples: VecDeque<(Instant, u64, u64)>,
}

/// A measured drain rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct DrainRate {
    /// Payload bytes delivered per second (as sent).
    pub(crate) bytes_per_sec: f64,
    /// Records delivered per second.
    pub(crate) records_per_sec: f64,
}

impl DrainMeter {
    /// Counts `bytes` in `records` delivered at `now` (a `now` earlier than the last sample
    /// counts as that moment).
    pub(crate) fn record(&mut self, now: Instant, bytes: u64, records: u64) {
        match self.samples.back_mut() {
            Some((at, b, r)) if now.saturating_duration_since(*at) < METER_SLICE => {
                *b = b.saturating_add(bytes);
                *r = r.saturating_add(records);
            }
            _ => self.samples.push_back((now, bytes, records)),
        }
        self.forget_before(now);
    }

    /// Drops samples older than the window.
    fn forget_before(&mut self, now: Instant) {
        while let Some((at, ..)) = self.samples.front() {
            if now.saturating_duration_since(*at) > METER_WINDOW {
                self.samples.pop_front();
            } else {
                break;
            }
        }
    }

    /// The rate at `now`: what was delivered after the first sample of the window, over the
    /// time from that sample to `now` (so a drain that stalls shows a falling rate). `None`
    /// until the samples span [`METER_MIN_SPAN`], and once nothing was delivered for a
    /// whole window.
    pub(crate) fn rate(&self, now: Instant) -> Option<DrainRate> {
        let mut live = self
            .samples
            .iter()
            .filter(|(at, ..)| now.saturating_duration_since(*at) <= METER_WINDOW);
        let (first, ..) = live.next()?;
        let (bytes, records) = live.fold((0u64, 0u64), |(b, r), (_, sb, sr)| {
            (b.saturating_add(*sb), r.saturating_add(*sr))
        });
        let last = self.samples.back().map(|(at, ..)| *at)?;
        if last.saturating_duration_since(*first) < METER_MIN_SPAN {
            return None;
        }
        let span = now.saturating_duration_since(*first).as_secs_f64();
        // A rate, not an exact count: `as f64` rounds beyond 2^53.
        Some(DrainRate {
            bytes_per_sec: bytes as f64 / span,
            records_per_sec: records as f64 / span,
        })
    }
}

/// At `records_per_sec`, how long until `records` are delivered; `None` without a rate.
pub(crate) fn time_to_drain(records: u64, records_per_sec: f64) -> Option<Duration> {
    if records_per_sec.is_nan() || records_per_sec <= 0.0 {
        return None;
    }
    Some(Duration::try_from_secs_f64(records as f64 / records_per_sec).unwrap_or(Duration::MAX))
}

/// A byte count for people: `41 MiB`, `512 KiB`, `900 B`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    const GIB: u64 = 1024 * MIB;
    match bytes {
        b if b >= 10 * GIB => format!("{} GiB", b / GIB),
        b if b >= GIB => format!("{:.1} GiB", b as f64 / GIB as f64),
        b if b >= 10 * MIB => format!("{} MiB", b / MIB),
        b if b >= MIB => format!("{:.1} MiB", b as f64 / MIB as f64),
        b if b >= KIB => format!("{} KiB", b / KIB),
        b => format!("{b} B"),
    }
}

/// A rate for people, in decimal units as network rates are given: `12 MB/s`, `830 kB/s`.
pub(crate) fn human_rate(bytes_per_sec: f64) -> String {
    let r = if bytes_per_sec.is_finite() {
        bytes_per_sec.max(0.0)
    } else {
        0.0
    };
    if r >= 10e6 {
        format!("{:.0} MB/s", r / 1e6)
    } else if r >= 1e6 {
        format!("{:.1} MB/s", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.0} kB/s", r / 1e3)
    } else {
        format!("{r:.0} B/s")
    }
}

/// A duration for people, to a tenth of a second under a minute: `3.4 s`, `2m13s`, `1h05m`.
pub(crate) fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{:.1} s", d.as_secs_f64())
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_bucket_lets_its_burst_through_then_paces_at_the_rate() {
        let t0 = Instant::now();
        // 1000 bytes/s: a burst of 50 bytes.
        let mut b = TokenBucket::new(1000);
        assert_eq!(b.take(t0, 50), Duration::ZERO, "the burst");
        assert_eq!(b.take(t0, 100), ms(100), "100 bytes of debt at 1000/s");
        // Waiting the answer out and asking again: the next 100 bytes wait 100 ms more.
        assert_eq!(b.take(t0 + ms(100), 100), ms(100));
        // Idle for long: the bucket holds no more than its burst.
        assert_eq!(b.take(t0 + Duration::from_secs(60), 50), Duration::ZERO);
        assert_eq!(b.take(t0 + Duration::from_secs(60), 1), ms(1));
    }

    #[test]
    fn a_send_larger_than_the_bucket_waits_its_whole_cost_and_is_never_refused() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000);
        // 10 000 bytes: 50 in the bucket, 9950 of debt, 9.95 s.
        assert_eq!(b.take(t0, 10_000), ms(9950));
        // The next request queues behind that debt.
        assert_eq!(b.take(t0, 1000), ms(10_950));
    }

    #[test]
    fn the_rate_holds_exactly_over_many_sends() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(5_000_000);
        let mut now = t0;
        // 100 sends of 64 KiB, each sent when the bucket says.
        for _ in 0..100 {
            now += b.take(now, 65_536);
        }
        // 6 553 600 bytes minus the 250 000-byte burst, at 5 MB/s.
        assert_eq!(now - t0, Duration::from_nanos(1_260_720_000));
    }

    #[test]
    fn extreme_rates_and_sizes_neither_overflow_nor_panic() {
        let t0 = Instant::now();
        // 1 byte/s: a burst of one byte; a mebibyte more waits 2^20 seconds.
        let mut slow = TokenBucket::new(1);
        assert_eq!(slow.take(t0, 1), Duration::ZERO);
        assert_eq!(slow.take(t0, 1 << 20), Duration::from_secs(1 << 20));
        // 0 is taken as 1.
        assert_eq!(TokenBucket::new(0).rate(), 1);
        // The largest sizes: a wait, saturated, never a panic.
        let mut b = TokenBucket::new(1);
        let d = b.take(t0, u64::MAX);
        assert!(d >= Duration::from_secs(u64::MAX / 2), "{d:?}");
        let _ = b.take(t0, u64::MAX);
        // The largest rate: nothing waits, even after a long idle time.
        let mut fast = TokenBucket::new(u64::MAX);
        assert_eq!(fast.take(t0, u64::MAX / 100), Duration::ZERO);
        let far = t0 + Duration::from_secs(100 * 365 * 24 * 3600);
        assert_eq!(fast.take(far, 1 << 40), Duration::ZERO);
        // Time going backwards counts as no time.
        let mut b = TokenBucket::new(1000);
        assert_eq!(b.take(t0 + ms(10), 50), Duration::ZERO);
        assert_eq!(b.take(t0, 10), ms(10));
    }

    #[test]
    fn tokens_given_back_shorten_the_next_wait_but_never_overfill_the_bucket() {
        let t0 = Instant::now();
        let mut cap = RateCap::new(Some(1000), Some(10));
        assert_eq!(cap.take(t0, 1050), ms(1000));
        assert_eq!(cap.take(t0, 100), ms(1100), "behind the first");
        // The first was not sent after all: the second waits only for its own cost.
        cap.give_back(t0, 1050);
        assert_eq!(
            cap.take(t0, 0),
            ms(100),
            "one request of debt at 10 a second"
        );
        // Giving back more than was taken fills the bucket, no more.
        let mut b = TokenBucket::new(1000);
        b.give_back(t0, u64::MAX);
        assert_eq!(b.take(t0, 50), Duration::ZERO);
        assert_eq!(b.take(t0, 1), ms(1));
    }

    #[test]
    fn a_cap_waits_for_the_slower_of_its_buckets() {
        let t0 = Instant::now();
        let mut off = RateCap::new(None, None);
        assert!(!off.is_on());
        assert_eq!(off.take(t0, u64::MAX), Duration::ZERO);
        // 10 requests/s (a burst of 1) and 1 MB/s (a burst of 50 000 bytes).
        let mut cap = RateCap::new(Some(1_000_000), Some(10));
        assert!(cap.is_on());
        assert_eq!(cap.take(t0, 1000), Duration::ZERO);
        assert_eq!(cap.take(t0, 1000), ms(100), "the request bucket");
        assert_eq!(cap.take(t0, 1_000_000), ms(952), "the byte bucket");
    }

    #[test]
    fn the_meter_gives_a_rate_once_its_samples_span_half_a_second() {
        let t0 = Instant::now();
        let mut m = DrainMeter::default();
        assert_eq!(m.rate(t0), None);
        m.record(t0, 1000, 1);
        m.record(t0 + ms(250), 1000, 1);
        assert_eq!(m.rate(t0 + ms(250)), None, "250 ms is too short to say");
        m.record(t0 + ms(500), 1000, 1);
        // Two samples after the first, over half a second.
        assert_eq!(
            m.rate(t0 + ms(500)),
            Some(DrainRate {
                bytes_per_sec: 4000.0,
                records_per_sec: 4.0
            })
        );
        // A stall: the same deliveries over a longer time.
        assert_eq!(m.rate(t0 + ms(1000)).map(|r| r.bytes_per_sec), Some(2000.0));
        // Nothing for a whole window: no rate.
        assert_eq!(m.rate(t0 + Duration::from_secs(6)), None);
    }

    #[test]
    fn the_meter_merges_close_deliveries_and_forgets_old_ones() {
        let t0 = Instant::now();
        let mut m = DrainMeter::default();
        for i in 0..1000 {
            m.record(t0 + Duration::from_millis(i * 10), 10, 1);
        }
        assert!(m.samples.len() <= 52, "{}", m.samples.len());
        // A `now` before the last sample counts as that sample.
        m.record(t0, 5, 1);
        let rate = m.rate(t0 + Duration::from_millis(9990)).expect("a rate");
        assert!((900.0..1100.0).contains(&rate.bytes_per_sec), "{rate:?}");
    }

    #[test]
    fn time_to_drain_is_the_records_over_the_rate() {
        assert_eq!(time_to_drain(100, 50.0), Some(Duration::from_secs(2)));
        assert_eq!(time_to_drain(0, 50.0), Some(Duration::ZERO));
        assert_eq!(time_to_drain(100, 0.0), None);
        assert_eq!(time_to_drain(100, f64::NAN), None);
        assert_eq!(
            time_to_drain(u64::MAX, f64::MIN_POSITIVE),
            Some(Duration::MAX)
        );
    }

    #[test]
    fn sizes_rates_and_durations_read_as_people_write_them() {
        assert_eq!(human_bytes(900), "900 B");
        assert_eq!(human_bytes(41 * 1024 * 1024), "41 MiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
        assert_eq!(human_rate(12e6), "12 MB/s");
        assert_eq!(human_rate(5.5e6), "5.5 MB/s");
        assert_eq!(human_rate(830e3), "830 kB/s");
        assert_eq!(human_rate(f64::NAN), "0 B/s");
        assert_eq!(human_duration(Duration::from_millis(3400)), "3.4 s");
        assert_eq!(human_duration(Duration::from_secs(133)), "2m13s");
        assert_eq!(human_duration(Duration::from_secs(3900)), "1h05m");
        assert!(human_duration(Duration::MAX).ends_with('m'));
    }
}
