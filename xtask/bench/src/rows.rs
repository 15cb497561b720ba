//! The row groups: each runs outlast and its reference(s) interleaved, repetition by
//! repetition, and turns the medians into table rows.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use hyper::Uri;
use serde::Serialize;
use tokio::runtime::Runtime;

use crate::childproc::ChildProc;
use crate::disk;
use crate::measure::{
    Cell, Collector, KIB, MB, MIB, NotMeasured, Sample, SideSpec, Stat, Unit, quantile, rates, size,
};
use crate::ol;
use crate::report::{Row, Target};
use crate::sqlite::SqliteQueue;
use crate::workload::{AppendMode, READ_BATCH_BYTES, READ_BATCH_RECORDS};

/// Stated recovery target: 2 s for a 512 MiB spool (scaled linearly for other sizes).
const RECOVERY_TARGET_SECS_PER_512_MIB: f64 = 2.0;
/// Stated memory target: peak RSS at most 64 MiB whatever the backlog.
const MEMORY_TARGET_MIB: f64 = 64.0;
/// How much the peak RSS may grow between the small and the large backlog and still count as
/// "independent of backlog size" (an 8× larger backlog may cost at most 8 MiB more).
const MEMORY_GROWTH_TARGET_MIB: f64 = 8.0;

/// Sizes and counts of every workload, from the command line.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Plan {
    /// Repetitions of each measurement (the median is reported).
    pub(crate) reps: usize,
    /// Bytes appended per repetition in row 1 (and read in row 3).
    pub(crate) volume_bytes: u64,
    /// Bytes per repetition for the SQLite reference (slower, so smaller).
    pub(crate) sqlite_bytes: u64,
    /// Records per repetition in row 2 (fsync per record).
    pub(crate) fsync_records: u64,
    /// Size of the spool built for row 4.
    pub(crate) recovery_bytes: u64,
    /// Requests per repetition in row 5.
    pub(crate) http_requests: u64,
    /// Requests in flight on both sides of row 5 and the direct side of row 7.
    pub(crate) concurrency: usize,
    /// `export` calls timed per repetition in row 6.
    pub(crate) outage_calls: u64,
    /// Records of the small replay backlog (row 7a).
    pub(crate) backlog_small_records: u64,
    /// Bytes of the large replay backlog (row 7b).
    pub(crate) backlog_bytes: u64,
    /// Record size of the large replay backlog.
    pub(crate) backlog_record_len: usize,
    /// Records of the coalesced replay into a receiver with a cost per request (row 7c).
    pub(crate) coalesce_records: u64,
    /// The receiver's fixed cost per request in row 7c.
    pub(crate) request_cost: Duration,
    /// Outage lengths after which the time to first delivery is measured (rows 7d, 7e).
    pub(crate) outages: Vec<Duration>,
    /// The two backlog sizes of row 8.
    pub(crate) memory_bytes: [u64; 2],
    /// Record size of row 8.
    pub(crate) memory_record_len: usize,
    /// Repetitions of row 8 (each is a child process moving the whole backlog).
    pub(crate) memory_reps: usize,
}

/// What every group needs: the plan, the directory to write in, the runtime and receiver.
pub(crate) struct Ctx<'a> {
    pub(crate) plan: &'a Plan,
    pub(crate) dir: &'a Path,
    pub(crate) rt: &'a Runtime,
    pub(crate) receiver: &'a ol::Receiver,
}

impl Ctx<'_> {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A fresh, empty subdirectory `name` (removed first if present).
    pub(crate) fn fresh_dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let p = self.path(name);
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(p)
    }

    fn url(&self) -> anyhow::Result<Uri> {
        self.receiver.url().parse().context("receiver url")
    }
}

fn progress(msg: &str) {
    eprintln!("[bench] {msg}");
}

const REC: (&str, Unit) = ("records/s", Unit::RecordsPerSec);
const MBS: (&str, Unit) = ("MB/s", Unit::MbPerSec);
const SECS: (&str, Unit) = ("seconds", Unit::Seconds);

