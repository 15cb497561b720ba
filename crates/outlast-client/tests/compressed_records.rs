//! Records stored gzipped, replayed through the HTTP exporter to the loopback receiver:
//! with gzip on they go out as stored (one compression on their way, merged requests as
//! concatenated gzip members); with gzip off, and to NDJSON merges, decompressed.

mod common;

use std::io::Read as _;
use std::time::Duration;

use outlast_client::http::PayloadFraming;
use outlast_client::testing::{Mode, ReceivedRequest, TestReceiver};
use outlast_client::{Client, ClientBuilder, ContentType, Payload};

/// Every test ends within this, whatever happens.
const LIMIT: Duration = Duration::from_secs(30);

/// A protobuf request holding one element of field 1 (length-delimited): `n` repeated
/// about 200 times, about 2 KiB that gzip shrinks well.
fn record(n: usize) -> Vec<u8> {
    let text = format!("span-{n:04};").repeat(200);
    let mut bytes = vec![0x0a];
    let mut len = text.len();
    while len >= 0x80 {
        bytes.push((len as u8) | 0x80);
        len >>= 7;
    }
    bytes.push(len as u8);
    bytes.extend_from_slice(text.as_bytes());
    bytes
}

fn otlp_like(n: usize) -> Payload {
    Payload::new(record(n)).with_content_type(ContentType::Protobuf)
}

/// A client merging at most 8 records per request, with the default attempts in flight.
fn client(
    dir: &std::path::Path,
    receiver: &TestReceiver,
    framing: PayloadFraming,
    gzip: bool,
) -> Client {
    common::http_client(
        dir,
        receiver,
        framing,
        gzip,
        8,
        ClientBuilder::DEFAULT_MAX_IN_FLIGHT,
    )
}

/// Spools `payloads` while the receiver is down, brings it back and flushes; the requests
/// it accepted.
async fn spool_then_flush(
    c: &Client,
    receiver: &TestReceiver,
    payloads: Vec<Payload>,
) -> Vec<ReceivedRequest> {
    receiver.set_mode(Mode::Down).await.expect("down");
    let total: u64 = payloads.iter().map(|p| p.len() as u64).sum();
    for p in payloads {
        assert!(c.export(p).await.expect("spooled").is_spooled());
    }
    let s = c.stats();
    assert!(
        s.spool_bytes * 4 < total,
        "stored compressed: {} bytes on disk for {total}",
        s.spool_bytes
    );
    receiver.set_mode(Mode::Up).await.expect("up");
    let report = c.force_flush(Duration::from_secs(20)).await;
    assert!(report.complete, "{report:?}");
    assert_eq!(c.stats().spool_records, 0);
    receiver
        .received()
        .into_iter()
        .filter(|r| r.answer.is_accepted())
        .collect()
}

/// The first gzip member of `body`, decoded (a reader that stops after one member).
fn first_member(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut out)
        .expect("a gzip member");
    out
}

#[tokio::test]
async fn with_gzip_on_stored_records_go_out_as_stored_and_merged_ones_as_concatenated_members() {
    tokio::time::timeout(LIMIT, async {
        let dir = common::spool_dir();
        let receiver = TestReceiver::start().await.expect("receiver");
        let c = client(dir.path(), &receiver, PayloadFraming::OtlpProtobuf, true);
        let requests = spool_then_flush(&c, &receiver, (0..20).map(otlp_like).collect()).await;
        let mut got = Vec::new();
        let mut merged = 0;
        for r in &requests {
            assert_eq!(r.header("content-encoding"), Some("gzip"));
            let raw = r.body.clone().expect("recorded");
            let body = r.decoded_body().expect("gzip").expect("recorded");
            // Compressed once: one gunzip gives the protobuf itself, and each record is a
            // gzip member of its own (a single-member reader stops after the first).
            assert_eq!(body[0], 0x0a, "protobuf, not gzip inside gzip");
            let first = first_member(&raw);
            assert_eq!(first, body[..first.len()]);
            if first.len() < body.len() {
                merged += 1;
            }
            got.extend_from_slice(&body);
        }
        let want: Vec<u8> = (0..20).flat_map(record).collect();
        assert_eq!(got, want, "every record once, in order");
        assert!(
            merged > 0,
            "records were merged: {} requests",
            requests.len()
        );
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn with_gzip_off_the_receiver_gets_the_original_bytes() {
    tokio::time::timeout(LIMIT, async {
        let dir = common::spool_dir();
        let receiver = TestReceiver::start().await.expect("receiver");
        let c = client(dir.path(), &receiver, PayloadFraming::Opaque, false);
        let requests = spool_then_flush(&c, &receiver, (0..6).map(otlp_like).collect()).await;
        let bodies: Vec<Vec<u8>> = requests
            .iter()
            .map(|r| {
                assert_eq!(r.header("content-encoding"), None);
                r.body.clone().expect("recorded").to_vec()
            })
            .collect();
        let want: Vec<Vec<u8>> = (0..6).map(record).collect();
        assert_eq!(bodies, want);
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn merged_ndjson_records_stored_gzipped_are_the_lines_in_order() {
    tokio::time::timeout(LIMIT, async {
        let dir = common::spool_dir();
        let receiver = TestReceiver::start().await.expect("receiver");
        let c = client(dir.path(), &receiver, PayloadFraming::NdJson, true);
        let line = |i: usize| format!("{{\"i\":{i},\"msg\":\"{}\"}}", "request served ".repeat(60));
        let payloads = (0..12)
            .map(|i| Payload::new(line(i).into_bytes()).with_content_type(ContentType::Json))
            .collect();
        let requests = spool_then_flush(&c, &receiver, payloads).await;
        let mut lines = Vec::new();
        for r in &requests {
            assert_eq!(r.header("content-encoding"), Some("gzip"));
            let body = r.decoded_body().expect("gzip").expect("recorded");
            let text = String::from_utf8(body.to_vec()).expect("text");
            lines.extend(text.lines().map(str::to_owned));
        }
        assert_eq!(lines, (0..12).map(line).collect::<Vec<_>>());
        assert!(requests.len() < 12, "merged");
    })
    .await
    .expect("bounded");
}
