//! The hand-off from an SDK exporter call to an outlast [`Client`]: the encoded batch is
//! exported by a task on the bridge's runtime, and the SDK's call waits for its answer for a
//! bounded time.
//!
//! Why a task: the SDK calls exporters from its own threads through a plain `block_on`,
//! without a Tokio context, while [`Client::export`] needs Tokio. And why the task is not
//! cancelled when the bound expires: dropping `Client::export` before it answers would
//! abandon a payload that was never accepted. So the call answers `Timeout` and the task
//! carries on; its outcome (delivered, spooled, dropped) shows in the stats.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use outlast_client::{Client, DropError, Payload};

use crate::Signal;
use crate::encode::{Encoded, Encoding};
use crate::runtime::RuntimeRef;

/// Counters of one signal's exporter calls, shared by its exporters, its pipeline and its
/// HTTP status classifier.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Batches the client accepted (delivered or spooled), whether or not the SDK's call
    /// was still waiting.
    pub(crate) batches_accepted: AtomicU64,
    pub(crate) items_accepted: AtomicU64,
    /// Batches the client dropped, or whose task was stopped with the runtime.
    pub(crate) batches_dropped: AtomicU64,
    pub(crate) items_dropped: AtomicU64,
    /// SDK calls answered `Timeout` (the batch was still under way).
    pub(crate) calls_timed_out: AtomicU64,
    pub(crate) rejected_requests: AtomicU64,
    pub(crate) partially_rejected_items: AtomicU64,
}

impl Counters {
    /// Counts one batch of `items`, accepted (delivered or spooled) or dropped.
    fn count(&self, accepted: bool, items: u64) {
        let (batches, counted) = if accepted {
            (&self.batches_accepted, &self.items_accepted)
        } else {
            (&self.batches_dropped, &self.items_dropped)
        };
        batches.fetch_add(1, Ordering::Relaxed);
        counted.fetch_add(items, Ordering::Relaxed);
    }
}

/// Hand-off tasks not yet answered by the client, so a flush can wait for them.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    count: Mutex<u64>,
    idle: Condvar,
    idle_async: tokio::sync::Notify,
}

impl InFlight {
    fn enter(self: &Arc<Self>) -> InFlightGuard {
        *self.count.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        InFlightGuard(Arc::clone(self))
    }

    /// Hand-off tasks under way.
    pub(crate) fn count(&self) -> u64 {
        *self.count.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits (blocking the thread) until none is under way or `timeout` passes; returns
    /// whether none is under way.
    pub(crate) fn wait_idle_blocking(&self, timeout: Duration) -> bool {
        let guard = self.count.lock().unwrap_or_else(PoisonError::into_inner);
        let (guard, _) = self
            .idle
            .wait_timeout_while(guard, timeout, |n| *n > 0)
            .unwrap_or_else(PoisonError::into_inner);
        *guard == 0
    }

    /// Waits until none is under way or `deadline` passes; returns whether none is.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub(crate) async fn wait_idle(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let notified = self.idle_async.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.count() == 0;
            }
        }
    }
}

/// Leaves the in-flight count when dropped, whether the task finished or was cancelled.
struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut n = self.0.count.lock().unwrap_or_else(PoisonError::into_inner);
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.0.idle.notify_all();
            self.0.idle_async.notify_waiters();
        }
    }
}

/// Counts a hand-off task's outcome exactly once: accepted or dropped when the client
/// answers, dropped if the task is stopped first (the runtime shut down).
struct Settle {
    counters: Arc<Counters>,
    items: u64,
    settled: bool,
    _in_flight: InFlightGuard,
}

impl Settle {
    fn settle(&mut self, accepted: bool) {
        self.settled = true;
        self.counters.count(accepted, self.items);
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        if !self.settled {
            self.settle(false);
        }
    }
}

/// What every exporter of one signal shares: the client, the runtime, the time bound.
#[derive(Debug)]
pub(crate) struct Handoff {
    pub(crate) signal: Signal,
    pub(crate) client: Client,
    pub(crate) runtime: RuntimeRef,
    pub(crate) timeout: Duration,
    pub(crate) counters: Arc<Counters>,
    pub(crate) in_flight: Arc<InFlight>,
    pub(crate) encoding: Encoding,
    shut_down: AtomicBool,
}