/// Bytes the spool adds to a 1 KiB payload on disk, measured on a small spool; 0 (and a
/// note) when the spool is unavailable.
fn frame_overhead(ctx: &Ctx<'_>) -> (u64, String) {
    let r = ctx
        .fresh_dir("overhead")
        .and_then(|d| ol::frame_overhead(&d));
    let _ = std::fs::remove_dir_all(ctx.path("overhead"));
    match r {
        Ok(o) => (o, format!("references move payload + {o} B frame")),
        Err(_) => (
            0,
            "spool frame size unknown: references move bare payloads".to_owned(),
        ),
    }
}

/// Row 1 (+ SQLite 9a/9b): appends in OsWrite mode vs raw `write(2)` vs SQLite inserts.
///
/// Each repetition of each side is timed twice: to the end of its final fdatasync (1a/1b:
/// same durable end state) and to the return of its last write or append (1c/1d: what a
/// caller waits for). The spool fdatasyncs each sealed segment in the background while
/// appends go on, which the raw reference does not do; 1c/1d take writeback out of both.
pub(crate) fn group_append(ctx: &Ctx<'_>) -> Vec<Row> {
    let (overhead, note) = frame_overhead(ctx);
    let mut rows = Vec::new();
    let mut written_rows = Vec::new();
    for (i, len) in [KIB, 16 * KIB].into_iter().enumerate() {
        let count = ctx.plan.volume_bytes / len;
        let sq_count = ctx.plan.sqlite_bytes / len;
        let framed = usize::try_from(len + overhead).unwrap_or(usize::MAX);
        let l = usize::try_from(len).unwrap_or(usize::MAX);
        progress(&format!("row 1: append {} × {count}", size(len)));
        let mut raw = Collector::new(SideSpec::new("raw write(2)", &[REC, MBS]));
        let mut raw_w = Collector::new(SideSpec::new("raw write(2)", &[REC, MBS]));
        let mut sp = Collector::new(SideSpec::new("spool append", &[REC, MBS]));
        let mut sp_w = Collector::new(SideSpec::new("spool append", &[REC, MBS]));
        let mut sq = Collector::new(SideSpec::new("SQLite insert", &[REC, MBS]));
        for _ in 0..ctx.plan.reps {
            if raw.live() {
                let t = disk::sequential_write(&ctx.path("raw-write"), framed, count);
                push_both(&mut raw, &mut raw_w, t, count, count * len);
            }
            if sp.live() {
                let t = ctx.fresh_dir("spool-append").and_then(|d| {
                    let t = ol::append(&d, l, count, AppendMode::OsWrite, 1)?;
                    std::fs::remove_dir_all(&d).context("cleaning the spool")?;
                    Ok(t)
                });
                push_both(&mut sp, &mut sp_w, t, count, count * len);
            }
            sq.run(|| {
                let q = SqliteQueue::create(&ctx.path("queue.db"))?;
                let t = q.insert_each(l, sq_count)?;
                Ok(rates(sq_count, sq_count * len, t))
            });
        }
        let sp = sp.finish();
        let suffix = ["a", "b"][i];
        rows.push(Row::new(
            &format!("1{suffix}"),
            format!("Spool append {}, OsWrite, until durable", size(len)),
            format!(
                "{count} × {} = {}, one write(2) per record, timed to the end of a final fdatasync; {note}",
                size(len),
                size(count * len)
            ),
            sp.clone(),
            raw.finish(),
            Target::RatioAtLeast { min: 0.8 },
        ));
        written_rows.push(Row::new(
            &format!("1{}", ["c", "d"][i]),
            format!("Spool append {}, OsWrite, until written", size(len)),
            format!("the runs of 1{suffix}, timed to the return of the last append / write(2)"),
            sp_w.finish(),
            raw_w.finish(),
            Target::RatioAtLeast { min: 0.8 },
        ));
        rows.push(Row::new(
            &format!("9{suffix}"),
            format!("Spool append {} vs SQLite queue", size(len)),
            format!(
                "SQLite: {sq_count} × {} = {}, one INSERT transaction each, WAL, synchronous=NORMAL",
                size(len),
                size(sq_count * len)
            ),
            sp,
            sq.finish(),
            Target::None,
        ));
    }
    rows.extend(written_rows);
    rows
}

