//! Every record is delivered or counted: limits the reader checks are refused at append;
//! segments swapped, renamed, deleted, emptied or with a damaged magic are detected, their
//! undeliverable records counted and nothing deleted unsent; eviction during a replay counts
//! each record once.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{body_index, payload, small_config};
use outlast_spool::fault::FaultFs;
use outlast_spool::inspect;
use outlast_spool::{
    AppendErrorKind, Dropped, FullPolicy, Payload, Spool, SpoolConfig, SpoolError,
};

/// Appends payloads `0..n` to a fresh spool and closes it; returns its segment files by id.
fn fill(root: &Path, n: u64) -> Vec<PathBuf> {
    let (spool, _) = Spool::open(small_config(root)).expect("open");
    for i in 0..n {
        spool.append(payload(i)).expect("append");
    }
    spool.close().expect("close");
    let mut segs: Vec<PathBuf> = std::fs::read_dir(root.join("lane-0"))
        .expect("lane")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs
}

/// Reads and acknowledges everything; the payload numbers, in delivery order.
fn deliver_all(spool: &Spool) -> Vec<u64> {
    let mut seen = Vec::new();
    for _ in 0..10_000 {
        let b = spool.read_batch(100, u64::MAX).expect("read");
        let Some(last) = b.records.last() else {
            return seen;
        };
        let id = last.id;
        seen.extend(b.records.iter().map(|r| body_index(&r.payload)));
        spool.ack(id).expect("ack");
    }
    panic!("never ran dry");
}

fn records_in(path: &Path) -> u64 {
    let root = path.parent().and_then(Path::parent).expect("root");
    let scan = inspect::scan(root).expect("scan");
    scan.lanes[0]
        .segments
        .iter()
        .find(|s| s.path == path)
        .map_or(0, |s| s.records)
}

#[test]
fn a_key_larger_than_the_format_allows_is_refused_at_append_and_nothing_is_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = small_config(dir.path())
        .with_max_record_bytes(1024 * 1024)
        .with_segment_bytes(4 * 1024 * 1024)
        .with_spool_max_bytes(64 * 1024 * 1024);
    let (spool, _) = Spool::open(config.clone()).expect("open");
    spool.append(payload(1)).expect("append before");
    let huge = Payload::new(&b"x"[..]).with_key("k".repeat(70 * 1024));
    let err = spool
        .append(huge)
        .expect_err("a key over 64 KiB is refused");
    assert!(
        matches!(err.kind, AppendErrorKind::HeaderTooLarge { max: 65536, .. }),
        "{err}"
    );
    assert!(err.is_too_large());
    assert_eq!(
        err.payload.meta().key.as_deref().map(str::len),
        Some(70 * 1024)
    );
    spool.append(payload(2)).expect("append after");
    spool.close().expect("close");
    let (spool, report) = Spool::open(config).expect("reopen");
    assert_eq!(report.records, 2);
    assert_eq!(report.torn_tail_bytes_truncated, 0);
    assert_eq!(deliver_all(&spool), vec![1, 2]);
}

#[test]
fn two_swapped_segments_are_delivered_in_order_and_reported_not_deleted_unsent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segs = fill(dir.path(), 1000);
    assert!(segs.len() >= 3, "{segs:?}");
    let tmp = dir.path().join("swap");
    std::fs::rename(&segs[0], &tmp).expect("swap");
    std::fs::rename(&segs[1], &segs[0]).expect("swap");
    std::fs::rename(&tmp, &segs[1]).expect("swap");
    let scan = inspect::scan(dir.path()).expect("scan");
    assert!(!scan.is_healthy(), "verify reports the swap");
    assert_eq!(scan.lanes[0].misplaced_segments.len(), 2);

    let (spool, report) = Spool::open(small_config(dir.path())).expect("open");
    assert_eq!(report.misplaced_segments.len(), 2, "{report:?}");
    assert_eq!(report.missing_records, 0);
    assert_eq!(deliver_all(&spool), (0..1000).collect::<Vec<_>>());
}

