//! The outlast disk spool: append-only, CRC-framed segment files with a size cap, crash
//! recovery, acknowledgements that survive restarts, and lanes that let several processes
//! share one directory.
//!
//! This documentation is the specification of the on-disk format (also in
//! `docs/spool-format.md`; a test parses the examples below, so they stay true).
//!
//! # Layout
//!
//! ```text
//! <root>/                      0700, owned by the user, not a symlink
//!   lane-0/                    0700; one lane per writing process
//!     lock                     0600; held with an exclusive OS file lock by the owner
//!     identity                 0600; who the lane's records are for (written at creation)
//!     cursor                   0600; read progress (two slots, overwritten in turn)
//!     00000000000000000001.seg 0600; segments, named by a 20-digit increasing id
//!     00000000000000000002.seg
//!   lane-1/ ...
//! ```
//!
//! [`Spool::open`] locks the first lane of its identity it can (creating `lane-<max+1>` if
//! all are locked or foreign). Other unlocked lanes of its identity that hold records
//! belonged to dead processes: the opener locks them too and drains them first
//! ([`RecoveryReport::adopted_lanes`]); a drained adopted lane is removed. Lanes of another
//! identity are left alone (see "Identity file").
//!
//! # Segment file
//!
//! All integers are little-endian.
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 8 | magic `OUTLSPSG` |
//! | 8  | 2 | format version, `2` (`1`: written before records could be compressed; still read) |
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
//! | 20 | 4 | `header_len`: at most 65 536 (an append whose key and content type encode to more is refused with `AppendErrorKind::HeaderTooLarge`: every limit the reader checks, the writer checks first) |
//! | 24 | `header_len` | record header: bincode 2 (`bincode::serde`, standard config: little-endian, variable-length integers) of the payload's metadata: content type (enum index, then a string for `Other`), creation time in nanoseconds since the Unix epoch, optional key; then, in format version 2 and only for a payload not stored as it is, its content encoding (enum index: `1` gzip) |
//! | 24 + `header_len` | rest | payload bytes |
//!
//! A frame is valid when the marker matches, `body_len` is in bounds and within the file,
//! the CRC matches, the header decodes using exactly `header_len` bytes (with or without
//! the trailing content encoding), and its sequence
//! number is greater than that of the previous valid frame of the segment (and than the
//! header's first sequence number minus one).
//!
//! ## Example
//!
//! A segment with id 1 whose only record, sequence number 1, is the payload `hi` of content
//! type JSON (enum index 1), created 1 s after the epoch, without key:
//!
//! ```text
//! 4f55544c53505347 0200 0000 0100000000000000 0100000000000000 SEGCRC__
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
//! ## Compressed records (version 2)
//!
//! Format version 2 adds one field: a record whose payload is stored encoded ends its header
//! with the content encoding (`PayloadMeta::content_encoding`; bincode enum index, `1` for
//! gzip). A record stored as it is (identity) has no such byte, so its frame is the same as
//! in version 1; a reader tells the two apart by `header_len` (the header must decode using
//! exactly that many bytes, with or without the encoding; an unknown encoding index makes the
//! frame invalid). The payload bytes of a gzip record are a gzip stream (RFC 1952); the
//! frame's CRC covers them as stored.
//!
//! The spool stores the bytes and encoding it is given and hands them back as stored
//! (`Record::payload`, with `Payload::content_encoding`); it compresses nothing itself. The
//! client (`outlast-client`) stores a payload gzipped (level 1) when it is at least 512
//! bytes, given as identity, its first 4 KiB do not look random (byte entropy at most 7.5
//! bits per byte), and its gzip takes at most 7/8 of its size; otherwise as it is.
//! On replay it hands an exporter the stored bytes when the exporter accepts gzip
//! (`Exporter::accepts_encoding`; the HTTP exporter with gzip on; they are decompressed
//! once to check them, not sent so), else the decompressed
//! bytes; a record whose bytes do not decompress is dropped and counted as corrupt, never
//! sent.
//!
//! Upgrades: segments of version 1 are read as before (every header in them is a version-1
//! header). New segments are written as version 2. A version-1 segment is never appended
//! to: at open the last segment of the lane is resumed only if its header is of version 2,
//! so after an upgrade the first append starts a new version-2 segment and the version-1
//! segments keep exactly what version 1 wrote. A build of version 1 (a downgrade) therefore
//! never meets a version-2 record in a version-1 segment; it leaves version-2 segments
//! untouched (`newer_version_files`). `outlast inspect` and `verify` show each segment's
//! format version as its header states it, and its records by encoding with their stored
//! (framed) bytes and, for gzip records, their uncompressed size as each gzip trailer's
//! ISIZE field states it (nothing is decompressed).
//! The committed fixture `crates/outlast-spool/tests/fixtures/spool-v1`, written by the
//! version-1 code, is read in full by the test
//! `a_spool_written_by_format_version_1_is_read_in_full_by_this_build`.
//!
//! ## Example of a compressed record
//!
//! The record of the example above with its payload stored gzipped (the 22-byte gzip
//! stream of `hi`) in a version-2 segment: `header_len` is 8, the header ends with `01`
//! (gzip), the body is 42 bytes. The test `format_v2_doc_example_parses` builds it from the
//! hex in `docs/spool-format.md` and checks it reads back as documented.
//!
//! ```text
//! 4f55544c53505347 0200 0000 0100000000000000 0100000000000000 SEGCRC__
//! 4f4c5243 2a000000 FRMCRC__ 0100000000000000 08000000 01 fc00ca9a3b 00 01 1f8b0800000000000003cbc80400ac2a93d802000000
//! ```
//!
//! # Cursor file
//!
//! `cursor` holds the lane's read progress in two fixed slots, at offsets 0 and 512 (two
//! different 512-byte disk sectors; the bytes in between are zero). Each slot holds one
//! 36-byte cursor record:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 4 | magic `OLCU` |
//! | 4  | 2 | cursor version, `2` |
//! | 6  | 2 | flags, `0` |
//! | 8  | 8 | generation: `1` for the file's first record, one more for each record written |
//! | 16 | 8 | `acked_through`: every record of the lane up to this sequence number is acknowledged |
//! | 24 | 8 | `next_seq`: the next sequence number the lane's writer would use |
//! | 32 | 4 | CRC-32 of bytes 0..32 |
//!
//! Each write goes, with one `pwrite`, into the slot that does not hold the newest valid
//! record, so a write torn by a crash can only damage the slot it was writing. The file is
//! created when the lane is taken (before it accepts its first record) with both slots
//! written, 548 bytes, fdatasynced with its directory entry, and kept open: an
//! acknowledgement then only overwrites bytes the file has, which needs no free space
//! (on file systems that overwrite in place; copy-on-write ones such as btrfs or ZFS may
//! still need a block). A lane whose cursor cannot be created (disk full) takes no record
//! until it can: the append is refused with the disk-full error, and retried by the next.
//!
//! On open both slots are read. A slot that is all zero bytes (or past the end of the file)
//! is empty. The valid slot with the higher generation wins; a damaged slot (bad magic, bad
//! CRC, torn, a version other than 1 or 2) next to a valid one is ignored, as a torn write
//! leaves exactly that. If no slot is valid and one is damaged, the lane counts as having
//! nothing acknowledged (more duplicates, no loss), and this is reported
//! ([`RecoveryReport::damaged_cursors`]); the next write overwrites slot 0. A record of
//! version 1 (the earlier single-record layout: 28 bytes at offset 0, the same fields
//! without the generation, CRC-32 of bytes 0..24 at 24) is read as generation 0, so a lane
//! written by that layout keeps its progress. A record of a newer version counts as damaged
//! (it is overwritten, not deleted).
//!
//! ## Cursor example
//!
//! A slot acknowledging the example record above (sequence number 1), generation 3, next
//! sequence number 2; `CURCRC__` stands for the CRC. The test
//! `format_doc_example_parses_and_reads_back` also builds this record from the hex in
//! `docs/spool-format.md`, and checks that a spool with it in slot 0 delivers nothing.
//!
//! ```text
//! 4f4c4355 0200 0000 0300000000000000 0100000000000000 0200000000000000 CURCRC__
//! ```
//!
//! # Identity file
//!
//! `identity` says who the lane's records are for (`SpoolConfig::with_identity`, e.g. an
//! exporter's endpoint). The spool that creates a lane writes it, fdatasyncs it and its
//! directory entry before the lane takes its first record (a lane taken that has none, from
//! an earlier version, gets one the same way).
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 4 | magic `OLID` |
//! | 4  | 2 | version, `1` |
//! | 6  | 2 | flags: bit 0 set when an identity is declared (clear: the spool had none) |
//! | 8  | 4 | `n`: length of the identity in bytes, at most 4096 |
//! | 12 | `n` | the identity, UTF-8 |
//! | 12 + `n` | 4 | CRC-32 of bytes 0..12 + `n` |
//!
//! On open, a lane whose recorded identity is not the spool's is not locked, read or
//! adopted: it is scanned read-only and listed in `RecoveryReport::foreign_lanes` (lane,
//! identity, records, bytes), counted in `SpoolStats::foreign_lanes`, with a warning. A lane
//! with no identity file was written before identities were recorded: any spool adopts it,
//! so that an upgrade keeps its data. A spool opened with no identity takes only lanes with
//! no identity file or with none declared. A damaged identity file (or one that is not a
//! regular file) makes the lane nobody's: it is left alone and reported.
//! `Spool::adopt_released` later adopts lanes of the same identity whose owner has released
//! them; they are drained before the own lane, as at open.
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
//! | our magic, damaged header | its frames are still read and delivered; listed in `damaged_headers` with a warning (no record is lost by it, so no drop is counted) |
//! | a segment name, damaged magic, our frames after it (e.g. one flipped bit) | as a damaged header: its frames read and delivered, listed in `damaged_headers` |
//! | a segment name, damaged magic, no frame of ours | left untouched, never appended to or deleted; listed in `corrupt_segments` |
//! | a segment name, but not a regular file (FIFO, directory, symbolic link, device) | never opened or followed; skipped with a warning, listed in `skipped_entries` |
//! | our magic, newer version | left untouched, not read, never appended to; listed in `newer_version_files` |
//! | a name that is not the spool's | left untouched; listed in `unknown_files` |
//!
//! Recovery never panics, whatever the bytes. The last intact segment of the own lane is
//! appended to if it has room; otherwise a new segment is started, with an id greater than
//! any segment-named file in the lane.
//!
//! Segments are then ordered by sequence number (the header's first sequence number, else
//! the first record's), which is the order the writer wrote them in; the ids in the file
//! names normally agree. Recovery checks that the numbers run on from one segment to the
//! next:
//!
//! | found | done |
//! |-------|------|
//! | a header naming another id than the file name, or segments out of order by name (files swapped, or one renamed to a far id) | delivered in sequence order; listed in `misplaced_segments`; a warning |
//! | numbers missing between two segments above the ack point (a segment deleted or emptied, a damaged tail, a tail lost to a power loss) | counted in `missing_records` (and `SpoolStats::missing_records`), logged, and reported once to the first read of the lane in `ReadBatch::corrupt_skipped`; the later segment's header is then rewritten to start right after the gap (its records untouched), so the next open does not count them again. After a power loss, records acknowledged since the cursor's last fdatasync that were lost with an unsynced tail may be counted although delivered (the same window as the duplicates) |
//! | numbers another segment already holds, above the ack point | those records are skipped, counted in `missing_records` |
//! | numbers missing before a lane's first segment | not counted: eviction, expiry and acknowledgements remove the head of a lane |
//!
//! No segment is deleted unless all its records were acknowledged, evicted or expired (each
//! counted). A lane whose recovery fails (its cursor is not a regular file, a read error) is
//! left as it is and listed in `unusable_lanes`; the spool takes another lane. An entry named
//! like a lane that is not a directory is skipped and listed in `skipped_entries`; a `lock`
//! that is not a regular file makes its lane unusable. Nothing in the spool is opened
//! blocking (`O_NONBLOCK`) or through a link (`O_NOFOLLOW`), and only regular files are used.
//!
//! # Durability
//!
//! | mode | on `append` return | survives process crash / `kill -9` | survives power loss |
//! |------|--------------------|----------------------|---------------------|
//! | [`Durability::OsWrite`] (default) | one `write(2)` of the whole frame done | yes, all of it | all but at most about the last `fsync_interval` (a background thread fdatasyncs every interval and, right after each rotation, the sealed segment; also on [`Spool::sync`] and close) |
//! | [`Durability::FsyncEveryAppend`] | frame written and fdatasynced (concurrent appenders share one fdatasync: group commit) | yes | yes |
//!
//! Rotation does not make the appender wait for the sealed segment's writeback: the
//! background thread is woken at once and fdatasyncs it while appends go on in the new
//! segment, and every later commit (the interval, [`Spool::sync`], close, a
//! [`Durability::FsyncEveryAppend`] append) first syncs any sealed segment still unsynced, then
//! the active one and the new directory entries. A power loss soon after a rotation may
//! therefore keep records of the new segment and lose the end of the old one (records of
//! the last moments, which this mode does not promise to keep); recovery truncates each
//! segment's torn tail on its own.
//!
//! Group commit: the first appender that needs an fdatasync does it for all those waiting.
//! When the previous commit was shared, it first waits (at most half that commit's
//! duration, never over 1 ms) until as many appenders wait again, so that appenders
//! released together commit together instead of in two alternating halves. A lone
//! appender never waits.
//!
//! A failed write is cut back off the file (or, if even that fails, the segment is sealed
//! at the last good frame and the next append starts a new one): what was stored before is
//! never harmed, and the payload is handed back.
//!
//! # Acknowledgements and the duplicate window
//!
//! [`Spool::ack`] acknowledges a lane's records through a sequence number, and writes the
//! new cursor record at once (one `pwrite`, no fsync). The cursor is fdatasynced by the
//! background thread every interval (the `fsync_interval` of [`Durability::OsWrite`];
//! [`CURSOR_FSYNC_INTERVAL`] in [`Durability::FsyncEveryAppend`] mode, which promises
//! durability of appends, not of acknowledgements), after each rotation, on [`Spool::sync`] and on
//! close. Before that fdatasync the newest record is written into the other slot too, so
//! both slots hold it once synced. Opening a lane does the same with the record it recovered
//! (written into the other slot, then fdatasynced): that record may never have been synced
//! by the process that wrote it. Records expired by `max_record_age` at the head of a lane
//! count as acknowledged and are written the same way. So:
//!
//! - after a process crash (`kill -9`, an abort), the OS has every cursor write: the records
//!   delivered again are exactly those not acknowledged;
//! - after a power loss, at most the records acknowledged since the cursor's last fdatasync
//!   (within one interval, 1 s by default) come back besides the unacknowledged ones. A torn
//!   slot costs nothing more, since the other slot holds at least what was last synced
//!   (only both slots torn by the same power loss would count as damaged, above).
//!
//! A segment is deleted only once all its records are acknowledged in the cursor as
//! written (or it is evicted or expired). The ack takes it out of the index and the byte
//! count; the background thread unlinks the file right after (unlinking a 16 MiB file takes
//! milliseconds), as do [`Spool::sync`] and close; a file left by a crash before that is
//! fully acknowledged, and the next open deletes it. No fdatasync of the cursor is awaited:
//! if a power loss keeps the deletion but loses the cursor write, recovery sees an older
//! ack point and delivers again the acknowledged records still in later segments (within the
//! window above), never garbage, and starts numbering new records above every sequence
//! number on disk and above the recovered ack point (numbers of deleted, acknowledged
//! records may be used again; nothing refers to them).
//!
//! Nothing is left behind: when an ack leaves the own lane empty (every record stored is
//! acknowledged) and its active segment holds more than 16 KiB, that segment is sealed and
//! deleted like any other fully acknowledged one; the next append starts a fresh segment
//! whose header's first sequence number continues the lane's numbering, so the cursor's
//! `acked_through` is right before it and recovery counts no gap (a gap before a lane's
//! first segment is never counted). A smaller active segment is kept and appended to, so
//! that a trickle of records each delivered before the next does not create and delete a
//! file per record. At open, a last segment whose records are all acknowledged is not
//! resumed: it is deleted. Only the in-memory state changes before the deletion, which
//! follows the rule above, so a `kill -9` or a power loss at any point loses no
//! unacknowledged record. An adopted lane left with no segment is removed with its files
//! and directory.
//!
//! # Cap, eviction, expiry
//!
//! The bytes of all segment files of the lanes held count against the cap in force: the
//! smaller of `max_total_bytes` and what the spool holds at open plus
//! [`DISK_FREE_SHARE_PERCENT`] (90 %) of the file system's free space then (`statvfs`),
//! so the spool never fills a disk to the last byte. It is shown in
//! [`SpoolStats::max_total_bytes`] and [`RecoveryReport::max_total_bytes`]. With
//! [`FullPolicy::DropNewest`] an append that does not fit is refused
//! ([`AppendErrorKind::Full`]); with [`FullPolicy::DropOldest`] the oldest whole segment
//! (adopted lanes first) is deleted and its unacknowledged records not yet handed out are
//! reported in `Appended::evicted`. Records of it that a read had handed out and that are
//! not acknowledged yet are counted once their fate is known: an ack counts them
//! delivered, a `Spool::rewind` counts them lost, reported once in the next
//! `Appended::evicted` or `ReadBatch::evicted`, whichever comes first (or, for expiry,
//! `ReadBatch::expired`). Each record is counted once. With `max_record_age`,
//! [`Spool::read_batch`] skips and counts expired records and deletes sealed segments
//! whose newest record has expired.
//!
//! # Full disk
//!
//! A disk filled by something else (or by several processes sharing it) never locks the
//! spool. An append that hits ENOSPC is refused and its payload handed back; what was
//! stored is unharmed. Acknowledging needs no new space (the cursor was prepared, above);
//! if writing the cursor fails with ENOSPC anyway, the sealed segments whose records are
//! all delivered are deleted first (deleting needs no space) and the write is tried again.
//! If it still fails, `Spool::ack` returns the error: the acknowledgement holds in memory
//! (nothing is read twice by this process) but is not on disk, so a caller must not report
//! a flush as complete; the next ack, sync or close writes it.

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod adopt;
mod background;
mod config;
mod cursor;
mod error;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod format;
pub mod fs;
pub mod identity;
pub mod inspect;
mod lane;
mod ledger;
mod reader;
mod recovery;
mod scan;
mod spool;
mod types;
mod writer;

pub use background::CURSOR_FSYNC_INTERVAL;
pub use config::{
    DEFAULT_FSYNC_INTERVAL, DEFAULT_MAX_RECORD_BYTES, DEFAULT_MAX_TOTAL_BYTES,
    DEFAULT_SEGMENT_BYTES, DISK_FREE_SHARE_PERCENT, Durability, FullPolicy, SpoolConfig,
};
pub use error::{AppendError, AppendErrorKind, SpoolError};
/// The newest on-disk format version this build reads and writes. Tools print it next to a
/// segment that [`inspect`] reports as `newer_version`; what a version means stays in here.
pub use format::FORMAT_VERSION;
pub use outlast_core::Payload;
pub use spool::Spool;
pub use types::{
    Appended, Dropped, ForeignLane, ReadBatch, Record, RecordId, RecordedIdentity, RecoveryReport,
    SpoolStats,
};