impl Handoff {
    pub(crate) fn new(
        signal: Signal,
        client: Client,
        runtime: RuntimeRef,
        timeout: Duration,
        counters: Arc<Counters>,
        in_flight: Arc<InFlight>,
        encoding: Encoding,
    ) -> Handoff {
        Handoff {
            signal,
            client,
            runtime,
            timeout,
            counters,
            in_flight,
            encoding,
            shut_down: AtomicBool::new(false),
        }
    }

    /// This signal's stats: the client's, and how the SDK's calls were answered.
    pub(crate) fn stats(&self) -> crate::SignalStats {
        crate::SignalStats::new(self.client.stats(), &self.counters, self.in_flight.count())
    }

    /// Hands `encoded` to the client and waits at most the bound for its answer.
    ///
    /// `Ok` means delivered or spooled (durable as the client's durability mode says).
    /// `Timeout` means the client had not answered yet: the batch is still being exported
    /// and ends delivered, spooled or dropped (counted in the stats), never silently lost.
    pub(crate) async fn export(&self, encoded: Encoded) -> OTelSdkResult {
        if self.shut_down.load(Ordering::Acquire) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        if encoded.items == 0 {
            return Ok(());
        }
        let items = encoded.items;
        let bytes = match encoded.bytes {
            Ok(bytes) => bytes,
            Err(e) => {
                self.counters.count(false, items);
                return Err(OTelSdkError::InternalFailure(format!(
                    "outlast-otel could not encode the {} batch of {items} {}: {e}",
                    self.signal,
                    self.signal.item()
                )));
            }
        };
        let payload = Payload::new(bytes).with_content_type(self.encoding.content_type());
        let client = self.client.clone();
        let settle = Settle {
            counters: Arc::clone(&self.counters),
            items,
            settled: false,
            _in_flight: self.in_flight.enter(),
        };
        let bound = self.timeout;
        // The outer task bounds the wait with the runtime's timer (the SDK's thread has
        // none); the inner task is detached on timeout, never cancelled.
        let outer = self.runtime.handle().spawn(async move {
            let inner = tokio::spawn(async move {
                let mut settle = settle;
                let result = client.export(payload).await;
                settle.settle(result.is_ok());
                result
            });
            tokio::time::timeout(bound, inner).await
        });
        match outer.await {
            Ok(Ok(Ok(Ok(_delivery)))) => Ok(()),
            Ok(Ok(Ok(Err(dropped)))) => Err(OTelSdkError::InternalFailure(describe_drop(
                self.signal,
                items,
                &dropped,
            ))),
            Ok(Ok(Err(join))) => Err(OTelSdkError::InternalFailure(format!(
                "outlast: the {} export task of {items} {} failed: {join}",
                self.signal,
                self.signal.item()
            ))),
            Ok(Err(_elapsed)) => {
                self.counters
                    .calls_timed_out
                    .fetch_add(1, Ordering::Relaxed);
                Err(OTelSdkError::Timeout(bound))
            }
            Err(join) => Err(OTelSdkError::InternalFailure(format!(
                "outlast: the runtime stopped before the {} batch of {items} {} was \
                 accepted: {join}",
                self.signal,
                self.signal.item()
            ))),
        }
    }

    /// Refuses further batches; waits up to `timeout` for those under way to be answered.
    pub(crate) fn shutdown(&self, timeout: Duration) -> OTelSdkResult {
        if self.shut_down.swap(true, Ordering::AcqRel) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        let started = Instant::now();
        if self.in_flight.wait_idle_blocking(timeout) {
            Ok(())
        } else {
            // Those still under way go on; they end delivered, spooled or counted dropped.
            Err(OTelSdkError::Timeout(started.elapsed()))
        }
    }
}

/// The error message of a dropped batch: the signal, how many items, and why.
/// The causes (the collector's status and message, the spool's error) are appended, so that
/// the SDK's log of the failure says what happened.
fn describe_drop(signal: Signal, items: u64, dropped: &DropError) -> String {
    let mut s = format!(
        "outlast dropped the {signal} batch of {items} {} ({}): {dropped}",
        signal.item(),
        dropped.reason()
    );
    let mut cause = std::error::Error::source(dropped);
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}
