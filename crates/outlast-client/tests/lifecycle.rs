//! Start-up, restart, shutdown, drop and degraded operation of the client.

mod common;

use std::sync::{Arc, Weak};
use std::time::Duration;

use common::{client, payload, settle, spool_dir, texts};
use outlast_client::testing::{MemoryExporter, Outcome};
use outlast_client::{
    ClientBuilder, ConfigError, Delivery, DropError, DropReason, ExportError, Exporter, Payload,
    ShutdownError,
};
use outlast_spool::Spool;
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn a_new_client_delivers_what_an_earlier_one_left_in_the_spool() {
    let dir = spool_dir();
    let names: Vec<String> = (0..10).map(|i| format!("old{i}")).collect();
    {
        let down = MemoryExporter::new();
        down.set_mode(Outcome::Fail);
        let a = client(dir.path(), &down);
        for n in &names {
            assert_eq!(
                a.export(payload(n)).await.expect("spooled"),
                Delivery::Spooled
            );
        }
        // Dropped without shutdown: nothing spooled may be lost.
    }
    common::lane_released(dir.path(), 0).await;

    let up = MemoryExporter::new();
    let b = client(dir.path(), &up);
    let s = b.stats();
    assert!(s.backlog, "starts in backlog mode");
    assert_eq!(s.spool_records, 10);
    // New payloads queue behind the old ones.
    assert_eq!(
        b.export(payload("new")).await.expect("queued"),
        Delivery::Spooled
    );
    let report = b.force_flush(Duration::from_secs(30)).await;
    assert!(report.complete, "{report:?}");
    let mut expected = names.clone();
    expected.push("new".into());
    assert_eq!(texts(&up), expected);
}

#[tokio::test(start_paused = true)]
async fn the_drain_task_starts_at_once_when_the_spool_has_records() {
    let dir = spool_dir();
    {
        let down = MemoryExporter::new();
        down.set_mode(Outcome::Fail);
        let a = client(dir.path(), &down);
        assert!(a.export(payload("x")).await.expect("spooled").is_spooled());
    }
    common::lane_released(dir.path(), 0).await;
    let up = MemoryExporter::new();
    let b = client(dir.path(), &up);
    let start = Instant::now();
    settle().await;
    assert_eq!(texts(&up), ["x"]);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(b.stats().replayed, 1);
}

#[tokio::test(start_paused = true)]
async fn shutdown_refuses_later_exports_keeps_the_backlog_and_releases_the_spool() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    let c = client(dir.path(), &exporter);
    let other_handle = c.clone();
    exporter.set_mode(Outcome::Fail);
    assert!(c.export(payload("a")).await.expect("spooled").is_spooled());
    assert!(c.export(payload("b")).await.expect("spooled").is_spooled());

    // While the client runs, its lane is locked: another opener gets a different lane.
    {
        let (_spool, report) =
            Spool::open(common::spool_config_of::<MemoryExporter>(dir.path())).expect("open");
        assert_ne!(report.lane, 0);
    }

    let start = Instant::now();
    let report = c
        .shutdown(Duration::from_secs(2))
        .await
        .expect("clean shutdown");
    assert!(start.elapsed() <= Duration::from_secs(2) + Duration::from_millis(20));
    assert!(!report.complete);
    assert_eq!(report.remaining_records, 2);
    assert!(exporter.shutdown_called());

    // Any clone refuses, and hands the payload back.
    match other_handle.export(payload("late")).await {
        Err(DropError::ShutDown { payload }) => assert_eq!(payload.bytes().as_ref(), b"late"),
        other => panic!("expected ShutDown, got {other:?}"),
    }
    assert_eq!(c.stats().dropped.shut_down, 1);
    assert!(c.stats().shut_down);
    assert!(matches!(
        c.shutdown(Duration::from_secs(1)).await,
        Err(ShutdownError::AlreadyShutDown)
    ));
    let flushed = c.force_flush(Duration::from_secs(5)).await;
    assert!(!flushed.complete);
    assert_eq!(flushed.elapsed, Duration::ZERO);

    // The lock is released: lane 0 is free again, and it still holds both records.
    let (spool, report) =
        Spool::open(common::spool_config_of::<MemoryExporter>(dir.path())).expect("reopen");
    assert_eq!(report.lane, 0);
    assert_eq!(report.records, 2);
    drop(spool);
}

