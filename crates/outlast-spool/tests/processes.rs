//! Real processes: a child appending at full speed is SIGKILLed and nothing it reported as
//! appended is lost; a child acknowledging record by record is SIGKILLed and exactly the
//! records it had not acknowledged come back; lanes are locked per process and a dead
//! process's lane is adopted.
//!
//! The children are this test binary re-executed with one test selected and an environment
//! variable telling it to act as a child.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use outlast_spool::{Payload, Spool, SpoolConfig};

const CHILD_ENV: &str = "OUTLAST_SPOOL_TEST_CHILD";
const ROOT_ENV: &str = "OUTLAST_SPOOL_TEST_ROOT";
const TAG_ENV: &str = "OUTLAST_SPOOL_TEST_TAG";
/// Records the acking child appends: a few 256 KiB segments' worth.
const ACK_CHILD_RECORDS: u64 = 3000;
/// Records it then acknowledges, one `ack` call each, before it is killed.
const ACK_CHILD_ACKED: u64 = 2001;

fn config(root: &Path) -> SpoolConfig {
    // Default durability (write(2) per append): must survive kill -9 with zero loss.
    SpoolConfig::new(root)
        .with_segment_bytes(256 * 1024)
        .with_max_record_bytes(64 * 1024)
}

fn spawn_child(test: &str, mode: &str, root: &Path, tag: &str) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, mode)
        .env(ROOT_ENV, root)
        .env(TAG_ENV, tag)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child")
}

/// Runs the child role if this process is a child; returns whether it was.
fn child_role() -> bool {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return false;
    };
    let root = std::env::var(ROOT_ENV).expect("root");
    let tag = std::env::var(TAG_ENV).expect("tag");
    let (spool, _) = Spool::open(config(Path::new(&root))).expect("child open");
    let mut out = std::io::stdout().lock();
    match mode.as_str() {
        "append" => {
            for i in 0u64.. {
                let body = format!("{tag}-{i}-{}", "p".repeat((i % 300) as usize));
                let a = spool
                    .append(Payload::new(body.into_bytes()))
                    .expect("child append");
                writeln!(out, "@@ {tag}-{i} {}", a.id.seq).expect("stdout");
                out.flush().expect("flush");
            }
        }
        "ack" => {
            for i in 0..ACK_CHILD_RECORDS {
                let body = format!("{tag}-{i}-{}", "a".repeat(200));
                spool
                    .append(Payload::new(body.into_bytes()))
                    .expect("child append");
            }
            let mut acked = 0;
            while acked < ACK_CHILD_ACKED {
                let b = spool.read_batch(100, u64::MAX).expect("child read");
                for r in &b.records {
                    if acked < ACK_CHILD_ACKED {
                        spool.ack(r.id).expect("child ack");
                        acked += 1;
                    }
                }
            }
            writeln!(out, "@@ ready {}", spool.lane()).expect("stdout");
            out.flush().expect("flush");
            std::thread::sleep(Duration::from_secs(60));
        }
        "hold" => {
            for i in 0..5 {
                spool
                    .append(Payload::new(format!("{tag}-{i}").into_bytes()))
                    .expect("append");
            }
            writeln!(out, "@@ ready {}", spool.lane()).expect("stdout");
            out.flush().expect("flush");
            std::thread::sleep(Duration::from_secs(60));
        }
        _ => {}
    }
    std::process::exit(0);
}

#[test]
fn sigkilled_appender_loses_nothing_it_reported_appended() {
    if child_role() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut total_reported = 0usize;
    for round in 0..20 {
        let tag = format!("r{round}");
        let mut child = spawn_child(
            "sigkilled_appender_loses_nothing_it_reported_appended",
            "append",
            dir.path(),
            &tag,
        );
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest prints its own text too (without a newline before ours): ours
                // is tagged.
                let Some(at) = line.find("@@ ") else { continue };
                if tx.send(line[at + 3..].to_owned()).is_err() {
                    break;
                }
            }
        });
        // Wait until it has started appending, then kill it at a random moment.
        let first = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("child started appending");
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(5 + seed % 60));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        reader.join().expect("reader thread");
        let mut reported: Vec<String> = vec![first];
        reported.extend(rx.try_iter());
        total_reported += reported.len();

        let (spool, report) = Spool::open(config(dir.path())).expect("reopen after kill");
        assert_eq!(report.corrupt_frames_skipped, 0, "round {round}");
        let mut delivered = std::collections::HashMap::new();
        loop {
            let b = spool.read_batch(1000, u64::MAX).expect("read");
            let Some(last) = b.records.last().map(|r| r.id) else {
                break;
            };
            for r in &b.records {
                let s = String::from_utf8(r.payload.bytes().to_vec()).expect("utf8");
                let mut parts = s.splitn(3, '-');
                let key = format!(
                    "{}-{}",
                    parts.next().unwrap_or(""),
                    parts.next().unwrap_or("")
                );
                let pad = parts.next().unwrap_or("");
                let i: u64 = key
                    .split('-')
                    .nth(1)
                    .and_then(|x| x.parse().ok())
                    .expect("index");
                assert_eq!(pad.len() as u64, i % 300, "payload intact");
                delivered.insert(key, r.id.seq);
            }
            spool.ack(last).expect("ack");
        }
        for line in &reported {
            let (key, seq) = line.split_once(' ').expect("key seq");
            let seq: u64 = seq.parse().expect("seq");
            assert_eq!(
                delivered.get(key),
                Some(&seq),
                "round {round}: {key} reported appended but lost"
            );
        }
        spool.close().expect("close");
    }
    assert!(total_reported > 20, "children appended something");
}

