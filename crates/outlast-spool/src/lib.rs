//! The outlast disk spool: append-only, CRC-framed segment files with a size cap, crash
//! recovery, acknowledgements that survive restarts, and lanes that let several processes
//! share one directory.
//!
//! This documentation is the specification of the on-disk format (also in
//! `docs/spool-format.md`; a test parses the example below, so it stays true).
//!
//! # Layout
//!
//! ```text
//! <root>/                      0700, owned by the user, not a symlink
//!   lane-0/                    0700; one lane per writing process
//!     lock                     0600; held with an exclusive OS file lock by the owner
//!     cursor                   0600; read progress (replaced atomically)
//!     00000000000000000001.seg 0600; segments, named by a 20-digit increasing id
//!     00000000000000000002.seg
//!   lane-1/ ...
//! ```
//!
//! [`Spool::open`] locks the first lane it can (creating `lane-<max+1>` if all are locked).
//! Other unlocked lanes that hold records belonged to dead processes: the opener locks them
//! too and drains them first ([`RecoveryReport::adopted_lanes`]); a drained adopted lane is
//! removed.
//!
//! # Segment file
//!
//! All integers are little-endian.
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 8 | magic `OUTLSPSG` |
//! | 8  | 2 | format version, `1` |
//! | 10 | 2 | flags, `0` |
//! | 12 | 8 | segment id (as in the file name) |
//! | 20 | 8 | sequence number the segment's first record gets |
//! | 28 | 4 | CRC-32 (IEEE, as computed by `crc32fast`) of bytes 0..28 |
//!
//! Records follow the 32-byte header back to back. A record never spans two segments: a
//! segment is sealed when the next record would take it past `segment_bytes`.
//!
//! # Record frame
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 4 | marker `OLRC` (lets a reader find the next frame after damage) |
//! | 4  | 4 | `body_len`: bytes after this 12-byte prefix; at least 12, at most 256 MiB |
//! | 8  | 4 | CRC-32 of bytes 0..8 followed by the whole body |
//! | 12 | 8 | sequence number (per lane, starts at 1, strictly increasing) |
//! | 20 | 4 | `header_len` |
//! | 24 | `header_len` | record header: bincode 2 (`bincode::serde`, standard config: little-endian, variable-length integers) of `{ meta: PayloadMeta }`, i.e. content type (enum index, then a string for `Other`), creation time in nanoseconds since the Unix epoch, optional key |
//! | 24 + `header_len` | rest | payload bytes |
//!
//! A frame is valid when the marker matches, `body_len` is in bounds and within the file,
//! the CRC matches, the header decodes using exactly `header_len` bytes, and its sequence
//! number is greater than that of the previous valid frame of the segment (and than the
//! header's first sequence number minus one).
//!
//! ## Example
//!
//! A segment with id 1 whose only record, sequence number 1, is the payload `hi` of content
//! type JSON (enum index 1), created 1 s after the epoch, without key:
//!
//! ```text
//! 4f55544c53505347 0100 0000 0100000000000000 0100000000000000 SEGCRC__
//! 4f4c5243 15000000 FRMCRC__ 0100000000000000 07000000 01 fc00ca9a3b 00 6869
//! ```
//!
//! The frame's body is 21 bytes: sequence number (8), `header_len` = 7 (4), the header
//! `01` (content type JSON) `fc00ca9a3b` (1 000 000 000 ns: bincode writes integers that
//! need four bytes as `fc` and the little-endian bytes) `00` (no key), and the payload
//! `6869`. `SEGCRC__` and `FRMCRC__` stand for the CRCs (computed as described above). The test `format_doc_example_parses` builds these bytes from the
//! hex in `docs/spool-format.md`, fills in the two CRCs, and checks they read back as
//! documented.
//!
//! # Cursor file
//!
//! `cursor` is 28 bytes: magic `OLCU`, version `1` (u16), 2 zero bytes, `acked_through`
//! (u64: every record of the lane up to this sequence number is acknowledged), `next_seq`
//! (u64: the next sequence number the lane's writer would use), CRC-32 of bytes 0..24. It is
//! written to `cursor.tmp`, fsynced, renamed over `cursor`, and the directory is fsynced, so
//! it is never torn. A damaged cursor counts as "nothing acknowledged" (more duplicates, no
//! loss) and is reported ([`RecoveryReport::damaged_cursors`]).
//!
//! # Recovery on open
//!
//! Every segment of every lane taken is read forward with large sequential reads:
//!
//! | found | done |
//! |-------|------|
//! | valid frames | indexed (per segment: count, first/last sequence number, oldest/newest time); nothing is kept per record |
//! | damage followed by a valid frame (flipped bits, zeroed range, a frame cut by a later one) | skipped; each damaged region counts once in `corrupt_frames_skipped`; reading resumes at the next marker that starts a valid frame |
//! | damage or an incomplete frame with no valid frame after it (torn tail) | the file is truncated to the end of the last valid frame; bytes counted in `torn_tail_bytes_truncated` |
//! | a file shorter than its header (e.g. zero-length: crash while creating it) | removed (it holds no record); counted in `empty_segments_removed` |
//! | our magic, damaged header | counted as one corrupt frame; its frames are still read |
//! | our magic, newer version | left untouched, not read, never appended to; listed in `newer_version_files` |
//! | other magic, or a name that is not a segment | left untouched; listed in `unknown_files` |
//!
//! Recovery never panics, whatever the bytes. The last intact segment of the own lane is
//! appended to if it has room; otherwise a new segment is started, with an id greater than
//! any segment-named file in the lane.
//!
//! # Durability
//!
//! | mode | on `append` return | survives process crash / `kill -9` | survives power loss |
//! |------|--------------------|----------------------|---------------------|
//! | [`Durability::OsWrite`] (default) | one `write(2)` of the whole frame done | yes, all of it | all but at most about the last `fsync_interval` (a background thread fdatasyncs every interval; also on rotation, [`Spool::sync`] and close) |
//! | [`Durability::FsyncEveryAppend`] | frame written and fdatasynced (concurrent appenders share one fdatasync: group commit) | yes | yes |
//!
//! A failed write is cut back off the file (or, if even that fails, the segment is sealed
//! at the last good frame and the next append starts a new one): what was stored before is
//! never harmed, and the payload is handed back.
//!
//! # Acknowledgements and the duplicate window
//!
//! [`Spool::ack`] acknowledges a lane's records through a sequence number. The cursor is
//! persisted on every [`CURSOR_PERSIST_EVERY_ACKS`]-th ack, on an ack arriving at least
//! [`CURSOR_PERSIST_INTERVAL`] after the last persist, by the background thread within one
//! interval of any ack, before any segment is deleted, on [`Spool::sync`] and on close. After
//! a crash (process or power) the records delivered again are therefore: those never
//! acknowledged, plus those acknowledged by at most the last
//! `CURSOR_PERSIST_EVERY_ACKS - 1` ack calls made within the last interval (1 s by default)
//! before the crash. A segment is deleted only once all its records are acknowledged (or it
//! is evicted or expired).
//!
//! # Cap, eviction, expiry
//!
//! The bytes of all segment files of the lanes held count against `max_total_bytes`. With
//! [`FullPolicy::DropNewest`] an append that does not fit is refused
//! ([`AppendErrorKind::Full`]); with [`FullPolicy::DropOldest`] the oldest whole segment
//! (adopted lanes first) is deleted and its unacknowledged records are reported in
//! [`Appended::evicted`]. With `max_record_age`, [`Spool::read_batch`] skips and counts
//! expired records and deletes sealed segments whose newest record has expired.

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod config;
mod error;
pub mod fault;
pub mod format;
pub mod fs;
pub mod inspect;
mod lane;
mod scan;
mod spool;
mod types;

pub use config::{
    DEFAULT_FSYNC_INTERVAL, DEFAULT_MAX_RECORD_BYTES, DEFAULT_MAX_TOTAL_BYTES,
    DEFAULT_SEGMENT_BYTES, Durability, FullPolicy, SpoolConfig,
};
pub use error::{AppendError, AppendErrorKind, SpoolError};
pub use outlast_core::Payload;
pub use spool::{CURSOR_PERSIST_EVERY_ACKS, CURSOR_PERSIST_INTERVAL, Spool};
pub use types::{Appended, Dropped, ReadBatch, Record, RecordId, RecoveryReport, SpoolStats};
