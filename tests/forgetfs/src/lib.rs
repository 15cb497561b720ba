//! A test-only FUSE file system that forgets what was not made durable when the power is
//! cut: the power-loss tests run outlast on it through real system calls.
//!
//! # Model
//!
//! Everything lives in memory, in an [`Image`]: each regular file has its current contents
//! and its *durable* contents (as of its last `fsync`/`fdatasync`); each directory has its
//! current entries and its durable entries (as of its last `fsync` of the directory itself).
//! Reads and lookups see the current state. [`Mount::cut_power`] makes every later request
//! fail with `EIO` and returns what survives ([`Image::after_power_cut`]): the inodes
//! reachable from the root through durable entries, each with its durable contents. So
//!
//! - data written and not fsynced is lost;
//! - a new file whose directory was not fsynced after its creation does not exist after a
//!   cut, even if its data was fsynced (and so does a new directory, with all it holds);
//! - a rename or unlink is undone unless the directory (both directories for a move
//!   between two) was fsynced after it;
//! - permissions, owners and times are durable at once (a simplification: the product
//!   never depends on them across a crash).
//!
//! The durable state is the backing store: [`Image::write_to`] writes it out as a plain
//! directory (to inspect a failed round with `outlast inspect`) and [`Image::load`] reads
//! one back, all of it durable.
//!
//! With a seed, a cut also models writeback that was under way: each directory keeps its
//! current entries instead of its durable ones with probability ½, and each file keeps a
//! random subset of its un-synced 4 KiB pages and either length: torn and reordered writes.
//!
//! Locks: the file system does not take part in locking (it does not ask for
//! `FUSE_POSIX_LOCKS` or `FUSE_FLOCK_LOCKS`), so the kernel applies `flock` and `fcntl`
//! locks locally, per inode of the mount: they exclude each other across processes on this
//! machine, like on a local disk, and go with the process that held them.
//!
//! `statfs` reports a 4 GiB file system with what the files hold as used.

mod image;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use image::{DirData, FileData, Kind, Node};
pub use image::{Image, PAGE};

/// Attributes and entries are never cached by the kernel: every lookup asks.
const TTL: Duration = Duration::ZERO;
/// How long [`Mount::unmount`] waits for the FUSE thread to end.
const UNMOUNT_PATIENCE: Duration = Duration::from_secs(5);
/// Blocks (of [`PAGE`] bytes) the file system reports in `statfs`: 4 GiB.
const TOTAL_BLOCKS: u64 = 1 << 20;

