//! Child processes: the harness re-executes itself with a hidden subcommand when a measurement
//! needs a process of its own (a crash to recover from, a peak RSS that is not the harness's).
//!
//! Protocol: the child writes one line per step to stdout (`ready`, `spooled`, `result ...`,
//! or `error ...`), the parent answers on stdin (`go`) and ends the child with SIGKILL where a
//! crash is the point.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Subcommand;

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

/// Writes one protocol line to stdout and flushes it.
pub(crate) fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Blocks until the process is killed (the spool must not be closed: that is the crash).
#[cfg(feature = "outlast")]
pub(crate) fn hold() -> ! {
    loop {
        std::thread::park();
    }
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

/// The parent's handle on a child process.
#[derive(Debug)]
pub(crate) struct ChildProc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl ChildProc {
    /// Starts this harness binary with the hidden subcommand `args`.
    pub(crate) fn spawn(args: &[String]) -> anyhow::Result<ChildProc> {
        let exe = std::env::current_exe().context("locating the harness binary")?;
        let mut child = Command::new(exe)
            .arg("__child")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a child harness")?;
        let stdout = BufReader::new(child.stdout.take().context("child stdout")?);
        let stdin = child.stdin.take();
        Ok(ChildProc {
            child,
            stdin,
            stdout,
        })
    }

    /// Reads the next protocol line; `word` must be its first word. Returns the rest.
    pub(crate) fn expect(&mut self, word: &str) -> anyhow::Result<String> {
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .context("reading from the child")?;
        anyhow::ensure!(n > 0, "child exited before saying {word}");
        let line = line.trim_end();
        if let Some(err) = line.strip_prefix("error ") {
            anyhow::bail!("child: {err}");
        }
        match line.split_once(' ') {
            Some((w, rest)) if w == word => Ok(rest.to_owned()),
            None if line == word => Ok(String::new()),
            _ => anyhow::bail!("child said {line:?}, expected {word}"),
        }
    }

    /// Writes one line to the child's stdin.
    pub(crate) fn tell(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("child stdin closed")?;
        writeln!(stdin, "{line}").context("writing to the child")?;
        stdin.flush().context("flushing to the child")?;
        Ok(())
    }

    /// Kills the child with SIGKILL and reaps it.
    pub(crate) fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().context("killing the child")?;
        self.child.wait().context("reaping the child")?;
        Ok(())
    }

    /// Waits for the child to exit on its own.
    pub(crate) fn wait(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        let status = self.child.wait().context("waiting for the child")?;
        anyhow::ensure!(status.success(), "child exited with {status}");
        Ok(())
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        // A child left behind by an error path must not outlive the harness.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
