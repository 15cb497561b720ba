//! Shared helpers of the CLI's integration tests: run the real `outlast` binary with a time
//! limit, and build spools with `outlast_spool::Spool`.
#![allow(dead_code, unreachable_pub)]

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use outlast_spool::{Payload, Spool, SpoolConfig};

/// What a run of the binary produced.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The last non-empty line of stdout.
    pub fn last_stdout_line(&self) -> &str {
        self.stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
    }

    /// The last stdout line parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.last_stdout_line())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// Asserts a failed run printed exactly one `outlast: error:` line, without a panic.
    pub fn assert_one_line_error(&self) {
        assert!(!self.stderr.contains("panicked"), "{self:?}");
        assert!(!self.stderr.contains("RUST_BACKTRACE"), "{self:?}");
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(lines.len(), 1, "expected one line on stderr: {self:?}");
        assert!(lines[0].starts_with("outlast: error: "), "{self:?}");
    }
}

/// Runs `outlast args...`, killing it (and failing the test) after `limit`.
pub fn outlast(args: &[&str], limit: Duration) -> Run {
    outlast_with_env(args, &[], limit)
}

/// Runs `outlast args...` with the environment variables `vars` set, killing it (and failing
/// the test) after `limit`.
pub fn outlast_with_env(args: &[&str], vars: &[(&str, &str)], limit: Duration) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_outlast"))
        .args(args)
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG")
        .spawn()
        .expect("the outlast binary starts");
    let mut out = child.stdout.take().expect("stdout is piped");
    let mut err = child.stderr.take().expect("stderr is piped");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting on the child works") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let run = Run {
        code: status.and_then(|s| s.code()),
        stdout: out_reader.join().expect("stdout reader ends"),
        stderr: err_reader.join().expect("stderr reader ends"),
    };
    assert!(
        status.is_some(),
        "outlast {args:?} did not finish within {limit:?}: {run:?}"
    );
    run
}

/// The key of the `i`-th record of [`make_spool`].
pub fn key(i: u64) -> String {
    format!("record-{i}")
}

/// Creates a spool under `dir` holding `n` keyed records, and closes it.
pub fn make_spool(dir: &Path, n: u64) {
    let (spool, _) = Spool::open(SpoolConfig::new(dir)).expect("a fresh spool opens");
    for i in 0..n {
        spool
            .append(Payload::new(format!("payload number {i}").into_bytes()).with_key(key(i)))
            .expect("append to a fresh spool succeeds");
    }
    spool.close().expect("the spool closes");
}

/// Every regular file under `dir`, with its bytes and modification time.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>, SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("the directory is readable") {
            let path = entry.expect("entry").path();
            let meta = std::fs::metadata(&path).expect("metadata");
            if meta.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("file is readable");
                out.push((path, bytes, meta.modified().expect("mtime")));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The segment files under `dir`, sorted.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = snapshot(dir)
        .into_iter()
        .map(|(p, _, _)| p)
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}
