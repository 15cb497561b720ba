//! The drain task: replays the spool oldest first, acknowledges only what the backend
//! confirmed, backs off while the backend is down, and probes it when the exporter can.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use outlast_core::retry::Backoff;
use outlast_core::{ExportError, Reachability};
use outlast_spool::{ReadBatch, Record, RecordId, Spool, SpoolError};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::DropReason;
use crate::shared::Shared;
use crate::stats::Counters;

/// Runs the drain loop until `stop` fires or its sender is dropped (the last `Client` went
/// away). The loop itself never returns and never panics on I/O or exporter errors.
pub(crate) async fn run(shared: Arc<Shared>, stop: oneshot::Receiver<()>) {
    {
        let mut drain = Drain::new(&shared);
        tokio::select! {
            biased;
            _ = stop => {}
            () = drain.run() => {}
        }
    }
    tracing::debug!("outlast: drain task ended");
}

type AttemptFuture<'a> = Pin<Box<dyn Future<Output = Result<(), ExportError>> + Send + 'a>>;

struct Drain<'a> {
    shared: &'a Shared,
    backoff: Backoff,
    /// When the next attempt may be made (after a failure).
    retry_at: Option<Instant>,
    /// False once the exporter answered a probe with `Unsupported`.
    probe_supported: bool,
    /// The last flush request acted on.
    seen_flush: u64,
}

/// How a batch went.
enum Settled {
    /// Everything delivered or dropped on purpose, and acknowledged.
    Done,
    /// A retryable failure: back off, with the largest `Retry-After`.
    Failed(Option<Duration>),
    /// Delivered records could not be acknowledged: back off; they will be delivered again
    /// (at least once).
    SpoolTrouble,
}

