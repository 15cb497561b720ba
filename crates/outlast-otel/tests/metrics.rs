//! End to end, metrics: the real SDK meter provider and periodic reader, through
//! outlast-otel; data points spooled during an outage survive a restart of the process.

mod support;

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider as _;
use outlast_client::testing::Mode;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_data_points_spooled_in_an_outage_survive_a_restart() {
    let root = tempfile::tempdir().expect("temporary spool root");
    let receiver = receiver_down().await;

    // The first process: records metrics of every kind, its collector is down, it exits.
    {
        let otel = pipeline_to(&receiver, root.path())
            .build()
            .expect("valid settings");
        let meter = otel
            .meter_provider()
            .expect("metrics are on")
            .meter("outlast-otel-test");
        let requests = meter.u64_counter("requests").build();
        let queue = meter.i64_up_down_counter("queue").build();
        let temperature = meter.f64_gauge("temperature").build();
        let latency = meter.f64_histogram("latency").build();
        for route in ["a", "b", "c"] {
            let attrs = [KeyValue::new("route", route)];
            requests.add(3, &attrs);
            queue.add(-1, &attrs);
            temperature.record(21.5, &attrs);
            latency.record(0.25, &attrs);
        }
        let flush = otel.force_flush(Duration::from_secs(3)).await;
        assert!(flush.sdk_flushed && !flush.complete, "{flush:?}");
        let report = otel.shutdown(Duration::from_secs(2)).await;
        assert!(!report.complete, "{report:?}");
        assert!(report.remaining_records() >= 1, "{report:?}");
    }
    assert!(metric_requests(&receiver).is_empty());

    // The next process on the same spool root, the collector back.
    receiver
        .set_mode(Mode::Up)
        .await
        .expect("receiver comes up");
    let otel = pipeline_to(&receiver, root.path())
        .build()
        .expect("valid settings");
    let flush = otel.force_flush(TEST_BOUND).await;
    assert!(flush.complete, "{flush:?}");
    let points = data_points(&receiver);
    for (name, kind) in [
        ("requests", "sum"),
        ("queue", "sum"),
        ("temperature", "gauge"),
        ("latency", "histogram"),
    ] {
        assert!(
            points.get(&(name.to_owned(), kind)).copied().unwrap_or(0) >= 3,
            "{name} ({kind}): {points:?}"
        );
    }
    otel.shutdown(Duration::from_secs(5)).await;
}

/// The signals this build runs: metrics, and traces and logs if their features are on.
const SIGNALS: usize = 1 + cfg!(feature = "trace") as usize + cfg!(feature = "logs") as usize;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_stats_are_published_as_instruments() {
    let root = tempfile::tempdir().expect("temporary spool root");
    let receiver = outlast_client::testing::TestReceiver::start()
        .await
        .expect("receiver starts");
    let otel = pipeline_to(&receiver, root.path())
        .build()
        .expect("valid settings");
    let meter = otel
        .meter_provider()
        .expect("metrics are on")
        .meter("outlast");
    otel.register_instruments(&meter);
    let flush = otel.force_flush(TEST_BOUND).await;
    assert!(flush.complete, "{flush:?}");
    let points = data_points(&receiver);
    for (name, kind, per_signal) in [
        ("outlast.pending.records", "gauge", 1),
        ("outlast.pending.bytes", "gauge", 1),
        ("outlast.oldest_age", "gauge", 1),
        ("outlast.rejected_by_collector", "sum", 1),
        ("outlast.accepted.items", "sum", 1),
        ("outlast.dropped", "sum", outlast_client::DropReason::COUNT),
    ] {
        // One point per signal that runs (and reason): traces, logs, metrics.
        assert_eq!(
            points.get(&(name.to_owned(), kind)).copied().unwrap_or(0),
            SIGNALS * per_signal,
            "{name}: {points:?}"
        );
    }
    otel.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_over_max_record_bytes_are_split_by_data_points_and_a_giant_one_counted_once() {
    let root = tempfile::tempdir().expect("temporary spool root");
    let receiver = outlast_client::testing::TestReceiver::start()
        .await
        .expect("receiver starts");
    let otel = pipeline_to(&receiver, root.path())
        .client(fast_client().max_record_bytes(64 * 1024))
        .build()
        .expect("valid settings");
    let meter = otel
        .meter_provider()
        .expect("metrics are on")
        .meter("outlast-otel-size-test");
    // 500 histogram data points of about 400 bytes each: 200 KB, over the 64 KiB limit.
    let latency = meter.f64_histogram("latency").build();
    for i in 0..500 {
        latency.record(
            0.5,
            &[KeyValue::new(
                "route",
                format!("{i:03}-{}", "r".repeat(300)),
            )],
        );
    }
    // One data point that cannot fit in any request.
    let giant = meter.u64_counter("giant").build();
    giant.add(1, &[KeyValue::new("blob", "g".repeat(100 * 1024))]);

    let flush = otel.force_flush(TEST_BOUND).await;
    assert!(!flush.complete, "a data point was dropped: {flush:?}");
    assert_eq!(flush.dropped_items, 1, "{flush:?}");
    let points = data_points(&receiver);
    assert_eq!(
        points.get(&("latency".to_owned(), "histogram")),
        Some(&500),
        "{points:?}"
    );
    assert_eq!(points.get(&("giant".to_owned(), "sum")), None, "{points:?}");
    assert!(metric_requests(&receiver).len() >= 4);
    let stats = otel.stats().metrics.expect("metrics stats");
    assert_eq!(
        (stats.items_accepted, stats.items_dropped),
        (500, 1),
        "{stats:?}"
    );
    assert_eq!(stats.client.dropped.too_large, 1, "{stats:?}");
    let _ = otel.shutdown(Duration::from_secs(5)).await;
}