/// Records both moments of one write run: the durable end in `durable`, the last write in
/// `written` (the same error in both if the run failed).
fn push_both(
    durable: &mut Collector,
    written: &mut Collector,
    t: anyhow::Result<disk::WriteTimes>,
    records: u64,
    bytes: u64,
) {
    match t {
        Ok(t) => {
            durable.push(Ok(rates(records, bytes, t.durable)));
            written.push(Ok(rates(records, bytes, t.written)));
        }
        Err(e) => {
            let copy = match e.downcast_ref::<NotMeasured>() {
                Some(nm) => NotMeasured(nm.0.clone()).into(),
                None => anyhow::anyhow!("{e:#}"),
            };
            written.push(Err(copy));
            durable.push(Err(e));
        }
    }
}

/// Row 2: FsyncEveryAppend with 1 and 8 appenders vs one fdatasync per record.
pub(crate) fn group_fsync(ctx: &Ctx<'_>) -> Vec<Row> {
    let (overhead, note) = frame_overhead(ctx);
    let n = ctx.plan.fsync_records;
    let framed = usize::try_from(KIB + overhead).unwrap_or(usize::MAX);
    progress(&format!("row 2: fsync per append, {n} records"));
    let mut raw = Collector::new(SideSpec::new("write+fdatasync per record", &[REC]));
    let mut filled = Collector::new(SideSpec::new(
        "write+fdatasync per record, file zero-filled first",
        &[REC],
    ));
    let mut one = Collector::new(SideSpec::new("spool, 1 appender", &[REC]));
    let mut eight = Collector::new(SideSpec::new("spool, 8 appenders", &[REC]));
    for _ in 0..ctx.plan.reps {
        raw.run(|| {
            let t = disk::fsync_per_record(&ctx.path("raw-fsync"), framed, n, false)?;
            Ok(vec![n as f64 / t.as_secs_f64()])
        });
        filled.run(|| {
            let t = disk::fsync_per_record(&ctx.path("raw-fsync"), framed, n, true)?;
            Ok(vec![n as f64 / t.as_secs_f64()])
        });
        for (c, threads) in [(&mut one, 1), (&mut eight, 8)] {
            c.run(|| {
                let d = ctx.fresh_dir("spool-fsync")?;
                let t = ol::append(&d, 1024, n, AppendMode::FsyncEveryAppend, threads)?;
                std::fs::remove_dir_all(&d).context("cleaning the spool")?;
                Ok(vec![n as f64 / t.durable.as_secs_f64()])
            });
        }
    }
    let raw = raw.finish();
    let eight = eight.finish();
    let workload = format!("{n} × 1 KiB, durable before append returns; {note}");
    vec![
        Row::new(
            "2a",
            "Spool append FsyncEveryAppend, 1 appender",
            workload.clone(),
            one.finish(),
            raw.clone(),
            Target::None,
        ),
        Row::new(
            "2b",
            "Spool append FsyncEveryAppend, 8 appenders",
            format!("{workload}; 8 threads share group commits"),
            eight.clone(),
            raw,
            Target::RatioAtLeast { min: 5.0 },
        ),
        // Group commit's own share: the spool's segments are zero-filled ahead of the
        // records in this mode, so the same is done to the reference's file here.
        Row::new(
            "2c",
            "Spool append FsyncEveryAppend, 8 appenders, vs a zero-filled file",
            format!(
                "{workload}; 8 threads share group commits; the reference's file is zero-filled \
                 first, as the spool's segments are"
            ),
            eight,
            filled.finish(),
            Target::None,
        ),
    ]
}

