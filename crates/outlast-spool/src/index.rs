//! The segment index: what the spool knows in memory about each segment of a lane (its
//! sequence numbers, length, age, damage found), without any per-record state.

use std::path::PathBuf;

use crate::format::SEGMENT_HEADER_LEN;
use crate::seqset::SeqSet;

/// What the in-memory index knows about one segment (no per-record state).
#[derive(Debug, Clone)]
pub(crate) struct SegMeta {
    pub(crate) id: u64,
    pub(crate) path: PathBuf,
    /// Bytes of the file that hold valid frames (the writer's committed length).
    pub(crate) len: u64,
    pub(crate) records: u64,
    /// 0: no record.
    pub(crate) first_seq: u64,
    /// 0: no record.
    pub(crate) last_seq: u64,
    /// `u64::MAX`: no record.
    pub(crate) oldest_ns: u64,
    pub(crate) newest_ns: u64,
    /// No more appends go to it.
    pub(crate) sealed: bool,
    /// Numbers between its first and last record that recovery found missing (lost to
    /// damage, counted then): not in `records`.
    pub(crate) holes: SeqSet,
}

impl SegMeta {
    pub(crate) fn new(id: u64, path: PathBuf, len: u64) -> SegMeta {
        SegMeta {
            id,
            path,
            len,
            records: 0,
            first_seq: 0,
            last_seq: 0,
            oldest_ns: u64::MAX,
            newest_ns: 0,
            sealed: false,
            holes: SeqSet::default(),
        }
    }

    pub(crate) fn note_record(&mut self, seq: u64, created_ns: u64) {
        self.records += 1;
        if self.first_seq == 0 {
            self.first_seq = seq;
        }
        self.last_seq = seq;
        self.oldest_ns = self.oldest_ns.min(created_ns);
        self.newest_ns = self.newest_ns.max(created_ns);
    }

    /// The framed bytes of `n` of its records, in proportion. Records of one segment are of
    /// similar size in practice; an exact figure would need a per-record index, which the
    /// spool does not keep (memory must not grow with its size).
    pub(crate) fn framed_bytes_of(&self, n: u64) -> u64 {
        proportional(self.len.saturating_sub(SEGMENT_HEADER_LEN), n, self.records)
    }

    /// Records of this segment not yet acknowledged, if `acked` is the lane's ack point.
    /// Exact: numbers missing inside the segment are known (`holes`).
    pub(crate) fn unacked(&self, acked: u64) -> u64 {
        if self.records == 0 || self.last_seq <= acked {
            0
        } else if self.first_seq > acked {
            self.records
        } else {
            let span = self.last_seq - acked;
            span.saturating_sub(self.holes.count_in(acked + 1, self.last_seq))
                .min(self.records)
        }
    }
}

/// `total * part / whole`, without overflow; `total` when `part >= whole`, 0 when `whole`
/// is 0.
pub(crate) fn proportional(total: u64, part: u64, whole: u64) -> u64 {
    if whole == 0 {
        return 0;
    }
    if part >= whole {
        return total;
    }
    u64::try_from(u128::from(total) * u128::from(part) / u128::from(whole)).unwrap_or(total)
}
