//! A worked example of implementing `Exporter` for your own backend: an exporter that
//! appends each payload as one line to a file (docs/exporter.md walks through it).
//!
//! Run it with `cargo run -p outlast-client --example custom_exporter`. It shows the whole
//! cycle: the destination directory does not exist yet, so exports fail (retryable) and go
//! to the spool; the directory is created; `force_flush` replays the backlog; a payload the
//! file format cannot hold is rejected permanently; a payload delivered twice is written once.
//!
//! Its tests (`cargo test -p outlast-client --example custom_exporter`) show how to test an
//! exporter's classification of failures, and the client's handling of them with
//! `MemoryExporter`.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, ErrorKind, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use outlast_client::{
    Client, Delivery, DropError, ErrorChain, ExportError, Exporter, Payload, Reachability,
};

// ANCHOR: exporter
/// Appends each payload to a file as one line: `<key>\t<payload text>\n`.
///
/// Cloning is cheap; clones share the file.
#[derive(Debug, Clone)]
pub struct LineFileExporter {
    path: PathBuf,
    /// The open file and the keys already written. A `std` mutex, locked only on Tokio's
    /// blocking pool, never across an `.await`.
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    file: Option<File>,
    /// Keys already in the file: a payload delivered twice (at-least-once delivery) is
    /// written once.
    written: HashSet<String>,
}

/// Why a payload cannot be written as a line. The same payload would fail the same way, so
/// it is a permanent error.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// The payload is not UTF-8 text.
    #[error("payload is not UTF-8 text")]
    NotText,
    /// The payload or its key contains a newline or a tab, which would break the format.
    #[error("payload or key contains a newline or a tab")]
    Separator,
}

