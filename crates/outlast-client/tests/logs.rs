//! The client's log messages: rate-limited retry warnings in the documented form, one
//! warning for an unusable spool, rate-limited drop errors.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{client, payload, spool_dir};
use outlast_client::testing::{MemoryExporter, Outcome};
use tracing_subscriber::fmt::MakeWriter;

/// Collects formatted log lines in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().expect("log buffer").clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn count(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    (captured, guard)
}

#[tokio::test(start_paused = true)]
async fn retry_warnings_come_at_most_once_a_minute_in_the_documented_form() {
    let (logs, _guard) = capture();
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    exporter.set_mode(Outcome::Fail);
    let c = common::builder(dir.path())
        .max_backoff(Duration::from_secs(4))
        .build(exporter.clone())
        .expect("valid");
    assert!(
        c.export(payload("abc"))
            .await
            .expect("spooled")
            .is_spooled()
    );
    // Five virtual minutes of failures every 4 s: ~75 failed attempts.
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert!(c.stats().replay_failures >= 60);
    let warnings = logs.count("currently retrying");
    assert!((5..=6).contains(&warnings), "{warnings} warnings");
    let bytes = c.stats().pending_bytes;
    assert!(
        bytes >= 3,
        "the pending record's framed size, {bytes}, covers its payload"
    );
    let expected = format!("currently retrying 1 failed export(s) ({bytes} bytes)");
    assert!(
        logs.lines().iter().any(|l| l.contains(&expected)),
        "no line contains {expected:?}: {:#?}",
        logs.lines()
    );
    // Going offline is an info-level state change, logged once.
    assert_eq!(logs.count("backend unreachable"), 1);
}

#[tokio::test(start_paused = true)]
async fn an_unusable_spool_is_warned_about_once_and_drops_are_rate_limited() {
    let (logs, _guard) = capture();
    let dir = spool_dir();
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").expect("write");
    let exporter = MemoryExporter::new();
    exporter.set_mode(Outcome::Reject);
    let c = client(&file, &exporter);
    for _ in 0..20 {
        let _ = c.export(payload("p")).await;
    }
    assert_eq!(c.stats().dropped.permanent, 20);
    assert_eq!(logs.count("spool unavailable"), 1);
    let drop_lines: Vec<String> = logs
        .lines()
        .into_iter()
        .filter(|l| l.contains("ERROR") && l.contains("dropped"))
        .collect();
    assert_eq!(drop_lines.len(), 1, "{drop_lines:#?}");
    // A minute later the next drop is logged with the count since the last message.
    tokio::time::sleep(Duration::from_secs(61)).await;
    let _ = c.export(payload("p")).await;
    let last = logs
        .lines()
        .into_iter()
        .rfind(|l| l.contains("ERROR") && l.contains("dropped"))
        .expect("a second drop message");
    assert!(last.contains("dropped 20 payload(s)"), "{last}");
}