/// Row 3 (+ SQLite 9c/9d): read + ack from page cache vs raw read vs SQLite read + delete.
pub(crate) fn group_read(ctx: &Ctx<'_>) -> Vec<Row> {
    let (overhead, note) = frame_overhead(ctx);
    let mut rows = Vec::new();
    for (i, len) in [KIB, 16 * KIB].into_iter().enumerate() {
        let count = ctx.plan.volume_bytes / len;
        let sq_count = ctx.plan.sqlite_bytes / len;
        let framed = usize::try_from(len + overhead).unwrap_or(usize::MAX);
        let l = usize::try_from(len).unwrap_or(usize::MAX);
        progress(&format!("row 3: read {} × {count}", size(len)));
        let mut raw = Collector::new(SideSpec::new("raw read(2), 1 MiB buffer", &[MBS, REC]));
        let mut sp = Collector::new(SideSpec::new(
            "spool read_batch + ack",
            &[MBS, REC, ("read_batch alone", Unit::MbPerSec)],
        ));
        let mut sq = Collector::new(SideSpec::new("SQLite SELECT + DELETE", &[MBS, REC]));
        let sq_batch =
            READ_BATCH_RECORDS.min(usize::try_from(READ_BATCH_BYTES / len).unwrap_or(1).max(1));
        for _ in 0..ctx.plan.reps {
            raw.run(|| {
                let p = ctx.path("raw-read");
                disk::prepare_cached_file(&p, framed, count)?;
                let (_, t) = disk::read_files(std::slice::from_ref(&p))?;
                std::fs::remove_file(&p).context("removing the read file")?;
                Ok(swap(rates(count, count * len, t)))
            });
            sp.run(|| {
                let d = ctx.fresh_dir("spool-read")?;
                let r = ol::read_ack(&d, l, count)?;
                anyhow::ensure!(r.records == count, "read {} of {count} records", r.records);
                std::fs::remove_dir_all(&d).context("cleaning the spool")?;
                let mut s = swap(rates(r.records, r.bytes, r.elapsed));
                s.push(r.bytes as f64 / MB / r.in_read.as_secs_f64().max(1e-9));
                Ok(s)
            });
            sq.run(|| {
                let mut q = SqliteQueue::create(&ctx.path("queue.db"))?;
                q.fill(l, sq_count)?;
                let (records, bytes, t) = q.drain(sq_batch)?;
                anyhow::ensure!(records == sq_count, "read {records} of {sq_count} rows");
                Ok(swap(rates(records, bytes, t)))
            });
        }
        let sp = sp.finish();
        let suffix = ["a", "b"][i];
        rows.push(Row::new(
            &format!("3{suffix}"),
            format!("Spool read + ack {}, page cache", size(len)),
            format!(
                "{count} × {} = {}, batches of ≤ {READ_BATCH_RECORDS} records / {}; {note}",
                size(len),
                size(count * len),
                size(READ_BATCH_BYTES)
            ),
            sp.clone(),
            raw.finish(),
            Target::AtLeast {
                min: 1000.0,
                unit: Unit::MbPerSec,
            },
        ));
        rows.push(Row::new(
            &format!("9{}", ["c", "d"][i]),
            format!("Spool read + ack {} vs SQLite queue", size(len)),
            format!(
                "SQLite: {sq_count} × {} = {}, SELECT oldest {sq_batch}, DELETE them, repeat",
                size(len),
                size(sq_count * len)
            ),
            sp,
            sq.finish(),
            Target::None,
        ));
    }
    rows
}

/// Puts MB/s first (the compared figure for read rows).
fn swap(mut s: Sample) -> Sample {
    s.swap(0, 1);
    s
}

