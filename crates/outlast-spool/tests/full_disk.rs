//! A full disk never locks the spool: ENOSPC on every kind of write (through the fault seam,
//! from the first byte) and on a real small file system loses nothing accepted, and once the
//! records are delivered the space is freed and appends work again.

mod common;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{body_index, payload, small_config};
use outlast_spool::fault::{FaultFs, WriteFault};
use outlast_spool::{Durability, FullPolicy, Payload, Spool, SpoolConfig};

/// Reads everything, acknowledging each batch; returns the payload numbers delivered.
fn deliver_all(spool: &Spool) -> Vec<u64> {
    let mut seen = Vec::new();
    for _ in 0..10_000 {
        let batch = spool.read_batch(64, u64::MAX).expect("read");
        let Some(last) = batch.records.last() else {
            return seen;
        };
        let id = last.id;
        seen.extend(batch.records.iter().map(|r| body_index(&r.payload)));
        spool.ack(id).expect("ack");
    }
    panic!("the spool never ran dry");
}

fn segment_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for lane in std::fs::read_dir(root).expect("root") {
        let lane = lane.expect("entry").path();
        if !lane.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&lane).expect("lane") {
            let f = f.expect("entry").path();
            if f.extension().is_some_and(|e| e == "seg") {
                out.push(f);
            }
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    CursorCreate,
    SegmentCreate,
    SegmentHeader,
    Frame,
    CursorWrite,
    DirSync,
}

/// Appends 300 records (several segments) with `fault` injected on the way, then delivers
/// and acknowledges everything: every accepted record comes back, the space is freed, and a
/// new append works. `refused`: appends the fault may cost (handed back, never lost).
fn enospc_loses_nothing_accepted(fault: Fault, refused: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultFs::new();
    match fault {
        Fault::CursorCreate => fs.fail_creates(1),
        Fault::DirSync => fs.fail_dir_syncs(1),
        _ => {}
    }
    let (spool, _) = Spool::open_with_fs(small_config(dir.path()), Arc::new(fs.clone()))
        .expect("open works whatever the disk says");
    // The write faults are the appends' and the acknowledgement's: the background thread
    // (woken by each rotation, it writes the cursor when it gets to run) must not take one.
    fs.spare_sync_thread();
    match fault {
        Fault::SegmentCreate => fs.fail_creates(1),
        Fault::SegmentHeader => fs.fail_write(WriteFault::Fail(io::ErrorKind::StorageFull)),
        _ => {}
    }
    let mut accepted = Vec::new();
    let mut refusals = 0;
    for i in 0..300 {
        if i == 150 && fault == Fault::Frame {
            fs.fail_write(WriteFault::Torn {
                written: 7,
                kind: io::ErrorKind::StorageFull,
            });
        }
        match spool.append(payload(i)) {
            Ok(_) => accepted.push(i),
            Err(e) => {
                assert!(e.is_disk_full(), "{fault:?}: {e}");
                assert_eq!(body_index(&e.payload), i, "the payload is handed back");
                refusals += 1;
            }
        }
    }
    assert_eq!(refusals, refused, "{fault:?}: appends refused");
    let mut delivered = Vec::new();
    if fault == Fault::CursorWrite {
        // Two failures: the write, and its retry after freeing what was delivered.
        fs.fail_write(WriteFault::Fail(io::ErrorKind::StorageFull));
        fs.fail_write(WriteFault::Fail(io::ErrorKind::StorageFull));
        let batch = spool.read_batch(10, u64::MAX).expect("read");
        let err = spool
            .ack(batch.records[9].id)
            .expect_err("an ack the cursor could not record is reported");
        assert!(err.is_disk_full(), "{err}");
        delivered.extend(batch.records.iter().map(|r| body_index(&r.payload)));
    }
    delivered.extend(deliver_all(&spool));
    assert_eq!(
        delivered, accepted,
        "{fault:?}: every accepted record, in order"
    );
    spool.sync().expect("sync after the fault");
    assert_eq!(spool.stats().records, 0);
    assert!(
        segment_files(dir.path()).len() <= 1,
        "{fault:?}: delivered segments are deleted"
    );
    let a = spool.append(payload(1000)).expect("append after the fault");
    let b = spool.read_batch(10, u64::MAX).expect("read");
    assert_eq!(b.records.len(), 1);
    spool.ack(a.id).expect("ack");
    spool.close().expect("close");
    // And a reopen finds nothing left to deliver.
    let (spool, report) = Spool::open(small_config(dir.path())).expect("reopen");
    assert_eq!(spool.stats().records, 0, "{report:?}");
}

