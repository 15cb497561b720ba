//! Counters and gauges of a client: what was delivered, spooled, replayed and dropped (and
//! why), and the state of the spool and of the backend.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use outlast_spool::SpoolError;

/// Whether the client has a spool, and if not, why: the programmatic answer to "is this
/// client running without a spool?" ([`ClientStats::spool`]).
///
/// A spool that cannot be opened does not make [`build`](crate::ClientBuilder::build) fail
/// (the client still delivers while the backend is up); it is logged once, and reported here
/// for as long as the client lives.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use outlast_client::{Client, SpoolState};
/// # #[derive(Debug)] struct Collector;
/// # impl outlast_client::Exporter for Collector {
/// #     async fn export(&self, _p: &outlast_client::Payload) -> Result<(), outlast_client::ExportError> { Ok(()) }
/// # }
/// # let dir = tempfile::tempdir()?;
/// # let not_a_dir = dir.path().join("file");
/// # std::fs::write(&not_a_dir, b"")?;
/// let client = Client::builder().spool_dir(&not_a_dir).build(Collector)?;
/// if let SpoolState::Unavailable { reason } = &client.stats().spool {
///     eprintln!("running without a spool: {reason}");
/// }
/// assert!(!client.stats().spool.is_available());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum SpoolState {
    /// The spool is open: what cannot be delivered now is kept on disk.
    #[default]
    Available,
    /// The spool could not be opened when the client was built; the client runs without it,
    /// and payloads that cannot be delivered are dropped as
    /// [`DropReason::SpoolUnavailable`].
    Unavailable {
        /// Why it could not be opened.
        reason: Arc<SpoolError>,
    },
    /// The spool was closed by [`shutdown`](crate::Client::shutdown) (what was not delivered
    /// stays on disk for the next process).
    Closed,
}

impl SpoolState {
    /// Whether the client has a usable spool now.
    pub fn is_available(&self) -> bool {
        matches!(self, SpoolState::Available)
    }

    /// Why the spool could not be opened, if it could not.
    pub fn unavailable_reason(&self) -> Option<&SpoolError> {
        match self {
            SpoolState::Unavailable { reason } => Some(reason),
            _ => None,
        }
    }
}

/// Two states are equal when they are the same variant and, for `Unavailable`, the reasons
/// print the same.
impl PartialEq for SpoolState {
    fn eq(&self, other: &SpoolState) -> bool {
        match (self, other) {
            (SpoolState::Available, SpoolState::Available)
            | (SpoolState::Closed, SpoolState::Closed) => true,
            (SpoolState::Unavailable { reason: a }, SpoolState::Unavailable { reason: b }) => {
                Arc::ptr_eq(a, b) || a.to_string() == b.to_string()
            }
            _ => false,
        }
    }
}

impl Eq for SpoolState {}

/// Declares every drop reason once — variant, field of [`DropCounts`], log label and the
/// docs of both — and derives from that one list [`DropReason`], [`DropReason::ALL`],
/// [`DropReason::index`], [`DropReason::as_str`] and [`DropCounts`]: adding a reason is one
/// entry here, and nothing else maps reasons by hand.
macro_rules! drop_reasons {
    ($(
        $(#[doc = $reason_doc:literal])*
        $variant:ident => $field:ident, $label:literal, $count_doc:literal;
    )*) => {
        /// Why a payload was dropped: the label used in [`ClientStats`] and in logs.
        ///
        /// [`DropReason::ALL`] lists every reason in the order of [`DropReason::index`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum DropReason {
            $( $(#[doc = $reason_doc])* $variant, )*
        }

        impl DropReason {
            /// How many reasons there are.
            pub const COUNT: usize = [$($label),*].len();

            /// Every reason, in the order of [`index`](Self::index).
            pub const ALL: [DropReason; DropReason::COUNT] = [$(DropReason::$variant),*];

            /// The reason's position in [`ALL`](Self::ALL), from 0: an index into arrays of
            /// per-reason values.
            pub const fn index(self) -> usize {
                self as usize
            }

            /// A short, stable label (`spool_full`, `permanent`, ...), used as a log field.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( DropReason::$variant => $label, )*
                }
            }
        }

        /// Payloads dropped, by reason. Every drop is counted exactly once.
        ///
        /// One public field per [`DropReason`] (named like its label), kept for reading
        /// counts by name; [`get`](Self::get) and [`iter`](Self::iter) go by reason.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct DropCounts {
            $( #[doc = $count_doc] pub $field: u64, )*
        }

        impl DropCounts {
            /// The counts in the order of [`DropReason::ALL`].
            pub(crate) const fn from_array(counts: [u64; DropReason::COUNT]) -> DropCounts {
                let [$($field),*] = counts;
                DropCounts { $($field),* }
            }

            /// The counts in the order of [`DropReason::ALL`].
            pub const fn to_array(&self) -> [u64; DropReason::COUNT] {
                [$(self.$field),*]
            }
        }
    };
}

