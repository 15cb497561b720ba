//! Coalesced replay through the HTTP exporter against the loopback test receiver: merged
//! requests hold exactly the spooled records, in order; a poison record inside a merged
//! request is the only one dropped; opaque payloads are never merged.

mod common;

use std::time::Duration;

use outlast_client::http::{KEYS_HEADER, PayloadFraming, RECORDS_HEADER};
use outlast_client::testing::{Mode, ReceivedRequest, TestReceiver};
use outlast_client::{BackendState, Client, ContentType, DropReason, Payload};

/// Every test ends within this, whatever happens.
const LIMIT: Duration = Duration::from_secs(30);

/// An OTLP-like protobuf request holding one element of a repeated field (field 1,
/// length-delimited) whose bytes are `name`: concatenating such requests gives one request
/// whose repeated field holds every element.
fn otlp_like(name: &str) -> Payload {
    let mut bytes = vec![0x0a, u8::try_from(name.len()).expect("short name")];
    bytes.extend_from_slice(name.as_bytes());
    Payload::new(bytes)
        .with_content_type(ContentType::Protobuf)
        .with_key(name)
}

/// The elements of field 1 in a protobuf body made of length-delimited field-1 entries.
fn decode_otlp_like(mut body: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while let [tag, len, rest @ ..] = body {
        assert_eq!(*tag, 0x0a, "only field 1, length-delimited");
        let len = usize::from(*len);
        out.push(String::from_utf8(rest[..len].to_vec()).expect("text"));
        body = &rest[len..];
    }
    assert!(body.is_empty(), "trailing bytes");
    out
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("r{i:03}")).collect()
}

/// Merged records per request at most, in these tests.
const MAX_RECORDS: usize = 10;

/// A client replaying one request at a time (strict arrival order).
fn client(
    dir: &std::path::Path,
    receiver: &TestReceiver,
    framing: PayloadFraming,
    gzip: bool,
) -> Client {
    common::http_client(dir, receiver, framing, gzip, MAX_RECORDS, 1)
}

/// Spools `payloads` while the receiver is down, brings it back and flushes.
async fn spool_then_flush(c: &Client, receiver: &TestReceiver, payloads: Vec<Payload>) {
    receiver.set_mode(Mode::Down).await.expect("down");
    for p in payloads {
        let _ = c.export(p).await.expect("spooled");
    }
    assert_eq!(c.stats().spool_records, c.stats().spooled);
    receiver.set_mode(Mode::Up).await.expect("up");
}

fn accepted(receiver: &TestReceiver) -> Vec<ReceivedRequest> {
    receiver
        .received()
        .into_iter()
        .filter(|r| r.answer.is_accepted())
        .collect()
}

