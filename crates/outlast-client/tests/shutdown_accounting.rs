//! A shutdown that stops a replay in the middle counts every record as it stands: records
//! in flight whose segment the drop-oldest policy evicted meanwhile are lost and counted
//! once as evicted, and nothing the replay had read or acknowledged goes uncounted.

mod common;

use std::io;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use common::{accounted, payload, spool_dir};
use outlast_client::testing::{MemoryExporter, Outcome};
use outlast_client::{ClientStats, Durability, FullPolicy};
use outlast_spool::fs::{SpoolFile, SpoolFs, StdFs};

#[tokio::test(start_paused = true)]
async fn records_in_flight_at_shutdown_whose_segment_was_evicted_are_counted_evicted_once() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    let c = common::builder(dir.path())
        .max_record_bytes(1024)
        .segment_bytes(4096)
        .spool_max_bytes(16 * 1024)
        .full_policy(FullPolicy::DropOldest)
        .attempt_timeout(Duration::from_secs(3600))
        .build(exporter.clone())
        .expect("valid");
    exporter.set_mode(Outcome::Fail);
    let body = |i: usize| payload(&format!("{i:04}-{}", "x".repeat(500)));
    let mut accepted = 0u64;
    for i in 0..20 {
        assert!(c.export(body(i)).await.expect("spooled").is_spooled());
        accepted += 1;
    }
    // The backend now takes requests and never answers: the replay's next attempt sends
    // the oldest record and waits (for the hour of the attempt timeout).
    exporter.set_mode(Outcome::Hang);
    let attempts = exporter.attempts();
    for _ in 0..100 {
        if exporter.attempts() > attempts {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(exporter.attempts() > attempts, "the replay is under way");
    // More records, while the backend is down: spooled at once, evicting the oldest
    // segments, the one the replay is sending from among them.
    let mut i = 20;
    while c.stats().dropped.evicted < 10 && i < 200 {
        if c.export(body(i)).await.is_ok() {
            accepted += 1;
        }
        i += 1;
    }
    assert!(c.stats().dropped.evicted >= 10, "{:?}", c.stats());
    let evicted_before = c.stats().dropped.evicted;
    // The shutdown's flush cannot finish (the backend never answers): the drain task is
    // stopped with the oldest record still in flight, its segment gone.
    let _ = c.shutdown(Duration::from_secs(2)).await;
    let s = c.stats();
    assert_eq!(accounted(&s), accepted, "{s:?}");
    assert_eq!(
        s.dropped.evicted,
        evicted_before + 1,
        "the record in flight, lost with its segment: {s:?}"
    );
    drop(c);
    // What the client says is waiting is what the next run finds.
    let (spool, _) =
        outlast_spool::Spool::open(common::spool_config_of::<MemoryExporter>(dir.path()))
            .expect("reopen");
    assert_eq!(spool.stats().records, s.spool_records, "{s:?}");
    spool.close().expect("close");
}

/// Holds writes to cursor files while closed: an acknowledgement then waits on the disk.
#[derive(Debug, Default)]
struct Gate {
    /// (closed, writers waiting)
    state: Mutex<(bool, usize)>,
    changed: Condvar,
}

impl Gate {
    fn set_closed(&self, closed: bool) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).0 = closed;
        self.changed.notify_all();
    }

    fn waiting(&self) -> usize {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).1
    }

    fn pass(&self) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.1 += 1;
        while st.0 {
            st = self
                .changed
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
        st.1 -= 1;
    }
}

/// The real file system, with writes to cursor files and reads of segment files each
/// passing a gate.
#[derive(Debug, Default)]
struct GatedFs {
    cursor_writes: Arc<Gate>,
    segment_reads: Arc<Gate>,
}

#[derive(Debug)]
struct GatedFile {
    inner: Arc<dyn SpoolFile>,
    writes: Option<Arc<Gate>>,
    reads: Option<Arc<Gate>>,
}