#[test]
fn a_flipped_bit_in_a_segment_magic_is_counted_and_its_records_still_delivered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segs = fill(dir.path(), 1000);
    let mut bytes = std::fs::read(&segs[1]).expect("read");
    bytes[2] ^= 0x10;
    std::fs::write(&segs[1], &bytes).expect("write");
    assert!(!inspect::scan(dir.path()).expect("scan").is_healthy());
    let (spool, report) = Spool::open(small_config(dir.path())).expect("open");
    assert_eq!(report.damaged_headers, vec![segs[1].clone()], "{report:?}");
    assert_eq!(
        report.corrupt_frames_skipped, 0,
        "no record was lost: nothing counted as a drop"
    );
    assert!(
        report.unknown_files.is_empty(),
        "not an unknown file: {report:?}"
    );
    assert_eq!(deliver_all(&spool), (0..1000).collect::<Vec<_>>());
}

#[test]
fn a_segment_renamed_to_a_far_id_is_delivered_in_its_place_and_new_records_after_all() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segs = fill(dir.path(), 1000);
    let far = segs[1].with_file_name("00000000000000099999.seg");
    std::fs::rename(&segs[1], &far).expect("rename");
    let (spool, report) = Spool::open(small_config(dir.path())).expect("open");
    assert!(report.misplaced_segments.contains(&far), "{report:?}");
    spool.append(payload(1000)).expect("append");
    let mut want: Vec<u64> = (0..1000).collect();
    want.push(1000);
    assert_eq!(deliver_all(&spool), want);
}

#[test]
fn a_deleted_middle_segment_counts_its_records_as_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segs = fill(dir.path(), 1000);
    let lost = records_in(&segs[1]);
    assert!(lost > 0);
    std::fs::remove_file(&segs[1]).expect("delete");
    let scan = inspect::scan(dir.path()).expect("scan");
    assert_eq!(scan.lanes[0].missing_records, lost);
    assert!(!scan.is_healthy());
    let (spool, report) = Spool::open(small_config(dir.path())).expect("open");
    assert_eq!(report.missing_records, lost, "{report:?}");
    assert_eq!(spool.stats().missing_records, lost);
    let delivered = deliver_all(&spool);
    assert_eq!(
        delivered.len() as u64 + lost,
        1000,
        "delivered + missing = appended"
    );
}

#[test]
fn an_emptied_middle_segment_counts_its_records_as_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segs = fill(dir.path(), 1000);
    let lost = records_in(&segs[1]);
    std::fs::write(&segs[1], b"").expect("empty it");
    let (spool, report) = Spool::open(small_config(dir.path())).expect("open");
    assert_eq!(report.missing_records, lost, "{report:?}");
    assert_eq!(deliver_all(&spool).len() as u64 + lost, 1000);
}

#[test]
fn acknowledged_and_evicted_heads_are_not_counted_as_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _) = Spool::open(small_config(dir.path())).expect("open");
    for i in 0..400 {
        spool.append(payload(i)).expect("append");
    }
    let b = spool.read_batch(200, u64::MAX).expect("read");
    spool.ack(b.records[199].id).expect("ack");
    spool.close().expect("close");
    let (spool, report) = Spool::open(small_config(dir.path())).expect("reopen");
    assert_eq!(report.missing_records, 0, "{report:?}");
    assert!(report.misplaced_segments.is_empty());
    assert_eq!(deliver_all(&spool), (200..400).collect::<Vec<_>>());
}

/// Drop-oldest configuration small enough to evict while a replay is under way.
fn evicting(root: &Path) -> SpoolConfig {
    small_config(root)
        .with_spool_max_bytes(48 * 1024)
        .with_full_policy(FullPolicy::DropOldest)
}

/// Appends until at least one eviction took records handed out by `in_flight`.
fn evict_during_replay(spool: &Spool, appended: &mut u64, evicted: &mut Dropped) -> Vec<u64> {
    for i in 0..100 {
        let a = spool.append(payload(i)).expect("append");
        evicted.records += a.evicted.records;
        *appended += 1;
    }
    let in_flight: Vec<u64> = spool
        .read_batch(60, u64::MAX)
        .expect("read")
        .records
        .iter()
        .map(|r| r.id.seq)
        .collect();
    for i in 100..800 {
        let a = spool.append(payload(i)).expect("append");
        evicted.records += a.evicted.records;
        *appended += 1;
    }
    assert!(evicted.records > 0, "evictions happened");
    in_flight
}

