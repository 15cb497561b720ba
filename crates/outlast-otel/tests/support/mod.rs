//! Shared by the end-to-end tests: a loopback collector (outlast's test receiver) whose
//! requests are decoded with the opentelemetry-proto types and counted by span id, log
//! record id and data point, and pipeline settings fast enough for tests.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use outlast_client::testing::{Mode, TestReceiver};
use outlast_client::{Client, ClientBuilder};
use outlast_otel::PipelineBuilder;
use prost::Message as _;

/// The longest any test waits for anything.
pub const TEST_BOUND: Duration = Duration::from_secs(60);

/// Client settings for tests: quick retry and backoff.
pub fn fast_client() -> ClientBuilder {
    Client::builder()
        .attempt_timeout(Duration::from_secs(3))
        .immediate_retry_delay(Duration::from_millis(50))
        .initial_backoff(Duration::from_millis(50))
        .max_backoff(Duration::from_millis(300))
        .max_retry_after(Duration::from_secs(2))
}

/// A pipeline to `receiver` with its spools under `root`.
pub fn pipeline_to(receiver: &TestReceiver, root: &Path) -> PipelineBuilder {
    outlast_otel::Pipeline::builder()
        .endpoint(receiver.url())
        .spool_root(root)
        .client(fast_client())
        .request_timeout(Duration::from_secs(3))
}

/// A receiver that starts down (connections refused).
pub async fn receiver_down() -> TestReceiver {
    TestReceiver::builder()
        .mode(Mode::Down)
        .start()
        .await
        .expect("receiver starts")
}

/// The bodies of the accepted requests on `path`, decompressed.
fn accepted_bodies(receiver: &TestReceiver, path: &str) -> Vec<bytes::Bytes> {
    receiver
        .received()
        .into_iter()
        .filter(|r| r.answer.is_accepted() && r.path == path)
        .map(|r| {
            r.decoded_body()
                .expect("a valid body")
                .expect("bodies are recorded")
        })
        .collect()
}

/// The decoded trace requests accepted.
pub fn trace_requests(receiver: &TestReceiver) -> Vec<ExportTraceServiceRequest> {
    accepted_bodies(receiver, "/v1/traces")
        .iter()
        .map(|b| ExportTraceServiceRequest::decode(&b[..]).expect("an OTLP trace request"))
        .collect()
}

/// Every span id (hex) in accepted trace requests, once per arrival (duplicates repeat).
pub fn span_ids(receiver: &TestReceiver) -> Vec<String> {
    trace_requests(receiver)
        .into_iter()
        .flat_map(|req| req.resource_spans)
        .flat_map(|r| r.scope_spans)
        .flat_map(|s| s.spans)
        .map(|s| hex(&s.span_id))
        .collect()
}

/// The `id` attribute of every log record in accepted log requests, once per arrival.
pub fn log_ids(receiver: &TestReceiver) -> Vec<i64> {
    accepted_bodies(receiver, "/v1/logs")
        .iter()
        .map(|b| ExportLogsServiceRequest::decode(&b[..]).expect("an OTLP logs request"))
        .flat_map(|req| req.resource_logs)
        .flat_map(|r| r.scope_logs)
        .flat_map(|s| s.log_records)
        .filter_map(|l| {
            let a = l.attributes.iter().find(|a| a.key == "id")?;
            match a.value.as_ref()?.value.as_ref()? {
                Value::IntValue(i) => Some(*i),
                _ => None,
            }
        })
        .collect()
}

/// The decoded metric requests accepted.
pub fn metric_requests(receiver: &TestReceiver) -> Vec<ExportMetricsServiceRequest> {
    accepted_bodies(receiver, "/v1/metrics")
        .iter()
        .map(|b| ExportMetricsServiceRequest::decode(&b[..]).expect("an OTLP metrics request"))
        .collect()
}

/// Data points per (metric name, kind) in accepted metric requests.
pub fn data_points(receiver: &TestReceiver) -> HashMap<(String, &'static str), usize> {
    let mut out = HashMap::new();
    for req in metric_requests(receiver) {
        for m in req
            .resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
        {
            let (kind, n) = match &m.data {
                Some(Data::Gauge(g)) => ("gauge", g.data_points.len()),
                Some(Data::Sum(s)) => ("sum", s.data_points.len()),
                Some(Data::Histogram(h)) => ("histogram", h.data_points.len()),
                Some(Data::ExponentialHistogram(h)) => {
                    ("exponential_histogram", h.data_points.len())
                }
                Some(Data::Summary(s)) => ("summary", s.data_points.len()),
                None => ("none", 0),
            };
            *out.entry((m.name.clone(), kind)).or_default() += n;
        }
    }
    out
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How many elements repeat an earlier one.
pub fn duplicates<T: std::hash::Hash + Eq + Clone>(items: &[T]) -> usize {
    let mut seen = std::collections::HashSet::new();
    items.iter().filter(|i| !seen.insert((*i).clone())).count()
}

/// Runs `fut` to completion on this thread without any Tokio context, as the SDK's
/// processor threads do (a minimal executor: park until woken).
pub fn block_on_plain<F: std::future::Future>(fut: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// An OTLP trace request decoder written here from the `.proto` definitions, independent of
/// opentelemetry-proto: only the fields it needs (unknown fields are skipped by prost).
pub mod independent {
    /// `ExportTraceServiceRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Request {
        /// `resource_spans = 1`.
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }
    /// `ResourceSpans`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        /// `scope_spans = 2`.
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
    }
    /// `ScopeSpans`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        /// `spans = 2`.
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
    }
    /// `Span`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        /// `trace_id = 1`.
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        /// `span_id = 2`.
        #[prost(bytes = "vec", tag = "2")]
        pub span_id: Vec<u8>,
        /// `name = 5`.
        #[prost(string, tag = "5")]
        pub name: String,
    }

    /// (span id hex, name) of every span in the accepted trace requests.
    pub fn spans(receiver: &outlast_client::testing::TestReceiver) -> Vec<(String, String)> {
        use prost::Message as _;
        super::accepted_bodies(receiver, "/v1/traces")
            .iter()
            .map(|b| Request::decode(&b[..]).expect("an OTLP trace request"))
            .flat_map(|r| r.resource_spans)
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
            .map(|s| (super::hex(&s.span_id), s.name))
            .collect()
    }
}
