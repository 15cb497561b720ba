//! The books of one replay, with no I/O: [`ReplayWindow`] admits records into sends,
//! settles their outcomes and hands out the settled prefix to acknowledge, within the
//! [`Window`]'s limits; records read are decoded (bounded) only when next to go. Its unit
//! tests drive it step by step; [`crate::replay`] runs it against the spool and the exporter.

use std::collections::VecDeque;
use std::time::Duration;

use outlast_core::{Coalescing, ContentEncoding, ExportError, Payload};
use outlast_spool::{ReadBatch, Record, RecordId};

use crate::compress::{self, Undecodable};

/// How many records to read and send at once: the limits of a [`ReplayWindow`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    /// Records per spool read, and records past the oldest one not yet settled.
    pub(crate) max_records: usize,
    /// Sends under way at most.
    pub(crate) in_flight: usize,
    /// Send one batch and return (offline probing with one record, or paced replay).
    pub(crate) one_batch: bool,
}

/// Why a replay stopped starting attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    Failed(Option<Duration>),
    SpoolTrouble,
}

/// The payloads of one attempt, consecutive in the window from index `first`.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) first: u64,
    pub(crate) payloads: Vec<Payload>,
}

/// A finished attempt: its payloads, given back, and its result.
#[derive(Debug)]
pub(crate) struct Sent {
    pub(crate) first: u64,
    pub(crate) payloads: Vec<Payload>,
    pub(crate) result: Result<(), ExportError>,
}

/// A started record, in spool order, and its outcome once settled.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) id: RecordId,
    pub(crate) result: Option<Outcome>,
}

/// How a record settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Delivered,
    Rejected,
    /// Its stored bytes do not decode as their encoding says: dropped, never sent.
    Corrupt,
    /// It decodes to more than `max_record_bytes`: dropped, never sent.
    TooLarge,
    /// A retryable failure: the replay stops before this record.
    Failed,
}

/// The books of one replay, without I/O: records read but not started, started records in
/// spool order with their outcomes, the settled prefix waiting to be acknowledged, and why
/// no more sends start.
///
/// The window never reaches more than `max_records` past the oldest record not yet
/// settled, merged requests included: a stalled attempt holds the others back, so what a
/// crash can make the client send again stays bounded (see docs/delivery-guarantees.md).
///
/// Consecutive compatible records the exporter accepts to merge go out as one send, within
/// the caps. A merged send rejected permanently is not dropped: its records are sent again
/// one by one, before anything new, so that only those rejected on their own are dropped.
#[derive(Debug)]
pub(crate) struct ReplayWindow {
    limits: Window,
    max_bytes: u64,
    /// The client's caps on a merged send.
    caps: Coalescing,
    /// Records of a merged send rejected permanently, to send again one by one: their
    /// window index and payload.
    singles: VecDeque<(u64, Payload)>,
    /// Read, not started yet, in spool order: each record as stored, decoded (to what the
    /// exporter takes: stored bytes decompressed unless it accepts their encoding) only
    /// when it is next to go, so that the records waiting here hold their stored size.
    queued: VecDeque<Queued>,
    /// Whether the exporter takes gzip-encoded payloads as they are.
    pub(crate) accepts_gzip: bool,
    /// No record is decoded past this (the client's `max_record_bytes`).
    pub(crate) max_record_bytes: u64,
    /// Bytes the queued records hold in memory (stored, or decoded for the one decoded).
    queued_bytes: u64,
    /// Started, in spool order; `base` is the index of the first.
    slots: VecDeque<Slot>,
    base: u64,
    /// The index the next started record gets.
    next: u64,
    /// The settled prefix not yet handed to an acknowledgement, and whether it grew since
    /// the last one.
    acks: Acks,
    ack_due: bool,
    stop: Option<Stop>,
    /// The last read found nothing more to hand out.
    exhausted: bool,
    /// The read under way (or the last one) was made while records read before it were
    /// not yet acknowledged. Such a read may come back empty although records remain: the
    /// spool counts an expired record only once nothing before it is outstanding, and
    /// ends the read there (see `Spool::read_batch`). An empty answer to it is checked by
    /// one more read, made once everything is acknowledged.
    read_ahead: bool,
    /// Reads that returned records, and whether the last one was full.
    batches: usize,
    last_full: bool,
}

impl ReplayWindow {
    pub(crate) fn new(limits: Window, max_bytes: u64, caps: Coalescing) -> ReplayWindow {
        ReplayWindow {
            limits,
            max_bytes,
            caps,
            singles: VecDeque::new(),
            queued: VecDeque::new(),
            accepts_gzip: false,
            max_record_bytes: u64::MAX,
            queued_bytes: 0,
            slots: VecDeque::new(),
            base: 0,
            next: 0,
            acks: Acks::default(),
            ack_due: false,
            stop: None,
            exhausted: false,
            read_ahead: false,
            batches: 0,
            last_full: false,
        }
    }

