//! End to end, logs: the real SDK logger provider and batch log processor, through
//! outlast-otel, to a loopback collector that decodes OTLP and counts log records by id.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use outlast_client::testing::Mode;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_records_emitted_during_an_outage_arrive_after_it_with_body_and_attributes() {
    let root = tempfile::tempdir().expect("temporary spool root");
    let receiver = receiver_down().await;
    let otel = pipeline_to(&receiver, root.path())
        .build()
        .expect("valid settings");
    let provider = otel.logger_provider().expect("logs are on");
    let logger = provider.logger("outlast-otel-test");
    for i in 0..200i64 {
        let mut record = logger.create_log_record();
        record.set_severity_number(Severity::Warn);
        record.set_body(AnyValue::from(format!("payment {i} retried")));
        record.add_attribute("id", i);
        logger.emit(record);
    }
    let flush = otel.force_flush(Duration::from_secs(3)).await;
    assert!(flush.sdk_flushed && !flush.complete, "{flush:?}");
    assert_eq!(otel.stats().logs.expect("logs stats").items_accepted, 200);

    receiver
        .set_mode(Mode::Up)
        .await
        .expect("receiver comes up");
    let flush = otel.force_flush(TEST_BOUND).await;
    assert!(flush.complete, "{flush:?}");
    let ids = log_ids(&receiver);
    assert_eq!(
        ids.iter().collect::<HashSet<_>>(),
        (0..200).collect::<HashSet<_>>().iter().collect()
    );
    assert_eq!(duplicates(&ids), 0);

    // The body and severity are as emitted.
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use prost::Message as _;
    let body = receiver
        .received()
        .into_iter()
        .find(|r| r.answer.is_accepted() && r.path == "/v1/logs")
        .and_then(|r| r.body)
        .expect("a logs request");
    let req = ExportLogsServiceRequest::decode(&body[..]).expect("an OTLP logs request");
    let rec = &req.resource_logs[0].scope_logs[0].log_records[0];
    assert_eq!(rec.severity_number, Severity::Warn as i32);
    let text = format!("{:?}", rec.body);
    assert!(text.contains("retried"), "{text}");
    otel.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_batches_over_max_record_bytes_are_split_and_a_giant_record_counted_once() {
    let root = tempfile::tempdir().expect("temporary spool root");
    let receiver = outlast_client::testing::TestReceiver::start()
        .await
        .expect("receiver starts");
    let otel = pipeline_to(&receiver, root.path())
        .client(fast_client().max_record_bytes(64 * 1024))
        .build()
        .expect("valid settings");
    let logger = otel
        .logger_provider()
        .expect("logs are on")
        .logger("outlast-otel-size-test");
    // 300 records of 2 KiB (600 KB in batches of up to 512) and one of 100 KiB among them.
    for i in 0..301i64 {
        let size = if i == 150 { 100 * 1024 } else { 2 * 1024 };
        let mut record = logger.create_log_record();
        record.set_body(AnyValue::from("b".repeat(size)));
        record.add_attribute("id", i);
        logger.emit(record);
    }
    let flush = otel.force_flush(TEST_BOUND).await;
    assert!(!flush.complete, "a record was dropped: {flush:?}");
    assert_eq!(flush.dropped_items, 1, "{flush:?}");
    let ids = log_ids(&receiver);
    assert_eq!(duplicates(&ids), 0);
    let expected: HashSet<i64> = (0..301).filter(|i| *i != 150).collect();
    assert_eq!(ids.into_iter().collect::<HashSet<_>>(), expected);
    let stats = otel.stats().logs.expect("logs stats");
    assert_eq!(
        (stats.items_accepted, stats.items_dropped),
        (300, 1),
        "{stats:?}"
    );
    assert_eq!(stats.client.dropped.too_large, 1, "{stats:?}");
    assert!(stats.batches_split >= 1, "{stats:?}");
    let flush = otel.force_flush(TEST_BOUND).await;
    assert!(
        flush.complete,
        "nothing dropped since the last report: {flush:?}"
    );
}
