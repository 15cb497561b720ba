//! The outlast side of every row: the spool (`outlast-spool`) and the client pipeline with
//! its HTTP exporter (`outlast-client`), driven the way an application drives them.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use outlast_client::http::{HttpExporter, PayloadFraming};
use outlast_client::testing::{Mode, Recording, TestReceiver};
use outlast_client::{Client, ContentType, Delivery, FlushOutcome};
use outlast_spool::{DEFAULT_SPOOL_MAX_BYTES, Durability, Payload, Spool, SpoolConfig, SpoolStats};
use tokio::runtime::Handle;

use crate::childproc::{hold, say};
use crate::disk::{WriteTimes, record};
use crate::workload::{AppendMode, READ_BATCH_BYTES, READ_BATCH_RECORDS, ReadAck};

/// Time limit for flushes that must complete (a replay of the largest backlog).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(600);
/// Time given to a client's shutdown once its work is measured (it may be offline).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_millis(200);
/// Records appended to learn the spool's per-record framing overhead.
const OVERHEAD_PROBE_RECORDS: u64 = 1000;

fn config(dir: &Path, cap: u64, mode: AppendMode) -> SpoolConfig {
    let durability = match mode {
        AppendMode::OsWrite => Durability::default(),
        AppendMode::FsyncEveryAppend => Durability::FsyncEveryAppend,
    };
    SpoolConfig::new(dir)
        .with_spool_max_bytes(cap.max(DEFAULT_SPOOL_MAX_BYTES))
        .with_durability(durability)
}

/// A cap with room for `bytes` of records plus framing and partly filled segments.
fn cap_for(bytes: u64) -> u64 {
    bytes.saturating_mul(2).max(DEFAULT_SPOOL_MAX_BYTES)
}

fn open(cfg: SpoolConfig) -> anyhow::Result<Spool> {
    let (spool, _) = Spool::open(cfg).context("Spool::open")?;
    Ok(spool)
}

fn append_one(spool: &Spool, body: &Bytes) -> anyhow::Result<()> {
    spool
        .append(Payload::new(body.clone()))
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("append: {}", e.kind))
}

/// Bytes the spool stores per 1 KiB record beyond the payload (frame header, metadata, CRC),
/// from the growth of the segment files over [`OVERHEAD_PROBE_RECORDS`] appends.
pub(crate) fn frame_overhead(dir: &Path) -> anyhow::Result<u64> {
    let spool = open(config(dir, 0, AppendMode::OsWrite))?;
    let body = Bytes::from(record(1024, 1));
    append_one(&spool, &body)?;
    let before: SpoolStats = spool.stats();
    for _ in 0..OVERHEAD_PROBE_RECORDS {
        append_one(&spool, &body)?;
    }
    let after = spool.stats();
    spool.close().context("close")?;
    let per_record = (after.bytes.saturating_sub(before.bytes)) / OVERHEAD_PROBE_RECORDS;
    anyhow::ensure!(
        per_record >= 1024,
        "spool stats report {per_record} bytes per 1 KiB record"
    );
    Ok(per_record - 1024)
}

/// Opens a fresh spool in `dir`, appends `count` records of `len` bytes from `threads`
/// threads, and syncs. Returns the times from open to the last append's return and to the
/// end of the sync.
pub(crate) fn append(
    dir: &Path,
    len: usize,
    count: u64,
    mode: AppendMode,
    threads: usize,
) -> anyhow::Result<WriteTimes> {
    let body = Bytes::from(record(len, 1));
    let cfg = config(dir, cap_for(count * len as u64), mode);
    let threads = threads.max(1) as u64;
    let start = Instant::now();
    let spool = open(cfg)?;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let n = count / threads + u64::from(t < count % threads);
                let (spool, body) = (&spool, &body);
                s.spawn(move || -> anyhow::Result<()> {
                    for _ in 0..n {
                        append_one(spool, body)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("appender thread panicked"))??;
        }
        anyhow::Ok(())
    })?;
    let written = start.elapsed();
    spool.sync().context("sync")?;
    let durable = start.elapsed();
    spool.close().context("close")?;
    Ok(WriteTimes { written, durable })
}

