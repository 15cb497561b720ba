//! [`Pipeline`]: one outlast client per signal (its own endpoint and spool), the SDK
//! providers feeding them, and flush and shutdown that keep one deadline across both.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_sdk::error::OTelSdkResult;
use outlast_client::{Client, ConfigError, FlushReport};
use tokio::time::Instant;

use crate::config::{DEFAULT_EXPORT_TIMEOUT, PipelineBuilder};
use crate::handoff::{Handoff, InFlight};
use crate::logging::LOG_TARGET;
use crate::otlp_http::OtlpHttpExporter;
use crate::runtime::RuntimeRef;
use crate::signal::Signal;
use crate::stats::{Counters, PipelineStats};

/// Spans, logs and metrics to one OTLP/HTTP collector through outlast: every batch the SDK
/// exports is delivered, or kept in the signal's spool and delivered later, across outages
/// and restarts.
///
/// Holds the SDK providers it built (`tracer_provider()`, `logger_provider()`,
/// `meter_provider()`), with batch processors (traces, logs) and a periodic reader
/// (metrics) feeding this crate's exporters. Cloning is cheap and shares everything.
///
/// End with [`shutdown`](Pipeline::shutdown); serverless handlers call
/// [`force_flush`](Pipeline::force_flush) at the end of each invocation.
#[derive(Debug, Clone)]
pub struct Pipeline {
    inner: Arc<PipelineInner>,
}

#[derive(Debug)]
struct PipelineInner {
    /// Per signal: its client and the state its exporters share.
    signals: [Option<Arc<Handoff>>; 3],
    runtime: RuntimeRef,
    spool_root: PathBuf,
    #[cfg(feature = "trace")]
    tracer_provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    #[cfg(feature = "logs")]
    logger_provider: Option<opentelemetry_sdk::logs::SdkLoggerProvider>,
    #[cfg(feature = "metrics")]
    meter_provider: Option<opentelemetry_sdk::metrics::SdkMeterProvider>,
    #[cfg(feature = "metrics")]
    temporality: opentelemetry_sdk::metrics::Temporality,
}

/// What [`Pipeline::force_flush`] or [`Pipeline::shutdown`] achieved, within its deadline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PipelineFlush {
    /// Whether everything was handed over and delivered: the SDK's queues were flushed,
    /// no batch is under way, every signal's spool is empty, and nothing was dropped since
    /// the previous flush report (`dropped_items` and `dropped_requests` are 0).
    pub complete: bool,
    /// Whether the SDK providers flushed their queues into outlast in time and without
    /// error (an export of the flush that dropped something makes the SDK report an error:
    /// see `dropped_items`).
    pub sdk_flushed: bool,
    /// Spans, log records and data points the exporters answered dropped since the previous
    /// flush report of this pipeline (or since it was built), all signals: a single item
    /// larger than `max_record_bytes`, a collector's permanent rejection, a full spool
    /// during an outage... [`Pipeline::stats`] says why.
    pub dropped_items: u64,
    /// Requests the signals' clients dropped since the previous flush report, any reason,
    /// including spooled records dropped on replay (whose items the bridge cannot count).
    /// A request dropped at export counts here and its items in `dropped_items`.
    pub dropped_requests: u64,
    /// How long it took.
    pub elapsed: Duration,
    /// Each built signal's client flush report, by [`Signal::index`] order.
    reports: [Option<FlushReport>; 3],
}

impl PipelineFlush {
    /// `signal`'s client flush report (what is left on disk); `None` for a signal not built
    /// or whose flush did not answer before the deadline.
    pub fn report(&self, signal: Signal) -> Option<&FlushReport> {
        self.reports[signal.index()].as_ref()
    }

    /// The traces client's flush report; see [`report`](Self::report).
    pub fn traces(&self) -> Option<&FlushReport> {
        self.report(Signal::Traces)
    }

    /// The logs client's flush report; see [`report`](Self::report).
    pub fn logs(&self) -> Option<&FlushReport> {
        self.report(Signal::Logs)
    }

    /// The metrics client's flush report; see [`report`](Self::report).
    pub fn metrics(&self) -> Option<&FlushReport> {
        self.report(Signal::Metrics)
    }

    /// Requests still waiting in the spools, all signals.
    pub fn remaining_records(&self) -> u64 {
        self.reports
            .iter()
            .flatten()
            .map(|r| r.remaining_records)
            .sum()
    }
}

