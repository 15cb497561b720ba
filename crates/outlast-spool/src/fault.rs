//! A [`SpoolFs`] for tests that injects faults (ENOSPC, EIO, short and torn writes, failed
//! fsyncs, failed reads) and simulates a machine crash (bytes written since the last fsync are lost, or a
//! prefix of them is kept; so are overwrites of bytes already synced, such as cursor slots).
//! Not for production use: available with the `fault-injection` feature only.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::fs::{SpoolFile, SpoolFs, StdFs};

/// A fault to inject into the next write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFault {
    /// The write fails with this error and writes nothing.
    Fail(io::ErrorKind),
    /// The write stores only the first `written` bytes and reports that (a short write); the
    /// write after it fails with the error.
    ShortThenFail {
        /// Bytes stored by the short write.
        written: usize,
        /// Error of the following write.
        kind: io::ErrorKind,
    },
    /// The write stores the first `written` bytes, then fails with the error (a torn write:
    /// the partial bytes stay in the file).
    Torn {
        /// Bytes stored before the failure.
        written: usize,
        /// The error reported.
        kind: io::ErrorKind,
    },
}

/// What a simulated crash keeps of the bytes written since each file's last fsync.
///
/// Two kinds of unsynced writes are tracked per file: bytes past its synced length (cut
/// back) and overwrites of bytes within it (undone, newest first, restoring what the file
/// held before).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashKeep {
    /// Nothing: every unsynced byte is lost, every unsynced overwrite undone (a power loss
    /// before the OS wrote anything back).
    Nothing,
    /// Everything (a process crash, or the OS flushed it all in time).
    All,
    /// Per file, chosen from this seed: a prefix of the appended bytes, and the first
    /// overwrites in write order, the first overwrite not kept being torn (a prefix of its
    /// new bytes kept).
    Prefix(u64),
}

#[derive(Debug, Default)]
struct State {
    writes: VecDeque<WriteFault>,
    pending_error: Option<io::ErrorKind>,
    sync_failures: u32,
    /// Faults armed are not taken by the spool's background sync thread.
    spare_sync_thread: bool,
    create_failures: u32,
    set_len_failures: u32,
    dir_sync_failures: u32,
    read_failures: u32,
    /// What `free_bytes` answers (`None`: the real file system's figure).
    free_bytes: Option<Option<u64>>,
    /// Every write that would grow a file, every creation and every extension fails with
    /// ENOSPC; overwrites of bytes a file already has succeed (as on a real full disk).
    disk_full: bool,
    dead: bool,
    /// The name of the thread that made each deletion, in order (`""`: an unnamed thread).
    removed_on: Vec<String>,
    /// Durable length of each file created or synced through this fs.
    synced: HashMap<PathBuf, u64>,
    /// Unsynced overwrites of durable bytes, per file, oldest first: (offset, old bytes).
    undo: HashMap<PathBuf, Vec<(u64, Vec<u8>)>>,
}

/// The fault-injecting file system. Clones share their state.
#[derive(Clone, Default)]
pub struct FaultFs {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for FaultFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultFs").finish_non_exhaustive()
    }
}

/// Whether the calling thread is a spool's background sync thread.
fn on_sync_thread() -> bool {
    std::thread::current().name() == Some(crate::background::SYNC_THREAD_NAME)
}

fn err(kind: io::ErrorKind) -> io::Error {
    let code = match kind {
        io::ErrorKind::StorageFull => Some(28), // ENOSPC
        io::ErrorKind::ReadOnlyFilesystem => Some(30),
        _ => None,
    };
    match code {
        Some(c) => io::Error::from_raw_os_error(c),
        None => io::Error::new(kind, "injected fault"),
    }
}