/// Appends `count` records of `len` bytes to a fresh spool (not timed), then reads them all
/// back oldest first in batches, acking each batch, as the drain does.
pub(crate) fn read_ack(dir: &Path, len: usize, count: u64) -> anyhow::Result<ReadAck> {
    let body = Bytes::from(record(len, 2));
    let spool = open(config(
        dir,
        cap_for(count * len as u64),
        AppendMode::OsWrite,
    ))?;
    for _ in 0..count {
        append_one(&spool, &body)?;
    }
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut in_read = Duration::ZERO;
    let start = Instant::now();
    loop {
        let t = Instant::now();
        let batch = spool
            .read_batch(READ_BATCH_RECORDS, READ_BATCH_BYTES)
            .context("read_batch")?;
        in_read += t.elapsed();
        let Some(last) = batch.records.last() else {
            break;
        };
        let id = last.id;
        records += batch.records.len() as u64;
        bytes += batch
            .records
            .iter()
            .map(|r| r.payload.len() as u64)
            .sum::<u64>();
        spool.ack(id).context("ack")?;
    }
    let elapsed = start.elapsed();
    spool.close().context("close")?;
    Ok(ReadAck {
        records,
        bytes,
        elapsed,
        in_read,
    })
}

/// Child: fills a spool capped at `bytes` with `len`-byte records until it is full, syncs
/// (so that write-back does not disturb the recovery timing), says `ready` and waits to be
/// killed without closing the spool.
pub(crate) fn child_fill_then_hold(dir: &Path, bytes: u64, len: usize) -> anyhow::Result<()> {
    let cfg = SpoolConfig::new(dir).with_spool_max_bytes(bytes);
    let spool = open(cfg)?;
    let body = Bytes::from(record(len, 3));
    loop {
        match spool.append(Payload::new(body.clone())) {
            Ok(_) => {}
            Err(e) if e.is_full() => break,
            Err(e) => anyhow::bail!("append: {}", e.kind),
        }
    }
    spool.sync().context("sync")?;
    say(&format!("ready {}", spool.stats().records));
    hold()
}

/// Child: times `Spool::open` of a spool left by a killed process, says
/// `result <seconds> <records>`, and waits to be killed (so the next child finds the same
/// crashed state).
pub(crate) fn child_open_then_hold(dir: &Path, bytes: u64) -> anyhow::Result<()> {
    let cfg = SpoolConfig::new(dir).with_spool_max_bytes(bytes);
    let start = Instant::now();
    let (spool, report) = Spool::open(cfg).context("Spool::open")?;
    let elapsed = start.elapsed();
    say(&format!(
        "result {:.6} {}",
        elapsed.as_secs_f64(),
        report.records
    ));
    let _keep_open = spool;
    hold()
}

/// The receiver every HTTP row uses, outlast's and the references alike: outlast's
/// `TestReceiver`, recording only keys and sizes so that it stays cheap on long runs.
#[derive(Debug)]
pub(crate) struct Receiver {
    inner: TestReceiver,
    handle: Handle,
}

