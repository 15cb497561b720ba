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
    let expected = format!("currently retrying 1 failed export(s) ({bytes} bytes); spool ");
    assert!(
        logs.lines()
            .iter()
            .any(|l| l.contains(&expected) && l.contains("% full, not filling")),
        "no line contains {expected:?}…\"% full, not filling\" (3 bytes in five minutes is no fill rate): {:#?}",
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

#[tokio::test(start_paused = true)]
async fn the_retry_warning_says_how_full_the_spool_is_and_when_it_will_be_full() {
    let (logs, _guard) = capture();
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    exporter.set_mode(Outcome::Fail);
    let c = common::builder(dir.path())
        .max_backoff(Duration::from_secs(4))
        .build(exporter.clone())
        .expect("valid");
    // Spilling 10 kB a second for three minutes.
    let record = "x".repeat(10_000);
    for _ in 0..180 {
        assert!(
            c.export(payload(&record))
                .await
                .expect("spooled")
                .is_spooled()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let s = c.stats();
    let full_in = s.spool_full_in.expect("filling");
    let last = logs
        .lines()
        .into_iter()
        .rfind(|l| l.contains("currently retrying"))
        .expect("a retry warning");
    assert!(
        last.contains("% full, full in about") && last.contains("at the recent spill rate"),
        "{last}"
    );
    assert!(last.contains("spool_full_in_secs="), "{last}");
    assert!(full_in > Duration::ZERO);

    // Once the spill stops, the average fades (by 1/e a minute): two quiet minutes later it
    // still fills, slower; an hour later it is not filling at a measurable rate any more.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let last = logs
        .lines()
        .into_iter()
        .rfind(|l| l.contains("currently retrying"))
        .expect("a retry warning");
    assert!(last.contains("% full, full in about"), "{last}");
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let last = logs
        .lines()
        .into_iter()
        .rfind(|l| l.contains("currently retrying"))
        .expect("a retry warning");
    assert!(last.contains("% full, not filling"), "{last}");
    assert_eq!(c.stats().spool_full_in, None);
}

#[tokio::test(start_paused = true)]
async fn the_recovery_line_gives_the_outage_the_backlog_and_then_the_drain_rate() {
    let (captured, _guard) = capture();
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    let c = common::builder(dir.path())
        .replay_bytes_per_sec(Some(1000))
        .build(exporter.clone())
        .expect("valid");
    exporter.set_mode(Outcome::Fail);
    for i in 0..40 {
        let _ = c
            .export(payload(&format!("{i:-<100}")))
            .await
            .expect("spooled");
    }
    // An outage of about two minutes.
    exporter.set_mode(Outcome::Fail);
    tokio::time::sleep(Duration::from_secs(120)).await;
    exporter.set_mode(Outcome::Accept);
    let _ = c.force_flush(Duration::from_secs(2)).await;
    let lines = captured.lines();
    let back = lines
        .iter()
        .find(|l| l.contains("backend reachable again after"))
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert!(back.contains("; backlog "), "{back}");
    assert!(back.contains("after 2m"), "{back}");
    assert!(back.contains(" (oldest "), "{back}");
    let rate = lines
        .iter()
        .find(|l| l.contains("draining at"))
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert!(rate.contains("B/s, about "), "{rate}");
    assert!(rate.contains(" s left"), "{rate}");
}
