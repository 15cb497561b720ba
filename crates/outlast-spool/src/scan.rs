//! Reading frames forward through a segment with a reusable window buffer, resynchronising
//! after damage. Shared by recovery, the reader and `inspect`.

use std::io;
use std::sync::Arc;

use outlast_core::{Payload, PayloadMeta};

use crate::format::{FRAME_PREFIX_LEN, Parse, find_marker, parse_frame};
use crate::fs::SpoolFile;

/// A valid frame found by [`FrameReader::next`].
#[derive(Debug)]
pub(crate) struct Found {
    /// Frame length.
    pub(crate) len: u64,
    /// Sequence number.
    pub(crate) seq: u64,
    /// Metadata.
    pub(crate) meta: PayloadMeta,
    /// The payload, if asked for.
    pub(crate) payload: Option<Payload>,
    /// A damaged region skipped just before this frame, as (from, to) offsets.
    pub(crate) skipped: Option<(u64, u64)>,
}

/// What [`FrameReader::next`] returns.
#[derive(Debug)]
pub(crate) enum Next {
    /// A valid frame.
    Frame(Found),
    /// No valid frame between the last one and the end. `valid_end` is where the last valid
    /// frame ended; bytes from there to the end are damaged or torn (if any).
    End { valid_end: u64, end: u64 },
}

/// Forward frame reader over one segment file.
#[derive(Debug)]
pub(crate) struct FrameReader {
    file: Arc<dyn SpoolFile>,
    buf: Vec<u8>,
    buf_start: u64,
    lo: usize,
    hi: usize,
    end: u64,
    /// Frames must have a larger sequence number than this (guards against resynchronising
    /// onto a frame-like byte sequence inside a payload).
    last_seq: u64,
    last_frame_lo: Option<(usize, u64)>,
    /// Where the last valid frame ended (or the start position).
    valid_end: u64,
}

impl FrameReader {
    /// A reader starting at `start`, reading no further than `end`, using `chunk`-byte reads.
    pub(crate) fn new(
        file: Arc<dyn SpoolFile>,
        start: u64,
        end: u64,
        chunk: usize,
        last_seq: u64,
    ) -> Self {
        FrameReader {
            file,
            buf: vec![0; chunk.max(4096)],
            buf_start: start,
            lo: 0,
            hi: 0,
            end,
            last_seq,
            last_frame_lo: None,
            valid_end: start,
        }
    }

    /// Moves the read limit (the active segment grows).
    pub(crate) fn set_end(&mut self, end: u64) {
        self.end = end.max(self.pos());
    }

    /// The current position.
    pub(crate) fn pos(&self) -> u64 {
        self.buf_start + self.lo as u64
    }

    /// Puts the frame just returned back, so the next call returns it again.
    pub(crate) fn unread_last(&mut self) {
        if let Some((lo, seq)) = self.last_frame_lo.take() {
            self.lo = lo;
            self.valid_end = self.buf_start + lo as u64;
            self.last_seq = seq;
        }
    }

    fn abs(&self, i: usize) -> u64 {
        self.buf_start + i as u64
    }

    /// Makes `need` bytes available from `lo`, or as many as there are up to `end`.
    fn fill(&mut self, need: usize) -> io::Result<()> {
        if self.hi - self.lo >= need {
            return Ok(());
        }
        if self.buf.len() - self.lo < need {
            self.buf.copy_within(self.lo..self.hi, 0);
            self.buf_start += self.lo as u64;
            self.hi -= self.lo;
            self.lo = 0;
            if self.buf.len() < need {
                self.buf.resize(need, 0);
            }
        }
        while self.hi - self.lo < need && self.abs(self.hi) < self.end {
            let room = self.buf.len() - self.hi;
            let left = usize::try_from(self.end - self.abs(self.hi)).unwrap_or(usize::MAX);
            let want = room.min(left);
            let at = self.abs(self.hi);
            let n = self
                .file
                .read_at(&mut self.buf[self.hi..self.hi + want], at)?;
            if n == 0 {
                // The file is shorter than we were told: stop there.
                self.end = at;
                break;
            }
            self.hi += n;
        }
        Ok(())
    }

    /// The next valid frame, skipping (and reporting) damaged bytes.
    ///
    /// # Errors
    /// Only read errors of the file.
    // Kept whole: parse-or-resynchronise is one loop over one window; split, the window's
    // indices would have to be handed back and forth.
    pub(crate) fn next(&mut self, want_payload: bool) -> io::Result<Next> {
        self.last_frame_lo = None;
        let mut skipped_from: Option<u64> = None;
        loop {
            if self.pos() >= self.end {
                return Ok(Next::End {
                    valid_end: self.valid_end,
                    end: self.end.max(self.pos()),
                });
            }
            // Try to parse a frame at lo.
            let mut need = FRAME_PREFIX_LEN;
            let parsed = loop {
                self.fill(need)?;
                match parse_frame(&self.buf[self.lo..self.hi]) {
                    Parse::Frame(f) if f.seq > self.last_seq => break Some(f),
                    Parse::Frame(_) | Parse::Bad => break None,
                    Parse::NeedMore(n) => {
                        if self.pos() + n as u64 > self.end || n <= self.hi - self.lo {
                            break None;
                        }
                        need = n;
                    }
                }
            };
            if let Some(f) = parsed {
                let offset = self.pos();
                let payload = want_payload.then(|| f.payload(&self.buf[self.lo..self.hi]));
                self.last_frame_lo = Some((self.lo, self.last_seq));
                self.lo += f.len;
                self.last_seq = f.seq;
                self.valid_end = self.pos();
                return Ok(Next::Frame(Found {
                    len: f.len as u64,
                    seq: f.seq,
                    meta: f.meta,
                    payload,
                    skipped: skipped_from.map(|from| (from, offset)),
                }));
            }
            // Damaged at lo: look for the next marker.
            skipped_from.get_or_insert(self.pos());
            loop {
                match find_marker(&self.buf[..self.hi], self.lo + 1) {
                    Some(at) => {
                        self.lo = at;
                        break;
                    }
                    None => {
                        if self.abs(self.hi) >= self.end {
                            self.lo = self.hi;
                            break;
                        }
                        self.lo = self.hi;
                        // Keep nothing: a marker straddling the window edge is found by
                        // find_marker's partial match at the end of the previous window.
                        self.fill(FRAME_PREFIX_LEN)?;
                        if self.lo < self.hi {
                            // lo itself was never examined: it may start a marker.
                            if crate::format::RECORD_MARKER[0] == self.buf[self.lo] {
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
}
