//! [`PipelineBuilder`]: the collector endpoint, the spool root, per-signal settings, and the
//! standard `OTEL_EXPORTER_OTLP_*` environment variables.

use std::path::PathBuf;
use std::time::Duration;

use outlast_client::http::{ENV_ENDPOINT, ENV_HEADERS, HttpExporterBuilder};
use outlast_client::{ClientBuilder, ConfigError, ReplayOrder};

use crate::encode::Encoding;
use crate::signal::Signal;

/// The collector endpoint when none is configured: the OTLP/HTTP default.
pub const DEFAULT_ENDPOINT: &str = "http://localhost:4318";
/// Time bound of one SDK exporter call: as long as one default request timeout, so a hanging
/// collector holds the SDK's export thread no longer than the official exporter would.
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// OTLP's default request timeout (`OTEL_EXPORTER_OTLP_TIMEOUT`), 10 s.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `OTEL_EXPORTER_OTLP_ENDPOINT`: the collector's base URL; `/v1/<signal>` is appended.
pub const ENV_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// `OTEL_EXPORTER_OTLP_HEADERS`: `k=v,k2=v2`, values URL-encoded.
pub const ENV_OTLP_HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
/// `OTEL_EXPORTER_OTLP_TIMEOUT`: request timeout in milliseconds.
pub const ENV_OTLP_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
/// `OTEL_EXPORTER_OTLP_COMPRESSION`: `gzip` or `none`.
pub const ENV_OTLP_COMPRESSION: &str = "OTEL_EXPORTER_OTLP_COMPRESSION";
/// `OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf`, or `http/json` (feature `with-serde`);
/// `grpc` is refused (this crate has no gRPC).
pub const ENV_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
/// `OUTLAST_SPOOL_DIR`, read here as the spool root (each signal has a folder under it).
pub const ENV_SPOOL_ROOT: &str = outlast_client::env::SPOOL_DIR;

/// `OTEL_TRACES_EXPORTER`, `OTEL_LOGS_EXPORTER`, `OTEL_METRICS_EXPORTER`: `none` turns the
/// signal off; `otlp` (the specification's default) leaves it on if its feature is (the
/// SDK's own variables, read here as the signal switches).
pub const ENV_SIGNAL_EXPORTER: [&str; 3] = [
    "OTEL_TRACES_EXPORTER",
    "OTEL_LOGS_EXPORTER",
    "OTEL_METRICS_EXPORTER",
];

/// The replay order a signal's client gets unless told otherwise: fresh spans and logs
/// matter more than their order across an outage (a trace backend indexes spans by their own
/// timestamps, a log store by the record's time), so they go **live-first**; metrics go
/// **oldest-first**, because some metric backends reject a sample older than the newest one
/// they hold for its series (Prometheus remote write and Mimir refuse out-of-order samples
/// by default), so a backlog replayed after fresh points could be refused as a whole.
pub const fn default_replay_order(signal: Signal) -> ReplayOrder {
    match signal {
        Signal::Traces | Signal::Logs => ReplayOrder::LiveFirst,
        Signal::Metrics => ReplayOrder::OldestFirst,
    }
}

