//! `outlast demo --otel` run as a real process: spans through the OpenTelemetry SDK and
//! outlast-otel, across an outage and a restart, counted by span id at the collector.

mod common;

use std::time::Duration;

use common::outlast;

#[test]
fn otel_demo_loses_no_span_across_an_outage_and_a_restart() {
    let run = outlast(
        &[
            "demo", "--otel", "--count", "600", "--rate", "300", "--outage", "1s",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    let v = run.json();
    assert_eq!(v["spans_emitted"], 600, "{v}");
    assert_eq!(v["spans_received"], 600, "{v}");
    assert_eq!(v["lost"], 0, "{v}");
    assert!(v["duplicates"].is_u64(), "{v}");
    assert!(v["elapsed_s"].is_f64(), "{v}");
    // The restart happened mid-outage, with spans waiting on disk for the next pipeline.
    assert!(
        v["left_on_disk_at_restart"].as_u64().is_some_and(|n| n > 0),
        "nothing was left on disk at the restart: {v}"
    );
    assert!(run.stderr.contains("collector DOWN"), "{run:?}");
    assert!(run.stderr.contains("SHUT DOWN mid-outage"), "{run:?}");
    assert!(run.stderr.contains("collector UP"), "{run:?}");
}
