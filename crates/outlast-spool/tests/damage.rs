//! Recovery from damaged files, injected I/O faults, unsafe roots and the documented format
//! example.

mod common;

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{body_index, payload, segments, small_config};
use outlast_spool::fault::{CrashKeep, FaultFs, WriteFault};
use outlast_spool::testing::{CursorSlot, CursorState, decode_cursor_slot, encode_cursor};
use outlast_spool::{AppendErrorKind, Durability, RecordId, Spool, SpoolError, inspect};

fn fill(root: &Path, n: u64) -> PathBuf {
    let (spool, _) = Spool::open(small_config(root)).expect("open");
    for i in 0..n {
        spool.append(payload(i)).expect("append");
    }
    spool.close().expect("close");
    segments(root)[0].clone()
}

/// Fills a spool with 50 records, then flips a bit inside the payload of record 10.
fn fill_with_a_flipped_bit_in_record_10(root: &Path) {
    let seg = fill(root, 50);
    let mut bytes = std::fs::read(&seg).expect("read seg");
    let pos = find(&bytes, b"record-00000010") + 3;
    bytes[pos] ^= 0x10;
    std::fs::write(&seg, &bytes).expect("write seg");
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
        for r in &b.records {
            seen.push(body_index(&r.payload));
        }
    }
}

#[test]
fn reader_skips_record_with_flipped_bit_in_the_middle_and_delivers_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    fill_with_a_flipped_bit_in_record_10(dir.path());
    let before = inspect::scan(dir.path()).expect("scan");
    assert!(!before.is_healthy());
    assert_eq!(before.lanes[0].segments[0].corrupt_frames, 1);

    let (spool, report) = Spool::open(small_config(dir.path())).expect("open");
    assert_eq!(report.corrupt_frames_skipped, 1);
    assert_eq!(report.records, 49);
    let (seen, _) = drain(&spool);
    let expected: Vec<u64> = (0..50).filter(|&i| i != 10).collect();
    assert_eq!(seen, expected);
}

#[test]
fn damage_found_at_open_is_counted_once_whether_read_past_or_rewound_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    fill_with_a_flipped_bit_in_record_10(dir.path());
    let (spool, report) = Spool::open(small_config(dir.path())).expect("open");
    assert_eq!(report.corrupt_frames_skipped, 1, "counted by recovery");
    // Read past the damage without acknowledging, as a failed delivery attempt does...
    let first = spool.read_batch(20, u64::MAX).expect("read");
    assert_eq!(first.records.len(), 20);
    assert_eq!(
        first.corrupt_skipped, 0,
        "recovery counted this damage; the reader meeting it is not a second loss"
    );
    // ...then rewind and read everything again: the same damage is not counted again.
    spool.rewind();
    let (seen, corrupt) = drain(&spool);
    assert_eq!(corrupt, 0, "the damaged record was already counted");
    assert_eq!(seen, (0..50).filter(|&i| i != 10).collect::<Vec<u64>>());
    assert_eq!(
        spool.stats().corrupt_skipped,
        1,
        "one damaged record, one count"
    );
    // Everything delivered but the last record: the damage is below the ack point now.
    spool
        .ack(RecordId { lane: 0, seq: 49 })
        .expect("ack all but the last");
    spool.close().expect("close");
    let (spool, report) = Spool::open(small_config(dir.path())).expect("reopen");
    let (seen, corrupt) = drain(&spool);
    assert_eq!(seen, vec![49], "only the unacknowledged record is left");
    assert_eq!(
        (report.corrupt_frames_skipped, corrupt),
        (0, 0),
        "damage among acknowledged records is not counted by a later open"
    );
}

#[test]
fn damage_appearing_after_open_is_counted_once_by_the_reader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seg = fill(dir.path(), 50);
    let (spool, report) = Spool::open(small_config(dir.path())).expect("open");
    assert_eq!(report.corrupt_frames_skipped, 0);
    // The byte flips while the spool is open (recovery never saw it).
    let mut bytes = std::fs::read(&seg).expect("read seg");
    let pos = find(&bytes, b"record-00000010") + 3;
    bytes[pos] ^= 0x10;
    std::fs::write(&seg, &bytes).expect("write seg");
    let first = spool.read_batch(20, u64::MAX).expect("read");
    assert_eq!(first.corrupt_skipped, 1);
    spool.rewind();
    let (seen, corrupt) = drain(&spool);
    assert_eq!(corrupt, 0);
    assert_eq!(seen.len(), 49);
    assert_eq!(spool.stats().corrupt_skipped, 1);
}