/// The per-signal variables: (full endpoint, headers, timeout, compression, protocol).
const fn signal_vars(signal: Signal) -> [&'static str; 5] {
    match signal {
        Signal::Traces => [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ],
        Signal::Logs => [
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
            "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
            "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT",
            "OTEL_EXPORTER_OTLP_LOGS_COMPRESSION",
            "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
        ],
        Signal::Metrics => [
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
            "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
            "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        ],
    }
}

/// A value and the environment variable it came from (`None`: set in code).
#[derive(Debug, Clone)]
pub(crate) struct Sourced<T> {
    pub(crate) value: T,
    pub(crate) var: Option<&'static str>,
}

impl<T> Sourced<T> {
    fn code(value: T) -> Sourced<T> {
        Sourced { value, var: None }
    }
    fn env(value: T, var: &'static str) -> Sourced<T> {
        Sourced {
            value,
            var: Some(var),
        }
    }
    /// The name an error about this value should give.
    pub(crate) fn param(&self, code_name: &'static str) -> &'static str {
        self.var.unwrap_or(code_name)
    }
}

/// Settings of one signal; unset ones fall back to the shared ones.
#[derive(Debug, Clone, Default)]
pub(crate) struct SignalSettings {
    pub(crate) endpoint: Option<Sourced<String>>,
    /// Header lists from variables, in `k=v,k2=v2` form (values URL-encoded), in order.
    pub(crate) headers: Vec<Sourced<String>>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) gzip: Option<bool>,
    pub(crate) encoding: Option<Encoding>,
}

/// Settings of a [`Pipeline`](crate::Pipeline): one collector, three signals, one spool
/// root.
///
/// # Examples
///
/// ```no_run
/// use outlast_otel::Pipeline;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let otel = Pipeline::builder()
///     .endpoint("http://collector:4318")
///     .spool_root("/var/lib/my-service/outlast")
///     .build()?;
/// # drop(otel); Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct PipelineBuilder {
    pub(crate) endpoint: Option<Sourced<String>>,
    pub(crate) shared: SignalSettings,
    pub(crate) signals: [SignalSettings; 3],
    pub(crate) spool_root: Option<PathBuf>,
    pub(crate) client: ClientBuilder,
    pub(crate) export_timeout: Option<Duration>,
    pub(crate) runtime: Option<tokio::runtime::Handle>,
    pub(crate) resource: Option<opentelemetry_sdk::Resource>,
    pub(crate) http: Vec<(String, String)>,
    pub(crate) code_headers: Vec<(String, String)>,
    /// Per signal: on or off as set in code or by `OTEL_<SIGNAL>_EXPORTER`; `None`: on if
    /// its cargo feature is.
    pub(crate) enabled: [Option<Sourced<bool>>; 3],
    #[cfg(feature = "metrics")]
    pub(crate) temporality: Option<opentelemetry_sdk::metrics::Temporality>,
    #[cfg(feature = "metrics")]
    pub(crate) metrics_interval: Option<Duration>,
    /// Each signal's replay order, if set (see [`PipelineBuilder::replay_order`]).
    pub(crate) replay_orders: [Option<ReplayOrder>; 3],
}

impl PipelineBuilder {
    /// Every setting at its default; the environment is not read.
    pub fn new() -> PipelineBuilder {
        PipelineBuilder::default()
    }

    /// Settings from the process environment: see [`from_env_vars`](Self::from_env_vars).
    ///
    /// # Errors
    ///
    /// As [`from_env_vars`](Self::from_env_vars).
    pub fn from_env() -> Result<PipelineBuilder, ConfigError> {
        PipelineBuilder::from_env_vars(
            std::env::vars_os().filter_map(|(k, v)| {
                Some((k.into_string().ok()?, v.to_string_lossy().into_owned()))
            }),
        )
    }

