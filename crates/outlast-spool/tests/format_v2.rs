//! The compressed-record example of `docs/spool-format.md` (format version 2) is what the
//! writer produces, and reads back with its encoding.

mod common;

use std::path::Path;

use common::small_config;
use outlast_core::{ContentEncoding, ContentType};
use outlast_spool::{Payload, Spool};

fn hex(line: &str) -> Vec<u8> {
    let s: String = line
        .split_whitespace()
        .map(|t| if t.ends_with("__") { "00000000" } else { t })
        .collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn format_v2_doc_example_parses() {
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/spool-format.md");
    let doc = std::fs::read_to_string(&doc_path).expect("docs/spool-format.md");
    let start = doc
        .find("### Example of a compressed record")
        .expect("example section");
    let block = &doc[start..];
    let block = &block[block.find("```text").expect("code block") + 7..];
    let block = &block[..block.find("```").expect("end of block")];
    let mut lines = block.lines().filter(|l| !l.trim().is_empty());
    let mut header = hex(lines.next().expect("header line"));
    let crc = crc32fast::hash(&header[..28]);
    header[28..32].copy_from_slice(&crc.to_le_bytes());
    let mut frame = hex(lines.next().expect("frame line"));
    let mut h = crc32fast::Hasher::new();
    h.update(&frame[..8]);
    h.update(&frame[12..]);
    let crc = h.finalize();
    frame[8..12].copy_from_slice(&crc.to_le_bytes());

    let gz = frame[32..].to_vec();
    // A gzip stream of `hi`: its trailer holds the CRC-32 and the length of `hi`.
    assert_eq!(&gz[..2], &[0x1f, 0x8b]);
    assert_eq!(
        &gz[gz.len() - 8..gz.len() - 4],
        &crc32fast::hash(b"hi").to_le_bytes()
    );
    assert_eq!(&gz[gz.len() - 4..], &2u32.to_le_bytes());
    let expected = Payload::new(gz)
        .with_content_type(ContentType::Json)
        .with_content_encoding(ContentEncoding::Gzip)
        .with_created_at(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1));
    let mut built = Vec::new();
    outlast_spool::testing::encode_frame(&mut built, 1, &expected).expect("encode");
    assert_eq!(
        frame, built,
        "documented frame equals what the writer produces"
    );
    assert_eq!(
        &header[..],
        &outlast_spool::testing::encode_segment_header(1, 1)[..]
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let lane = dir.path().join("lane-0");
    std::fs::create_dir_all(&lane).expect("mkdir");
    let mut file = header.clone();
    file.extend_from_slice(&frame);
    std::fs::write(lane.join("00000000000000000001.seg"), file).expect("write");
    let (spool, report) = Spool::open(small_config(dir.path())).expect("open");
    assert_eq!((report.records, report.corrupt_frames_skipped), (1, 0));
    let b = spool.read_batch(10, u64::MAX).expect("read");
    assert_eq!(b.records.len(), 1);
    assert_eq!(b.records[0].payload, expected);
    assert_eq!(
        b.records[0].payload.content_encoding(),
        ContentEncoding::Gzip
    );
}
