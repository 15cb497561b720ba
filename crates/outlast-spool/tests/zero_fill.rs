//! Durable appends (`FsyncEveryAppend`) write zeros ahead of the active segment's last
//! record, so that a record's fdatasync writes data only: the zeros are never read as
//! records, never counted as damage, and are cut off at rotation, at close and by recovery
//! after a crash or a power loss; a fill that fails costs the record nothing.

mod common;

use std::io::ErrorKind;
use std::path::Path;
use std::sync::Arc;

use common::{body_index, payload, segments, small_config};
use outlast_spool::fault::{CrashKeep, FaultFs, WriteFault};
use outlast_spool::{Durability, Payload, Spool, SpoolConfig, inspect};

fn durable(root: &Path) -> SpoolConfig {
    small_config(root).with_durability(Durability::FsyncEveryAppend)
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).expect("metadata").len()
}

fn drain(spool: &Spool) -> (Vec<u64>, u64) {
    let mut seen = Vec::new();
    let mut corrupt = 0;
    loop {
        let b = spool.read_batch(100, u64::MAX).expect("read");
        corrupt += b.corrupt_skipped;
        if b.records.is_empty() {
            return (seen, corrupt);
        }
        seen.extend(b.records.iter().map(|r| body_index(&r.payload)));
        for r in &b.records {
            spool.ack(r.id).expect("ack");
        }
    }
}

#[test]
fn durable_appends_land_in_zero_filled_room_that_rotation_and_close_cut_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seg_bytes = 16 * 1024;
    let (spool, _) = Spool::open(durable(dir.path())).expect("open");
    for i in 0..3 {
        spool.append(payload(i)).expect("append");
    }
    let active = segments(dir.path());
    assert_eq!(active.len(), 1);
    let stored = spool.stats().bytes;
    assert!(
        stored < seg_bytes / 2,
        "three small records: {stored} bytes"
    );
    assert_eq!(
        file_len(&active[0]),
        seg_bytes,
        "the active segment is filled with zeros up to its size"
    );
    // Seen from outside while it is written, the zeros are neither records nor damage.
    let scan = inspect::scan(dir.path()).expect("scan");
    assert!(scan.is_healthy(), "{scan:?}");
    assert_eq!(scan.lanes[0].segments[0].records, 3);
    assert_eq!(scan.lanes[0].segments[0].torn_tail_bytes, 0);

    // Enough records to rotate twice: every sealed segment keeps its records only.
    let mut i = 3;
    while segments(dir.path()).len() < 3 {
        spool.append(payload(i)).expect("append");
        i += 1;
    }
    let files = segments(dir.path());
    for sealed in &files[..files.len() - 1] {
        assert!(
            file_len(sealed) < seg_bytes,
            "{} cut at rotation",
            sealed.display()
        );
    }
    assert_eq!(file_len(&files[files.len() - 1]), seg_bytes);
    spool.close().expect("close");

    // Closed: no zeros left anywhere, so recovery has nothing to cut.
    let before: Vec<u64> = files.iter().map(|p| file_len(p)).collect();
    assert!(before[before.len() - 1] < seg_bytes, "cut at close");
    let (spool, report) = Spool::open(durable(dir.path())).expect("reopen");
    let after: Vec<u64> = files.iter().map(|p| file_len(p)).collect();
    assert_eq!(before, after);
    assert_eq!(report.torn_tail_bytes_truncated, 0);
    assert_eq!(report.records, i);
    assert_eq!(drain(&spool), ((0..i).collect::<Vec<_>>(), 0));
}

#[test]
fn zero_filled_room_left_by_a_crash_or_a_power_loss_is_cut_without_counting_damage() {
    for keep in [CrashKeep::All, CrashKeep::Nothing] {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = FaultFs::new();
        let (spool, _) =
            Spool::open_with_fs(durable(dir.path()), Arc::new(fs.clone())).expect("open");
        for i in 0..5 {
            let appended = spool.append(payload(i)).expect("append");
            assert!(appended.sync_error.is_none());
        }
        let stored = spool.stats().bytes;
        // Killed (everything written stays) or the power cut (only what was fsynced stays:
        // each record was, and the zeros with the first one).
        fs.crash(keep).expect("crash");
        drop(spool);
        fs.revive();
        let seg = &segments(dir.path())[0];
        assert_eq!(file_len(seg), 16 * 1024, "{keep:?}: the zeros survived");
        assert!(inspect::scan(dir.path()).expect("scan").lanes[0].segments[0].torn_tail_bytes == 0);

        let (spool, report) =
            Spool::open_with_fs(durable(dir.path()), Arc::new(fs.clone())).expect("reopen");
        assert_eq!(report.records, 5, "{keep:?}");
        assert_eq!(report.torn_tail_bytes_truncated, 0, "{keep:?}: not damage");
        assert_eq!(report.corrupt_frames_skipped, 0);
        assert_eq!(report.missing_records, 0);
        assert_eq!(file_len(seg), stored, "{keep:?}: cut to the last record");
        // Appending goes on in the same segment, after the last record.
        spool.append(payload(5)).expect("append after recovery");
        assert_eq!(drain(&spool), ((0..6).collect::<Vec<_>>(), 0), "{keep:?}");
        spool.close().expect("close");
        let (spool, report) = Spool::open(durable(dir.path())).expect("open again");
        assert_eq!(report.missing_records, 0);
        assert_eq!(drain(&spool), (Vec::new(), 0), "{keep:?}: all acknowledged");
    }
}

