//! Measures how long a spooled backlog takes to drain once the backend is back, for several
//! backlog sizes, `max_in_flight` values and backend latencies (docs/recovery-time.md).
//!
//! For each scenario: a loopback `TestReceiver` is switched down, N payloads are exported
//! (they go to the spool), the receiver is switched up (or to `Mode::Slow(latency)` to
//! emulate a distant backend), and `force_flush` is timed until the spool is empty. The
//! receiver's count of distinct keys checks that every payload arrived.
//!
//! ```sh
//! cargo run --release -p outlast-client --example recovery_time            # full matrix
//! cargo run --release -p outlast-client --example recovery_time -- --quick # a few seconds
//! ```

use std::time::{Duration, Instant};

use outlast_client::http::HttpExporter;
use outlast_client::testing::{Mode, Recording, TestReceiver};
use outlast_client::{Client, Delivery, Payload};

/// Bytes per payload: a small OTLP batch.
const PAYLOAD_BYTES: usize = 1024;

/// Longest a single flush may take before the scenario is reported as incomplete.
const FLUSH_LIMIT: Duration = Duration::from_secs(300);

/// One measurement.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    records: usize,
    max_in_flight: usize,
    latency: Duration,
    batch_size: usize,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quick = std::env::args().any(|a| a == "--quick");
    let scenarios = if quick { quick_matrix() } else { full_matrix() };

    println!(
        "{:>8} {:>9} {:>10} {:>6} {:>9} {:>11} {:>8} {:>10}",
        "records", "in_flight", "latency", "batch", "seconds", "records/s", "MB/s", "complete"
    );
    for s in scenarios {
        let r = run(s).await?;
        println!(
            "{:>8} {:>9} {:>8}ms {:>6} {:>9.3} {:>11.0} {:>8.2} {:>10}",
            s.records,
            s.max_in_flight,
            s.latency.as_millis(),
            s.batch_size,
            r.seconds,
            s.records as f64 / r.seconds,
            (s.records * PAYLOAD_BYTES) as f64 / r.seconds / 1e6,
            if r.complete { "yes" } else { "NO" },
        );
    }
    Ok(())
}

fn quick_matrix() -> Vec<Scenario> {
    let mut v = Vec::new();
    for k in [1, 4] {
        v.push(scenario(2_000, k, 0, 100));
    }
    v.push(scenario(500, 4, 5, 100));
    v
}

fn full_matrix() -> Vec<Scenario> {
    let mut v = Vec::new();
    // A loopback backend: the drain is bounded by the client, the spool and the receiver.
    for n in [1_000, 10_000, 50_000] {
        for k in [1, 4, 8] {
            v.push(scenario(n, k, 0, 100));
        }
    }
    // A backend answering in 5 ms / 20 ms: the drain is bounded by round trips.
    for k in [1, 4, 8] {
        v.push(scenario(2_000, k, 5, 100));
    }
    v.push(scenario(2_000, 8, 5, 500));
    for k in [4, 16] {
        v.push(scenario(2_000, k, 20, 100));
    }
    v
}

fn scenario(records: usize, max_in_flight: usize, latency_ms: u64, batch_size: usize) -> Scenario {
    Scenario {
        records,
        max_in_flight,
        latency: Duration::from_millis(latency_ms),
        batch_size,
    }
}

struct Outcome {
    seconds: f64,
    complete: bool,
}

async fn run(s: Scenario) -> Result<Outcome, Box<dyn std::error::Error>> {
    let receiver = TestReceiver::builder()
        .recording(Recording::KeysAndSizes)
        .mode(Mode::Down)
        .start()
        .await?;
    let dir = tempfile::tempdir()?;
    let exporter = HttpExporter::builder(receiver.url())
        .max_in_flight(s.max_in_flight)
        .build()?;
    let client = Client::builder()
        .spool_dir(dir.path())
        .max_in_flight(s.max_in_flight)
        .batch_size(s.batch_size)
        // Only the first export tries the network; a short quick retry saves a second.
        .immediate_retry_delay(Duration::from_millis(10))
        .build(exporter)?;

    let body = vec![b'x'; PAYLOAD_BYTES];
    for i in 0..s.records {
        let payload = Payload::new(body.clone()).with_key(i.to_string());
        match client.export(payload).await {
            Ok(Delivery::Spooled) => {}
            Ok(Delivery::Delivered) => return Err("delivered while the receiver was down".into()),
            Err(e) => return Err(format!("payload {i} dropped: {e}").into()),
        }
    }

    receiver.set_mode(backend_mode(s.latency)).await?;
    let start = Instant::now();
    let report = client.force_flush(FLUSH_LIMIT).await;
    let seconds = start.elapsed().as_secs_f64();

    let arrived = receiver.unique_keys().len();
    let complete = report.complete && arrived == s.records;
    let _report = client.shutdown(Duration::from_secs(5)).await?;
    receiver.shutdown().await;
    Ok(Outcome { seconds, complete })
}

fn backend_mode(latency: Duration) -> Mode {
    if latency.is_zero() {
        Mode::Up
    } else {
        Mode::Slow(latency)
    }
}
