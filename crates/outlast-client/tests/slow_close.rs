//! A disk whose fdatasync takes seconds never makes `shutdown(timeout)` overrun its timeout,
//! and never blocks a runtime worker when the last client is dropped: the spool's close runs
//! on the blocking pool, and the report says when it did not finish.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{payload, spool_dir};
use outlast_client::testing::{MemoryExporter, Outcome};
use outlast_spool::fs::{SpoolFile, SpoolFs, StdFs};

/// The real file system, with every fdatasync of a data file taking `delay_ms` (0: none).
#[derive(Debug, Clone, Default)]
struct SlowSyncFs {
    delay_ms: Arc<AtomicU64>,
}

#[derive(Debug)]
struct SlowFile {
    file: Arc<dyn SpoolFile>,
    delay_ms: Arc<AtomicU64>,
}

impl SpoolFile for SlowFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.file.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<usize> {
        self.file.write_at(buf, offset)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        let ms = self.delay_ms.load(Ordering::SeqCst);
        if ms > 0 {
            std::thread::sleep(Duration::from_millis(ms));
        }
        self.file.sync_data()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)
    }
    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }
}

impl SlowSyncFs {
    fn wrap(&self, file: Arc<dyn SpoolFile>) -> Arc<dyn SpoolFile> {
        Arc::new(SlowFile {
            file,
            delay_ms: Arc::clone(&self.delay_ms),
        })
    }
}

impl SpoolFs for SlowSyncFs {
    fn create_new(&self, path: &Path) -> std::io::Result<Arc<dyn SpoolFile>> {
        StdFs.create_new(path).map(|f| self.wrap(f))
    }
    fn create_truncate(&self, path: &Path) -> std::io::Result<Arc<dyn SpoolFile>> {
        StdFs.create_truncate(path).map(|f| self.wrap(f))
    }
    fn open(&self, path: &Path, write: bool) -> std::io::Result<Arc<dyn SpoolFile>> {
        StdFs.open(path, write).map(|f| self.wrap(f))
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        StdFs.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        StdFs.remove_file(path)
    }
    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        StdFs.sync_dir(path)
    }
}

const SLOW_SYNC: Duration = Duration::from_secs(2);

/// A client on `dir` through `fs` with five records spooled (the backend down).
async fn client_with_backlog(
    dir: &Path,
    fs: &SlowSyncFs,
    exporter: &MemoryExporter,
) -> outlast_client::Client {
    exporter.set_mode(Outcome::Fail);
    let c = common::builder(dir)
        .immediate_retry_delay(Duration::ZERO)
        .build_with_spool_fs(exporter.clone(), Arc::new(fs.clone()))
        .expect("valid");
    for i in 0..5 {
        assert!(
            c.export(payload(&format!("{i}")))
                .await
                .expect("spooled")
                .is_spooled()
        );
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_within_its_timeout_while_the_spools_fsync_is_slow_and_says_not_synced() {
    let dir = spool_dir();
    let fs = SlowSyncFs::default();
    let exporter = MemoryExporter::new();
    let c = client_with_backlog(dir.path(), &fs, &exporter).await;
    fs.delay_ms
        .store(SLOW_SYNC.as_millis() as u64, Ordering::SeqCst);
    let timeout = Duration::from_millis(300);
    let start = Instant::now();
    let report = c.shutdown(timeout).await.expect("shut down");
    let took = start.elapsed();
    assert!(
        took < timeout + Duration::from_millis(700),
        "shutdown took {took:?} with a {timeout:?} timeout"
    );
    assert!(!report.synced, "the close did not finish: {report:?}");
    assert_eq!(report.remaining_records, 5);
    // The close finishes in the background: the records are there for the next client.
    fs.delay_ms.store(0, Ordering::SeqCst);
    tokio::time::sleep(SLOW_SYNC * 2).await;
    exporter.set_mode(Outcome::Accept);
    let next = common::builder(dir.path())
        .build(exporter.clone())
        .expect("valid");
    let report = next.force_flush(Duration::from_secs(10)).await;
    assert!(report.complete, "{report:?}");
    assert_eq!(common::texts(&exporter), ["0", "1", "2", "3", "4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_time_for_the_close_says_synced() {
    let dir = spool_dir();
    let fs = SlowSyncFs::default();
    let exporter = MemoryExporter::new();
    let c = client_with_backlog(dir.path(), &fs, &exporter).await;
    fs.delay_ms.store(200, Ordering::SeqCst);
    let report = c
        .shutdown(Duration::from_secs(20))
        .await
        .expect("shut down");
    assert!(report.synced, "{report:?}");
}

#[test]
fn dropping_the_last_client_never_blocks_the_runtimes_thread_on_the_disk() {
    // One thread runs the drain task and this test's timer: if the drain task closed the
    // spool inline, the timer would wait for the slow fsync.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = spool_dir();
    let fs = SlowSyncFs::default();
    let exporter = MemoryExporter::new();
    rt.block_on(async {
        let c = client_with_backlog(dir.path(), &fs, &exporter).await;
        fs.delay_ms
            .store(SLOW_SYNC.as_millis() as u64, Ordering::SeqCst);
        let start = Instant::now();
        drop(c);
        // The drain task sees the last client go and ends within these ticks.
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let took = start.elapsed();
        assert!(
            took < Duration::from_millis(1500),
            "the runtime's thread was held for {took:?}"
        );
        fs.delay_ms.store(0, Ordering::SeqCst);
        tokio::time::sleep(SLOW_SYNC * 2).await;
    });
    drop(rt);
    // The close finished in the background: the next client delivers everything.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        exporter.set_mode(Outcome::Accept);
        let next = common::builder(dir.path())
            .build(exporter.clone())
            .expect("valid");
        let report = next.force_flush(Duration::from_secs(10)).await;
        assert!(report.complete, "{report:?}");
        assert_eq!(common::texts(&exporter), ["0", "1", "2", "3", "4"]);
    });
}