#[test]
fn torn_tail_is_truncated_to_the_last_whole_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seg = fill(dir.path(), 20);
    let len = std::fs::metadata(&seg).expect("meta").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .expect("open seg");
    f.set_len(len - 5).expect("truncate");
    drop(f);
    let (spool, report) = Spool::open(small_config(dir.path())).expect("open");
    assert!(report.torn_tail_bytes_truncated > 0);
    assert_eq!(report.records, 19);
    // The writer had completed record 19 (the cursor says 20 were written): it is lost,
    // and counted once, as missing.
    assert_eq!(report.missing_records, 1);
    let (seen, corrupt) = drain(&spool);
    assert_eq!(seen, (0..19).collect::<Vec<_>>());
    assert_eq!(corrupt, 1, "told once to the reader");
    // Appending continues after the cut, and the new record reads back.
    spool.append(payload(100)).expect("append after truncation");
    assert_eq!(drain(&spool).0, vec![100]);
    spool.close().expect("close");
    let (spool, report) = Spool::open(small_config(dir.path())).expect("reopen");
    assert_eq!(report.missing_records, 0, "counted once, not at every open");
    assert_eq!(drain(&spool), ((0..19).chain([100]).collect::<Vec<_>>(), 0));
}

#[test]
fn zeroed_range_in_the_middle_is_skipped_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seg = fill(dir.path(), 40);
    let mut bytes = std::fs::read(&seg).expect("read");
    let a = find(&bytes, b"record-00000005");
    let b = find(&bytes, b"record-00000008");
    bytes[a..b].fill(0);
    std::fs::write(&seg, &bytes).expect("write");
    let (spool, report) = Spool::open(small_config(dir.path())).expect("open");
    // One damaged region, four records lost in it (5 to 8): each record counts once.
    assert_eq!(report.corrupt_frames_skipped, 4);
    assert_eq!(
        inspect::scan(dir.path()).expect("scan").lanes[0].segments[0].corrupt_frames,
        1
    );
    let (seen, told) = drain(&spool);
    assert_eq!(told, 0, "counted by recovery, not again by the reader");
    assert_eq!(seen.len() + 4, 40, "every record delivered or counted");
    // The zeroed range runs from record 5's payload to record 8's payload: frames 5 to 8
    // are damaged, one region; everything before and after is delivered.
    assert!(seen.starts_with(&[0, 1, 2, 3, 4]));
    assert!(!seen.contains(&5) && !seen.contains(&6) && !seen.contains(&7));
    assert!(seen.ends_with(&(9..40).collect::<Vec<_>>()));
}

#[test]
fn segment_files_of_zero_bytes_only_are_removed_as_never_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    fill(dir.path(), 5);
    let lane = dir.path().join("lane-0");
    // Created, then their writes lost to a power cut with the length kept: zeros only,
    // longer and shorter than a header.
    std::fs::write(lane.join("00000000000000000007.seg"), vec![0u8; 64 * 1024]).expect("zeros");
    std::fs::write(lane.join("00000000000000000008.seg"), [0u8; 10]).expect("zeros");
    let scan = inspect::scan(dir.path()).expect("scan");
    assert!(
        scan.lanes[0].corrupt_segments.is_empty(),
        "not someone else's file: {:?}",
        scan.lanes[0].corrupt_segments
    );
    let (spool, report) = Spool::open(small_config(dir.path())).expect("open");
    assert_eq!(report.empty_segments_removed, 2);
    assert!(report.corrupt_segments.is_empty(), "{report:?}");
    assert_eq!((report.records, report.missing_records), (5, 0));
    assert!(!lane.join("00000000000000000007.seg").exists());
    assert!(!lane.join("00000000000000000008.seg").exists());
    assert_eq!(drain(&spool).0, (0..5).collect::<Vec<_>>());
}

