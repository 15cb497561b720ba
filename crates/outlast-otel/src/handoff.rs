//! The hand-off from an SDK exporter call to an outlast [`Client`]: the encoded batch is
//! exported by a task on the bridge's runtime, and the SDK's call waits for its answer for a
//! bounded time.
//!
//! Why a task: the SDK calls exporters from its own threads through a plain `block_on`,
//! without a Tokio context, while [`Client::export`] needs Tokio. And why the task is not
//! cancelled when the bound expires: dropping `Client::export` before it answers would
//! abandon a payload that was never accepted. So the call answers `Timeout` and the task
//! carries on; its outcome (delivered, spooled, dropped) shows in the stats.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use outlast_client::{Client, DropError, Payload};

use crate::encode::{Encoded, Encoding};
use crate::logging::LOG_TARGET;
use crate::runtime::RuntimeRef;
use crate::signal::Signal;
use crate::stats::{Counters, SignalStats};

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

/// Counts each part of a hand-off task's batch exactly once: accepted or dropped when the
/// client answers it, dropped if the task is stopped first (the runtime shut down).
struct Settle {
    counters: Arc<Counters>,
    /// The items of each part not answered yet, in the order they are exported.
    unsettled: VecDeque<u64>,
    _in_flight: InFlightGuard,
}

impl Settle {
    /// Counts the next part.
    fn settle_next(&mut self, accepted: bool) {
        if let Some(items) = self.unsettled.pop_front() {
            self.counters.count(accepted, items);
        }
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        while !self.unsettled.is_empty() {
            self.settle_next(false);
        }
    }
}

/// What dropping the flushed work looked like at the end of the last flush report: the
/// items the exporters answered dropped and the requests the client dropped, so that the
/// next flush reports what was dropped since.
#[derive(Debug, Default)]
pub(crate) struct DropMark {
    reported: Mutex<(u64, u64)>,
}