#[tokio::test(start_paused = true)]
async fn shutdown_delivers_what_it_can_within_its_timeout() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    let c = client(dir.path(), &exporter);
    exporter.set_mode(Outcome::Fail);
    assert!(c.export(payload("a")).await.expect("spooled").is_spooled());
    exporter.set_mode(Outcome::Accept);
    let report = c.shutdown(Duration::from_secs(5)).await.expect("clean");
    assert!(report.complete, "{report:?}");
    assert_eq!(report.delivered, 1);
    assert_eq!(texts(&exporter), ["a"]);
}

/// An exporter whose lifetime a test can observe.
struct Tracked {
    _alive: Arc<()>,
    inner: MemoryExporter,
}

impl Exporter for Tracked {
    async fn export(&self, payload: &Payload) -> Result<(), ExportError> {
        self.inner.export(payload).await
    }
}

fn tracked(inner: &MemoryExporter) -> (Tracked, Weak<()>) {
    let alive = Arc::new(());
    let weak = Arc::downgrade(&alive);
    (
        Tracked {
            _alive: alive,
            inner: inner.clone(),
        },
        weak,
    )
}

#[tokio::test(start_paused = true)]
async fn the_drain_task_ends_when_the_last_client_is_dropped() {
    let dir = spool_dir();
    let inner = MemoryExporter::new();
    inner.set_mode(Outcome::Fail);
    let (exporter, alive) = tracked(&inner);
    let c = common::builder(dir.path()).build(exporter).expect("valid");
    let clone = c.clone();
    // Leave the drain task waiting out a backoff.
    assert!(c.export(payload("a")).await.expect("spooled").is_spooled());
    settle().await;
    drop(c);
    settle().await;
    assert!(
        alive.upgrade().is_some(),
        "a clone still holds the pipeline"
    );
    drop(clone);
    common::lane_released(dir.path(), 0).await;
    assert!(
        alive.upgrade().is_none(),
        "the drain task ended and released the exporter"
    );
    // And the spool with it: lane 0 can be taken again.
    let (_spool, report) =
        Spool::open(common::spool_config_of::<Tracked>(dir.path())).expect("reopen");
    assert_eq!(report.lane, 0);
    assert_eq!(report.records, 1);
}

#[tokio::test(start_paused = true)]
async fn a_spool_path_that_is_a_file_leaves_the_client_working_without_a_spool() {
    let dir = spool_dir();
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"x").expect("write file");
    let exporter = MemoryExporter::new();
    let c = common::builder(&file)
        .build(exporter.clone())
        .expect("an unusable spool is not a build error");
    assert!(!c.stats().spool_available());

    assert_eq!(
        c.export(payload("a")).await.expect("delivered"),
        Delivery::Delivered
    );
    exporter.set_mode(Outcome::Fail);
    let err = c.export(payload("b")).await.expect_err("dropped");
    assert_eq!(err.reason(), DropReason::SpoolUnavailable);
    assert_eq!(err.into_payload().bytes().as_ref(), b"b");
    let s = c.stats();
    assert_eq!(s.dropped.spool_unavailable, 1);
    assert_eq!(s.exported, 1);
    let report = c.force_flush(Duration::from_secs(1)).await;
    assert!(report.complete);
    assert_eq!(texts(&exporter), ["a"]);
}