#[test]
fn garbage_and_zero_length_files_never_break_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    fill(dir.path(), 5);
    let lane = dir.path().join("lane-0");
    std::fs::write(lane.join("00000000000000000007.seg"), b"").expect("zero-length");
    std::fs::write(lane.join("00000000000000000008.seg"), vec![0xAB; 10_000]).expect("garbage");
    let mut pseudo = b"OUTLSPSG".to_vec();
    pseudo.extend(std::iter::repeat_n(0x4F, 5000)); // our magic, then junk
    std::fs::write(lane.join("00000000000000000009.seg"), pseudo).expect("junk after magic");
    std::fs::write(lane.join("notes.txt"), b"hello").expect("unknown file");
    std::fs::write(lane.join("cursor"), b"bad").expect("bad cursor");
    let (spool, report) = Spool::open(small_config(dir.path())).expect("open");
    assert_eq!(report.empty_segments_removed, 1);
    assert!(
        report
            .unknown_files
            .iter()
            .any(|p| p.ends_with("notes.txt"))
    );
    assert!(
        report
            .corrupt_segments
            .iter()
            .any(|p| p.ends_with("00000000000000000008.seg")),
        "named like a segment, not ours: counted as a corrupt segment, not an unknown file"
    );
    assert_eq!(report.damaged_cursors, 1);
    assert!(
        lane.join("00000000000000000008.seg").exists(),
        "foreign file left alone"
    );
    assert_eq!(drain(&spool).0, (0..5).collect::<Vec<_>>());
    // New appends go to a segment numbered after every existing file.
    spool.append(payload(9)).expect("append");
    assert!(lane.join("00000000000000000010.seg").exists());
}

fn acked(acked_through: u64) -> CursorState {
    CursorState {
        acked_through,
        next_seq: acked_through + 1,
    }
}

/// A cursor file with `slot0` at offset 0 and `slot1` at offset 512.
fn cursor_file(slot0: &[u8], slot1: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 512 + slot1.len()];
    f[..slot0.len()].copy_from_slice(slot0);
    f[512..].copy_from_slice(slot1);
    f
}

#[test]
fn torn_or_garbage_cursor_slot_is_ignored_and_the_other_slot_is_used() {
    let newer = encode_cursor(6, acked(7));
    for (what, slot1) in [
        ("torn newer record", newer[..20].to_vec()),
        ("garbage", vec![0xAB; 36]),
        ("newer record with a flipped bit", {
            let mut b = newer.to_vec();
            b[17] ^= 0x10;
            b
        }),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        fill(dir.path(), 10);
        let cursor = dir.path().join("lane-0").join("cursor");
        std::fs::write(&cursor, cursor_file(&encode_cursor(5, acked(4)), &slot1))
            .expect("write cursor");
        let (spool, report) = Spool::open(small_config(dir.path())).expect("open");
        assert_eq!(
            report.damaged_cursors, 0,
            "{what}: the valid slot is enough"
        );
        // Records 0..4 have sequence numbers 1..=4: acknowledged by slot 0.
        assert_eq!(drain(&spool).0, (4..10).collect::<Vec<_>>(), "{what}");
        let inspection = inspect::scan(dir.path()).expect("inspect");
        assert_eq!(inspection.lanes[0].acked_through, 4, "{what}");
        assert!(!inspection.lanes[0].cursor_damaged, "{what}");
    }
}

#[test]
fn newer_of_two_valid_cursor_slots_wins_is_copied_into_the_other_at_open_and_acks_alternate() {
    for newer_slot in [0usize, 1] {
        let dir = tempfile::tempdir().expect("tempdir");
        fill(dir.path(), 10);
        let cursor = dir.path().join("lane-0").join("cursor");
        let (new, old) = (encode_cursor(9, acked(7)), encode_cursor(8, acked(4)));
        let file = if newer_slot == 0 {
            cursor_file(&new, &old)
        } else {
            cursor_file(&old, &new)
        };
        std::fs::write(&cursor, file).expect("write cursor");
        let (spool, report) = Spool::open(small_config(dir.path())).expect("open");
        assert_eq!(report.damaged_cursors, 0);
        // (generation, acked_through) of a slot, which must be valid.
        let slot = |i: usize| {
            let bytes = std::fs::read(&cursor).expect("read cursor");
            match decode_cursor_slot(&bytes[i * 512..i * 512 + 36]) {
                CursorSlot::Valid { generation, state } => (generation, state.acked_through),
                other => panic!("slot {i}: {other:?}"),
            }
        };
        // Open settled the winner into both slots (the older one got the next generation),
        // so that no later write can leave both slots torn.
        assert_eq!(slot(newer_slot), (9, 7));
        assert_eq!(slot(newer_slot ^ 1), (10, 7));
        assert_eq!(drain(&spool).0, vec![7, 8, 9], "slot {newer_slot} wins");
        spool
            .ack(RecordId {
                lane: spool.lane(),
                seq: 8,
            })
            .expect("ack");
        // The ack went with one write to the slot not holding the newest record.
        assert_eq!(slot(newer_slot), (11, 8));
        assert_eq!(slot(newer_slot ^ 1), (10, 7));
        drop(spool);
        let (spool, _) = Spool::open(small_config(dir.path())).expect("reopen");
        assert_eq!(drain(&spool).0, vec![8, 9]);
    }
}