    /// Whether this replay may read another batch (one batch only, if so limited).
    fn may_read(&self) -> bool {
        !(self.limits.one_batch && self.batches > 0)
    }

    /// Whether a spool read should start now (the caller knows whether one is under way).
    pub(crate) fn wants_read(&self) -> bool {
        self.stop.is_none()
            && !self.exhausted
            && self.may_read()
            && self.queued.len() < self.limits.max_records
            && self.queued_bytes < self.max_bytes
    }

    /// How the records of the next read may be decoded ahead (see [`prepare`]): at most
    /// `max_bytes` of them, what a read may hold as stored.
    pub(crate) fn decoding(&self) -> Decoding {
        Decoding {
            accepts_gzip: self.accepts_gzip,
            limit: self.max_record_bytes,
            budget: self.max_bytes,
        }
    }

    /// Takes the records a read returned, as stored; none means the spool had nothing more.
    #[cfg(test)]
    pub(crate) fn on_read(&mut self, records: Vec<Record>) {
        self.on_read_queued(
            records
                .into_iter()
                .map(|r| Queued {
                    id: r.id,
                    state: QueuedState::Stored(r.payload),
                })
                .collect(),
        );
    }

    /// A read starts; `others_under_way`: attempts, an acknowledgement or a paced send
    /// (the caller's) are under way, so records read before it may not be acknowledged.
    pub(crate) fn start_read(&mut self, others_under_way: bool) {
        self.read_ahead = others_under_way
            || !self.queued.is_empty()
            || !self.singles.is_empty()
            || !self.slots.is_empty()
            || !self.acks.ids.is_empty();
    }

    /// Takes the records a read returned, decoded ahead or not ([`prepare`]); none means
    /// the spool had nothing more to hand out for now.
    pub(crate) fn on_read_queued(&mut self, queued: Vec<Queued>) {
        let n = queued.len();
        if n == 0 {
            self.exhausted = true;
            return;
        }
        self.batches += 1;
        self.last_full = n >= self.limits.max_records;
        for q in queued {
            self.queued_bytes += q.state.bytes();
            self.queued.push_back(q);
        }
    }

    /// Decodes the first queued record if it is still as stored (one not decoded ahead):
    /// bounded by `max_record_bytes`.
    fn decode_front(&mut self) {
        let decoding = self.decoding();
        let Some(front) = self.queued.front_mut() else {
            return;
        };
        let QueuedState::Stored(stored) = &front.state else {
            return;
        };
        let stored = stored.clone();
        let before = front.state.bytes();
        front.state = decode(stored, decoding);
        self.queued_bytes = self
            .queued_bytes
            .saturating_sub(before)
            .saturating_add(front.state.bytes());
    }

    /// The first queued record, decoded, if it decodes.
    fn peek_ready(&mut self) -> Option<&compress::Ready> {
        self.decode_front();
        match self.queued.front() {
            Some(Queued {
                state: QueuedState::Ready(ready),
                ..
            }) => Some(ready),
            _ => None,
        }
    }

    /// The next queued record that decodes; those that do not are settled as corrupt or
    /// too large on the way (each takes its slot, so that it is acknowledged in order,
    /// never sent).
    fn pop_decodable(&mut self) -> Option<(RecordId, compress::Ready)> {
        loop {
            self.decode_front();
            let q = self.queued.pop_front()?;
            let outcome = match q.state {
                QueuedState::Ready(ready) => return Some((q.id, ready)),
                // `decode_front` decoded it.
                QueuedState::Stored(_) | QueuedState::Undecodable(Undecodable::Corrupt) => {
                    tracing::warn!(target: crate::LOG_TARGET,
                        lane = q.id.lane,
                        seq = q.id.seq,
                        "outlast: spooled record does not decode as its recorded encoding; dropping it as corrupt"
                    );
                    Outcome::Corrupt
                }
                QueuedState::Undecodable(Undecodable::TooLarge) => {
                    tracing::warn!(target: crate::LOG_TARGET,
                        lane = q.id.lane,
                        seq = q.id.seq,
                        max_record_bytes = self.max_record_bytes,
                        "outlast: spooled record decodes to more than max_record_bytes; dropping it as too large"
                    );
                    Outcome::TooLarge
                }
            };
            self.slots.push_back(Slot {
                id: q.id,
                result: Some(outcome),
            });
            self.next += 1;
            self.grow_settled_prefix();
        }
    }

