//! Two primitives every room of the spool uses: a lock that survives a poisoned mutex, and a
//! deadline that saturates instead of overflowing.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// `now + d`, saturated: a duration too long to add (a user's `Duration::MAX`, or an
/// interval of centuries from an environment variable) means "not within a century", which
/// is never in practice.
pub(crate) fn later(now: Instant, d: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(d)
        .or_else(|| now.checked_add(CENTURY))
        .unwrap_or(now)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of our locks leaves plain data behind (no invariant spans
    // an unwinding point), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