#[test]
fn cursor_slots_of_a_newer_version_count_as_damaged_and_are_not_fatal() {
    let dir = tempfile::tempdir().expect("tempdir");
    fill(dir.path(), 5);
    let mut rec = encode_cursor(3, acked(4));
    rec[4] = 9; // version 9
    let crc = crc32fast::hash(&rec[..32]);
    rec[32..].copy_from_slice(&crc.to_le_bytes());
    let cursor = dir.path().join("lane-0").join("cursor");
    std::fs::write(&cursor, rec).expect("write cursor");
    let (spool, report) = Spool::open(small_config(dir.path())).expect("open");
    assert_eq!(report.damaged_cursors, 1);
    assert_eq!(
        drain(&spool).0,
        (0..5).collect::<Vec<_>>(),
        "nothing counts as acked"
    );
}

#[test]
fn segment_of_a_newer_version_is_left_untouched_and_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seg = fill(dir.path(), 3);
    let mut bytes = std::fs::read(&seg).expect("read");
    bytes[8] = 9; // version 9
    let newer = seg.with_file_name("00000000000000000005.seg");
    std::fs::write(&newer, &bytes).expect("write newer");
    let (spool, report) = Spool::open(small_config(dir.path())).expect("open");
    assert_eq!(report.newer_version_files, vec![newer.clone()]);
    assert_eq!(drain(&spool).0, vec![0, 1, 2]);
    for i in 0..400 {
        spool.append(payload(i)).expect("append");
    }
    spool.close().expect("close");
    assert_eq!(
        std::fs::read(&newer).expect("still there"),
        bytes,
        "never modified"
    );
    let scan = inspect::scan(dir.path()).expect("scan");
    assert_eq!(scan.lanes[0].newer_version_files().count(), 1);
}

#[test]
fn disk_full_during_append_hands_the_payload_back_and_harms_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultFs::new();
    let cfg = small_config(dir.path());
    let (spool, _) = Spool::open_with_fs(cfg.clone(), Arc::new(fs.clone())).expect("open");
    // The faults are the appends': the background thread (woken by the first segment's
    // creation, it writes the cursor when it gets to run) must not take one.
    fs.spare_sync_thread();
    for i in 0..10 {
        spool.append(payload(i)).expect("append");
    }
    let faults = [
        WriteFault::Fail(ErrorKind::StorageFull),
        WriteFault::Torn {
            written: 7,
            kind: ErrorKind::StorageFull,
        },
        WriteFault::ShortThenFail {
            written: 20,
            kind: ErrorKind::Other,
        },
    ];
    for (k, f) in faults.into_iter().enumerate() {
        fs.fail_write(f);
        let p = payload(1000 + k as u64);
        let err = spool.append(p.clone()).expect_err("fault");
        assert!(matches!(err.kind, AppendErrorKind::Io(_)), "{err}");
        assert_eq!(err.into_payload(), p);
    }
    // A torn write whose cleanup also fails: the next append moves to a new segment.
    fs.fail_write(WriteFault::Torn {
        written: 30,
        kind: ErrorKind::Other,
    });
    fs.fail_set_lens(1);
    assert!(spool.append(payload(2000)).is_err());
    spool.append(payload(10)).expect("append after faults");
    spool.append(payload(11)).expect("append after faults");
    assert_eq!(drain(&spool).0, (0..12).collect::<Vec<_>>());
    spool.close().expect("close");
    let (spool, report) = Spool::open(small_config(dir.path())).expect("reopen");
    assert_eq!(report.records, 12);
    assert_eq!(drain(&spool).0, (0..12).collect::<Vec<_>>());
}

#[test]
fn failed_fsync_in_fsync_every_append_mode_is_reported_as_not_durable_and_the_record_stays_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultFs::new();
    let cfg = small_config(dir.path()).with_durability(outlast_spool::Durability::FsyncEveryAppend);
    let (spool, _) = Spool::open_with_fs(cfg.clone(), Arc::new(fs.clone())).expect("open");
    assert!(spool.append(payload(0)).expect("append").is_durable());
    // Every fsync fails meanwhile (the background thread's cursor fsync may come first).
    fs.fail_syncs(u32::MAX);
    let a = spool
        .append(payload(1))
        .expect("the record is written: the append succeeded, only not durably");
    assert!(!a.is_durable());
    assert!(a.sync_error.is_some());
    assert_eq!(a.id.seq, 2);
    assert_eq!(spool.stats().records, 2, "in the spool, once");
    fs.fail_syncs(0);
    let c = spool.append(payload(2)).expect("later append works");
    assert!(
        c.is_durable(),
        "the next fsync covers the earlier record too"
    );
    // A power loss now keeps everything: the later fsync made record 1 durable.
    fs.crash(CrashKeep::Nothing).expect("crash");
    drop(spool);
    fs.revive();
    let (spool, _) = Spool::open_with_fs(cfg, Arc::new(fs.clone())).expect("reopen");
    assert_eq!(drain(&spool), (vec![0, 1, 2], 0), "each record once");
}