impl PipelineBuilder {
    /// Builds one client per signal enabled by the crate's features, with its own spool
    /// under the spool root (recovering what an earlier process left there), and the SDK
    /// providers that feed them.
    ///
    /// Opening the spools does blocking file I/O: call this at start-up. Called inside a
    /// Tokio runtime, the clients run on it (use a multi-thread runtime, or make sure the
    /// runtime is not blocked while the SDK exports); outside one, the pipeline starts a
    /// one-worker runtime of its own.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the setting (or environment variable) that is
    /// invalid, or `runtime` if no runtime could be started.
    pub fn build(self) -> Result<Pipeline, ConfigError> {
        let runtime = RuntimeRef::resolve(self.runtime.clone())
            .map_err(|e| ConfigError::invalid("runtime", format!("cannot start one: {e}")))?;
        let spool_root = self
            .spool_root
            .clone()
            .unwrap_or_else(outlast_client::default_spool_dir);
        let timeout = self.export_timeout.unwrap_or(DEFAULT_EXPORT_TIMEOUT);
        if timeout.is_zero() {
            return Err(ConfigError::invalid(
                "export_timeout",
                "must be greater than zero (Duration::MAX means no bound)",
            ));
        }
        let mut signals: [Option<Arc<Handoff>>; 3] = [None, None, None];
        for signal in self.enabled_signals()? {
            let counters = Arc::new(Counters::default());
            let http = self.http_exporter(signal)?.with_success_hook(
                crate::otlp_http::partial_success_hook(signal, Arc::clone(&counters)),
            );
            let exporter = OtlpHttpExporter::new(http, signal, Arc::clone(&counters));
            let client = {
                // The client spawns its drain task on the runtime: enter it for the build.
                let _entered = runtime.handle().enter();
                self.client
                    .clone()
                    .replay_order(self.replay_order_of(signal))
                    .spool_dir(spool_root.join(signal.name()))
                    .runtime(runtime.handle().clone())
                    .build(exporter)?
            };
            signals[signal.index()] = Some(Arc::new(Handoff::new(
                signal,
                client,
                runtime.clone(),
                timeout,
                counters,
                Arc::new(InFlight::default()),
                self.encoding_of(signal),
            )));
        }
        let resource = self
            .resource
            .clone()
            .unwrap_or_else(|| opentelemetry_sdk::Resource::builder().build());
        let _ = &resource;
        #[cfg(feature = "metrics")]
        let temporality = self.temporality.unwrap_or_default();
        let mut inner = PipelineInner {
            signals,
            runtime,
            spool_root,
            #[cfg(feature = "trace")]
            tracer_provider: None,
            #[cfg(feature = "logs")]
            logger_provider: None,
            #[cfg(feature = "metrics")]
            meter_provider: None,
            #[cfg(feature = "metrics")]
            temporality,
        };
        #[cfg(feature = "trace")]
        {
            let exporter = inner.span_exporter();
            inner.tracer_provider = exporter.map(|e| {
                opentelemetry_sdk::trace::SdkTracerProvider::builder()
                    .with_resource(resource.clone())
                    .with_batch_exporter(e)
                    .build()
            });
        }
        #[cfg(feature = "logs")]
        {
            let exporter = inner.log_exporter();
            inner.logger_provider = exporter.map(|e| {
                opentelemetry_sdk::logs::SdkLoggerProvider::builder()
                    .with_resource(resource.clone())
                    .with_batch_exporter(e)
                    .build()
            });
        }
        #[cfg(feature = "metrics")]
        {
            let exporter = inner.metric_exporter();
            let interval = self.metrics_interval;
            inner.meter_provider = exporter.map(|e| {
                let mut reader = opentelemetry_sdk::metrics::PeriodicReader::builder(e);
                if let Some(i) = interval {
                    reader = reader.with_interval(i);
                }
                opentelemetry_sdk::metrics::SdkMeterProvider::builder()
                    .with_resource(resource.clone())
                    .with_reader(reader.build())
                    .build()
            });
        }
        Ok(Pipeline {
            inner: Arc::new(inner),
        })
    }
}

/// The part of a deadline kept back so that a report computed within the rest arrives before
/// it: 5 %, at most 50 ms.
fn margin(timeout: Duration) -> Duration {
    (timeout / 20).min(Duration::from_millis(50))
}

impl PipelineInner {
    fn handoff(&self, signal: Signal) -> Option<Arc<Handoff>> {
        self.signals[signal.index()].clone()
    }

    #[cfg(feature = "trace")]
    fn span_exporter(&self) -> Option<crate::exporters::OutlastSpanExporter> {
        Some(crate::exporters::OutlastSpanExporter {
            handoff: self.handoff(Signal::Traces)?,
            resource: crate::encode::EncodedResource::default(),
            shut_down: Default::default(),
        })
    }