/// Row 4: recovery of a crashed spool vs reading the same number of bytes raw.
pub(crate) fn group_recovery(ctx: &Ctx<'_>) -> Vec<Row> {
    let bytes = ctx.plan.recovery_bytes;
    let len = 16 * KIB;
    progress(&format!("row 4: recovery of {}", size(bytes)));
    let secs = [SECS];
    let mut raw = Collector::new(SideSpec::new("raw read of the same bytes", &secs));
    let mut sp = Collector::new(SideSpec::new("Spool::open after SIGKILL", &secs));
    let fill = || -> anyhow::Result<(PathBuf, u64)> {
        let d = ctx.fresh_dir("spool-recovery")?;
        let mut c = ChildProc::spawn(&[
            "fill-spool".into(),
            "--dir".into(),
            d.display().to_string(),
            "--bytes".into(),
            bytes.to_string(),
            "--len".into(),
            len.to_string(),
        ])?;
        let records: u64 = c.expect("ready")?.trim().parse().context("parsing ready")?;
        c.kill()?;
        Ok((d, records))
    };
    let filled = match fill() {
        Ok(filled) => Some(filled),
        Err(e) => {
            sp.push(Err(e));
            None
        }
    };
    for _ in 0..ctx.plan.reps {
        raw.run(|| {
            let p = ctx.path("raw-recovery");
            disk::prepare_cached_file(&p, 1024 * 1024, bytes / MIB)?;
            let (_, t) = disk::read_files(std::slice::from_ref(&p))?;
            std::fs::remove_file(&p).context("removing the read file")?;
            Ok(vec![t.as_secs_f64()])
        });
        if let Some((d, stored)) = &filled {
            sp.run(|| {
                let mut c = ChildProc::spawn(&[
                    "open-spool".into(),
                    "--dir".into(),
                    d.display().to_string(),
                    "--bytes".into(),
                    bytes.to_string(),
                ])?;
                let line = c.expect("result")?;
                c.kill()?;
                let mut words = line.split_whitespace();
                let secs: f64 = words
                    .next()
                    .context("no seconds")?
                    .parse()
                    .context("parsing seconds")?;
                let recovered: u64 = words
                    .next()
                    .context("no record count")?
                    .parse()
                    .context("parsing record count")?;
                anyhow::ensure!(
                    recovered == *stored,
                    "recovery found {recovered} of {stored} records"
                );
                Ok(vec![secs])
            });
        }
    }
    let _ = std::fs::remove_dir_all(ctx.path("spool-recovery"));
    let scale = bytes as f64 / (512 * MIB) as f64;
    let note = (bytes != 512 * MIB).then(|| format!("2 s per 512 MiB, scaled to {}", size(bytes)));
    vec![Row::new(
        "4",
        "Recovery: Spool::open of a crashed full spool",
        format!(
            "{} of {} records written by a child, SIGKILLed; open timed in a fresh child; page cache warm",
            size(bytes),
            size(len)
        ),
        sp.finish(),
        raw.finish(),
        Target::AtMost {
            max: RECOVERY_TARGET_SECS_PER_512_MIB * scale,
            unit: Unit::Seconds,
            note,
        },
    )]
}

/// Row 5: `client.export()` through the HTTP exporter vs the bare hyper client.
pub(crate) fn group_happy(ctx: &Ctx<'_>) -> Vec<Row> {
    let n = ctx.plan.http_requests;
    let c = ctx.plan.concurrency;
    progress(&format!("row 5: happy path, {n} × 1 KiB, {c} in flight"));
    let body = Bytes::from(disk::record(1024, 7));
    let mut bare = Collector::new(SideSpec::new("bare hyper client", &[REC, MBS]));
    let mut sp = Collector::new(SideSpec::new(
        "Client::export via HttpExporter",
        &[REC, MBS],
    ));
    for _ in 0..ctx.plan.reps {
        bare.run(|| {
            let url = ctx.url()?;
            let t = ctx
                .rt
                .block_on(crate::http::bare_send(&url, body.clone(), n, c))?;
            Ok(rates(n, n * KIB, t))
        });
        sp.run(|| {
            let d = ctx.fresh_dir("spool-happy")?;
            let url = ctx.receiver.url();
            let t = ctx
                .rt
                .block_on(ol::export_happy(&url, &d, body.clone(), n, c))?;
            std::fs::remove_dir_all(&d).context("cleaning the spool")?;
            Ok(rates(n, n * KIB, t))
        });
    }
    vec![Row::new(
        "5",
        "Happy-path overhead: export() vs bare hyper",
        format!("{n} × 1 KiB POSTs, {c} in flight, same loopback receiver"),
        sp.finish(),
        bare.finish(),
        Target::RatioAtLeast { min: 0.95 },
    )]
}

