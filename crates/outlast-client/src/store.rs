//! The client's hold on the spool: the handle while it is open (or why it could not be
//! opened), spool calls running on the blocking pool, and the close at shutdown or when the
//! last client goes away. Appends and reads are the callers'; this room only hands out the
//! spool and takes it back.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use outlast_spool::{Spool, SpoolError, SpoolStats};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::stats::SpoolState;

/// The spool, while it is open.
#[derive(Debug)]
pub(crate) struct SpoolSlot {
    slot: RwLock<Option<Arc<Spool>>>,
    /// Why the spool could not be opened, if it could not.
    open_error: Option<Arc<SpoolError>>,
    /// The spool's gauges once it was taken out, for stats after shutdown.
    closed: Arc<Mutex<Closed>>,
    /// Set once the spool taken out by a shutdown has been closed (or synced) without error,
    /// even after the shutdown stopped waiting for it.
    close_synced: Arc<AtomicBool>,
    /// Spool calls running on the blocking pool (adoption, a flush's sync, an append in
    /// `FsyncEveryAppend` mode, replay reads and acknowledgements): the drain task waits for
    /// them as it stops.
    calls: Arc<SpoolCalls>,
}

impl SpoolSlot {
    pub(crate) fn new(spool: Option<Arc<Spool>>, open_error: Option<Arc<SpoolError>>) -> SpoolSlot {
        SpoolSlot {
            slot: RwLock::new(spool),
            open_error,
            closed: Arc::default(),
            close_synced: Arc::default(),
            calls: Arc::default(),
        }
    }

    /// Why the spool could not be opened, if it could not.
    pub(crate) fn open_error(&self) -> Option<&Arc<SpoolError>> {
        self.open_error.as_ref()
    }

    /// The spool, if it is open.
    pub(crate) fn spool(&self) -> Option<Arc<Spool>> {
        self.slot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn is_open(&self) -> bool {
        self.slot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// The spool's state for [`ClientStats::spool`](crate::ClientStats::spool).
    pub(crate) fn state(&self) -> SpoolState {
        match &self.open_error {
            _ if self.is_open() => SpoolState::Available,
            Some(e) => SpoolState::Unavailable {
                reason: Arc::clone(e),
            },
            None => SpoolState::Closed,
        }
    }

    /// Current spool gauges: live, or as they were when the spool was closed.
    pub(crate) fn stats(&self) -> Option<SpoolStats> {
        match self.spool() {
            Some(s) => Some(s.stats()),
            None => self
                .closed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .stats
                .clone(),
        }
    }

    /// Takes the spool out (no new appends or reads can start), and syncs and closes it on
    /// the blocking pool (joining its background thread and an fdatasync take as long as
    /// the disk does), waiting at most `limit`. If an export still holds it, it is synced,
    /// and released when that export finishes.
    ///
    /// `Ok(true)` once it is closed (or synced) within `limit`; `Ok(false)` if it did not
    /// finish in time: it goes on in the background and the spool's lock is released when
    /// it is done. Without a spool, `Ok(true)`.
    ///
    /// # Errors
    ///
    /// The spool's error if the sync or close failed within `limit`.
    pub(crate) async fn close_within(&self, limit: Duration) -> Result<bool, SpoolError> {
        let Some(spool) = self.take() else {
            return Ok(true);
        };
        let synced = Arc::clone(&self.close_synced);
        let close = tokio::task::spawn_blocking(move || {
            let result = close_or_sync(spool);
            synced.store(result.is_ok(), Ordering::Release);
            result
        });
        match tokio::time::timeout(limit, close).await {
            Ok(Ok(result)) => result.map(|()| true),
            // The blocking task panicked or was cancelled with the runtime: nothing known.
            Ok(Err(_)) => Ok(false),
            Err(_) => {
                tracing::warn!(target: crate::LOG_TARGET,
                    "outlast: closing the spool did not finish within the shutdown's time; it goes on in the background"
                );
                Ok(false)
            }
        }
    }

    /// Takes the spool out and closes it on the blocking pool without waiting (the last
    /// `Client` was dropped): the worker thread running the drain task never waits for the
    /// disk. Without a runtime to hand it to, it is closed here.
    pub(crate) fn release_in_background(&self) {
        let Some(spool) = self.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(move || {
                    if let Err(e) = close_or_sync(spool) {
                        tracing::warn!(target: crate::LOG_TARGET, error = %e, "outlast: closing the spool failed");
                    }
                });
            }
            Err(_) => {
                if let Err(e) = close_or_sync(spool) {
                    tracing::warn!(target: crate::LOG_TARGET, error = %e, "outlast: closing the spool failed");
                }
            }
        }
    }