#[test]
fn enospc_creating_the_cursor_at_open_is_retried_by_the_first_append() {
    enospc_loses_nothing_accepted(Fault::CursorCreate, 0);
}

#[test]
fn enospc_creating_a_segment_refuses_only_that_append() {
    enospc_loses_nothing_accepted(Fault::SegmentCreate, 1);
}

#[test]
fn enospc_writing_a_segment_header_refuses_only_that_append() {
    enospc_loses_nothing_accepted(Fault::SegmentHeader, 1);
}

#[test]
fn enospc_writing_a_frame_refuses_only_that_append() {
    enospc_loses_nothing_accepted(Fault::Frame, 1);
}

#[test]
fn enospc_writing_the_cursor_fails_that_ack_and_the_next_one_records_it() {
    enospc_loses_nothing_accepted(Fault::CursorWrite, 0);
}

#[test]
fn enospc_syncing_the_directory_at_open_is_retried_by_the_first_append() {
    enospc_loses_nothing_accepted(Fault::DirSync, 0);
}

#[test]
fn a_disk_full_from_the_first_byte_takes_no_record_until_it_has_room() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultFs::new();
    fs.set_disk_full(true);
    let (spool, _) =
        Spool::open_with_fs(small_config(dir.path()), Arc::new(fs.clone())).expect("open");
    let err = spool.append(payload(0)).expect_err("no cursor, no record");
    assert!(err.is_disk_full(), "{err}");
    fs.set_disk_full(false);
    spool.append(payload(1)).expect("append once there is room");
    assert_eq!(deliver_all(&spool), vec![1]);
}

#[test]
fn a_disk_filled_during_the_first_outage_drains_and_frees_itself_while_still_full() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultFs::new();
    let (spool, _) =
        Spool::open_with_fs(small_config(dir.path()), Arc::new(fs.clone())).expect("open");
    // The first outage: nothing acknowledged yet, then the disk fills up.
    let accepted: Vec<u64> = (0..1000).collect();
    for &i in &accepted {
        spool.append(payload(i)).expect("append");
    }
    fs.set_disk_full(true);
    let err = spool.append(payload(1000)).expect_err("the disk is full");
    assert!(err.is_disk_full(), "{err}");
    let before = segment_files(dir.path()).len();
    assert!(before > 2, "several segments were filled");
    // The backend is back: everything is delivered and acknowledged, the disk still full.
    assert_eq!(deliver_all(&spool), accepted);
    spool.sync().expect("sync needs no new space");
    assert!(
        segment_files(dir.path()).len() <= 1,
        "delivered segments are deleted although the disk is full"
    );
    fs.set_disk_full(false);
    spool.append(payload(1500)).expect("appends work again");
    assert_eq!(deliver_all(&spool), vec![1500]);
    spool.close().expect("close needs no new space");
}

#[test]
fn an_fsync_interval_of_centuries_does_not_stop_the_background_thread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = small_config(dir.path()).with_durability(Durability::OsWrite {
        fsync_interval: Duration::from_nanos(10_000_000_000_000_000_000),
    });
    let (spool, _) = Spool::open(config).expect("open");
    // Rotations wake the background thread; it must survive computing its next deadline.
    for i in 0..400 {
        spool.append(payload(i)).expect("append");
    }
    spool.sync().expect("sync");
    assert_eq!(deliver_all(&spool).len(), 400);
    spool.close().expect("close");
    let config = small_config(dir.path()).with_durability(Durability::OsWrite {
        fsync_interval: Duration::MAX,
    });
    let (spool, _) = Spool::open(config).expect("open with Duration::MAX");
    spool.append(payload(1)).expect("append");
    spool.close().expect("close");
}

/// A tmpfs of 2 MiB mounted on a temporary directory, unmounted on drop.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount() -> Result<SmallFs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(SmallFs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

fn free_bytes(path: &Path) -> u64 {
    let st = rustix::fs::statvfs(path).expect("statvfs");
    st.f_bavail * st.f_frsize
}