/// Row 6: per-call `export` latency during an outage vs one raw `write(2)`.
pub(crate) fn group_outage(ctx: &Ctx<'_>) -> Vec<Row> {
    let (overhead, note) = frame_overhead(ctx);
    let n = ctx.plan.outage_calls;
    progress(&format!("row 6: outage latency, {n} calls"));
    let figs = [("p99", Unit::Micros), ("p50", Unit::Micros)];
    let mut raw = Collector::new(SideSpec::new("one write(2) of the framed record", &figs));
    let mut sp = Collector::new(SideSpec::new("export() while offline", &figs));
    let framed = usize::try_from(KIB + overhead).unwrap_or(usize::MAX);
    for _ in 0..ctx.plan.reps {
        raw.run(|| {
            let lat = disk::write_latencies_us(&ctx.path("raw-latency"), framed, n)?;
            Ok(vec![quantile(&lat, 0.99), quantile(&lat, 0.5)])
        });
        sp.run(|| {
            let d = ctx.fresh_dir("spool-outage")?;
            let lat = ctx
                .rt
                .block_on(ol::outage_latencies_us(ctx.receiver, &d, 1024, n));
            let set_up = ctx.receiver.set_up(true);
            let mut lat = lat?;
            set_up?;
            std::fs::remove_dir_all(&d).context("cleaning the spool")?;
            lat.sort_by(f64::total_cmp);
            Ok(vec![quantile(&lat, 0.99), quantile(&lat, 0.5)])
        });
    }
    vec![Row::new(
        "6",
        "Outage: export() latency after the first spill",
        format!("{n} × 1 KiB export calls, receiver down, OsWrite; {note}"),
        sp.finish(),
        raw.finish(),
        Target::AtMost {
            max: 50.0,
            unit: Unit::Micros,
            note: Some("p99".into()),
        },
    )]
}

/// Row 7: replay of a backlog once the receiver is back vs sending it directly (7a, 7b);
/// the same into a receiver with a fixed cost per request (7c); time to the first delivery
/// after an outage (7d, and 7e with `--long-outage`).
pub(crate) fn group_replay(ctx: &Ctx<'_>) -> Vec<Row> {
    let big = ctx.plan.backlog_record_len as u64;
    let cost = ctx.plan.request_cost;
    let cases = [
        ("7a", KIB, ctx.plan.backlog_small_records, None),
        ("7b", big, ctx.plan.backlog_bytes / big, None),
        ("7c", KIB, ctx.plan.coalesce_records, Some(cost)),
    ];
    let mut rows = Vec::new();
    for (id, len, count, cost) in cases {
        rows.push(replay_row(ctx, id, len, count, cost));
    }
    for (i, outage) in ctx.plan.outages.iter().enumerate() {
        let id = if i == 0 { "7d" } else { "7e" };
        rows.push(first_delivery_row(ctx, id, *outage));
    }
    rows
}

