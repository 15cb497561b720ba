//! The standard `OTEL_EXPORTER_OTLP_*` variables, taken from a map (the process environment
//! is not touched): endpoints, headers, timeout, compression, and errors naming the variable.

mod support;

use std::time::Duration;

use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
use outlast_otel::{ConfigError, PipelineBuilder, Signal};
use support::*;

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn param_of(e: &ConfigError) -> &'static str {
    match e {
        ConfigError::Invalid { param, .. } => param,
        _ => "",
    }
}

#[test]
fn the_base_endpoint_gets_each_signal_path_and_a_signal_endpoint_is_used_as_is() {
    let b = PipelineBuilder::from_env_vars(vars(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
        (
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
            "https://logs.example.invalid/ingest",
        ),
    ]))
    .expect("valid variables");
    assert_eq!(
        b.endpoint_of(Signal::Traces),
        "http://collector:4318/v1/traces"
    );
    assert_eq!(
        b.endpoint_of(Signal::Metrics),
        "http://collector:4318/v1/metrics"
    );
    assert_eq!(
        b.endpoint_of(Signal::Logs),
        "https://logs.example.invalid/ingest"
    );
    let none = PipelineBuilder::from_env_vars(vars(&[])).expect("no variables is fine");
    assert_eq!(
        none.endpoint_of(Signal::Traces),
        "http://localhost:4318/v1/traces"
    );
}

#[test]
fn a_bad_value_is_an_error_naming_its_variable() {
    for (var, value) in [
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
        ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "0"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"),
        ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "brotli"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "novalue"),
        ("OTEL_EXPORTER_OTLP_LOGS_HEADERS", "bad name=1"),
        ("OUTLAST_SPOOL_MAX_BYTES", "lots"),
    ] {
        let err = PipelineBuilder::from_env_vars(vars(&[(var, value)]))
            .expect_err(&format!("{var}={value} is refused"));
        assert_eq!(param_of(&err), var, "{err}");
    }
    // A malformed URL is found at build time, still naming its variable.
    let err = PipelineBuilder::from_env_vars(vars(&[(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "ftp://collector/v1/traces",
    )]))
    .expect("parsed")
    .build()
    .expect_err("an ftp URL is refused");
    assert_eq!(
        param_of(&err),
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_timeout_and_compression_reach_the_collector() {
    let root = tempfile::tempdir().expect("temporary spool root");
    let receiver = outlast_client::testing::TestReceiver::start()
        .await
        .expect("receiver starts");
    let otel = PipelineBuilder::from_env_vars(vars(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.url()),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "x-tenant=acme,x-api-key=a%3Db%2Cc",
        ),
        ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-tenant=traces-team"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"),
    ]))
    .expect("valid variables")
    .spool_root(root.path())
    .client(fast_client())
    .build()
    .expect("valid settings");
    otel.tracer_provider()
        .expect("traces are on")
        .tracer("env")
        .start("one")
        .end();
    let flush = otel.force_flush(TEST_BOUND).await;
    assert!(flush.complete, "{flush:?}");
    let req = receiver
        .received()
        .into_iter()
        .find(|r| r.path == "/v1/traces")
        .expect("a traces request");
    assert_eq!(req.header("x-tenant"), Some("traces-team"));
    assert_eq!(req.header("x-api-key"), Some("a=b,c"));
    assert_eq!(req.header("content-encoding"), Some("gzip"));
    assert_eq!(req.header("content-type"), Some("application/x-protobuf"));
    assert_eq!(span_ids(&receiver).len(), 1);
    assert!(otel.client(Signal::Traces).is_some());
    otel.shutdown(Duration::from_secs(5)).await;
}

#[test]
fn zero_timeouts_are_refused_by_name() {
    let err = outlast_otel::Pipeline::builder()
        .export_timeout(Duration::ZERO)
        .build()
        .expect_err("a zero export timeout is refused");
    assert_eq!(param_of(&err), "export_timeout", "{err}");
    let err = outlast_otel::Pipeline::builder()
        .request_timeout(Duration::ZERO)
        .build()
        .expect_err("a zero request timeout is refused");
    assert_eq!(param_of(&err), "request_timeout", "{err}");
}

#[test]
fn grpc_and_unknown_protocols_are_refused_by_name() {
    for (var, value) in [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/xml"),
    ] {
        let err = PipelineBuilder::from_env_vars(vars(&[(var, value)]))
            .expect_err(&format!("{var}={value} is refused"));
        assert_eq!(param_of(&err), var, "{err}");
    }
}

