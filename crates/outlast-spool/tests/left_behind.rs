//! Once every record is delivered, no segment holding only delivered records stays on disk:
//! the sealed ones and the active one go, and the empty spool still opens, appends and reads.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{payload, small_config};
use outlast_spool::fault::{CrashKeep, FaultFs};
use outlast_spool::{Durability, Payload, Spool, SpoolConfig};

/// Total size of every file under `root`.
fn dir_bytes(root: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let e = e.expect("entry");
            let meta = e.metadata().expect("metadata");
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

/// Segment files of lane 0.
fn segment_count(root: &Path) -> usize {
    std::fs::read_dir(root.join("lane-0"))
        .expect("lane dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "seg"))
        })
        .count()
}

/// 16 KiB of bytes that do not compress (xorshift), tagged with `i`.
fn incompressible(i: u64) -> Payload {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut body = format!("record-{i:08}-").into_bytes();
    while body.len() < 16 * 1024 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        body.extend_from_slice(&x.to_le_bytes());
    }
    Payload::new(body)
}

/// The number `i` a payload was made from (its body starts `record-{i:08}-`).
fn body_index(p: &Payload) -> u64 {
    let head = p.bytes().get(7..15).expect("tagged payload");
    std::str::from_utf8(head)
        .expect("utf8 tag")
        .parse()
        .expect("index in payload")
}

/// Reads and acknowledges everything; returns the indexes read and the records reported
/// lost on the way.
fn drain(spool: &Spool) -> (Vec<u64>, u64) {
    let mut seen = Vec::new();
    let mut lost = 0;
    loop {
        let b = spool.read_batch(64, u64::MAX).expect("read");
        lost += b.corrupt_skipped;
        let Some(last) = b.records.last() else { break };
        seen.extend(b.records.iter().map(|r| body_index(&r.payload)));
        spool.ack(last.id).expect("ack");
    }
    (seen, lost)
}

#[test]
fn a_delivered_40_mib_backlog_leaves_at_most_64_kib_in_the_spool_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = SpoolConfig::new(dir.path())
        .with_segment_bytes(1024 * 1024)
        .with_max_record_bytes(64 * 1024)
        .with_spool_max_bytes(64 * 1024 * 1024)
        .with_durability(Durability::OsWrite {
            fsync_interval: Duration::from_secs(3600),
        });
    let (spool, _) = Spool::open(config).expect("open");
    const N: u64 = 2560; // 2560 x 16 KiB = 40 MiB
    for i in 0..N {
        spool.append(incompressible(i)).expect("append");
    }
    assert!(
        dir_bytes(dir.path()) >= 40 * 1024 * 1024,
        "the backlog is on disk"
    );
    assert!(segment_count(dir.path()) >= 40, "several segments");
    let (seen, lost) = drain(&spool);
    assert_eq!(seen, (0..N).collect::<Vec<_>>());
    assert_eq!(lost, 0);
    // Deletion may be queued to the background thread: sync finishes it.
    spool.sync().expect("sync");
    let left = dir_bytes(dir.path());
    assert!(left <= 64 * 1024, "{left} bytes left behind");
    assert_eq!(segment_count(dir.path()), 0, "the active segment went too");
    assert_eq!(spool.stats().records, 0);

    // Appends and reads go on, numbered after the delivered records.
    let a = spool.append(payload(7)).expect("append after drain");
    assert_eq!(a.id.seq, N + 1);
    assert_eq!(drain(&spool), (vec![7], 0));
    spool.close().expect("close");
    assert!(dir_bytes(dir.path()) <= 64 * 1024);
}

#[test]
fn a_drained_spool_survives_a_power_loss_with_nothing_lost_or_counted_missing() {
    for keep in [CrashKeep::Nothing, CrashKeep::All, CrashKeep::Prefix(7)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = FaultFs::new();
        let config = small_config(dir.path())
            .with_max_record_bytes(64 * 1024)
            .with_segment_bytes(256 * 1024);
        let open = || Spool::open_with_fs(config.clone(), Arc::new(fs.clone()));
        let (spool, _) = open().expect("open");
        // Two full segments and an active one of 10 records (160 KiB).
        for i in 0..40 {
            spool.append(incompressible(i)).expect("append");
        }
        spool.sync().expect("sync");
        assert_eq!(segment_count(dir.path()), 3);
        assert_eq!(drain(&spool), ((0..40).collect::<Vec<_>>(), 0));
        spool.sync().expect("sync the deletions");
        assert_eq!(
            segment_count(dir.path()),
            0,
            "{keep:?}: nothing left behind"
        );
        // Records appended after the drain, durable, then the power goes.
        for i in 2000..2010 {
            spool.append(payload(i)).expect("append");
        }
        spool.sync().expect("sync");
        fs.crash(keep).expect("crash");
        drop(spool);
        fs.revive();

        let (spool, report) = open().expect("reopen");
        assert_eq!(report.missing_records, 0, "{keep:?}");
        assert_eq!(report.corrupt_frames_skipped, 0, "{keep:?}");
        assert_eq!(report.records, 10, "{keep:?}");
        assert_eq!(drain(&spool), ((2000..2010).collect::<Vec<_>>(), 0));
        spool.append(payload(3000)).expect("append after reopen");
        assert_eq!(drain(&spool), (vec![3000], 0));
        assert_eq!(spool.stats().missing_records, 0, "{keep:?}");
        spool.close().expect("close");
    }
}