#[test]
fn records_in_flight_when_evicted_and_then_delivered_count_as_delivered_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _) = Spool::open(evicting(dir.path())).expect("open");
    let (mut appended, mut evicted) = (0u64, Dropped::default());
    let in_flight = evict_during_replay(&spool, &mut appended, &mut evicted);
    // The in-flight records were delivered: acknowledged.
    let last = *in_flight.last().expect("read something");
    spool
        .ack(outlast_spool::RecordId {
            lane: spool.lane(),
            seq: last,
        })
        .expect("ack");
    let mut delivered = in_flight.len() as u64;
    loop {
        let b = spool.read_batch(100, u64::MAX).expect("read");
        evicted.records += b.evicted.records;
        let Some(r) = b.records.last() else { break };
        delivered += b.records.len() as u64;
        spool.ack(r.id).expect("ack");
    }
    // A later failure and rewind must not count the delivered records again.
    spool.rewind();
    let after = spool.read_batch(100, u64::MAX).expect("read");
    assert!(after.records.is_empty());
    evicted.records += after.evicted.records;
    assert_eq!(
        appended,
        delivered + evicted.records,
        "appended = delivered + evicted, exactly ({delivered} + {})",
        evicted.records
    );
    assert_eq!(spool.stats().evicted.records, evicted.records);
}

#[test]
fn records_in_flight_when_evicted_and_then_rewound_count_as_evicted_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _) = Spool::open(evicting(dir.path())).expect("open");
    let (mut appended, mut evicted) = (0u64, Dropped::default());
    let in_flight = evict_during_replay(&spool, &mut appended, &mut evicted);
    assert!(!in_flight.is_empty());
    // The delivery failed: nothing acknowledged, the replay starts again.
    spool.rewind();
    let mut delivered = 0u64;
    let mut lost_in_flight = 0;
    loop {
        let b = spool.read_batch(100, u64::MAX).expect("read");
        lost_in_flight += b.evicted.records;
        let Some(r) = b.records.last() else { break };
        delivered += b.records.len() as u64;
        spool.ack(r.id).expect("ack");
    }
    assert_eq!(
        lost_in_flight,
        in_flight.len() as u64,
        "reported after the rewind"
    );
    evicted.records += lost_in_flight;
    assert_eq!(appended, delivered + evicted.records, "exactly");
    assert_eq!(spool.stats().evicted.records, evicted.records);
}

#[test]
fn settling_a_reader_that_stops_reports_what_was_lost_in_flight_once_and_keeps_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _) = Spool::open(evicting(dir.path())).expect("open");
    let (mut appended, mut evicted) = (0u64, Dropped::default());
    let in_flight = evict_during_replay(&spool, &mut appended, &mut evicted);
    // A second batch, read from segments that are still there.
    let kept = spool.read_batch(10, u64::MAX).expect("read").records.len() as u64;
    assert!(kept > 0);
    // The reader stops for good (a shutdown): the records it read and no one acknowledged
    // are either lost (their segment was evicted) or still waiting.
    let waiting_before = spool.stats().records;
    let settled = spool.settle();
    assert!(settled.records.is_empty());
    assert_eq!(settled.evicted.records, in_flight.len() as u64);
    assert_eq!(settled.expired.records, 0);
    evicted.records += settled.evicted.records;
    assert_eq!(spool.stats().evicted.records, evicted.records);
    let waiting = spool.stats().records;
    assert_eq!(
        waiting,
        waiting_before - in_flight.len() as u64,
        "the lost ones leave the gauge"
    );
    assert_eq!(appended, evicted.records + waiting, "exactly");
    // Reported once: not by a second settle, nor by the next read or append.
    assert_eq!(spool.settle().evicted.records, 0);
    let a = spool.append(payload(10_000)).expect("append");
    assert_eq!(a.evicted.records, 0, "{a:?}");
    spool.close().expect("close");
    // What the gauge said is what is on disk.
    let (spool, report) = Spool::open(evicting(dir.path())).expect("reopen");
    assert_eq!(report.records, waiting + 1);
    let b = spool.read_batch(10_000, u64::MAX).expect("read");
    assert_eq!(b.evicted.records, 0);
    assert_eq!(b.records.len() as u64, waiting + 1);
}

