//! Group commit: one fdatasync shared by concurrent durable appenders. It knows log
//! sequence numbers (bytes written since open), who waits for which, and what each commit
//! answered to whom; what a commit syncs is the appender's, handed to it as closures.
//!
//! Each caller takes a ticket for the LSN it needs durable. One caller at a time leads a
//! commit: it takes everything written so far, fdatasyncs it with no lock held (appenders
//! keep writing meanwhile), then answers every ticket that commit covered, with its success
//! or its error, and no other. A ticket a commit did not cover waits for the next one.
//!
//! A commit starts once every durable append under way waits for one
//! ([`Tickets::gathered`]): those still writing their record, and those the last commit
//! answered that have not returned yet (a caller that appends again at once is about to
//! write its next record). The last of them to arrive leads it; the first to find some
//! still missing gathers (see [`Step::Gather`]): it leads the commit itself if they are
//! held up longer (by a rotation or an eviction) than [`gather_bound`]. A commit that
//! started at once would cover only the callers that got in first; the others, arriving a
//! moment later, would wait for the next one, and callers that append in a loop would
//! settle into two groups taking turns, each commit covering about half of them (measured
//! on row 2b of `docs/benchmarks.md`: about 30 % fewer records per second). What is
//! waited for is CPU work (a wake-up, a frame encoding, a `write(2)`), and a lone appender
//! never waits.

use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::locks::{later, lock};

/// Longest the next commit waits for the durable appends under way, however long the last
/// one took (see [`gather_bound`]): an append held up longer, by a rotation or an eviction,
/// joins the commit after it.
pub(crate) const MAX_GATHER: Duration = Duration::from_millis(1);

/// What the callers of a commit whose fdatasync panicked are answered.
const COMMIT_PANICKED: &str = "the fdatasync of a group commit panicked";

/// How long the gatherer waits at most, given how long the last commit took: twice that
/// (and [`MAX_GATHER`]). When the appends under way all arrive, the last of them starts the
/// commit while the gatherer still sleeps; a bound of one commit's duration would wake the
/// gatherer in the middle of that commit for nothing (on the benchmark machine the time
/// between commits was then the same or longer: row 2b of `docs/benchmarks.md`).
fn gather_bound(last_commit: Duration) -> Duration {
    last_commit.saturating_mul(2).min(MAX_GATHER)
}

/// One caller waiting for a commit.
#[derive(Debug)]
struct Waiter {
    ticket: u64,
    /// What it needs durable: everything written up to this LSN.
    lsn: u64,
    /// It waits inside a durable append (see [`Tickets::gathered`]).
    appender: bool,
    /// Set by the first commit that covered `lsn`: `None` for success, or that commit's
    /// error.
    answer: Option<Option<Arc<io::Error>>>,
}

/// What a caller holding a ticket does next (see [`Tickets::step`]).
#[derive(Debug)]
enum Step {
    /// A commit covered its ticket: this is its answer (the ticket is spent).
    Answered(io::Result<()>),
    /// It leads a commit now, until [`Tickets::finish`].
    Lead,
    /// It is the one that leads the next commit once every durable append under way waits
    /// for it, or once it waited long enough: it waits for that, with a deadline.
    Gather,
    /// It waits for a commit to answer it.
    Wait,
}

/// The bookkeeping of group commit, free of locks and clocks so that a test can drive it
/// step by step: who waits for which LSN, whether a commit runs, who gathers the next one,
/// what each commit answered, and which durable appends are under way.
#[derive(Debug, Default)]
struct Tickets {
    /// Everything written up to this LSN is fdatasynced.
    synced: u64,
    /// A caller leads a commit (the others wait for its answer).
    committing: bool,
    /// The ticket whose holder gathers the next commit (see [`Step::Gather`]).
    gatherer: Option<u64>,
    /// Durable appends under way: begun and not yet answered (or given up).
    appending: usize,
    next_ticket: u64,
    waiters: Vec<Waiter>,
}

