//! Helpers shared by the spool's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use outlast_spool::{Durability, Payload, SpoolConfig};

/// A small configuration: 4 KiB records, 16 KiB segments, no background fsync surprises.
pub fn small_config(root: &Path) -> SpoolConfig {
    SpoolConfig::new(root)
        .with_max_record_bytes(4096)
        .with_segment_bytes(16 * 1024)
        .with_spool_max_bytes(1024 * 1024)
        .with_durability(Durability::OsWrite {
            fsync_interval: Duration::from_secs(3600),
        })
}

/// Payload number `i`: deterministic bytes, key and creation time.
pub fn payload(i: u64) -> Payload {
    let body = format!("record-{i:08}-{}", "x".repeat((i % 50) as usize));
    Payload::new(body.into_bytes())
        .with_key(format!("k{i}"))
        .with_created_at(std::time::SystemTime::now() - Duration::from_secs(10_000 - i.min(9_999)))
}

/// The number `i` a payload was made from.
pub fn body_index(p: &Payload) -> u64 {
    let s = std::str::from_utf8(p.bytes()).expect("utf8 payload");
    s[7..15].parse().expect("index in payload")
}

/// The segment files of lane 0, in name order.
pub fn segments(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root.join("lane-0"))
        .expect("lane dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}
