//! `outlast replay` of a spool holding gzip bombs (records of a few dozen KiB that decode to
//! 64 MiB each) uses about as much memory as the replay of a spool without them: decoding
//! stops at `max_record_bytes`, and the bombs are counted `too_large`, never sent.
//! The peak is the replaying process's own (VmHWM in /proc), whatever else runs beside it.
//! `outlast replay` decodes up to the `OUTLAST_MAX_RECORD_BYTES` the application used.

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use outlast_client::testing::{Mode, TestReceiver};
use outlast_spool::{Payload, Spool, SpoolConfig};

/// A gzip stream that decodes to `len` zero bytes.
fn bomb(len: usize) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let zeros = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len());
        enc.write_all(&zeros[..n]).expect("in memory");
        left -= n;
    }
    enc.finish().expect("in memory")
}

/// A spool under `dir` holding `bombs` gzip bombs of 64 MiB, then one plain record.
fn spool_with_bombs(dir: &std::path::Path, bombs: usize) {
    let (spool, _) = Spool::open(SpoolConfig::new(dir)).expect("opens");
    let one = bomb(64 << 20);
    for _ in 0..bombs {
        spool
            .append(
                Payload::new(one.clone())
                    .with_content_encoding(outlast_core::ContentEncoding::Gzip),
            )
            .expect("append");
    }
    spool
        .append(Payload::new(&b"the last record"[..]))
        .expect("append");
    spool.close().expect("closes");
}

/// The peak resident set (VmHWM, KiB) of an `outlast replay` of `dir` to `url` that runs
/// for `timeout`, read from /proc while it runs; and its JSON summary.
fn replay_peak_kib(dir: &std::path::Path, url: &str, timeout: &str) -> (u64, serde_json::Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_outlast"))
        .args([
            "replay",
            dir.to_str().expect("utf-8"),
            "--endpoint",
            url,
            "--timeout",
            timeout,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .env_remove("RUST_LOG")
        .spawn()
        .expect("outlast starts");
    let status_path = format!("/proc/{}/status", child.id());
    let start = Instant::now();
    let mut peak = 0;
    loop {
        if let Ok(status) = std::fs::read_to_string(&status_path)
            && let Some(kib) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak = peak.max(kib);
        }
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "replay hangs");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("piped"), &mut out)
        .expect("stdout");
    let json = out
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(serde_json::Value::Null);
    (peak, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_gzip_bombs_costs_at_most_a_few_max_record_bytes_of_memory() {
    let receiver = TestReceiver::start().await.expect("receiver");
    // The last record is refused with 503 until the timeout: the process stays up after
    // the bombs went through, so its peak is read while it runs.
    receiver.set_mode(Mode::Status(503)).await.expect("mode");
    let url = receiver.url();
    let (plain, bombed) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    spool_with_bombs(plain.path(), 0);
    spool_with_bombs(bombed.path(), 8);
    let (p, b) = (plain.path().to_owned(), bombed.path().to_owned());
    let (baseline, bomb_peak, summary) = tokio::task::spawn_blocking(move || {
        let (baseline, _) = replay_peak_kib(&p, &url, "2s");
        let (peak, summary) = replay_peak_kib(&b, &url, "2s");
        (baseline, peak, summary)
    })
    .await
    .expect("runner");
    assert_eq!(summary["dropped"]["too_large"], 8, "{summary}");
    assert_eq!(summary["remaining_records"], 1, "{summary}");
    let max_record_kib = outlast_client::ClientBuilder::DEFAULT_MAX_RECORD_BYTES / 1024;
    eprintln!(
        "peak RSS: {baseline} KiB without bombs, {bomb_peak} KiB with 8 bombs of 64 MiB (max_record_bytes {max_record_kib} KiB)"
    );
    assert!(
        bomb_peak < baseline + 8 * max_record_kib,
        "{bomb_peak} KiB with bombs against {baseline} KiB without"
    );
}

/// Runs `outlast replay` of `dir` to `url` with `OUTLAST_MAX_RECORD_BYTES` set to `limit`
/// (or unset): its JSON summary.
fn replay_with_limit(dir: &std::path::Path, url: &str, limit: Option<&str>) -> serde_json::Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outlast"));
    cmd.args([
        "replay",
        dir.to_str().expect("utf-8"),
        "--endpoint",
        url,
        "--timeout",
        "20s",
    ])
    .stdin(Stdio::null())
    .env_remove("RUST_LOG")
    .env_remove("OUTLAST_MAX_RECORD_BYTES");
    if let Some(limit) = limit {
        cmd.env("OUTLAST_MAX_RECORD_BYTES", limit);
    }
    let out = cmd.output().expect("outlast runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_decodes_up_to_the_applications_max_record_bytes() {
    let receiver = TestReceiver::start().await.expect("receiver");
    let url = receiver.url();
    let make = || {
        let dir = tempfile::tempdir().expect("dir");
        let (spool, _) = Spool::open(SpoolConfig::new(dir.path())).expect("opens");
        spool
            .append(
                Payload::new(bomb(2 << 20))
                    .with_content_encoding(outlast_core::ContentEncoding::Gzip),
            )
            .expect("append");
        spool.close().expect("closes");
        dir
    };
    let (small, default) = (make(), make());
    let (s, d) = (small.path().to_owned(), default.path().to_owned());
    let (limited, unlimited) = tokio::task::spawn_blocking(move || {
        (
            replay_with_limit(&s, &url, Some("1MiB")),
            replay_with_limit(&d, &url, None),
        )
    })
    .await
    .expect("runner");
    assert_eq!(limited["dropped"]["too_large"], 1, "{limited}");
    assert_eq!(limited["delivered"], 0, "{limited}");
    assert_eq!(unlimited["dropped"]["total"], 0, "{unlimited}");
    assert_eq!(unlimited["delivered"], 1, "{unlimited}");
}
