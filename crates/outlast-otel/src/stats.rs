//! What a user watches: per signal, the buffer (records and bytes pending, oldest age), what
//! was dropped and why, what the collector rejected, and how the SDK's calls were answered.

use outlast_client::ClientStats;
use std::sync::atomic::Ordering;

use crate::handoff::Counters;

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

/// Registers the pipeline's stats as observable instruments on `meter` (feature
/// `metrics`), read at each collection:
///
/// | instrument | kind | attributes |
/// |---|---|---|
/// | `outlast.pending.records` | gauge | `signal` |
/// | `outlast.pending.bytes` | gauge (By) | `signal` |
/// | `outlast.oldest_age` | gauge (s) | `signal` |
/// | `outlast.dropped` | counter | `signal`, `reason` |
/// | `outlast.rejected_by_collector` | counter | `signal` |
/// | `outlast.accepted.items` | counter | `signal` |
#[cfg(feature = "metrics")]
pub(crate) fn register(
    handoffs: Vec<std::sync::Arc<crate::handoff::Handoff>>,
    meter: &opentelemetry::metrics::Meter,
) {
    use opentelemetry::KeyValue;

    /// Every signal's stats with its `signal` attribute.
    type Handoffs = std::sync::Arc<Vec<std::sync::Arc<crate::handoff::Handoff>>>;
    fn each(handoffs: &Handoffs) -> Vec<(KeyValue, SignalStats)> {
        handoffs
            .iter()
            .map(|h| (KeyValue::new("signal", h.signal.name()), h.stats()))
            .collect()
    }
    let pipeline: Handoffs = std::sync::Arc::new(handoffs);
    let gauge = |name: &'static str, unit: &'static str, f: fn(&SignalStats) -> u64| {
        let p = pipeline.clone();
        meter
            .u64_observable_gauge(name)
            .with_unit(unit)
            .with_callback(move |o| {
                for (signal, st) in each(&p) {
                    o.observe(f(&st), std::slice::from_ref(&signal));
                }
            })
            .build();
    };
    gauge("outlast.pending.records", "{request}", |s| {
        s.client.spool_records
    });
    gauge("outlast.pending.bytes", "By", |s| s.client.pending_bytes);
    let counter = |name: &'static str, unit: &'static str, f: fn(&SignalStats) -> u64| {
        let p = pipeline.clone();
        meter
            .u64_observable_counter(name)
            .with_unit(unit)
            .with_callback(move |o| {
                for (signal, st) in each(&p) {
                    o.observe(f(&st), std::slice::from_ref(&signal));
                }
            })
            .build();
    };
    counter("outlast.rejected_by_collector", "{request}", |s| {
        s.rejected_by_collector
    });
    counter("outlast.accepted.items", "{item}", |s| s.items_accepted);
    let p = pipeline.clone();
    meter
        .f64_observable_gauge("outlast.oldest_age")
        .with_unit("s")
        .with_callback(move |o| {
            for (signal, st) in each(&p) {
                let age = st.client.oldest_record_age.map_or(0.0, |d| d.as_secs_f64());
                o.observe(age, std::slice::from_ref(&signal));
            }
        })
        .build();
    let p = pipeline.clone();
    meter
        .u64_observable_counter("outlast.dropped")
        .with_unit("{request}")
        .with_callback(move |o| {
            for (signal, st) in each(&p) {
                for (reason, n) in st.client.dropped.iter() {
                    o.observe(
                        n,
                        &[signal.clone(), KeyValue::new("reason", reason.as_str())],
                    );
                }
            }
        })
        .build();
}