/// One replay row: `count` OTLP-like records of `len` bytes, spooled, then replayed with
/// coalescing on, against the bare client sending them directly, one per request; the
/// receiver answers after `cost` if given.
fn replay_row(ctx: &Ctx<'_>, id: &str, len: u64, count: u64, cost: Option<Duration>) -> Row {
    let c = ctx.plan.concurrency;
    let figs = [MBS, SECS];
    progress(&format!("row {id}: replay {count} × {}", size(len)));
    let l = usize::try_from(len).unwrap_or(usize::MAX);
    let body = ol::otlp_like(l, 8);
    let mut direct = Collector::new(SideSpec::new(
        "bare hyper client, direct, one per request",
        &figs,
    ));
    let mut sp = Collector::new(SideSpec::new(
        "coalesced drain of the spooled backlog",
        &figs,
    ));
    let with_cost = |f: &mut dyn FnMut() -> anyhow::Result<Sample>| -> anyhow::Result<Sample> {
        if cost.is_some() {
            ctx.receiver.set_cost(cost)?;
        }
        let out = f();
        if cost.is_some() {
            ctx.receiver.set_cost(None)?;
        }
        out
    };
    for _ in 0..ctx.plan.reps {
        direct.run(|| {
            with_cost(&mut || {
                let url = ctx.url()?;
                let t = ctx
                    .rt
                    .block_on(crate::http::bare_send(&url, body.clone(), count, c))?;
                Ok(vec![
                    (count * len) as f64 / 1e6 / t.as_secs_f64(),
                    t.as_secs_f64(),
                ])
            })
        });
        sp.run(|| {
            let d = ctx.fresh_dir("spool-replay")?;
            // The backlog is spooled while the receiver is down; the cost applies once it is
            // back.
            let t = ctx
                .rt
                .block_on(ol::replay(ctx.receiver, &d, body.clone(), count, c, cost));
            let set_up = ctx.receiver.set_up(true);
            let t = t?;
            set_up?;
            std::fs::remove_dir_all(&d).context("cleaning the spool")?;
            Ok(vec![
                (count * len) as f64 / 1e6 / t.as_secs_f64(),
                t.as_secs_f64(),
            ])
        });
    }
    let (title, workload, target) = match cost {
        None => (
            format!("Replay of a {} backlog", size(count * len)),
            format!(
                "{count} × {} OTLP-like records spooled during an outage, drained by force_flush once the receiver is back, merged requests (coalescing on); direct: same payloads, one per request, {c} in flight",
                size(len)
            ),
            Target::RatioAtLeast { min: 1.0 },
        ),
        Some(cost) => (
            format!(
                "Coalesced replay into a receiver costing {} ms per request",
                cost.as_secs_f64() * 1e3
            ),
            format!(
                "{count} × {} OTLP-like records; the receiver answers each request after a {} ms timer (Tokio's 1 ms timer tick rounds it up); direct: one per request, {c} in flight",
                size(len),
                cost.as_secs_f64() * 1e3
            ),
            Target::RatioAtLeast { min: 5.0 },
        ),
    };
    Row::new(id, title, workload, sp.finish(), direct.finish(), target)
}

/// Time from the receiver's return to the first delivered record, after an outage of
/// `outage`, with the client's default settings and the real clock.
fn first_delivery_row(ctx: &Ctx<'_>, id: &str, outage: Duration) -> Row {
    progress(&format!(
        "row {id}: first delivery after a {} s outage",
        outage.as_secs()
    ));
    let mut sp = Collector::new(SideSpec::new(
        "time to first delivery, default settings",
        &[SECS],
    ));
    for _ in 0..ctx.plan.reps {
        sp.run(|| {
            let d = ctx.fresh_dir("spool-first-delivery")?;
            let t = ctx
                .rt
                .block_on(ol::first_delivery_after(ctx.receiver, &d, outage));
            let set_up = ctx.receiver.set_up(true);
            let t = t?;
            set_up?;
            std::fs::remove_dir_all(&d).context("cleaning the spool")?;
            Ok(vec![t.as_secs_f64()])
        });
    }
    Row::new(
        id,
        format!(
            "Time to first delivery after a {} s outage",
            outage.as_secs()
        ),
        format!(
            "connections refused for {} s from the first failed export (one record spooled), then the receiver is back; real clock, client defaults",
            outage.as_secs()
        ),
        sp.finish(),
        Cell::not_measured("no reference", "the target is absolute"),
        Target::AtMost {
            max: 1.0,
            unit: Unit::Seconds,
            note: Some("median".into()),
        },
    )
}

