//! Every accepted payload is counted once: delivered (directly or replayed), dropped for one
//! reason, or still in the spool, even when the spool refuses an acknowledgement.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{accounted, payload, spool_dir, texts};
use outlast_client::testing::{MemoryExporter, Outcome};
use outlast_spool::fault::{FaultFs, WriteFault};

#[tokio::test(start_paused = true)]
async fn records_delivered_whose_acknowledgement_failed_are_counted_as_replayed_once() {
    let dir = spool_dir();
    let fs = FaultFs::new();
    let exporter = MemoryExporter::new();
    let c = common::builder(dir.path())
        .build_with_spool_fs(exporter.clone(), Arc::new(fs.clone()))
        .expect("valid");
    exporter.set_mode(Outcome::Fail);
    for i in 0..5 {
        assert!(
            c.export(payload(&format!("{i}")))
                .await
                .expect("spooled")
                .is_spooled()
        );
    }
    assert_eq!(accounted(&c.stats()), 5);

    // The next write is the cursor's, when the replayed records are acknowledged: it fails.
    // (The background thread's own cursor writes, after the drained segment is sealed, are
    // spared the fault: they would race the acknowledgement for it.)
    fs.spare_sync_thread();
    fs.fail_write(WriteFault::Fail(std::io::ErrorKind::Other));
    exporter.set_mode(Outcome::Accept);
    let report = c.force_flush(Duration::from_secs(30)).await;
    assert!(
        report.complete,
        "the end-of-flush sync wrote the cursor: {report:?}"
    );
    assert_eq!(report.ack_failures, 1);
    assert_eq!(report.delivered, 5);
    assert_eq!(
        texts(&exporter),
        ["0", "1", "2", "3", "4"],
        "each sent once"
    );

    let s = c.stats();
    assert_eq!(s.ack_failures, 1);
    assert_eq!(s.replayed, 5, "{s:?}");
    assert_eq!(s.spool_records, 0);
    assert_eq!(accounted(&s), 5, "{s:?}");

    // Nothing is delivered or counted a second time later.
    tokio::time::sleep(Duration::from_secs(120)).await;
    common::settle().await;
    let s = c.stats();
    assert_eq!(s.replayed, 5);
    assert_eq!(exporter.received_bytes().len(), 5);
    let _ = c.shutdown(Duration::from_secs(1)).await.expect("shut down");
}

#[tokio::test(start_paused = true)]
async fn a_record_whose_fsync_failed_is_spooled_once_counted_not_durable_and_delivered_once() {
    let dir = spool_dir();
    let fs = FaultFs::new();
    let exporter = MemoryExporter::new();
    let c = common::builder(dir.path())
        .durability(outlast_client::Durability::FsyncEveryAppend)
        .build_with_spool_fs(exporter.clone(), Arc::new(fs.clone()))
        .expect("valid");
    exporter.set_mode(Outcome::Fail);
    assert!(c.export(payload("0")).await.expect("spooled").is_spooled());
    // The next fsync is this append's: the frame is written and indexed, its sync fails.
    // (The background thread fsyncs the cursor every second: it is spared the fault.)
    fs.spare_sync_thread();
    fs.fail_syncs(1);
    let answer = c.export(payload("1")).await;
    assert!(
        matches!(answer, Ok(d) if d.is_spooled()),
        "in the spool, not dropped, the payload not handed back: {answer:?}"
    );
    let s = c.stats();
    assert_eq!(s.spooled, 2);
    assert_eq!(s.spooled_not_durable, 1);
    assert_eq!(s.dropped.total(), 0, "{s:?}");
    assert_eq!(s.spool_records, 2);
    assert_eq!(accounted(&s), 2, "{s:?}");

    exporter.set_mode(Outcome::Accept);
    let report = c.force_flush(Duration::from_secs(30)).await;
    assert!(report.complete, "{report:?}");
    assert_eq!(texts(&exporter), ["0", "1"], "each sent once");
    let s = c.stats();
    assert_eq!((s.replayed, s.spool_records, s.dropped.total()), (2, 0, 0));
    assert_eq!(accounted(&s), 2, "{s:?}");
    let _ = c.shutdown(Duration::from_secs(1)).await.expect("shut down");
}

