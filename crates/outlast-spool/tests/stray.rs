//! One stray thing costs that entry, never the spool: FIFOs, directories, symbolic links
//! and plain files where spool files or lanes are expected are skipped (never opened
//! blocking, never followed), reported, and the rest of the spool works. Every open and
//! scan here runs under a time limit, so a hang fails the test instead of stalling it.

mod common;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use common::{body_index, payload, small_config};
use outlast_spool::{RecoveryReport, Spool, inspect};

const LIMIT: Duration = Duration::from_secs(20);

/// Runs `f` on its own thread; fails the test if it takes longer than [`LIMIT`] (a blocking
/// open of a FIFO would never return).
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(LIMIT)
        .unwrap_or_else(|_| panic!("{what} did not return within {LIMIT:?}: it hangs"))
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// A spool with records 0..10 in lane 0, closed.
fn spool_with_ten(root: &Path) -> PathBuf {
    let (spool, _) = Spool::open(small_config(root)).expect("open");
    for i in 0..10 {
        spool.append(payload(i)).expect("append");
    }
    spool.close().expect("close");
    root.join("lane-0")
}

fn open_bounded(root: &Path) -> (Spool, RecoveryReport) {
    let config = small_config(root);
    bounded("Spool::open", move || Spool::open(config).expect("open"))
}

fn scan_bounded(root: &Path) -> inspect::Inspection {
    let root = root.to_path_buf();
    bounded("inspect::scan", move || inspect::scan(&root).expect("scan"))
}

fn deliver_all(spool: &Spool) -> Vec<u64> {
    let mut seen = Vec::new();
    loop {
        let b = spool.read_batch(100, u64::MAX).expect("read");
        let Some(last) = b.records.last() else {
            return seen;
        };
        let id = last.id;
        seen.extend(b.records.iter().map(|r| body_index(&r.payload)));
        spool.ack(id).expect("ack");
    }
}

#[test]
fn a_fifo_named_like_a_segment_is_skipped_and_never_opened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lane = spool_with_ten(dir.path());
    let fifo = lane.join("00000000000000000050.seg");
    mkfifo(&fifo);
    let scan = scan_bounded(dir.path());
    assert!(scan.lanes[0].skipped_entries.contains(&fifo));
    assert!(!scan.is_healthy());
    let (spool, report) = open_bounded(dir.path());
    assert!(report.skipped_entries.contains(&fifo), "{report:?}");
    assert_eq!(deliver_all(&spool), (0..10).collect::<Vec<_>>());
    spool.append(payload(20)).expect("append");
    assert_eq!(deliver_all(&spool), vec![20]);
}

#[test]
fn a_fifo_or_directory_at_the_cursor_costs_that_lane_not_the_spool() {
    for kind in ["fifo", "dir"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let lane = spool_with_ten(dir.path());
        let cursor = lane.join("cursor");
        std::fs::remove_file(&cursor).expect("remove cursor");
        if kind == "fifo" {
            mkfifo(&cursor);
        } else {
            std::fs::create_dir(&cursor).expect("mkdir");
        }
        let scan = scan_bounded(dir.path());
        assert!(!scan.is_healthy(), "{kind}");
        let (spool, report) = open_bounded(dir.path());
        assert_eq!(report.unusable_lanes, vec![0], "{kind}: {report:?}");
        assert_ne!(spool.lane(), 0, "{kind}: another lane is taken");
        spool.append(payload(30)).expect("append to the new lane");
        assert_eq!(deliver_all(&spool), vec![30], "{kind}");
        // The unusable lane's records are left on disk, not deleted.
        assert_eq!(
            scan_bounded(dir.path()).lanes[0].unacked_records(),
            10,
            "{kind}"
        );
    }
}

