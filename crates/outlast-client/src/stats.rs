//! Counters and gauges of a client: what was delivered, spooled, replayed and dropped (and
//! why), and the state of the spool and of the backend.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::DropReason;

/// Payloads dropped, by reason. Every drop is counted exactly once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DropCounts {
    /// The spool was full (drop-newest policy) while the backend was unreachable.
    pub spool_full: u64,
    /// The backend rejected the payload permanently (direct exports and spooled records).
    pub permanent: u64,
    /// The spool could not be used while the backend was unreachable.
    pub spool_unavailable: u64,
    /// `export` was called after shutdown.
    pub shut_down: u64,
    /// The payload exceeded `max_record_bytes`.
    pub too_large: u64,
    /// Spooled records that outlived `max_record_age`.
    pub expired: u64,
    /// Spooled records evicted for newer ones (drop-oldest policy).
    pub evicted: u64,
    /// Damaged records skipped in the spool (each damaged region counts once).
    pub corrupt: u64,
}

impl DropCounts {
    /// All drops, whatever the reason.
    pub fn total(&self) -> u64 {
        self.spool_full
            + self.permanent
            + self.spool_unavailable
            + self.shut_down
            + self.too_large
            + self.expired
            + self.evicted
            + self.corrupt
    }

    /// The count for one reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        match reason {
            DropReason::SpoolFull => self.spool_full,
            DropReason::Permanent => self.permanent,
            DropReason::SpoolUnavailable => self.spool_unavailable,
            DropReason::ShutDown => self.shut_down,
            DropReason::TooLarge => self.too_large,
            DropReason::Expired => self.expired,
            DropReason::Evicted => self.evicted,
            DropReason::Corrupt => self.corrupt,
        }
    }
}

/// A snapshot of a client's counters (since it was built) and gauges (now).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientStats {
    /// Payloads delivered directly by `export` (first attempt or quick retry).
    pub exported: u64,
    /// Quick retries made by `export` after a first failed attempt.
    pub retried: u64,
    /// Payloads appended to the spool.
    pub spooled: u64,
    /// Spooled records delivered by the drain task.
    pub replayed: u64,
    /// Replay attempts that failed (retryable), each followed by a backoff.
    pub replay_failures: u64,
    /// Payloads dropped, by reason.
    pub dropped: DropCounts,
    /// Records waiting in the spool (all lanes, including those adopted from dead processes).
    pub spool_records: u64,
    /// Bytes of the spool's files (what the size cap applies to). A segment file is freed
    /// only once all its records are delivered, so this stays above zero after a drain.
    pub spool_bytes: u64,
    /// Framed bytes of the records waiting in the spool (estimated in proportion for a
    /// segment delivered part-way): what the retry warning reports.
    pub pending_bytes: u64,
    /// The cap in force on `spool_bytes`: [`ClientBuilder::spool_max_bytes`](crate::ClientBuilder::spool_max_bytes), lowered at open
    /// when the disk has less room (0 without a spool). See [`ClientStats::spool_fill`].
    pub spool_max_bytes: u64,
    /// Bytes appended to the spool per second, recently: an exponentially weighted average
    /// over about the last minute (a steady flow reaches 63 % of its rate after one minute,
    /// and an outage's rate fades by `1/e` each minute once spills stop).
    pub spill_rate: u64,
    /// At `spill_rate`, how long until `spool_bytes` reaches `spool_max_bytes` (zero when
    /// there): how much longer the outage can last before the full-spool policy applies.
    /// `None` when not filling: nothing spilled recently (under 1 byte per second), or the
    /// backend is online (the drain task is emptying the spool).
    pub spool_full_in: Option<Duration>,
    /// Age of the oldest waiting record.
    pub oldest_record_age: Option<Duration>,
    /// Lanes of another identity in the spool directory: left alone (never replayed, never
    /// counted in `spool_records`), for a client of that identity or `outlast replay
    /// --identity`. As last seen when the spool opened or looked for released lanes.
    pub foreign_lanes: usize,
    /// Records waiting in those lanes, as counted when the spool opened (0 once no lane of
    /// another identity is left).
    pub foreign_records: u64,
    /// Whether the backend is believed reachable (the last attempt succeeded, or none failed).
    pub online: bool,
    /// What the client knows about the backend: online, unreachable at the transport level,
    /// answering with failures, or offline for a reason the exporter does not say.
    pub backend: crate::BackendState,
    /// Acknowledgements the spool refused. Their records were delivered and are counted in
    /// `replayed` (or `dropped`) once all the same; until the spool writes its read
    /// progress again (the next acknowledgement, sync or close), a crash delivers them again.
    pub ack_failures: u64,
    /// Whether new payloads queue behind a spooled backlog.
    pub backlog: bool,
    /// Whether the client has a usable spool.
    pub spool_available: bool,
    /// Whether the client has been shut down.
    pub shut_down: bool,
}

