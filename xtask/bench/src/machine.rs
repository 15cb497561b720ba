//! Facts about the machine a run was taken on: cores, memory, kernel, and the filesystem and
//! disk under the bench directory. Printed above the table and saved with the results.

use std::fmt;
use std::path::Path;

use serde::Serialize;

use crate::measure::MIB;

/// The machine facts of one run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Machine {
    /// `std::thread::available_parallelism`.
    pub(crate) cores: usize,
    /// CPU model name from /proc/cpuinfo.
    pub(crate) cpu: Option<String>,
    /// MemTotal from /proc/meminfo, in MiB.
    pub(crate) memory_mib: Option<u64>,
    /// First line of /proc/version.
    pub(crate) kernel: Option<String>,
    /// Where on-disk measurements wrote.
    pub(crate) bench_dir: String,
    /// The mount holding the bench dir.
    pub(crate) mount: Option<Mount>,
    /// Size and free space of that filesystem (statvfs), in MiB.
    pub(crate) fs_size_mib: Option<u64>,
    /// Space available to the user on that filesystem, in MiB.
    pub(crate) fs_avail_mib: Option<u64>,
    /// Whether the block device says it is rotational (/sys/block/*/queue/rotational; virtual
    /// disks often say so whatever backs them).
    pub(crate) rotational: Option<bool>,
}

/// One line of /proc/mounts.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Mount {
    /// The device (e.g. /dev/vda).
    pub(crate) device: String,
    /// The mount point.
    pub(crate) mount_point: String,
    /// The filesystem type (ext4, xfs, tmpfs ...).
    pub(crate) fs_type: String,
    /// Mount options.
    pub(crate) options: String,
}

impl Machine {
    /// Gathers the facts; any that cannot be read are left empty rather than guessed.
    pub(crate) fn gather(bench_dir: &Path) -> Machine {
        let dir = std::fs::canonicalize(bench_dir).unwrap_or_else(|_| bench_dir.to_path_buf());
        let mount = mount_of(&dir);
        let vfs = rustix::fs::statvfs(&dir).ok();
        let rotational = mount.as_ref().and_then(|m| rotational(&m.device));
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu: read("/proc/cpuinfo").and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            }),
            memory_mib: read("/proc/meminfo").and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
                    .map(|kb| kb / 1024)
            }),
            kernel: read("/proc/version").map(|s| s.lines().next().unwrap_or("").to_owned()),
            bench_dir: dir.display().to_string(),
            mount,
            fs_size_mib: vfs.as_ref().map(|v| v.f_blocks * v.f_frsize / MIB),
            fs_avail_mib: vfs.as_ref().map(|v| v.f_bavail * v.f_frsize / MIB),
            rotational,
        }
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unknown = || "unknown".to_owned();
        writeln!(
            f,
            "- cores: {} ({})",
            self.cores,
            self.cpu.clone().unwrap_or_else(unknown)
        )?;
        writeln!(
            f,
            "- memory: {}",
            self.memory_mib.map_or_else(unknown, |m| format!("{m} MiB"))
        )?;
        writeln!(
            f,
            "- kernel: {}",
            self.kernel.clone().unwrap_or_else(unknown)
        )?;
        match &self.mount {
            Some(m) => writeln!(
                f,
                "- bench dir: {} on {} ({}, mounted at {}, {}), {} MiB of which {} MiB free, sysfs rotational flag: {}",
                self.bench_dir,
                m.device,
                m.fs_type,
                m.mount_point,
                m.options,
                self.fs_size_mib.map_or_else(unknown, |v| v.to_string()),
                self.fs_avail_mib.map_or_else(unknown, |v| v.to_string()),
                self.rotational.map_or_else(unknown, |r| r.to_string()),
            ),
            None => writeln!(f, "- bench dir: {} (mount unknown)", self.bench_dir),
        }
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The mount whose mount point is the longest prefix of `dir`.
fn mount_of(dir: &Path) -> Option<Mount> {
    let text = read("/proc/mounts")?;
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some(Mount {
                device: it.next()?.to_owned(),
                mount_point: it.next()?.replace("\\040", " "),
                fs_type: it.next()?.to_owned(),
                options: it.next()?.to_owned(),
            })
        })
        .filter(|m| dir.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.len())
}

/// Whether `/dev/<name>` is rotational, from sysfs (partitions map to their parent disk).
fn rotational(device: &str) -> Option<bool> {
    let name = device.strip_prefix("/dev/")?;
    let direct = format!("/sys/class/block/{name}/queue/rotational");
    let parent = format!("/sys/class/block/{name}/../queue/rotational");
    let text = read(&direct).or_else(|| read(&parent))?;
    Some(text.trim() == "1")
}

/// Peak resident set size of this process (VmHWM of /proc/self/status), in bytes.
pub(crate) fn peak_rss_bytes() -> Option<u64> {
    let text = read("/proc/self/status")?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rss_is_read_and_plausible() {
        let rss = peak_rss_bytes().expect("linux exposes VmHWM");
        assert!(
            rss > 1024 * 1024,
            "a running test binary uses more than 1 MiB: {rss}"
        );
    }

    #[test]
    fn the_mount_of_the_root_is_found() {
        let m = mount_of(Path::new("/")).expect("/ is mounted");
        assert_eq!(m.mount_point, "/");
    }
}