#[tokio::test(start_paused = true)]
async fn an_unwritable_spool_directory_leaves_the_client_working_without_a_spool() {
    use std::os::unix::fs::PermissionsExt;
    let dir = spool_dir();
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).expect("mkdir");
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).expect("chmod");
    let target = if std::fs::write(ro.join("probe"), b"x").is_err() {
        ro.join("spool")
    } else {
        // Permissions do not stop this user (root): use a file system nobody can write.
        std::path::PathBuf::from("/proc/outlast-unwritable/spool")
    };
    assert!(
        std::fs::create_dir_all(&target).is_err(),
        "{} is writable after all",
        target.display()
    );
    let exporter = MemoryExporter::new();
    let c = common::builder(&target)
        .build(exporter.clone())
        .expect("builds anyway");
    assert!(!c.stats().spool_available());
    assert!(
        c.export(payload("a"))
            .await
            .expect("delivered")
            .is_delivered()
    );
    exporter.set_mode(Outcome::Fail);
    let err = c.export(payload("b")).await.expect_err("dropped");
    assert_eq!(err.reason(), DropReason::SpoolUnavailable);
    assert!(matches!(
        err,
        DropError::SpoolUnavailable {
            source: outlast_client::SpoolFault::Open(_),
            ..
        }
    ));
    assert_eq!(c.stats().dropped.spool_unavailable, 1);
}

#[test]
fn building_outside_a_runtime_is_a_configuration_error_unless_one_is_given() {
    let dir = spool_dir();
    let err = ClientBuilder::new()
        .spool_dir(dir.path())
        .build(MemoryExporter::new())
        .expect_err("no runtime");
    assert!(matches!(
        err,
        ConfigError::Invalid {
            param: "runtime",
            ..
        }
    ));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let c = ClientBuilder::new()
        .spool_dir(dir.path())
        .runtime(rt.handle().clone())
        .build(MemoryExporter::new())
        .expect("given a runtime");
    let d = rt.block_on(c.export(payload("a"))).expect("delivered");
    assert_eq!(d, Delivery::Delivered);
}

#[tokio::test]
async fn bad_settings_from_the_environment_name_the_variable() {
    let dir = spool_dir();
    let vars = [
        (
            "OUTLAST_SPOOL_DIR".to_string(),
            dir.path().display().to_string(),
        ),
        ("OUTLAST_MAX_IN_FLIGHT".to_string(), "0".to_string()),
    ];
    let err = ClientBuilder::from_env_vars(vars)
        .expect("parses")
        .build(MemoryExporter::new())
        .expect_err("zero in flight rejected");
    assert!(
        matches!(
            err,
            ConfigError::Invalid {
                param: "OUTLAST_MAX_IN_FLIGHT",
                ..
            }
        ),
        "{err}"
    );
    let err = ClientBuilder::from_env_vars([(
        "OUTLAST_ATTEMPT_TIMEOUT".to_string(),
        "ten seconds".to_string(),
    )])
    .expect_err("unparsable");
    assert!(err.to_string().contains("OUTLAST_ATTEMPT_TIMEOUT"), "{err}");
}

#[tokio::test]
async fn fsync_every_append_mode_spools_on_the_blocking_pool() {
    let dir = spool_dir();
    let exporter = MemoryExporter::new();
    let c = common::builder(dir.path())
        .durability(outlast_client::Durability::FsyncEveryAppend)
        .immediate_retry_delay(Duration::from_millis(1))
        .build(exporter.clone())
        .expect("valid");
    exporter.set_mode(Outcome::Fail);
    for i in 0..5 {
        assert_eq!(
            c.export(payload(&format!("{i}"))).await.expect("spooled"),
            Delivery::Spooled
        );
    }
    exporter.set_mode(Outcome::Accept);
    let report = c.force_flush(Duration::from_secs(10)).await;
    assert!(report.complete, "{report:?}");
    assert_eq!(texts(&exporter), ["0", "1", "2", "3", "4"]);
}

/// A file system that holds the opening of segment files in `lane-1` until released: an
/// adoption of that lane stays under way as long as a test wants.
#[derive(Debug, Clone, Default)]
struct Gate {
    state: Arc<(std::sync::Mutex<GateState>, std::sync::Condvar)>,
}

#[derive(Debug, Default)]
struct GateState {
    closed: bool,
    waiting: usize,
}

impl Gate {
    fn close(&self) {
        self.lock().closed = true;
    }

    fn open(&self) {
        self.lock().closed = false;
        self.state.1.notify_all();
    }