drop_reasons! {
    /// The backend was unreachable and the spool had no room (drop-newest policy).
    SpoolFull => spool_full, "spool_full",
        "The spool was full (drop-newest policy) while the backend was unreachable.";
    /// The backend rejected the payload and would reject it again.
    Permanent => permanent, "permanent",
        "The backend rejected the payload permanently (direct exports and spooled records).";
    /// The backend was unreachable and the spool could not be opened or written.
    SpoolUnavailable => spool_unavailable, "spool_unavailable",
        "The spool could not be used while the backend was unreachable.";
    /// The client had been shut down.
    ShutDown => shut_down, "shut_down",
        "`export` was called after shutdown.";
    /// The payload is larger than the largest record the spool accepts.
    TooLarge => too_large, "too_large",
        "The payload exceeded `max_record_bytes`.";
    /// A spooled record outlived the configured maximum record age.
    Expired => expired, "expired",
        "Spooled records that outlived `max_record_age`.";
    /// A spooled record was evicted to make room for a newer one (drop-oldest policy).
    Evicted => evicted, "evicted",
        "Spooled records evicted for newer ones (drop-oldest policy).";
    /// A spooled record was damaged on disk (bad checksum) and skipped.
    Corrupt => corrupt, "corrupt",
        "Spooled records lost to damage on disk (bad checksum or framing): each lost record counts once, whether recovery or a replay found it, however often it is read past.";
    /// The caller dropped the `export` future (a timeout around it, a `select!`) before
    /// the payload was delivered or spooled.
    Cancelled => cancelled, "cancelled",
        "`export` futures dropped before their payload was delivered or spooled (the backend may have received an attempt cut off this way).";
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl DropCounts {
    /// All drops, whatever the reason.
    pub fn total(&self) -> u64 {
        self.to_array().iter().sum()
    }

    /// The count for one reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.to_array()[reason.index()]
    }

    /// Every reason with its count, in the order of [`DropReason::ALL`].
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + use<> {
        DropReason::ALL.into_iter().zip(self.to_array())
    }
}

