//! OTLP protobuf encoding of SDK batches: the one module that uses opentelemetry-proto's
//! `transform` functions (public but unstable API), so that a move upstream touches one file.
//!
//! Everything here is what the official OTLP exporter writes: resource, instrumentation
//! scope, schema URLs, span events and links, log bodies and attributes, and every metric kind
//! come out of the same conversion functions.

/// The resource of a provider, converted once (at `set_resource`) into its OTLP form.
#[cfg(any(feature = "trace", feature = "logs"))]
#[derive(Debug, Default)]
pub(crate) struct EncodedResource(
    opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema,
);

#[cfg(any(feature = "trace", feature = "logs"))]
impl EncodedResource {
    /// The OTLP form of `resource`.
    pub(crate) fn new(resource: &opentelemetry_sdk::Resource) -> EncodedResource {
        EncodedResource(resource.into())
    }
}

/// How requests are encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Encoding {
    /// OTLP/HTTP binary protobuf (`application/x-protobuf`, `http/protobuf`). The default.
    #[default]
    Protobuf,
    /// OTLP/HTTP JSON (`application/json`, `http/json`); feature `with-serde`.
    #[cfg(feature = "with-serde")]
    Json,
}

impl Encoding {
    pub(crate) fn content_type(self) -> outlast_client::ContentType {
        match self {
            Encoding::Protobuf => outlast_client::ContentType::Protobuf,
            #[cfg(feature = "with-serde")]
            Encoding::Json => outlast_client::ContentType::Json,
        }
    }
}

/// An encoded `Export*ServiceRequest` and the number of items (spans, log records, data
/// points) it carries: one part of a batch (a batch too large for one record is split into
/// several, see [`fit`]).
#[derive(Debug)]
pub(crate) struct Encoded {
    /// The encoded request, or why it could not be encoded (JSON only; protobuf encoding
    /// to memory cannot fail).
    pub(crate) bytes: Result<Vec<u8>, String>,
    /// Spans, log records or metric data points in the request.
    pub(crate) items: u64,
}

/// `request` in `encoding`.
#[cfg(feature = "with-serde")]
fn to_bytes<M: prost::Message + serde::Serialize>(
    request: &M,
    encoding: Encoding,
) -> Result<Vec<u8>, String> {
    match encoding {
        Encoding::Protobuf => Ok(request.encode_to_vec()),
        Encoding::Json => serde_json::to_vec(request).map_err(|e| e.to_string()),
    }
}

/// `request` in `encoding`.
#[cfg(not(feature = "with-serde"))]
fn to_bytes<M: prost::Message>(request: &M, encoding: Encoding) -> Result<Vec<u8>, String> {
    match encoding {
        Encoding::Protobuf => Ok(request.encode_to_vec()),
    }
}

/// The bytes kept back from a client's `max_record_bytes` for the spool's framing (a few
/// dozen bytes plus the content type), so that a part that fits is also spooled when the
/// collector is down: 1 KiB, at most half the limit.
const FRAME_ALLOWANCE: u64 = 1024;

/// The largest encoded request to hand to a client whose `max_record_bytes` is `max`.
pub(crate) fn part_limit(max: u64) -> u64 {
    max - FRAME_ALLOWANCE.min(max / 2)
}

/// A request that can be cut in two between its items, each half keeping its items'
/// resource and scope (and, for metrics, metric) headers, so that each half is a valid
/// request of its own and the two together carry what the whole did.
pub(crate) trait Split: Sized {
    /// The items (spans, log records, data points) in the request.
    fn items(&self) -> usize;
    /// Keeps the first `n` items and returns a request with the others.
    fn split_off(&mut self, n: usize) -> Self;
}

/// Moves every item after the first `n` of `groups` into the returned groups, in order.
/// `count` says how many items a group holds; `split(g, k)` keeps `k` items in `g` and
/// returns a group with the same header and the rest. Groups without items stay where they
/// are (before the cut if they come before it).
fn split_groups<G>(
    groups: &mut Vec<G>,
    n: usize,
    count: &impl Fn(&G) -> usize,
    split: &impl Fn(&mut G, usize) -> G,
) -> Vec<G> {
    let mut kept = 0;
    for i in 0..groups.len() {
        let c = count(&groups[i]);
        if kept + c <= n {
            kept += c;
            continue;
        }
        let need = n - kept;
        if need == 0 {
            return groups.split_off(i);
        }
        let tail = split(&mut groups[i], need);
        let mut rest = groups.split_off(i + 1);
        rest.insert(0, tail);
        return rest;
    }
    Vec::new()
}