#[test]
fn settling_with_nothing_in_flight_reports_nothing_and_the_next_read_starts_at_the_oldest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _) = Spool::open(small_config(dir.path())).expect("open");
    for i in 0..5 {
        spool.append(payload(i)).expect("append");
    }
    let first = spool.read_batch(3, u64::MAX).expect("read");
    assert_eq!(first.records.len(), 3);
    let settled = spool.settle();
    assert_eq!(
        (settled.evicted, settled.expired, settled.corrupt_skipped),
        (Dropped::default(), Dropped::default(), 0)
    );
    let again = spool.read_batch(10, u64::MAX).expect("read");
    assert_eq!(
        again.records.iter().map(|r| r.id.seq).collect::<Vec<_>>(),
        (1..=5).collect::<Vec<_>>(),
        "rewound: handed out again"
    );
    spool.close().expect("close");
}

mod counts_add_up {
    //! Random appends, reads, acknowledgements and rewinds under drop-oldest eviction: in
    //! the end every appended record was delivered (acknowledged) or evicted, exactly once.

    use super::evicting;
    use outlast_spool::{Payload, Spool};
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Append(u64),
        Read(usize),
        AckRead,
        Rewind,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            // Records of 0.5 to 2 KiB: a 16 KiB segment holds about 15, so evictions come
            // often, also while records are in flight.
            10 => (500u64..2000).prop_map(Op::Append),
            3 => (1usize..20).prop_map(Op::Read),
            1 => Just(Op::AckRead),
            1 => Just(Op::Rewind),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn appended_equals_delivered_plus_evicted(ops in proptest::collection::vec(op(), 1..400)) {
            let dir = tempfile::tempdir().expect("tempdir");
            let (spool, _) = Spool::open(evicting(dir.path())).expect("open");
            let (mut appended, mut delivered, mut evicted) = (0u64, 0u64, 0u64);
            let mut in_flight = Vec::new();
            let read = |spool: &Spool, n: usize, in_flight: &mut Vec<outlast_spool::RecordId>, evicted: &mut u64| {
                let b = spool.read_batch(n, u64::MAX).expect("read");
                *evicted += b.evicted.records;
                prop_assert_eq!(b.expired.records, 0);
                prop_assert_eq!(b.corrupt_skipped, 0);
                in_flight.extend(b.records.iter().map(|r| r.id));
                Ok(b.records.is_empty())
            };
            for op in &ops {
                match *op {
                    Op::Append(size) => {
                        let a = spool
                            .append(Payload::new(vec![7u8; size as usize]))
                            .expect("append");
                        appended += 1;
                        evicted += a.evicted.records;
                    }
                    Op::Read(n) => {
                        read(&spool, n, &mut in_flight, &mut evicted)?;
                    }
                    Op::AckRead => {
                        if let Some(&last) = in_flight.last() {
                            spool.ack(last).expect("ack");
                            delivered += in_flight.len() as u64;
                            in_flight.clear();
                        }
                    }
                    Op::Rewind => {
                        spool.rewind();
                        in_flight.clear();
                    }
                }
            }
            // The end: a failed delivery of whatever was in flight, then everything delivered.
            spool.rewind();
            in_flight.clear();
            loop {
                let empty = read(&spool, 100, &mut in_flight, &mut evicted)?;
                if let Some(&last) = in_flight.last() {
                    spool.ack(last).expect("ack");
                    delivered += in_flight.len() as u64;
                    in_flight.clear();
                }
                if empty {
                    break;
                }
            }
            prop_assert_eq!(appended, delivered + evicted, "delivered {} evicted {}", delivered, evicted);
            prop_assert_eq!(spool.stats().evicted.records, evicted);
        }
    }
}