#[test]
fn a_directory_or_fifo_at_the_lock_or_named_like_a_segment_costs_only_that() {
    for kind in ["lock-dir", "lock-fifo", "segment-dir"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let lane = spool_with_ten(dir.path());
        match kind {
            "lock-dir" => {
                std::fs::remove_file(lane.join("lock")).expect("rm lock");
                std::fs::create_dir(lane.join("lock")).expect("mkdir");
            }
            "lock-fifo" => {
                std::fs::remove_file(lane.join("lock")).expect("rm lock");
                mkfifo(&lane.join("lock"));
            }
            _ => std::fs::create_dir(lane.join("00000000000000000060.seg")).expect("mkdir"),
        }
        let (spool, report) = open_bounded(dir.path());
        spool.append(payload(40)).expect("append");
        let got = deliver_all(&spool);
        if kind == "segment-dir" {
            assert_eq!(spool.lane(), 0, "{kind}");
            assert_eq!(report.skipped_entries.len(), 1, "{kind}: {report:?}");
            let mut want: Vec<u64> = (0..10).collect();
            want.push(40);
            assert_eq!(got, want, "{kind}");
        } else {
            assert_ne!(
                spool.lane(),
                0,
                "{kind}: the lane without a usable lock is skipped"
            );
            assert_eq!(got, vec![40], "{kind}");
        }
        let _ = scan_bounded(dir.path());
    }
}

#[test]
fn a_plain_file_where_a_lane_belongs_is_skipped_and_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    spool_with_ten(dir.path());
    let stray = dir.path().join("lane-7");
    std::fs::write(&stray, b"not a lane").expect("write");
    let scan = scan_bounded(dir.path());
    assert!(scan.skipped_entries.contains(&stray));
    let (spool, report) = open_bounded(dir.path());
    assert!(report.skipped_entries.contains(&stray), "{report:?}");
    assert_eq!(deliver_all(&spool), (0..10).collect::<Vec<_>>());
    assert_eq!(std::fs::read(&stray).expect("read"), b"not a lane");
}

#[test]
fn symbolic_links_inside_the_spool_are_never_followed_and_nothing_outside_is_touched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("outside");
    let lane = spool_with_ten(dir.path());
    // A segment-named link to a file outside, whose content looks like a torn segment: a
    // recovery that followed it would truncate it.
    let victim = outside.path().join("precious");
    let mut bytes = std::fs::read(lane.join("00000000000000000001.seg")).expect("read seg");
    bytes.extend_from_slice(b"OLRC torn tail that recovery would cut");
    std::fs::write(&victim, &bytes).expect("write victim");
    let link = lane.join("00000000000000000090.seg");
    std::os::unix::fs::symlink(&victim, &link).expect("symlink");
    // And a lane that is a link to a directory outside.
    let outside_lane = outside.path().join("lane");
    std::fs::create_dir(&outside_lane).expect("mkdir");
    let lane_link = dir.path().join("lane-3");
    std::os::unix::fs::symlink(&outside_lane, &lane_link).expect("symlink lane");

    let (spool, report) = open_bounded(dir.path());
    assert!(report.skipped_entries.contains(&link), "{report:?}");
    assert!(report.skipped_entries.contains(&lane_link), "{report:?}");
    assert_eq!(deliver_all(&spool), (0..10).collect::<Vec<_>>());
    spool.close().expect("close");
    assert_eq!(
        std::fs::read(&victim).expect("read victim"),
        bytes,
        "the file outside is untouched"
    );
    assert_eq!(
        std::fs::read_dir(&outside_lane).expect("dir").count(),
        0,
        "nothing is created through a linked lane"
    );
}