    #[cfg(feature = "logs")]
    fn log_exporter(&self) -> Option<crate::exporters::OutlastLogExporter> {
        Some(crate::exporters::OutlastLogExporter {
            handoff: self.handoff(Signal::Logs)?,
            resource: crate::encode::EncodedResource::default(),
            shut_down: Default::default(),
        })
    }

    #[cfg(feature = "metrics")]
    fn metric_exporter(&self) -> Option<crate::exporters::OutlastMetricExporter> {
        Some(crate::exporters::OutlastMetricExporter {
            handoff: self.handoff(Signal::Metrics)?,
            temporality: self.temporality,
            shut_down: Default::default(),
        })
    }

    /// Flushes (or shuts down, `shutdown`) the SDK providers on a thread of their own, as
    /// their calls block (the span and log processors wait up to a fixed 5 s); answers
    /// whether all succeeded.
    fn sdk_call(&self, shutdown: bool, timeout: Duration) -> tokio::sync::oneshot::Receiver<bool> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut calls: Vec<Box<dyn FnOnce() -> OTelSdkResult + Send>> = Vec::new();
        #[cfg(feature = "trace")]
        if let Some(p) = self.tracer_provider.clone() {
            calls.push(Box::new(move || {
                if shutdown {
                    p.shutdown_with_timeout(timeout)
                } else {
                    p.force_flush()
                }
            }));
        }
        #[cfg(feature = "logs")]
        if let Some(p) = self.logger_provider.clone() {
            calls.push(Box::new(move || {
                if shutdown {
                    p.shutdown_with_timeout(timeout)
                } else {
                    p.force_flush()
                }
            }));
        }
        #[cfg(feature = "metrics")]
        if let Some(p) = self.meter_provider.clone() {
            calls.push(Box::new(move || {
                if shutdown {
                    p.shutdown_with_timeout(timeout)
                } else {
                    p.force_flush()
                }
            }));
        }
        let _ = timeout;
        let spawned = std::thread::Builder::new()
            .name("outlast-otel-flush".into())
            .spawn(move || {
                // One thread per provider, so a slow one does not delay the others.
                let threads: Vec<_> = calls
                    .into_iter()
                    .map(|call| std::thread::spawn(move || call().is_ok()))
                    .collect();
                let ok = threads.into_iter().all(|t| t.join().unwrap_or(false));
                let _ = tx.send(ok);
            });
        if let Err(e) = spawned {
            tracing::warn!(target: LOG_TARGET, error = %e, "outlast-otel: cannot start a thread to flush the SDK");
        }
        rx
    }
}

impl Pipeline {
    /// A builder with the settings of the process environment (`OTEL_EXPORTER_OTLP_*`,
    /// `OTEL_{TRACES,LOGS,METRICS}_EXPORTER` and `OUTLAST_*`); see
    /// [`PipelineBuilder::from_env_vars`]. Methods called on it override the environment;
    /// [`build`](PipelineBuilder::build) makes the pipeline.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the variable.
    pub fn builder_from_env() -> Result<PipelineBuilder, ConfigError> {
        PipelineBuilder::from_env()
    }

    /// The old name of [`builder_from_env`](Self::builder_from_env), which says what it
    /// returns: a builder, not a pipeline.
    ///
    /// # Errors
    ///
    /// As [`builder_from_env`](Self::builder_from_env).
    #[deprecated(note = "renamed `builder_from_env`: it returns a builder")]
    pub fn from_env() -> Result<PipelineBuilder, ConfigError> {
        PipelineBuilder::from_env()
    }

    /// Settings with every default (the environment is not read).
    pub fn builder() -> PipelineBuilder {
        PipelineBuilder::new()
    }

    /// The tracer provider feeding the traces client (feature `trace`); install it with
    /// `opentelemetry::global::set_tracer_provider` or hand it to `tracing-opentelemetry`.
    #[cfg(feature = "trace")]
    pub fn tracer_provider(&self) -> Option<opentelemetry_sdk::trace::SdkTracerProvider> {
        self.inner.tracer_provider.clone()
    }

    /// The logger provider feeding the logs client (feature `logs`).
    #[cfg(feature = "logs")]
    pub fn logger_provider(&self) -> Option<opentelemetry_sdk::logs::SdkLoggerProvider> {
        self.inner.logger_provider.clone()
    }

    /// The meter provider feeding the metrics client (feature `metrics`).
    #[cfg(feature = "metrics")]
    pub fn meter_provider(&self) -> Option<opentelemetry_sdk::metrics::SdkMeterProvider> {
        self.inner.meter_provider.clone()
    }