impl Tickets {
    /// A durable append begins.
    fn begin_append(&mut self) {
        self.appending += 1;
    }

    /// A durable append got its answer, or gave up before it wrote. Returns whether the
    /// gatherer should be woken: it need not wait any more.
    fn end_append(&mut self) -> bool {
        self.appending = self.appending.saturating_sub(1);
        self.gatherer.is_some() && !self.committing && self.gathered()
    }

    /// A ticket for a caller that needs everything up to `lsn` durable (`appender`: from
    /// inside a durable append); `None` if it already is.
    fn wait_for(&mut self, lsn: u64, appender: bool) -> Option<u64> {
        if lsn <= self.synced {
            return None;
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.waiters.push(Waiter {
            ticket,
            lsn,
            appender,
            answer: None,
        });
        Some(ticket)
    }

    /// What the holder of `ticket` does next; `waited` says that it gathered for as long as
    /// it may. Answered, the ticket is spent. Otherwise, when no commit runs, it leads one
    /// if every durable append under way waits (it is usually the last of them to arrive)
    /// or if it is the gatherer and waited long enough; the first to find neither gathers.
    fn step(&mut self, ticket: u64, waited: bool) -> Step {
        if let Some(answer) = self.answer(ticket) {
            return Step::Answered(answer);
        }
        if self.committing {
            return Step::Wait;
        }
        let gatherer = *self.gatherer.get_or_insert(ticket) == ticket;
        if self.gathered() || (gatherer && waited) {
            self.committing = true;
            self.gatherer = None;
            return Step::Lead;
        }
        if gatherer { Step::Gather } else { Step::Wait }
    }

    /// The answer to `ticket` once a commit covered it (the ticket is then spent).
    fn answer(&mut self, ticket: u64) -> Option<io::Result<()>> {
        let i = self
            .waiters
            .iter()
            .position(|w| w.ticket == ticket && w.answer.is_some())?;
        if self.gatherer == Some(ticket) {
            self.gatherer = None;
        }
        match self.waiters.swap_remove(i).answer {
            Some(Some(e)) => Some(Err(copy_error(&e))),
            _ => Some(Ok(())),
        }
    }

    /// Whether every durable append under way waits for a commit, so that the next one
    /// need not wait for anyone. One still writing its record, or answered and not returned
    /// yet (a caller that appends again at once writes its next record right after), is
    /// worth waiting for: the commit covers it too.
    fn gathered(&self) -> bool {
        let waiting = self
            .waiters
            .iter()
            .filter(|w| w.appender && w.answer.is_none())
            .count();
        waiting >= self.appending
    }

    /// The running commit, which covered everything written up to `target`, ended with
    /// `failure` (`None`: it succeeded). Every ticket it covered is answered with that;
    /// a ticket beyond `target` waits for the next commit.
    fn finish(&mut self, target: u64, failure: Option<&io::Error>) {
        self.committing = false;
        let failure = failure.map(|e| Arc::new(copy_error(e)));
        if failure.is_none() {
            self.synced = self.synced.max(target);
        }
        for w in &mut self.waiters {
            if w.answer.is_none() && w.lsn <= target {
                w.answer = Some(failure.clone());
            }
        }
    }
}

/// An error as each caller a failed commit covered receives it: the same OS error code,
/// or the same kind and message.
fn copy_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

/// Group commit state, under `GroupCommit::state`.
#[derive(Debug, Default)]
struct SyncState {
    tickets: Tickets,
    /// How long the last commit took (it bounds the gatherer's wait).
    last_commit: Duration,
    /// Callers asleep on `GroupCommit::gathered`: the gatherer, and one that gathered
    /// before the commit that answers it started and is not awake yet (a wake-up is a
    /// system call: none is made for no one).
    gatherers_asleep: usize,
}

/// The group commit of one appender.
#[derive(Debug, Default)]
pub(crate) struct GroupCommit {
    /// Bytes written by the appender since open (a log sequence number).
    written_lsn: AtomicU64,
    state: Mutex<SyncState>,
    /// Wakes callers waiting for a commit's answer.
    done: Condvar,
    /// Wakes the gatherer (see [`Step::Gather`]).
    gathered: Condvar,
}

/// A durable append under way, from before it takes the writer's lock until its commit
/// answers it ([`GroupCommit::sync_through`]); the next commit waits for it to write.
/// Dropped before that (the append failed), it stops counting.
#[derive(Debug)]
pub(crate) struct Appending<'a> {
    commit: &'a GroupCommit,
    /// Still counted among the appends under way.
    counted: bool,
}