/// State shared by the FUSE handlers and the test.
#[derive(Debug)]
struct Shared {
    image: Image,
    /// The power was cut: every request fails with `EIO`.
    cut: bool,
    /// Requests answered `EIO` because of the cut.
    refused: u64,
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The FUSE handlers over a shared [`Image`].
#[derive(Debug)]
struct ForgetFs {
    shared: Arc<Mutex<Shared>>,
}

fn attr(ino: u64, n: &Node) -> FileAttr {
    let (kind, size) = match &n.kind {
        Kind::File(f) => (FileType::RegularFile, f.data.len() as u64),
        Kind::Dir(d) => (FileType::Directory, d.entries.len() as u64),
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: n.mtime,
        mtime: n.mtime,
        ctime: n.ctime,
        crtime: n.ctime,
        kind,
        perm: n.perm,
        nlink: match n.kind {
            Kind::Dir(_) => 2,
            Kind::File(_) => n.links,
        },
        uid: n.uid,
        gid: n.gid,
        rdev: 0,
        blksize: PAGE as u32,
        flags: 0,
    }
}

/// Runs `f` on the shared state unless the power is cut.
fn with<T>(
    shared: &Mutex<Shared>,
    f: impl FnOnce(&mut Image) -> Result<T, Errno>,
) -> Result<T, Errno> {
    let mut s = lock(shared);
    if s.cut {
        s.refused += 1;
        return Err(Errno::EIO);
    }
    f(&mut s.image)
}

fn node(img: &Image, ino: u64) -> Result<&Node, Errno> {
    img.nodes.get(&ino).ok_or(Errno::ENOENT)
}

fn node_mut(img: &mut Image, ino: u64) -> Result<&mut Node, Errno> {
    img.nodes.get_mut(&ino).ok_or(Errno::ENOENT)
}

fn dir_mut(img: &mut Image, ino: u64) -> Result<&mut DirData, Errno> {
    match &mut node_mut(img, ino)?.kind {
        Kind::Dir(d) => Ok(d),
        Kind::File(_) => Err(Errno::ENOTDIR),
    }
}

fn file_mut(img: &mut Image, ino: u64) -> Result<&mut FileData, Errno> {
    match &mut node_mut(img, ino)?.kind {
        Kind::File(f) => Ok(f),
        Kind::Dir(_) => Err(Errno::EISDIR),
    }
}

fn child(img: &Image, parent: u64, name: &OsStr) -> Result<u64, Errno> {
    match &node(img, parent)?.kind {
        Kind::Dir(d) => d.entries.get(name).copied().ok_or(Errno::ENOENT),
        Kind::File(_) => Err(Errno::ENOTDIR),
    }
}

/// Adds a new inode named `name` in `parent`.
fn make(
    img: &mut Image,
    req: &Request,
    parent: u64,
    name: &OsStr,
    kind: Kind,
    mode: u32,
    umask: u32,
) -> Result<FileAttr, Errno> {
    if child(img, parent, name).is_ok() {
        return Err(Errno::EEXIST);
    }
    let ino = img.next_ino;
    img.next_ino += 1;
    let now = SystemTime::now();
    let n = Node {
        kind,
        // The low 12 bits of a mode fit in a u16.
        perm: u16::try_from(mode & !umask & 0o7777).unwrap_or(0o600),
        uid: req.uid(),
        gid: req.gid(),
        mtime: now,
        ctime: now,
        links: 1,
    };
    let a = attr(ino, &n);
    img.nodes.insert(ino, n);
    dir_mut(img, parent)?.entries.insert(name.to_owned(), ino);
    touch(img, parent);
    Ok(a)
}

fn touch(img: &mut Image, ino: u64) {
    if let Some(n) = img.nodes.get_mut(&ino) {
        let now = SystemTime::now();
        n.mtime = now;
        n.ctime = now;
    }
}

/// Removes `name` from `parent`; `dir`: it must be an (empty) directory, else a file.
fn remove(img: &mut Image, parent: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
    let ino = child(img, parent, name)?;
    match (&node(img, ino)?.kind, dir) {
        (Kind::Dir(d), true) if !d.entries.is_empty() => return Err(Errno::ENOTEMPTY),
        (Kind::Dir(_), false) => return Err(Errno::EISDIR),
        (Kind::File(_), true) => return Err(Errno::ENOTDIR),
        _ => {}
    }
    dir_mut(img, parent)?.entries.remove(name);
    let n = node_mut(img, ino)?;
    n.links = n.links.saturating_sub(1);
    touch(img, parent);
    Ok(())
}

fn rename(
    img: &mut Image,
    parent: u64,
    name: &OsStr,
    newparent: u64,
    newname: &OsStr,
    flags: RenameFlags,
) -> Result<(), Errno> {
    if flags.contains(RenameFlags::RENAME_EXCHANGE) {
        return Err(Errno::EINVAL);
    }
    let ino = child(img, parent, name)?;
    let is_dir = matches!(node(img, ino)?.kind, Kind::Dir(_));
    if let Ok(old) = child(img, newparent, newname) {
        if old == ino {
            return Ok(());
        }
        if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            return Err(Errno::EEXIST);
        }
        match (&node(img, old)?.kind, is_dir) {
            (Kind::Dir(d), true) if !d.entries.is_empty() => return Err(Errno::ENOTEMPTY),
            (Kind::Dir(_), false) => return Err(Errno::EISDIR),
            (Kind::File(_), true) => return Err(Errno::ENOTDIR),
            _ => {}
        }
        let n = node_mut(img, old)?;
        n.links = n.links.saturating_sub(1);
    }
    dir_mut(img, parent)?.entries.remove(name);
    dir_mut(img, newparent)?
        .entries
        .insert(newname.to_owned(), ino);
    touch(img, parent);
    touch(img, newparent);
    Ok(())
}

