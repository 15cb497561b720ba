//! Child processes: the hidden subcommands the harness runs when it re-executes itself because
//! a measurement needs a process of its own (a crash to recover from, a peak RSS that is not
//! the harness's). The protocol between parent and child is in `childproc`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Subcommand;

use crate::childproc::say;
use crate::disk::record;
use crate::machine::peak_rss_bytes;
use crate::ol;

/// The hidden subcommands a child runs.
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum ChildCmd {
    /// Fill a spool with `bytes` of `len`-byte records, say `ready`, wait to be killed.
    FillSpool {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        bytes: u64,
        #[arg(long)]
        len: usize,
    },
    /// Open (recover) the spool of cap `bytes`, say `result <seconds> <records>`, wait to be killed.
    OpenSpool {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        bytes: u64,
    },
    /// Move `count` payloads of `len` bytes to `url`, then say `result <peak rss bytes>`.
    /// `outlast`: export them during an outage (receiver down), say `spooled`, wait for `go`,
    /// drain. `bare`: send them directly with the bare hyper client.
    Memory {
        #[arg(long)]
        mode: MemoryMode,
        #[arg(long)]
        url: String,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        len: usize,
        #[arg(long)]
        count: u64,
        #[arg(long)]
        concurrency: usize,
    },
    /// Export spans through the OpenTelemetry SDK and outlast-otel to `url` (down) until its
    /// spool holds `bytes`, then say `result <peak rss bytes> <spool bytes> <spans>`.
    OtelBacklog {
        #[arg(long)]
        url: String,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        bytes: u64,
    },
}

/// Which side a memory child measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum MemoryMode {
    /// outlast's client: spool during an outage, then drain.
    Outlast,
    /// The bare hyper client sending directly.
    Bare,
}

/// Runs a child subcommand; returns the process exit code.
pub(crate) fn run(cmd: ChildCmd) -> i32 {
    let r = match cmd {
        ChildCmd::FillSpool { dir, bytes, len } => ol::child_fill_then_hold(&dir, bytes, len),
        ChildCmd::OpenSpool { dir, bytes } => ol::child_open_then_hold(&dir, bytes),
        ChildCmd::Memory {
            mode,
            url,
            dir,
            len,
            count,
            concurrency,
        } => memory(mode, &url, &dir, len, count, concurrency),
        #[cfg(feature = "outlast")]
        ChildCmd::OtelBacklog { url, dir, bytes } => crate::otel::child_backlog(&url, &dir, bytes),
        #[cfg(not(feature = "outlast"))]
        ChildCmd::OtelBacklog { .. } => Err(anyhow::anyhow!("built without outlast")),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            say(&format!("error {e:#}"));
            1
        }
    }
}

fn memory(
    mode: MemoryMode,
    url: &str,
    dir: &Path,
    len: usize,
    count: u64,
    concurrency: usize,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    rt.block_on(async {
        match mode {
            MemoryMode::Outlast => {
                let go = async {
                    tokio::task::spawn_blocking(|| {
                        let mut line = String::new();
                        std::io::stdin()
                            .read_line(&mut line)
                            .context("reading go")?;
                        anyhow::ensure!(line.trim() == "go", "expected go, got {line:?}");
                        Ok(())
                    })
                    .await
                    .context("stdin reader")?
                };
                ol::child_memory(url, dir, len, count, concurrency, go).await
            }
            MemoryMode::Bare => {
                let uri = url.parse().context("parsing url")?;
                let body = Bytes::from(record(len, 9));
                crate::http::bare_send(&uri, body, count, concurrency).await?;
                Ok(())
            }
        }
    })?;
    let peak = peak_rss_bytes().context("reading VmHWM")?;
    say(&format!("result {peak}"));
    Ok(())
}