    /// The next send to start while `running` sends are under way, if the limits allow.
    /// `merge` says whether, and up to what size, the exporter merges a payload with its
    /// neighbours ([`Exporter::coalescing`](outlast_core::Exporter::coalescing)).
    pub(crate) fn admit(
        &mut self,
        running: usize,
        merge: impl Fn(&Payload) -> Option<Coalescing>,
    ) -> Option<Outgoing> {
        if self.stop.is_some() || running >= self.limits.in_flight {
            return None;
        }
        if let Some((first, payload)) = self.singles.pop_front() {
            // Already in the window: it takes no room.
            return Some(Outgoing {
                first,
                payloads: vec![payload],
            });
        }
        let room = self.limits.max_records.saturating_sub(self.slots.len());
        if room == 0 {
            return None;
        }
        let (id, ready) = self.pop_decodable()?;
        let room = self.limits.max_records.saturating_sub(self.slots.len());
        if room == 0 {
            // Records settled on the way (undecodable) took the room: it comes next time.
            self.queued.push_front(Queued {
                id,
                state: QueuedState::Ready(ready),
            });
            return None;
        }
        let (max_records, max_bytes) = match merge(&ready.payload) {
            Some(c) => (
                c.max_records.min(self.caps.max_records).min(room),
                c.max_bytes.min(self.caps.max_bytes),
            ),
            None => (1, 0),
        };
        // Merging is measured in decoded bytes: what the backend (or an exporter that
        // decodes records to join them) holds for the request.
        let mut bytes = ready.decoded_len;
        let mut payloads = vec![self.take(id, ready)];
        while payloads.len() < max_records {
            let Some(next) = self.peek_ready() else {
                break;
            };
            let len = next.decoded_len;
            if !Coalescing::compatible(&payloads[0], &next.payload)
                || bytes.saturating_add(len) > max_bytes
                || merge(&next.payload).is_none()
            {
                break;
            }
            bytes += len;
            let Some((id, ready)) = self.pop_decodable() else {
                break;
            };
            payloads.push(self.take(id, ready));
        }
        let first = self.next;
        self.next += payloads.len() as u64;
        Some(Outgoing { first, payloads })
    }

    /// Moves a queued record into the window: its slot, and its payload for the send.
    fn take(&mut self, id: RecordId, ready: compress::Ready) -> Payload {
        self.queued_bytes = self.queued_bytes.saturating_sub(ready.payload.len() as u64);
        self.slots.push_back(Slot { id, result: None });
        ready.payload
    }

    /// Takes the outcome of a send: a retryable failure stops new sends (keeping the
    /// largest `Retry-After`); a permanent rejection of a merged send queues its records to
    /// be sent again one by one; the settled prefix grows.
    pub(crate) fn settle(&mut self, sent: Sent) {
        let outcome = match &sent.result {
            Ok(()) => Outcome::Delivered,
            Err(e) if e.is_permanent() && sent.payloads.len() > 1 => {
                tracing::debug!(target: crate::LOG_TARGET, error = %outlast_core::ErrorChain(e), records = sent.payloads.len(), "outlast: merged replay request rejected permanently; sending its records one by one");
                // They go before anything not started yet, oldest first.
                self.singles.extend((sent.first..).zip(sent.payloads));
                self.singles
                    .make_contiguous()
                    .sort_unstable_by_key(|(i, _)| *i);
                return;
            }
            Err(e) if e.is_permanent() => {
                tracing::debug!(target: crate::LOG_TARGET, error = %outlast_core::ErrorChain(e), index = sent.first, "outlast: spooled record rejected permanently; dropping it");
                Outcome::Rejected
            }
            Err(e) => {
                self.stop = Some(match self.stop {
                    Some(Stop::SpoolTrouble) => Stop::SpoolTrouble,
                    Some(Stop::Failed(d)) => Stop::Failed(d.max(e.retry_after())),
                    None => Stop::Failed(e.retry_after()),
                });
                Outcome::Failed
            }
        };
        for i in 0..sent.payloads.len() as u64 {
            // Started records are at or after `base`, within the window.
            let offset = (sent.first + i)
                .checked_sub(self.base)
                .and_then(|o| usize::try_from(o).ok())
                .unwrap_or(usize::MAX);
            if let Some(slot) = self.slots.get_mut(offset) {
                slot.result = Some(outcome);
            }
        }
        self.grow_settled_prefix();
    }

    /// Grows the settled prefix; it is acknowledged as soon as no other acknowledgement is
    /// being written (acknowledgements coalesce).
    fn grow_settled_prefix(&mut self) {
        while let Some(slot) = self.slots.front() {
            match slot.result {
                Some(Outcome::Delivered) => self.acks.push(slot.id, true),
                Some(Outcome::Rejected) => self.acks.push(slot.id, false),
                Some(Outcome::Corrupt) => self.acks.push_corrupt(slot.id),
                Some(Outcome::TooLarge) => self.acks.push_too_large(slot.id),
                Some(Outcome::Failed) | None => break,
            }
            self.ack_due = true;
            self.slots.pop_front();
            self.base += 1;
        }
    }