impl<'a> Drain<'a> {
    fn new(shared: &'a Shared) -> Drain<'a> {
        Drain {
            shared,
            backoff: Backoff::new(shared.settings.retry),
            retry_at: None,
            probe_supported: true,
            seen_flush: shared.flush_epoch.load(Ordering::Acquire),
        }
    }

    async fn run(&mut self) {
        let shared = self.shared;
        loop {
            if !shared.has_backlog() {
                self.idle().await;
                continue;
            }
            if let Some(at) = self.retry_at.take() {
                self.wait_until(at).await;
            }
            // Flush requests made before this attempt are answered by it.
            self.seen_flush = shared.flush_epoch.load(Ordering::Acquire);
            let Some(spool) = shared.spool() else {
                // No spool (closed by shutdown): nothing can be drained any more.
                std::future::pending::<()>().await;
                continue;
            };
            if !shared.is_online() && self.probe_supported {
                match self.probe().await {
                    Reachability::Reachable => {}
                    Reachability::Unsupported => self.probe_supported = false,
                    Reachability::Unreachable => {
                        self.on_failure(None);
                        continue;
                    }
                }
            }
            // While offline only the oldest record is sent, as a probe; once it goes through,
            // whole batches follow.
            let (max_records, in_flight) = if shared.is_online() {
                let exporter_limit = shared.exporter.max_in_flight_dyn().max(1);
                (
                    shared.settings.batch_size,
                    shared.settings.max_in_flight.min(exporter_limit),
                )
            } else {
                (1, 1)
            };
            let max_bytes = shared.settings.batch_max_bytes;
            let snapshot = shared.backlog_snapshot();
            let batch = match self
                .spool_call(&spool, move |s| s.read_batch(max_records, max_bytes))
                .await
            {
                Some(Ok(b)) => b,
                Some(Err(e)) => {
                    shared.warn_spool_trouble("read", &e);
                    self.on_spool_trouble();
                    continue;
                }
                None => {
                    self.on_spool_trouble();
                    continue;
                }
            };
            let batch = self.count_skipped(batch);
            if batch.records.is_empty() {
                if shared.try_clear_backlog(snapshot) {
                    tracing::info!("outlast: backlog delivered; exporting directly again");
                    shared.progress.notify_waiters();
                }
                continue;
            }
            let results = self.send(&batch.records, in_flight).await;
            match self.settle(&spool, &batch.records, results).await {
                Settled::Done => {
                    self.backoff.reset();
                    shared.set_online(true);
                    shared.progress.notify_waiters();
                    // Pause only when more records may follow (the batch was full).
                    let pause = shared.settings.batch_delay;
                    if !pause.is_zero() && batch.records.len() >= max_records {
                        tokio::time::sleep(pause).await;
                    }
                }
                Settled::Failed(retry_after) => {
                    spool.rewind();
                    self.on_failure(retry_after);
                    shared.progress.notify_waiters();
                }
                Settled::SpoolTrouble => {
                    spool.rewind();
                    self.on_spool_trouble();
                    shared.progress.notify_waiters();
                }
            }
        }
    }

    /// Waits for new records. If they come from a failed direct export (the backend was just
    /// found down), the first retry waits one backoff delay instead of hitting it again.
    async fn idle(&mut self) {
        let shared = self.shared;
        shared.progress.notify_waiters();
        let work = shared.work.notified();
        tokio::pin!(work);
        work.as_mut().enable();
        if !shared.has_backlog() {
            work.await;
        }
        if shared.has_backlog() && !shared.is_online() && self.retry_at.is_none() {
            let hint = shared.take_retry_after_hint();
            self.schedule_retry(hint);
        }
    }

    /// Sleeps until `at`, or until a flush asks to drain now (which also resets the backoff).
    async fn wait_until(&mut self, at: Instant) {
        let shared = self.shared;
        let flush = shared.flush_now.notified();
        tokio::pin!(flush);
        flush.as_mut().enable();
        if shared.flush_epoch.load(Ordering::Acquire) == self.seen_flush {
            tokio::select! {
                () = tokio::time::sleep_until(at) => return,
                () = &mut flush => {}
            }
        }
        tracing::debug!("outlast: flush requested; retrying now");
        self.backoff.reset();
    }

    async fn probe(&self) -> Reachability {
        let limit = self.shared.settings.attempt_timeout;
        match tokio::time::timeout(limit, self.shared.exporter.probe_boxed()).await {
            Ok(r) => r,
            Err(_) => Reachability::Unreachable,
        }
    }

    fn schedule_retry(&mut self, retry_after: Option<Duration>) -> Duration {
        let delay = self.backoff.next_delay(retry_after);
        self.retry_at = Some(Instant::now() + delay);
        delay
    }

    fn on_failure(&mut self, retry_after: Option<Duration>) {
        Counters::bump(&self.shared.counters.replay_failures);
        self.shared.set_online(false);
        let delay = self.schedule_retry(retry_after);
        self.shared.warn_retrying(delay);
    }

    /// The spool could not be read or acknowledged: retry after a backoff delay, without
    /// declaring the backend unreachable.
    fn on_spool_trouble(&mut self) {
        self.schedule_retry(None);
    }

    /// Counts what the spool skipped while reading (expired or damaged records).
    fn count_skipped(&self, batch: ReadBatch) -> ReadBatch {
        self.shared
            .record_drop(DropReason::Expired, batch.expired.records);
        self.shared
            .record_drop(DropReason::Corrupt, batch.corrupt_skipped);
        batch
    }

    /// Runs a spool operation: inline in `OsWrite` mode, on the blocking pool otherwise.
    /// `None` if the blocking task failed.
    async fn spool_call<T: Send + 'static>(
        &self,
        spool: &Arc<Spool>,
        f: impl FnOnce(&Spool) -> T + Send + 'static,
    ) -> Option<T> {
        if self.shared.spool_calls_inline() {
            return Some(f(spool));
        }
        let spool = Arc::clone(spool);
        match tokio::task::spawn_blocking(move || f(&spool)).await {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::error!(error = %e, "outlast: spool task failed");
                None
            }
        }
    }

    /// Sends the records with up to `in_flight` attempts at once. After the first retryable
    /// failure no new attempt starts; those under way finish (each bounded by the attempt
    /// timeout). Returns each record's result, `None` for records not attempted.
    async fn send(
        &self,
        records: &[Record],
        in_flight: usize,
    ) -> Vec<Option<Result<(), ExportError>>> {
        let shared = self.shared;
        let mut results: Vec<Option<Result<(), ExportError>>> =
            records.iter().map(|_| None).collect();
        let mut running: Vec<(usize, AttemptFuture<'_>)> = Vec::with_capacity(in_flight);
        let mut next = 0;
        let mut failed = false;
        loop {
            while !failed && running.len() < in_flight && next < records.len() {
                let payload = &records[next].payload;
                running.push((next, Box::pin(shared.attempt(payload))));
                next += 1;
            }
            if running.is_empty() {
                break;
            }
            let finished = poll_fn(|cx| {
                let mut done = Vec::new();
                running.retain_mut(|(i, fut)| match fut.as_mut().poll(cx) {
                    Poll::Ready(r) => {
                        done.push((*i, r));
                        false
                    }
                    Poll::Pending => true,
                });
                if done.is_empty() {
                    Poll::Pending
                } else {
                    Poll::Ready(done)
                }
            })
            .await;
            for (i, result) in finished {
                if matches!(&result, Err(e) if e.is_retryable()) {
                    failed = true;
                }
                results[i] = Some(result);
            }
        }
        results
    }

    /// Acknowledges the longest prefix of records that were delivered or rejected for good,
    /// and says whether the batch failed.
    async fn settle(
        &self,
        spool: &Arc<Spool>,
        records: &[Record],
        results: Vec<Option<Result<(), ExportError>>>,
    ) -> Settled {
        let shared = self.shared;
        let retry_after = results
            .iter()
            .filter_map(|r| r.as_ref().and_then(|r| r.as_ref().err()))
            .filter_map(ExportError::retry_after)
            .max();
        let mut delivered = 0u64;
        let mut rejected = 0u64;
        let mut prefix = 0;
        for (record, result) in records.iter().zip(results) {
            match result {
                Some(Ok(())) => delivered += 1,
                Some(Err(e)) if e.is_permanent() => {
                    tracing::debug!(error = %e, lane = record.id.lane, seq = record.id.seq, "outlast: spooled record rejected permanently; dropping it");
                    rejected += 1;
                }
                _ => break,
            }
            prefix += 1;
        }
        let failed = prefix < records.len();
        if prefix > 0 {
            let ids = last_id_per_lane(&records[..prefix]);
            let acked = self
                .spool_call(spool, move |s| -> Result<(), SpoolError> {
                    for id in ids {
                        s.ack(id)?;
                    }
                    Ok(())
                })
                .await;
            match acked {
                Some(Ok(())) => {
                    shared
                        .counters
                        .replayed
                        .fetch_add(delivered, Ordering::Relaxed);
                    shared.record_drop(DropReason::Permanent, rejected);
                }
                Some(Err(e)) => {
                    // Delivered but not acknowledged: delivered again later (at least once).
                    shared.warn_spool_trouble("ack", &e);
                    return Settled::SpoolTrouble;
                }
                None => return Settled::SpoolTrouble,
            }
        }
        if failed {
            Settled::Failed(retry_after)
        } else {
            Settled::Done
        }
    }
}

/// For a run of records in spool order, the last id of each lane, in order of appearance:
/// acknowledging it acknowledges the lane's records up to it.
fn last_id_per_lane(records: &[Record]) -> Vec<RecordId> {
    let mut ids: Vec<RecordId> = Vec::new();
    for r in records {
        match ids.iter_mut().find(|id| id.lane == r.id.lane) {
            Some(id) => *id = r.id,
            None => ids.push(r.id),
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use outlast_core::Payload;

    fn rec(lane: u32, seq: u64) -> Record {
        Record {
            id: RecordId { lane, seq },
            payload: Payload::new(&b"x"[..]),
        }
    }

    #[test]
    fn acknowledges_the_last_record_of_each_lane_in_order() {
        let records = [rec(3, 7), rec(3, 8), rec(0, 1), rec(0, 2), rec(0, 3)];
        assert_eq!(
            last_id_per_lane(&records),
            vec![RecordId { lane: 3, seq: 8 }, RecordId { lane: 0, seq: 3 }]
        );
        assert!(last_id_per_lane(&[]).is_empty());
    }
}