    /// A span exporter on the traces client, for a tracer provider of your own. Batches it
    /// exports are flushed by [`force_flush`](Self::force_flush) once the provider handed
    /// them over (flush your provider first). Its shutdown is its own: shutting down your
    /// provider leaves the pipeline's exporters (and other handles) running, and the
    /// pipeline's shutdown closes the client under it (later batches are then dropped,
    /// counted `shut_down`).
    #[cfg(feature = "trace")]
    pub fn span_exporter(&self) -> Option<crate::exporters::OutlastSpanExporter> {
        self.inner.span_exporter()
    }

    /// A log exporter on the logs client, for a logger provider of your own; as
    /// [`span_exporter`](Self::span_exporter).
    #[cfg(feature = "logs")]
    pub fn log_exporter(&self) -> Option<crate::exporters::OutlastLogExporter> {
        self.inner.log_exporter()
    }

    /// A metric exporter on the metrics client, for a meter provider of your own; as
    /// [`span_exporter`](Self::span_exporter).
    #[cfg(feature = "metrics")]
    pub fn metric_exporter(&self) -> Option<crate::exporters::OutlastMetricExporter> {
        self.inner.metric_exporter()
    }

    /// The outlast client of `signal`, if built.
    pub fn client(&self, signal: Signal) -> Option<&Client> {
        self.inner.signals[signal.index()]
            .as_ref()
            .map(|h| &h.client)
    }

    /// The folder holding the signals' spools.
    pub fn spool_root(&self) -> &std::path::Path {
        &self.inner.spool_root
    }

    /// Delivers what is waiting, within one deadline: first the SDK's queues into outlast
    /// (the providers' own flush, run on a thread of its own since it blocks up to a fixed
    /// 5 s), then the batches under way into the clients, then every signal's spool to the
    /// collector. Returns at `timeout` at the latest, whatever the collector does; what is
    /// not delivered stays on disk for later (the drain tasks, a later flush, or the next
    /// process).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future leaves the flushes under way to finish on their own.
    pub async fn force_flush(&self, timeout: Duration) -> PipelineFlush {
        self.on_runtime(timeout, false).await
    }

    /// As [`force_flush`](Self::force_flush), for code that is not async: runs the flush on
    /// the pipeline's runtime and waits for it, at most `timeout`.
    ///
    /// Do not call it from a task of the pipeline's own runtime if that runtime is a
    /// current-thread one (the flush could not run until `timeout`); in async code, await
    /// [`force_flush`](Self::force_flush).
    pub fn force_flush_blocking(&self, timeout: Duration) -> PipelineFlush {
        self.blocking(timeout, false)
    }

    /// Runs a flush (or shutdown) on the pipeline's runtime and blocks the thread until its
    /// report, at most `timeout`.
    fn blocking(&self, timeout: Duration, shutdown: bool) -> PipelineFlush {
        let (tx, rx) = std::sync::mpsc::channel();
        let this = self.clone();
        // The flush gets a little less than `timeout`, so that its report arrives in time.
        let inner_timeout = timeout.saturating_sub(margin(timeout));
        self.inner.runtime.handle().spawn(async move {
            let _ = tx.send(this.flush_within(inner_timeout, shutdown).await);
        });
        rx.recv_timeout(timeout).unwrap_or_default()
    }

    /// Shuts everything down within `timeout`: the SDK providers (their queues are handed
    /// to outlast), then the clients (a last flush; then the spools are synced and closed).
    /// Never waits past `timeout`; what was not delivered stays on disk and the next
    /// process on the same spool root delivers it.
    ///
    /// # Cancel safety
    ///
    /// If dropped part-way, the parts under way finish on their own; a later call finishes
    /// the shutdown of the clients.
    pub async fn shutdown(&self, timeout: Duration) -> PipelineFlush {
        self.on_runtime(timeout, true).await
    }

    /// As [`shutdown`](Self::shutdown), for code that is not async (a `fn main` without an
    /// executor): runs the shutdown on the pipeline's runtime and waits for it, at most
    /// `timeout`.
    ///
    /// Do not call it from a task of the pipeline's own runtime if that runtime is a
    /// current-thread one (the shutdown could not run until `timeout`); in async code, await
    /// [`shutdown`](Self::shutdown).
    pub fn shutdown_blocking(&self, timeout: Duration) -> PipelineFlush {
        self.blocking(timeout, true)
    }