#[test]
fn a_gap_counted_once_is_not_counted_again_by_the_next_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segs = fill(dir.path(), 1000);
    let lost = records_in(&segs[1]);
    std::fs::remove_file(&segs[1]).expect("delete");
    let (spool, first) = Spool::open(small_config(dir.path())).expect("open");
    assert_eq!(first.missing_records, lost);
    let b = spool.read_batch(10, u64::MAX).expect("read");
    assert_eq!(b.corrupt_skipped, lost, "told to the first reader");
    spool.close().expect("close without delivering");
    let (spool, second) = Spool::open(small_config(dir.path())).expect("reopen");
    assert_eq!(second.missing_records, 0, "{second:?}");
    let b = spool.read_batch(10, u64::MAX).expect("read");
    assert_eq!(b.corrupt_skipped, 0, "counted once, not at every open");
    assert_eq!(deliver_all(&spool).len() as u64 + 10 + lost, 1000);
}

#[test]
fn records_lost_in_flight_are_reported_by_the_next_append_if_it_comes_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _) = Spool::open(evicting(dir.path())).expect("open");
    let (mut appended, mut evicted) = (0u64, Dropped::default());
    let in_flight = evict_during_replay(&spool, &mut appended, &mut evicted);
    spool.rewind();
    // The next thing to happen is an append, not a read.
    let a = spool.append(payload(5000)).expect("append");
    appended += 1;
    assert!(
        a.evicted.records >= in_flight.len() as u64,
        "the lost in-flight records come with this append: {:?}",
        a.evicted
    );
    evicted.records += a.evicted.records;
    let mut delivered = 0u64;
    loop {
        let b = spool.read_batch(100, u64::MAX).expect("read");
        assert_eq!(b.evicted.records, 0, "already reported by the append");
        let Some(r) = b.records.last() else { break };
        delivered += b.records.len() as u64;
        spool.ack(r.id).expect("ack");
    }
    assert_eq!(appended, delivered + evicted.records, "exactly");
    assert_eq!(spool.stats().evicted.records, evicted.records);
}

#[test]
fn losses_taken_by_a_read_that_fails_with_eio_are_reported_by_the_next_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    // Several sealed segments of expired records, then fresh ones in the active segment.
    let config = small_config(dir.path())
        .with_max_record_bytes(300)
        .with_segment_bytes(1024)
        .with_max_record_age(Some(std::time::Duration::from_secs(60)));
    let (spool, _) = Spool::open(config.clone()).expect("open");
    let mut old_records = 0u64;
    while spool.stats().records < 40 {
        spool
            .append(payload(old_records).with_created_at(old))
            .expect("append old");
        old_records += 1;
    }
    for i in 0..3 {
        let fresh = payload(1000 + i).with_created_at(std::time::SystemTime::now());
        spool.append(fresh).expect("append fresh");
    }
    spool.close().expect("close");
    // A middle segment is lost as well: recovery counts it, the first read reports it.
    let segs = fill_count(dir.path());
    let lost = records_in(&segs[1]);
    std::fs::remove_file(&segs[1]).expect("delete");

    let fs = FaultFs::new();
    let (spool, report) = Spool::open_with_fs(config, Arc::new(fs.clone())).expect("reopen");
    assert_eq!(report.missing_records, lost);
    // The read expires whole segments, takes the missing count, then the disk fails.
    fs.fail_reads(1);
    let err = spool.read_batch(100, u64::MAX).expect_err("EIO");
    assert!(matches!(err, SpoolError::Io { .. }), "{err}");
    let (mut expired, mut corrupt, mut delivered) = (0u64, 0u64, Vec::new());
    loop {
        let b = spool.read_batch(100, u64::MAX).expect("read");
        expired += b.expired.records;
        corrupt += b.corrupt_skipped;
        let Some(last) = b.records.last() else { break };
        delivered.extend(b.records.iter().map(|r| body_index(&r.payload)));
        spool.ack(last.id).expect("ack");
    }
    assert_eq!(delivered, vec![1000, 1001, 1002]);
    assert_eq!(
        corrupt, lost,
        "the missing records are reported once, after the failure"
    );
    assert_eq!(
        expired + lost,
        old_records,
        "every expired record reported once, none lost with the failed read"
    );
    let stats = spool.stats();
    assert_eq!(stats.expired.records, expired);
    assert_eq!(stats.missing_records + stats.corrupt_skipped, lost);
}