impl ClientStats {
    /// How full the spool is: `spool_bytes` as a fraction of `spool_max_bytes` (0 without a
    /// spool; above 1 when the cap was lowered below what the spool already held).
    pub fn spool_fill(&self) -> f64 {
        if self.spool_max_bytes == 0 {
            return 0.0;
        }
        // A fraction, not an exact count: `as f64` rounds beyond 2^53 bytes.
        self.spool_bytes as f64 / self.spool_max_bytes as f64
    }
}

/// The live counters, shared by the export path and the drain task.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) exported: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) spooled: AtomicU64,
    pub(crate) replayed: AtomicU64,
    pub(crate) replay_failures: AtomicU64,
    spool_full: AtomicU64,
    permanent: AtomicU64,
    spool_unavailable: AtomicU64,
    shut_down: AtomicU64,
    too_large: AtomicU64,
    expired: AtomicU64,
    evicted: AtomicU64,
    corrupt: AtomicU64,
}

impl Counters {
    fn drop_counter(&self, reason: DropReason) -> &AtomicU64 {
        match reason {
            DropReason::SpoolFull => &self.spool_full,
            DropReason::Permanent => &self.permanent,
            DropReason::SpoolUnavailable => &self.spool_unavailable,
            DropReason::ShutDown => &self.shut_down,
            DropReason::TooLarge => &self.too_large,
            DropReason::Expired => &self.expired,
            DropReason::Evicted => &self.evicted,
            DropReason::Corrupt => &self.corrupt,
        }
    }

    /// Counts `n` drops for `reason`.
    pub(crate) fn add_dropped(&self, reason: DropReason, n: u64) {
        self.drop_counter(reason).fetch_add(n, Ordering::Relaxed);
    }

    /// Delivered records so far (direct and replayed), for flush reports.
    pub(crate) fn delivered(&self) -> u64 {
        self.exported.load(Ordering::Relaxed) + self.replayed.load(Ordering::Relaxed)
    }

    pub(crate) fn dropped(&self) -> DropCounts {
        let get = |r| self.drop_counter(r).load(Ordering::Relaxed);
        DropCounts {
            spool_full: get(DropReason::SpoolFull),
            permanent: get(DropReason::Permanent),
            spool_unavailable: get(DropReason::SpoolUnavailable),
            shut_down: get(DropReason::ShutDown),
            too_large: get(DropReason::TooLarge),
            expired: get(DropReason::Expired),
            evicted: get(DropReason::Evicted),
            corrupt: get(DropReason::Corrupt),
        }
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_counted_under_their_reason() {
        let c = Counters::default();
        c.add_dropped(DropReason::Permanent, 2);
        c.add_dropped(DropReason::Expired, 3);
        let d = c.dropped();
        assert_eq!(d.get(DropReason::Permanent), 2);
        assert_eq!(d.get(DropReason::Expired), 3);
        assert_eq!(d.get(DropReason::SpoolFull), 0);
        assert_eq!(d.total(), 5);
    }
}