/// A snapshot of a client's counters (since it was built) and gauges (now).
///
/// Every payload handed to [`export`](crate::Client::export) is counted once:
/// `exported + replayed + dropped.total() + spool_records` equals the payloads exported
/// (plus what the spool held when the client started) whenever no operation is moving a
/// record between the spool and a count. The counters and the spool's gauges are read one
/// after the other, not under one lock (a lock would make `stats` wait for the disk), so a
/// snapshot taken while an export is appending, or while a replay's read or
/// acknowledgement is under way, may be off by the records of those operations; the next
/// snapshot after they end is exact. After a `force_flush` that completed, and while the
/// client is idle, every snapshot is; after a `shutdown` whose time ran out, a spool call
/// still running counts what it did when it ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientStats {
    /// Payloads delivered directly by `export` (first attempt or quick retry).
    pub exported: u64,
    /// Quick retries made by `export` after a first failed attempt.
    pub retried: u64,
    /// Payloads appended to the spool.
    pub spooled: u64,
    /// Of `spooled`, payloads whose fsync failed in `FsyncEveryAppend` mode: they are in the
    /// spool (`export` answered [`Delivery::Spooled`](crate::Delivery::Spooled)) and the
    /// drain task delivers them like any other, but until a later sync succeeds a power
    /// loss may take them. Not a drop: each is counted once, as spooled.
    pub spooled_not_durable: u64,
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
    /// The cap in force on `spool_bytes`: [`ClientBuilder::spool_max_bytes`](crate::ClientBuilder::spool_max_bytes), lowered
    /// when the disk has less room (measured at open, and again when the spool is at that cap
    /// or frees segments) (0 without a spool). See [`ClientStats::spool_fill`].
    pub spool_max_bytes: u64,
    /// Bytes appended to the spool per second (as stored: compressed when the record is),
    /// recently: an exponentially weighted average over about the last minute (a steady
    /// flow reaches 63 % of its rate after one minute, and an outage's rate fades by `1/e`
    /// each minute once spills stop).
    pub spill_rate: u64,
    /// At `spill_rate`, how long until `spool_bytes` reaches `spool_max_bytes` (zero when
    /// there): how much longer the outage can last before the full-spool policy applies.
    /// `None` when not filling: nothing spilled recently (under 1 byte per second), or the
    /// backend is online (the drain task is emptying the spool).
    pub spool_full_in: Option<Duration>,
    /// Age of the oldest waiting record.
    pub oldest_record_age: Option<Duration>,
    /// How fast the backlog is being delivered: payload bytes (as sent) per second that the
    /// replay delivered over about the last 5 seconds. 0 until half a second of replay has
    /// been measured, and once nothing was delivered for 5 seconds.
    pub drain_rate: u64,
    /// At the replay's recent pace (records per second over about the last 5 seconds), how
    /// long until the records waiting now are delivered: an estimate, for people. `None`
    /// while the drain rate is not measured (see `drain_rate`). The backlog's size is
    /// `spool_records` and `pending_bytes`; its oldest record's age `oldest_record_age`.
    pub drain_time_left: Option<Duration>,
    /// Lanes of another identity in the spool directory: left alone (never replayed, never
    /// counted in `spool_records`), for a client of that identity or `outlast replay
    /// --identity`. As last seen when the spool opened or looked for released lanes.
    pub foreign_lanes: usize,
    /// Records waiting in those lanes, as counted when the spool opened (0 once no lane of
    /// another identity is left).
    pub foreign_records: u64,
    /// Lanes of this client's identity in the spool directory that no client can use as
    /// they are (a `cursor` or `lock` that is not a regular file, a renamed segment whose
    /// header does not say which it is): left alone, logged, and reported by `outlast
    /// verify`. As last seen when the spool opened or looked for released lanes. The
    /// project's troubleshooting guide ("Records stranded") says how to repair them.
    pub stranded_lanes: usize,
    /// Records in those lanes: on disk, not in `spool_records`, neither delivered nor
    /// dropped; delivered once the lane is repaired (the drain task adopts it then).
    pub stranded_records: u64,
    /// What the client knows about the backend: online, unreachable at the transport level,
    /// answering with failures, or offline for a reason the exporter does not say.
    pub backend: crate::BackendState,
    /// Acknowledgements the spool refused. Their records were delivered and are counted in
    /// `replayed` (or `dropped`) once all the same; until the spool writes its read
    /// progress again (the next acknowledgement, sync or close), a crash delivers them again.
    pub ack_failures: u64,
    /// Whether new payloads queue behind a spooled backlog.
    pub backlog: bool,
    /// The spool's state, with the reason when it could not be opened.
    pub spool: SpoolState,
    /// Whether the client has been shut down.
    pub shut_down: bool,
}

impl ClientStats {
    /// Payloads delivered: directly by `export` ([`exported`](Self::exported)) plus from the
    /// spool by the drain task ([`replayed`](Self::replayed)); what a
    /// [`FlushReport`](crate::FlushReport) calls `delivered` over its own span.
    pub fn delivered(&self) -> u64 {
        self.exported.saturating_add(self.replayed)
    }

    /// Whether the backend is believed reachable (the last attempt succeeded, or none
    /// failed): [`backend`](Self::backend) is [`BackendState::Online`](crate::BackendState::Online).
    pub fn online(&self) -> bool {
        self.backend == crate::BackendState::Online
    }

    /// Whether the client has a usable spool now: `false` both when it could not be opened
    /// and after [`shutdown`](crate::Client::shutdown) closed it; [`spool`](Self::spool)
    /// says which.
    pub fn spool_available(&self) -> bool {
        self.spool.is_available()
    }

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

/// What [`Counters`] count besides drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Count {
    Exported,
    Retried,
    Spooled,
    SpooledNotDurable,
    Replayed,
    ReplayFailures,
}

impl Count {
    const ALL: usize = 6;

    fn index(self) -> usize {
        self as usize
    }
}

/// The live counters: every room counts through these methods (each count one atomic
/// add), and only `stats()` and flush reports read them.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    counts: [AtomicU64; Count::ALL],
    /// Drops, indexed by [`DropReason::index`].
    dropped: [AtomicU64; DropReason::COUNT],
}

