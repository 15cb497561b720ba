//! What a user watches: per signal, the buffer (records and bytes pending, oldest age), what
//! was dropped and why, what the collector rejected, and how the SDK's calls were answered;
//! and the counters behind it, written by the hand-off and the HTTP status classifier.

use std::sync::atomic::{AtomicU64, Ordering};

use outlast_client::ClientStats;

/// Counters of one signal's exporter calls, shared by its exporters, its pipeline and its
/// HTTP status classifier.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Requests the client accepted (delivered or spooled), whether or not the SDK's call
    /// was still waiting. A batch too large for one record counts as the parts it was split
    /// into.
    pub(crate) requests_accepted: AtomicU64,
    pub(crate) items_accepted: AtomicU64,
    /// Requests the client dropped, that could not be encoded, or whose task was stopped
    /// with the runtime.
    pub(crate) requests_dropped: AtomicU64,
    pub(crate) items_dropped: AtomicU64,
    /// Batches split into several requests to fit the client's `max_record_bytes`.
    pub(crate) batches_split: AtomicU64,
    /// SDK calls answered `Timeout` (the batch was still under way).
    pub(crate) calls_timed_out: AtomicU64,
    pub(crate) rejected_requests: AtomicU64,
    pub(crate) partially_rejected_items: AtomicU64,
}

impl Counters {
    /// Counts one request of `items`, accepted (delivered or spooled) or dropped.
    pub(crate) fn count(&self, accepted: bool, items: u64) {
        let (requests, counted) = if accepted {
            (&self.requests_accepted, &self.items_accepted)
        } else {
            (&self.requests_dropped, &self.items_dropped)
        };
        requests.fetch_add(1, Ordering::Relaxed);
        counted.fetch_add(items, Ordering::Relaxed);
    }
}

/// The state of one signal's export: how the SDK's calls were answered, and the signal's
/// client (`client`: requests and bytes waiting in the spool, the oldest one's age, drops by
/// reason, delivered and spooled counts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SignalStats {
    /// Requests the collector rejected with a permanent status (400, 413, 500...); they are
    /// among the client's drops for the reason `permanent`.
    pub rejected_by_collector: u64,
    /// Items (spans, log records, data points) a collector reported rejected in a 2xx
    /// `partial_success` (protobuf responses; also logged, at most once a minute). Such
    /// items are not retried: the collector has decided on them.
    pub partially_rejected_items: u64,
    /// Requests outlast accepted (delivered or spooled). An SDK batch whose encoding is
    /// larger than the client's `max_record_bytes` is split into requests that fit, each
    /// counted here.
    pub requests_accepted: u64,
    /// Items in the accepted requests.
    pub items_accepted: u64,
    /// Requests dropped before they were accepted (`client.dropped` says why), including
    /// one holding a single item larger than `max_record_bytes`.
    pub requests_dropped: u64,
    /// Items in the dropped requests.
    pub items_dropped: u64,
    /// SDK batches split into several requests to fit `max_record_bytes`.
    pub batches_split: u64,
    /// SDK exporter calls answered `Timeout` while their batch was still under way (it
    /// then ended accepted or dropped, counted above).
    pub calls_timed_out: u64,
    /// Batches handed over and not yet answered by the client.
    pub in_flight: u64,
    /// The client's statistics: `spool_records` and `pending_bytes` waiting,
    /// `oldest_record_age`, `dropped` by reason, `exported`, `spooled`, `replayed`...
    pub client: ClientStats,
}

impl SignalStats {
    pub(crate) fn new(client: ClientStats, c: &Counters, in_flight: u64) -> SignalStats {
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        SignalStats {
            rejected_by_collector: load(&c.rejected_requests),
            partially_rejected_items: load(&c.partially_rejected_items),
            requests_accepted: load(&c.requests_accepted),
            items_accepted: load(&c.items_accepted),
            requests_dropped: load(&c.requests_dropped),
            items_dropped: load(&c.items_dropped),
            batches_split: load(&c.batches_split),
            calls_timed_out: load(&c.calls_timed_out),
            in_flight,
            client,
        }
    }
}

/// The state of every signal a [`Pipeline`](crate::Pipeline) exports (`None`: not built).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PipelineStats {
    /// Spans.
    pub traces: Option<SignalStats>,
    /// Log records.
    pub logs: Option<SignalStats>,
    /// Metric data points.
    pub metrics: Option<SignalStats>,
}