#[test]
fn a_failing_fsync_of_sealed_segments_fails_no_append_and_is_retried_until_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultFs::new();
    let open = || Spool::open_with_fs(small_config(dir.path()), Arc::new(fs.clone()));
    let (spool, _) = open().expect("open");
    fs.fail_syncs(u32::MAX);
    // 16 KiB segments and records of 30 to 80 bytes: several rotations, each of which
    // hands the sealed segment to the background thread, whose fsyncs all fail.
    for i in 0..2000 {
        spool
            .append(payload(i))
            .expect("OsWrite appends do not wait for a sealed segment's fsync");
    }
    assert!(segments(dir.path()).len() >= 3, "rotations happened");
    let err = spool.sync().expect_err("the failing fsync is reported");
    assert!(matches!(err, SpoolError::Io { .. }), "{err}");
    fs.fail_syncs(0);
    spool.sync().expect("sync once the disk works again");
    // Power loss right after: nothing written since the last fsync survives. The failed
    // commits handed their segments back, so the good sync covered all of them.
    fs.crash(CrashKeep::Nothing).expect("crash");
    drop(spool);
    fs.revive();
    let (spool, report) = open().expect("reopen");
    assert_eq!(report.torn_tail_bytes_truncated, 0);
    assert_eq!(drain(&spool), ((0..2000).collect::<Vec<_>>(), 0));
}

#[test]
fn every_returned_append_of_concurrent_fsync_every_append_callers_survives_a_power_loss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultFs::new();
    let config = || small_config(dir.path()).with_durability(Durability::FsyncEveryAppend);
    let (spool, _) = Spool::open_with_fs(config(), Arc::new(fs.clone())).expect("open");
    const THREADS: u64 = 8;
    const EACH: u64 = 150;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let spool = &spool;
            s.spawn(move || {
                for i in 0..EACH {
                    spool.append(payload(t * 1000 + i)).expect("append");
                }
            });
        }
    });
    assert!(segments(dir.path()).len() >= 3, "rotations happened");
    // Every append returned, so every record was fsynced (sealed segments included) by
    // some group commit; a power loss now must not take any of them.
    fs.crash(CrashKeep::Nothing).expect("crash");
    drop(spool);
    fs.revive();
    let (spool, _) = Spool::open_with_fs(config(), Arc::new(fs.clone())).expect("reopen");
    let (got, corrupt) = drain(&spool);
    assert_eq!(corrupt, 0);
    for t in 0..THREADS {
        let mine: Vec<u64> = got.iter().copied().filter(|v| v / 1000 == t).collect();
        let want: Vec<u64> = (0..EACH).map(|i| t * 1000 + i).collect();
        assert_eq!(mine, want, "appender {t}: all records, in its order");
    }
}

#[test]
fn failed_group_fsyncs_reach_each_concurrent_appender_they_covered_and_every_record_stays_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultFs::new();
    let config = || small_config(dir.path()).with_durability(Durability::FsyncEveryAppend);
    let (spool, _) = Spool::open_with_fs(config(), Arc::new(fs.clone())).expect("open");
    const THREADS: u64 = 8;
    const EACH: u64 = 60;
    const FAILED: u32 = 5;
    // The first fdatasyncs of the appenders' group commits fail (the background thread's
    // cursor fsyncs are spared): each is reported to every append it covered, at least to
    // the one that ran it.
    fs.spare_sync_thread();
    fs.fail_syncs(FAILED);
    let not_durable: u64 = std::thread::scope(|s| {
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let spool = &spool;
                s.spawn(move || {
                    (0..EACH)
                        .map(|i| {
                            let a = spool.append(payload(t * 1000 + i)).expect("written");
                            u64::from(!a.is_durable())
                        })
                        .sum::<u64>()
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|h| h.join().expect("appender"))
            .sum()
    });
    assert!(
        not_durable >= u64::from(FAILED),
        "{not_durable} appends not durable"
    );
    assert_eq!(spool.stats().records, THREADS * EACH, "each record once");
    // The commits after the failures retried their work: a power loss now keeps it all.
    spool.sync().expect("sync");
    fs.crash(CrashKeep::Nothing).expect("crash");
    drop(spool);
    fs.revive();
    let (spool, _) = Spool::open_with_fs(config(), Arc::new(fs.clone())).expect("reopen");
    let (mut got, corrupt) = drain(&spool);
    assert_eq!(corrupt, 0);
    got.sort_unstable();
    let want: Vec<u64> = (0..THREADS)
        .flat_map(|t| (0..EACH).map(move |i| t * 1000 + i))
        .collect();
    assert_eq!(got, want, "every record, once");
}