impl Receiver {
    /// Starts the receiver on the current runtime.
    ///
    /// # Errors
    ///
    /// The port cannot be bound.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub(crate) async fn start() -> anyhow::Result<Receiver> {
        let inner = TestReceiver::builder()
            .recording(Recording::KeysAndSizes)
            .start()
            .await
            .context("starting the test receiver")?;
        Ok(Receiver {
            inner,
            handle: Handle::current(),
        })
    }

    /// The URL to POST to.
    pub(crate) fn url(&self) -> String {
        self.inner.url()
    }

    /// Switches the receiver up (200 OK) or down (connections refused). Call from outside
    /// the runtime.
    pub(crate) fn set_up(&self, up: bool) -> anyhow::Result<()> {
        self.handle.block_on(self.set_mode(up))
    }

    async fn set_mode(&self, up: bool) -> anyhow::Result<()> {
        let mode = if up { Mode::Up } else { Mode::Down };
        self.inner
            .set_mode(mode)
            .await
            .context("switching the receiver")
    }

    /// Answers every request after `cost` (a fixed cost per request), or at once with
    /// `None`. Call from outside the runtime.
    pub(crate) fn set_cost(&self, cost: Option<Duration>) -> anyhow::Result<()> {
        let mode = cost.map_or(Mode::Up, Mode::Slow);
        self.handle
            .block_on(self.inner.set_mode(mode))
            .context("switching the receiver")
    }

    fn accepted(&self) -> u64 {
        self.inner.accepted_count()
    }

    fn bytes(&self) -> u64 {
        self.inner.bytes_received()
    }
}

/// A client exporting to `url` through the HTTP exporter, spooling in `dir`, with
/// `in_flight` requests allowed at once (exporter and replay alike).
fn client(url: &str, dir: &Path, in_flight: usize, spool_bytes: u64) -> anyhow::Result<Client> {
    let exporter = HttpExporter::builder(url)
        .max_in_flight(in_flight)
        .build()
        .context("building the HTTP exporter")?;
    Client::builder()
        .spool_dir(dir)
        .spool_max_bytes(cap_for(spool_bytes))
        .max_in_flight(in_flight)
        .build(exporter)
        .context("building the client")
}

/// As [`client`], with the exporter told that payloads are OTLP protobuf requests of one
/// signal, so that the replay merges consecutive records.
fn coalescing_client(
    url: &str,
    dir: &Path,
    in_flight: usize,
    spool_bytes: u64,
) -> anyhow::Result<Client> {
    let exporter = HttpExporter::builder(url)
        .max_in_flight(in_flight)
        .payload_framing(PayloadFraming::OtlpProtobuf)
        .build()
        .context("building the HTTP exporter")?;
    Client::builder()
        .spool_dir(dir)
        .spool_max_bytes(cap_for(spool_bytes))
        .max_in_flight(in_flight)
        .build(exporter)
        .context("building the client")
}

/// An OTLP-like record of `len` bytes: one length-delimited entry of field 1 (as
/// `resource_spans` in an OTLP export request) filled with `body`'s bytes, so that
/// concatenated records are one valid message.
pub(crate) fn otlp_like(len: usize, seed: u64) -> Bytes {
    let varint = |mut n: usize| {
        let mut out = Vec::new();
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    };
    // The field's length is what is left after the tag and the length's own varint.
    let mut inner = len.saturating_sub(2);
    while 1 + varint(inner).len() + inner > len && inner > 0 {
        inner -= 1;
    }
    let mut out = Vec::with_capacity(len);
    out.push(0x0a);
    out.extend_from_slice(&varint(inner));
    out.extend_from_slice(&record(inner, seed));
    Bytes::from(out)
}

async fn export(client: &Client, body: &Bytes) -> anyhow::Result<Delivery> {
    client
        .export(Payload::new(body.clone()))
        .await
        .map_err(|e| anyhow::anyhow!("export dropped: {}", e.reason()))
}

/// Sends `count` payloads through `client.export()` from `concurrency` tasks, each
/// delivered directly. Returns the elapsed time from the first call to the last answer.
///
/// # Cancel safety
///
/// Not cancel safe: spawned callers keep running if the future is dropped.
pub(crate) async fn export_happy(
    url: &str,
    dir: &Path,
    body: Bytes,
    count: u64,
    concurrency: usize,
) -> anyhow::Result<Duration> {
    let client = client(url, dir, concurrency, 0)?;
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (client, next, body) = (client.clone(), next.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let d = export(&client, &body).await?;
                anyhow::ensure!(d.is_delivered(), "payload was spooled on the happy path");
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await.context("export task panicked")??;
    }
    let elapsed = start.elapsed();
    let _ = client.shutdown(SHUTDOWN_TIMEOUT).await;
    Ok(elapsed)
}