/// A copy of `group` without its items (`take` empties them out and puts them back), the
/// header of the second half of a group cut in two.
fn header_of<G: Clone, I>(group: &mut G, items: impl Fn(&mut G) -> &mut Vec<I>) -> G {
    let held = std::mem::take(items(group));
    let header = group.clone();
    *items(group) = held;
    header
}

/// Splits a two-level request (resource, scope, items).
#[cfg(any(feature = "trace", feature = "logs"))]
macro_rules! split_two_levels {
    ($request:ident, $resources:ident, $scopes:ident, $items:ident) => {
        impl Split for $request {
            fn items(&self) -> usize {
                self.$resources
                    .iter()
                    .flat_map(|r| &r.$scopes)
                    .map(|s| s.$items.len())
                    .sum()
            }

            fn split_off(&mut self, n: usize) -> Self {
                let scope_count = |s: &ScopeOf| s.$items.len();
                let scope_split = |s: &mut ScopeOf, k: usize| {
                    let mut tail = header_of(s, |s| &mut s.$items);
                    tail.$items = s.$items.split_off(k);
                    tail
                };
                let resource_count =
                    |r: &ResourceOf| -> usize { r.$scopes.iter().map(scope_count).sum() };
                let resource_split = |r: &mut ResourceOf, k: usize| {
                    let mut tail = header_of(r, |r| &mut r.$scopes);
                    tail.$scopes = split_groups(&mut r.$scopes, k, &scope_count, &scope_split);
                    tail
                };
                $request {
                    $resources: split_groups(
                        &mut self.$resources,
                        n,
                        &resource_count,
                        &resource_split,
                    ),
                }
            }
        }
    };
}

#[cfg(feature = "trace")]
mod trace_split {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    type ResourceOf = opentelemetry_proto::tonic::trace::v1::ResourceSpans;
    type ScopeOf = opentelemetry_proto::tonic::trace::v1::ScopeSpans;
    split_two_levels!(
        ExportTraceServiceRequest,
        resource_spans,
        scope_spans,
        spans
    );
}

#[cfg(feature = "logs")]
mod logs_split {
    use super::*;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    type ResourceOf = opentelemetry_proto::tonic::logs::v1::ResourceLogs;
    type ScopeOf = opentelemetry_proto::tonic::logs::v1::ScopeLogs;
    split_two_levels!(
        ExportLogsServiceRequest,
        resource_logs,
        scope_logs,
        log_records
    );
}

#[cfg(feature = "metrics")]
mod metrics_split {
    use super::*;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    use opentelemetry_proto::tonic::metrics::v1::{Metric, ResourceMetrics, ScopeMetrics};

    /// The data points of one metric.
    pub(super) fn points(m: &Metric) -> usize {
        match &m.data {
            Some(Data::Gauge(g)) => g.data_points.len(),
            Some(Data::Sum(s)) => s.data_points.len(),
            Some(Data::Histogram(h)) => h.data_points.len(),
            Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
            Some(Data::Summary(s)) => s.data_points.len(),
            None => 0,
        }
    }

    /// Keeps `k` data points in `m`; returns the same metric (name, unit, kind,
    /// temporality...) with the others.
    fn split_metric(m: &mut Metric, k: usize) -> Metric {
        let data = m.data.take();
        let mut tail = m.clone();
        macro_rules! cut {
            ($variant:ident, $d:ident) => {{
                let mut rest = header_of(&mut $d, |d| &mut d.data_points);
                rest.data_points = $d.data_points.split_off(k);
                (Some(Data::$variant($d)), Some(Data::$variant(rest)))
            }};
        }
        let (head, rest) = match data {
            Some(Data::Gauge(mut d)) => cut!(Gauge, d),
            Some(Data::Sum(mut d)) => cut!(Sum, d),
            Some(Data::Histogram(mut d)) => cut!(Histogram, d),
            Some(Data::ExponentialHistogram(mut d)) => cut!(ExponentialHistogram, d),
            Some(Data::Summary(mut d)) => cut!(Summary, d),
            None => (None, None),
        };
        m.data = head;
        tail.data = rest;
        tail
    }

    fn scope_points(s: &ScopeMetrics) -> usize {
        s.metrics.iter().map(points).sum()
    }

