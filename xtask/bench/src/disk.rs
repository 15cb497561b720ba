//! Disk references: what plain system calls achieve on the same disk, with the same record
//! sizes, as the spool rows they stand beside.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// Size of the buffer used to read files back (large enough to be syscall-cheap).
const READ_BUF_BYTES: usize = 1024 * 1024;

/// A record of `len` bytes with varying content (so nothing can be deduplicated or compressed
/// by lower layers any more than real telemetry would).
pub(crate) fn record(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            // xorshift64: cheap pseudo-random bytes.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn create(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .read(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))
}

/// Two moments of one timed write run, both measured from its start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteTimes {
    /// When the last record had been handed to the OS (the writer could go on).
    pub(crate) written: Duration,
    /// When all of it was durable (after the final fdatasync).
    pub(crate) durable: Duration,
}

/// One `write(2)` per record of `record_len` bytes, `count` times, then one `fdatasync` so the
/// data ends up as durable as a spool that is synced at the end. Returns the times (from
/// file creation) to the last write and to the end of the sync. The file is removed
/// afterwards.
pub(crate) fn sequential_write(
    path: &Path,
    record_len: usize,
    count: u64,
) -> anyhow::Result<WriteTimes> {
    let buf = record(record_len, 1);
    let start = Instant::now();
    let mut f = create(path)?;
    for _ in 0..count {
        f.write_all(&buf).context("write")?;
    }
    let written = start.elapsed();
    f.sync_data().context("fdatasync")?;
    let durable = start.elapsed();
    drop(f);
    std::fs::remove_file(path).context("removing the written file")?;
    Ok(WriteTimes { written, durable })
}

/// `write(2)` then `fdatasync` for each of `count` records, one thread. Returns the elapsed
/// time; the file is removed afterwards. With `zero_filled`, the file is first written with
/// zeros for all the records and fdatasynced (before the clock starts), so that each record
/// overwrites blocks the file holds and its fdatasync carries no new file size.
pub(crate) fn fsync_per_record(
    path: &Path,
    record_len: usize,
    count: u64,
    zero_filled: bool,
) -> anyhow::Result<Duration> {
    let buf = record(record_len, 2);
    let mut f = create(path)?;
    if zero_filled {
        let len = u64::try_from(record_len)
            .unwrap_or(u64::MAX)
            .saturating_mul(count);
        let zeros = vec![0u8; 1 << 20];
        let mut left = len;
        while left > 0 {
            let n = usize::try_from(left).map_or(zeros.len(), |l| l.min(zeros.len()));
            f.write_all(&zeros[..n]).context("zero fill")?;
            left -= n as u64;
        }
        f.sync_all().context("fsync of the zero fill")?;
        f.seek(std::io::SeekFrom::Start(0)).context("seek")?;
    }
    let start = Instant::now();
    for _ in 0..count {
        f.write_all(&buf).context("write")?;
        f.sync_data().context("fdatasync")?;
    }
    let elapsed = start.elapsed();
    drop(f);
    std::fs::remove_file(path).context("removing the written file")?;
    Ok(elapsed)
}

/// Latency of each of `count` single-record `write(2)` calls (the floor of any append that
/// hands its record to the OS), in microseconds, sorted ascending. The file is removed.
pub(crate) fn write_latencies_us(
    path: &Path,
    record_len: usize,
    count: u64,
) -> anyhow::Result<Vec<f64>> {
    let buf = record(record_len, 3);
    let mut f = create(path)?;
    let mut lat = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for _ in 0..count {
        let t = Instant::now();
        f.write_all(&buf).context("write")?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(f);
    std::fs::remove_file(path).context("removing the written file")?;
    lat.sort_by(f64::total_cmp);
    Ok(lat)
}

/// Writes a file of `count` records of `record_len` bytes (not timed) and reads it once so
/// that it sits in the page cache.
pub(crate) fn prepare_cached_file(
    path: &Path,
    record_len: usize,
    count: u64,
) -> anyhow::Result<()> {
    let buf = record(record_len, 4);
    let mut f = create(path)?;
    for _ in 0..count {
        f.write_all(&buf).context("write")?;
    }
    drop(f);
    read_files(&[path.to_path_buf()])?;
    Ok(())
}

/// Reads every file in `paths` to its end with a 1 MiB buffer. Returns the bytes read and the
/// elapsed time.
pub(crate) fn read_files(paths: &[std::path::PathBuf]) -> anyhow::Result<(u64, Duration)> {
    let mut buf = vec![0u8; READ_BUF_BYTES];
    let mut total = 0u64;
    let start = Instant::now();
    for p in paths {
        let mut f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
        loop {
            let n = f.read(&mut buf).context("read")?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
    }
    Ok((total, start.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_with_different_seeds_differ() {
        assert_ne!(record(64, 1), record(64, 2));
        assert_eq!(record(64, 1).len(), 64);
    }

    #[test]
    fn a_prepared_file_reads_back_in_full() {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = dir.path().join("f");
        prepare_cached_file(&p, 1000, 10).expect("prepare");
        let (n, _) = read_files(&[p]).expect("read");
        assert_eq!(n, 10_000);
    }
}