/// With the receiver down, makes one export spill (taking the quick retry), then times each
/// of `count` further exports of `len` bytes. Returns the latencies in µs.
///
/// # Cancel safety
///
/// Not cancel safe: the receiver may be left down.
pub(crate) async fn outage_latencies_us(
    rcv: &Receiver,
    dir: &Path,
    len: usize,
    count: u64,
) -> anyhow::Result<Vec<f64>> {
    rcv.set_mode(false).await?;
    let body = Bytes::from(record(len, 4));
    let client = client(&rcv.url(), dir, 8, count * len as u64)?;
    let first = export(&client, &body).await?;
    anyhow::ensure!(
        first.is_spooled(),
        "first export during the outage was {first:?}"
    );
    let mut lat = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for _ in 0..count {
        let t = Instant::now();
        let d = export(&client, &body).await?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        anyhow::ensure!(d.is_spooled(), "export during the outage was {d:?}");
    }
    let _ = client.shutdown(SHUTDOWN_TIMEOUT).await;
    Ok(lat)
}

/// Exports `count` copies of `body` (OTLP protobuf) during an outage (all spooled), brings
/// the receiver back (answering after `cost`, if given) and times `force_flush` until the
/// backlog is delivered, the exporter merging consecutive records (coalesced replay).
///
/// # Cancel safety
///
/// Not cancel safe: the receiver may be left down.
pub(crate) async fn replay(
    rcv: &Receiver,
    dir: &Path,
    body: Bytes,
    count: u64,
    concurrency: usize,
    cost: Option<Duration>,
) -> anyhow::Result<Duration> {
    rcv.set_mode(false).await?;
    let len = body.len() as u64;
    let client = coalescing_client(&rcv.url(), dir, concurrency, count * len)?;
    let payload = Payload::new(body).with_content_type(ContentType::Protobuf);
    for i in 0..count {
        let d = client
            .export(payload.clone())
            .await
            .map_err(|e| anyhow::anyhow!("export dropped: {}", e.reason()))?;
        anyhow::ensure!(d.is_spooled(), "export {i} during the outage was {d:?}");
    }
    // As a service would before the outage ends: the backlog is on disk (a flush during the
    // outage syncs the spool and returns), so its writeback is not timed as replay.
    let offline = client.force_flush(FLUSH_TIMEOUT).await;
    anyhow::ensure!(
        offline.outcome == FlushOutcome::Offline && offline.synced,
        "the flush during the outage did not end offline with the spool synced: {offline:?}"
    );
    let mode = cost.map_or(Mode::Up, Mode::Slow);
    rcv.inner
        .set_mode(mode)
        .await
        .context("switching the receiver")?;
    let bytes_before = rcv.bytes();
    let start = Instant::now();
    let report = client.force_flush(FLUSH_TIMEOUT).await;
    let elapsed = start.elapsed();
    anyhow::ensure!(report.complete, "flush incomplete: {report:?}");
    let bytes = rcv.bytes() - bytes_before;
    anyhow::ensure!(
        bytes >= count * len,
        "receiver got {bytes} of {} replayed bytes",
        count * len
    );
    let _ = client.shutdown(SHUTDOWN_TIMEOUT).await;
    Ok(elapsed)
}

