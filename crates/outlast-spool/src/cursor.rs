//! A lane's cursor file, kept open: every acknowledgement is one `pwrite` into the slot
//! not holding the newest record; fsyncs happen on the background interval, rotation,
//! `sync` and close. The crate documentation describes the format and the guarantees.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::format::{self, CURSOR_RECORD_LEN, CURSOR_SLOT_OFFSETS, CursorChoice, CursorState};
use crate::fs::{SpoolFile, SpoolFs, read_full_at, write_all_at};

/// Name of a lane's cursor file.
pub(crate) const CURSOR_FILE: &str = "cursor";
/// Name of the temporary file the version-1 layout wrote before a rename. Never written
/// now; recognised (not reported as unknown) and removed with its lane.
pub(crate) const CURSOR_TMP_FILE: &str = "cursor.tmp";
/// Bytes read to see both slots; also the length a cursor file is given when it is
/// prepared, so that every later slot write lands on blocks that exist.
pub(crate) const CURSOR_FILE_READ_LEN: usize = CURSOR_SLOT_OFFSETS[1] as usize + CURSOR_RECORD_LEN;

/// Reads a lane's cursor file (both slots). A missing file is the initial state.
pub(crate) fn read_cursor(fs: &dyn SpoolFs, dir: &Path) -> io::Result<CursorChoice> {
    let path = dir.join(CURSOR_FILE);
    let file = match fs.open(&path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(CursorChoice::default()),
        Err(e) => return Err(e),
    };
    let mut buf = [0u8; CURSOR_FILE_READ_LEN];
    let n = read_full_at(&*file, &mut buf, 0)?;
    Ok(format::decode_cursor_file(&buf[..n]))
}

/// Makes the recovered ack point durable in both slots, before the lane is used: the
/// newest record found may never have been fsynced (its writer may have been killed before
/// its first cursor fsync, and the OS flushed the file since, or not), and the file may even
/// end before the other slot. Left so, the first two acks after open would write both slots
/// with no fsync between them, and one power loss could tear both. So the found state is
/// written into the other slot (next generation) and the file fdatasynced. Only for a lane we
/// hold the lock of; nothing to do when no slot is valid.
pub(crate) fn settle_cursor(
    fs: &dyn SpoolFs,
    dir: &Path,
    found: CursorChoice,
) -> io::Result<CursorChoice> {
    let Some(slot) = found.slot else {
        return Ok(found);
    };
    let file = fs.open(&dir.join(CURSOR_FILE), true)?;
    let generation = found.generation + 1;
    let other = slot ^ 1;
    let record = format::encode_cursor(generation, found.state);
    write_all_at(&*file, &record, CURSOR_SLOT_OFFSETS[other])?;
    file.sync_data()?;
    Ok(CursorChoice {
        generation,
        slot: Some(other),
        ..found
    })
}

/// The writable cursor of a lane we hold. [`CursorFile::prepare`] creates it (both slots
/// written) before the lane takes its first record, so that acknowledging never needs
/// space the disk may not have.
#[derive(Debug)]
pub(crate) struct CursorFile {
    path: PathBuf,
    file: Option<Arc<dyn SpoolFile>>,
    /// Generation of the newest record in the file.
    generation: u64,
    /// The slot the next write goes to: never the one holding the newest valid record.
    next_slot: usize,
    /// The state of the newest record written (or recovered).
    written: CursorState,
    /// Written since the last successful fsync.
    unsynced: bool,
    /// The file exists with both slots written and fsynced (see [`CursorFile::prepare`]).
    ready: bool,
}

impl CursorFile {
    /// The cursor of the lane in `dir`, as recovery found it.
    pub(crate) fn new(dir: &Path, found: &CursorChoice) -> CursorFile {
        CursorFile {
            path: dir.join(CURSOR_FILE),
            file: None,
            generation: found.generation,
            // Write into the other slot than the one we trust; with neither valid, either.
            next_slot: found.slot.map_or(0, |s| s ^ 1),
            written: found.state,
            unsynced: false,
            ready: false,
        }
    }