    fn split_scope(s: &mut ScopeMetrics, k: usize) -> ScopeMetrics {
        let mut tail = header_of(s, |s| &mut s.metrics);
        tail.metrics = split_groups(&mut s.metrics, k, &points, &split_metric);
        tail
    }

    fn resource_points(r: &ResourceMetrics) -> usize {
        r.scope_metrics.iter().map(scope_points).sum()
    }

    fn split_resource(r: &mut ResourceMetrics, k: usize) -> ResourceMetrics {
        let mut tail = header_of(r, |r| &mut r.scope_metrics);
        tail.scope_metrics = split_groups(&mut r.scope_metrics, k, &scope_points, &split_scope);
        tail
    }

    impl Split for ExportMetricsServiceRequest {
        fn items(&self) -> usize {
            self.resource_metrics.iter().map(resource_points).sum()
        }

        fn split_off(&mut self, n: usize) -> Self {
            ExportMetricsServiceRequest {
                resource_metrics: split_groups(
                    &mut self.resource_metrics,
                    n,
                    &resource_points,
                    &split_resource,
                ),
            }
        }
    }
}

/// Encodes `request` in `encoding` as parts of at most `limit` bytes each: a request over
/// the limit is cut in half by its items, and each half again, until each part fits or holds
/// a single item (which is then handed on as it is: only a single item larger than the
/// limit is left over it, for the client to refuse and count once). Parts come in the
/// order of their items; a request without items gives one part without items.
#[cfg(any(feature = "trace", feature = "logs", feature = "metrics"))]
pub(crate) fn fit<R>(request: R, encoding: Encoding, limit: u64, out: &mut Vec<Encoded>)
where
    R: Split + Message,
{
    let items = request.items();
    if items > 1 {
        let over = match encoding {
            Encoding::Protobuf => request.encoded_len() as u64 > limit,
            #[cfg(feature = "with-serde")]
            Encoding::Json => match to_bytes(&request, encoding) {
                Ok(bytes) if bytes.len() as u64 > limit => true,
                bytes => {
                    out.push(Encoded {
                        bytes,
                        items: items as u64,
                    });
                    return;
                }
            },
        };
        if over {
            let mut head = request;
            let tail = head.split_off(items / 2);
            fit(head, encoding, limit, out);
            fit(tail, encoding, limit, out);
            return;
        }
    }
    out.push(Encoded {
        bytes: to_bytes(&request, encoding),
        items: items as u64,
    });
}

/// What `fit` needs of a request: prost's message, and serde's for OTLP/JSON.
#[cfg(feature = "with-serde")]
pub(crate) trait Message: prost::Message + serde::Serialize {}
#[cfg(feature = "with-serde")]
impl<M: prost::Message + serde::Serialize> Message for M {}
/// What `fit` needs of a request: prost's message, and serde's for OTLP/JSON.
#[cfg(not(feature = "with-serde"))]
pub(crate) trait Message: prost::Message {}
#[cfg(not(feature = "with-serde"))]
impl<M: prost::Message> Message for M {}

/// Encodes a span batch as `ExportTraceServiceRequest`s of at most `limit` bytes each.
#[cfg(feature = "trace")]
pub(crate) fn spans(
    batch: Vec<opentelemetry_sdk::trace::SpanData>,
    resource: &EncodedResource,
    encoding: Encoding,
    limit: u64,
) -> Vec<Encoded> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    let request = ExportTraceServiceRequest {
        resource_spans: group_spans_by_resource_and_scope(batch, &resource.0),
    };
    let mut parts = Vec::new();
    fit(request, encoding, limit, &mut parts);
    parts
}

/// Encodes a log batch as `ExportLogsServiceRequest`s of at most `limit` bytes each.
#[cfg(feature = "logs")]
pub(crate) fn logs(
    batch: &opentelemetry_sdk::logs::LogBatch<'_>,
    resource: &EncodedResource,
    encoding: Encoding,
    limit: u64,
) -> Vec<Encoded> {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::transform::logs::tonic::group_logs_by_resource_and_scope;
    let request = ExportLogsServiceRequest {
        resource_logs: group_logs_by_resource_and_scope(batch, &resource.0),
    };
    let mut parts = Vec::new();
    fit(request, encoding, limit, &mut parts);
    parts
}

/// Encodes collected metrics as `ExportMetricsServiceRequest`s of at most `limit` bytes
/// each, split by data points.
#[cfg(feature = "metrics")]
pub(crate) fn metrics(
    metrics: &opentelemetry_sdk::metrics::data::ResourceMetrics,
    encoding: Encoding,
    limit: u64,
) -> Vec<Encoded> {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    let request = ExportMetricsServiceRequest::from(metrics);
    let mut parts = Vec::new();
    fit(request, encoding, limit, &mut parts);
    parts
}

