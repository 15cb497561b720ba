//! The `SpanExporter`, `LogExporter` and `PushMetricExporter` implementations: encode the
//! batch, hand it to the signal's outlast client, answer within the bound.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use opentelemetry_sdk::error::OTelSdkResult;

use crate::handoff::Handoff;

// Each exporter answers as the crate documentation's "What an export answers" says.
macro_rules! answer_doc {
    () => {
        "Answers `Ok` once the batch is delivered or spooled; see the [crate documentation](crate#what-an-export-answers)."
    };
}

/// Exports spans (feature `trace`): each batch becomes one OTLP
/// `ExportTraceServiceRequest` handed to the traces client.
///
/// Built by [`Pipeline`](crate::Pipeline) (or [`Pipeline::span_exporter`](crate::Pipeline::span_exporter)
/// for a tracer provider of your own). Safe to call from the SDK's processor thread (no
/// Tokio context needed) and from inside a Tokio runtime.
#[cfg(feature = "trace")]
pub struct OutlastSpanExporter {
    pub(crate) handoff: Arc<Handoff>,
    pub(crate) resource: crate::encode::EncodedResource,
    /// This handle's own shutdown: another exporter on the same client (the pipeline's, or
    /// one for another provider) goes on.
    pub(crate) shut_down: AtomicBool,
}

#[cfg(feature = "trace")]
impl opentelemetry_sdk::trace::SpanExporter for OutlastSpanExporter {
    #[doc = answer_doc!()]
    async fn export(&self, batch: Vec<opentelemetry_sdk::trace::SpanData>) -> OTelSdkResult {
        let encoded = crate::encode::spans(
            batch,
            &self.resource,
            self.handoff.encoding,
            self.handoff.part_limit,
        );
        self.handoff.export(&self.shut_down, encoded).await
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.handoff.shutdown(&self.shut_down, timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.resource = crate::encode::EncodedResource::new(resource);
    }
}

#[cfg(feature = "trace")]
impl fmt::Debug for OutlastSpanExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutlastSpanExporter")
            .field("handoff", &self.handoff)
            .finish_non_exhaustive()
    }
}

/// Exports log records (feature `logs`): each batch becomes one OTLP
/// `ExportLogsServiceRequest` handed to the logs client.
///
/// Safe to call from the SDK's processor thread and from inside a Tokio runtime.
#[cfg(feature = "logs")]
pub struct OutlastLogExporter {
    pub(crate) handoff: Arc<Handoff>,
    pub(crate) resource: crate::encode::EncodedResource,
    /// This handle's own shutdown: another exporter on the same client (the pipeline's, or
    /// one for another provider) goes on.
    pub(crate) shut_down: AtomicBool,
}

#[cfg(feature = "logs")]
impl opentelemetry_sdk::logs::LogExporter for OutlastLogExporter {
    #[doc = answer_doc!()]
    async fn export(&self, batch: opentelemetry_sdk::logs::LogBatch<'_>) -> OTelSdkResult {
        let encoded = crate::encode::logs(
            &batch,
            &self.resource,
            self.handoff.encoding,
            self.handoff.part_limit,
        );
        self.handoff.export(&self.shut_down, encoded).await
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.handoff.shutdown(&self.shut_down, timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.resource = crate::encode::EncodedResource::new(resource);
    }
}

#[cfg(feature = "logs")]
impl fmt::Debug for OutlastLogExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutlastLogExporter")
            .field("handoff", &self.handoff)
            .finish_non_exhaustive()
    }
}

/// Exports metrics (feature `metrics`): each collection becomes one OTLP
/// `ExportMetricsServiceRequest` handed to the metrics client. Cumulative temporality unless
/// [`PipelineBuilder::temporality`](crate::PipelineBuilder::temporality) says otherwise.
///
/// Safe to call from the periodic reader's thread and from inside a Tokio runtime.
#[cfg(feature = "metrics")]
pub struct OutlastMetricExporter {
    pub(crate) handoff: Arc<Handoff>,
    pub(crate) temporality: opentelemetry_sdk::metrics::Temporality,
    /// This handle's own shutdown: another exporter on the same client (the pipeline's, or
    /// one for another provider) goes on.
    pub(crate) shut_down: AtomicBool,
}

#[cfg(feature = "metrics")]
impl opentelemetry_sdk::metrics::exporter::PushMetricExporter for OutlastMetricExporter {
    #[doc = answer_doc!()]
    async fn export(
        &self,
        metrics: &opentelemetry_sdk::metrics::data::ResourceMetrics,
    ) -> OTelSdkResult {
        let encoded =
            crate::encode::metrics(metrics, self.handoff.encoding, self.handoff.part_limit);
        self.handoff.export(&self.shut_down, encoded).await
    }

    /// Nothing is held here: every batch was handed to the client at `export`. Flushing the
    /// client's spool is [`Pipeline::force_flush`](crate::Pipeline::force_flush)'s job.
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.handoff.shutdown(&self.shut_down, timeout)
    }

    fn temporality(&self) -> opentelemetry_sdk::metrics::Temporality {
        self.temporality
    }
}

#[cfg(feature = "metrics")]
impl fmt::Debug for OutlastMetricExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutlastMetricExporter")
            .field("handoff", &self.handoff)
            .field("temporality", &self.temporality)
            .finish()
    }
}