#[test]
fn a_real_full_file_system_is_freed_by_acknowledging_and_appends_work_again() {
    let fsys = match SmallFs::mount() {
        Ok(f) => f,
        Err(reason) => {
            eprintln!(
                "SKIPPED a_real_full_file_system_is_freed_by_acknowledging_and_appends_work_again: \
                 cannot mount a small tmpfs here ({reason}); the fault-seam tests above cover \
                 the same paths"
            );
            return;
        }
    };
    let root = fsys.path().join("spool");
    let config = SpoolConfig::new(&root)
        .with_max_record_bytes(16 * 1024)
        .with_segment_bytes(64 * 1024)
        .with_spool_max_bytes(64 * 1024 * 1024)
        .with_durability(Durability::OsWrite {
            fsync_interval: Duration::from_secs(3600),
        });
    let (spool, report) = Spool::open(config.clone()).expect("open");
    assert!(
        report.spool_max_bytes < 2 * 1024 * 1024,
        "the cap is lowered to the file system's free space: {report:?}"
    );
    assert_eq!(spool.stats().spool_max_bytes, report.spool_max_bytes);
    // Something else fills the disk to the last byte.
    let ballast = fsys.path().join("ballast");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&ballast).expect("ballast");
        let block = vec![0xa5u8; 4096];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("ballast: {e}"),
            }
        }
        let len = f.metadata().expect("meta").len();
        // Give the spool back most of it: it fills that during the outage.
        f.set_len(len.saturating_sub(1024 * 1024))
            .expect("shrink ballast");
    }
    let mut accepted = 0u64;
    let mut refusal = None;
    for i in 0..10_000 {
        let p = outlast_spool::Payload::new(vec![i as u8; 1000]);
        match spool.append(p) {
            Ok(_) => accepted += 1,
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    let refusal = refusal.expect("the disk fills up");
    assert!(refusal.is_disk_full(), "{refusal}");
    assert!(accepted > 500, "about 1 MiB was spooled: {accepted}");
    let free_full = free_bytes(fsys.path());
    // The backend is back: deliver and acknowledge everything.
    let mut delivered = 0u64;
    loop {
        let b = spool.read_batch(256, u64::MAX).expect("read");
        let Some(last) = b.records.last() else { break };
        delivered += b.records.len() as u64;
        spool
            .ack(last.id)
            .expect("acknowledging needs no new space");
    }
    assert_eq!(delivered, accepted, "nothing accepted is lost");
    spool.sync().expect("sync");
    let free_after = free_bytes(fsys.path());
    assert!(
        free_after >= free_full + 900 * 1024,
        "the delivered segments' space is freed: {free_full} -> {free_after}"
    );
    for i in 0..100u8 {
        spool
            .append(outlast_spool::Payload::new(vec![i; 1000]))
            .expect("appends work again");
    }
    spool.close().expect("close");
    std::fs::remove_file(&ballast).expect("remove ballast");
    let (spool, _) = Spool::open(config).expect("reopen");
    assert_eq!(spool.stats().records, 100);
}

#[test]
fn a_cap_lowered_by_a_full_disk_rises_again_once_space_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultFs::new();
    fs.set_free_bytes(Some(0));
    let (spool, report) =
        Spool::open_with_fs(small_config(dir.path()), Arc::new(fs.clone())).expect("open");
    assert_eq!(report.spool_max_bytes, 0, "opened on a full disk");
    let err = spool.append(payload(0)).expect_err("no room");
    assert!(err.is_full(), "{err}");
    // Space comes back. The refusal just measured: the next measure waits its interval.
    fs.set_free_bytes(Some(100 * 1024 * 1024));
    assert!(
        spool
            .append(payload(1))
            .expect_err("rate-limited")
            .is_full()
    );
    std::thread::sleep(outlast_spool::CAP_REMEASURE_INTERVAL + Duration::from_millis(50));
    spool.append(payload(2)).expect("the cap rose again");
    assert_eq!(
        spool.stats().spool_max_bytes,
        small_config(dir.path()).spool_max_bytes(),
        "back to the configured cap"
    );
    assert_eq!(deliver_all(&spool), vec![2]);
}

#[test]
fn freeing_delivered_segments_measures_the_cap_again_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultFs::new();
    fs.set_free_bytes(Some(200 * 1024));
    let (spool, report) =
        Spool::open_with_fs(small_config(dir.path()), Arc::new(fs.clone())).expect("open");
    assert_eq!(report.spool_max_bytes, 180 * 1024, "90 % of 200 KiB");
    let mut accepted = 0;
    while spool.append(payload(accepted)).is_ok() {
        accepted += 1;
    }
    // The disk is emptied by others meanwhile; the refusal above measured (still 200 KiB).
    fs.set_free_bytes(Some(100 * 1024 * 1024));
    assert_eq!(deliver_all(&spool).len() as u64, accepted);
    spool.sync().expect("deletions done");
    assert_eq!(
        spool.stats().spool_max_bytes,
        small_config(dir.path()).spool_max_bytes()
    );
    for i in 0..2 * accepted {
        spool
            .append(payload(i))
            .expect("room again, beyond the old cap");
    }
}

