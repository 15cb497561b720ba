//! The pipeline's stats as observable OpenTelemetry instruments (feature `metrics`), read from
//! each signal's hand-off at every collection.

use std::sync::Arc;

use crate::handoff::Handoff;
use crate::stats::SignalStats;

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
pub(crate) fn register(handoffs: Vec<Arc<Handoff>>, meter: &opentelemetry::metrics::Meter) {
    use opentelemetry::KeyValue;

    /// Every signal's stats with its `signal` attribute.
    type Handoffs = Arc<Vec<Arc<Handoff>>>;
    fn each(handoffs: &Handoffs) -> Vec<(KeyValue, SignalStats)> {
        handoffs
            .iter()
            .map(|h| (KeyValue::new("signal", h.signal.name()), h.stats()))
            .collect()
    }
    let pipeline: Handoffs = Arc::new(handoffs);
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
