//! The outlast side when the harness is built without the `outlast` feature: every function
//! reports "not measured" with the reason, so the reference rows still run and the table says
//! plainly what is missing. No number is ever produced here.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;

use crate::disk::WriteTimes;
use crate::loopback::LoopbackServer;
use crate::measure::NotMeasured;
use crate::workload::{AppendMode, ReadAck};

const REASON: &str = "harness built without the `outlast` feature";

fn off<T>() -> anyhow::Result<T> {
    Err(NotMeasured(REASON.to_owned()).into())
}

/// Bytes the spool stores per record beyond the payload: unknown without the spool.
pub(crate) fn frame_overhead(_dir: &Path) -> anyhow::Result<u64> {
    off()
}

/// Not available: see [`REASON`].
pub(crate) fn append(
    _dir: &Path,
    _len: usize,
    _count: u64,
    _mode: AppendMode,
    _threads: usize,
) -> anyhow::Result<WriteTimes> {
    off()
}

/// Not available: see [`REASON`].
pub(crate) fn read_ack(_dir: &Path, _len: usize, _count: u64) -> anyhow::Result<ReadAck> {
    off()
}

/// Not available: see [`REASON`].
pub(crate) fn child_fill_then_hold(_dir: &Path, _bytes: u64, _len: usize) -> anyhow::Result<()> {
    off()
}

/// Not available: see [`REASON`].
pub(crate) fn child_open_then_hold(_dir: &Path, _bytes: u64) -> anyhow::Result<()> {
    off()
}

/// The receiver every HTTP row uses: here the harness's own loopback server, which cannot be
/// switched down (outage rows need outlast's `TestReceiver`).
#[derive(Debug)]
pub(crate) struct Receiver(LoopbackServer);

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
        Ok(Receiver(LoopbackServer::start().await?))
    }

    /// The URL to POST to.
    pub(crate) fn url(&self) -> String {
        self.0.url()
    }

    /// Switching the receiver down and up needs outlast's `TestReceiver`.
    pub(crate) fn set_up(&self, _up: bool) -> anyhow::Result<()> {
        off()
    }

    /// A cost per request needs outlast's `TestReceiver`.
    pub(crate) fn set_cost(&self, _cost: Option<Duration>) -> anyhow::Result<()> {
        off()
    }
}

/// The payload bytes themselves (the OTLP-like framing needs no outlast code, but nothing
/// uses it without the outlast side).
pub(crate) fn otlp_like(len: usize, seed: u64) -> Bytes {
    Bytes::from(crate::disk::record(len, seed))
}

/// Not available: see [`REASON`].
///
/// # Cancel safety
///
/// Cancel safe (does nothing).
pub(crate) async fn export_happy(
    _url: &str,
    _dir: &Path,
    _body: Bytes,
    _count: u64,
    _concurrency: usize,
) -> anyhow::Result<Duration> {
    off()
}

/// Not available: see [`REASON`].
///
/// # Cancel safety
///
/// Cancel safe (does nothing).
pub(crate) async fn outage_latencies_us(
    _rcv: &Receiver,
    _dir: &Path,
    _len: usize,
    _count: u64,
) -> anyhow::Result<Vec<f64>> {
    off()
}

/// Not available: see [`REASON`].
///
/// # Cancel safety
///
/// Cancel safe (does nothing).
pub(crate) async fn replay(
    _rcv: &Receiver,
    _dir: &Path,
    _body: Bytes,
    _count: u64,
    _concurrency: usize,
    _cost: Option<Duration>,
) -> anyhow::Result<Duration> {
    off()
}

/// Not available: see [`REASON`].
///
/// # Cancel safety
///
/// Cancel safe (does nothing).
pub(crate) async fn first_delivery_after(
    _rcv: &Receiver,
    _dir: &Path,
    _outage: Duration,
) -> anyhow::Result<Duration> {
    off()
}

/// Not available: see [`REASON`].
///
/// # Cancel safety
///
/// Cancel safe (does nothing).
pub(crate) async fn child_memory(
    _url: &str,
    _dir: &Path,
    _len: usize,
    _count: u64,
    _concurrency: usize,
    _go: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    off()
}
