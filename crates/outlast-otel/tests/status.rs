//! OTLP/HTTP status rules end to end: what the exporters answer for a collector's 400 (with
//! a `google.rpc.Status` body), 413, 500, 503 with `Retry-After`, and a 2xx with partial
//! success, and how many requests each costs.

mod support;

use std::time::{Duration, Instant};

use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkError;
use opentelemetry_sdk::trace::SpanExporter as _;
use outlast_client::testing::{CannedResponse, Mode, TestReceiver};
use prost::Message as _;
use support::*;

/// A batch of one span, as the SDK hands it to an exporter.
fn one_span_batch() -> Vec<opentelemetry_sdk::trace::SpanData> {
    let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    provider.tracer("batch").start("one").end();
    exporter.get_finished_spans().expect("the finished span")
}

/// `google.rpc.Status`, written here from its definition (an independent encoder).
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// Exports one span to a collector answering `response`; returns the answer, the
/// pipeline (for its stats) and the receiver.
async fn export_against(
    response: Mode,
    root: &std::path::Path,
) -> (
    Result<(), OTelSdkError>,
    outlast_otel::Pipeline,
    TestReceiver,
) {
    let receiver = TestReceiver::builder()
        .mode(response)
        .start()
        .await
        .expect("receiver starts");
    let otel = pipeline_to(&receiver, root)
        .build()
        .expect("valid settings");
    let exporter = otel.span_exporter().expect("traces are on");
    let got = exporter.export(one_span_batch()).await;
    (got, otel, receiver)
}