impl Appending<'_> {
    /// Stops counting (the caller holds the state lock). Returns whether the gatherer
    /// should be woken (after the lock is released).
    fn end(&mut self, st: &mut SyncState) -> bool {
        std::mem::replace(&mut self.counted, false)
            && st.tickets.end_append()
            && st.gatherers_asleep > 0
    }
}

impl Drop for Appending<'_> {
    fn drop(&mut self) {
        if self.counted {
            let commit = self.commit;
            let wake = self.end(&mut lock(&commit.state));
            if wake {
                commit.gathered.notify_all();
            }
        }
    }
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
        self.written() > lock(&self.state).tickets.synced
    }

    /// A durable append begins: until its commit answers it (or it gives up), the next
    /// commit waits for it to write its record, so that one commit covers it with the
    /// others.
    pub(crate) fn appending(&self) -> Appending<'_> {
        lock(&self.state).tickets.begin_append();
        Appending {
            commit: self,
            counted: true,
        }
    }

    /// Returns once everything up to `lsn` is fsynced, sharing one fsync among concurrent
    /// callers (one leads the commit, the others wait for its answer). `appending` is the
    /// caller's own durable append, if it is one. The leader takes the work with `take`
    /// (the LSN it covers and what to sync), syncs it with `sync` without any lock held,
    /// and on failure hands it back with `give_back` for the next commit.
    ///
    /// # Errors
    ///
    /// The error of the commit that covered `lsn`, for every caller that commit covered
    /// (a later commit retries the work).
    pub(crate) fn sync_through<W>(
        &self,
        lsn: u64,
        mut appending: Option<Appending<'_>>,
        take: impl Fn() -> (u64, W),
        sync: impl Fn(&W) -> io::Result<()>,
        give_back: impl Fn(W),
    ) -> io::Result<()> {
        let mut st = lock(&self.state);
        let Some(ticket) = st.tickets.wait_for(lsn, appending.is_some()) else {
            let wake = appending.as_mut().is_some_and(|a| a.end(&mut st));
            drop(st);
            if wake {
                self.gathered.notify_all();
            }
            return Ok(());
        };
        // While this caller gathers: until when.
        let mut deadline: Option<Instant> = None;
        loop {
            let waited = deadline.is_some_and(|d| Instant::now() >= d);
            match st.tickets.step(ticket, waited) {
                Step::Answered(answer) => {
                    let wake = appending.as_mut().is_some_and(|a| a.end(&mut st));
                    drop(st);
                    if wake {
                        self.gathered.notify_all();
                    }
                    return answer;
                }
                Step::Wait => {
                    deadline = None;
                    st = self.done.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                Step::Gather => {
                    let now = Instant::now();
                    let until =
                        *deadline.get_or_insert_with(|| later(now, gather_bound(st.last_commit)));
                    let left = until.saturating_duration_since(now);
                    if !left.is_zero() {
                        st.gatherers_asleep += 1;
                        st = match self.gathered.wait_timeout(st, left) {
                            Ok((g, _)) => g,
                            Err(p) => p.into_inner().0,
                        };
                        st.gatherers_asleep -= 1;
                    }
                }
                Step::Lead => {
                    deadline = None;
                    drop(st);
                    let started = Instant::now();
                    let (target, work) = take();
                    let r = match panic::catch_unwind(AssertUnwindSafe(|| sync(&work))) {
                        Ok(r) => r,
                        Err(panic) => {
                            // A file system whose fdatasync panics must not leave the
                            // callers this commit covers waiting for ever: they are
                            // answered with an error, the work goes back to the next
                            // commit, and the panic goes on in this caller.
                            give_back(work);
                            let mut st = lock(&self.state);
                            st.tickets
                                .finish(target, Some(&io::Error::other(COMMIT_PANICKED)));
                            let _ = st.tickets.answer(ticket);
                            drop(st);
                            self.done.notify_all();
                            self.gathered.notify_all();
                            panic::resume_unwind(panic);
                        }
                    };
                    if r.is_err() {
                        give_back(work);
                    }
                    st = lock(&self.state);
                    st.tickets.finish(target, r.as_ref().err());
                    st.last_commit = started.elapsed();
                    // The leader's own ticket is covered (it wrote before it took the
                    // work): it gets its commit's error itself, the others a copy.
                    let mine = st.tickets.answer(ticket).map(|answer| {
                        let _ = appending.as_mut().map(|a| a.end(&mut st));
                        r.and(answer)
                    });
                    // Woken with the lock released, the callers it answered do not queue
                    // up on it. A gatherer still asleep (this commit started without it,
                    // once the last append under way arrived) has its answer too.
                    let gatherer = st.gatherers_asleep > 0;
                    drop(st);
                    self.done.notify_all();
                    if gatherer {
                        self.gathered.notify_all();
                    }
                    if let Some(answer) = mine {
                        return answer;
                    }
                    st = lock(&self.state);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eio() -> io::Error {
        io::Error::from_raw_os_error(5)
    }

    #[test]
    fn the_gatherer_waits_twice_the_last_commit_and_never_over_the_cap() {
        assert_eq!(
            gather_bound(Duration::ZERO),
            Duration::ZERO,
            "first commit: no wait"
        );
        assert_eq!(
            gather_bound(Duration::from_micros(200)),
            Duration::from_micros(400)
        );
        assert_eq!(gather_bound(Duration::from_millis(3)), MAX_GATHER);
        assert_eq!(gather_bound(Duration::MAX), MAX_GATHER, "saturates");
    }

    fn answered(t: &mut Tickets, ticket: u64) -> io::Result<()> {
        match t.step(ticket, false) {
            Step::Answered(answer) => answer,
            other => panic!("ticket {ticket} not answered: {other:?}"),
        }
    }

    #[test]
    fn a_failed_commit_answers_every_ticket_it_covered_and_no_other() {
        let mut t = Tickets::default();
        let a = t.wait_for(100, false).expect("not synced");
        let b = t.wait_for(200, false).expect("not synced");
        assert!(matches!(t.step(a, false), Step::Lead), "no commit runs");
        // The leader took everything written up to 200; meanwhile one more caller wrote
        // up to 300 and waits.
        let c = t.wait_for(300, false).expect("not synced");
        assert!(
            matches!(t.step(c, false), Step::Wait),
            "one commit at a time"
        );
        assert!(matches!(t.step(b, false), Step::Wait));
        t.finish(200, Some(&eio()));
        for ticket in [a, b] {
            let e = answered(&mut t, ticket).expect_err("the failure reaches all it covered");
            assert_eq!(e.raw_os_error(), Some(5));
        }
        assert_eq!(t.synced, 0, "nothing became durable");
        // A caller whose bytes the failed commit covered, arriving after its answer, waits
        // for the next commit: the failure was answered to those it covered.
        let d = t.wait_for(150, false).expect("still not synced");
        assert!(
            matches!(t.step(c, false), Step::Lead),
            "not covered: c leads the next commit"
        );
        assert!(matches!(t.step(d, false), Step::Wait));
        t.finish(300, None);
        assert!(answered(&mut t, c).is_ok());
        assert!(answered(&mut t, d).is_ok());
        assert_eq!(t.synced, 300);
        assert!(t.wait_for(250, false).is_none(), "durable already: no wait");
        assert!(t.waiters.is_empty(), "every ticket spent");
    }

    #[test]
    fn a_commit_whose_fdatasync_panics_answers_the_callers_it_covered_and_the_next_one_runs() {
        let commit = Arc::new(GroupCommit::default());
        commit.wrote(10);
        let given_back = Arc::new(AtomicU64::new(0));
        // The leader's fdatasync panics once the other caller waits for it.
        let leader = {
            let commit = Arc::clone(&commit);
            let given_back = Arc::clone(&given_back);
            std::thread::spawn(move || {
                panic::catch_unwind(AssertUnwindSafe(|| {
                    commit.sync_through(
                        10,
                        None,
                        || (10, ()),
                        |()| {
                            while lock(&commit.state).tickets.waiters.len() < 2 {
                                std::thread::yield_now();
                            }
                            panic!("a file system's fdatasync panicked");
                        },
                        |()| {
                            given_back.fetch_add(1, Ordering::AcqRel);
                        },
                    )
                }))
            })
        };
        while !lock(&commit.state).tickets.committing {
            std::thread::yield_now();
        }
        let other = commit.sync_through(10, None, || (10, ()), |()| Ok(()), |()| {});
        let e = other.expect_err("answered with an error, not left waiting");
        assert!(e.to_string().contains("panicked"), "{e}");
        assert!(
            leader.join().expect("thread").is_err(),
            "the panic goes on in the leader"
        );
        assert_eq!(given_back.load(Ordering::Acquire), 1, "the work goes back");
        // Nothing is stuck: the next caller leads a commit that succeeds.
        assert!(
            commit
                .sync_through(10, None, || (10, ()), |()| Ok(()), |()| {})
                .is_ok()
        );
        assert!(lock(&commit.state).tickets.waiters.is_empty());
    }

    #[test]
    fn a_ticket_beyond_the_running_commit_waits_for_the_next_one() {
        let mut t = Tickets::default();
        let a = t.wait_for(10, false).expect("not synced");
        assert!(matches!(t.step(a, false), Step::Lead));
        // Written after the leader took the work (up to 10).
        let b = t.wait_for(20, false).expect("not synced");
        t.finish(10, None);
        assert!(answered(&mut t, a).is_ok());
        assert!(
            matches!(t.step(b, false), Step::Lead),
            "its bytes were not in that commit: it leads the next one"
        );
        t.finish(20, None);
        assert!(answered(&mut t, b).is_ok());
        assert_eq!(t.synced, 20);
    }

    #[test]
    fn the_first_durable_append_gathers_and_the_last_to_write_leads_the_commit() {
        let mut t = Tickets::default();
        for _ in 0..3 {
            t.begin_append();
        }
        let a = t.wait_for(10, true).expect("not synced");
        assert!(
            matches!(t.step(a, false), Step::Gather),
            "two appends still writing"
        );
        let s = t.wait_for(10, false).expect("not synced");
        assert!(
            matches!(t.step(s, false), Step::Wait),
            "a caller of `sync` is not what the commit waits for"
        );
        let b = t.wait_for(20, true).expect("not synced");
        assert!(matches!(t.step(b, false), Step::Wait), "one still writing");
        let c = t.wait_for(30, true).expect("not synced");
        assert!(
            matches!(t.step(c, false), Step::Lead),
            "the last to write leads, without waking the gatherer"
        );
        assert!(matches!(t.step(a, false), Step::Wait), "a commit runs");
        t.finish(30, None);
        for ticket in [a, s, b, c] {
            assert!(answered(&mut t, ticket).is_ok());
        }
    }

    #[test]
    fn an_answered_append_counts_until_it_returns_and_one_that_leaves_wakes_the_gatherer() {
        let mut t = Tickets::default();
        t.begin_append();
        t.begin_append();
        let a = t.wait_for(10, true).expect("not synced");
        let b = t.wait_for(20, true).expect("not synced");
        assert!(matches!(t.step(b, false), Step::Lead));
        t.finish(20, None);
        assert!(answered(&mut t, b).is_ok());
        assert!(!t.end_append(), "no gatherer to wake");
        // b appends again at once; a was answered and has not returned yet.
        t.begin_append();
        let c = t.wait_for(30, true).expect("not synced");
        assert!(
            matches!(t.step(c, false), Step::Gather),
            "a may append again"
        );
        assert!(answered(&mut t, a).is_ok());
        assert!(
            t.end_append(),
            "a returned for good: the gatherer need not wait"
        );
        assert!(matches!(t.step(c, false), Step::Lead));
        t.finish(30, None);
        assert!(answered(&mut t, c).is_ok());
        assert!(!t.end_append());
        assert!(!t.end_append(), "never below zero");
        assert_eq!(t.appending, 0);
    }

    #[test]
    fn the_gatherer_leads_without_the_missing_appends_once_it_waited_long_enough() {
        let mut t = Tickets::default();
        t.begin_append();
        t.begin_append();
        let a = t.wait_for(10, true).expect("not synced");
        assert!(matches!(t.step(a, false), Step::Gather));
        assert!(matches!(t.step(a, true), Step::Lead), "its deadline passed");
        t.finish(10, None);
        assert!(answered(&mut t, a).is_ok());
        assert!(t.gatherer.is_none());
    }

    /// A commit that blocks until the test lets it finish, with the answer the test gives.
    struct HeldCommit {
        started: std::sync::mpsc::Sender<u64>,
        finish: Mutex<std::sync::mpsc::Receiver<io::Result<()>>>,
    }

    fn run_commit(
        gc: &GroupCommit,
        lsn: u64,
        held: &HeldCommit,
        syncs: &AtomicU64,
    ) -> io::Result<()> {
        gc.sync_through(
            lsn,
            Some(gc.appending()),
            || (gc.written(), gc.written()),
            |&target| {
                syncs.fetch_add(1, Ordering::SeqCst);
                let _ = held.started.send(target);
                lock(&held.finish)
                    .recv()
                    .unwrap_or_else(|_| Err(io::Error::other("test ended")))
            },
            |_| {},
        )
    }

    /// Spins until `n` callers wait (no clock involved: each step is a state change).
    fn until_waiting(gc: &GroupCommit, n: usize) {
        while lock(&gc.state).tickets.waiters.len() < n {
            std::thread::yield_now();
        }
    }

    #[test]
    fn callers_of_a_failed_commit_all_get_its_error_and_a_later_writer_gets_the_next_commit() {
        let gc = GroupCommit::default();
        let syncs = AtomicU64::new(0);
        let (started_tx, started) = std::sync::mpsc::channel();
        let (finish, finish_rx) = std::sync::mpsc::channel();
        let held = HeldCommit {
            started: started_tx,
            finish: Mutex::new(finish_rx),
        };
        std::thread::scope(|s| {
            gc.wrote(100);
            let leader = s.spawn(|| run_commit(&gc, 100, &held, &syncs));
            assert_eq!(started.recv().expect("the commit starts"), 100);
            // Written before the commit took its work: covered by it.
            let covered = s.spawn(|| run_commit(&gc, 50, &held, &syncs));
            until_waiting(&gc, 2);
            // Written while the commit runs: not covered by it.
            gc.wrote(100);
            let later = s.spawn(|| run_commit(&gc, 200, &held, &syncs));
            until_waiting(&gc, 3);
            finish.send(Err(eio())).expect("fail the first commit");
            let e = leader
                .join()
                .expect("leader")
                .expect_err("its commit failed");
            assert_eq!(e.raw_os_error(), Some(5));
            let e = covered.join().expect("covered").expect_err("covered by it");
            assert_eq!(e.raw_os_error(), Some(5));
            // The later writer leads the next commit, which covers everything written.
            assert_eq!(started.recv().expect("a second commit"), 200);
            finish.send(Ok(())).expect("let it succeed");
            later
                .join()
                .expect("later")
                .expect("the next commit succeeded");
        });
        assert_eq!(syncs.load(Ordering::SeqCst), 2);
        assert!(!gc.behind());
    }
}