    /// The settled prefix to acknowledge now, if it grew since the last one or nothing is
    /// under way (`idle`); the caller has no acknowledgement being written.
    pub(crate) fn take_acks(&mut self, idle: bool) -> Option<Acks> {
        if self.acks.ids.is_empty() || !(self.ack_due || idle) {
            return None;
        }
        self.ack_due = false;
        Some(std::mem::take(&mut self.acks))
    }

    /// The spool could not be read or acknowledged: start nothing more.
    pub(crate) fn stop_for_spool(&mut self) {
        self.stop = Some(Stop::SpoolTrouble);
    }

    /// Why no more sends start, if they do not.
    pub(crate) fn stopped(&self) -> Option<Stop> {
        self.stop
    }

    /// Whether the last read found the spool empty.
    pub(crate) fn is_exhausted(&self) -> bool {
        self.exhausted
    }

    /// Whether the empty read that exhausted the window was made ahead of acknowledgements,
    /// and must be checked by reading again once nothing is outstanding (see
    /// `read_ahead`). Answers true once per such read.
    pub(crate) fn take_recheck(&mut self) -> bool {
        self.exhausted && std::mem::take(&mut self.read_ahead)
    }

    /// Something was appended after the spool was found empty: read again.
    pub(crate) fn read_again(&mut self) {
        self.exhausted = false;
    }

    /// With one batch allowed: `Some(full)` once it has all been started (and, with nothing
    /// under way, settled).
    pub(crate) fn batch_done(&self) -> Option<bool> {
        (!self.may_read() && self.queued.is_empty() && self.singles.is_empty())
            .then_some(self.last_full)
    }
}

/// The settled prefix not yet acknowledged: the last id of each lane, in order of
/// appearance (acknowledging it acknowledges the lane's records up to it), and counts.
#[derive(Debug, Default)]
pub(crate) struct Acks {
    pub(crate) ids: Vec<RecordId>,
    pub(crate) delivered: u64,
    pub(crate) rejected: u64,
    /// Dropped because their stored bytes do not decode.
    pub(crate) corrupt: u64,
    /// Dropped because they decode to more than `max_record_bytes`.
    pub(crate) too_large: u64,
}

/// A batch as read, its records taken out and prepared for the window.
pub(crate) type Prepared = (ReadBatch, Vec<Queued>);

/// How records are decoded for the exporter (see [`prepare`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Decoding {
    /// Whether the exporter takes gzip-encoded payloads as they are.
    pub(crate) accepts_gzip: bool,
    /// No record is decoded past this (`max_record_bytes`).
    pub(crate) limit: u64,
    /// Records of one read are decoded ahead while their decoded bytes stay under this.
    pub(crate) budget: u64,
}

/// A stored record as the exporter takes it, or why it cannot be sent.
pub(crate) fn decode(stored: Payload, d: Decoding) -> QueuedState {
    let accepts = move |e: ContentEncoding| {
        e == ContentEncoding::Identity || (d.accepts_gzip && e == ContentEncoding::Gzip)
    };
    match compress::for_exporter(stored, accepts, d.limit) {
        Ok(ready) => QueuedState::Ready(ready),
        Err(why) => QueuedState::Undecodable(why),
    }
}

/// The records of one read, decoded ahead in order while what they hold decoded stays
/// under the budget (so one read never holds more than the budget plus one record
/// decoded); the rest stay as stored, decoded one at a time when next to go. Runs on the
/// blocking pool with the read.
pub(crate) fn prepare(records: Vec<Record>, d: Decoding) -> Vec<Queued> {
    let mut held = 0u64;
    records
        .into_iter()
        .map(|r| {
            let state = if held < d.budget {
                let state = decode(r.payload, d);
                held = held.saturating_add(state.bytes());
                state
            } else {
                QueuedState::Stored(r.payload)
            };
            Queued { id: r.id, state }
        })
        .collect()
}

/// A record read and not started yet.
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) id: RecordId,
    pub(crate) state: QueuedState,
}

/// A queued record as stored, or decoded (as the exporter takes it), or why it cannot be
/// sent.
#[derive(Debug)]
pub(crate) enum QueuedState {
    Stored(Payload),
    Ready(compress::Ready),
    Undecodable(Undecodable),
}

impl QueuedState {
    /// Bytes it holds in memory.
    pub(crate) fn bytes(&self) -> u64 {
        match self {
            QueuedState::Stored(p) => p.len() as u64,
            QueuedState::Ready(r) => r.payload.len() as u64,
            QueuedState::Undecodable(_) => 0,
        }
    }
}