#[test]
fn root_and_files_are_private_to_the_user() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("spool");
    let (spool, _) = Spool::open(small_config(&root)).expect("open");
    spool.append(payload(1)).expect("append");
    spool.sync().expect("sync");
    let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode(&root), 0o700);
    assert_eq!(mode(&root.join("lane-0")), 0o700);
    assert_eq!(mode(&root.join("lane-0/lock")), 0o600);
    for s in segments(&root) {
        assert_eq!(mode(&s), 0o600);
    }
}

#[test]
fn symlinked_or_non_directory_root_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let real = dir.path().join("real");
    std::fs::create_dir(&real).expect("mkdir");
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    let err = Spool::open(small_config(&link)).expect_err("symlink");
    assert!(
        matches!(&err, SpoolError::UnsafeRoot { path, reason } if path == &link && reason.contains("symbolic")),
        "{err}"
    );
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").expect("file");
    let err = Spool::open(small_config(&file)).expect_err("file");
    assert!(matches!(err, SpoolError::UnsafeRoot { .. }), "{err}");
}

#[test]
fn root_owned_by_another_user_is_refused() {
    // Needs a directory owned by someone else: as root we can make one with chown; as a
    // normal user /tmp's parent "/" (owned by root) serves.
    let dir = tempfile::tempdir().expect("tempdir");
    let other = dir.path().join("other");
    std::fs::create_dir(&other).expect("mkdir");
    let target = if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(&other, Some(65534), Some(65534)).expect("chown to nobody");
        other
    } else {
        PathBuf::from("/")
    };
    let err = Spool::open(small_config(&target)).expect_err("other owner");
    assert!(
        matches!(&err, SpoolError::UnsafeRoot { reason, .. } if reason.contains("owned by")),
        "{err}"
    );
}

#[test]
fn read_only_root_gives_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("ro");
    std::fs::create_dir(&root).expect("mkdir");
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o500)).expect("chmod");
    let result = Spool::open(small_config(&root));
    if rustix::process::geteuid().is_root() {
        // Root ignores permission bits (CAP_DAC_OVERRIDE), so the directory is writable to
        // us: what is checkable is that the spool then works normally.
        let (spool, _) = result.expect("root can write despite 0500");
        spool.append(payload(1)).expect("append");
    } else {
        let err = result.expect_err("read-only root");
        assert!(err.is_io(), "{err}");
        assert!(err.to_string().contains("lane-0"), "{err}");
    }
}

