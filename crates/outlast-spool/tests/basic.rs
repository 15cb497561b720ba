//! Append, read, ack, rewind and reopen through the public API.

mod common;

use common::{body_index, payload, small_config};
use outlast_spool::{AppendErrorKind, FullPolicy, Payload, RecordId, Spool, SpoolError};

#[test]
fn appended_records_come_back_in_order_and_acked_ones_stay_gone_after_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, report) = Spool::open(small_config(dir.path())).expect("open");
    assert_eq!(report.records, 0);
    for i in 0..500 {
        let a = spool.append(payload(i)).expect("append");
        assert_eq!(a.id.seq, i + 1);
    }
    let batch = spool.read_batch(200, u64::MAX).expect("read");
    assert_eq!(batch.records.len(), 200);
    for (k, r) in batch.records.iter().enumerate() {
        assert_eq!(body_index(&r.payload), k as u64);
        assert_eq!(r.payload.bytes(), payload(k as u64).bytes());
        assert_eq!(r.payload.meta().key, payload(k as u64).meta().key);
    }
    spool.ack(batch.records[149].id).expect("ack");
    spool.close().expect("close");

    let (spool, report) = Spool::open(small_config(dir.path())).expect("reopen");
    assert_eq!(report.records, 500);
    let mut seen = Vec::new();
    loop {
        let b = spool.read_batch(64, u64::MAX).expect("read");
        if b.records.is_empty() {
            break;
        }
        seen.extend(b.records.iter().map(|r| body_index(&r.payload)));
    }
    assert_eq!(seen, (150..500).collect::<Vec<_>>());
    assert_eq!(spool.stats().records, 350);
}

#[test]
fn rewind_redelivers_unacked_records_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _) = Spool::open(small_config(dir.path())).expect("open");
    for i in 0..10 {
        spool.append(payload(i)).expect("append");
    }
    let b = spool.read_batch(6, u64::MAX).expect("read");
    spool.ack(b.records[2].id).expect("ack");
    spool.rewind();
    let b = spool.read_batch(100, u64::MAX).expect("read");
    let got: Vec<u64> = b.records.iter().map(|r| body_index(&r.payload)).collect();
    assert_eq!(got, (3..10).collect::<Vec<_>>());
}

#[test]
fn read_batch_respects_max_bytes_but_returns_at_least_one_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _) = Spool::open(small_config(dir.path())).expect("open");
    for i in 0..5 {
        spool.append(payload(i)).expect("append");
    }
    let b = spool.read_batch(100, 1).expect("read");
    assert_eq!(b.records.len(), 1);
    // Payloads 1, 2, 3 have 17, 18 and 19 bytes: two fit in 40.
    let b = spool.read_batch(100, 40).expect("read");
    assert_eq!(b.records.len(), 2);
    assert_eq!(body_index(&b.records[0].payload), 1);
    let b = spool.read_batch(100, 40).expect("read");
    assert_eq!(
        body_index(&b.records[0].payload),
        3,
        "the record that did not fit comes next"
    );
}

#[test]
fn too_large_record_is_refused_and_handed_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _) = Spool::open(small_config(dir.path())).expect("open");
    let big = Payload::new(vec![7u8; 5000]);
    let err = spool.append(big.clone()).expect_err("too large");
    assert!(
        matches!(err.kind, AppendErrorKind::TooLarge { max: 4096, .. }),
        "{err}"
    );
    assert_eq!(err.into_payload(), big);
}

