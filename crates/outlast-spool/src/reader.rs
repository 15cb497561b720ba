//! The drainer: the one consumer of the spool's lanes. It reads batches across the lanes
//! (adopted lanes first), expires old segments, takes acknowledgements and rewinds, and
//! adopts released lanes (`adopt`); it stands on the ledger. When the own lane is drained it
//! asks the appender to seal the active segment ([`Appender::seal_drained`]) rather than
//! touching the writer's state.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use outlast_core::unix_nanos;

use crate::error::SpoolError;
use crate::format::{self, SEGMENT_HEADER_LEN};
use crate::index::SegMeta;
use crate::lane::{Consumer, DropCause, Lane};
use crate::ledger::Ledger;
use crate::locks::lock;
use crate::scan::{Found, FrameReader, Next, PayloadArena};
use crate::seqset::SeqSet;
use crate::types::{Dropped, ReadBatch, Record, RecordId};
use crate::writer::Appender;

/// Read size of the reader's window buffer.
pub(crate) const READ_CHUNK: usize = 256 * 1024;

/// Where a read puts what it finds: the batch, its byte count so far, and the spool's
/// payload buffers.
pub(crate) struct ReadInto<'a> {
    pub(crate) batch: &'a mut ReadBatch,
    /// Of the batch's evicted and expired, what was counted already (found lost by a
    /// rewind, or kept from a failed read) and is only reported now.
    pub(crate) reported: &'a mut (Dropped, Dropped),
    pub(crate) bytes: &'a mut u64,
    pub(crate) arena: &'a mut PayloadArena,
}

pub(crate) fn now_ns() -> u64 {
    unix_nanos(SystemTime::now())
}

/// The one drainer of a spool.
#[derive(Debug)]
pub(crate) struct Drainer {
    ledger: Arc<Ledger>,
    /// Asked to seal the own lane's active segment once it is drained.
    appender: Arc<Appender>,
    /// The buffers payloads read for delivery are copied into (see [`PayloadArena`]).
    arena: Mutex<PayloadArena>,
}

impl Drainer {
    pub(crate) fn new(ledger: Arc<Ledger>, appender: Arc<Appender>) -> Drainer {
        Drainer {
            ledger,
            appender,
            arena: Mutex::new(PayloadArena::default()),
        }
    }

    pub(crate) fn read_batch(
        &self,
        max_records: usize,
        max_bytes: u64,
    ) -> Result<ReadBatch, SpoolError> {
        if self.ledger.is_closed() {
            return Err(SpoolError::Closed);
        }
        let mut batch = ReadBatch::default();
        let mut bytes = 0u64;
        let max_records = max_records.max(1);
        // Lock order: the payload arena, then a lane's consumer.
        let mut arena = lock(&self.arena);
        // Losses recovery found, already in the counters, reported to the reader now.
        let mut counted = 0u64;
        let lanes = self.ledger.lanes();
        let mut failed = None;
        let mut reported = (Dropped::default(), Dropped::default());
        for l in &lanes {
            if batch.records.len() >= max_records {
                break;
            }
            counted += l.consumer().take_unreported();
            let mut into = ReadInto {
                batch: &mut batch,
                reported: &mut reported,
                bytes: &mut bytes,
                arena: &mut arena,
            };
            if let Err(e) = self.read_lane(l, &mut into, max_records, max_bytes) {
                failed = Some(e);
                break;
            }
        }
        batch.corrupt_skipped += counted;
        // What this read found (not what it only reports) goes into the counters now.
        let fresh_corrupt = batch.corrupt_skipped - counted;
        let fresh_expired = minus(batch.expired, reported.1);
        let fresh_evicted = minus(batch.evicted, reported.0);
        self.ledger
            .count_dropped(fresh_evicted, fresh_expired, fresh_corrupt);
        match failed {
            None => Ok(batch),
            Some(e) => {
                self.keep_for_next_read(&lanes, &batch);
                Err(e)
            }
        }
    }

    /// A read failed part-way: the batch never reaches the caller. What it counted (in the
    /// counters already) is kept for the next read (or append) to report, each loss once,
    /// and the records it took are handed out again by the next read.
    fn keep_for_next_read(&self, lanes: &[Arc<Lane>], batch: &ReadBatch) {
        for l in lanes {
            let mut c = l.consumer();
            if let Some(first) = batch
                .records
                .iter()
                .filter(|r| r.id.lane == l.id())
                .map(|r| r.id.seq)
                .min()
            {
                c.hand_out_again_from(first);
            }
        }
        let mut c = self.ledger.own().consumer();
        c.report_later(batch.corrupt_skipped);
        c.keep_lost(batch.evicted, batch.expired);
        if batch.evicted.records > 0 {
            self.ledger.note_lost_pending();
        }
    }