impl LineFileExporter {
    /// An exporter appending to `path`. Nothing is opened yet: the first export opens the
    /// file (and reads the keys it already holds).
    pub fn new(path: impl Into<PathBuf>) -> LineFileExporter {
        LineFileExporter {
            path: path.into(),
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    /// Formats one line, or says why this payload can never be written.
    fn line(payload: &Payload) -> Result<String, LineError> {
        let text = std::str::from_utf8(payload.bytes()).map_err(|_| LineError::NotText)?;
        let key = payload.meta().key.as_deref().unwrap_or("-");
        if [text, key].iter().any(|s| s.contains(['\n', '\t'])) {
            return Err(LineError::Separator);
        }
        Ok(format!("{key}\t{text}\n"))
    }

    /// Writes one line (blocking). Runs on the blocking pool.
    fn write_line(
        path: &Path,
        state: &Mutex<State>,
        key: Option<String>,
        line: &str,
    ) -> std::io::Result<()> {
        let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.file.is_none() {
            let (file, keys) = open(path)?;
            state.file = Some(file);
            state.written = keys;
        }
        if let Some(k) = &key
            && state.written.contains(k)
        {
            return Ok(()); // Delivered before: acknowledge without writing it again.
        }
        let Some(file) = state.file.as_mut() else {
            return Err(std::io::Error::other("file not open"));
        };
        if let Err(e) = file.write_all(line.as_bytes()) {
            // Reopen next time: the handle may be unusable (file removed, disk replaced).
            state.file = None;
            return Err(e);
        }
        if let Some(k) = key {
            state.written.insert(k);
        }
        Ok(())
    }
}

/// Opens `path` for appending and reads the keys it already holds.
fn open(path: &Path) -> std::io::Result<(File, HashSet<String>)> {
    let mut keys = HashSet::new();
    match File::open(path) {
        Ok(existing) => {
            for line in BufReader::new(existing).lines() {
                if let Some((key, _)) = line?.split_once('\t')
                    && key != "-"
                {
                    keys.insert(key.to_owned());
                }
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    Ok((file, keys))
}

impl Exporter for LineFileExporter {
    async fn export(&self, payload: &Payload) -> Result<(), ExportError> {
        // A payload the format cannot hold will never succeed: permanent, so the client
        // drops it (counted) instead of retrying it forever.
        let line = Self::line(payload).map_err(ExportError::permanent)?;
        let key = payload.meta().key.clone();
        let (path, state) = (self.path.clone(), Arc::clone(&self.state));
        // On the blocking pool: file I/O must not block the runtime's threads. If the
        // pipeline drops this future (attempt timeout), the blocking task still finishes its
        // line: a line is never half-written, and the payload is retried (at least once;
        // the key check above keeps the file free of the duplicate).
        match tokio::task::spawn_blocking(move || Self::write_line(&path, &state, key, &line)).await
        {
            Ok(Ok(())) => Ok(()),
            // Disk full, directory missing, permission denied: an operator can fix these,
            // so a later attempt may succeed. Retryable: the client spools and replays.
            Ok(Err(io)) if io.kind() == ErrorKind::StorageFull => Err(
                // Ask for a longer pause: a full disk is not freed within a second.
                ExportError::retryable_after(io, Duration::from_secs(30)),
            ),
            Ok(Err(io)) => Err(ExportError::retryable(io)),
            Err(join) => Err(ExportError::retryable(join)),
        }
    }

    /// Cheap check while offline: can the file be opened for appending?
    async fn probe(&self) -> Reachability {
        let path = self.path.clone();
        let can_open = tokio::task::spawn_blocking(move || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .is_ok()
        })
        .await;
        match can_open {
            Ok(true) => Reachability::Reachable,
            _ => Reachability::Unreachable,
        }
    }

    // `max_in_flight` keeps its default, 1: lines are written one at a time anyway.

    /// Makes what was written durable before the client lets go.
    async fn shutdown(&self) -> Result<(), ExportError> {
        let state = Arc::clone(&self.state);
        let synced = tokio::task::spawn_blocking(move || {
            let state = state.lock().unwrap_or_else(PoisonError::into_inner);
            match &state.file {
                Some(file) => file.sync_all(),
                None => Ok(()),
            }
        })
        .await;
        match synced {
            Ok(Ok(())) => Ok(()),
            Ok(Err(io)) => Err(ExportError::retryable(io)),
            Err(join) => Err(ExportError::retryable(join)),
        }
    }
}
// ANCHOR_END: exporter

// ANCHOR: main
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let work = tempfile::tempdir()?;
    // The destination's directory does not exist yet: the "backend" is down.
    let out_dir = work.path().join("out");
    let out_file = out_dir.join("telemetry.log");

    let client = Client::builder()
        .spool_dir(work.path().join("spool"))
        .build(LineFileExporter::new(&out_file))?;

    // 1. Backend down: the first export fails twice (1 s apart) and is spooled; the next ones
    //    go straight behind it, without trying the file.
    for i in 1..=3 {
        let payload = Payload::new(format!("event {i}")).with_key(format!("k{i}"));
        let answer = client.export(payload).await?;
        println!("export k{i}: {answer:?}");
        assert_eq!(answer, Delivery::Spooled);
    }

    // 2. Backend back: the operator creates the directory; a flush replays the backlog now
    //    (without it, the drain task would retry after its backoff delay).
    std::fs::create_dir_all(&out_dir)?;
    let report = client.force_flush(Duration::from_secs(5)).await;
    println!(
        "flush: complete={} delivered={} remaining={}",
        report.complete, report.delivered, report.remaining_records
    );

    // 3. A payload the format cannot hold: rejected permanently, handed back, not spooled.
    match client
        .export(Payload::new("two\nlines").with_key("k4"))
        .await
    {
        Err(DropError::Permanent { payload, source }) => {
            println!(
                "export k4: dropped ({}); {} bytes handed back",
                ErrorChain(&source),
                payload.len()
            );
        }
        other => return Err(format!("expected a permanent rejection, got {other:?}").into()),
    }

    // 4. The same key again (as after a crash between delivery and acknowledgement):
    //    acknowledged, written once.
    let again = client
        .export(Payload::new("event 1").with_key("k1"))
        .await?;
    println!("export k1 again: {again:?}");

    let stats = client.stats();
    println!(
        "stats: exported={} spooled={} replayed={} dropped(permanent)={}",
        stats.exported, stats.spooled, stats.replayed, stats.dropped.permanent
    );
    let _report = client.shutdown(Duration::from_secs(5)).await?;

    let written = std::fs::read_to_string(&out_file)?;
    print!("{}:\n{written}", out_file.display());
    assert_eq!(written, "k1\tevent 1\nk2\tevent 2\nk3\tevent 3\n");
    Ok(())
}
// ANCHOR_END: main

// ANCHOR: tests
#[cfg(test)]
mod tests {
    use super::*;
    use outlast_client::testing::{MemoryExporter, Outcome};

    /// The exporter's own contract: what is retryable, what is permanent.
    #[tokio::test]
    async fn missing_directory_is_retryable_and_bad_payload_is_permanent() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let exporter = LineFileExporter::new(dir.path().join("missing").join("out.log"));

        let err = exporter
            .export(&Payload::new("ok"))
            .await
            .expect_err("directory is missing");
        assert!(err.is_retryable(), "{err}");
        assert_eq!(exporter.probe().await, Reachability::Unreachable);

        let err = exporter
            .export(&Payload::new(vec![0xff, 0xfe]))
            .await
            .expect_err("not UTF-8");
        assert!(err.is_permanent(), "{err}");
    }

    /// How the client treats those answers, scripted with `MemoryExporter` instead of a real
    /// backend: two retryable failures spool the payload; a flush delivers it.
    #[tokio::test]
    async fn client_spools_after_two_retryable_failures_and_flush_delivers() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let backend = MemoryExporter::new();
        backend.push_outcomes([Outcome::Fail, Outcome::Fail]);
        let client = Client::builder()
            .spool_dir(dir.path())
            .immediate_retry_delay(Duration::from_millis(10))
            .build(backend.clone())
            .expect("valid configuration");

        let answer = client.export(Payload::new("e1")).await.expect("accepted");
        assert_eq!(answer, Delivery::Spooled);
        let report = client.force_flush(Duration::from_secs(5)).await;
        assert!(report.complete);
        assert_eq!(backend.received_bytes(), vec![b"e1".to_vec()]);
        assert_eq!(backend.attempts(), 3);
    }
}
// ANCHOR_END: tests
