//! A read-only scan of one segment file: its header judged, its frames counted, its damage
//! and torn tail measured, its records tallied by content encoding. Shared by recovery and
//! `inspect`.

use std::io;
use std::path::Path;
use std::sync::Arc;

use outlast_core::ContentEncoding;

use crate::format::{self, HeaderCheck, SEGMENT_HEADER_LEN};
use crate::fs::{SpoolFile, SpoolFs, read_full_at};
use crate::index::SegMeta;
use crate::scan::{FrameReader, Next, PayloadArena};
use crate::seqset::SeqSet;

/// Records of a segment by content encoding, and their sizes (for `inspect`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EncodingTally {
    /// Records stored as they are (`identity`).
    pub identity_records: u64,
    /// Framed bytes of the `identity` records on disk.
    pub identity_stored_bytes: u64,
    /// Records stored gzip-compressed.
    pub gzip_records: u64,
    /// Framed bytes of the gzip records on disk.
    pub gzip_stored_bytes: u64,
    /// Their payload bytes once decompressed, from each gzip stream's trailer (ISIZE: the
    /// size of its last member, modulo 2^32; nothing is decompressed). Only counted when
    /// the scan read the payloads.
    pub gzip_uncompressed_bytes: u64,
}

/// Read size while recovering: large sequential reads keep recovery near disk speed.
const RECOVERY_CHUNK: usize = 4 * 1024 * 1024;

/// How a segment file's header was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SegKind {
    /// A version this build reads (its own or version 1), intact header.
    Valid {
        first_seq: u64,
        segment_id: u64,
        version: u16,
    },
    /// Current version, damaged header (or a damaged magic in front of our frames): frames
    /// are still read.
    Damaged,
    /// Shorter than a header: holds no record.
    Short,
    /// Named like a segment, but neither its magic nor any frame is ours: left untouched.
    Foreign,
    /// A newer format version.
    Newer(u16),
}

/// A read-only scan of one segment file.
#[derive(Debug, Clone)]
pub(crate) struct SegScan {
    pub(crate) tally: EncodingTally,
    pub(crate) kind: SegKind,
    pub(crate) file_len: u64,
    pub(crate) meta: SegMeta,
    /// Damaged regions skipped before valid frames (each one may have cost records).
    pub(crate) corrupt: u64,
    /// The numbers of the records those regions destroyed (between the frames around
    /// them); in `meta.holes` too.
    pub(crate) holes: SeqSet,
    /// Bytes after the last valid frame (torn or damaged tail).
    pub(crate) tail_bytes: u64,
    /// Zero bytes after the last valid frame, up to the end of the file: room written
    /// ahead of the records and not used ([`crate::writer::ZERO_FILL_BYTES`]); not in
    /// `tail_bytes`.
    pub(crate) spare_bytes: u64,
}