#[test]
fn full_spool_refuses_newest_by_default_and_evicts_oldest_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = small_config(dir.path()).with_spool_max_bytes(48 * 1024);
    let (spool, _) = Spool::open(cfg.clone()).expect("open");
    let mut stored = 0u64;
    let err = loop {
        match spool.append(Payload::new(vec![1u8; 1000])) {
            Ok(_) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 1000, "cap never reached");
    };
    assert!(err.is_full(), "{err}");
    assert!(spool.stats().bytes <= 48 * 1024);
    spool.close().expect("close");

    let (spool, _) = Spool::open(cfg.with_full_policy(FullPolicy::DropOldest)).expect("reopen");
    let mut evicted = 0;
    for _ in 0..100 {
        evicted += spool
            .append(Payload::new(vec![2u8; 1000]))
            .expect("append evicts")
            .evicted
            .records;
    }
    assert!(evicted > 0);
    assert!(spool.stats().bytes <= 48 * 1024);
    assert_eq!(spool.stats().evicted.records, evicted);
    // The oldest data went first: what is left reads back intact, newest last.
    let b = spool.read_batch(1000, u64::MAX).expect("read");
    assert_eq!(b.records.last().map(|r| r.payload.bytes()[0]), Some(2));
    assert_eq!(b.records.len() as u64, spool.stats().records);
}

#[test]
fn ack_of_a_record_never_appended_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _) = Spool::open(small_config(dir.path())).expect("open");
    spool.append(payload(0)).expect("append");
    let err = spool
        .ack(RecordId {
            lane: spool.lane(),
            seq: 5,
        })
        .expect_err("unknown");
    assert!(matches!(err, SpoolError::UnknownRecord { .. }));
}

#[test]
fn acked_segments_are_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _) = Spool::open(small_config(dir.path())).expect("open");
    for i in 0..2000 {
        spool.append(payload(i)).expect("append");
    }
    let before = spool.stats().bytes;
    let mut last = None;
    loop {
        let b = spool.read_batch(500, u64::MAX).expect("read");
        match b.records.last() {
            Some(r) => last = Some(r.id),
            None => break,
        }
    }
    spool.ack(last.expect("records")).expect("ack");
    let s = spool.stats();
    assert_eq!(s.records, 0);
    assert!(s.bytes < before / 4, "{} vs {before}", s.bytes);
    // The background thread unlinks the files right after the ack; sync finishes it.
    spool.sync().expect("sync");
    let segs = std::fs::read_dir(dir.path().join(format!("lane-{}", spool.lane())))
        .expect("lane dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "seg"))
        })
        .count();
    assert_eq!(segs, 1, "only the active segment remains");
}

#[test]
fn spool_is_send_sync_and_errors_are_send_sync_static() {
    fn is_send_sync<T: Send + Sync>() {}
    fn is_err<T: Send + Sync + 'static>() {}
    is_send_sync::<Spool>();
    is_err::<SpoolError>();
    is_err::<outlast_spool::AppendError>();
}

#[test]
fn concurrent_appenders_with_group_commit_and_a_concurrent_reader_lose_and_repeat_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = small_config(dir.path()).with_durability(outlast_spool::Durability::FsyncEveryAppend);
    let (spool, _) = Spool::open(cfg).expect("open");
    let spool = std::sync::Arc::new(spool);
    let writers: Vec<_> = (0..4u64)
        .map(|t| {
            let s = spool.clone();
            std::thread::spawn(move || {
                for i in 0..100u64 {
                    s.append(Payload::new(format!("{t}:{i}").into_bytes()))
                        .expect("append");
                }
            })
        })
        .collect();
    let mut seen: Vec<Vec<u64>> = vec![Vec::new(); 4];
    let mut total = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while total < 400 && std::time::Instant::now() < deadline {
        let b = spool.read_batch(37, u64::MAX).expect("read");
        for r in &b.records {
            let s = String::from_utf8(r.payload.bytes().to_vec()).expect("utf8");
            let (t, i) = s.split_once(':').expect("t:i");
            seen[t.parse::<usize>().expect("t")].push(i.parse().expect("i"));
            total += 1;
        }
        if let Some(last) = b.records.last() {
            spool.ack(last.id).expect("ack");
        }
    }
    for w in writers {
        w.join().expect("writer");
    }
    for s in &seen {
        assert_eq!(
            s,
            &(0..100).collect::<Vec<_>>(),
            "each thread's records once, in order"
        );
    }
}