fn wait_ready(child: &mut Child) -> u32 {
    let stdout = child.stdout.as_mut().expect("stdout");
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    while !line.contains("@@ ") {
        line.clear();
        assert!(
            reader.read_line(&mut line).expect("ready line") > 0,
            "child ended early"
        );
    }
    line.trim()
        .split("@@ ready ")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("ready <lane>")
}

#[test]
fn live_lanes_are_not_shared_and_dead_ones_are_adopted_and_drained() {
    if child_role() {
        return;
    }
    let name = "live_lanes_are_not_shared_and_dead_ones_are_adopted_and_drained";
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c0 = spawn_child(name, "hold", dir.path(), "a");
    assert_eq!(wait_ready(&mut c0), 0);
    let mut c1 = spawn_child(name, "hold", dir.path(), "b");
    assert_eq!(wait_ready(&mut c1), 1);

    let (p, report) = Spool::open(config(dir.path())).expect("open beside live children");
    assert_eq!(p.lane(), 2);
    assert!(
        report.adopted_lanes.is_empty(),
        "live lanes are never adopted"
    );
    let scan = outlast_spool::inspect::scan(dir.path()).expect("scan");
    assert_eq!(scan.lanes[0].lock, outlast_spool::inspect::LockState::Held);
    p.close().expect("close");

    for c in [&mut c0, &mut c1] {
        c.kill().expect("SIGKILL");
        c.wait().expect("reap");
    }
    let (q, report) = Spool::open(config(dir.path())).expect("open after deaths");
    assert_eq!(q.lane(), 0);
    assert_eq!(report.adopted_lanes, vec![1]);
    let b = q.read_batch(100, u64::MAX).expect("read");
    let got: Vec<String> = b
        .records
        .iter()
        .map(|r| String::from_utf8(r.payload.bytes().to_vec()).expect("utf8"))
        .collect();
    let expected: Vec<String> = (0..5)
        .map(|i| format!("b-{i}"))
        .chain((0..5).map(|i| format!("a-{i}")))
        .collect();
    assert_eq!(got, expected, "adopted lane first, then the own lane");
    assert_eq!(b.records[0].id.lane, 1);
    q.ack(b.records[4].id).expect("ack adopted lane");
    assert!(
        !dir.path().join("lane-1").exists(),
        "drained adopted lane removed"
    );
    assert_eq!(q.stats().lanes, 1);
}

#[test]
fn sigkilled_acker_gets_exactly_its_unacknowledged_records_again() {
    if child_role() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = spawn_child(
        "sigkilled_acker_gets_exactly_its_unacknowledged_records_again",
        "ack",
        dir.path(),
        "k",
    );
    let lane = wait_ready(&mut child);
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");

    let (spool, report) = Spool::open(config(dir.path())).expect("reopen after kill");
    assert_eq!(report.adopted_lanes, Vec::<u32>::new());
    assert_eq!(report.lane, lane, "the dead child's lane is free again");
    assert_eq!(report.damaged_cursors, 0);
    let mut seqs = Vec::new();
    loop {
        let b = spool.read_batch(1000, u64::MAX).expect("read");
        if b.records.is_empty() {
            break;
        }
        for r in &b.records {
            let s = String::from_utf8(r.payload.bytes().to_vec()).expect("utf8");
            let i: u64 = s
                .split('-')
                .nth(1)
                .and_then(|x| x.parse().ok())
                .expect("index");
            assert_eq!(r.id.seq, i + 1, "record {i} has its sequence number");
            seqs.push(r.id.seq);
        }
    }
    let want: Vec<u64> = (ACK_CHILD_ACKED + 1..=ACK_CHILD_RECORDS).collect();
    assert_eq!(
        seqs, want,
        "exactly the records not acknowledged before the kill are delivered again"
    );
    spool.close().expect("close");
}
