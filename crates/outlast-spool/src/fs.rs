//! The file-access seam: every segment and cursor operation goes through [`SpoolFs`], so
//! tests can inject faults (`outlast_spool::fault::FaultFs`, with the `fault-injection` feature).
//! [`StdFs`] is the real implementation.
//!
//! Lane directories and lock files are handled with `std` directly: they are not data.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

/// Permission bits of every file the spool creates: private to the user.
pub const FILE_MODE: u32 = 0o600;
/// Permission bits of every directory the spool creates: private to the user.
pub const DIR_MODE: u32 = 0o700;

/// An open spool file. Positional I/O only, so one handle can be shared by threads.
#[allow(clippy::len_without_is_empty)] // `len` is a file size, as in `std::fs::Metadata`.
pub trait SpoolFile: Send + Sync + fmt::Debug {
    /// Reads at `offset` (like `pread(2)`); may return fewer bytes than asked.
    ///
    /// # Errors
    /// Any I/O error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes at `offset` (like `pwrite(2)`); may write fewer bytes than given.
    ///
    /// # Errors
    /// Any I/O error (ENOSPC, EIO...).
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize>;
    /// Flushes written data to stable storage (`fdatasync(2)`).
    ///
    /// # Errors
    /// Any I/O error.
    fn sync_data(&self) -> io::Result<()>;
    /// Truncates or extends the file.
    ///
    /// # Errors
    /// Any I/O error.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The file's current length.
    ///
    /// # Errors
    /// Any I/O error.
    fn len(&self) -> io::Result<u64>;
}

/// File-system operations the spool needs for its data files.
pub trait SpoolFs: Send + Sync + fmt::Debug + 'static {
    /// Creates a new file (mode 0600), failing if it exists.
    ///
    /// # Errors
    /// Any I/O error.
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn SpoolFile>>;
    /// Creates or truncates a file (mode 0600) for writing.
    ///
    /// # Errors
    /// Any I/O error.
    fn create_truncate(&self, path: &Path) -> io::Result<Arc<dyn SpoolFile>>;
    /// Opens an existing file, for reading and (if `write`) writing.
    ///
    /// # Errors
    /// Any I/O error.
    fn open(&self, path: &Path, write: bool) -> io::Result<Arc<dyn SpoolFile>>;
    /// Renames `from` to `to`, replacing `to` atomically.
    ///
    /// # Errors
    /// Any I/O error.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    ///
    /// # Errors
    /// Any I/O error.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes a directory's entries (creations, renames, removals) durable.
    ///
    /// # Errors
    /// Any I/O error.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Free bytes of the file system holding `path`, for an unprivileged user (`statvfs`'s
    /// `f_bavail` blocks of `f_frsize` bytes); `None` if it cannot be measured. The spool's
    /// cap in force follows it (see [`DISK_FREE_SHARE_PERCENT`](crate::DISK_FREE_SHARE_PERCENT)).
    fn free_bytes(&self, path: &Path) -> Option<u64> {
        statvfs_free_bytes(path)
    }
}

/// Free bytes of the file system holding `path`, as [`SpoolFs::free_bytes`] measures them.
pub(crate) fn statvfs_free_bytes(path: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The real file system, through `std`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdFs;

#[derive(Debug)]
struct StdFile(File);

impl SpoolFile for StdFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        loop {
            match self.0.read_at(buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        loop {
            match self.0.write_at(buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

impl SpoolFs for StdFs {
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn SpoolFile>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .custom_flags(safe_open_flags())
            .open(path)?;
        Ok(Arc::new(StdFile(regular(f)?)))
    }
    fn create_truncate(&self, path: &Path) -> io::Result<Arc<dyn SpoolFile>> {
        // Truncation happens at open: check the type first, so that a stray FIFO or device
        // is never opened (a regular file racing in afterwards is still checked below).
        not_special(path)?;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .custom_flags(safe_open_flags())
            .open(path)?;
        Ok(Arc::new(StdFile(regular(f)?)))
    }
    fn open(&self, path: &Path, write: bool) -> io::Result<Arc<dyn SpoolFile>> {
        let f = OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(safe_open_flags())
            .open(path)?;
        Ok(Arc::new(StdFile(regular(f)?)))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
}

/// Makes the directory entry of `path` durable: fsyncs the directory that holds it. For
/// the directories the spool creates itself (its root, a lane), which do not go through
/// [`SpoolFs`]: until then a power loss can take a new directory away with every file in
/// it, fsynced or not.
///
/// A parent this user may create entries in but not read (mode `0300` and the like) cannot
/// be opened to be fsynced: that is logged, not an error (the spool worked there before it
/// fsynced parents, and the entry is then as durable as the file system makes it on its
/// own). An fsync that fails is an error.
pub(crate) fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match File::open(parent) {
        Ok(dir) => dir.sync_all(),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            tracing::warn!(
                path = %parent.display(),
                "cannot open the directory to fsync the new entry in it (no read permission): \
                 its durability is left to the file system"
            );
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Flags of every open of a spool file: never follow a symbolic link (a link inside the
/// spool could make recovery truncate a file elsewhere), and never block (opening a FIFO
/// without `O_NONBLOCK` waits for a writer forever). `O_NONBLOCK` has no effect on the
/// regular files that [`regular`] then insists on.
pub(crate) fn safe_open_flags() -> i32 {
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    // The flag bits fit in an i32 (they are an `int` in open(2)).
    i32::try_from(flags.bits()).unwrap_or(0)
}

/// The error for a spool path that is not a regular file.
pub(crate) fn not_regular_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "not a regular file (a FIFO, device, directory or symbolic link): left alone",
    )
}

/// `f` if it is a regular file.
pub(crate) fn regular(f: File) -> io::Result<File> {
    if f.metadata()?.file_type().is_file() {
        Ok(f)
    } else {
        Err(not_regular_error())
    }
}

/// Fails if `path` exists and is not a regular file (never follows a link).
fn not_special(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_file() => Err(not_regular_error()),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes all of `buf` at `offset`, looping over short writes.
pub(crate) fn write_all_at(f: &dyn SpoolFile, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match f.write_at(buf, offset)? {
            0 => return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0")),
            n => {
                buf = &buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

/// Reads until `buf` is full or end of file; returns the bytes read.
pub(crate) fn read_full_at(
    f: &dyn SpoolFile,
    buf: &mut [u8],
    mut offset: u64,
) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], offset)? {
            0 => break,
            n => {
                done += n;
                offset += n as u64;
            }
        }
    }
    Ok(done)
}