#[test]
fn records_older_than_max_record_age_are_skipped_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg =
        small_config(dir.path()).with_max_record_age(Some(std::time::Duration::from_secs(60)));
    let (spool, _) = Spool::open(cfg).expect("open");
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    spool
        .append(Payload::new(&b"old-1"[..]).with_created_at(old))
        .expect("append");
    spool
        .append(Payload::new(&b"old-2"[..]).with_created_at(old))
        .expect("append");
    spool.append(Payload::new(&b"fresh"[..])).expect("append");
    let b = spool.read_batch(10, u64::MAX).expect("read");
    assert_eq!(b.expired.records, 2);
    assert_eq!(b.records.len(), 1);
    assert_eq!(&b.records[0].payload.bytes()[..], b"fresh");
    assert_eq!(spool.stats().expired.records, 2);
}

#[test]
fn an_expired_record_read_ahead_of_the_ack_point_is_counted_once_across_rewinds() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Segments of a few records, so that whole expired segments go too.
    let cfg = small_config(dir.path())
        .with_max_record_bytes(200)
        .with_segment_bytes(300)
        .with_max_record_age(Some(std::time::Duration::from_secs(60)));
    let (spool, _) = Spool::open(cfg).expect("open");
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    // fresh, old, fresh, old, old, fresh: the old ones sit behind outstanding records.
    let kinds = [false, true, false, true, true, false];
    for (i, &is_old) in kinds.iter().enumerate() {
        let p = Payload::new(format!("r{i}").into_bytes());
        let p = if is_old { p.with_created_at(old) } else { p };
        spool.append(p).expect("append");
    }
    let mut expired = 0;
    // Three failed attempts: read everything, rewind.
    for _ in 0..3 {
        loop {
            let b = spool.read_batch(2, u64::MAX).expect("read");
            expired += b.expired.records;
            if b.records.is_empty() && b.expired.records == 0 {
                break;
            }
        }
        spool.rewind();
    }
    // Then one that succeeds, record by record.
    let (delivered, expired_then) = deliver_one_by_one(&spool);
    expired += expired_then;
    assert_eq!(delivered, ["r0", "r2", "r5"]);
    assert_eq!(expired, 3, "three expired records, each counted once");
    assert_eq!(spool.stats().expired.records, 3);
    assert_eq!(spool.stats().records, 0);
}

#[test]
fn an_expired_record_behind_records_in_flight_is_counted_once_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, cfg) = fresh_old_old_fresh(dir.path());
    // A reader that reads ahead of its acknowledgements: the old records are behind r0,
    // handed out and not acknowledged, so the read ends there and counts nothing.
    let first = spool.read_batch(10, u64::MAX).expect("read");
    assert_eq!(bodies(&first), ["r0"]);
    let ahead = spool.read_batch(10, u64::MAX).expect("read ahead");
    assert!(ahead.records.is_empty());
    assert_eq!((first.expired.records, ahead.expired.records), (0, 0));
    assert_eq!(spool.stats().records, 4, "r0 in flight, three waiting");
    // The process stops before r0 is delivered.
    spool.rewind();
    assert_eq!(spool.settle().expired.records, 0);
    spool.close().expect("close");

    // The next process delivers the fresh records and counts each old one once.
    let (spool, _) = Spool::open(cfg).expect("reopen");
    assert_eq!(
        spool.stats().records,
        4,
        "what the first process said was waiting"
    );
    let (delivered, expired) = deliver_one_by_one(&spool);
    assert_eq!(delivered, ["r0", "r3"]);
    assert_eq!(
        expired, 2,
        "each old record counted once, by the process that passed it"
    );
    assert_eq!(spool.stats().records, 0);
}

