//! What a user watches: per signal, the buffer (records and bytes pending, oldest age), what
//! was dropped and why, what the collector rejected, and how the SDK's calls were answered.

use std::sync::atomic::Ordering;
use std::time::Duration;

use outlast_client::{ClientStats, DropCounts};

use crate::handoff::Counters;

/// The state of one signal's export.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SignalStats {
    /// Requests waiting in the signal's spool.
    pub pending_records: u64,
    /// Bytes of the requests waiting in the spool.
    pub pending_bytes: u64,
    /// Age of the oldest waiting request.
    pub oldest_age: Option<Duration>,
    /// Requests dropped, by reason (a permanent collector rejection is `permanent`).
    pub dropped: DropCounts,
    /// Requests the collector rejected with a permanent status (400, 413, 500...).
    pub rejected_by_collector: u64,
    /// Items (spans, log records, data points) a collector reported rejected in a 2xx
    /// `partial_success` (protobuf responses; also logged, at most once a minute). Such
    /// items are not retried: the collector has decided on them.
    pub partially_rejected_items: u64,
    /// Batches outlast accepted (delivered or spooled) and the items in them.
    pub batches_accepted: u64,
    /// Items in the accepted batches.
    pub items_accepted: u64,
    /// Batches dropped before they were accepted (see `dropped` for the reasons).
    pub batches_dropped: u64,
    /// Items in the dropped batches.
    pub items_dropped: u64,
    /// SDK exporter calls answered `Timeout` while their batch was still under way (it
    /// then ended accepted or dropped, counted above).
    pub calls_timed_out: u64,
    /// Batches handed over and not yet answered by the client.
    pub in_flight: u64,
    /// The client's full statistics.
    pub client: ClientStats,
}

impl SignalStats {
    pub(crate) fn new(client: ClientStats, c: &Counters, in_flight: u64) -> SignalStats {
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        SignalStats {
            pending_records: client.spool_records,
            pending_bytes: client.pending_bytes,
            oldest_age: client.oldest_record_age,
            dropped: client.dropped,
            rejected_by_collector: load(&c.rejected_requests),
            partially_rejected_items: load(&c.partially_rejected_items),
            batches_accepted: load(&c.batches_accepted),
            items_accepted: load(&c.items_accepted),
            batches_dropped: load(&c.batches_dropped),
            items_dropped: load(&c.items_dropped),
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
        s.pending_records
    });
    gauge("outlast.pending.bytes", "By", |s| s.pending_bytes);
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
                let age = st.oldest_age.map_or(0.0, |d| d.as_secs_f64());
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
                for (reason, n) in st.dropped.iter() {
                    o.observe(
                        n,
                        &[signal.clone(), KeyValue::new("reason", reason.as_str())],
                    );
                }
            }
        })
        .build();
}
