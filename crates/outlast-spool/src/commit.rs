//! Group commit: one fdatasync shared by concurrent durable appenders. It knows log
//! sequence numbers (bytes written since open) and who waits for which; what a commit
//! syncs is the appender's, handed to it as closures.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::locks::{later, lock};

/// Longest a group commit waits for the callers of the previous one to join it.
pub(crate) const MAX_GATHER: Duration = Duration::from_millis(1);

/// Group commit bookkeeping, under `GroupCommit::state`.
#[derive(Debug, Default)]
struct SyncState {
    /// Everything the writer wrote up to this LSN is fdatasynced.
    synced_lsn: u64,
    /// A caller is running a commit (the others wait on `GroupCommit::done`).
    in_progress: bool,
    /// The LSN each caller inside `sync_through` waits for (one entry per caller).
    waiting: Vec<u64>,
    /// Callers the last commit satisfied, and how long it took: the next commit waits
    /// briefly for that many callers before it starts (see `GroupCommit::gather`).
    last_group: usize,
    last_commit: Duration,
}

impl SyncState {
    /// Callers still waiting for a commit (not yet satisfied by the last one).
    fn unsatisfied(&self) -> usize {
        self.waiting
            .iter()
            .filter(|&&l| l > self.synced_lsn)
            .count()
    }
}

/// The group commit of one appender.
#[derive(Debug, Default)]
pub(crate) struct GroupCommit {
    /// Bytes written by the appender since open (a log sequence number).
    written_lsn: AtomicU64,
    state: Mutex<SyncState>,
    /// Wakes callers waiting for a commit to finish.
    done: Condvar,
    /// Wakes a committer that is gathering callers (see `GroupCommit::gather`).
    gather: Condvar,
}

impl GroupCommit {
    /// The appender wrote `n` bytes more (called under its lock, after the write).
    pub(crate) fn wrote(&self, n: u64) {
        self.written_lsn.fetch_add(n, Ordering::AcqRel);
    }

    /// The LSN of everything written so far.
    pub(crate) fn written(&self) -> u64 {
        self.written_lsn.load(Ordering::Acquire)
    }

    /// Whether something written is not fdatasynced yet.
    pub(crate) fn behind(&self) -> bool {
        self.written() > lock(&self.state).synced_lsn
    }

    /// Returns once everything up to `lsn` is fsynced, sharing one fsync among concurrent
    /// callers (one becomes the committer, the others wait for it). The committer takes
    /// the work with `take` (the LSN it covers and what to sync), syncs it with `sync`
    /// without any lock held, and on failure hands it back with `give_back` for the next
    /// commit.
    pub(crate) fn sync_through<W>(
        &self,
        lsn: u64,
        take: impl Fn() -> (u64, W),
        sync: impl Fn(&W) -> io::Result<()>,
        give_back: impl Fn(W),
    ) -> io::Result<()> {
        let mut st = lock(&self.state);
        if st.synced_lsn >= lsn {
            return Ok(());
        }
        st.waiting.push(lsn);
        self.gather.notify_one();
        let result = loop {
            if st.synced_lsn >= lsn {
                break Ok(());
            }
            if st.in_progress {
                st = self.done.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st.in_progress = true;
            st = self.gather(st);
            let before = st.synced_lsn;
            drop(st);
            let started = Instant::now();
            let (target, work) = take();
            let r = sync(&work);
            if r.is_err() {
                give_back(work);
            }
            st = lock(&self.state);
            st.in_progress = false;
            if r.is_ok() {
                st.synced_lsn = st.synced_lsn.max(target);
                st.last_group = st
                    .waiting
                    .iter()
                    .filter(|&&l| l > before && l <= target)
                    .count();
                st.last_commit = started.elapsed();
            }
            self.done.notify_all();
            if let Err(e) = r {
                break Err(e);
            }
        };
        if let Some(i) = st.waiting.iter().position(|&l| l == lsn) {
            st.waiting.swap_remove(i);
        }
        result
    }

    /// Called by the committer before it starts. When the last commit was shared by several
    /// callers, they are likely to append again at once; without waiting, this commit would
    /// cover only those that got in first and the rest would need one more fsync. So it
    /// waits until as many callers wait as the last commit satisfied, for at most half that
    /// commit's duration (and [`MAX_GATHER`]). A lone caller never waits.
    fn gather<'a>(&self, mut st: MutexGuard<'a, SyncState>) -> MutexGuard<'a, SyncState> {
        if st.last_group <= 1 {
            return st;
        }
        let deadline = later(Instant::now(), (st.last_commit / 2).min(MAX_GATHER));
        while st.unsatisfied() < st.last_group {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = match self.gather.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        st
    }
}
