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