    /// Runs the flush (or shutdown) as a task on the pipeline's runtime, so that it may be
    /// awaited from any executor (its timers are that runtime's).
    async fn on_runtime(&self, timeout: Duration, shutdown: bool) -> PipelineFlush {
        let this = self.clone();
        let task = self
            .inner
            .runtime
            .handle()
            .spawn(async move { this.flush_within(timeout, shutdown).await });
        // A join error means the runtime is shutting down: nothing was flushed.
        task.await.unwrap_or_default()
    }

    async fn flush_within(&self, timeout: Duration, shutdown: bool) -> PipelineFlush {
        let start = Instant::now();
        // Saturated like every duration (`Duration::MAX`: no limit), so it cannot overflow.
        let deadline = start + outlast_client::units::saturate(timeout);
        let left = || deadline.saturating_duration_since(Instant::now());
        let inner = &self.inner;
        // Drops are reported since the previous report, so that a batch dropped before this
        // call (the SDK exports in the background) still makes this report incomplete.
        let bases = inner.signals.clone().map(|h| h.map(|h| h.drop_base()));

        // 1. The SDK's queues into outlast.
        let sdk = inner.sdk_call(shutdown, left());
        let sdk_flushed = matches!(tokio::time::timeout(left(), sdk).await, Ok(Ok(true)));

        // 2. The batches handed over: wait until the clients answered them.
        let mut handed_over = true;
        for handoff in inner.signals.iter().flatten() {
            handed_over &= handoff.in_flight.wait_idle(deadline).await;
        }

        // 3. Every signal's spool to the collector, concurrently, in the time left (less a
        // margin, so that their reports arrive before our own deadline).
        let left_now = left();
        let budget = left_now.saturating_sub(margin(left_now));
        let flushes = inner.signals.clone().map(|handoff| {
            let client = handoff?.client.clone();
            Some(inner.runtime.handle().spawn(async move {
                if shutdown {
                    match client.shutdown(budget).await {
                        Ok(r) => Some(r),
                        Err(e) => e.report().cloned(),
                    }
                } else {
                    Some(client.force_flush(budget).await)
                }
            }))
        });
        let mut reports: [Option<FlushReport>; 3] = [None, None, None];
        for (i, f) in flushes.into_iter().enumerate() {
            if let Some(task) = f {
                reports[i] = tokio::time::timeout(left(), task)
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .flatten();
            }
        }
        let clients_done = inner
            .signals
            .iter()
            .zip(&reports)
            .all(|(p, r)| p.is_none() || r.as_ref().is_some_and(|r| r.complete));
        let mut dropped_items = 0u64;
        let mut dropped_requests = 0u64;
        for (handoff, base) in inner.signals.iter().zip(bases) {
            if let (Some(handoff), Some(base)) = (handoff, base) {
                let d = handoff.dropped_since(base);
                dropped_items = dropped_items.saturating_add(d.items);
                dropped_requests = dropped_requests.saturating_add(d.requests);
            }
        }
        PipelineFlush {
            complete: sdk_flushed
                && handed_over
                && clients_done
                && dropped_items == 0
                && dropped_requests == 0,
            sdk_flushed,
            dropped_items,
            dropped_requests,
            reports,
            elapsed: start.elapsed(),
        }
    }

    /// Publishes [`stats`](Self::stats) as observable OpenTelemetry instruments on `meter`
    /// (feature `metrics`): `outlast.pending.records`, `outlast.pending.bytes`,
    /// `outlast.oldest_age`, `outlast.dropped` (by `reason`), `outlast.rejected_by_collector`
    /// and `outlast.accepted.items`, each with a `signal` attribute. Use a meter of this
    /// pipeline's own meter provider, or of another one.
    ///
    /// Note that the instruments of a pipeline's own metrics describe a state that includes
    /// those metrics: during an outage they are spooled with the rest.
    #[cfg(feature = "metrics")]
    pub fn register_instruments(&self, meter: &opentelemetry::metrics::Meter) {
        // The callbacks hold the signals' clients, not the pipeline: the pipeline's meter
        // provider holds the callbacks, and a reference back to it would be a cycle.
        let handoffs = self
            .inner
            .signals
            .iter()
            .flatten()
            .map(Arc::clone)
            .collect();
        crate::instruments::register(handoffs, meter);
    }

    /// Per signal: pending records and bytes, oldest age, drops by reason, collector
    /// rejections, and how the SDK's calls were answered.
    pub fn stats(&self) -> PipelineStats {
        let one = |s: Signal| Some(self.inner.signals[s.index()].as_ref()?.stats());
        PipelineStats {
            traces: one(Signal::Traces),
            logs: one(Signal::Logs),
            metrics: one(Signal::Metrics),
        }
    }
}