#[tokio::test(start_paused = true)]
async fn one_flipped_byte_in_the_spool_is_one_corrupt_drop_for_the_client() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    {
        let c = common::client(dir.path(), &exporter);
        exporter.set_mode(Outcome::Fail);
        for i in 0..20 {
            assert!(
                c.export(payload(&format!("record-{i:04}")))
                    .await
                    .expect("spooled")
                    .is_spooled()
            );
        }
        let _ = c.shutdown(Duration::from_secs(5)).await.expect("shut down");
    }
    // One byte of record 7's payload flips on disk while no process runs.
    let lane = dir.path().join("lane-0");
    let seg = std::fs::read_dir(&lane)
        .expect("lane")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .expect("a segment");
    let mut bytes = std::fs::read(&seg).expect("read");
    let at = bytes
        .windows(11)
        .position(|w| w == b"record-0007")
        .expect("record 7 stored uncompressed");
    bytes[at + 8] ^= 0x01;
    std::fs::write(&seg, &bytes).expect("write");

    exporter.set_mode(Outcome::Accept);
    let c = common::client(dir.path(), &exporter);
    let report = c.force_flush(Duration::from_secs(30)).await;
    assert!(report.complete, "{report:?}");
    let s = c.stats();
    assert_eq!(s.replayed, 19);
    assert_eq!(
        s.dropped.corrupt, 1,
        "one damaged record, seen at open and again by the replay, one count: {s:?}"
    );
    assert_eq!(s.dropped.total(), 1);
    let _ = c.shutdown(Duration::from_secs(1)).await.expect("shut down");
}

#[tokio::test(start_paused = true)]
async fn records_of_a_lane_no_client_can_use_are_reported_stranded_not_lost() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    {
        let c = common::client(dir.path(), &exporter);
        exporter.set_mode(Outcome::Fail);
        for i in 0..4 {
            assert!(
                c.export(payload(&format!("{i}")))
                    .await
                    .expect("spooled")
                    .is_spooled()
            );
        }
        let _ = c.shutdown(Duration::from_secs(5)).await.expect("shut down");
    }
    // The lane's cursor is replaced by a directory while no process runs.
    let cursor = dir.path().join("lane-0").join("cursor");
    std::fs::remove_file(&cursor).expect("rm cursor");
    std::fs::create_dir(&cursor).expect("mkdir");
    exporter.set_mode(Outcome::Accept);
    let c = common::client(dir.path(), &exporter);
    let _ = c.force_flush(Duration::from_secs(5)).await;
    let s = c.stats();
    assert_eq!((s.stranded_lanes, s.stranded_records), (1, 4), "{s:?}");
    assert_eq!((s.spool_records, s.replayed, s.dropped.total()), (0, 0, 0));
    // Repaired: the drain task adopts the lane and delivers it.
    std::fs::remove_dir(&cursor).expect("rmdir");
    let report = c.force_flush(Duration::from_secs(30)).await;
    assert!(report.complete, "{report:?}");
    let s = c.stats();
    assert_eq!(
        (s.stranded_lanes, s.stranded_records, s.replayed),
        (0, 0, 4),
        "{s:?}"
    );
    assert_eq!(texts(&exporter), ["0", "1", "2", "3"]);
    let _ = c.shutdown(Duration::from_secs(1)).await.expect("shut down");
}

#[tokio::test(start_paused = true)]
async fn a_replay_read_that_fails_with_eio_loses_no_count_and_no_record() {
    let dir = spool_dir();
    let fs = FaultFs::new();
    let exporter = MemoryExporter::new();
    let small = || {
        common::builder(dir.path())
            .max_record_bytes(1024)
            .segment_bytes(2048)
    };
    {
        let c = small().build(exporter.clone()).expect("valid");
        exporter.set_mode(Outcome::Fail);
        for i in 0..30 {
            let p = payload(&format!("record-{i:04}-{}", "x".repeat(200)));
            assert!(c.export(p).await.expect("spooled").is_spooled());
        }
        let _ = c.shutdown(Duration::from_secs(5)).await.expect("shut down");
    }
    // A segment is lost while no process runs: recovery counts its records as missing,
    // and the first read reports them, which the client counts.
    let lane = dir.path().join("lane-0");
    let mut segs: Vec<_> = std::fs::read_dir(&lane)
        .expect("lane")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    assert!(segs.len() >= 3, "{segs:?}");
    let lost = {
        let n = outlast_spool::inspect::scan(dir.path())
            .expect("scan")
            .lanes[0]
            .segments
            .iter()
            .find(|s| s.path == segs[1])
            .map_or(0, |s| s.records);
        std::fs::remove_file(&segs[1]).expect("remove");
        n
    };
    assert!(lost > 0);
    exporter.set_mode(Outcome::Accept);
    let c = small()
        .build_with_spool_fs(exporter.clone(), Arc::new(fs.clone()))
        .expect("valid");
    assert_eq!(c.stats().stranded_lanes, 0);
    // The drain task's first read fails with EIO (it has not run yet: time is paused and
    // nothing was awaited); the next succeeds.
    fs.fail_reads(1);
    let report = c.force_flush(Duration::from_secs(60)).await;
    assert!(report.complete, "{report:?}");
    let s = c.stats();
    assert_eq!(s.dropped.corrupt, lost, "{s:?}");
    assert_eq!(s.replayed + lost, 30, "{s:?}");
    assert_eq!(accounted(&s), 30, "{s:?}");
    let _ = c.shutdown(Duration::from_secs(1)).await.expect("shut down");
}