    pub(crate) fn read_lane(
        &self,
        l: &Arc<Lane>,
        into: &mut ReadInto<'_>,
        max_records: usize,
        max_bytes: u64,
    ) -> Result<(), SpoolError> {
        let mut c = l.consumer();
        // `take_unreported` is the caller's (see `read_batch`).
        let (evicted, expired) = c.take_lost();
        into.batch.evicted.add(evicted.records, evicted.bytes);
        into.batch.expired.add(expired.records, expired.bytes);
        into.reported.0.add(evicted.records, evicted.bytes);
        into.reported.1.add(expired.records, expired.bytes);
        let acked_before = c.acked();
        let result = self.read_lane_locked(l, &mut c, into, max_records, max_bytes);
        if c.acked() != acked_before
            && let Err(e) = l.write_cursor(self.ledger.fs(), &mut c)
        {
            // Expired records at the head counted as acknowledged. The records read must
            // still be returned; the next ack, sync or close writes the cursor again.
            tracing::warn!(lane = l.id(), error = %e, "could not write the cursor after expiry");
        }
        drop(c);
        let exhausted = matches!(result, Ok(true));
        if exhausted && l.is_adopted() {
            self.ledger.maybe_remove_lane(l);
        }
        result.map(|_| ())
    }

    /// Reads from one lane into `into`. `Ok(true)`: the lane has nothing more to read.
    pub(crate) fn read_lane_locked(
        &self,
        l: &Arc<Lane>,
        c: &mut Consumer,
        into: &mut ReadInto<'_>,
        max_records: usize,
        max_bytes: u64,
    ) -> Result<bool, SpoolError> {
        let ReadInto {
            batch,
            bytes,
            arena,
            ..
        } = into;
        let expiry =
            self.ledger.config().max_record_age().map(|age| {
                now_ns().saturating_sub(u64::try_from(age.as_nanos()).unwrap_or(u64::MAX))
            });
        if let Some(limit) = expiry {
            self.expire_segments(l, c, limit, &mut batch.expired)
                .map_err(|e| SpoolError::io(l.dir(), e))?;
        }
        loop {
            if batch.records.len() >= max_records {
                return Ok(false);
            }
            let Some(t) = target(l, c) else {
                return Ok(true);
            };
            if c.reading() != Some(t.id) {
                self.open_reader(l, c, &t)?;
            }
            let Some(next) = c.next_frame(t.end, arena) else {
                return Ok(false);
            };
            match next.map_err(|e| SpoolError::io(segment_path(l, t.id), e))? {
                Next::Frame(f) => {
                    if f.skipped.is_some() {
                        // The records between the frames around the damage are lost:
                        // counted once (not those recovery counted, nor again after a
                        // rewind). Within this segment only (numbers before it are other
                        // segments'), and not those handed out already: damaged since they
                        // were read, their fate is the caller's (an ack: delivered; a
                        // rewind reads them again, and counts them then).
                        let from = f.prev_seq.max(t.start_seq).max(c.handed()) + 1;
                        let absent = segment_holes(l, t.id);
                        batch.corrupt_skipped += l.count_lost(c, from, f.seq - 1, &absent);
                    }
                    if take_frame(l, c, f, expiry, batch, bytes, max_bytes) != Took::Next {
                        c.unread_last();
                        return Ok(false);
                    }
                }
                Next::End { valid_end, end } => {
                    if valid_end < end && t.sealed {
                        // A damaged end of a complete segment: its last records are lost.
                        let after = c
                            .reader_last_seq()
                            .unwrap_or(t.last_seq)
                            .max(t.start_seq)
                            .max(c.handed());
                        let absent = segment_holes(l, t.id);
                        batch.corrupt_skipped += l.count_lost(c, after + 1, t.last_seq, &absent);
                    }
                    if !t.sealed {
                        return Ok(false);
                    }
                    let Some(next) = next_segment(l, c, t.id) else {
                        return Ok(false);
                    };
                    self.open_reader(l, c, &next)?;
                }
            }
        }
    }