#[cfg(feature = "with-serde")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_json_sends_otlp_json_that_decodes_to_the_same_spans() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    let root = tempfile::tempdir().expect("temporary spool root");
    let receiver = outlast_client::testing::TestReceiver::start()
        .await
        .expect("receiver starts");
    let otel = PipelineBuilder::from_env_vars(vars(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.url()),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
    ]))
    .expect("valid variables")
    .spool_root(root.path())
    .client(fast_client())
    .build()
    .expect("valid settings");
    let tracer = otel
        .tracer_provider()
        .expect("traces are on")
        .tracer("json");
    let mut span = tracer.start("one");
    let id = span.span_context().span_id().to_string();
    span.end();
    let flush = otel.force_flush(TEST_BOUND).await;
    assert!(flush.complete, "{flush:?}");
    let req = receiver
        .received()
        .into_iter()
        .find(|r| r.path == "/v1/traces")
        .expect("a traces request");
    assert_eq!(req.header("content-type"), Some("application/json"));
    let body = req.body.expect("the body is recorded");
    let text = String::from_utf8_lossy(&body);
    // OTLP/JSON writes ids as hex strings and field names in camelCase.
    assert!(
        text.contains("resourceSpans") && text.contains(&id),
        "{text}"
    );
    let decoded: ExportTraceServiceRequest =
        serde_json::from_slice(&body).expect("valid OTLP/JSON");
    let span_id = &decoded.resource_spans[0].scope_spans[0].spans[0].span_id;
    assert_eq!(hex(span_id), id);
    otel.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_limit_larger_than_a_segment_names_both_variables_and_the_fix() {
    let root = tempfile::tempdir().expect("temporary spool root");
    let err = PipelineBuilder::from_env_vars(vars(&[("OUTLAST_MAX_RECORD_BYTES", "16MiB")]))
        .expect("a valid size")
        .spool_root(root.path())
        .build()
        .expect_err("a 16 MiB record does not fit in a default 16 MiB segment");
    assert_eq!(param_of(&err), "OUTLAST_MAX_RECORD_BYTES", "{err}");
    let text = err.to_string();
    assert!(text.contains("OUTLAST_SPOOL_SEGMENT_BYTES"), "{text}");
    assert!(text.contains("33554432"), "the fix, with a value: {text}");

    // The fix works.
    let otel = PipelineBuilder::from_env_vars(vars(&[
        ("OUTLAST_MAX_RECORD_BYTES", "16MiB"),
        ("OUTLAST_SPOOL_SEGMENT_BYTES", "32MiB"),
    ]))
    .expect("valid sizes")
    .spool_root(root.path())
    .build()
    .expect("a segment that holds a record");
    let client = otel.client(Signal::Traces).expect("traces client");
    assert_eq!(client.max_record_bytes(), 16 * 1024 * 1024);
    let _ = otel.shutdown(Duration::from_secs(2)).await;
}

#[cfg(not(feature = "logs"))]
#[test]
fn turning_on_a_signal_whose_feature_is_off_is_an_error_naming_the_setting() {
    let err = PipelineBuilder::new()
        .logs(true)
        .build()
        .expect_err("logs are not compiled in");
    assert_eq!(param_of(&err), "logs", "{err}");
    assert!(err.to_string().contains("`logs` cargo feature"), "{err}");
    // `otlp` is the variable's default: it asks for nothing the build lacks.
    let root = tempfile::tempdir().expect("temporary spool root");
    let otel = PipelineBuilder::from_env_vars(vars(&[("OTEL_LOGS_EXPORTER", "otlp")]))
        .expect("a valid value")
        .spool_root(root.path())
        .build()
        .expect("logs stay off, traces on");
    assert!(otel.stats().logs.is_none() && otel.stats().traces.is_some());
}

#[cfg(all(feature = "logs", feature = "metrics"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_are_chosen_at_run_time_by_the_builder_and_otel_signal_exporter_variables() {
    let root = tempfile::tempdir().expect("temporary spool root");
    let receiver = outlast_client::testing::TestReceiver::start()
        .await
        .expect("receiver starts");
    let otel = pipeline_to(&receiver, root.path())
        .logs(false)
        .metrics(false)
        .build()
        .expect("valid settings");
    assert!(otel.tracer_provider().is_some());
    assert!(otel.logger_provider().is_none() && otel.log_exporter().is_none());
    assert!(otel.meter_provider().is_none() && otel.client(Signal::Metrics).is_none());
    assert!(
        !root.path().join("logs").exists(),
        "no spool opened for logs"
    );
    let stats = otel.stats();
    assert!(stats.traces.is_some() && stats.logs.is_none() && stats.metrics.is_none());
    let flush = otel.force_flush(TEST_BOUND).await;
    assert!(flush.complete && flush.logs().is_none() && flush.traces().is_some());
    let _ = otel.shutdown(Duration::from_secs(2)).await;

    let b = PipelineBuilder::from_env_vars(vars(&[
        ("OTEL_TRACES_EXPORTER", "none"),
        ("OTEL_LOGS_EXPORTER", "otlp"),
        ("OTEL_METRICS_EXPORTER", "NONE"),
    ]))
    .expect("valid variables");
    let root2 = tempfile::tempdir().expect("temporary spool root");
    let otel = b.spool_root(root2.path()).build().expect("valid settings");
    assert!(otel.tracer_provider().is_none() && otel.logger_provider().is_some());
    assert!(otel.meter_provider().is_none());
    // A later builder call overrides the variable.
    let root3 = tempfile::tempdir().expect("temporary spool root");
    let otel3 = PipelineBuilder::from_env_vars(vars(&[("OTEL_TRACES_EXPORTER", "none")]))
        .expect("valid variables")
        .traces(true)
        .spool_root(root3.path())
        .build()
        .expect("valid settings");
    assert!(otel3.tracer_provider().is_some());
    let _ = otel.shutdown(Duration::from_secs(2)).await;
    let _ = otel3.shutdown(Duration::from_secs(2)).await;

    let err = PipelineBuilder::from_env_vars(vars(&[("OTEL_METRICS_EXPORTER", "prometheus")]))
        .expect_err("not an exporter outlast-otel has");
    assert_eq!(param_of(&err), "OTEL_METRICS_EXPORTER", "{err}");
}
