//! End to end, traces: the real SDK tracer provider and batch span processor, through
//! outlast-otel, to a loopback collector that decodes OTLP and counts spans by id.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::trace::{Link, Span as _, Tracer as _, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkError;
use opentelemetry_sdk::trace::SpanExporter as _;
use outlast_client::testing::Mode;
use support::*;

/// Starts `n` spans on `provider` and ends them; returns their ids (hex).
fn emit_spans(provider: &opentelemetry_sdk::trace::SdkTracerProvider, n: usize) -> Vec<String> {
    let tracer = provider.tracer("outlast-otel-test");
    (0..n)
        .map(|i| {
            let mut span = tracer.start(format!("op-{i}"));
            span.set_attribute(KeyValue::new("i", i as i64));
            let id = span.span_context().span_id().to_string();
            span.end();
            id
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_emitted_during_an_outage_arrive_after_it() {
    let root = tempfile::tempdir().expect("temporary spool root");
    let receiver = receiver_down().await;
    let otel = pipeline_to(&receiver, root.path())
        .build()
        .expect("valid settings");
    let provider = otel.tracer_provider().expect("traces are on");

    let emitted = emit_spans(&provider, 300);
    // The SDK hands its queue to outlast, which spools it: the collector is down.
    let flush = otel.force_flush(Duration::from_secs(3)).await;
    assert!(flush.sdk_flushed, "{flush:?}");
    assert!(!flush.complete, "nothing can be delivered yet: {flush:?}");
    let stats = otel.stats().traces.expect("traces stats");
    assert_eq!(stats.items_accepted, 300, "{stats:?}");
    assert!(stats.client.spool_records >= 1, "{stats:?}");
    assert!(span_ids(&receiver).is_empty());

    receiver
        .set_mode(Mode::Up)
        .await
        .expect("receiver comes up");
    let flush = otel.force_flush(TEST_BOUND).await;
    assert!(flush.complete, "{flush:?}");
    let arrived = span_ids(&receiver);
    assert_eq!(
        arrived.iter().collect::<HashSet<_>>(),
        emitted.iter().collect::<HashSet<_>>()
    );
    assert_eq!(duplicates(&arrived), 0);
    // An independent decoder sees the same spans, with the names they were given.
    let mut independent = independent::spans(&receiver);
    independent.sort();
    let mut expected: Vec<(String, String)> = emitted
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), format!("op-{i}")))
        .collect();
    expected.sort();
    assert_eq!(independent, expected);
    let report = otel.shutdown(Duration::from_secs(5)).await;
    assert!(report.complete, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_scope_events_and_links_come_out_as_the_sdk_gave_them() {
    let root = tempfile::tempdir().expect("temporary spool root");
    let receiver = outlast_client::testing::TestReceiver::start()
        .await
        .expect("receiver starts");
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name("checkout")
        .with_schema_url(
            [KeyValue::new("deployment", "eu-1")],
            "https://example.invalid/schema/1",
        )
        .build();
    let otel = pipeline_to(&receiver, root.path())
        .resource(resource)
        .build()
        .expect("valid settings");
    let provider = otel.tracer_provider().expect("traces are on");
    let scope = opentelemetry::InstrumentationScope::builder("payments")
        .with_version("1.2.3")
        .with_schema_url("https://example.invalid/scope/1")
        .build();
    let tracer = provider.tracer_with_scope(scope);
    let first = tracer.start("first");
    let first_ctx = first.span_context().clone();
    drop(first);
    let mut span = tracer
        .span_builder("second")
        .with_links(vec![Link::with_context(first_ctx.clone())])
        .start(&tracer);
    span.add_event("charged", vec![KeyValue::new("amount", 42)]);
    span.end();

    let flush = otel.force_flush(TEST_BOUND).await;
    assert!(flush.complete, "{flush:?}");
    let reqs = trace_requests(&receiver);
    let rs: Vec<_> = reqs.iter().flat_map(|r| &r.resource_spans).collect();
    let res = rs[0].resource.as_ref().expect("a resource");
    assert!(res.attributes.iter().any(|a| a.key == "service.name"));
    assert!(res.attributes.iter().any(|a| a.key == "deployment"));
    assert_eq!(rs[0].schema_url, "https://example.invalid/schema/1");
    let ss = &rs[0].scope_spans[0];
    let sc = ss.scope.as_ref().expect("a scope");
    assert_eq!(
        (sc.name.as_str(), sc.version.as_str()),
        ("payments", "1.2.3")
    );
    assert_eq!(ss.schema_url, "https://example.invalid/scope/1");
    let spans: Vec<_> = rs
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .collect();
    let second = spans
        .iter()
        .find(|s| s.name == "second")
        .expect("the second span");
    assert_eq!(second.events[0].name, "charged");
    assert_eq!(
        second.links[0].span_id,
        first_ctx.span_id().to_bytes().to_vec()
    );
}

/// A batch of one span, as the SDK hands it to an exporter.
fn one_span_batch() -> Vec<opentelemetry_sdk::trace::SpanData> {
    let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    provider.tracer("batch").start("one").end();
    exporter.get_finished_spans().expect("the finished span")
}

#[test]
fn the_exporter_works_from_a_plain_thread_and_from_inside_a_runtime() {
    let root = tempfile::tempdir().expect("temporary spool root");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let receiver = rt.block_on(async {
        outlast_client::testing::TestReceiver::start()
            .await
            .expect("receiver starts")
    });
    let otel = {
        let _in_rt = rt.enter();
        pipeline_to(&receiver, root.path())
            .build()
            .expect("valid settings")
    };
    let exporter = otel.span_exporter().expect("traces are on");

    // A plain thread without a Tokio context, as the SDK's processor thread.
    let from_thread = std::thread::scope(|s| {
        s.spawn(|| {
            assert!(tokio::runtime::Handle::try_current().is_err());
            block_on_plain(exporter.export(one_span_batch()))
        })
        .join()
        .expect("the thread ends")
    });
    assert!(from_thread.is_ok(), "{from_thread:?}");
    // From a task inside the runtime.
    let from_task = rt.block_on(async { exporter.export(one_span_batch()).await });
    assert!(from_task.is_ok(), "{from_task:?}");
    rt.block_on(async {
        assert!(otel.force_flush(TEST_BOUND).await.complete);
    });
    assert_eq!(span_ids(&receiver).len(), 2);
}

#[test]
fn a_pipeline_built_outside_any_runtime_starts_its_own() {
    let root = tempfile::tempdir().expect("temporary spool root");
    let server = tokio::runtime::Runtime::new().expect("a runtime for the receiver");
    let receiver = server.block_on(async {
        outlast_client::testing::TestReceiver::start()
            .await
            .expect("receiver starts")
    });
    let otel = pipeline_to(&receiver, root.path())
        .build()
        .expect("valid settings");
    let ids = emit_spans(&otel.tracer_provider().expect("traces are on"), 20);
    let flush = otel.force_flush_blocking(TEST_BOUND);
    assert!(flush.complete, "{flush:?}");
    let arrived: HashSet<String> = span_ids(&receiver).into_iter().collect();
    assert_eq!(arrived, ids.into_iter().collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_a_hanging_collector_export_flush_and_shutdown_keep_their_bounds() {
    let root = tempfile::tempdir().expect("temporary spool root");
    let receiver = outlast_client::testing::TestReceiver::builder()
        .mode(Mode::Hang)
        .start()
        .await
        .expect("receiver starts");
    let bound = Duration::from_millis(500);
    let otel = pipeline_to(&receiver, root.path())
        .request_timeout(Duration::from_secs(2))
        .export_timeout(bound)
        .build()
        .expect("valid settings");
    let exporter = otel.span_exporter().expect("traces are on");

    let started = Instant::now();
    let got = exporter.export(one_span_batch()).await;
    assert!(
        matches!(got, Err(OTelSdkError::Timeout(d)) if d == bound),
        "{got:?}"
    );
    assert!(
        started.elapsed() < bound + Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    emit_spans(&otel.tracer_provider().expect("traces are on"), 5);
    let started = Instant::now();
    let flush = otel.force_flush(Duration::from_secs(1)).await;
    assert!(!flush.complete, "{flush:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let report = otel.shutdown(Duration::from_secs(1)).await;
    assert!(!report.complete, "{report:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // The batches answered `Timeout` (ours and the processor's) were not forgotten: once
    // their tasks end, each was counted accepted or dropped.
    let waited = Instant::now();
    let stats = loop {
        let stats = otel.stats().traces.expect("traces stats");
        if stats.in_flight == 0 || waited.elapsed() > TEST_BOUND {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(stats.calls_timed_out >= 1, "{stats:?}");
    assert_eq!(stats.in_flight, 0, "{stats:?}");
    assert_eq!(
        stats.requests_accepted + stats.requests_dropped,
        stats.calls_timed_out,
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_max_everywhere_means_no_bound_and_never_panics() {
    let root = tempfile::tempdir().expect("temporary spool root");
    let receiver = receiver_down().await;
    let otel = pipeline_to(&receiver, root.path())
        .export_timeout(Duration::MAX)
        .request_timeout(Duration::MAX)
        .build()
        .expect("Duration::MAX is a valid bound");
    let provider = otel.tracer_provider().expect("traces are on");
    let emitted = emit_spans(&provider, 50);
    receiver
        .set_mode(Mode::Up)
        .await
        .expect("receiver comes up");
    // Unbounded, and it still ends as soon as everything is delivered.
    let flush = otel.force_flush(Duration::MAX).await;
    assert!(flush.complete, "{flush:?}");
    let arrived = span_ids(&receiver);
    assert_eq!(
        arrived.iter().collect::<HashSet<_>>(),
        emitted.iter().collect::<HashSet<_>>()
    );
    let shut = otel.shutdown(Duration::MAX).await;
    assert!(shut.complete, "{shut:?}");
}

/// The client's default `max_record_bytes`, 8 MiB.
const MAX_RECORD_BYTES_DEFAULT: u64 = 8 * 1024 * 1024;

/// Starts `n` spans on `provider`, each with a text attribute of `size` bytes, and ends
/// them; returns their ids (hex).
fn emit_large_spans(
    provider: &opentelemetry_sdk::trace::SdkTracerProvider,
    sizes: impl IntoIterator<Item = usize>,
) -> Vec<String> {
    let tracer = provider.tracer("outlast-otel-size-test");
    sizes
        .into_iter()
        .enumerate()
        .map(|(i, size)| {
            let mut span = tracer.start(format!("op-{i}"));
            span.set_attribute(KeyValue::new("payload", "x".repeat(size)));
            let id = span.span_context().span_id().to_string();
            span.end();
            id
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_batches_of_16_kib_spans_over_max_record_bytes_are_split_and_all_arrive() {
    // The SDK's default batch (512 spans) of 16 KiB spans encodes to about 8.4 MB, over the
    // client's default max_record_bytes (8 MiB): each such batch must go as two requests.
    let root = tempfile::tempdir().expect("temporary spool root");
    let receiver = outlast_client::testing::TestReceiver::start()
        .await
        .expect("receiver starts");
    let otel = pipeline_to(&receiver, root.path())
        .build()
        .expect("valid settings");
    assert_eq!(
        otel.client(outlast_otel::Signal::Traces)
            .expect("traces client")
            .max_record_bytes(),
        MAX_RECORD_BYTES_DEFAULT
    );
    let provider = otel.tracer_provider().expect("traces are on");
    let emitted = emit_large_spans(&provider, std::iter::repeat_n(16 * 1024, 2000));

    let flush = otel.force_flush(TEST_BOUND).await;
    assert!(flush.complete, "{flush:?}");
    assert_eq!((flush.dropped_items, flush.dropped_requests), (0, 0));
    let arrived = span_ids(&receiver);
    assert_eq!(arrived.len(), 2000);
    assert_eq!(duplicates(&arrived), 0);
    assert_eq!(
        arrived.iter().collect::<HashSet<_>>(),
        emitted.iter().collect::<HashSet<_>>()
    );
    let stats = otel.stats().traces.expect("traces stats");
    assert_eq!(
        (stats.items_accepted, stats.items_dropped),
        (2000, 0),
        "{stats:?}"
    );
    assert!(stats.batches_split >= 1, "{stats:?}");
    assert_eq!(stats.client.dropped.total(), 0, "{stats:?}");
    // Every request the collector got is within the limit.
    for r in receiver.received() {
        let body = r.decoded_body().expect("valid").expect("recorded");
        assert!(body.len() as u64 <= MAX_RECORD_BYTES_DEFAULT);
    }
    let report = otel.shutdown(Duration::from_secs(5)).await;
    assert!(report.complete, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_span_larger_than_max_record_bytes_is_counted_once_and_the_flush_is_incomplete() {
    let root = tempfile::tempdir().expect("temporary spool root");
    let receiver = outlast_client::testing::TestReceiver::start()
        .await
        .expect("receiver starts");
    let otel = pipeline_to(&receiver, root.path())
        .build()
        .expect("valid settings");
    let provider = otel.tracer_provider().expect("traces are on");
    // Twenty small spans around one of 9 MiB, in one batch.
    let mut sizes = vec![100; 21];
    sizes[10] = 9 * 1024 * 1024;
    let emitted = emit_large_spans(&provider, sizes);

    let flush = otel.force_flush(TEST_BOUND).await;
    assert!(!flush.complete, "a span was dropped: {flush:?}");
    assert_eq!(flush.dropped_items, 1, "{flush:?}");
    assert_eq!(flush.dropped_requests, 1, "{flush:?}");
    let stats = otel.stats().traces.expect("traces stats");
    assert_eq!(
        (stats.items_accepted, stats.items_dropped),
        (20, 1),
        "{stats:?}"
    );
    assert_eq!(stats.requests_dropped, 1, "{stats:?}");
    assert_eq!(stats.client.dropped.too_large, 1, "{stats:?}");
    assert_eq!(stats.client.dropped.total(), 1, "{stats:?}");
    let arrived: HashSet<String> = span_ids(&receiver).into_iter().collect();
    let expected: HashSet<String> = emitted
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 10)
        .map(|(_, id)| id.clone())
        .collect();
    assert_eq!(arrived, expected);

    // The drop was reported once; the next flush has nothing new to report.
    let flush = otel.force_flush(TEST_BOUND).await;
    assert!(flush.complete, "{flush:?}");
    assert_eq!(flush.dropped_items, 0);
    let stats = otel.stats().traces.expect("traces stats");
    assert_eq!(
        stats.client.dropped.total(),
        1,
        "still counted once: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_split_during_an_outage_is_spooled_in_parts_and_delivered_after_it() {
    let root = tempfile::tempdir().expect("temporary spool root");
    let receiver = receiver_down().await;
    let otel = pipeline_to(&receiver, root.path())
        .client(fast_client().max_record_bytes(64 * 1024))
        .build()
        .expect("valid settings");
    let provider = otel.tracer_provider().expect("traces are on");
    let emitted = emit_large_spans(&provider, std::iter::repeat_n(2 * 1024, 300));
    let flush = otel.force_flush(Duration::from_secs(5)).await;
    assert!(flush.sdk_flushed && !flush.complete, "{flush:?}");
    assert_eq!(flush.dropped_items, 0, "{flush:?}");
    let stats = otel.stats().traces.expect("traces stats");
    assert_eq!(stats.items_accepted, 300, "{stats:?}");
    assert!(stats.client.spool_records >= 10, "{stats:?}");

    receiver
        .set_mode(Mode::Up)
        .await
        .expect("receiver comes up");
    let flush = otel.force_flush(TEST_BOUND).await;
    assert!(flush.complete, "{flush:?}");
    let arrived = span_ids(&receiver);
    assert_eq!(duplicates(&arrived), 0);
    assert_eq!(
        arrived.iter().collect::<HashSet<_>>(),
        emitted.iter().collect::<HashSet<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_a_provider_of_your_own_leaves_the_pipelines_exporter_running() {
    let root = tempfile::tempdir().expect("temporary spool root");
    let receiver = outlast_client::testing::TestReceiver::start()
        .await
        .expect("receiver starts");
    let otel = pipeline_to(&receiver, root.path())
        .build()
        .expect("valid settings");
    let own = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(otel.span_exporter().expect("traces are on"))
        .build();
    let own_ids = emit_spans(&own, 5);
    // The provider's shutdown blocks (it flushes its queue): off the runtime's workers.
    let shut = tokio::task::spawn_blocking(move || own.shutdown())
        .await
        .expect("the shutdown thread ends");
    assert!(shut.is_ok(), "{shut:?}");

    let pipeline_ids = emit_spans(&otel.tracer_provider().expect("traces are on"), 5);
    let flush = otel.force_flush(TEST_BOUND).await;
    assert!(flush.complete, "{flush:?}");
    let arrived: HashSet<String> = span_ids(&receiver).into_iter().collect();
    let expected: HashSet<String> = own_ids.into_iter().chain(pipeline_ids).collect();
    assert_eq!(arrived, expected);
}

#[test]
fn a_program_without_an_executor_shuts_the_pipeline_down_with_shutdown_blocking() {
    let root = tempfile::tempdir().expect("temporary spool root");
    let server = tokio::runtime::Runtime::new().expect("a runtime for the receiver");
    let receiver = server.block_on(async {
        outlast_client::testing::TestReceiver::start()
            .await
            .expect("receiver starts")
    });
    let otel = pipeline_to(&receiver, root.path())
        .build()
        .expect("valid settings");
    let ids = emit_spans(&otel.tracer_provider().expect("traces are on"), 20);
    let report = otel.shutdown_blocking(TEST_BOUND);
    assert!(report.complete, "{report:?}");
    assert_eq!(report.traces().map(|r| r.remaining_records), Some(0));
    let arrived: HashSet<String> = span_ids(&receiver).into_iter().collect();
    assert_eq!(arrived, ids.into_iter().collect());
    // After shutdown, the pipeline's exporter refuses.
    let exporter = otel.span_exporter().expect("traces are on");
    let got = block_on_plain(exporter.export(one_span_batch()));
    assert!(got.is_err(), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_batch_sends_nothing_and_counts_nothing() {
    let root = tempfile::tempdir().expect("temporary spool root");
    let receiver = outlast_client::testing::TestReceiver::start()
        .await
        .expect("receiver starts");
    let otel = pipeline_to(&receiver, root.path())
        .build()
        .expect("valid settings");
    let exporter = otel.span_exporter().expect("traces are on");
    assert!(exporter.export(Vec::new()).await.is_ok());
    let flush = otel.force_flush(TEST_BOUND).await;
    assert!(flush.complete, "{flush:?}");
    let stats = otel.stats().traces.expect("traces stats");
    assert_eq!(
        (
            stats.requests_accepted,
            stats.requests_dropped,
            stats.items_dropped
        ),
        (0, 0, 0),
        "{stats:?}"
    );
    assert_eq!(receiver.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_limit_below_one_span_drops_each_span_once_and_says_how_many() {
    let root = tempfile::tempdir().expect("temporary spool root");
    let receiver = outlast_client::testing::TestReceiver::start()
        .await
        .expect("receiver starts");
    // The smallest limit the spool takes: below one span with its resource.
    let otel = pipeline_to(&receiver, root.path())
        .client(fast_client().max_record_bytes(100))
        .build()
        .expect("valid settings");
    let exporter = otel.span_exporter().expect("traces are on");
    let memory = opentelemetry_sdk::trace::InMemorySpanExporter::default();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(memory.clone())
        .build();
    emit_large_spans(&provider, [200, 200, 200]);
    let batch = memory.get_finished_spans().expect("the finished spans");
    assert_eq!(batch.len(), 3);
    let got = exporter.export(batch).await;
    match got {
        Err(OTelSdkError::InternalFailure(msg)) => {
            assert!(msg.contains("dropped 3 of the 3 span(s)"), "{msg}");
            assert!(msg.contains("too_large"), "{msg}");
        }
        other => panic!("expected a failure naming the drops: {other:?}"),
    }
    let stats = otel.stats().traces.expect("traces stats");
    assert_eq!(
        (stats.items_dropped, stats.requests_dropped),
        (3, 3),
        "{stats:?}"
    );
    assert_eq!(stats.client.dropped.too_large, 3, "{stats:?}");
    let flush = otel.force_flush(TEST_BOUND).await;
    assert!(!flush.complete && flush.dropped_items == 3, "{flush:?}");
    assert_eq!(receiver.request_count(), 0);
}