#[test]
fn a_lane_whose_cursor_is_a_directory_is_reported_stranded_with_its_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lane = spool_with_ten(dir.path());
    let cursor = lane.join("cursor");
    std::fs::remove_file(&cursor).expect("remove cursor");
    std::fs::create_dir(&cursor).expect("mkdir");
    let scan = scan_bounded(dir.path());
    assert!(scan.lanes[0].is_unusable());
    assert_eq!(scan.stranded_records(), 10);
    let (spool, report) = open_bounded(dir.path());
    assert_eq!(report.unusable_lanes, vec![0]);
    assert_eq!(report.stranded_records, 10, "{report:?}");
    let stats = spool.stats();
    assert_eq!((stats.stranded_lanes, stats.stranded_records), (1, 10));
    assert_eq!(stats.records, 0, "not deliverable here");
    // Looking for released lanes again finds the same lane: the gauge stays, not doubled.
    spool.adopt_released().expect("adopt");
    spool.adopt_released().expect("adopt");
    let stats = spool.stats();
    assert_eq!((stats.stranded_lanes, stats.stranded_records), (1, 10));
    // Repaired, the lane is adopted and delivered; nothing is stranded any more.
    std::fs::remove_dir(&cursor).expect("rmdir");
    assert_eq!(spool.adopt_released().expect("adopt"), 1);
    let stats = spool.stats();
    assert_eq!((stats.stranded_lanes, stats.stranded_records), (0, 0));
    assert_eq!(deliver_all(&spool), (0..10).collect::<Vec<_>>());
}

#[test]
fn a_segment_renamed_beyond_u64_is_delivered_in_its_place_and_reported_misplaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lane = spool_with_ten(dir.path());
    let seg = first_segment(&lane);
    let renamed = lane.join("99999999999999999999.seg");
    std::fs::rename(&seg, &renamed).expect("rename");
    let scan = scan_bounded(dir.path());
    assert!(!scan.is_healthy(), "verify must not say no damage");
    assert_eq!(scan.lanes[0].misplaced_segments, vec![renamed.clone()]);
    assert_eq!(
        (scan.stranded_records(), scan.lanes[0].missing_records),
        (0, 0)
    );
    assert_eq!(scan.unacked_records(), 10);
    let (spool, report) = open_bounded(dir.path());
    assert_eq!(
        report.misplaced_segments,
        vec![renamed.clone()],
        "{report:?}"
    );
    assert_eq!((report.stranded_records, report.missing_records), (0, 0));
    spool.append(payload(50)).expect("append");
    assert_eq!(
        deliver_all(&spool),
        (0..10).chain([50]).collect::<Vec<_>>(),
        "every record once, in order"
    );
    spool.sync().expect("sync");
    assert!(
        !renamed.exists(),
        "delivered, then deleted like any segment"
    );
}

#[test]
fn a_renamed_segment_that_cannot_be_placed_strands_its_lane_and_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lane = spool_with_ten(dir.path());
    let seg = first_segment(&lane);
    let renamed = lane.join("7.seg");
    std::fs::rename(&seg, &renamed).expect("rename");
    // Its header's CRC is damaged: nothing says which segment it is.
    let mut bytes = std::fs::read(&renamed).expect("read");
    bytes[10] ^= 0xff;
    std::fs::write(&renamed, &bytes).expect("write");
    let scan = scan_bounded(dir.path());
    assert!(!scan.is_healthy());
    assert!(scan.lanes[0].is_unusable());
    assert_eq!(scan.lanes[0].stranded_files, vec![renamed.clone()]);
    assert_eq!(scan.stranded_records(), 10);
    let (spool, report) = open_bounded(dir.path());
    assert_eq!(report.unusable_lanes, vec![0], "{report:?}");
    assert_eq!(report.stranded_files, vec![renamed.clone()]);
    assert_eq!(report.stranded_records, 10);
    assert_eq!(report.missing_records, 0, "on disk, not lost");
    let stats = spool.stats();
    assert_eq!((stats.stranded_lanes, stats.stranded_records), (1, 10));
    // Renamed to its segment id (and its header repaired), the lane is taken again.
    bytes[10] ^= 0xff;
    std::fs::write(&seg, &bytes).expect("restore");
    std::fs::remove_file(&renamed).expect("remove");
    assert_eq!(spool.adopt_released().expect("adopt"), 1);
    assert_eq!(spool.stats().stranded_records, 0);
    assert_eq!(deliver_all(&spool), (0..10).collect::<Vec<_>>());
}

/// The first segment file of a lane directory.
fn first_segment(lane: &std::path::Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(lane)
        .expect("lane")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs.remove(0)
}
