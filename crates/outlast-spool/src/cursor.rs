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
/// Bytes read to see both slots.
const CURSOR_FILE_READ_LEN: usize = CURSOR_SLOT_OFFSETS[1] as usize + CURSOR_RECORD_LEN;

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

/// The writable cursor of a lane we hold. Opened on the first write (a lane never
/// acknowledged has no cursor file).
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
        }
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

    /// Prepares an fsync: writes `state` if its ack point differs from the last record
    /// written, and, if anything was written since the last fsync, writes the newest state
    /// into the other slot too, so that once synced both slots hold it: a later write torn by
    /// a power loss then costs nothing acknowledged before this fsync. Returns the file to
    /// fsync (outside the lane's lock), if any; call [`CursorFile::sync_failed`] if that
    /// fsync fails.
    pub(crate) fn prepare_sync(
        &mut self,
        fs: &dyn SpoolFs,
        state: CursorState,
    ) -> io::Result<Option<Arc<dyn SpoolFile>>> {
        if state.acked_through != self.written.acked_through {
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
    }
}