impl GatedFs {
    fn wrap(&self, path: &Path, inner: Arc<dyn SpoolFile>) -> Arc<dyn SpoolFile> {
        let cursor = path.file_name().is_some_and(|n| n == "cursor");
        let segment = path.extension().is_some_and(|x| x == "seg");
        Arc::new(GatedFile {
            inner,
            writes: cursor.then(|| Arc::clone(&self.cursor_writes)),
            reads: segment.then(|| Arc::clone(&self.segment_reads)),
        })
    }
}

impl SpoolFs for GatedFs {
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn SpoolFile>> {
        Ok(self.wrap(path, StdFs.create_new(path)?))
    }
    fn create_truncate(&self, path: &Path) -> io::Result<Arc<dyn SpoolFile>> {
        Ok(self.wrap(path, StdFs.create_truncate(path)?))
    }
    fn open(&self, path: &Path, write: bool) -> io::Result<Arc<dyn SpoolFile>> {
        Ok(self.wrap(path, StdFs.open(path, write)?))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdFs.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        StdFs.remove_file(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        StdFs.sync_dir(path)
    }
}

impl SpoolFile for GatedFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if let Some(g) = &self.reads {
            g.pass();
        }
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        if let Some(g) = &self.writes {
            g.pass();
        }
        self.inner.write_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
}

/// Polls `done` every 10 ms for at most 10 s.
async fn within_10s(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not within 10 s");
}

/// A client in `FsyncEveryAppend` mode (its replay's reads and acknowledgements run on the
/// blocking pool) on `fs`, with `initial_backoff`, and ten records spooled while the
/// backend fails.
async fn ten_spooled(
    dir: &Path,
    fs: &Arc<GatedFs>,
    exporter: &MemoryExporter,
    tune: impl FnOnce(outlast_client::ClientBuilder) -> outlast_client::ClientBuilder,
) -> outlast_client::Client {
    let c = tune(
        common::builder(dir)
            .durability(Durability::FsyncEveryAppend)
            .immediate_retry_delay(Duration::ZERO),
    )
    .build_with_spool_fs(exporter.clone(), Arc::clone(fs) as Arc<dyn SpoolFs>)
    .expect("valid");
    exporter.set_mode(Outcome::Fail);
    for i in 0..10 {
        assert!(
            c.export(payload(&format!("{i}")))
                .await
                .expect("spooled")
                .is_spooled()
        );
    }
    c
}