impl Filesystem for ForgetFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match with(&self.shared, |img| {
            let ino = child(img, parent.0, name)?;
            Ok(attr(ino, node(img, ino)?))
        }) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match with(&self.shared, |img| Ok(attr(ino.0, node(img, ino.0)?))) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match with(&self.shared, |img| {
            if let Some(size) = size {
                file_mut(img, ino.0)?.set_len(size);
            }
            let n = node_mut(img, ino.0)?;
            if let Some(mode) = mode {
                n.perm = u16::try_from(mode & 0o7777).unwrap_or(n.perm);
            }
            if let Some(uid) = uid {
                n.uid = uid;
            }
            if let Some(gid) = gid {
                n.gid = gid;
            }
            match mtime {
                Some(TimeOrNow::SpecificTime(t)) => n.mtime = t,
                Some(TimeOrNow::Now) => n.mtime = SystemTime::now(),
                None => {}
            }
            n.ctime = SystemTime::now();
            if size.is_some() {
                n.mtime = n.ctime;
            }
            Ok(attr(ino.0, n))
        }) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        match with(&self.shared, |img| {
            make(
                img,
                req,
                parent.0,
                name,
                Kind::Dir(DirData::default()),
                mode,
                umask,
            )
        }) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match with(&self.shared, |img| remove(img, parent.0, name, false)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match with(&self.shared, |img| remove(img, parent.0, name, true)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match with(&self.shared, |img| {
            rename(img, parent.0, name, newparent.0, newname, flags)
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match with(&self.shared, |img| node(img, ino.0).map(|_| ())) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match with(&self.shared, |img| {
            let f = file_mut(img, ino.0)?;
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(f.data.len());
            let end = start.saturating_add(size as usize).min(f.data.len());
            Ok(f.data[start..end].to_vec())
        }) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match with(&self.shared, |img| {
            file_mut(img, ino.0)?.write(offset, data);
            touch(img, ino.0);
            Ok(())
        }) {
            // A FUSE write is at most `max_write` bytes, far below u32::MAX.
            Ok(()) => reply.written(u32::try_from(data.len()).unwrap_or(u32::MAX)),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        match with(&self.shared, |_| Ok(())) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match with(&self.shared, |img| match &mut node_mut(img, ino.0)?.kind {
            Kind::File(f) => {
                f.sync();
                Ok(())
            }
            // fsync(2) on a directory opened as a file: the same as fsyncdir.
            Kind::Dir(d) => {
                d.durable = d.entries.clone();
                Ok(())
            }
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match with(&self.shared, |img| dir_mut(img, ino.0).map(|_| ())) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listed = with(&self.shared, |img| {
            let d = dir_mut(img, ino.0)?.entries.clone();
            let mut out = vec![
                (ino.0, FileType::Directory, OsStr::new(".").to_owned()),
                (ino.0, FileType::Directory, OsStr::new("..").to_owned()),
            ];
            for (name, c) in d {
                let kind = match node(img, c)?.kind {
                    Kind::Dir(_) => FileType::Directory,
                    Kind::File(_) => FileType::RegularFile,
                };
                out.push((c, kind, name));
            }
            Ok(out)
        });
        match listed {
            Ok(entries) => {
                let skip = usize::try_from(offset).unwrap_or(usize::MAX);
                for (i, (c, kind, name)) in entries.into_iter().enumerate().skip(skip) {
                    if reply.add(INodeNo(c), i as u64 + 1, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match with(&self.shared, |img| {
            let d = dir_mut(img, ino.0)?;
            d.durable = d.entries.clone();
            Ok(())
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match with(&self.shared, |img| Ok(img.used_bytes())) {
            Ok(used) => {
                let free = TOTAL_BLOCKS.saturating_sub(used.div_ceil(PAGE));
                reply.statfs(
                    TOTAL_BLOCKS,
                    free,
                    free,
                    1 << 20,
                    1 << 20,
                    PAGE as u32,
                    255,
                    PAGE as u32,
                );
            }
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        match with(&self.shared, |img| node(img, ino.0).map(|_| ())) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match with(&self.shared, |img| {
            make(
                img,
                req,
                parent.0,
                name,
                Kind::File(FileData::default()),
                mode,
                umask,
            )
        }) {
            Ok(a) => reply.created(&TTL, &a, Generation(0), FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }
}

/// Whether a FUSE file system can be mounted here, and if not why: the reason a test that
/// needs one prints with `SKIPPED`.
///
/// # Errors
///
/// The reason, when `/dev/fuse` is missing or cannot be opened (no permission).
pub fn available() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map(drop)
        .map_err(|e| format!("cannot open /dev/fuse: {e}"))
}

/// Detaches whatever is mounted at `path` (a mount left by a killed run), if anything.
/// Errors are ignored: nothing may be mounted there.
pub fn clear_stale_mount(path: &Path) {
    for (cmd, args) in [("fusermount3", &["-u", "-z"][..]), ("umount", &["-l"][..])] {
        let _ = std::process::Command::new(cmd)
            .args(args)
            .arg(path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// A fresh, empty directory to mount on, under `<temp>/outlast-forgetfs/<pid>-<n>`, removed
/// when dropped. Making one first clears what runs killed before they could unmount left
/// there: the mount points of processes that no longer exist are unmounted (lazily) and
/// removed, so a stale mount never wedges a later run.
#[derive(Debug)]
pub struct MountPoint {
    path: PathBuf,
}

impl MountPoint {
    /// Makes the directory, after clearing the dead processes' ones.
    ///
    /// # Errors
    ///
    /// The directory cannot be created.
    pub fn new() -> std::io::Result<MountPoint> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir().join("outlast-forgetfs");
        std::fs::create_dir_all(&base)?;
        if let Ok(entries) = std::fs::read_dir(&base) {
            for e in entries.flatten() {
                let name = e.file_name();
                let pid = name
                    .to_str()
                    .and_then(|n| n.split('-').next())
                    .and_then(|p| p.parse::<u32>().ok());
                if let Some(pid) = pid
                    && !Path::new("/proc").join(pid.to_string()).exists()
                {
                    clear_stale_mount(&e.path());
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("{}-{n}", std::process::id()));
        clear_stale_mount(&path);
        let _ = std::fs::remove_dir(&path);
        std::fs::create_dir(&path)?;
        Ok(MountPoint { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for MountPoint {
    fn drop(&mut self) {
        clear_stale_mount(&self.path);
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Whether a test that needs FUSE must fail rather than skip where it is missing: in CI
/// (`CI` set), which must run the power-loss tests.
pub fn required() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// A mounted forgetting file system, unmounted (lazily, so it never waits for a user) when
/// dropped or [`unmount`](Mount::unmount)ed.
#[derive(Debug)]
pub struct Mount {
    session: Option<fuser::BackgroundSession>,
    shared: Arc<Mutex<Shared>>,
    path: PathBuf,
}

impl Mount {
    /// Mounts `image` at `path` (an existing empty directory), after clearing any stale
    /// mount there.
    ///
    /// # Errors
    ///
    /// The mount failed (no `/dev/fuse`, no permission).
    pub fn new(path: &Path, image: Image) -> std::io::Result<Mount> {
        clear_stale_mount(path);
        let shared = Arc::new(Mutex::new(Shared {
            image,
            cut: false,
            refused: 0,
        }));
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("outlast-forgetfs".into()),
            fuser::MountOption::Subtype("forgetfs".into()),
        ];
        config.n_threads = Some(2);
        let session = fuser::spawn_mount(
            ForgetFs {
                shared: Arc::clone(&shared),
            },
            path,
            &config,
        )?;
        Ok(Mount {
            session: Some(session),
            shared,
            path: path.to_path_buf(),
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Cuts the power: from now on every request fails with `EIO`. Returns what survives
    /// (see [`Image::after_power_cut`]; `torn_seed` models writeback under way).
    pub fn cut_power(&self, torn_seed: Option<u64>) -> Image {
        let mut s = lock(&self.shared);
        s.cut = true;
        s.image.after_power_cut(torn_seed)
    }

    /// Whether the power was cut.
    pub fn is_cut(&self) -> bool {
        lock(&self.shared).cut
    }

    /// Requests refused with `EIO` since the cut.
    pub fn refused_since_cut(&self) -> u64 {
        lock(&self.shared).refused
    }

    /// A copy of the current state (what reads see), e.g. to compare with a cut.
    pub fn snapshot(&self) -> Image {
        lock(&self.shared).image.clone()
    }

    /// Unmounts (lazily) and waits for the FUSE thread to end.
    pub fn unmount(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(session) = self.session.take() {
            // The kernel ends the session's request loop once unmounted and no longer
            // used; a user still holding a file open would keep it going, so the wait is
            // bounded (the thread then ends with this process).
            let (tx, rx) = std::sync::mpsc::channel();
            let _ = std::thread::Builder::new()
                .name("forgetfs-unmount".into())
                .spawn(move || {
                    let _ = session.umount_and_join();
                    let _ = tx.send(());
                });
            let _ = rx.recv_timeout(UNMOUNT_PATIENCE);
        }
        clear_stale_mount(&self.path);
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests;