#[test]
fn format_doc_example_parses_and_reads_back() {
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/spool-format.md");
    let doc = std::fs::read_to_string(&doc_path).expect("docs/spool-format.md");
    let start = doc.find("### Example").expect("example section");
    let block = &doc[start..];
    let block = &block[block.find("```text").expect("code block") + 7..];
    let block = &block[..block.find("```").expect("end of block")];
    let mut lines = block.lines().filter(|l| !l.trim().is_empty());
    let header_hex = lines.next().expect("header line");
    let frame_hex = lines.next().expect("frame line");
    let mut header = hex(header_hex);
    let crc = crc32fast::hash(&header[..28]);
    header[28..32].copy_from_slice(&crc.to_le_bytes());
    let mut frame = hex(frame_hex);
    let mut h = crc32fast::Hasher::new();
    h.update(&frame[..8]);
    h.update(&frame[12..]);
    let crc = h.finalize();
    frame[8..12].copy_from_slice(&crc.to_le_bytes());

    let expected_payload = outlast_spool::Payload::new(&b"hi"[..])
        .with_content_type(outlast_core::ContentType::Json)
        .with_created_at(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1));
    let mut built = Vec::new();
    outlast_spool::testing::encode_frame(&mut built, 1, &expected_payload).expect("encode");
    assert_eq!(
        frame, built,
        "documented frame equals what the writer produces"
    );
    assert_eq!(
        &header[..],
        &outlast_spool::testing::encode_segment_header(1, 1)[..]
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let lane = dir.path().join("lane-0");
    std::fs::create_dir_all(&lane).expect("mkdir");
    let mut file = header.clone();
    file.extend_from_slice(&frame);
    std::fs::write(lane.join("00000000000000000001.seg"), file).expect("write");
    let (spool, report) = Spool::open(small_config(dir.path())).expect("open");
    assert_eq!(report.records, 1);
    let b = spool.read_batch(10, u64::MAX).expect("read");
    assert_eq!(b.records.len(), 1);
    assert_eq!(b.records[0].id.seq, 1);
    assert_eq!(b.records[0].payload, expected_payload);
    spool.close().expect("close");

    // The cursor example: generation 3, acknowledging sequence number 1, next 2.
    let start = doc
        .find("### Cursor example")
        .expect("cursor example section");
    let block = &doc[start..];
    let block = &block[block.find("```text").expect("code block") + 7..];
    let block = &block[..block.find("```").expect("end of block")];
    let mut record = hex(block.lines().find(|l| !l.trim().is_empty()).expect("line"));
    assert_eq!(record.len(), 36);
    let crc = crc32fast::hash(&record[..32]);
    record[32..36].copy_from_slice(&crc.to_le_bytes());
    let state = CursorState {
        acked_through: 1,
        next_seq: 2,
    };
    assert_eq!(
        &record[..],
        &encode_cursor(3, state)[..],
        "documented cursor record equals what the spool writes"
    );
    assert_eq!(
        decode_cursor_slot(&record),
        CursorSlot::Valid {
            generation: 3,
            state
        }
    );
    std::fs::write(lane.join("cursor"), &record).expect("write cursor");
    let (spool, report) = Spool::open(small_config(dir.path())).expect("reopen");
    assert_eq!((report.records, report.damaged_cursors), (1, 0));
    let b = spool.read_batch(10, u64::MAX).expect("read");
    assert!(
        b.records.is_empty(),
        "the acknowledged record is not delivered"
    );
}

fn hex(line: &str) -> Vec<u8> {
    let s: String = line
        .split_whitespace()
        .map(|t| {
            if t.ends_with("__") {
                "00000000".to_owned()
            } else {
                t.to_owned()
            }
        })
        .collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("needle present")
}

/// The cursor record a lane's cursor file holds now (the newer valid slot).
fn cursor_state(root: &Path) -> CursorState {
    let bytes = std::fs::read(root.join("lane-0").join("cursor")).expect("cursor file");
    outlast_spool::testing::decode_cursor_file(&bytes).state
}

#[test]
fn a_clean_close_records_how_far_the_lane_was_written_in_the_cursor() {
    let dir = tempfile::tempdir().expect("tempdir");
    fill(dir.path(), 20);
    let state = cursor_state(dir.path());
    assert_eq!(state.next_seq, 21, "{state:?}");
    assert_eq!(state.acked_through, 0);
}

#[test]
fn records_zeroed_at_the_end_of_a_lane_are_counted_missing_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seg = fill(dir.path(), 20);
    let mut bytes = std::fs::read(&seg).expect("read");
    let from = find(&bytes, b"record-00000017");
    bytes[from..].fill(0);
    std::fs::write(&seg, &bytes).expect("write");
    let scan = inspect::scan(dir.path()).expect("scan");
    assert!(!scan.is_healthy(), "verify sees the loss");
    assert_eq!(scan.lanes[0].missing_records, 3, "records 17, 18 and 19");

    let (spool, report) = Spool::open(small_config(dir.path())).expect("open");
    assert_eq!((report.records, report.missing_records), (17, 3));
    assert_eq!(spool.stats().missing_records, 3);
    let (seen, told) = drain(&spool);
    assert_eq!(seen, (0..17).collect::<Vec<_>>());
    assert_eq!(told, 3, "reported to the reader once");
    spool.close().expect("close");
    let (spool, report) = Spool::open(small_config(dir.path())).expect("reopen");
    assert_eq!(report.missing_records, 0, "counted by one open only");
    assert_eq!(drain(&spool).1, 0);
    assert!(inspect::scan(dir.path()).expect("scan").is_healthy());
}