impl Acks {
    pub(crate) fn note(&mut self, id: RecordId) {
        match self.ids.iter_mut().find(|i| i.lane == id.lane) {
            Some(i) => *i = id,
            None => self.ids.push(id),
        }
    }

    pub(crate) fn push_corrupt(&mut self, id: RecordId) {
        self.note(id);
        self.corrupt += 1;
    }

    pub(crate) fn push_too_large(&mut self, id: RecordId) {
        self.note(id);
        self.too_large += 1;
    }

    pub(crate) fn push(&mut self, id: RecordId, delivered: bool) {
        self.note(id);
        if delivered {
            self.delivered += 1;
        } else {
            self.rejected += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outlast_core::ContentType;

    fn id(lane: u32, seq: u64) -> RecordId {
        RecordId { lane, seq }
    }

    /// Records of lane 0 with these sequence numbers; each payload is 10 bytes that start
    /// with its sequence number.
    fn records(seqs: std::ops::Range<u64>) -> Vec<Record> {
        seqs.map(|seq| {
            let mut bytes = seq.to_le_bytes().to_vec();
            bytes.extend_from_slice(&[0, 0]);
            Record {
                id: id(0, seq),
                payload: Payload::new(bytes).with_content_type(ContentType::Protobuf),
            }
        })
        .collect()
    }

    fn seq_of(p: &Payload) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&p.bytes()[..8]);
        u64::from_le_bytes(b)
    }

    fn window(max_records: usize, in_flight: usize) -> ReplayWindow {
        ReplayWindow::new(
            Window {
                max_records,
                in_flight,
                one_batch: false,
            },
            u64::MAX,
            Coalescing::UNLIMITED,
        )
    }

    /// An exporter that never merges.
    fn alone(_: &Payload) -> Option<Coalescing> {
        None
    }

    /// An exporter that merges anything, without caps of its own.
    fn merges(_: &Payload) -> Option<Coalescing> {
        Some(Coalescing::UNLIMITED)
    }

    /// Admits every send the limits allow with `running` already under way.
    fn admit_all(w: &mut ReplayWindow, mut running: usize) -> Vec<Outgoing> {
        admit_all_with(w, &mut running, alone)
    }

    fn admit_all_with(
        w: &mut ReplayWindow,
        running: &mut usize,
        merge: fn(&Payload) -> Option<Coalescing>,
    ) -> Vec<Outgoing> {
        let mut out = Vec::new();
        while let Some(s) = w.admit(*running, merge) {
            *running += 1;
            out.push(s);
        }
        out
    }

    fn sent(send: Outgoing, result: Result<(), ExportError>) -> Sent {
        Sent {
            first: send.first,
            payloads: send.payloads,
            result,
        }
    }

    fn seqs(sends: &[Outgoing]) -> Vec<u64> {
        sends
            .iter()
            .flat_map(|s| s.payloads.iter().map(seq_of))
            .collect()
    }

    /// The sequence numbers of each send, one list per send.
    fn groups(sends: &[Outgoing]) -> Vec<Vec<u64>> {
        sends
            .iter()
            .map(|s| s.payloads.iter().map(seq_of).collect())
            .collect()
    }

    /// Records of lane 0 stored gzipped (as the client stores them), and their originals.
    fn gzipped(seqs: std::ops::Range<u64>) -> (Vec<Record>, Vec<Payload>) {
        seqs.map(|seq| {
            let mut bytes = seq.to_le_bytes().to_vec();
            bytes.extend(std::iter::repeat_n(b'a', 2000));
            let p = Payload::new(bytes).with_content_type(ContentType::Protobuf);
            let stored = compress::for_spool(&p).expect("compressible");
            (
                Record {
                    id: id(0, seq),
                    payload: stored,
                },
                p,
            )
        })
        .unzip()
    }

    #[test]
    fn stored_gzip_goes_out_as_it_is_only_to_an_exporter_that_takes_gzip() {
        let (recs, originals) = gzipped(1..4);
        let stored: Vec<Payload> = recs.iter().map(|r| r.payload.clone()).collect();
        let mut w = window(10, 10);
        w.on_read(recs.clone());
        let sends = admit_all(&mut w, 0);
        let got: Vec<Payload> = sends.into_iter().flat_map(|s| s.payloads).collect();
        assert_eq!(got, originals, "decompressed for an identity-only exporter");

        let mut w = window(10, 10);
        w.accepts_gzip = true;
        w.on_read(recs);
        let sends = admit_all_with(&mut w, &mut 0, merges);
        assert_eq!(sends.len(), 1, "gzip records merge with each other");
        assert_eq!(
            sends[0].payloads, stored,
            "the stored bytes, not compressed again"
        );
    }