    fn waiting(&self) -> usize {
        self.lock().waiting
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Blocks (at most 20 s) while closed, for a segment of lane 1.
    fn pass(&self, path: &std::path::Path) {
        let in_lane_1 = path.parent().and_then(|p| p.file_name()) == Some("lane-1".as_ref());
        if !in_lane_1 || path.extension() != Some("seg".as_ref()) {
            return;
        }
        let mut st = self.lock();
        st.waiting += 1;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while st.closed && std::time::Instant::now() < deadline {
            st = self
                .state
                .1
                .wait_timeout(st, Duration::from_millis(50))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        st.waiting -= 1;
    }
}

impl outlast_spool::fs::SpoolFs for Gate {
    fn create_new(
        &self,
        path: &std::path::Path,
    ) -> std::io::Result<Arc<dyn outlast_spool::fs::SpoolFile>> {
        outlast_spool::fs::StdFs.create_new(path)
    }
    fn create_truncate(
        &self,
        path: &std::path::Path,
    ) -> std::io::Result<Arc<dyn outlast_spool::fs::SpoolFile>> {
        outlast_spool::fs::StdFs.create_truncate(path)
    }
    fn open(
        &self,
        path: &std::path::Path,
        write: bool,
    ) -> std::io::Result<Arc<dyn outlast_spool::fs::SpoolFile>> {
        self.pass(path);
        outlast_spool::fs::StdFs.open(path, write)
    }
    fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
        outlast_spool::fs::StdFs.rename(from, to)
    }
    fn remove_file(&self, path: &std::path::Path) -> std::io::Result<()> {
        outlast_spool::fs::StdFs.remove_file(path)
    }
    fn sync_dir(&self, path: &std::path::Path) -> std::io::Result<()> {
        outlast_spool::fs::StdFs.sync_dir(path)
    }
}

/// An exporter that notes, when dropped, whether an open was still held at `gate`.
struct Watched {
    _alive: Arc<()>,
    gate: Gate,
    dropped_while_held: Arc<std::sync::atomic::AtomicBool>,
}

impl Exporter for Watched {
    async fn export(&self, _payload: &Payload) -> Result<(), ExportError> {
        Ok(())
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if self.gate.waiting() > 0 {
            self.dropped_while_held
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_client_ends_its_drain_task_only_once_an_adoption_a_flush_left_running_returned()
{
    let dir = spool_dir();
    let gate = Gate::default();
    let watched = Watched {
        _alive: Arc::new(()),
        gate: gate.clone(),
        dropped_while_held: Arc::default(),
    };
    let dropped_while_held = Arc::clone(&watched.dropped_while_held);
    let alive = Arc::downgrade(&watched._alive);
    let c = common::builder(dir.path())
        .identity("svc")
        .build_with_spool_fs(watched, Arc::new(gate.clone()))
        .expect("valid");
    // Another process of the same service leaves a lane with records and exits.
    {
        let config = outlast_spool::SpoolConfig::new(dir.path()).with_identity(Some("svc".into()));
        let (spool, report) = Spool::open(config).expect("open");
        assert_eq!(report.lane, 1, "lane 0 is the client's");
        for i in 0..10 {
            spool.append(payload(&format!("left {i}"))).expect("append");
        }
        spool.close().expect("close");
    }
    // A flush too short for the adoption it starts: the adoption stays under way, held at
    // the gate.
    gate.close();
    let _ = c.force_flush(Duration::from_millis(1)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while gate.waiting() == 0 {
        assert!(std::time::Instant::now() < deadline, "the adoption started");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(c);
    // The gate opens once the pipeline (its drain task) is gone or, at the latest, after a
    // moment: a drain task that does not wait for the adoption ends at once.
    let grace = std::time::Instant::now() + Duration::from_millis(200);
    while alive.upgrade().is_some() && std::time::Instant::now() < grace {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    gate.open();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while alive.upgrade().is_some() {
        assert!(std::time::Instant::now() < deadline, "the drain task ended");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(
        !dropped_while_held.load(std::sync::atomic::Ordering::SeqCst),
        "the drain task ended while the adoption was still under way"
    );
    // And the spool went with it.
    common::lane_released(dir.path(), 0).await;
    common::lane_released(dir.path(), 1).await;
}
