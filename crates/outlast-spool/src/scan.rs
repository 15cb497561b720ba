//! Reading frames forward through a segment with a reusable window buffer, resynchronising
//! after damage. Shared by recovery, the reader and `inspect`.

use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
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
    /// The sequence number of the frame before it in this segment (or the one before the
    /// segment's first, as the reader was started with): the numbers between the two are
    /// records lost to the damage, if any.
    pub(crate) prev_seq: u64,
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

    /// The sequence number of the last frame returned (or the one the reader started after).
    pub(crate) fn last_seq(&self) -> u64 {
        self.last_seq
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

    /// The next valid frame, skipping (and reporting) damaged bytes; its payload is copied
    /// into `payloads` if given.
    ///
    /// # Errors
    /// Only read errors of the file.
    // Kept whole: parse-or-resynchronise is one loop over one window; split, the window's
    // indices would have to be handed back and forth.
    pub(crate) fn next(&mut self, mut payloads: Option<&mut PayloadArena>) -> io::Result<Next> {
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
                let prev_seq = self.last_seq;
                let payload = payloads.as_deref_mut().map(|arena| {
                    let bytes = arena.copy(f.payload_bytes(&self.buf[self.lo..self.hi]));
                    Payload::from_parts(f.meta.clone(), bytes)
                });
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
                    prev_seq,
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

/// The buffers the payloads a reader hands out are copied into: each payload is a `Bytes`
/// cut from a buffer of [`PayloadArena::BUF_BYTES`], and a buffer is written again once
/// every payload cut from it is dropped.
///
/// Copying each payload into an allocation of its own made the replay of large records
/// pay for fresh memory: the allocator returned the freed payloads' pages to the system
/// and the next batch faulted them in again (most of the page faults of a replay of 16 KiB
/// records, row 7b in docs/benchmarks.md). A spool has one arena for all its lanes (in its
/// ledger). At most [`PayloadArena::MAX_BUFS`] buffers are kept (4 MiB); a payload larger
/// than a quarter of a buffer, or arriving while every buffer is held by payloads still in
/// use, gets an allocation of its own as before.
#[derive(Debug, Default)]
pub(crate) struct PayloadArena {
    bufs: Vec<BytesMut>,
}

impl PayloadArena {
    /// Bytes per buffer.
    const BUF_BYTES: usize = 1 << 20;
    /// Buffers kept at most.
    const MAX_BUFS: usize = 4;
    /// Larger payloads get an allocation of their own.
    const MAX_SHARED_PAYLOAD: usize = Self::BUF_BYTES / 4;

    /// `data` copied into a buffer of the arena (or on its own, see the type's docs).
    pub(crate) fn copy(&mut self, data: &[u8]) -> Bytes {
        let n = data.len();
        if n == 0 || n > Self::MAX_SHARED_PAYLOAD {
            return Bytes::copy_from_slice(data);
        }
        let room = |b: &BytesMut| b.capacity() - b.len() >= n;
        let found = match self.bufs.iter().position(room) {
            Some(i) => Some(i),
            // A buffer whose payloads are all dropped is whole again.
            None => self
                .bufs
                .iter_mut()
                .position(|b| b.try_reclaim(Self::BUF_BYTES)),
        };
        let i = match found {
            Some(i) => i,
            None if self.bufs.len() < Self::MAX_BUFS => {
                self.bufs.push(BytesMut::with_capacity(Self::BUF_BYTES));
                self.bufs.len() - 1
            }
            None => return Bytes::copy_from_slice(data),
        };
        let Some(buf) = self.bufs.get_mut(i) else {
            return Bytes::copy_from_slice(data);
        };
        buf.extend_from_slice(data);
        buf.split().freeze()
    }
}

#[cfg(test)]
mod arena_tests {
    use super::*;

    /// Fills exactly one buffer's worth of payloads.
    fn fill_one_buffer(arena: &mut PayloadArena, byte: u8) -> Vec<Bytes> {
        let quarter = PayloadArena::MAX_SHARED_PAYLOAD;
        (0..PayloadArena::BUF_BYTES / quarter)
            .map(|_| arena.copy(&vec![byte; quarter]))
            .collect()
    }

    #[test]
    fn payloads_share_a_buffer_that_is_reused_once_they_are_dropped() {
        let mut arena = PayloadArena::default();
        let a = arena.copy(&[1; 1000]);
        let b = arena.copy(&[2; 3000]);
        assert_eq!(&a[..], &[1; 1000][..]);
        assert_eq!(&b[..], &[2; 3000][..]);
        assert_eq!(
            a.as_ptr().wrapping_add(1000),
            b.as_ptr(),
            "cut one after the other"
        );
        drop((a, b));

        let mut arena = PayloadArena::default();
        let first = fill_one_buffer(&mut arena, 3);
        let start = first[0].as_ptr();
        let second = fill_one_buffer(&mut arena, 4);
        assert_eq!(arena.bufs.len(), 2);
        assert_ne!(second[0].as_ptr(), start);
        // Both buffers are full; once the first one's payloads are gone it is written again
        // from its start, and the second one's payloads are untouched.
        drop(first);
        let c = arena.copy(&[5; 10]);
        assert_eq!(c.as_ptr(), start, "the first buffer was reused");
        assert_eq!(&c[..], &[5; 10][..]);
        assert_eq!(arena.bufs.len(), 2);
        assert!(second.iter().all(|p| p.iter().all(|&x| x == 4)));
    }

    #[test]
    fn large_payloads_and_a_full_arena_fall_back_to_their_own_allocation() {
        let mut arena = PayloadArena::default();
        let big = arena.copy(&vec![1; PayloadArena::MAX_SHARED_PAYLOAD + 1]);
        assert_eq!(big.len(), PayloadArena::MAX_SHARED_PAYLOAD + 1);
        assert!(arena.bufs.is_empty());
        let mut held = Vec::new();
        for _ in 0..(PayloadArena::MAX_BUFS * 4) {
            held.push(arena.copy(&vec![2; PayloadArena::MAX_SHARED_PAYLOAD]));
        }
        assert_eq!(arena.bufs.len(), PayloadArena::MAX_BUFS);
        let extra = arena.copy(&[9; 100]);
        assert_eq!(&extra[..], &[9; 100][..]);
        assert_eq!(
            arena.bufs.len(),
            PayloadArena::MAX_BUFS,
            "never more buffers"
        );
        assert!(held.iter().all(|h| h.iter().all(|&b| b == 2)));
    }
}
