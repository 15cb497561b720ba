//! What is left to do, as the drain task and a flush see it: whether the spool holds a
//! backlog, and how many direct exports are under way.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Bit 0 of [`Backlog`]: a backlog exists. The other bits count appends.
const BACKLOG_BIT: u64 = 1;
/// What one append adds to [`Backlog`].
const ONE_APPEND: u64 = 2;

/// Whether the spool holds records to replay: set by every append (and adoption), cleared
/// only by the drain task, and only if no append happened since it found the spool empty
/// (one compare-and-swap over a flag and an append counter).
#[derive(Debug)]
pub(crate) struct Backlog {
    bits: AtomicU64,
    /// New records were appended: wakes an idle drain task.
    pub(crate) work: Notify,
}

impl Backlog {
    pub(crate) fn new(backlog: bool) -> Backlog {
        Backlog {
            bits: AtomicU64::new(if backlog { BACKLOG_BIT } else { 0 }),
            work: Notify::new(),
        }
    }

    pub(crate) fn exists(&self) -> bool {
        self.bits.load(Ordering::Acquire) & BACKLOG_BIT != 0
    }

    /// A value to hand to [`try_clear`](Self::try_clear) after finding the spool empty.
    /// Taken *before* reading the spool.
    pub(crate) fn snapshot(&self) -> u64 {
        self.bits.load(Ordering::Acquire)
    }

    /// Clears the backlog flag unless an append happened since `snapshot` (the drain task's
    /// call).
    pub(crate) fn try_clear(&self, snapshot: u64) -> bool {
        snapshot & BACKLOG_BIT != 0
            && self
                .bits
                .compare_exchange(
                    snapshot,
                    snapshot & !BACKLOG_BIT,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    /// Records appeared in the spool: a backlog exists now; the drain task is woken.
    pub(crate) fn mark(&self) {
        // Count first, then flag: a drain task that took its snapshot before this append
        // sees the count change and does not clear the flag.
        self.bits.fetch_add(ONE_APPEND, Ordering::AcqRel);
        self.bits.fetch_or(BACKLOG_BIT, Ordering::AcqRel);
        self.work.notify_one();
    }
}

/// Direct exports under way: written by the export path only (one guard per export), read
/// by the drain task (a flush waits for them, live-first replay leaves them room).
#[derive(Debug, Default)]
pub(crate) struct DirectExports {
    in_flight: AtomicUsize,
    /// A direct export ended.
    pub(crate) done: Notify,
}

impl DirectExports {
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Counts a direct export as under way until the guard is dropped.
    pub(crate) fn enter(&self) -> DirectGuard<'_> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        DirectGuard(self)
    }
}

/// Counts a direct export as under way until dropped, then wakes the drain task.
pub(crate) struct DirectGuard<'a>(&'a DirectExports);

impl Drop for DirectGuard<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.done.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_is_cleared_only_if_nothing_was_appended_since_the_snapshot() {
        let b = Backlog::new(false);
        assert!(!b.exists());
        assert!(!b.try_clear(b.snapshot()), "nothing to clear");
        b.mark();
        let snapshot = b.snapshot();
        b.mark();
        assert!(!b.try_clear(snapshot), "an append came after the snapshot");
        assert!(b.exists());
        assert!(b.try_clear(b.snapshot()));
        assert!(!b.exists());
    }

    #[test]
    fn a_direct_export_counts_until_its_guard_is_dropped() {
        let d = DirectExports::default();
        let a = d.enter();
        let b = d.enter();
        assert_eq!(d.in_flight(), 2);
        drop(a);
        drop(b);
        assert_eq!(d.in_flight(), 0);
    }
}