/// The segment files of lane 0, by id.
fn fill_count(root: &Path) -> Vec<PathBuf> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(root.join("lane-0"))
        .expect("lane")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs
}

mod counts_add_up_under_faults {
    //! The accounting itself, under every fault the seam and the disk can produce: failed
    //! fsyncs (durable appends written but not durable), failed reads (EIO), a full disk,
    //! bytes flipped in stored records, tails cut off while the process is down, eviction,
    //! expiry, rewinds after failed attempts, process crashes and clean reopens. After every
    //! step, in the process that is running:
    //!
    //! `found at open + appended = delivered + Σ drops(reason) + waiting`
    //!
    //! exactly (`found at open`: what recovery found waiting, damaged or missing), where the
    //! drops and `waiting` are the spool's own counters and gauge. Across the restarts,
    //! nothing is lost without a count, nothing is delivered twice, and a final drain leaves
    //! nothing waiting.

    use std::collections::HashSet;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use outlast_spool::fault::{CrashKeep, FaultFs};
    use outlast_spool::{
        Durability, FullPolicy, Payload, RecordId, Spool, SpoolConfig, SpoolStats,
    };
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// A record of `size` filler bytes; `old`: created long ago (expired when read).
        Append {
            size: usize,
            old: bool,
        },
        /// An append whose fsync fails (`FsyncEveryAppend`; a plain append otherwise).
        AppendSyncFails(usize),
        /// An append on a full disk.
        AppendDiskFull(usize),
        Read(usize),
        /// A read whose first disk read fails with EIO.
        ReadEio(usize),
        /// Acknowledges everything handed out: delivered.
        AckRead,
        /// A failed attempt: what was handed out is read again.
        Rewind,
        /// A byte of a stored record flips on disk while the spool is open.
        Flip(usize),
        /// The spool closes, the end of its last segment is cut off, it opens again.
        CutTail(usize),
        Reopen,
        /// `kill -9`: every written byte kept.
        ProcessCrash,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            10 => ((0usize..120), proptest::bool::weighted(0.2))
                .prop_map(|(size, old)| Op::Append { size, old }),
            1 => (0usize..120).prop_map(Op::AppendSyncFails),
            1 => (0usize..120).prop_map(Op::AppendDiskFull),
            4 => (1usize..6).prop_map(Op::Read),
            1 => (1usize..6).prop_map(Op::ReadEio),
            3 => Just(Op::AckRead),
            2 => Just(Op::Rewind),
            1 => any::<usize>().prop_map(Op::Flip),
            1 => (1usize..200).prop_map(Op::CutTail),
            1 => Just(Op::Reopen),
            1 => Just(Op::ProcessCrash),
        ]
    }

    /// Payload `value`: lowercase ASCII (never a frame marker), its number first.
    fn body(value: u64, size: usize) -> Vec<u8> {
        let mut b = format!("v{value:08}-").into_bytes();
        b.extend((0..size).map(|i| b'a' + ((value as usize + i) % 26) as u8));
        b
    }

    fn value_of(p: &Payload) -> u64 {
        let b = p.bytes();
        let v: u64 = std::str::from_utf8(&b[1..9])
            .expect("ascii")
            .parse()
            .expect("number");
        assert_eq!(&b[..], &body(v, b.len() - 10)[..], "payload intact");
        v
    }

    fn drops(s: &SpoolStats) -> u64 {
        s.evicted.records + s.expired.records + s.corrupt_skipped + s.missing_records
    }

    struct Harness {
        dir: PathBuf,
        config: SpoolConfig,
        fs: FaultFs,
        fsync_every: bool,
        spool: Option<Spool>,
        // This process:
        found: u64,
        appended: u64,
        delivered: u64,
        in_flight: Vec<(RecordId, u64)>,
        // The whole run:
        next_value: u64,
        appended_total: u64,
        dropped_total: u64,
        delivered_values: HashSet<u64>,
    }

    impl Harness {
        fn spool(&self) -> &Spool {
            self.spool.as_ref().expect("open")
        }

        fn open(&mut self) {
            let (spool, report) =
                Spool::open_with_fs(self.config.clone(), Arc::new(self.fs.clone())).expect("open");
            let s = spool.stats();
            assert_eq!(s.corrupt_skipped, report.corrupt_frames_skipped);
            assert_eq!(s.missing_records, report.missing_records);
            self.found = s.records + drops(&s);
            self.appended = 0;
            self.delivered = 0;
            self.in_flight.clear();
            self.spool = Some(spool);
        }

        /// Ends this process's count: what it dropped joins the run's total.
        fn end_process(&mut self) {
            if let Some(s) = &self.spool {
                self.dropped_total += drops(&s.stats());
            }
        }

        fn check(&self, op: &Op) {
            let s = self.spool().stats();
            assert_eq!(
                self.found + self.appended,
                self.delivered + drops(&s) + s.records,
                "after {op:?}: found {} + appended {} != delivered {} + dropped {} + waiting {} ({s:?})",
                self.found,
                self.appended,
                self.delivered,
                drops(&s),
                s.records
            );
        }

        fn append(&mut self, size: usize, old: bool) -> Option<outlast_spool::Appended> {
            let value = self.next_value;
            self.next_value += 1;
            let mut p = Payload::new(body(value, size));
            if old {
                p = p.with_created_at(SystemTime::now() - Duration::from_secs(3600));
            }
            let a = self.spool().append(p).ok()?;
            self.appended += 1;
            self.appended_total += 1;
            Some(a)
        }

        fn read(&mut self, n: usize) -> bool {
            let Ok(b) = self.spool().read_batch(n, u64::MAX) else {
                return false;
            };
            for r in &b.records {
                self.in_flight.push((r.id, value_of(&r.payload)));
            }
            true
        }

        fn segments(&self) -> Vec<PathBuf> {
            let mut v: Vec<PathBuf> = std::fs::read_dir(self.dir.join("lane-0"))
                .map(|d| {
                    d.filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            v
        }

        fn flip(&self, k: usize) {
            let segs = self.segments();
            if segs.is_empty() {
                return;
            }
            let seg = &segs[k % segs.len()];
            let Ok(mut bytes) = std::fs::read(seg) else {
                return;
            };
            let mut marks: Vec<usize> = (0..bytes.len().saturating_sub(10))
                .filter(|&i| {
                    bytes[i] == b'v' && bytes[i + 9] == b'-' && bytes[i + 1].is_ascii_digit()
                })
                .collect();
            if segs.len() == k % segs.len() + 1 {
                // Not the lane's last record: damage there, then a crash before the next
                // fsync point, is a torn tail to recovery (the documented window: the
                // cursor records how far the lane was written at fsync points only).
                marks.pop();
            }
            if marks.is_empty() {
                return;
            }
            let at = marks[(k / segs.len()) % marks.len()] + 3;
            // Damage does not heal: a byte damaged once stays so (flipping it back would
            // make a record counted lost readable again).
            if bytes[at] == b'#' {
                return;
            }
            bytes[at] = b'#';
            // In place, as a flipped bit on the medium: same length, same inode. (The
            // segment may have been deleted meanwhile, once delivered: nothing to damage.)
            let Ok(f) = std::fs::OpenOptions::new().write(true).open(seg) else {
                return;
            };
            std::os::unix::fs::FileExt::write_all_at(&f, &bytes[at..=at], at as u64).expect("flip");
        }

        fn cut_tail(&mut self, n: usize) {
            self.end_process();
            self.spool.take().expect("open").close().expect("close");
            if let Some(last) = self.segments().last() {
                let len = std::fs::metadata(last).map(|m| m.len()).unwrap_or(0);
                if len > 32 {
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(last)
                        .expect("open");
                    f.set_len(len.saturating_sub(n as u64).max(32))
                        .expect("cut");
                }
            }
            self.open();
        }

        fn apply(&mut self, op: &Op) {
            match op {
                Op::Append { size, old } => {
                    let _ = self.append(*size, *old);
                }
                Op::AppendSyncFails(size) => {
                    self.fs.fail_syncs(u32::MAX);
                    let a = self.append(*size, false);
                    self.fs.fail_syncs(0);
                    if self.fsync_every {
                        let a = a.expect("the frame is written even when its fsync fails");
                        assert!(!a.is_durable());
                    }
                }
                Op::AppendDiskFull(size) => {
                    self.fs.set_disk_full(true);
                    let _ = self.append(*size, false);
                    self.fs.set_disk_full(false);
                }
                Op::Read(n) => {
                    self.read(*n);
                }
                Op::ReadEio(n) => {
                    self.fs.fail_reads(1);
                    self.read(*n);
                    self.fs.fail_reads(0);
                }
                Op::AckRead => {
                    if let Some(&(last, _)) = self.in_flight.last() {
                        self.spool().ack(last).expect("ack");
                        for (_, v) in std::mem::take(&mut self.in_flight) {
                            assert!(self.delivered_values.insert(v), "{v} delivered twice");
                            self.delivered += 1;
                        }
                    }
                }
                Op::Rewind => {
                    self.spool().rewind();
                    self.in_flight.clear();
                }
                Op::Flip(k) => self.flip(*k),
                Op::CutTail(n) => self.cut_tail(*n),
                Op::Reopen => {
                    self.end_process();
                    self.spool.take().expect("open").close().expect("close");
                    self.open();
                }
                Op::ProcessCrash => {
                    self.end_process();
                    self.fs.crash(CrashKeep::All).expect("crash");
                    drop(self.spool.take());
                    self.fs.revive();
                    self.open();
                }
            }
            self.check(op);
        }

        /// Everything left is delivered: rewound, read to the end, acknowledged.
        fn drain(&mut self) {
            self.apply(&Op::Rewind);
            for _ in 0..10_000 {
                let before = self.in_flight.len();
                self.apply(&Op::Read(64));
                let read = self.in_flight.len() > before;
                self.apply(&Op::AckRead);
                if !read {
                    return;
                }
            }
            panic!("never ran dry");
        }
    }

    fn dir_config(dir: &Path, fsync_every: bool, drop_oldest: bool) -> SpoolConfig {
        SpoolConfig::new(dir)
            .with_max_record_bytes(256)
            .with_segment_bytes(1024)
            .with_spool_max_bytes(6 * 1024)
            .with_full_policy(if drop_oldest {
                FullPolicy::DropOldest
            } else {
                FullPolicy::DropNewest
            })
            .with_max_record_age(Some(Duration::from_secs(60)))
            .with_durability(if fsync_every {
                Durability::FsyncEveryAppend
            } else {
                Durability::OsWrite {
                    fsync_interval: Duration::from_secs(3600),
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        #[test]
        fn every_record_is_delivered_dropped_once_or_waiting_under_faults(
            fsync_every in any::<bool>(),
            drop_oldest in any::<bool>(),
            ops in proptest::collection::vec(op(), 1..80),
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut h = Harness {
                dir: dir.path().to_path_buf(),
                config: dir_config(dir.path(), fsync_every, drop_oldest),
                fs: FaultFs::new(),
                fsync_every,
                spool: None,
                found: 0,
                appended: 0,
                delivered: 0,
                in_flight: Vec::new(),
                next_value: 0,
                appended_total: 0,
                dropped_total: 0,
                delivered_values: HashSet::new(),
            };
            h.open();
            for op in &ops {
                h.apply(op);
            }
            h.drain();
            // A last clean restart finds nothing new, and nothing is left waiting.
            h.apply(&Op::Reopen);
            h.drain();
            let s = h.spool().stats();
            prop_assert_eq!(s.records, 0, "{:?}", s);
            h.end_process();
            let delivered = h.delivered_values.len() as u64;
            prop_assert!(
                delivered + h.dropped_total >= h.appended_total,
                "lost without a count: appended {}, delivered {}, dropped {}",
                h.appended_total, delivered, h.dropped_total
            );
        }
    }
}