/// Waits until the spool's lock is released (the spool closed), then returns the client's
/// stats and the records waiting on disk.
async fn after_release(c: &outlast_client::Client, dir: &Path) -> (ClientStats, u64) {
    common::lane_released(dir, 0).await;
    (c.stats(), common::unacked_on_disk(dir))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_acknowledged_by_a_replay_call_that_outlives_shutdown_count_once_as_replayed() {
    let dir = spool_dir();
    let fs = Arc::new(GatedFs::default());
    let gate = Arc::clone(&fs.cursor_writes);
    let exporter = MemoryExporter::new();
    let c = ten_spooled(dir.path(), &fs, &exporter, |b| {
        b.initial_backoff(Duration::from_millis(50))
    })
    .await;
    // The backend is back; the replay delivers the oldest record and acknowledges it, and
    // the acknowledgement's cursor write waits on the disk.
    gate.set_closed(true);
    exporter.set_mode(Outcome::Accept);
    within_10s("an acknowledgement held", || gate.waiting() > 0).await;
    assert_eq!(exporter.received().len(), 1, "the oldest record, alone");

    // The shutdown cannot wait for it: it stops the drain task and leaves.
    let _ = c.shutdown(Duration::from_millis(200)).await;
    assert_eq!(c.stats().replayed, 0, "not acknowledged yet");
    // The disk answers: the acknowledgement finishes, after the shutdown.
    gate.set_closed(false);
    let (s, on_disk) = after_release(&c, dir.path()).await;
    assert_eq!(
        s.replayed, 1,
        "the record delivered and acknowledged: {s:?}"
    );
    assert_eq!(
        s.spool_records, on_disk,
        "waiting: what the next run finds: {s:?}"
    );
    assert_eq!(on_disk, 9);
    assert_eq!(accounted(&s), 10, "each once: {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_a_replay_read_found_expired_after_shutdown_stopped_it_count_once_as_expired() {
    let dir = spool_dir();
    let fs = Arc::new(GatedFs::default());
    let gate = Arc::clone(&fs.segment_reads);
    let exporter = MemoryExporter::new();
    let c = ten_spooled(dir.path(), &fs, &exporter, |b| {
        b.initial_backoff(Duration::from_secs(2))
            .max_record_age(Some(Duration::from_millis(300)))
    })
    .await;
    // While the drain task waits out its first backoff (2 s), every record grows older
    // than the age limit; then its read waits on the disk.
    tokio::time::sleep(Duration::from_millis(400)).await;
    gate.set_closed(true);
    within_10s("a read held", || gate.waiting() > 0).await;
    let _ = c.shutdown(Duration::from_millis(200)).await;
    assert_eq!(c.stats().dropped.expired, 0, "not read yet");
    gate.set_closed(false);
    let (s, on_disk) = after_release(&c, dir.path()).await;
    assert_eq!(s.dropped.expired, 10, "found expired by the read: {s:?}");
    assert_eq!((s.spool_records, on_disk), (0, 0), "{s:?}");
    assert_eq!(accounted(&s), 10, "each once: {s:?}");
    assert_eq!(exporter.received().len(), 0);
}

#[tokio::test(start_paused = true)]
async fn records_expired_behind_one_in_flight_at_shutdown_are_counted_once_by_the_next_run() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    let tune = |b: outlast_client::ClientBuilder| {
        b.max_record_age(Some(Duration::from_secs(600)))
            .attempt_timeout(Duration::from_secs(3600))
    };
    let c = tune(common::builder(dir.path()))
        .build(exporter.clone())
        .expect("valid");
    exporter.set_mode(Outcome::Fail);
    // Two fresh records, then five created an hour ago (past the age limit), all spooled.
    for text in ["first", "fresh"] {
        assert!(c.export(payload(text)).await.expect("spooled").is_spooled());
    }
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    for i in 0..5 {
        let p = payload(&format!("old-{i}")).with_created_at(old);
        assert!(c.export(p).await.expect("spooled").is_spooled());
    }
    // The backend takes the replay's first record (the replay then reads on in full), then
    // takes requests and never answers: the replay sends the second fresh record and waits,
    // and a read meets the expired ones behind it.
    exporter.set_mode(Outcome::Hang);
    exporter.push_outcomes([Outcome::Accept]);
    within_10s("the first record delivered", || {
        exporter.received().len() == 1
    })
    .await;
    within_10s("the second fresh record in flight", || {
        exporter.attempts() >= 4
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = c.shutdown(Duration::from_secs(2)).await;
    let (s, on_disk) = after_release(&c, dir.path()).await;
    // Not counted while the record before them was in flight: those six wait on disk, and
    // the client says so.
    assert_eq!((s.replayed, s.dropped.expired), (1, 0), "{s:?}");
    assert_eq!((s.spool_records, on_disk), (6, 6), "{s:?}");
    assert_eq!(accounted(&s), 7, "{s:?}");
    drop(c);

    // The next run delivers the fresh record and counts each expired one once.
    exporter.set_mode(Outcome::Accept);
    let next = tune(common::builder(dir.path()))
        .build(exporter.clone())
        .expect("valid");
    let report = next.force_flush(Duration::from_secs(30)).await;
    assert!(report.complete, "{report:?}");
    let s2 = next.stats();
    assert_eq!((s2.replayed, s2.dropped.expired), (1, 5), "{s2:?}");
    assert_eq!(s2.spool_records, 0, "{s2:?}");
    assert_eq!(common::texts(&exporter), ["first", "fresh"]);
    assert_eq!(
        s.dropped.expired + s2.dropped.expired,
        5,
        "each expired record counted once over both runs"
    );
    let report = next
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shutdown");
    assert!(report.complete, "{report:?}");
}