    #[test]
    fn a_record_that_does_not_decompress_is_acknowledged_as_corrupt_and_never_sent() {
        let (mut recs, _) = gzipped(1..6);
        let bad = recs[2].payload.clone();
        let mut bytes = bad.bytes().to_vec();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        recs[2].payload = Payload::from_parts(bad.meta().clone(), bytes.into());
        for accepts_gzip in [false, true] {
            let mut w = window(10, 10);
            w.accepts_gzip = accepts_gzip;
            w.on_read(recs.clone());
            let sends = admit_all(&mut w, 0);
            let firsts: Vec<u64> = sends.iter().map(|s| s.first).collect();
            assert_eq!(
                firsts,
                vec![0, 1, 3, 4],
                "the corrupt record takes index 2, unsent"
            );
            for s in sends {
                w.settle(sent(s, Ok(())));
            }
            let acks = w.take_acks(true).expect("acks");
            assert_eq!(acks.ids, vec![id(0, 5)]);
            assert_eq!((acks.delivered, acks.rejected, acks.corrupt), (4, 0, 1));
        }
        // The last record corrupt, nothing else to send: still acknowledged.
        let mut w = window(10, 10);
        w.on_read(recs[2..3].to_vec());
        assert!(admit_all(&mut w, 0).is_empty());
        let acks = w.take_acks(true).expect("acks");
        assert_eq!((acks.ids, acks.corrupt), (vec![id(0, 3)], 1));
    }

    #[test]
    fn a_read_is_decoded_ahead_only_within_its_budget_and_the_rest_when_next_to_go() {
        let (recs, originals) = gzipped(0..6);
        let each = originals[0].len() as u64;
        let d = Decoding {
            accepts_gzip: false,
            limit: u64::MAX,
            budget: 2 * each,
        };
        let queued = prepare(recs, d);
        let decoded: Vec<bool> = queued
            .iter()
            .map(|q| matches!(q.state, QueuedState::Ready(_)))
            .collect();
        assert_eq!(decoded, [true, true, false, false, false, false]);
        let mut w = window(10, 10);
        w.on_read_queued(queued);
        let sends = admit_all(&mut w, 0);
        let got: Vec<Payload> = sends.into_iter().flat_map(|s| s.payloads).collect();
        assert_eq!(got, originals, "the rest decoded one by one as they go");
        assert_eq!(w.queued_bytes, 0);
        // A record that decodes past the limit is settled too large, in order, unsent.
        let (recs, _) = gzipped(0..3);
        let d = Decoding {
            accepts_gzip: true,
            limit: each - 1,
            budget: u64::MAX,
        };
        let mut w = window(10, 10);
        w.on_read_queued(prepare(recs, d));
        assert!(admit_all(&mut w, 0).is_empty());
        let acks = w.take_acks(true).expect("acks");
        assert_eq!((acks.ids, acks.too_large), (vec![id(0, 2)], 3));
    }

    #[test]
    fn acks_keep_the_last_record_of_each_lane_in_order_and_count_outcomes() {
        let mut acks = Acks::default();
        for (i, (lane, seq)) in [(3, 7), (3, 8), (0, 1), (0, 2), (0, 3)]
            .into_iter()
            .enumerate()
        {
            acks.push(id(lane, seq), i != 2);
        }
        assert_eq!(acks.ids, vec![id(3, 8), id(0, 3)]);
        assert_eq!((acks.delivered, acks.rejected), (4, 1));
        assert!(Acks::default().ids.is_empty());
    }

    #[test]
    fn window_reads_until_a_batch_is_queued_and_admits_up_to_the_in_flight_limit() {
        let mut w = window(4, 2);
        assert!(w.wants_read());
        w.on_read(records(0..4));
        assert!(!w.wants_read(), "a full batch is queued");
        let first = admit_all(&mut w, 0);
        assert_eq!(seqs(&first), vec![0, 1]);
        assert!(w.wants_read(), "room for the next batch while sending");
        assert!(w.admit(2, alone).is_none());
    }

    #[test]
    fn a_stalled_oldest_record_holds_the_window_at_max_records() {
        let mut w = window(3, 8);
        w.on_read(records(0..6));
        let mut sends = admit_all(&mut w, 0);
        assert_eq!(seqs(&sends), vec![0, 1, 2]);
        // Records 1 and 2 settle, 0 stalls: nothing more may start.
        let s2 = sends.pop().expect("send 2");
        let s1 = sends.pop().expect("send 1");
        w.settle(sent(s2, Ok(())));
        w.settle(sent(s1, Ok(())));
        assert!(w.admit(1, alone).is_none());
        assert!(
            w.take_acks(false).is_none(),
            "nothing settled at the front yet"
        );
        // Record 0 settles: the prefix 0..=2 is due and three more may start.
        let s0 = sends.pop().expect("send 0");
        w.settle(sent(s0, Ok(())));
        let acks = w.take_acks(false).expect("prefix due");
        assert_eq!((acks.ids.clone(), acks.delivered), (vec![id(0, 2)], 3));
        assert!(w.take_acks(true).is_none(), "taken once");
        assert_eq!(seqs(&admit_all(&mut w, 0)), vec![3, 4, 5]);
    }