#[tokio::test]
async fn merged_otlp_requests_hold_exactly_the_spooled_records_in_order() {
    tokio::time::timeout(LIMIT, async {
        let dir = common::spool_dir();
        let receiver = TestReceiver::start().await.expect("receiver");
        let c = client(dir.path(), &receiver, PayloadFraming::OtlpProtobuf, false);
        let want = names(35);
        spool_then_flush(&c, &receiver, want.iter().map(|n| otlp_like(n)).collect()).await;
        let report = c.force_flush(Duration::from_secs(20)).await;
        assert!(report.complete, "{report:?}");

        let requests = accepted(&receiver);
        let mut got = Vec::new();
        for r in &requests {
            let body = r.decoded_body().expect("body").expect("recorded");
            let records = decode_otlp_like(&body);
            assert_eq!(r.keys, records, "keys travel with their records, in order");
            assert!(records.len() <= 10, "the record cap: {}", records.len());
            if records.len() > 1 {
                assert_eq!(
                    r.header(RECORDS_HEADER),
                    Some(records.len().to_string().as_str())
                );
                assert_eq!(
                    r.key, None,
                    "a merged request carries its keys in {KEYS_HEADER}"
                );
            }
            got.extend(records);
        }
        assert_eq!(got, want, "every record once, oldest first");
        assert!(
            requests.len() < want.len(),
            "records were merged: {} requests",
            requests.len()
        );
        assert_eq!(c.stats().spool_records, 0);
        assert_eq!(c.stats().replayed, 35);
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn merged_ndjson_requests_are_the_lines_in_order_even_gzipped() {
    tokio::time::timeout(LIMIT, async {
        let dir = common::spool_dir();
        let receiver = TestReceiver::start().await.expect("receiver");
        let c = client(dir.path(), &receiver, PayloadFraming::NdJson, true);
        let want: Vec<String> = names(23)
            .into_iter()
            .map(|n| format!("{{\"name\":\"{n}\"}}"))
            .collect();
        // Every other line already ends with a newline: none is doubled.
        let payloads = want
            .iter()
            .enumerate()
            .map(|(i, line)| {
                let text = if i % 2 == 0 {
                    format!("{line}\n")
                } else {
                    line.clone()
                };
                Payload::new(text.into_bytes()).with_content_type(ContentType::Json)
            })
            .collect();
        spool_then_flush(&c, &receiver, payloads).await;
        let report = c.force_flush(Duration::from_secs(20)).await;
        assert!(report.complete, "{report:?}");

        let mut got = Vec::new();
        let requests = accepted(&receiver);
        for r in &requests {
            assert_eq!(r.header("content-encoding"), Some("gzip"));
            let body = r.decoded_body().expect("gunzip").expect("recorded");
            let text = String::from_utf8(body.to_vec()).expect("text");
            got.extend(text.lines().map(str::to_owned));
        }
        assert_eq!(got, want);
        assert!(requests.len() < want.len());
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_poison_record_inside_a_merged_request_is_the_only_one_dropped() {
    tokio::time::timeout(LIMIT, async {
        let dir = common::spool_dir();
        let receiver = TestReceiver::start().await.expect("receiver");
        // Four requests in flight: they may arrive in any order among themselves.
        let c = common::http_client(
            dir.path(),
            &receiver,
            PayloadFraming::OtlpProtobuf,
            false,
            MAX_RECORDS,
            4,
        );
        let want = names(30);
        spool_then_flush(&c, &receiver, want.iter().map(|n| otlp_like(n)).collect()).await;
        receiver
            .set_mode(Mode::RejectKeys(vec!["r014".into()]))
            .await
            .expect("poison mode");
        let report = c.force_flush(Duration::from_secs(20)).await;
        assert!(report.complete, "{report:?}");

        let mut delivered: Vec<String> = Vec::new();
        for r in accepted(&receiver) {
            let body = r.decoded_body().expect("body").expect("recorded");
            let records = decode_otlp_like(&body);
            let mut sorted = records.clone();
            sorted.sort();
            assert_eq!(records, sorted, "a merged request is in spool order");
            delivered.extend(records);
        }
        delivered.sort();
        let expected: Vec<String> = want.iter().filter(|n| *n != "r014").cloned().collect();
        assert_eq!(
            delivered, expected,
            "the neighbours are delivered, each once"
        );
        let stats = c.stats();
        assert_eq!(stats.dropped.get(DropReason::Permanent), 1);
        assert_eq!(stats.replayed, 29);
        assert_eq!(stats.spool_records, 0);
        // The poison record was tried inside its merged request, then alone.
        let poison_attempts = receiver
            .received()
            .iter()
            .filter(|r| r.keys.iter().any(|k| k == "r014"))
            .map(|r| r.keys.len())
            .collect::<Vec<_>>();
        assert_eq!(poison_attempts.len(), 2, "{poison_attempts:?}");
        assert!(poison_attempts[0] > 1 && poison_attempts[1] == 1);
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn opaque_payloads_and_other_content_types_are_never_merged() {
    tokio::time::timeout(LIMIT, async {
        // The default framing: one request per record.
        let dir = common::spool_dir();
        let receiver = TestReceiver::start().await.expect("receiver");
        let c = client(dir.path(), &receiver, PayloadFraming::Opaque, false);
        spool_then_flush(
            &c,
            &receiver,
            names(8).iter().map(|n| otlp_like(n)).collect(),
        )
        .await;
        assert!(c.force_flush(Duration::from_secs(20)).await.complete);
        let requests = accepted(&receiver);
        assert_eq!(requests.len(), 8);
        assert!(requests.iter().all(|r| r.header(RECORDS_HEADER).is_none()));

        // OTLP framing, but JSON payloads: not protobuf, so not merged either.
        let dir = common::spool_dir();
        let receiver = TestReceiver::start().await.expect("receiver");
        let c = client(dir.path(), &receiver, PayloadFraming::OtlpProtobuf, false);
        let json = (0..6)
            .map(|i| {
                Payload::new(format!("{{\"i\":{i}}}").into_bytes())
                    .with_content_type(ContentType::Json)
            })
            .collect();
        spool_then_flush(&c, &receiver, json).await;
        assert!(c.force_flush(Duration::from_secs(20)).await.complete);
        assert_eq!(accepted(&receiver).len(), 6);
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_merged_request_answered_503_is_remembered_as_a_failing_backend() {
    tokio::time::timeout(LIMIT, async {
        let dir = common::spool_dir();
        let receiver = TestReceiver::start().await.expect("receiver");
        let c = client(dir.path(), &receiver, PayloadFraming::OtlpProtobuf, false);
        receiver.set_mode(Mode::Down).await.expect("down");
        for n in names(5) {
            assert!(c.export(otlp_like(&n)).await.expect("spooled").is_spooled());
        }
        assert_eq!(c.stats().backend, BackendState::Unreachable);
        // The backend answers again, with 503s: the replay's merged request fails, and that
        // failure (an answer, not a refused connection) is what the client now goes by, so
        // it follows the backoff rather than the probe's pace.
        receiver.set_mode(Mode::Status(503)).await.expect("503");
        let report = c.force_flush(Duration::from_secs(2)).await;
        assert!(!report.complete, "{report:?}");
        let merged = receiver
            .received()
            .iter()
            .filter(|r| r.keys.len() > 1)
            .count();
        assert!(merged >= 1, "the replay sent a merged request");
        assert_eq!(c.stats().backend, BackendState::Failing);
    })
    .await
    .expect("within the limit");
}