/// Asserts a permanent rejection: an `InternalFailure` naming `expect`, one request, one
/// collector rejection and one permanent drop in the stats, nothing spooled.
fn assert_permanent(
    got: Result<(), OTelSdkError>,
    otel: &outlast_otel::Pipeline,
    receiver: &TestReceiver,
    expect: &str,
) {
    match &got {
        Err(OTelSdkError::InternalFailure(msg)) => assert!(msg.contains(expect), "{msg}"),
        other => panic!("expected a permanent failure, got {other:?}"),
    }
    assert_eq!(
        receiver.request_count(),
        1,
        "a permanent status is not retried"
    );
    let stats = otel.stats().traces.expect("traces stats");
    assert_eq!(stats.rejected_by_collector, 1, "{stats:?}");
    assert_eq!(stats.client.dropped.permanent, 1, "{stats:?}");
    assert_eq!(stats.client.spool_records, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_is_permanent_and_its_status_body_is_in_the_error() {
    let root = tempfile::tempdir().expect("temporary spool root");
    let body = RpcStatus {
        code: 3,
        message: "span kind is invalid".into(),
    }
    .encode_to_vec();
    let mode = Mode::Respond(
        CannedResponse::new(400)
            .header("content-type", "application/x-protobuf")
            .body(body),
    );
    let (got, otel, receiver) = export_against(mode, root.path()).await;
    assert_permanent(got, &otel, &receiver, "code 3: span kind is invalid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_is_permanent() {
    let root = tempfile::tempdir().expect("temporary spool root");
    let (got, otel, receiver) = export_against(Mode::Status(413), root.path()).await;
    assert_permanent(got, &otel, &receiver, "413");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_is_permanent_under_otlp_rules() {
    let root = tempfile::tempdir().expect("temporary spool root");
    let (got, otel, receiver) = export_against(Mode::Status(500), root.path()).await;
    assert_permanent(got, &otel, &receiver, "500");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_retried_no_sooner_than_its_retry_after_and_then_delivered() {
    let root = tempfile::tempdir().expect("temporary spool root");
    let mode = Mode::Respond(CannedResponse::new(503).header("retry-after", "1"));
    let started = Instant::now();
    let (got, otel, receiver) = export_against(mode, root.path()).await;
    assert!(got.is_ok(), "a retryable status keeps the batch: {got:?}");
    assert!(
        receiver.wait_for_requests(2, TEST_BOUND).await,
        "the batch is retried"
    );
    // The quick retry is 50 ms in these settings: only the Retry-After explains a second
    // request a second later.
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
    receiver
        .set_mode(Mode::Up)
        .await
        .expect("receiver comes up");
    let flush = otel.force_flush(TEST_BOUND).await;
    assert!(flush.complete, "{flush:?}");
    assert_eq!(span_ids(&receiver).len(), 1);
    assert_eq!(
        otel.stats()
            .traces
            .expect("traces stats")
            .rejected_by_collector,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_success_is_accepted_and_not_retried() {
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTracePartialSuccess, ExportTraceServiceResponse,
    };
    let root = tempfile::tempdir().expect("temporary spool root");
    let body = ExportTraceServiceResponse {
        partial_success: Some(ExportTracePartialSuccess {
            rejected_spans: 1,
            error_message: "span too old".into(),
        }),
    }
    .encode_to_vec();
    let mode = Mode::Respond(
        CannedResponse::new(200)
            .header("content-type", "application/x-protobuf")
            .body(body),
    );
    let (got, otel, receiver) = export_against(mode, root.path()).await;
    assert!(got.is_ok(), "{got:?}");
    let flush = otel.force_flush(TEST_BOUND).await;
    assert!(flush.complete, "{flush:?}");
    assert_eq!(
        receiver.request_count(),
        1,
        "a partial success is not retried"
    );
    let stats = otel.stats().traces.expect("traces stats");
    assert_eq!(stats.client.dropped.total(), 0, "{stats:?}");
    assert_eq!(
        stats.partially_rejected_items, 1,
        "the rejected span of the partial success is counted: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_gzip_on_a_stored_gzip_record_reaches_the_collector_byte_identical() {
    let root = tempfile::tempdir().expect("temporary spool root");
    let receiver = receiver_down().await;

    // The first process spools its spans (the collector is down) and exits.
    {
        let otel = pipeline_to(&receiver, root.path())
            .gzip(true)
            .build()
            .expect("valid settings");
        let tracer = otel
            .tracer_provider()
            .expect("traces are on")
            .tracer("gzip");
        for i in 0..200 {
            let mut span = tracer.start(format!("op-{i}"));
            span.set_attribute(opentelemetry::KeyValue::new("route", "/checkout/payments"));
            span.end();
        }
        let flush = otel.force_flush(Duration::from_secs(3)).await;
        assert!(flush.sdk_flushed && !flush.complete, "{flush:?}");
        let _ = otel.shutdown(Duration::from_secs(2)).await;
    }

    // What the spool holds, read with the spool's own reader (nothing acknowledged).
    let stored: Vec<u8> = {
        let config = outlast_spool::SpoolConfig::new(root.path().join("traces"))
            // The client's identity: its exporter's destination.
            .with_identity(Some(format!(
                "{}/v1/traces",
                receiver.url().trim_end_matches('/')
            )));
        let (spool, _) = outlast_spool::Spool::open(config).expect("the spool opens");
        spool
            .adopt_released()
            .expect("the lane the first process left");
        let batch = spool.read_batch(1000, u64::MAX).expect("readable");
        assert!(!batch.records.is_empty());
        let mut bytes = Vec::new();
        for r in &batch.records {
            assert_eq!(
                r.payload.content_encoding(),
                outlast_core::ContentEncoding::Gzip,
                "stored compressed"
            );
            bytes.extend_from_slice(r.payload.bytes());
        }
        spool.close().expect("closes");
        bytes
    };

    // The next process delivers them: the bodies are the stored bytes, not a recompression.
    receiver
        .set_mode(Mode::Up)
        .await
        .expect("receiver comes up");
    let otel = pipeline_to(&receiver, root.path())
        .gzip(true)
        .build()
        .expect("valid settings");
    let flush = otel.force_flush(TEST_BOUND).await;
    assert!(flush.complete, "{flush:?}");
    let sent: Vec<u8> = receiver
        .received()
        .into_iter()
        .filter(|r| r.answer.is_accepted() && r.path == "/v1/traces")
        .flat_map(|r| r.body.expect("bodies are recorded").to_vec())
        .collect();
    assert_eq!(sent.len(), stored.len(), "sent as stored");
    assert!(
        sent == stored,
        "the collector got other bytes than the stored record(s)"
    );
    assert_eq!(span_ids(&receiver).len(), 200);
}