/// Drops since the previous flush report, of one signal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DroppedSince {
    /// Items (spans, log records, data points) the exporters answered dropped.
    pub(crate) items: u64,
    /// Requests the client dropped (any reason, direct exports and spooled records alike).
    pub(crate) requests: u64,
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
    /// The largest encoded request handed to the client (its `max_record_bytes`, less the
    /// spool's framing): larger batches are split.
    pub(crate) part_limit: u64,
    pub(crate) drop_mark: DropMark,
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
        let part_limit = crate::encode::part_limit(client.max_record_bytes());
        Handoff {
            signal,
            part_limit,
            drop_mark: DropMark::default(),
            client,
            runtime,
            timeout,
            counters,
            in_flight,
            encoding,
        }
    }

    /// This signal's stats: the client's, and how the SDK's calls were answered.
    pub(crate) fn stats(&self) -> SignalStats {
        SignalStats::new(self.client.stats(), &self.counters, self.in_flight.count())
    }

    /// The drops of this signal so far: (items the exporters answered dropped, requests the
    /// client dropped).
    fn drops_now(&self) -> (u64, u64) {
        (
            self.counters.items_dropped.load(Ordering::Relaxed),
            self.client.stats().dropped.total(),
        )
    }

    /// Where a flush starting now measures its drops from: the end of the last flush report.
    pub(crate) fn drop_base(&self) -> (u64, u64) {
        *self
            .drop_mark
            .reported
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// What was dropped since `base` (a flush's [`drop_base`](Self::drop_base)); moves the
    /// mark to now for the next flush. Flushes that overlap each report every drop in their
    /// own span.
    pub(crate) fn dropped_since(&self, base: (u64, u64)) -> DroppedSince {
        let now = self.drops_now();
        let mut mark = self
            .drop_mark
            .reported
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *mark = (mark.0.max(now.0), mark.1.max(now.1));
        DroppedSince {
            items: now.0.saturating_sub(base.0),
            requests: now.1.saturating_sub(base.1),
        }
    }

    /// Hands the parts of one batch to the client, in order, and waits at most the bound for
    /// its answers.
    ///
    /// `Ok` means every part was delivered or spooled (durable as the client's durability
    /// mode says). `Timeout` means the client had not answered yet: the parts are still being
    /// exported and end delivered, spooled or dropped (counted in the stats), never silently
    /// lost. `InternalFailure` says which parts were dropped and why; the others went on.
    pub(crate) async fn export(
        &self,
        shut_down: &AtomicBool,
        parts: Vec<Encoded>,
    ) -> OTelSdkResult {
        if shut_down.load(Ordering::Acquire) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        let parts: Vec<Encoded> = parts.into_iter().filter(|p| p.items > 0).collect();
        let items: u64 = parts.iter().map(|p| p.items).sum();
        if items == 0 {
            return Ok(());
        }
        let count = parts.len();
        if count > 1 {
            self.counters.batches_split.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                target: LOG_TARGET,
                signal = %self.signal,
                items,
                requests = count,
                limit = self.part_limit,
                "outlast-otel: a batch larger than max_record_bytes is sent as several requests"
            );
        }
        let mut failures = Vec::new();
        let mut payloads = Vec::with_capacity(count);
        for part in parts {
            match part.bytes {
                Ok(bytes) => payloads.push((
                    Payload::new(bytes).with_content_type(self.encoding.content_type()),
                    part.items,
                )),
                Err(e) => {
                    self.counters.count(false, part.items);
                    failures.push((
                        part.items,
                        format!(
                            "outlast-otel could not encode {} {}: {e}",
                            part.items,
                            self.signal.item()
                        ),
                    ));
                }
            }
        }
        let answered = if payloads.is_empty() {
            Ok(failures)
        } else {
            self.export_parts(payloads, items, failures).await
        };
        let failures = answered?;
        if failures.is_empty() {
            return Ok(());
        }
        let dropped: u64 = failures.iter().map(|(n, _)| n).sum();
        let reasons: Vec<String> = failures.into_iter().map(|(_, why)| why).collect();
        let parts = if count > 1 {
            format!(" (split into {count} requests to fit max_record_bytes)")
        } else {
            String::new()
        };
        Err(OTelSdkError::InternalFailure(format!(
            "outlast dropped {dropped} of the {items} {} of a {} batch{parts}: {}",
            self.signal.item(),
            self.signal,
            reasons.join("; ")
        )))
    }

    /// Exports `payloads` (each with its item count) in order on the runtime; answers the
    /// failures (those of encoding given, then the client's drops), or the SDK error.
    async fn export_parts(
        &self,
        payloads: Vec<(Payload, u64)>,
        items: u64,
        mut failures: Vec<(u64, String)>,
    ) -> Result<Vec<(u64, String)>, OTelSdkError> {
        let client = self.client.clone();
        let signal = self.signal;
        let settle = Settle {
            counters: Arc::clone(&self.counters),
            unsettled: payloads.iter().map(|(_, n)| *n).collect(),
            _in_flight: self.in_flight.enter(),
        };
        let bound = self.timeout;
        // The outer task bounds the wait with the runtime's timer (the SDK's thread has
        // none); the inner task is detached on timeout, never cancelled.
        let outer = self.runtime.handle().spawn(async move {
            let inner = tokio::spawn(async move {
                let mut settle = settle;
                let mut dropped = Vec::new();
                for (payload, n) in payloads {
                    let result = client.export(payload).await;
                    settle.settle_next(result.is_ok());
                    if let Err(e) = result {
                        dropped.push((n, describe_drop(signal, n, &e)));
                    }
                }
                dropped
            });
            tokio::time::timeout(bound, inner).await
        });
        match outer.await {
            Ok(Ok(Ok(dropped))) => {
                failures.extend(dropped);
                Ok(failures)
            }
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

    /// Refuses further batches of the exporter whose flag `shut_down` is (each exporter
    /// handle has its own; the client stays open for the others); waits up to `timeout` for
    /// the batches under way on this signal to be answered (those of every handle: they are
    /// not told apart, so the wait may be longer than this handle's own work needs).
    pub(crate) fn shutdown(&self, shut_down: &AtomicBool, timeout: Duration) -> OTelSdkResult {
        if shut_down.swap(true, Ordering::AcqRel) {
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

/// The error message of a dropped request: how many items, and why (the signal is in the
/// message around it).
/// The causes (the collector's status and message, the spool's error) are appended, so that
/// the SDK's log of the failure says what happened.
fn describe_drop(signal: Signal, items: u64, dropped: &DropError) -> String {
    let mut s = format!(
        "a request of {items} {} dropped ({}): {dropped}",
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