/// Fills the file system of `path` with a file `ballast`, leaving `leave` bytes free.
fn ballast(fsys: &Path, leave: u64) -> PathBuf {
    use std::io::Write;
    let path = fsys.join("ballast");
    let mut f = std::fs::File::create(&path).expect("ballast");
    let block = vec![0xa5u8; 4096];
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("ballast: {e}"),
        }
    }
    let len = f.metadata().expect("meta").len();
    f.set_len(len.saturating_sub(leave))
        .expect("shrink ballast");
    path
}

#[test]
fn a_spool_opened_on_a_real_full_or_nearly_full_disk_takes_records_again_once_it_is_emptied() {
    for leave in [0, 200 * 1024] {
        let fsys = match SmallFs::mount() {
            Ok(f) => f,
            Err(reason) => {
                eprintln!(
                    "SKIPPED a_spool_opened_on_a_real_full_or_nearly_full_disk_takes_records_again_once_it_is_emptied: \
                     cannot mount a small tmpfs here ({reason}); the fault-seam tests above cover \
                     the same paths"
                );
                return;
            }
        };
        let root = fsys.path().join("spool");
        std::fs::create_dir(&root).expect("root");
        let weight = ballast(fsys.path(), leave);
        let config = SpoolConfig::new(&root)
            .with_max_record_bytes(16 * 1024)
            .with_segment_bytes(64 * 1024)
            .with_spool_max_bytes(64 * 1024 * 1024);
        let (spool, report) = Spool::open(config).expect("open");
        assert!(
            report.spool_max_bytes <= leave,
            "the cap follows the free space: {report:?}"
        );
        // Appends until the cap (or the disk) refuses one.
        let mut before = 0u64;
        while spool
            .append(outlast_spool::Payload::new(vec![1u8; 1000]))
            .is_ok()
        {
            before += 1;
            assert!(before < 1000, "{leave}: the cap held");
        }
        std::fs::remove_file(&weight).expect("the disk is emptied");
        std::thread::sleep(outlast_spool::CAP_REMEASURE_INTERVAL + Duration::from_millis(50));
        // 1 MiB: more than the cap the spool opened with.
        for i in 0..1000u32 {
            spool
                .append(outlast_spool::Payload::new(vec![i as u8; 1000]))
                .unwrap_or_else(|e| panic!("{leave}: append {i} once space returned: {e}"));
        }
        assert!(
            spool.stats().spool_max_bytes > 1024 * 1024,
            "{:?}",
            spool.stats()
        );
        assert_eq!(
            deliver_count(&spool),
            before + 1000,
            "{leave}: nothing lost"
        );
        spool.close().expect("close");
    }
}

/// Reads and acknowledges everything; the number of records.
fn deliver_count(spool: &Spool) -> u64 {
    let mut n = 0;
    loop {
        let b = spool.read_batch(256, u64::MAX).expect("read");
        let Some(last) = b.records.last() else {
            return n;
        };
        n += b.records.len() as u64;
        spool.ack(last.id).expect("ack");
    }
}

/// An append that evicts (drop-oldest at the cap) leaves unlinking the evicted segments to
/// the spool's background thread, as an acknowledgement does: the appending thread (a
/// runtime worker, in the client) does not wait for a large file's deletion.
#[test]
fn eviction_on_append_leaves_unlinking_the_evicted_segments_to_the_background_thread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = Arc::new(FaultFs::new());
    let cfg = small_config(dir.path())
        .with_spool_max_bytes(48 * 1024)
        .with_full_policy(FullPolicy::DropOldest);
    let (spool, _) = Spool::open_with_fs(cfg, fs.clone()).expect("open");
    let lane_dir = dir.path().join(format!("lane-{}", spool.lane()));
    let mut evicted = 0;
    for _ in 0..100 {
        evicted += spool
            .append(Payload::new(vec![2u8; 1000]))
            .expect("append evicts")
            .evicted
            .records;
    }
    assert!(evicted > 0);
    assert_eq!(spool.stats().evicted.records, evicted);
    // The background thread unlinks them promptly; wait for the files (not `sync`, which
    // would unlink what is left on this thread).
    let held = spool.stats().bytes;
    let mut on_disk = u64::MAX;
    for _ in 0..500 {
        on_disk = std::fs::read_dir(&lane_dir)
            .expect("lane dir")
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        if on_disk <= held {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        on_disk <= held,
        "{on_disk} bytes of segments on disk, {held} held"
    );
    let removers = fs.removing_threads();
    assert!(!removers.is_empty(), "nothing was unlinked");
    assert!(
        removers.iter().all(|t| t == "outlast-spool-sync"),
        "unlinked on {removers:?}"
    );
    spool.close().expect("close");
}