    #[test]
    fn a_permanent_rejection_is_settled_and_acknowledged_as_rejected() {
        let mut w = window(10, 10);
        w.on_read(records(0..3));
        let mut sends = admit_all(&mut w, 0).into_iter();
        for (i, s) in sends.by_ref().enumerate() {
            let r = if i == 1 {
                Err(ExportError::permanent("400"))
            } else {
                Ok(())
            };
            w.settle(sent(s, r));
        }
        let acks = w.take_acks(true).expect("all settled");
        assert_eq!(acks.ids, vec![id(0, 2)]);
        assert_eq!((acks.delivered, acks.rejected), (2, 1));
        assert_eq!(w.stopped(), None);
    }

    #[test]
    fn a_retryable_failure_stops_admission_and_nothing_after_it_is_acknowledged() {
        let mut w = window(10, 10);
        w.on_read(records(0..6));
        let sends: Vec<_> = (0..4).filter_map(|r| w.admit(r, alone)).collect();
        let mut sends = sends.into_iter();
        let (a, b, c, d) = (
            sends.next().expect("0"),
            sends.next().expect("1"),
            sends.next().expect("2"),
            sends.next().expect("3"),
        );
        w.settle(sent(a, Ok(())));
        w.settle(sent(
            b,
            Err(ExportError::retryable_after("503", Duration::from_secs(2))),
        ));
        w.settle(sent(
            d,
            Err(ExportError::retryable_after("429", Duration::from_secs(5))),
        ));
        w.settle(sent(c, Ok(())));
        assert_eq!(
            w.stopped(),
            Some(Stop::Failed(Some(Duration::from_secs(5)))),
            "the largest Retry-After wins"
        );
        assert!(
            w.admit(0, alone).is_none(),
            "no send starts after a failure"
        );
        assert!(!w.wants_read());
        let acks = w.take_acks(true).expect("the delivered prefix");
        assert_eq!((acks.ids, acks.delivered), (vec![id(0, 0)], 1));
        assert!(
            w.take_acks(true).is_none(),
            "record 2 went through after the failure: not acknowledged"
        );
    }

    #[test]
    fn a_one_batch_replay_reads_once_and_reports_whether_the_batch_was_full() {
        let mut w = ReplayWindow::new(
            Window {
                max_records: 1,
                in_flight: 1,
                one_batch: true,
            },
            u64::MAX,
            Coalescing::UNLIMITED,
        );
        assert_eq!(w.batch_done(), None);
        w.on_read(records(0..1));
        assert!(!w.wants_read());
        let s = w.admit(0, merges).expect("the probe record");
        assert_eq!(w.batch_done(), Some(true));
        w.settle(sent(s, Ok(())));
        assert!(w.take_acks(true).is_some());
    }

    #[test]
    fn an_empty_read_exhausts_the_window_until_told_to_read_again() {
        let mut w = window(10, 1);
        w.start_read(false);
        w.on_read(Vec::new());
        assert!(w.is_exhausted() && !w.wants_read());
        assert!(
            !w.take_recheck(),
            "read with nothing outstanding: empty means empty"
        );
        w.read_again();
        assert!(w.wants_read());
    }

    #[test]
    fn an_empty_read_made_ahead_of_acknowledgements_is_checked_once_after_them() {
        let merges = |_: &Payload| None;
        let mut w = window(10, 2);
        w.start_read(false);
        w.on_read(records(0..2));
        let s = w.admit(0, merges).expect("first send");
        // The next read runs while the first record is in flight.
        w.start_read(true);
        w.on_read(Vec::new());
        assert!(w.is_exhausted());
        let t = w.admit(0, merges).expect("second send");
        w.settle(sent(s, Ok(())));
        w.settle(sent(t, Ok(())));
        assert!(w.take_acks(true).is_some());
        assert!(w.take_recheck(), "checked by one more read");
        assert!(!w.take_recheck(), "once");
        w.read_again();
        assert!(w.wants_read());
        // Records read but not started count as outstanding too.
        let mut w = window(10, 1);
        w.start_read(false);
        w.on_read(records(0..1));
        w.start_read(false);
        w.on_read(Vec::new());
        assert!(w.take_recheck());
    }

    #[test]
    fn a_spool_failure_stops_admission_and_outranks_a_later_retryable_failure() {
        let mut w = window(10, 10);
        w.on_read(records(0..3));
        let s = w.admit(0, alone).expect("one");
        w.stop_for_spool();
        assert!(w.admit(1, alone).is_none());
        w.settle(sent(s, Err(ExportError::retryable("reset"))));
        assert_eq!(w.stopped(), Some(Stop::SpoolTrouble));
    }