    /// Starts reading segment `t` from its start, skipping what was handed out already.
    fn open_reader(&self, l: &Lane, c: &mut Consumer, t: &Target) -> Result<(), SpoolError> {
        let path = segment_path(l, t.id);
        let file = self
            .ledger
            .fs()
            .open(&path, false)
            .map_err(|e| SpoolError::io(&path, e))?;
        let r = FrameReader::new(
            file,
            SEGMENT_HEADER_LEN,
            t.end,
            READ_CHUNK,
            t.start_seq.min(c.handed()),
        );
        c.start_reading(t.id, r);
        Ok(())
    }

    /// Deletes sealed segments whose newest record is older than the age limit.
    pub(crate) fn expire_segments(
        &self,
        l: &Lane,
        c: &mut Consumer,
        limit_ns: u64,
        expired: &mut Dropped,
    ) -> io::Result<()> {
        for m in l.take_expired(limit_ns) {
            self.ledger
                .drop_segment(l, c, m, DropCause::Expired, expired)?;
        }
        Ok(())
    }

    pub(crate) fn ack(&self, id: RecordId) -> Result<(), SpoolError> {
        if self.ledger.is_closed() {
            return Err(SpoolError::Closed);
        }
        let Some(l) = self.ledger.lane(id.lane) else {
            return Ok(());
        };
        let newest = l.last_seq();
        if id.seq > newest {
            return Err(SpoolError::UnknownRecord { id, newest });
        }
        let mut c = l.consumer();
        if !l.acknowledge(&mut c, id.seq) {
            return Ok(());
        }
        match l.write_cursor(self.ledger.fs(), &mut c) {
            Ok(()) => {}
            Err(e) if e.is_disk_full() => {
                // A full disk must not lock the spool: free what is delivered first (its
                // deletion needs no space), then try the cursor again.
                self.ledger.free_delivered(&l, &mut c)?;
                l.write_cursor(self.ledger.fs(), &mut c)?;
            }
            Err(e) => return Err(e),
        }
        self.ledger.delete_acked(&l, &mut c)?;
        let empty_adopted = l.is_adopted() && l.is_empty();
        let own_drained = !l.is_adopted() && c.acked() >= l.last_seq();
        drop(c);
        if empty_adopted {
            self.ledger.maybe_remove_lane(&l);
        }
        if own_drained {
            // A request to the appender, which takes its own lock first (lock order: the
            // writer before the consumer, so the consumer lock is let go).
            self.appender.seal_drained()?;
        }
        Ok(())
    }

    /// Forgets what was handed out but not acknowledged: the next read starts again at the
    /// oldest unacknowledged record. Records handed out whose segment was dropped meanwhile
    /// are counted now, their fate known; the next read (or append) reports them.
    pub(crate) fn rewind(&self) {
        for l in self.ledger.lanes() {
            let mut c = l.consumer();
            let (evicted, expired) = l.rewind(&mut c);
            self.ledger.count_dropped(evicted, expired, 0);
            if c.has_lost_evicted() {
                self.ledger.note_lost_pending();
            }
        }
    }

    /// Ends the reading (see [`crate::Spool::settle`]): a rewind, then every loss no read
    /// or append reported yet, taken so that none is reported again.
    pub(crate) fn settle(&self) -> ReadBatch {
        let mut batch = ReadBatch::default();
        if self.ledger.is_closed() {
            return batch;
        }
        self.rewind();
        for l in self.ledger.lanes() {
            let mut c = l.consumer();
            batch.corrupt_skipped += c.take_unreported();
            let (evicted, expired) = c.take_lost();
            batch.evicted.add(evicted.records, evicted.bytes);
            batch.expired.add(expired.records, expired.bytes);
        }
        batch
    }

    /// At close: records handed out whose segment was dropped, and not acknowledged by
    /// now, will not be: lost, counted (as a rewind would).
    pub(crate) fn settle_at_close(&self) {
        for l in self.ledger.lanes() {
            let (evicted, expired) = l.consumer().rewind();
            self.ledger.count_dropped(evicted, expired, 0);
        }
    }

    /// Takes over released lanes (see [`crate::Spool::adopt_released`]).
    pub(crate) fn adopt_released(&self) -> Result<usize, SpoolError> {
        crate::adopt::adopt_released(&self.ledger)
    }
}

/// `a - b`, saturated.
fn minus(a: Dropped, b: Dropped) -> Dropped {
    Dropped {
        records: a.records.saturating_sub(b.records),
        bytes: a.bytes.saturating_sub(b.bytes),
    }
}

