//! The protocol between the harness and a child process of its own (see `child` for the
//! hidden subcommands a child runs).
//!
//! The child writes one line per step to stdout (`ready`, `spooled`, `result ...`, or
//! `error ...`), the parent answers on stdin (`go`) and ends the child with SIGKILL where a
//! crash is the point.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::Context as _;

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