    #[test]
    fn read_ahead_stops_at_the_byte_limit() {
        let mut w = ReplayWindow::new(
            Window {
                max_records: 100,
                in_flight: 1,
                one_batch: false,
            },
            25,
            Coalescing::UNLIMITED,
        );
        w.on_read(records(0..2));
        assert!(w.wants_read(), "20 of 25 bytes queued");
        w.on_read(records(2..3));
        assert!(!w.wants_read(), "30 of 25 bytes queued");
        let _ = w.admit(0, alone);
        assert!(w.wants_read(), "20 bytes queued again");
    }

    #[test]
    fn consecutive_records_merge_up_to_the_caps_and_the_room_in_the_window() {
        let mut w = ReplayWindow::new(
            Window {
                max_records: 10,
                in_flight: 8,
                one_batch: false,
            },
            u64::MAX,
            Coalescing::new(4, 1000),
        );
        w.on_read(records(0..12));
        let mut running = 0;
        let sends = admit_all_with(&mut w, &mut running, merges);
        // Four per send (the record cap), and no more than 10 past the oldest unsettled.
        assert_eq!(
            groups(&sends),
            vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]
        );
        // The exporter's own byte cap (10-byte payloads) is smaller still.
        let mut w = window(10, 8);
        w.on_read(records(0..5));
        let send = w
            .admit(0, |_| Some(Coalescing::new(usize::MAX, 25)))
            .expect("a send");
        assert_eq!(groups(&[send]), vec![vec![0, 1]]);
    }

    #[test]
    fn only_compatible_records_the_exporter_accepts_to_merge_travel_together() {
        let mut w = window(10, 8);
        let mut rs = records(0..8);
        for r in &mut rs[2..4] {
            r.payload = r.payload.clone().with_content_type(ContentType::Json);
        }
        rs[5].payload = rs[5].payload.clone().with_key("opaque");
        w.on_read(rs);
        let mut running = 0;
        let sends = admit_all_with(&mut w, &mut running, |p| {
            p.meta().key.is_none().then_some(Coalescing::UNLIMITED)
        });
        assert_eq!(
            groups(&sends),
            vec![vec![0, 1], vec![2, 3], vec![4], vec![5], vec![6, 7]]
        );
    }

    #[test]
    fn a_merged_send_rejected_permanently_is_retried_one_by_one_and_only_the_poison_is_dropped() {
        let mut w = ReplayWindow::new(
            Window {
                max_records: 10,
                in_flight: 2,
                one_batch: false,
            },
            u64::MAX,
            Coalescing::new(3, u64::MAX),
        );
        w.on_read(records(0..8));
        let mut running = 0;
        let mut sends = admit_all_with(&mut w, &mut running, merges).into_iter();
        let (a, b) = (sends.next().expect("0..3"), sends.next().expect("3..6"));
        // The second merged request is rejected: nothing is dropped yet.
        w.settle(sent(b, Err(ExportError::permanent("400"))));
        w.settle(sent(a, Ok(())));
        let acks = w.take_acks(false).expect("the first request");
        assert_eq!(
            (acks.ids, acks.delivered, acks.rejected),
            (vec![id(0, 2)], 3, 0)
        );
        // Its records go again one by one, before the records not started yet.
        let mut running = 0;
        let singles = admit_all_with(&mut w, &mut running, merges);
        assert_eq!(groups(&singles), vec![vec![3], vec![4]]);
        let mut singles = singles.into_iter();
        w.settle(sent(singles.next().expect("3"), Ok(())));
        w.settle(sent(
            singles.next().expect("4"),
            Err(ExportError::permanent("poison")),
        ));
        let mut running = 1;
        let next = admit_all_with(&mut w, &mut running, merges);
        assert_eq!(
            groups(&next),
            vec![vec![5]],
            "the last single, then new records"
        );
        w.settle(sent(next.into_iter().next().expect("5"), Ok(())));
        let acks = w.take_acks(false).expect("the retried records");
        assert_eq!(
            (acks.ids, acks.delivered, acks.rejected),
            (vec![id(0, 5)], 2, 1)
        );
        let mut running = 0;
        assert_eq!(
            groups(&admit_all_with(&mut w, &mut running, merges)),
            vec![vec![6, 7]]
        );
    }

    #[test]
    fn a_retryable_failure_of_a_merged_send_settles_none_of_its_records() {
        let mut w = window(10, 1);
        w.on_read(records(0..3));
        let send = w.admit(0, merges).expect("all three");
        w.settle(sent(send, Err(ExportError::retryable("503"))));
        assert!(w.take_acks(true).is_none());
        assert_eq!(w.stopped(), Some(Stop::Failed(None)));
    }
}