    /// Whether the spool a shutdown took out has been closed (or synced) without error.
    pub(crate) fn close_synced(&self) -> bool {
        self.close_synced.load(Ordering::Acquire)
    }

    /// Takes the spool out of the shared state, keeping its gauges for `stats()`.
    fn take(&self) -> Option<Arc<Spool>> {
        let spool = self
            .slot
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take()?;
        let mut closed = self.closed.lock().unwrap_or_else(PoisonError::into_inner);
        closed.taken = true;
        closed.stats = Some(spool.stats());
        drop(closed);
        Some(spool)
    }

    /// Runs `f` on the blocking pool with `spool`, counted in [`SpoolSlot::calls`] until
    /// it has returned and let `spool` go. A call that ends after a shutdown took the spool
    /// out (it outlived the shutdown's wait) notes the gauges again: what it acknowledged or
    /// found lost is then counted once, and not also as waiting.
    pub(crate) fn spawn_call<T: Send + 'static>(
        &self,
        spool: Arc<Spool>,
        f: impl FnOnce(&Spool) -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let running = self.calls.start();
        let closed = Arc::clone(&self.closed);
        tokio::task::spawn_blocking(move || {
            let v = f(&spool);
            let mut closed = closed.lock().unwrap_or_else(PoisonError::into_inner);
            if closed.taken {
                closed.stats = Some(spool.stats());
            }
            drop(closed);
            drop(spool);
            drop(running);
            v
        })
    }

    /// Waits, at most `limit`, until no spool call started through
    /// [`spawn_call`](SpoolSlot::spawn_call) is running: once they have returned,
    /// they hold no spool handle any more.
    pub(crate) async fn wait_for_calls(&self, limit: Duration) {
        if tokio::time::timeout(limit, self.calls.idle())
            .await
            .is_err()
        {
            tracing::debug!(target: crate::LOG_TARGET,
                "outlast: a spool call is still running; it releases the spool when it returns"
            );
        }
    }
}

/// The spool's gauges once a shutdown (or the last client's drop) took it out.
#[derive(Debug, Default)]
struct Closed {
    taken: bool,
    /// Noted when it was taken out, and again by each call that ended after that.
    stats: Option<SpoolStats>,
}

/// Closes `spool` if this is its last handle, else syncs it (the last holder's drop
/// releases it). Blocks on the disk: for the blocking pool.
fn close_or_sync(spool: Arc<Spool>) -> Result<(), SpoolError> {
    match Arc::try_unwrap(spool) {
        Ok(spool) => spool.close(),
        Err(shared) => shared.sync(),
    }
}

/// Counts spool calls running on the blocking pool.
#[derive(Debug, Default)]
pub(crate) struct SpoolCalls {
    running: AtomicUsize,
    done: Notify,
}

impl SpoolCalls {
    fn start(self: &Arc<Self>) -> SpoolCallGuard {
        self.running.fetch_add(1, Ordering::AcqRel);
        SpoolCallGuard(Arc::clone(self))
    }

    /// Returns once no call is running.
    async fn idle(&self) {
        loop {
            let done = self.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.running.load(Ordering::Acquire) == 0 {
                return;
            }
            done.await;
        }
    }
}

/// One running spool call (see [`SpoolSlot::spawn_call`]).
#[derive(Debug)]
pub(crate) struct SpoolCallGuard(Arc<SpoolCalls>);

impl Drop for SpoolCallGuard {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.done.notify_waiters();
        }
    }
}