/// A segment to read: its id and file, its readable length, whether it is complete, and the
/// sequence number before its first record.
/// Where the reader is to read: found again before every frame (a segment may have been
/// evicted under it), so it holds no path (looked up when a file is opened, or an error
/// names it) and costs no allocation per record.
#[derive(Debug)]
struct Target {
    id: u64,
    end: u64,
    sealed: bool,
    start_seq: u64,
    last_seq: u64,
}

impl Target {
    fn of(m: &SegMeta, adopted: bool) -> Target {
        Target {
            id: m.id,
            end: m.len,
            sealed: m.sealed || adopted,
            start_seq: m.first_seq.saturating_sub(1),
            last_seq: m.last_seq,
        }
    }
}

/// The numbers recovery found missing in segment `id` of `l` (counted by it).
fn segment_holes(l: &Lane, id: u64) -> SeqSet {
    l.with_segments(|segs| {
        segs.iter()
            .find(|m| m.id == id)
            .map(|m| m.holes.clone())
            .unwrap_or_default()
    })
}

/// The segment the reader is in (or, if it was deleted under us by eviction or expiry, the
/// first one holding records not handed out yet). The index is in sequence order (recovery
/// orders misplaced segments), which is not always the order of the ids: positions, not
/// ids, say what comes next.
fn target(l: &Lane, c: &Consumer) -> Option<Target> {
    l.with_segments(|segs| {
        let first_unread = || {
            segs.iter()
                .position(|m| m.last_seq > c.handed() || !m.sealed)
        };
        let pos = match c.reading() {
            Some(id) => segs.iter().position(|m| m.id == id).or_else(first_unread),
            None => first_unread(),
        };
        pos.map(|i| Target::of(&segs[i], l.is_adopted()))
    })
}

/// The path of segment `id` of `l` (as its index has it; the standard name if it has left
/// the index meanwhile).
fn segment_path(l: &Lane, id: u64) -> std::path::PathBuf {
    l.with_segments(|segs| {
        segs.iter().find(|m| m.id == id).map_or_else(
            || l.dir().join(format::segment_file_name(id)),
            |m| m.path.clone(),
        )
    })
}

/// The segment after `seg_id` in sequence order.
fn next_segment(l: &Lane, c: &Consumer, seg_id: u64) -> Option<Target> {
    l.with_segments(|segs| {
        let next = match segs.iter().position(|m| m.id == seg_id) {
            Some(i) => segs.get(i + 1),
            None => segs.iter().find(|m| m.last_seq > c.handed() || !m.sealed),
        };
        next.map(|m| Target::of(m, l.is_adopted()))
    })
}

/// What [`take_frame`] did with a frame.
#[derive(Debug, PartialEq, Eq)]
enum Took {
    /// Added, skipped (handed out before, expired) or counted: read on.
    Next,
    /// The batch has no room for it: put it back.
    NoRoom,
    /// Expired, behind records handed out and not acknowledged: put it back, and read no
    /// further in this lane until they are acknowledged or rewound.
    ExpiredBehind,
}

/// Handles one valid frame (damage before it is counted by the caller): skips what was
/// handed out already, counts an expired record as acknowledged (only when nothing before
/// it is outstanding: see [`Took::ExpiredBehind`]), or adds the record to the batch.
fn take_frame(
    l: &Lane,
    c: &mut Consumer,
    f: Found,
    expiry: Option<u64>,
    batch: &mut ReadBatch,
    bytes: &mut u64,
    max_bytes: u64,
) -> Took {
    if f.seq <= c.handed() {
        return Took::Next;
    }
    if let Some(limit) = expiry
        && f.meta.created_at_unix_nanos < limit
    {
        if c.handed() != c.acked() {
            // Counted now, it would sit ahead of the ack point, which only the cursor
            // records: a process stopping before the records in flight are acknowledged
            // would leave it on disk for the next process to count again. It waits for a
            // read made once nothing before it is outstanding, which counts it and moves
            // the ack point past it in one step.
            return Took::ExpiredBehind;
        }
        if l.expire_record(c, f.seq) {
            batch.expired.add(1, f.len);
        }
        return Took::Next;
    }
    let Some(payload) = f.payload else {
        return Took::Next;
    };
    let size = payload.len() as u64;
    if !batch.records.is_empty() && *bytes + size > max_bytes {
        return Took::NoRoom;
    }
    *bytes += size;
    c.hand_out(f.seq);
    batch.records.push(Record {
        id: RecordId {
            lane: l.id(),
            seq: f.seq,
        },
        payload,
    });
    Took::Next
}
