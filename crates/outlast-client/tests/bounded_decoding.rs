//! A stored record costs at most about `max_record_bytes` to replay, whatever it decodes
//! to: a gzip bomb in the spool is counted `too_large` (once, acknowledged, never sent), the
//! records around it are delivered, and merged requests are measured decoded.

mod common;

use std::io::Write as _;
use std::time::Duration;

use common::spool_dir;
use outlast_client::testing::MemoryExporter;
use outlast_client::{Coalescing, ContentType, Payload};
use outlast_core::ContentEncoding;
use outlast_spool::Spool;

/// A gzip stream of `members` members, each `member_len` zero bytes once decoded.
fn bomb(member_len: usize, members: usize) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    let mut left = member_len;
    while left > 0 {
        let n = left.min(zeros.len());
        enc.write_all(&zeros[..n]).expect("in memory");
        left -= n;
    }
    enc.finish().expect("in memory").repeat(members)
}

/// A gzip member of `text`.
fn gz(text: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(text).expect("in memory");
    enc.finish().expect("in memory")
}

/// Writes `payloads` into the spool at `dir` as a client with exporter type `E` would
/// have left them (same identity), then closes it.
fn leave<E>(dir: &std::path::Path, payloads: Vec<Payload>) {
    let (spool, _) = Spool::open(common::spool_config_of::<E>(dir)).expect("open");
    for p in payloads {
        spool.append(p).expect("appended");
    }
    spool.close().expect("closed");
}

fn gzip_payload(bytes: Vec<u8>) -> Payload {
    Payload::new(bytes)
        .with_content_type(ContentType::Protobuf)
        .with_content_encoding(ContentEncoding::Gzip)
}

#[tokio::test]
async fn a_gzip_bomb_in_the_spool_is_counted_too_large_once_and_the_records_around_it_delivered() {
    let dir = spool_dir();
    let max_record = 1u64 << 20;
    // 64 MiB of zeros in about 64 KiB, between two good records, one stored plain and one
    // gzipped.
    leave::<MemoryExporter>(
        dir.path(),
        vec![
            Payload::new(&b"before"[..]),
            gzip_payload(bomb(64 << 20, 1)),
            gzip_payload(gz(b"after")),
        ],
    );
    for accepts_gzip in [false, true] {
        let d = spool_dir();
        copy_dir(dir.path(), d.path());
        let exporter = if accepts_gzip {
            MemoryExporter::new().with_gzip()
        } else {
            MemoryExporter::new()
        };
        let c = common::builder(d.path())
            .max_record_bytes(max_record)
            .build(exporter.clone())
            .expect("valid");
        let report = c.force_flush(Duration::from_secs(30)).await;
        assert!(report.complete, "{report:?}");
        let got: Vec<Payload> = exporter.received();
        assert_eq!(got.len(), 2, "the bomb is never sent");
        assert!(
            got.iter().all(|p| p.len() as u64 <= max_record),
            "nothing sent beyond max_record_bytes"
        );
        let s = c.stats();
        assert_eq!(s.dropped.too_large, 1, "{s:?}");
        assert_eq!(s.dropped.total(), 1, "{s:?}");
        assert_eq!(s.replayed, 2, "{s:?}");
        assert_eq!(s.spool_records, 0);
        // Counted once: nothing more on a second flush or a restart.
        drop(c);
        let again = common::builder(d.path())
            .max_record_bytes(max_record)
            .build(exporter.clone())
            .expect("valid");
        let report = again.force_flush(Duration::from_secs(5)).await;
        assert!(report.complete);
        assert_eq!(again.stats().dropped.total(), 0);
        assert_eq!(exporter.received().len(), 2);
    }
}

#[tokio::test]
async fn merged_requests_are_measured_by_what_their_records_decode_to() {
    let dir = spool_dir();
    // 20 gzip records of 200 KiB each (a few hundred bytes stored): merged by stored size
    // they would all fit in 64 KiB; decoded, 1 MiB takes five.
    let records: Vec<Payload> = (0..20)
        .map(|i| {
            let mut text = vec![b'a' + (i as u8 % 26); 200 << 10];
            text[0] = i as u8;
            gzip_payload(gz(&text))
        })
        .collect();
    assert!(records.iter().all(|p| p.len() < 4 << 10));
    leave::<MemoryExporter>(dir.path(), records);
    let exporter = MemoryExporter::new()
        .with_gzip()
        .with_coalescing(Coalescing::UNLIMITED)
        .with_max_in_flight(4);
    let c = common::builder(dir.path())
        .coalesce_max_bytes(1 << 20)
        .coalesce_max_records(100)
        .build(exporter.clone())
        .expect("valid");
    let report = c.force_flush(Duration::from_secs(30)).await;
    assert!(report.complete, "{report:?}");
    let sizes = exporter.call_sizes();
    assert_eq!(sizes.iter().sum::<usize>(), 20);
    assert!(sizes.iter().all(|&n| n <= 5), "{sizes:?}");
}

/// Copies a spool directory (lanes and their files) to `to`.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).expect("read") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "lock" {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}