#[cfg(all(test, feature = "trace", feature = "metrics"))]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue, InstrumentationScope, KeyValue, any_value,
    };
    use opentelemetry_proto::tonic::metrics::v1::{
        Histogram, HistogramDataPoint, Metric, ResourceMetrics, ScopeMetrics, metric::Data,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message as _;

    fn text(key: &str, value: String) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value)),
            }),
            ..KeyValue::default()
        }
    }

    fn span(id: u64, padding: usize) -> Span {
        Span {
            span_id: id.to_be_bytes().to_vec(),
            name: format!("op-{id}"),
            attributes: vec![text("pad", "x".repeat(padding))],
            ..Span::default()
        }
    }

    /// Two resources; the first with three scopes (the middle one empty) and the second
    /// with one; the spans' sizes given in order.
    fn request(sizes: &[usize], resource_padding: usize) -> ExportTraceServiceRequest {
        let mut spans: Vec<Span> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| span(i as u64, n))
            .collect();
        let third = spans.split_off(spans.len() * 2 / 3);
        let second = spans.split_off(spans.len() / 2);
        let resource = |name: &str| Resource {
            attributes: vec![
                text("service.name", name.into()),
                text("pad", "r".repeat(resource_padding)),
            ],
            ..Resource::default()
        };
        let scope = |name: &str, spans| ScopeSpans {
            scope: Some(InstrumentationScope {
                name: name.into(),
                ..InstrumentationScope::default()
            }),
            spans,
            schema_url: format!("https://example.invalid/{name}"),
        };
        ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    resource: Some(resource("a")),
                    scope_spans: vec![
                        scope("a1", spans),
                        scope("empty", vec![]),
                        scope("a2", second),
                    ],
                    schema_url: "https://example.invalid/a".into(),
                },
                ResourceSpans {
                    resource: Some(resource("b")),
                    scope_spans: vec![scope("b1", third)],
                    schema_url: "https://example.invalid/b".into(),
                },
            ],
        }
    }

    /// (resource, resource schema, scope, scope schema, span id) of every span, in order.
    fn flat(r: &ExportTraceServiceRequest) -> Vec<(String, String, String, String, Vec<u8>)> {
        let mut out = Vec::new();
        for rs in &r.resource_spans {
            let res = format!("{:?}", rs.resource);
            for ss in &rs.scope_spans {
                let scope = format!("{:?}", ss.scope);
                for s in &ss.spans {
                    out.push((
                        res.clone(),
                        rs.schema_url.clone(),
                        scope.clone(),
                        ss.schema_url.clone(),
                        s.span_id.clone(),
                    ));
                }
            }
        }
        out
    }

    #[test]
    fn a_cut_at_any_point_keeps_every_span_once_under_its_own_resource_and_scope() {
        let whole = request(&[10; 9], 10);
        assert_eq!(whole.items(), 9);
        for n in 0..=9 {
            let mut head = whole.clone();
            let tail = head.split_off(n);
            assert_eq!((head.items(), tail.items()), (n, 9 - n), "cut at {n}");
            let mut joined = flat(&head);
            joined.extend(flat(&tail));
            assert_eq!(joined, flat(&whole), "cut at {n}");
        }
    }

    #[test]
    fn an_oversized_request_becomes_parts_under_the_limit_that_carry_every_span_once() {
        let whole = request(&[1000; 40], 100);
        let limit = 5_000;
        assert!(whole.encoded_len() as u64 > limit);
        let mut parts = Vec::new();
        fit(whole.clone(), Encoding::Protobuf, limit, &mut parts);
        assert!(parts.len() > 1);
        let mut joined = Vec::new();
        for p in &parts {
            let bytes = p.bytes.as_ref().expect("protobuf encodes");
            assert!(bytes.len() as u64 <= limit, "{} > {limit}", bytes.len());
            let decoded = ExportTraceServiceRequest::decode(&bytes[..]).expect("valid");
            assert_eq!(decoded.items() as u64, p.items);
            joined.extend(flat(&decoded));
        }
        assert_eq!(joined, flat(&whole));
    }

    #[test]
    fn one_huge_span_among_small_ones_is_the_only_part_over_the_limit() {
        let mut sizes = vec![100; 31];
        sizes[17] = 50_000;
        let whole = request(&sizes, 10);
        let limit = 10_000;
        let mut parts = Vec::new();
        fit(whole, Encoding::Protobuf, limit, &mut parts);
        let over: Vec<_> = parts
            .iter()
            .filter(|p| p.bytes.as_ref().expect("encodes").len() as u64 > limit)
            .collect();
        assert_eq!(over.len(), 1, "{parts:?}");
        assert_eq!(over[0].items, 1);
        assert_eq!(parts.iter().map(|p| p.items).sum::<u64>(), 31);
    }

    #[cfg(feature = "with-serde")]
    #[test]
    fn otlp_json_requests_are_split_under_the_limit_too() {
        let whole = request(&[1000; 40], 100);
        let limit = 8_000;
        let mut parts = Vec::new();
        fit(whole.clone(), Encoding::Json, limit, &mut parts);
        assert!(parts.len() > 1);
        let mut joined = Vec::new();
        for p in &parts {
            let bytes = p.bytes.as_ref().expect("JSON encodes");
            assert!(bytes.len() as u64 <= limit, "{} > {limit}", bytes.len());
            let decoded: ExportTraceServiceRequest =
                serde_json::from_slice(bytes).expect("valid OTLP/JSON");
            assert_eq!(decoded.items() as u64, p.items);
            joined.extend(flat(&decoded));
        }
        assert_eq!(joined, flat(&whole));
    }

    #[test]
    fn a_limit_below_one_resource_header_gives_one_part_per_span() {
        let whole = request(&[10; 7], 2_000);
        let mut parts = Vec::new();
        fit(whole, Encoding::Protobuf, 500, &mut parts);
        assert_eq!(parts.len(), 7);
        assert!(parts.iter().all(|p| p.items == 1));
    }

    #[test]
    fn a_request_without_items_is_one_empty_part() {
        let mut parts = Vec::new();
        fit(request(&[], 10), Encoding::Protobuf, 1, &mut parts);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].items, 0);
    }

    #[test]
    fn the_part_limit_keeps_room_for_the_spool_frame_and_never_underflows() {
        assert_eq!(part_limit(8 * 1024 * 1024), 8 * 1024 * 1024 - 1024);
        assert_eq!(part_limit(1000), 500);
        assert_eq!(part_limit(1), 1);
        assert_eq!(part_limit(0), 0);
        assert_eq!(part_limit(u64::MAX), u64::MAX - 1024);
    }

    #[test]
    fn a_giant_histogram_is_split_by_data_points_keeping_its_name_and_temporality() {
        let points: Vec<HistogramDataPoint> = (0..64)
            .map(|i| HistogramDataPoint {
                attributes: vec![text("i", format!("{i:04}"))],
                bucket_counts: vec![1; 500],
                explicit_bounds: (0..499).map(f64::from).collect(),
                count: 500,
                ..HistogramDataPoint::default()
            })
            .collect();
        let metric = |name: &str, data_points| Metric {
            name: name.into(),
            unit: "ms".into(),
            data: Some(Data::Histogram(Histogram {
                data_points,
                aggregation_temporality: 2,
            })),
            ..Metric::default()
        };
        let whole = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource::default()),
                scope_metrics: vec![ScopeMetrics {
                    scope: None,
                    metrics: vec![
                        metric("small", points[..1].to_vec()),
                        metric("latency", points),
                    ],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        assert_eq!(whole.items(), 65);
        let limit = 20_000;
        let mut parts = Vec::new();
        fit(whole, Encoding::Protobuf, limit, &mut parts);
        let mut seen = Vec::new();
        for p in &parts {
            let bytes = p.bytes.as_ref().expect("encodes");
            assert!(bytes.len() as u64 <= limit);
            let req = ExportMetricsServiceRequest::decode(&bytes[..]).expect("valid");
            for m in req
                .resource_metrics
                .iter()
                .flat_map(|r| &r.scope_metrics)
                .flat_map(|s| &s.metrics)
            {
                let Some(Data::Histogram(h)) = &m.data else {
                    panic!("a histogram stays a histogram: {m:?}");
                };
                assert_eq!((m.unit.as_str(), h.aggregation_temporality), ("ms", 2));
                for dp in &h.data_points {
                    seen.push((m.name.clone(), format!("{:?}", dp.attributes)));
                }
            }
        }
        assert_eq!(seen.len(), 65);
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 65, "every data point once");
    }
}