impl FaultFs {
    /// A fault-free instance (faults are armed with the methods below).
    pub fn new() -> FaultFs {
        FaultFs::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next write (after any already armed) gets `fault`.
    pub fn fail_write(&self, fault: WriteFault) {
        self.lock().writes.push_back(fault);
    }

    /// The next `n` fsyncs fail with EIO.
    pub fn fail_syncs(&self, n: u32) {
        self.lock().sync_failures = n;
    }

    /// From now on, the write and fsync faults armed are not taken by the spool's background
    /// thread (its interval syncs and its cursor writes after a rotation run on their own
    /// schedule), so that a test can aim a fault at an append's or an acknowledgement's I/O.
    pub fn spare_sync_thread(&self) {
        self.lock().spare_sync_thread = true;
    }

    /// The next `n` reads of file data fail with EIO.
    pub fn fail_reads(&self, n: u32) {
        self.lock().read_failures = n;
    }

    /// Makes [`SpoolFs::free_bytes`] answer `free` (`None`: not measurable) instead of the
    /// real file system's figure, until [`FaultFs::measure_real_free_bytes`].
    pub fn set_free_bytes(&self, free: Option<u64>) {
        self.lock().free_bytes = Some(free);
    }

    /// Makes [`SpoolFs::free_bytes`] measure the real file system again.
    pub fn measure_real_free_bytes(&self) {
        self.lock().free_bytes = None;
    }

    /// The next `n` file creations fail with ENOSPC.
    pub fn fail_creates(&self, n: u32) {
        self.lock().create_failures = n;
    }

    /// The next `n` directory fsyncs fail with ENOSPC (as a journal with no room can).
    pub fn fail_dir_syncs(&self, n: u32) {
        self.lock().dir_sync_failures = n;
    }

    /// Makes the disk full (or not): while full, every file creation, every write past a
    /// file's end and every extension fails with ENOSPC; overwrites of bytes a file already
    /// has, reads, fsyncs and deletions still work, as on a real full disk.
    pub fn set_disk_full(&self, full: bool) {
        self.lock().disk_full = full;
    }

    /// The names of the threads that deleted files through this fs, one per deletion, in
    /// order (an unnamed thread as `""`): tests check which room unlinks.
    pub fn removing_threads(&self) -> Vec<String> {
        self.lock().removed_on.clone()
    }

    /// The next `n` truncations fail with EIO.
    pub fn fail_set_lens(&self, n: u32) {
        self.lock().set_len_failures = n;
    }

    /// Simulates a crash: from now on every operation fails with EIO, and every file's bytes
    /// written since its last fsync are cut (or overwrites undone) as `keep` says. Call
    /// [`FaultFs::revive`] before reopening.
    ///
    /// # Errors
    /// If a file cannot be truncated.
    // Kept whole (test-only): the two kinds of unsynced writes share one random stream, so
    // a seed replays the same crash.
    pub fn crash(&self, keep: CrashKeep) -> io::Result<()> {
        let mut st = self.lock();
        st.dead = true;
        let mut rng = match keep {
            CrashKeep::Prefix(seed) => seed | 1,
            _ => 1,
        };
        for (path, &synced) in &st.synced {
            let Ok(meta) = std::fs::metadata(path) else {
                continue;
            };
            let len = meta.len();
            if len <= synced {
                continue;
            }
            let extra = len - synced;
            let kept = match keep {
                CrashKeep::Nothing => 0,
                CrashKeep::All => extra,
                CrashKeep::Prefix(_) => {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng % (extra + 1)
                }
            };
            // A file can vanish between the two calls: a background deletion that passed
            // its liveness check just before the crash.
            let f = match std::fs::OpenOptions::new().write(true).open(path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            f.set_len(synced + kept)?;
        }
        let undo = std::mem::take(&mut st.undo);
        for (path, entries) in undo {
            let n = entries.len() as u64;
            let kept = match keep {
                CrashKeep::Nothing => 0,
                CrashKeep::All => n,
                CrashKeep::Prefix(_) => {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng % (n + 1)
                }
            };
            let kept = usize::try_from(kept).unwrap_or(usize::MAX);
            let Some(undone) = entries.get(kept..).filter(|u| !u.is_empty()) else {
                continue;
            };
            let f = match std::fs::OpenOptions::new().write(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            // Newest first, so that the oldest undone write ends up restored last.
            for (i, (offset, old)) in undone.iter().enumerate().rev() {
                let torn = if i == 0 && matches!(keep, CrashKeep::Prefix(_)) {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    usize::try_from(rng % (old.len() as u64 + 1)).unwrap_or(0)
                } else {
                    0
                };
                std::os::unix::fs::FileExt::write_all_at(&f, &old[torn..], offset + torn as u64)?;
            }
        }
        Ok(())
    }

    /// Ends a simulated crash: operations work again, armed faults are cleared, and every
    /// file's current length counts as durable.
    pub fn revive(&self) {
        let mut st = self.lock();
        st.dead = false;
        st.writes.clear();
        st.pending_error = None;
        st.sync_failures = 0;
        st.create_failures = 0;
        st.set_len_failures = 0;
        st.dir_sync_failures = 0;
        st.read_failures = 0;
        st.disk_full = false;
        st.synced.clear();
        st.undo.clear();
    }

    fn check_dead(&self) -> io::Result<()> {
        if self.lock().dead {
            Err(err(io::ErrorKind::Other))
        } else {
            Ok(())
        }
    }

    /// A file creation's checks: fails after a crash, or with ENOSPC while armed.
    fn check_create(&self) -> io::Result<()> {
        let mut st = self.lock();
        if st.dead {
            return Err(err(io::ErrorKind::Other));
        }
        if st.create_failures > 0 {
            st.create_failures -= 1;
            return Err(err(io::ErrorKind::StorageFull));
        }
        if st.disk_full {
            return Err(err(io::ErrorKind::StorageFull));
        }
        Ok(())
    }

    fn wrap(&self, path: &Path, inner: Arc<dyn SpoolFile>, created: bool) -> Arc<dyn SpoolFile> {
        if created {
            self.lock().synced.insert(path.to_path_buf(), 0);
        }
        Arc::new(FaultFile {
            fs: self.clone(),
            path: path.to_path_buf(),
            inner,
        })
    }
}

#[derive(Debug)]
struct FaultFile {
    fs: FaultFs,
    path: PathBuf,
    inner: Arc<dyn SpoolFile>,
}

impl FaultFile {
    /// Remembers what a write of `len` bytes at `offset` overwrites of the file's durable
    /// bytes, so that a crash can undo it.
    fn note_overwrite(&self, offset: u64, len: usize) -> io::Result<()> {
        let mut st = self.fs.lock();
        let Some(&synced) = st.synced.get(&self.path) else {
            return Ok(());
        };
        if offset >= synced || len == 0 {
            return Ok(());
        }
        let end = synced.min(offset + len as u64);
        let mut old = vec![0u8; usize::try_from(end - offset).unwrap_or(0)];
        let n = crate::fs::read_full_at(&*self.inner, &mut old, offset)?;
        old.truncate(n);
        st.undo
            .entry(self.path.clone())
            .or_default()
            .push((offset, old));
        Ok(())
    }
}

impl SpoolFile for FaultFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        {
            let mut st = self.fs.lock();
            if st.dead {
                return Err(err(io::ErrorKind::Other));
            }
            if st.read_failures > 0 {
                st.read_failures -= 1;
                return Err(io::Error::from_raw_os_error(5)); // EIO
            }
        }
        self.inner.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        let fault = {
            let mut st = self.fs.lock();
            if st.dead {
                return Err(err(io::ErrorKind::Other));
            }
            if let Some(kind) = st.pending_error.take() {
                return Err(err(kind));
            }
            if st.disk_full && offset + buf.len() as u64 > self.inner.len()? {
                return Err(err(io::ErrorKind::StorageFull));
            }
            if st.spare_sync_thread && on_sync_thread() {
                None
            } else {
                st.writes.pop_front()
            }
        };
        match fault {
            None => {
                self.note_overwrite(offset, buf.len())?;
                self.inner.write_at(buf, offset)
            }
            Some(WriteFault::Fail(kind)) => Err(err(kind)),
            Some(WriteFault::ShortThenFail { written, kind }) => {
                let n = written.min(buf.len().saturating_sub(1));
                self.note_overwrite(offset, n)?;
                let n = self.inner.write_at(&buf[..n], offset)?;
                self.fs.lock().pending_error = Some(kind);
                Ok(n)
            }
            Some(WriteFault::Torn { written, kind }) => {
                let n = written.min(buf.len());
                self.note_overwrite(offset, n)?;
                self.inner.write_at(&buf[..n], offset)?;
                Err(err(kind))
            }
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        {
            let mut st = self.fs.lock();
            if st.dead {
                return Err(err(io::ErrorKind::Other));
            }
            if st.sync_failures > 0 && !(st.spare_sync_thread && on_sync_thread()) {
                st.sync_failures -= 1;
                return Err(err(io::ErrorKind::Other));
            }
        }
        self.inner.sync_data()?;
        let len = self.inner.len()?;
        let mut st = self.fs.lock();
        st.synced.insert(self.path.clone(), len);
        st.undo.remove(&self.path);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        {
            let mut st = self.fs.lock();
            if st.dead {
                return Err(err(io::ErrorKind::Other));
            }
            if st.set_len_failures > 0 {
                st.set_len_failures -= 1;
                return Err(err(io::ErrorKind::Other));
            }
            if st.disk_full && len > self.inner.len()? {
                return Err(err(io::ErrorKind::StorageFull));
            }
        }
        self.inner.set_len(len)?;
        let mut st = self.fs.lock();
        if let Some(s) = st.synced.get_mut(&self.path) {
            *s = (*s).min(len);
        }
        if let Some(entries) = st.undo.get_mut(&self.path) {
            entries.retain_mut(|(offset, old)| {
                old.truncate(usize::try_from(len.saturating_sub(*offset)).unwrap_or(usize::MAX));
                !old.is_empty()
            });
        }
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        self.fs.check_dead()?;
        self.inner.len()
    }
}

impl SpoolFs for FaultFs {
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn SpoolFile>> {
        self.check_create()?;
        let f = StdFs.create_new(path)?;
        Ok(self.wrap(path, f, true))
    }

    fn create_truncate(&self, path: &Path) -> io::Result<Arc<dyn SpoolFile>> {
        self.check_create()?;
        let f = StdFs.create_truncate(path)?;
        Ok(self.wrap(path, f, true))
    }

    fn open(&self, path: &Path, write: bool) -> io::Result<Arc<dyn SpoolFile>> {
        self.check_dead()?;
        let f = StdFs.open(path, write)?;
        if write {
            // From now on, bytes beyond the current length are not durable until synced.
            let len = f.len()?;
            self.lock().synced.entry(path.to_path_buf()).or_insert(len);
        }
        Ok(self.wrap(path, f, false))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check_dead()?;
        StdFs.rename(from, to)?;
        let mut st = self.lock();
        match st.synced.remove(from) {
            Some(s) => {
                st.synced.insert(to.to_path_buf(), s);
            }
            None => {
                st.synced.remove(to);
            }
        }
        match st.undo.remove(from) {
            Some(u) => {
                st.undo.insert(to.to_path_buf(), u);
            }
            None => {
                st.undo.remove(to);
            }
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.check_dead()?;
        StdFs.remove_file(path)?;
        let mut st = self.lock();
        let thread = std::thread::current();
        st.removed_on.push(thread.name().unwrap_or("").to_owned());
        st.synced.remove(path);
        st.undo.remove(path);
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        {
            let mut st = self.lock();
            if st.dead {
                return Err(err(io::ErrorKind::Other));
            }
            if st.dir_sync_failures > 0 {
                st.dir_sync_failures -= 1;
                return Err(err(io::ErrorKind::StorageFull));
            }
        }
        StdFs.sync_dir(path)
    }

    fn free_bytes(&self, path: &Path) -> Option<u64> {
        match self.lock().free_bytes {
            Some(free) => free,
            None => StdFs.free_bytes(path),
        }
    }
}