    /// Settings from `(name, value)` pairs (pass a map in tests, so the process environment
    /// is not touched): the `OTEL_EXPORTER_OTLP_*` variables (endpoint, per-signal endpoint
    /// used as is, headers, timeout in ms, compression, each also per signal),
    /// `OTEL_{TRACES,LOGS,METRICS}_EXPORTER` (`none` turns a signal off), and the
    /// `OUTLAST_*` client settings of [`ClientBuilder::from_env_vars`], with
    /// `OUTLAST_SPOOL_DIR` as the spool root. Unset or empty variables keep the default.
    /// Methods called afterwards override what the environment said.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the variable whose value is malformed.
    ///
    /// # Examples
    ///
    /// ```
    /// use outlast_otel::PipelineBuilder;
    ///
    /// let b = PipelineBuilder::from_env_vars([
    ///     ("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), "http://collector:4318".to_string()),
    ///     ("OTEL_EXPORTER_OTLP_TIMEOUT".to_string(), "2500".to_string()),
    /// ])?;
    /// assert_eq!(b.endpoint_of(outlast_otel::Signal::Logs), "http://collector:4318/v1/logs");
    ///
    /// let err = PipelineBuilder::from_env_vars([
    ///     ("OTEL_EXPORTER_OTLP_COMPRESSION".to_string(), "zstd".to_string()),
    /// ]).unwrap_err();
    /// assert!(err.to_string().contains("OTEL_EXPORTER_OTLP_COMPRESSION"));
    /// # Ok::<(), outlast_otel::ConfigError>(())
    /// ```
    pub fn from_env_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<PipelineBuilder, ConfigError> {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let mut b = PipelineBuilder {
            client: ClientBuilder::from_env_vars(vars.iter().cloned())?,
            ..PipelineBuilder::default()
        };
        let get = |name: &str| {
            vars.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.trim())
                .filter(|v| !v.is_empty())
        };
        if let Some(v) = get(ENV_SPOOL_ROOT) {
            b.spool_root = Some(PathBuf::from(v));
        }
        if let Some(ca) = get(outlast_client::http::ENV_CA_FILE) {
            b.http
                .push((outlast_client::http::ENV_CA_FILE.to_owned(), ca.to_owned()));
        }
        for signal in Signal::ALL {
            let var = ENV_SIGNAL_EXPORTER[signal.index()];
            if let Some(v) = get(var) {
                // `otlp` is the variable's default in the SDK's specification: it leaves the
                // signal as the features say (deployments often set it for every service).
                let on = match v.to_ascii_lowercase().as_str() {
                    "otlp" => continue,
                    "none" => false,
                    _ => {
                        return Err(ConfigError::invalid(
                            var,
                            format!(
                                "{v:?} is not an exporter outlast-otel has: `otlp` (export \
                                 {signal}) or `none` (do not)"
                            ),
                        ));
                    }
                };
                b.enabled[signal.index()] = Some(Sourced::env(on, var));
            }
        }
        if let Some(v) = get(ENV_OTLP_ENDPOINT) {
            b.endpoint = Some(Sourced::env(v.to_owned(), ENV_OTLP_ENDPOINT));
        }
        read_signal_vars(
            &mut b.shared,
            &get,
            [
                None,
                Some(ENV_OTLP_HEADERS),
                Some(ENV_OTLP_TIMEOUT),
                Some(ENV_OTLP_COMPRESSION),
                Some(ENV_OTLP_PROTOCOL),
            ],
        )?;
        for signal in Signal::ALL {
            let [e, h, t, c, p] = signal_vars(signal);
            read_signal_vars(
                &mut b.signals[signal.index()],
                &get,
                [Some(e), Some(h), Some(t), Some(c), Some(p)],
            )?;
        }
        Ok(b)
    }

    /// Whether to export spans (default: on when the `trace` feature is, unless
    /// `OTEL_TRACES_EXPORTER=none`). Turning it on without the feature makes
    /// [`build`](Self::build) fail.
    pub fn traces(self, on: bool) -> Self {
        self.signal(Signal::Traces, on)
    }

    /// Whether to export log records (default: on when the `logs` feature is, unless
    /// `OTEL_LOGS_EXPORTER=none`). Turning it on without the feature makes
    /// [`build`](Self::build) fail.
    pub fn logs(self, on: bool) -> Self {
        self.signal(Signal::Logs, on)
    }

    /// Whether to export metrics (default: on when the `metrics` feature is, unless
    /// `OTEL_METRICS_EXPORTER=none`). Turning it on without the feature makes
    /// [`build`](Self::build) fail.
    pub fn metrics(self, on: bool) -> Self {
        self.signal(Signal::Metrics, on)
    }

    /// Whether to export `signal` (see [`traces`](Self::traces), [`logs`](Self::logs),
    /// [`metrics`](Self::metrics)). A signal turned off has no client, no spool folder
    /// opened and no provider.
    pub fn signal(mut self, signal: Signal, on: bool) -> Self {
        self.enabled[signal.index()] = Some(Sourced::code(on));
        self
    }

    /// The signals [`build`](Self::build) makes: those turned on, else those whose cargo
    /// feature is on.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the setting (or variable) that turns on a signal
    /// this build of the crate lacks the feature of.
    pub(crate) fn enabled_signals(&self) -> Result<Vec<Signal>, ConfigError> {
        let mut on = Vec::new();
        for signal in Signal::ALL {
            let (compiled, feature) = match signal {
                Signal::Traces => (cfg!(feature = "trace"), "trace"),
                Signal::Logs => (cfg!(feature = "logs"), "logs"),
                Signal::Metrics => (cfg!(feature = "metrics"), "metrics"),
            };
            match &self.enabled[signal.index()] {
                Some(s) if s.value && !compiled => {
                    return Err(ConfigError::invalid(
                        s.param(signal.name()),
                        format!("{signal} need outlast-otel's `{feature}` cargo feature"),
                    ));
                }
                Some(s) if !s.value => {}
                _ if compiled => on.push(signal),
                _ => {}
            }
        }
        Ok(on)
    }

    /// The collector's base URL (default [`DEFAULT_ENDPOINT`]); each signal is sent to it
    /// with `/v1/traces`, `/v1/logs` or `/v1/metrics` appended.
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(Sourced::code(url.into()));
        self
    }

    /// The full URL for one signal, used as is (overrides [`endpoint`](Self::endpoint)).
    pub fn signal_endpoint(mut self, signal: Signal, url: impl Into<String>) -> Self {
        self.signals[signal.index()].endpoint = Some(Sourced::code(url.into()));
        self
    }

    /// The URL `signal`'s requests go to, as configured now.
    pub fn endpoint_of(&self, signal: Signal) -> String {
        if let Some(e) = &self.signals[signal.index()].endpoint {
            return e.value.clone();
        }
        let base = self
            .endpoint
            .as_ref()
            .map_or(DEFAULT_ENDPOINT, |e| e.value.as_str());
        format!("{}{}", base.trim_end_matches('/'), signal.path())
    }

    /// A header sent with every request of every signal (e.g. `authorization`). Secret
    /// headers are redacted in Debug output and logs, as by `HttpExporter`.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.code_headers.push((name.into(), value.into()));
        self
    }

    /// The request timeout of every signal (default [`DEFAULT_REQUEST_TIMEOUT`]).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.shared.timeout = Some(timeout);
        for s in &mut self.signals {
            s.timeout = None;
        }
        self
    }

    /// Gzip request bodies of every signal (default off).
    pub fn gzip(mut self, on: bool) -> Self {
        self.shared.gzip = Some(on);
        for s in &mut self.signals {
            s.gzip = None;
        }
        self
    }

    /// How every signal's requests are encoded (default [`Encoding::Protobuf`]).
    pub fn encoding(mut self, encoding: Encoding) -> Self {
        self.shared.encoding = Some(encoding);
        for s in &mut self.signals {
            s.encoding = None;
        }
        self
    }

    /// The encoding `signal`'s requests use, as configured now.
    pub fn encoding_of(&self, signal: Signal) -> Encoding {
        self.signals[signal.index()]
            .encoding
            .or(self.shared.encoding)
            .unwrap_or_default()
    }

    /// The folder under which each signal has its spool (`<root>/traces`, `<root>/logs`,
    /// `<root>/metrics`). Default: `OUTLAST_SPOOL_DIR`, else
    /// `<temp dir>/outlast-<executable name>-<user id>` ([`outlast_client::default_spool_dir`]).
    /// Servers should use persistent storage.
    pub fn spool_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.spool_root = Some(root.into());
        self
    }

    /// The client settings every signal's client starts from (spool size, durability,
    /// backoff...). Its spool directory and runtime are replaced by the pipeline's.
    pub fn client(mut self, client: ClientBuilder) -> Self {
        self.client = client;
        self
    }

    /// The replay order of `signal`'s client (see [`ReplayOrder`]). Default, unless the
    /// [`client`](Self::client) settings or `OUTLAST_REPLAY_ORDER` name one for every
    /// signal: [`default_replay_order`] (traces and logs live-first, metrics oldest-first).
    pub fn replay_order(mut self, signal: Signal, order: ReplayOrder) -> Self {
        self.replay_orders[signal.index()] = Some(order);
        self
    }

    /// The replay order `signal`'s client gets, as configured now.
    pub fn replay_order_of(&self, signal: Signal) -> ReplayOrder {
        self.replay_orders[signal.index()]
            .or(self.client.configured_replay_order())
            .unwrap_or(default_replay_order(signal))
    }

    /// Time bound of one SDK exporter call (default [`DEFAULT_EXPORT_TIMEOUT`]). When it
    /// expires the call answers `Timeout` and the batch carries on to the collector or the
    /// spool. `Duration::MAX` means no bound.
    pub fn export_timeout(mut self, timeout: Duration) -> Self {
        self.export_timeout = Some(timeout);
        self
    }

    /// The Tokio runtime the clients run on. Default: the runtime current at
    /// [`build`](Self::build), else a one-worker runtime the pipeline starts itself.
    pub fn runtime(mut self, handle: tokio::runtime::Handle) -> Self {
        self.runtime = Some(handle);
        self
    }

    /// The resource of the providers the pipeline builds (default: the SDK's default
    /// resource, which reads `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`).
    pub fn resource(mut self, resource: opentelemetry_sdk::Resource) -> Self {
        self.resource = Some(resource);
        self
    }

    /// The temporality of exported metrics (default cumulative).
    #[cfg(feature = "metrics")]
    pub fn temporality(mut self, temporality: opentelemetry_sdk::metrics::Temporality) -> Self {
        self.temporality = Some(temporality);
        self
    }

    /// How often the periodic reader collects and exports metrics (default: the SDK's, 60 s
    /// or `OTEL_METRIC_EXPORT_INTERVAL`).
    #[cfg(feature = "metrics")]
    pub fn metrics_interval(mut self, interval: Duration) -> Self {
        self.metrics_interval = Some(interval);
        self
    }

    /// The HTTP exporter of `signal`, as configured.
    pub(crate) fn http_exporter(
        &self,
        signal: Signal,
    ) -> Result<outlast_client::http::HttpExporter, ConfigError> {
        let own = &self.signals[signal.index()];
        let url_source = own.endpoint.as_ref().or(self.endpoint.as_ref());
        let url_param = url_source.map_or("endpoint", |s| s.param("endpoint"));
        let url = self.endpoint_of(signal);
        let mut vars = vec![(ENV_ENDPOINT.to_owned(), url)];
        vars.extend(self.http.iter().cloned());
        // A header in a signal's list replaces the one of the same name in the shared list.
        // Each list was checked when it was read.
        let own_items: Vec<&str> = own.headers.iter().flat_map(|l| items(&l.value)).collect();
        let own_names: Vec<String> = own_items.iter().map(|i| item_name(i)).collect();
        let merged: Vec<&str> = self
            .shared
            .headers
            .iter()
            .flat_map(|l| items(&l.value))
            .filter(|i| !own_names.contains(&item_name(i)))
            .chain(own_items.iter().copied())
            .collect();
        if !merged.is_empty() {
            vars.push((ENV_HEADERS.to_owned(), merged.join(",")));
        }
        let headers_param = own
            .headers
            .first()
            .or(self.shared.headers.first())
            .map_or("headers", |l| l.param("headers"));
        let name_ours = |e: ConfigError| match &e {
            ConfigError::Invalid { param, .. } if *param == ENV_ENDPOINT => rename(e, url_param),
            ConfigError::Invalid { param, .. } if *param == ENV_HEADERS => rename(e, headers_param),
            _ => e,
        };
        let b = HttpExporterBuilder::from_env_vars(vars).map_err(name_ours)?;
        let b = b.headers(self.code_headers.iter().cloned());
        let timeout = own
            .timeout
            .or(self.shared.timeout)
            .unwrap_or(DEFAULT_REQUEST_TIMEOUT);
        let gzip = own.gzip.or(self.shared.gzip).unwrap_or(false);
        if timeout.is_zero() {
            return Err(ConfigError::invalid(
                "request_timeout",
                "must be greater than zero",
            ));
        }
        // Spooled requests of one signal merge by concatenation on replay (protobuf's rule
        // for repeated fields); OTLP/JSON requests are never merged.
        b.timeout(timeout)
            .gzip(gzip)
            .retryable_statuses(crate::otlp_http::OTLP_RETRYABLE_STATUSES)
            .payload_framing(outlast_client::http::PayloadFraming::OtlpProtobuf)
            .build()
            .map_err(name_ours)
    }
}