/// With the receiver down, spools one payload (after the quick retry), keeps the receiver
/// down for `outage` in all (counted from the first failed attempt), brings it back and
/// times how long the first record takes to arrive, with the client's default settings.
///
/// # Cancel safety
///
/// Not cancel safe: the receiver may be left down.
pub(crate) async fn first_delivery_after(
    rcv: &Receiver,
    dir: &Path,
    outage: Duration,
) -> anyhow::Result<Duration> {
    rcv.set_mode(false).await?;
    let exporter = HttpExporter::builder(rcv.url())
        .build()
        .context("building the HTTP exporter")?;
    let client = Client::builder()
        .spool_dir(dir)
        .build(exporter)
        .context("building the client")?;
    let down_since = Instant::now();
    let body = Bytes::from(record(1024, 9));
    let d = export(&client, &body).await?;
    anyhow::ensure!(d.is_spooled(), "export during the outage was {d:?}");
    tokio::time::sleep(outage.saturating_sub(down_since.elapsed())).await;
    let before = rcv.accepted();
    rcv.set_mode(true).await?;
    let back = Instant::now();
    while rcv.accepted() == before {
        anyhow::ensure!(
            back.elapsed() < FLUSH_TIMEOUT,
            "nothing delivered within {FLUSH_TIMEOUT:?} of the receiver's return"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = back.elapsed();
    let _ = client.shutdown(SHUTDOWN_TIMEOUT).await;
    Ok(elapsed)
}

async fn spool_backlog(client: &Client, body: &Bytes, count: u64) -> anyhow::Result<()> {
    for i in 0..count {
        let d = export(client, body).await?;
        anyhow::ensure!(d.is_spooled(), "export {i} during the outage was {d:?}");
    }
    Ok(())
}

/// Child: exports `count` payloads of `len` bytes to `url` while its receiver is down (all
/// spooled), says `spooled`, waits for `go` (the receiver is back), and drains the backlog.
///
/// # Cancel safety
///
/// Not cancel safe.
pub(crate) async fn child_memory(
    url: &str,
    dir: &Path,
    len: usize,
    count: u64,
    concurrency: usize,
    go: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let body = Bytes::from(record(len, 6));
    let client = client(url, dir, concurrency, count * len as u64)?;
    spool_backlog(&client, &body, count).await?;
    say("spooled");
    go.await?;
    let report = client.force_flush(FLUSH_TIMEOUT).await;
    anyhow::ensure!(report.complete, "flush incomplete: {report:?}");
    let _ = client.shutdown(SHUTDOWN_TIMEOUT).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_ack_returns_every_appended_record_and_byte() {
        let dir = tempfile::tempdir().expect("temp dir");
        let r = read_ack(dir.path(), 1000, 300).expect("read + ack");
        assert_eq!((r.records, r.bytes), (300, 300_000));
        assert!(r.in_read <= r.elapsed);
    }

    #[test]
    fn frame_overhead_is_a_small_number_of_bytes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let o = frame_overhead(dir.path()).expect("overhead");
        assert!((1..=256).contains(&o), "frame overhead of {o} bytes");
    }

    #[test]
    fn otlp_like_records_are_one_length_delimited_field_of_the_asked_size() {
        for len in [16, 1024, 16 * 1024] {
            let r = otlp_like(len, 1);
            assert_eq!(r.len(), len);
            assert_eq!(r[0], 0x0a);
            // The varint length covers the rest of the record exactly.
            let (mut n, mut shift, mut i) = (0usize, 0, 1);
            loop {
                let b = r[i];
                n |= usize::from(b & 0x7f) << shift;
                shift += 7;
                i += 1;
                if b & 0x80 == 0 {
                    break;
                }
            }
            assert_eq!(i + n, len, "{len}");
        }
    }

    #[test]
    fn concurrent_fsync_appenders_store_every_record() {
        let dir = tempfile::tempdir().expect("temp dir");
        append(dir.path(), 100, 64, AppendMode::FsyncEveryAppend, 8).expect("append");
        let (spool, report) = Spool::open(SpoolConfig::new(dir.path())).expect("reopen");
        assert_eq!(report.records, 64);
        spool.close().expect("close");
    }
}
