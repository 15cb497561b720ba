//! `outlast demo` and `outlast gen` run as a real process, exporting over loopback.

mod common;

use std::time::Duration;

use common::outlast;
use outlast_client::testing::TestReceiver;

#[test]
fn demo_survives_an_outage_without_losing_anything() {
    let run = outlast(
        &["demo", "--count", "200", "--outage", "3s"],
        Duration::from_secs(40),
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    let v = run.json();
    assert_eq!(v["sent"], 200, "{v}");
    assert_eq!(v["lost"], 0, "{v}");
    assert_eq!(v["dropped"], 0, "{v}");
    assert_eq!(v["delivered"], 200, "{v}");
    assert!(
        v["spooled"].as_u64().is_some_and(|s| s > 0),
        "the outage spooled nothing: {v}"
    );
    assert!(v["duplicates"].is_u64(), "{v}");
    assert!(v["elapsed_s"].is_f64(), "{v}");
    // The summary line has exactly these fields, in this order.
    let line = run.last_stdout_line();
    let fields = [
        "sent",
        "delivered",
        "spooled",
        "dropped",
        "lost",
        "duplicates",
        "elapsed_s",
    ];
    let positions: Vec<usize> = fields
        .iter()
        .map(|f| {
            line.find(&format!("\"{f}\":"))
                .unwrap_or_else(|| panic!("{f} missing: {line}"))
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{line}");
    assert_eq!(v.as_object().map(|o| o.len()), Some(fields.len()), "{line}");
    assert!(
        run.stderr.contains("currently retrying"),
        "the rate-limited warning is not shown: {run:?}"
    );
    assert!(run.stderr.contains("receiver DOWN"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gen_reports_counts_that_add_up_and_latency() {
    let receiver = TestReceiver::start().await.expect("receiver starts");
    let url = receiver.url();
    let run = tokio::task::spawn_blocking(move || {
        outlast(
            &[
                "gen",
                "--endpoint",
                &url,
                "--count",
                "300",
                "--size",
                "512",
                "--concurrency",
                "4",
                "--flush-timeout",
                "5s",
            ],
            Duration::from_secs(40),
        )
    })
    .await
    .expect("the runner thread ends");
    assert_eq!(run.code, Some(0), "{run:?}");
    let v = run.json();
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} missing: {v}"));
    assert_eq!(n("sent"), 300, "{v}");
    let dropped = v["dropped"]["total"].as_u64().expect("dropped.total");
    assert_eq!(n("delivered") + n("spooled") + dropped, 300, "{v}");
    let lat = &v["latency_us"];
    let (p50, p99, max) = (
        lat["p50"].as_u64().expect("p50"),
        lat["p99"].as_u64().expect("p99"),
        lat["max"].as_u64().expect("max"),
    );
    assert!(p50 <= p99 && p99 <= max && max > 0, "{v}");
    assert!(v["peak_rss_bytes"].as_u64().is_some_and(|b| b > 0), "{v}");
    assert_eq!(v["flush"]["complete"], true, "{v}");
    assert_eq!(v["flush"]["remaining_records"], 0, "{v}");
    assert_eq!(
        receiver.unique_keys().len(),
        300,
        "the receiver missed keys"
    );
}

#[test]
fn gen_to_an_unreachable_endpoint_keeps_its_spool_says_so_and_exits_1() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("http://127.0.0.1:{port}/v1/logs");
    let run = outlast(
        &[
            "gen",
            "--endpoint",
            &url,
            "--count",
            "20",
            "--size",
            "64",
            "--flush-timeout",
            "1s",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("were not delivered; they are kept in"),
        "{run:?}"
    );
    let v = run.json();
    assert_eq!(v["spool_kept"], true, "{v}");
    let dir = std::path::PathBuf::from(v["spool_dir"].as_str().expect("spool_dir"));
    let kept = outlast_spool::inspect::scan(&dir).expect("the spool is still there");
    assert_eq!(kept.unacked_records(), 20, "{v}");
    std::fs::remove_dir_all(&dir).expect("clean up");
}