/// Reads a segment file without changing it; with `bodies`, reads the payloads too (to
/// tally the gzip records' uncompressed sizes).
pub(crate) fn scan_segment(
    fs: &dyn SpoolFs,
    path: &Path,
    id: u64,
    bodies: bool,
) -> io::Result<SegScan> {
    let file = fs.open(path, false)?;
    let file_len = file.len()?;
    let mut head = [0u8; SEGMENT_HEADER_LEN as usize];
    let n = read_full_at(&*file, &mut head, 0)?;
    let kind = match format::check_segment_header(&head[..n]) {
        HeaderCheck::Valid(h) => SegKind::Valid {
            first_seq: h.first_seq,
            segment_id: h.segment_id,
            version: h.version,
        },
        HeaderCheck::Damaged => SegKind::Damaged,
        HeaderCheck::Short => SegKind::Short,
        HeaderCheck::Foreign => SegKind::Foreign,
        HeaderCheck::Newer(v) => SegKind::Newer(v),
    };
    let mut scan = SegScan {
        tally: EncodingTally::default(),
        kind,
        file_len,
        meta: SegMeta::new(id, path.to_path_buf(), file_len.min(SEGMENT_HEADER_LEN)),
        corrupt: 0,
        holes: SeqSet::default(),
        tail_bytes: 0,
        spare_bytes: 0,
    };
    let last_seq = match kind {
        SegKind::Valid { first_seq, .. } => first_seq.saturating_sub(1),
        // A file named like a segment whose magic is damaged may still hold our frames
        // (one flipped bit): read them rather than lose them.
        SegKind::Damaged | SegKind::Foreign => 0,
        SegKind::Short | SegKind::Newer(_) => return Ok(scan),
    };
    let mut reader = FrameReader::new(
        Arc::clone(&file),
        SEGMENT_HEADER_LEN,
        file_len,
        RECOVERY_CHUNK,
        last_seq,
    );
    let mut arena = PayloadArena::default();
    loop {
        match reader.next(bodies.then_some(&mut arena))? {
            Next::Frame(f) => {
                if f.skipped.is_some() {
                    scan.corrupt += 1;
                    // Before the first frame of a segment whose header is damaged, where
                    // the segment began is unknown: the continuity check counts that gap.
                    let known = f.prev_seq > 0 || matches!(kind, SegKind::Valid { .. });
                    if known {
                        scan.holes.insert(f.prev_seq + 1, f.seq - 1);
                    }
                }
                let t = &mut scan.tally;
                if f.meta.content_encoding == ContentEncoding::Gzip {
                    t.gzip_records += 1;
                    t.gzip_stored_bytes += f.len;
                    if let Some(p) = &f.payload {
                        t.gzip_uncompressed_bytes += gzip_isize(p.bytes());
                    }
                } else {
                    t.identity_records += 1;
                    t.identity_stored_bytes += f.len;
                }
                scan.meta.note_record(f.seq, f.meta.created_at_unix_nanos);
            }
            Next::End { valid_end, end } => {
                scan.meta.len = valid_end;
                let after = end.saturating_sub(valid_end);
                if after > 0 && all_zero(&*file, valid_end, end)? {
                    scan.spare_bytes = after;
                } else {
                    scan.tail_bytes = after;
                }
                break;
            }
        }
    }
    if kind == SegKind::Foreign {
        if scan.meta.records == 0 && all_zero(&*file, 0, file_len)? {
            // Zero bytes only: created, its writes then lost to a power cut (the length
            // kept, the data not). It holds nothing: removed like a header torn at creation.
            scan.kind = SegKind::Short;
            scan.meta.len = 0;
            scan.tail_bytes = 0;
            scan.spare_bytes = 0;
            return Ok(scan);
        }
        if scan.meta.records == 0 {
            // Nothing of ours in it: it is left exactly as it is.
            scan.meta.len = file_len.min(SEGMENT_HEADER_LEN);
            scan.tail_bytes = 0;
            scan.spare_bytes = 0;
            scan.corrupt = 0;
            scan.holes = SeqSet::default();
            return Ok(scan);
        }
        scan.kind = SegKind::Damaged;
    }
    Ok(scan)
}

/// Whether the file holds only zero bytes from `from` to `to` (or ends before `to`).
fn all_zero(file: &dyn SpoolFile, from: u64, to: u64) -> io::Result<bool> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = from;
    while at < to {
        let want = usize::try_from(to - at).map_or(buf.len(), |n| n.min(buf.len()));
        let n = read_full_at(file, &mut buf[..want], at)?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        if n < want {
            break;
        }
        at += n as u64;
    }
    Ok(true)
}

/// The ISIZE field of a gzip stream's trailer (its last 4 bytes, little-endian): the
/// uncompressed size of the last member, modulo 2^32. 0 if the stream is too short.
fn gzip_isize(stream: &[u8]) -> u64 {
    match stream.len().checked_sub(4).and_then(|at| stream.get(at..)) {
        Some(&[a, b, c, d]) if stream.len() >= 18 => u64::from(u32::from_le_bytes([a, b, c, d])),
        _ => 0,
    }
}