    /// Makes sure the file exists and holds both slots, written (not sparse) and fsynced,
    /// with its directory entry: from then on an acknowledgement overwrites bytes the file
    /// already has, which needs no free space. Done when a lane is taken, before it gets
    /// its first record; a lane whose cursor cannot be prepared (disk full) takes no record.
    pub(crate) fn prepare(&mut self, fs: &dyn SpoolFs) -> io::Result<()> {
        if self.ready {
            return Ok(());
        }
        let dir = self.path.parent().map(Path::to_path_buf);
        let file = self.file(fs)?;
        if file.len()? < CURSOR_FILE_READ_LEN as u64 {
            // Both slots in one write: the state in slot 0, then (newer) in slot 1.
            let mut bytes = [0u8; CURSOR_FILE_READ_LEN];
            let slot = |i: usize| usize::try_from(CURSOR_SLOT_OFFSETS[i]).unwrap_or(0);
            let first = format::encode_cursor(self.generation + 1, self.written);
            let second = format::encode_cursor(self.generation + 2, self.written);
            bytes[slot(0)..slot(0) + CURSOR_RECORD_LEN].copy_from_slice(&first);
            bytes[slot(1)..slot(1) + CURSOR_RECORD_LEN].copy_from_slice(&second);
            write_all_at(&*file, &bytes, 0)?;
            self.generation += 2;
            self.next_slot = 0;
        }
        file.sync_data()?;
        // Always (not only when created here): an earlier attempt may have created the
        // file and then failed to make its directory entry durable.
        if let Some(dir) = dir {
            fs.sync_dir(&dir)?;
        }
        self.unsynced = false;
        self.ready = true;
        Ok(())
    }

    /// The path, for error messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The state of the newest record successfully written (or recovered).
    pub(crate) fn written(&self) -> CursorState {
        self.written
    }

    fn file(&mut self, fs: &dyn SpoolFs) -> io::Result<Arc<dyn SpoolFile>> {
        if let Some(f) = &self.file {
            return Ok(f.clone());
        }
        // We hold the lane lock: nobody else creates or writes this file.
        let f = match fs.open(&self.path, true) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs.create_new(&self.path)?,
            Err(e) => return Err(e),
        };
        self.file = Some(f.clone());
        Ok(f)
    }

    /// Writes `state` into the free slot with one positional write (no fsync). On failure
    /// the slot may be torn; the other slot still holds the previous record, and the next
    /// write goes to the same free slot again.
    pub(crate) fn write(&mut self, fs: &dyn SpoolFs, state: CursorState) -> io::Result<()> {
        let file = self.file(fs)?;
        let generation = self.generation + 1;
        let record = format::encode_cursor(generation, state);
        write_all_at(&*file, &record, CURSOR_SLOT_OFFSETS[self.next_slot])?;
        self.generation = generation;
        self.next_slot ^= 1;
        self.written = state;
        self.unsynced = true;
        Ok(())
    }

    /// Prepares an fsync: writes `state` if it differs from the last record written (its
    /// ack point, or how far the lane is written: every fsync point records both), and, if anything was written since the last fsync, writes the newest state
    /// into the other slot too, so that once synced both slots hold it: a later write torn by
    /// a power loss then costs nothing acknowledged before this fsync. Returns the file to
    /// fsync (outside the lane's lock), if any; call [`CursorFile::sync_failed`] if that
    /// fsync fails.
    pub(crate) fn prepare_sync(
        &mut self,
        fs: &dyn SpoolFs,
        state: CursorState,
    ) -> io::Result<Option<Arc<dyn SpoolFile>>> {
        if state != self.written {
            self.write(fs, state)?;
        }
        if !self.unsynced {
            return Ok(None);
        }
        self.write(fs, self.written)?;
        self.unsynced = false;
        Ok(self.file.clone())
    }

    /// The fsync after [`CursorFile::prepare_sync`] failed: the next sync retries it.
    pub(crate) fn sync_failed(&mut self) {
        self.unsynced = true;
    }

    /// Forgets the open file (the lane is being released).
    pub(crate) fn close(&mut self) {
        self.file = None;
        self.ready = false;
    }
}
