//! The SQLite-queue reference: the design some telemetry SDKs use for offline storage (one
//! table, WAL journal, `synchronous=NORMAL`, one row per message inserted in its own
//! transaction, read oldest-first and deleted once delivered).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rusqlite::{Connection, params};

use crate::disk::record;

/// A message queue in one SQLite database file.
#[derive(Debug)]
pub(crate) struct SqliteQueue {
    conn: Connection,
    path: PathBuf,
}

impl SqliteQueue {
    /// Creates a fresh queue at `path` (removing an older one), WAL mode, synchronous=NORMAL.
    pub(crate) fn create(path: &Path) -> anyhow::Result<SqliteQueue> {
        remove_db(path);
        let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .context("setting WAL")?;
        anyhow::ensure!(mode.eq_ignore_ascii_case("wal"), "journal_mode is {mode}");
        conn.execute_batch(
            "PRAGMA synchronous=NORMAL;
             CREATE TABLE queue (id INTEGER PRIMARY KEY AUTOINCREMENT,
                                 created_at INTEGER NOT NULL,
                                 body BLOB NOT NULL);",
        )
        .context("creating the queue table")?;
        Ok(SqliteQueue {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Inserts `count` messages of `len` bytes, each in its own transaction (autocommit), as
    /// an SDK does when each export call spills one message. Returns the elapsed time.
    pub(crate) fn insert_each(&self, len: usize, count: u64) -> anyhow::Result<Duration> {
        let body = record(len, 5);
        let mut stmt = self
            .conn
            .prepare_cached("INSERT INTO queue (created_at, body) VALUES (?1, ?2)")
            .context("preparing insert")?;
        let start = Instant::now();
        for i in 0..count {
            stmt.execute(params![i as i64, &body]).context("insert")?;
        }
        Ok(start.elapsed())
    }

    /// Inserts `count` messages in one transaction (setup for the read benchmark, not timed).
    pub(crate) fn fill(&mut self, len: usize, count: u64) -> anyhow::Result<()> {
        let body = record(len, 6);
        let tx = self.conn.transaction().context("begin")?;
        {
            let mut stmt = tx
                .prepare_cached("INSERT INTO queue (created_at, body) VALUES (?1, ?2)")
                .context("preparing insert")?;
            for i in 0..count {
                stmt.execute(params![i as i64, &body]).context("insert")?;
            }
        }
        tx.commit().context("commit")?;
        Ok(())
    }

    /// Reads the queue oldest first in batches of `batch` rows, deleting each batch (one
    /// transaction per batch) once "delivered", until empty. Returns rows, bytes and time.
    pub(crate) fn drain(&self, batch: usize) -> anyhow::Result<(u64, u64, Duration)> {
        let mut select = self
            .conn
            .prepare_cached("SELECT id, body FROM queue ORDER BY id LIMIT ?1")
            .context("preparing select")?;
        let mut delete = self
            .conn
            .prepare_cached("DELETE FROM queue WHERE id <= ?1")
            .context("preparing delete")?;
        let (mut rows_total, mut bytes_total) = (0u64, 0u64);
        let start = Instant::now();
        loop {
            let mut last = None;
            let mut rows = select.query(params![batch as i64]).context("select")?;
            while let Some(row) = rows.next().context("next row")? {
                let id: i64 = row.get(0).context("id")?;
                let body = row.get_ref(1).context("body")?.as_blob().context("blob")?;
                bytes_total += body.len() as u64;
                rows_total += 1;
                last = Some(id);
            }
            drop(rows);
            match last {
                Some(id) => {
                    delete.execute(params![id]).context("delete")?;
                }
                None => break,
            }
        }
        Ok((rows_total, bytes_total, start.elapsed()))
    }
}

impl Drop for SqliteQueue {
    fn drop(&mut self) {
        // Leave nothing behind between repetitions; the connection closes after this.
        remove_db(&self.path);
    }
}

fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserted_messages_drain_in_full_and_leave_the_queue_empty() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut q = SqliteQueue::create(&dir.path().join("q.db")).expect("create");
        q.insert_each(100, 10).expect("insert");
        q.fill(100, 5).expect("fill");
        let (rows, bytes, _) = q.drain(4).expect("drain");
        assert_eq!((rows, bytes), (15, 1500));
        let (rows, _, _) = q.drain(4).expect("drain again");
        assert_eq!(rows, 0);
    }
}