#[test]
fn a_last_segment_cut_to_its_header_counts_all_its_records_missing_and_numbering_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = small_config(dir.path());
    let (spool, _) = Spool::open(config.clone()).expect("open");
    for i in 0..600 {
        spool.append(payload(i)).expect("append");
    }
    let b = spool.read_batch(10, u64::MAX).expect("read");
    spool.ack(b.records[9].id).expect("ack 10");
    spool.close().expect("close");
    let segs = segments(dir.path());
    assert!(segs.len() >= 2);
    let last = segs.last().expect("last");
    let lost = inspect::scan(dir.path()).expect("scan").lanes[0]
        .segments
        .last()
        .expect("seg")
        .records;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .expect("open");
    f.set_len(32).expect("cut to the header");
    drop(f);
    let (spool, report) = Spool::open(config.clone()).expect("reopen");
    assert_eq!(report.missing_records, lost);
    let (seen, told) = drain(&spool);
    assert_eq!(told, lost);
    assert_eq!(seen.len() as u64 + lost + 10, 600);
    let a = spool.append(payload(9999)).expect("append");
    assert_eq!(
        a.id.seq,
        600 - lost + 1,
        "numbering goes on after what is left"
    );
    spool.close().expect("close");
    let (spool, report) = Spool::open(config).expect("reopen");
    assert_eq!(report.missing_records, 0, "{report:?}");
    let (seen, told) = drain(&spool);
    assert_eq!((seen.last().copied(), told), (Some(9999), 0));
}

#[test]
fn records_whose_data_fsync_failed_and_were_lost_to_a_power_loss_are_counted_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultFs::new();
    let open = || Spool::open_with_fs(small_config(dir.path()), Arc::new(fs.clone()));
    let (spool, _) = open().expect("open");
    for i in 0..10 {
        spool.append(payload(i)).expect("append");
    }
    spool.sync().expect("durable");
    for i in 10..15 {
        spool.append(payload(i)).expect("append");
    }
    // The data fsync fails; the cursor's (how far the lane is written) succeeds. The spool's
    // background thread is spared the fault, so that the fsync failing is sync()'s own.
    fs.spare_sync_thread();
    fs.fail_syncs(1);
    spool.sync().expect_err("the data fsync failed");
    fs.crash(CrashKeep::Nothing).expect("power loss");
    drop(spool);
    fs.revive();
    let (spool, report) = open().expect("reopen");
    assert_eq!(report.records, 10);
    assert_eq!(
        report.missing_records, 5,
        "the five accepted records lost are counted"
    );
    let (seen, told) = drain(&spool);
    assert_eq!((seen, told), ((0..10).collect::<Vec<_>>(), 5));
}

#[test]
fn a_record_damaged_after_it_was_handed_out_is_delivered_if_acknowledged_and_counted_once_if_rewound()
 {
    for ack in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        fill(dir.path(), 600);
        assert!(
            segments(dir.path()).len() >= 2,
            "the read below crosses a segment"
        );
        let fs = FaultFs::new();
        let (spool, _) =
            Spool::open_with_fs(small_config(dir.path()), Arc::new(fs.clone())).expect("open");
        let first = spool.read_batch(20, u64::MAX).expect("read");
        assert_eq!(first.records.len(), 20);
        // Record 10, handed out already, is damaged on disk.
        let seg = &segments(dir.path())[0];
        let mut bytes = std::fs::read(seg).expect("read seg");
        let pos = find(&bytes, b"record-00000010") + 3;
        bytes[pos] ^= 0x10;
        std::fs::write(seg, &bytes).expect("write seg");
        // The next read fails at the next segment: the one after it reads the first
        // segment again from its start, and passes the damage below what was handed out.
        fs.fail_reads(1);
        spool.read_batch(10_000, u64::MAX).expect_err("EIO");
        let mut corrupt = 0;
        if !ack {
            spool.rewind();
        }
        // Acknowledged (with the rest, below): the first 20 were delivered.
        let mut seen: Vec<u64> = if ack {
            first
                .records
                .iter()
                .map(|r| body_index(&r.payload))
                .collect()
        } else {
            Vec::new()
        };
        loop {
            let b = spool.read_batch(100, u64::MAX).expect("read");
            corrupt += b.corrupt_skipped;
            let Some(last) = b.records.last() else { break };
            seen.extend(b.records.iter().map(|r| body_index(&r.payload)));
            spool.ack(last.id).expect("ack");
        }
        if ack {
            assert_eq!(corrupt, 0, "delivered before it was damaged: not a loss");
            assert_eq!(seen, (0..600).collect::<Vec<_>>());
        } else {
            assert_eq!(corrupt, 1, "lost, once");
            assert_eq!(seen.len(), 599);
        }
        assert_eq!(spool.stats().corrupt_skipped, corrupt);
        assert_eq!(spool.stats().records, 0);
    }
}