#[test]
fn a_torn_record_inside_the_zero_filled_room_is_still_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultFs::new();
    let (spool, _) = Spool::open_with_fs(durable(dir.path()), Arc::new(fs.clone())).expect("open");
    for i in 0..4 {
        spool.append(payload(i)).expect("append");
    }
    let stored = spool.stats().bytes;
    fs.crash(CrashKeep::All).expect("crash");
    drop(spool);
    fs.revive();
    // The start of a fifth record, cut short by the crash: non-zero bytes among the zeros.
    let seg = &segments(dir.path())[0];
    let torn = b"OLRC\x01\x00\x00\x00torn";
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::OpenOptions::new()
            .write(true)
            .open(seg)
            .expect("open seg"),
        torn,
        stored,
    )
    .expect("write torn bytes");

    let (spool, report) = Spool::open(durable(dir.path())).expect("reopen");
    assert_eq!(report.records, 4);
    assert_eq!(
        report.torn_tail_bytes_truncated,
        16 * 1024 - stored,
        "the torn bytes and the zeros after them"
    );
    assert_eq!(file_len(seg), stored);
    assert_eq!(drain(&spool), ((0..4).collect::<Vec<_>>(), 0));
}

#[test]
fn a_zero_fill_that_fails_costs_the_durable_append_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultFs::new();
    // 4 MiB segments, so that the segment is filled in steps.
    let config = || {
        durable(dir.path())
            .with_segment_bytes(4 * 1024 * 1024)
            .with_spool_max_bytes(64 * 1024 * 1024)
    };
    let (spool, _) = Spool::open_with_fs(config(), Arc::new(fs.clone())).expect("open");
    // The fault is the fill's: the background thread (it writes the cursor after a
    // rotation and every second) must not take it.
    fs.spare_sync_thread();
    let body = |i: u64| {
        let mut b = format!("record-{i:08}-").into_bytes();
        b.resize(3000, b'y');
        Payload::new(b)
    };
    spool.append(body(0)).expect("first append");
    let seg = segments(dir.path())[0].clone();
    let first_fill = file_len(&seg);
    assert!(
        first_fill >= spool.stats().bytes + 64 * 1024,
        "filled at least 64 KiB ahead: {first_fill}"
    );
    let before = spool.stats().bytes;
    spool.append(body(1)).expect("append");
    let frame = spool.stats().bytes - before;
    // Up to the last record that fits in the room filled so far.
    let mut n = 2;
    while spool.stats().bytes + frame <= first_fill {
        spool.append(body(n)).expect("append");
        n += 1;
    }
    assert_eq!(file_len(&seg), first_fill, "no second fill yet");
    // The next record needs a fill: the disk refuses it.
    fs.fail_write(WriteFault::Fail(ErrorKind::StorageFull));
    let appended = spool
        .append(body(n))
        .expect("the record is taken without its fill");
    assert!(appended.sync_error.is_none(), "and made durable");
    n += 1;
    assert_eq!(
        file_len(&seg),
        spool.stats().bytes,
        "the zeros are gone and the record is at the end of the file"
    );
    // The segment is not filled again; records go on at its end.
    for _ in 0..3 {
        spool.append(body(n)).expect("append without a fill");
        n += 1;
    }
    assert_eq!(file_len(&seg), spool.stats().bytes);
    spool.close().expect("close");

    let (spool, report) = Spool::open(config()).expect("reopen");
    assert_eq!(report.records, n);
    assert_eq!(report.torn_tail_bytes_truncated, 0);
    let mut seen = 0;
    loop {
        let b = spool.read_batch(1000, u64::MAX).expect("read");
        assert_eq!(b.corrupt_skipped, 0);
        if b.records.is_empty() {
            break;
        }
        for r in &b.records {
            assert!(
                r.payload
                    .bytes()
                    .starts_with(format!("record-{seen:08}-").as_bytes())
            );
            seen += 1;
        }
    }
    assert_eq!(seen, n);
}