/// Reads one signal's (or the shared) variables into `s`.
fn read_signal_vars<'v>(
    s: &mut SignalSettings,
    get: &impl Fn(&str) -> Option<&'v str>,
    [endpoint, headers, timeout, compression, protocol]: [Option<&'static str>; 5],
) -> Result<(), ConfigError> {
    if let Some(var) = endpoint
        && let Some(v) = get(var)
    {
        s.endpoint = Some(Sourced::env(v.to_owned(), var));
    }
    if let Some(var) = headers
        && let Some(v) = get(var)
    {
        let list = Sourced::env(v.to_owned(), var);
        // Checked now, so that the error names the variable.
        check_header_list(&list)?;
        s.headers.push(list);
    }
    if let Some(var) = timeout
        && let Some(v) = get(var)
    {
        let ms: u64 = v.parse().map_err(|_| {
            ConfigError::invalid(var, format!("{v:?} is not a whole number of milliseconds"))
        })?;
        if ms == 0 {
            return Err(ConfigError::invalid(var, "must be greater than zero"));
        }
        s.timeout = Some(Duration::from_millis(ms));
    }
    if let Some(var) = protocol
        && let Some(v) = get(var)
    {
        s.encoding = Some(match v {
            "http/protobuf" => Encoding::Protobuf,
            #[cfg(feature = "with-serde")]
            "http/json" => Encoding::Json,
            #[cfg(not(feature = "with-serde"))]
            "http/json" => {
                return Err(ConfigError::invalid(
                    var,
                    "http/json needs outlast-otel's `with-serde` feature",
                ));
            }
            "grpc" => {
                return Err(ConfigError::invalid(
                    var,
                    "grpc is not supported: outlast-otel sends OTLP/HTTP (http/protobuf)",
                ));
            }
            _ => {
                return Err(ConfigError::invalid(
                    var,
                    format!("{v:?} is not a protocol (http/protobuf or http/json)"),
                ));
            }
        });
    }
    if let Some(var) = compression
        && let Some(v) = get(var)
    {
        s.gzip = Some(match v.to_ascii_lowercase().as_str() {
            "gzip" => true,
            "none" => false,
            _ => {
                return Err(ConfigError::invalid(
                    var,
                    format!("{v:?} is not a supported compression (gzip or none)"),
                ));
            }
        });
    }
    Ok(())
}

