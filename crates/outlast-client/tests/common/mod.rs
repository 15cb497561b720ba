//! Helpers shared by the client's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::time::Duration;

use outlast_client::testing::MemoryExporter;
use outlast_client::{Client, ClientBuilder, Payload};

/// A builder for a client on `dir` without jitter, so delays are exact.
pub fn builder(dir: &Path) -> ClientBuilder {
    Client::builder().spool_dir(dir).jitter(0.0)
}

/// A client on `dir` exporting to `exporter`, without jitter.
pub fn client(dir: &Path, exporter: &MemoryExporter) -> Client {
    builder(dir)
        .build(exporter.clone())
        .expect("valid configuration")
}

/// A payload whose bytes are `text`.
pub fn payload(text: &str) -> Payload {
    Payload::new(text.as_bytes().to_vec())
}

/// The payloads' bytes as strings.
pub fn texts(e: &MemoryExporter) -> Vec<String> {
    e.received_bytes()
        .into_iter()
        .map(|b| String::from_utf8(b).expect("test payloads are text"))
        .collect()
}

/// A temporary directory for one test's spool.
pub fn spool_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("create a temporary directory")
}

/// Whether `d` is within a few milliseconds above `expected` (Tokio's timer has millisecond
/// resolution, so each sleep may end up to 1 ms late).
pub fn about(d: Duration, expected: Duration) -> bool {
    d >= expected && d <= expected + Duration::from_millis(20)
}

/// Lets spawned tasks run without advancing the (paused) clock.
pub async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}