#[test]
fn a_read_after_the_acknowledgement_counts_the_expired_records_it_held_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, cfg) = fresh_old_old_fresh(dir.path());
    let first = spool.read_batch(10, u64::MAX).expect("read");
    assert_eq!(bodies(&first), ["r0"]);
    spool.ack(first.records[0].id).expect("ack");
    let next = spool.read_batch(10, u64::MAX).expect("read");
    assert_eq!(bodies(&next), ["r3"]);
    assert_eq!(next.expired.records, 2);
    spool.ack(next.records[0].id).expect("ack");
    assert_eq!(spool.stats().expired.records, 2);
    assert_eq!(spool.stats().records, 0);
    spool.close().expect("close");
    // Nothing is left for a later process to count.
    let (spool, _) = Spool::open(cfg).expect("reopen");
    let b = spool.read_batch(10, u64::MAX).expect("read");
    assert!(b.records.is_empty());
    assert_eq!(b.expired.records, 0);
    assert_eq!(spool.stats().records, 0);
}

/// A spool with a 60 s age limit holding r0 (fresh), r1 and r2 (an hour old), r3 (fresh).
fn fresh_old_old_fresh(dir: &std::path::Path) -> (Spool, outlast_spool::SpoolConfig) {
    let cfg = small_config(dir).with_max_record_age(Some(std::time::Duration::from_secs(60)));
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let (spool, _) = Spool::open(cfg.clone()).expect("open");
    for (i, is_old) in [false, true, true, false].into_iter().enumerate() {
        let p = Payload::new(format!("r{i}").into_bytes());
        spool
            .append(if is_old { p.with_created_at(old) } else { p })
            .expect("append");
    }
    (spool, cfg)
}

/// Reads and acknowledges one record at a time until the spool has none left: the bodies
/// delivered, and the expired records the reads counted.
fn deliver_one_by_one(spool: &Spool) -> (Vec<String>, u64) {
    let (mut delivered, mut expired) = (Vec::new(), 0);
    loop {
        let b = spool.read_batch(1, u64::MAX).expect("read");
        expired += b.expired.records;
        let Some(r) = b.records.first() else { break };
        delivered.extend(bodies(&b));
        spool.ack(r.id).expect("ack");
    }
    (delivered, expired)
}

fn bodies(b: &outlast_spool::ReadBatch) -> Vec<String> {
    b.records
        .iter()
        .map(|r| String::from_utf8_lossy(r.payload.bytes()).into_owned())
        .collect()
}

#[test]
fn pending_bytes_follow_appends_and_acks_while_file_bytes_wait_for_segment_deletion() {
    let dir = tempfile::tempdir().expect("tempdir");
    // One large segment, so that nothing is deleted while acking part of it.
    let config = outlast_spool::SpoolConfig::new(dir.path())
        .with_segment_bytes(4 * 1024 * 1024)
        .with_max_record_bytes(64 * 1024);
    let (spool, _) = Spool::open(config).expect("open");
    assert_eq!(spool.stats().pending_bytes, 0);
    let mut last = None;
    for _ in 0..100 {
        last = Some(
            spool
                .append(Payload::new(vec![7u8; 1000]))
                .expect("append")
                .id,
        );
    }
    let full = spool.stats();
    assert_eq!(full.records, 100);
    // Each framed record holds its 1000 payload bytes plus a small frame and header.
    assert!(
        (100_000..=110_000).contains(&full.pending_bytes),
        "{}",
        full.pending_bytes
    );
    let batch = spool.read_batch(50, u64::MAX).expect("read");
    spool.ack(batch.records[49].id).expect("ack half");
    let half = spool.stats();
    assert_eq!(half.records, 50);
    assert_eq!(half.pending_bytes, full.pending_bytes / 2);
    assert_eq!(half.bytes, full.bytes, "the segment file is still whole");
    let rest = spool.read_batch(100, u64::MAX).expect("read rest");
    assert_eq!(rest.records.last().map(|r| r.id), last);
    spool.ack(rest.records[49].id).expect("ack rest");
    assert_eq!(spool.stats().pending_bytes, 0);
    assert_eq!(spool.stats().records, 0);
}