/// Row 8: peak RSS of a child that spools a backlog during an outage and drains it.
pub(crate) fn group_memory(ctx: &Ctx<'_>) -> Vec<Row> {
    let len = ctx.plan.memory_record_len;
    let figs = [("peak RSS", Unit::Mib)];
    let mut cells = Vec::new();
    for bytes in ctx.plan.memory_bytes {
        let count = bytes / len as u64;
        progress(&format!("row 8: memory, {} backlog", size(bytes)));
        let mut bare = Collector::new(SideSpec::new(
            "bare hyper client sending it directly",
            &figs,
        ));
        let mut sp = Collector::new(SideSpec::new("spool during outage, then drain", &figs));
        for _ in 0..ctx.plan.memory_reps {
            bare.run(|| memory_child(ctx, "bare", len, count));
            sp.run(|| {
                ctx.receiver.set_up(false)?;
                let r = memory_child(ctx, "outlast", len, count);
                ctx.receiver.set_up(true)?;
                r
            });
        }
        cells.push((bytes, count, sp.finish(), bare.finish()));
    }
    let mut rows = Vec::new();
    for (i, (bytes, count, sp, bare)) in cells.iter().enumerate() {
        rows.push(Row::new(
            &format!("8{}", ["a", "b"][i]),
            format!("Memory: peak RSS, {} backlog", size(*bytes)),
            format!(
                "child process: {count} × {} exported while the receiver is down, then drained",
                size(len as u64)
            ),
            sp.clone(),
            bare.clone(),
            Target::AtMost {
                max: MEMORY_TARGET_MIB,
                unit: Unit::Mib,
                note: None,
            },
        ));
    }
    if let [(small, _, sp_a, bare_a), (large, _, sp_b, bare_b)] = cells.as_slice() {
        rows.push(Row::new(
            "8c",
            "Memory: growth with backlog size",
            format!("peak RSS at {} minus at {}", size(*large), size(*small)),
            growth(sp_a, sp_b),
            growth(bare_a, bare_b),
            Target::AtMost {
                max: MEMORY_GROWTH_TARGET_MIB,
                unit: Unit::Mib,
                note: Some("independent of backlog size".into()),
            },
        ));
    }
    rows
}

/// The difference of two memory cells, repetition by repetition.
fn growth(small: &Cell, large: &Cell) -> Cell {
    match (small, large) {
        (
            Cell::Measured {
                name, figures: a, ..
            },
            Cell::Measured { figures: b, .. },
        ) => match (a.first(), b.first()) {
            (Some(a), Some(b)) => {
                let samples = a
                    .samples
                    .iter()
                    .zip(&b.samples)
                    .map(|(x, y)| y - x)
                    .collect();
                Cell::Measured {
                    name: name.clone(),
                    figures: vec![Stat::of("growth", Unit::Mib, samples)],
                }
            }
            _ => Cell::not_measured(name.clone(), "no samples"),
        },
        (Cell::NotMeasured { name, reason }, _) | (_, Cell::NotMeasured { name, reason }) => {
            Cell::not_measured(name.clone(), reason.clone())
        }
    }
}

fn memory_child(ctx: &Ctx<'_>, mode: &str, len: usize, count: u64) -> anyhow::Result<Sample> {
    let d = ctx.fresh_dir("spool-memory")?;
    let mut c = ChildProc::spawn(&[
        "memory".into(),
        "--mode".into(),
        mode.into(),
        "--url".into(),
        ctx.receiver.url(),
        "--dir".into(),
        d.display().to_string(),
        "--len".into(),
        len.to_string(),
        "--count".into(),
        count.to_string(),
        "--concurrency".into(),
        ctx.plan.concurrency.to_string(),
    ])?;
    if mode == "outlast" {
        c.expect("spooled")?;
        ctx.receiver.set_up(true)?;
        c.tell("go")?;
    }
    let peak: f64 = c.expect("result")?.trim().parse().context("parsing peak")?;
    c.wait()?;
    std::fs::remove_dir_all(&d).context("cleaning the spool")?;
    Ok(vec![peak / MIB as f64])
}
