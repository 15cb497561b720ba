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
/// points) it carries.
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

/// Encodes a span batch as an `ExportTraceServiceRequest`.
#[cfg(feature = "trace")]
pub(crate) fn spans(
    batch: Vec<opentelemetry_sdk::trace::SpanData>,
    resource: &EncodedResource,
    encoding: Encoding,
) -> Encoded {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    let items = batch.len() as u64;
    let request = ExportTraceServiceRequest {
        resource_spans: group_spans_by_resource_and_scope(batch, &resource.0),
    };
    Encoded {
        bytes: to_bytes(&request, encoding),
        items,
    }
}

/// Encodes a log batch as an `ExportLogsServiceRequest`.
#[cfg(feature = "logs")]
pub(crate) fn logs(
    batch: &opentelemetry_sdk::logs::LogBatch<'_>,
    resource: &EncodedResource,
    encoding: Encoding,
) -> Encoded {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::transform::logs::tonic::group_logs_by_resource_and_scope;
    let items = batch.iter().count() as u64;
    let request = ExportLogsServiceRequest {
        resource_logs: group_logs_by_resource_and_scope(batch, &resource.0),
    };
    Encoded {
        bytes: to_bytes(&request, encoding),
        items,
    }
}

/// Encodes collected metrics as an `ExportMetricsServiceRequest`.
#[cfg(feature = "metrics")]
pub(crate) fn metrics(
    metrics: &opentelemetry_sdk::metrics::data::ResourceMetrics,
    encoding: Encoding,
) -> Encoded {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    let request = ExportMetricsServiceRequest::from(metrics);
    let items = request
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .map(|m| match &m.data {
            Some(Data::Gauge(g)) => g.data_points.len(),
            Some(Data::Sum(s)) => s.data_points.len(),
            Some(Data::Histogram(h)) => h.data_points.len(),
            Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
            Some(Data::Summary(s)) => s.data_points.len(),
            None => 0,
        } as u64)
        .sum();
    Encoded {
        bytes: to_bytes(&request, encoding),
        items,
    }
}