/// Checks a `k=v,k2=v2` list (values URL-encoded) with the HTTP exporter's own parser (the
/// format is the same as `OUTLAST_HEADERS`); errors name the list's variable.
fn check_header_list(list: &Sourced<String>) -> Result<(), ConfigError> {
    HttpExporterBuilder::from_env_vars([
        (ENV_ENDPOINT, "http://localhost"),
        (ENV_HEADERS, list.value.as_str()),
    ])
    .map(drop)
    .map_err(|e| rename(e, list.param("headers")))
}

/// The non-empty `k=v` items of a header list.
fn items(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').filter(|i| !i.trim().is_empty())
}

/// The header name of a `k=v` item, for comparison (header names are case-insensitive).
fn item_name(item: &str) -> String {
    item.split('=')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// The same error, naming `param` instead.
fn rename(e: ConfigError, param: &'static str) -> ConfigError {
    match e {
        ConfigError::Invalid { reason, .. } => ConfigError::invalid(param, reason),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_header_replaces_the_shared_one_of_the_same_name_only() {
        let b = PipelineBuilder::from_env_vars([
            (
                ENV_OTLP_HEADERS.to_owned(),
                "X-Tenant=a, x-keep=1".to_owned(),
            ),
            (
                "OTEL_EXPORTER_OTLP_LOGS_HEADERS".to_owned(),
                "x-tenant=b".to_owned(),
            ),
        ])
        .expect("valid variables");
        let logs = format!("{:?}", b.http_exporter(Signal::Logs).expect("builds"));
        let traces = format!("{:?}", b.http_exporter(Signal::Traces).expect("builds"));
        assert!(logs.contains("\"b\"") && !logs.contains("\"a\""), "{logs}");
        assert!(logs.contains("x-keep"), "{logs}");
        assert!(traces.contains("\"a\""), "{traces}");
    }

    #[test]
    fn header_items_are_named_case_insensitively() {
        assert_eq!(item_name(" X-Tenant =a"), "x-tenant");
        assert_eq!(items("a=1,, ,b=2").count(), 2);
    }

    #[test]
    fn a_builder_setting_overrides_the_environment() {
        let b = PipelineBuilder::from_env_vars([(
            ENV_OTLP_ENDPOINT.to_owned(),
            "http://env:4318".to_owned(),
        )])
        .expect("valid variables")
        .endpoint("http://code:4318");
        assert_eq!(b.endpoint_of(Signal::Traces), "http://code:4318/v1/traces");
    }

    #[test]
    fn traces_and_logs_replay_live_first_and_metrics_oldest_first_unless_told_otherwise() {
        let order = |b: &PipelineBuilder| Signal::ALL.map(|s| b.replay_order_of(s));
        use ReplayOrder::{LiveFirst, OldestFirst};
        let b = PipelineBuilder::new();
        assert_eq!(order(&b), [LiveFirst, LiveFirst, OldestFirst]);
        // One signal told otherwise.
        let b = PipelineBuilder::new().replay_order(Signal::Metrics, LiveFirst);
        assert_eq!(order(&b), [LiveFirst, LiveFirst, LiveFirst]);
        // The client settings name one for every signal; a per-signal choice still wins.
        let b = PipelineBuilder::new()
            .client(ClientBuilder::new().replay_order(OldestFirst))
            .replay_order(Signal::Logs, LiveFirst);
        assert_eq!(order(&b), [OldestFirst, LiveFirst, OldestFirst]);
        let b = PipelineBuilder::from_env_vars([(
            "OUTLAST_REPLAY_ORDER".to_owned(),
            "live_first".to_owned(),
        )])
        .expect("valid");
        assert_eq!(order(&b), [LiveFirst, LiveFirst, LiveFirst]);
    }
}