impl Counters {
    /// Counts `n` more of `what`; the total after it.
    pub(crate) fn add(&self, what: Count, n: u64) -> u64 {
        self.counts[what.index()]
            .fetch_add(n, Ordering::Relaxed)
            .saturating_add(n)
    }

    /// The count of `what` so far.
    pub(crate) fn get(&self, what: Count) -> u64 {
        self.counts[what.index()].load(Ordering::Relaxed)
    }

    /// Counts `n` drops for `reason`.
    pub(crate) fn add_dropped(&self, reason: DropReason, n: u64) {
        self.dropped[reason.index()].fetch_add(n, Ordering::Relaxed);
    }

    /// Drops for `reason` so far.
    pub(crate) fn dropped_for(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()].load(Ordering::Relaxed)
    }

    /// Delivered records so far (direct and replayed), for flush reports.
    pub(crate) fn delivered(&self) -> u64 {
        self.get(Count::Exported) + self.get(Count::Replayed)
    }

    pub(crate) fn dropped(&self) -> DropCounts {
        DropCounts::from_array(std::array::from_fn(|i| {
            self.dropped[i].load(Ordering::Relaxed)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_derived_figures_follow_the_fields_they_come_from() {
        let mut s = ClientStats {
            exported: 3,
            replayed: 4,
            ..ClientStats::default()
        };
        assert_eq!(s.delivered(), 7);
        s.exported = u64::MAX;
        assert_eq!(s.delivered(), u64::MAX);
        for (backend, online) in [
            (crate::BackendState::Online, true),
            (crate::BackendState::Unreachable, false),
            (crate::BackendState::Failing, false),
            (crate::BackendState::Offline, false),
        ] {
            s.backend = backend;
            assert_eq!(s.online(), online, "{backend:?}");
        }
        s.spool = SpoolState::Closed;
        assert!(!s.spool_available());
        s.spool = SpoolState::Available;
        assert!(s.spool_available());
    }

    #[test]
    fn each_count_has_its_own_counter_and_delivered_adds_direct_and_replayed() {
        let c = Counters::default();
        let all = [
            Count::Exported,
            Count::Retried,
            Count::Spooled,
            Count::SpooledNotDurable,
            Count::Replayed,
            Count::ReplayFailures,
        ];
        assert_eq!(all.len(), Count::ALL);
        for (i, what) in all.into_iter().enumerate() {
            assert_eq!(c.add(what, i as u64 + 1), i as u64 + 1, "{what:?}");
        }
        for (i, what) in all.into_iter().enumerate() {
            assert_eq!(c.get(what), i as u64 + 1, "{what:?}");
        }
        assert_eq!(c.delivered(), 1 + 5);
        assert_eq!(c.add(Count::Spooled, 2), 5, "the total after the add");
    }

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
        assert_eq!(d.permanent, 2);
        assert_eq!(d.expired, 3);
    }

    #[test]
    fn the_list_of_reasons_and_their_indexes_agree() {
        assert_eq!(DropReason::ALL.len(), DropReason::COUNT);
        for (i, r) in DropReason::ALL.into_iter().enumerate() {
            assert_eq!(r.index(), i, "{r}");
        }
        let labels: Vec<&str> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            labels,
            [
                "spool_full",
                "permanent",
                "spool_unavailable",
                "shut_down",
                "too_large",
                "expired",
                "evicted",
                "corrupt",
                "cancelled"
            ]
        );
    }

    #[test]
    fn each_reason_counts_in_its_own_field() {
        let c = Counters::default();
        for (i, r) in DropReason::ALL.into_iter().enumerate() {
            c.add_dropped(r, 1 << i);
        }
        let d = c.dropped();
        let by_field = [
            d.spool_full,
            d.permanent,
            d.spool_unavailable,
            d.shut_down,
            d.too_large,
            d.expired,
            d.evicted,
            d.corrupt,
            d.cancelled,
        ];
        for (i, r) in DropReason::ALL.into_iter().enumerate() {
            assert_eq!(d.get(r), 1 << i, "{r}");
            assert_eq!(by_field[i], 1 << i, "{r}");
            assert_eq!(c.dropped_for(r), 1 << i, "{r}");
        }
        assert_eq!(d.iter().map(|(_, n)| n).sum::<u64>(), d.total());
    }
}
