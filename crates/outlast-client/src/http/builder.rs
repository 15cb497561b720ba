//! [`HttpExporterBuilder`]: settings, their defaults, validation and `OUTLAST_*` variables.

use std::ffi::OsStr;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use outlast_core::ConfigError;
use outlast_core::units::{MAX_DURATION, saturate};
use rustls_pki_types::CertificateDer;

use crate::env::setting::{Setting, parse_duration};

use super::exporter::{HttpExporter, Parts, PayloadFraming, ProbeTarget, USER_AGENT};
use super::headers::{Redacted, parse_header, parse_header_list};
use super::tls;

/// Default request timeout: long enough for a large batch over a slow link, short enough that
/// a hanging backend is noticed within one retry cycle.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Default number of concurrent replay requests this exporter allows: enough to hide the
/// round-trip time on a backlog without flooding a collector that has just come back. The
/// client's own limit
/// ([`ClientBuilder::DEFAULT_MAX_IN_FLIGHT`](crate::ClientBuilder::DEFAULT_MAX_IN_FLIGHT), 4)
/// applies too; the smaller wins.
pub const DEFAULT_HTTP_MAX_IN_FLIGHT: usize = 8;

/// Default probe timeout: a TCP connect to a reachable collector takes milliseconds; two
/// seconds tolerates a slow link without stalling the drain task.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Default idle time after which a pooled connection is closed: below the 60 s idle timeout
/// of common load balancers, so the client closes first instead of reusing a dying socket.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// Environment variable: the endpoint URL (required by
/// [`from_env_vars`](HttpExporterBuilder::from_env_vars)).
pub const ENV_ENDPOINT: &str = "OUTLAST_ENDPOINT";
/// Environment variable: extra headers, `k=v,k=v`, values percent-decoded.
pub const ENV_HEADERS: &str = "OUTLAST_HEADERS";
/// Environment variable: the request timeout, as seconds (`10`, `2.5`) or with a unit
/// (`500ms`, `10s`).
pub const ENV_TIMEOUT: &str = "OUTLAST_HTTP_TIMEOUT";
/// Environment variable: gzip request bodies (`true`/`false`, `1`/`0`, `yes`/`no`,
/// `on`/`off`, `gzip`/`none`).
pub const ENV_GZIP: &str = "OUTLAST_HTTP_GZIP";
/// Environment variable: a PEM file of extra CA certificates to trust.
pub const ENV_CA_FILE: &str = "OUTLAST_CA_FILE";

/// The exporter's environment variables with the builder parameter each one sets and its
/// format and default as the documentation shows them (a test checks the configuration
/// page's table against this list).
pub const SETTINGS: [Setting; 5] = [
    Setting {
        var: ENV_ENDPOINT,
        param: "builder(url)",
        format: "`http://` or `https://` URL with a host, and a port from 1 to 65535 if one is given",
        default: "—",
    },
    Setting {
        var: ENV_HEADERS,
        param: "header(name, value)",
        format: "`k=v,k=v`; whitespace around keys and values trimmed; values percent-decoded (as `OTEL_EXPORTER_OTLP_HEADERS`)",
        default: "`user-agent: outlast/<version>` only",
    },
    Setting {
        var: ENV_TIMEOUT,
        param: "timeout",
        format: "duration (the same grammar as the client's: `500ms`, `10s`, `2m`, `2.5`)",
        default: "10 s",
    },
    Setting {
        var: ENV_GZIP,
        param: "gzip",
        format: "`true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`, `gzip`/`none` (empty means off)",
        default: "off",
    },
    Setting {
        var: ENV_CA_FILE,
        param: "ca_file(path)",
        format: "path to a PEM file of CA certificates (a regular file of at most 1 MiB, `MAX_CA_FILE_BYTES`)",
        default: "Mozilla roots from `webpki-roots` only",
    },
];

/// How [`HttpExporter::probe`](outlast_core::Exporter::probe) checks reachability while the
/// client is offline.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Probe {
    /// Open a TCP connection to the endpoint's host and port, then close it. The default:
    /// cheap, and it needs nothing from the backend.
    #[default]
    TcpConnect,
    /// `GET` this URL through the exporter's client (same TLS settings and headers);
    /// a 2xx status means reachable.
    HealthUrl(String),
    /// No probe: the drain task sends a real payload instead.
    Disabled,
}

#[derive(Clone)]
enum CaSource {
    File(PathBuf),
    Pem(Vec<u8>),
}

/// Settings of an [`HttpExporter`]. Every setting has a documented default; [`build`]
/// validates them all.
///
/// [`build`]: HttpExporterBuilder::build
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use outlast_client::http::HttpExporter;
///
/// let exporter = HttpExporter::builder("https://collector.example.com/v1/traces")
///     .header("authorization", "Bearer my-token")
///     .timeout(Duration::from_secs(5))
///     .gzip(true)
///     .build()?;
/// // The token never shows up in Debug output.
/// assert!(!format!("{exporter:?}").contains("my-token"));
/// # Ok::<(), outlast_client::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct HttpExporterBuilder {
    url: String,
    headers: Vec<(String, String)>,
    timeout: Option<Duration>,
    gzip: Option<bool>,
    max_in_flight: Option<usize>,
    probe: Option<Probe>,
    probe_timeout: Option<Duration>,
    pool_idle_timeout: Option<Duration>,
    ca: Vec<CaSource>,
    framing: Option<PayloadFraming>,
    retryable_statuses: Option<Vec<StatusCode>>,
}

impl HttpExporter {
    /// Settings for sending to `url`; see [`HttpExporterBuilder`].
    pub fn builder(url: impl Into<String>) -> HttpExporterBuilder {
        HttpExporterBuilder::new(url)
    }

    /// An exporter configured from the process environment (`OUTLAST_ENDPOINT` and the
    /// other variables listed at [`HttpExporterBuilder::from_env_vars`]). To adjust the
    /// settings in code as well, start from [`HttpExporterBuilder::from_env`] instead.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`](outlast_core::ConfigError::Invalid) naming the variable.
    pub fn from_env() -> Result<HttpExporter, outlast_core::ConfigError> {
        HttpExporterBuilder::from_env()?.build()
    }
}

impl HttpExporterBuilder {
    /// Settings for sending to `url` (`http://` or `https://`), all else default.
    pub fn new(url: impl Into<String>) -> HttpExporterBuilder {
        HttpExporterBuilder {
            url: url.into(),
            headers: Vec::new(),
            timeout: None,
            gzip: None,
            max_in_flight: None,
            probe: None,
            probe_timeout: None,
            pool_idle_timeout: None,
            ca: Vec::new(),
            framing: None,
            retryable_statuses: None,
        }
    }

    /// Adds a header sent with every request (e.g. `authorization`). Secret-looking headers
    /// (see [`is_sensitive_header`](super::is_sensitive_header)) are redacted in Debug
    /// output and never logged. `content-type`, `content-encoding` and
    /// [`KEY_HEADER`](super::KEY_HEADER) are set per payload and override a value set here.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds several headers; see [`header`](Self::header).
    #[must_use]
    pub fn headers<K, V>(mut self, headers: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        self.headers
            .extend(headers.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// The time limit of one request: connect, TLS handshake, sending the body, and reading
    /// the response head and (bounded) body. Default [`DEFAULT_TIMEOUT`]. A value above
    /// [`MAX_DURATION`](outlast_core::units::MAX_DURATION) (about 30 years, e.g.
    /// `Duration::MAX`) is treated as that: no limit in practice.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Compresses request bodies with gzip and sends `Content-Encoding: gzip`. Default off.
    #[must_use]
    pub fn gzip(mut self, on: bool) -> Self {
        self.gzip = Some(on);
        self
    }

    /// How many exports the drain task may have in flight at once (what
    /// [`Exporter::max_in_flight`](outlast_core::Exporter::max_in_flight) returns); also the
    /// number of idle connections kept. Default [`DEFAULT_HTTP_MAX_IN_FLIGHT`].
    #[must_use]
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = Some(n);
        self
    }

    /// How reachability is probed while offline. Default [`Probe::TcpConnect`].
    #[must_use]
    pub fn probe(mut self, probe: Probe) -> Self {
        self.probe = Some(probe);
        self
    }

    /// The time limit of one probe. Default [`DEFAULT_PROBE_TIMEOUT`]. Saturated like
    /// [`timeout`](Self::timeout).
    #[must_use]
    pub fn probe_timeout(mut self, timeout: Duration) -> Self {
        self.probe_timeout = Some(timeout);
        self
    }

    /// How long an idle pooled connection is kept. Default [`DEFAULT_POOL_IDLE_TIMEOUT`].
    /// [`MAX_DURATION`](outlast_core::units::MAX_DURATION) or more (e.g. `Duration::MAX`)
    /// means idle connections never expire on the client's side (the server may still close
    /// them).
    #[must_use]
    pub fn pool_idle_timeout(mut self, timeout: Duration) -> Self {
        self.pool_idle_timeout = Some(timeout);
        self
    }

    /// What the payloads are, which decides whether the client's replay may merge
    /// consecutive spooled payloads into one request. Default [`PayloadFraming::Opaque`]
    /// (never merged).
    #[must_use]
    pub fn payload_framing(mut self, framing: PayloadFraming) -> Self {
        self.framing = Some(framing);
        self
    }

    /// The statuses worth retrying, replacing the default list (408, 429, 500, 502, 503,
    /// 504: [`is_retryable_status`](super::is_retryable_status)) for a protocol with rules
    /// of its own. A failure answered with one of them is retryable (with the `Retry-After`
    /// delay of a 429 or 503); every other non-success status is permanent. Transport
    /// failures and timeouts stay retryable whatever the list.
    ///
    /// OTLP/HTTP, for one, allows retries only on 429, 502, 503 and 504.
    ///
    /// # Examples
    ///
    /// ```
    /// use http::StatusCode;
    /// use outlast_client::http::HttpExporter;
    ///
    /// # fn main() -> Result<(), outlast_client::ConfigError> {
    /// let otlp = HttpExporter::builder("http://127.0.0.1:4318/v1/traces")
    ///     .retryable_statuses([
    ///         StatusCode::TOO_MANY_REQUESTS,
    ///         StatusCode::BAD_GATEWAY,
    ///         StatusCode::SERVICE_UNAVAILABLE,
    ///         StatusCode::GATEWAY_TIMEOUT,
    ///     ])
    ///     .build()?;
    /// # drop(otlp); Ok(()) }
    /// ```
    #[must_use]
    pub fn retryable_statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.retryable_statuses = Some(statuses.into_iter().collect());
        self
    }

    /// Trusts the CA certificates in this PEM file, in addition to the default roots.
    /// The file is read by [`build`](Self::build).
    #[must_use]
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca.push(CaSource::File(path.into()));
        self
    }

    /// Trusts the CA certificates in this PEM text, in addition to the default roots.
    #[must_use]
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca.push(CaSource::Pem(pem.into()));
        self
    }

    /// Settings from the process's `OUTLAST_*` variables (see
    /// [`from_env_vars`](Self::from_env_vars)), to adjust with builder methods before
    /// [`build`](Self::build). [`HttpExporter::from_env`] is this followed by `build()`.
    ///
    /// # Errors
    ///
    /// As [`from_env_vars`](Self::from_env_vars).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use outlast_client::http::HttpExporterBuilder;
    ///
    /// let exporter = HttpExporterBuilder::from_env()?   // OUTLAST_ENDPOINT, OUTLAST_HEADERS, ...
    ///     .max_in_flight(2)                            // adjusted in code
    ///     .build()?;
    /// # drop(exporter);
    /// # Ok::<(), outlast_client::ConfigError>(())
    /// ```
    pub fn from_env() -> Result<HttpExporterBuilder, ConfigError> {
        HttpExporterBuilder::from_env_vars(std::env::vars_os())
    }

    /// Settings from `OUTLAST_*` variables taken from `vars` (pass `std::env::vars_os()`, or
    /// a list in tests): [`ENV_ENDPOINT`] (required), [`ENV_HEADERS`], [`ENV_TIMEOUT`],
    /// [`ENV_GZIP`], [`ENV_CA_FILE`]. Other variables are ignored. The result can be adjusted
    /// further before [`build`](Self::build).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the variable whose value is missing or malformed
    /// (a header value is never echoed in the message: it may be a secret).
    ///
    /// # Examples
    ///
    /// ```
    /// use outlast_client::http::HttpExporterBuilder;
    ///
    /// let exporter = HttpExporterBuilder::from_env_vars([
    ///     ("OUTLAST_ENDPOINT", "http://127.0.0.1:4318/v1/logs"),
    ///     ("OUTLAST_HEADERS", "x-api-key=abc%3D, x-tenant=acme"),
    ///     ("OUTLAST_HTTP_TIMEOUT", "500ms"),
    /// ])?
    /// .build()?;
    /// # drop(exporter);
    /// # Ok::<(), outlast_client::ConfigError>(())
    /// ```
    pub fn from_env_vars<I, K, V>(vars: I) -> Result<HttpExporterBuilder, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let mut endpoint = None;
        let mut headers = None;
        let mut timeout = None;
        let mut gzip = None;
        let mut ca_file = None;
        for (k, v) in vars {
            let slot = match k.as_ref().to_str() {
                Some(ENV_ENDPOINT) => (&mut endpoint, ENV_ENDPOINT),
                Some(ENV_HEADERS) => (&mut headers, ENV_HEADERS),
                Some(ENV_TIMEOUT) => (&mut timeout, ENV_TIMEOUT),
                Some(ENV_GZIP) => (&mut gzip, ENV_GZIP),
                Some(ENV_CA_FILE) => (&mut ca_file, ENV_CA_FILE),
                _ => continue,
            };
            let (slot, name) = slot;
            let value = v
                .as_ref()
                .to_str()
                .ok_or_else(|| ConfigError::invalid(name, "value is not valid UTF-8"))?;
            *slot = Some(value.to_owned());
        }

        let endpoint = endpoint
            .filter(|e| !e.trim().is_empty())
            .ok_or_else(|| ConfigError::invalid(ENV_ENDPOINT, "not set"))?;
        let endpoint = endpoint.trim().to_owned();
        validate_url(ENV_ENDPOINT, &endpoint)?;
        let mut b = HttpExporterBuilder::new(endpoint);

        if let Some(h) = headers {
            for (name, value) in parse_header_list(ENV_HEADERS, &h)? {
                // Valid header values are visible ASCII or UTF-8 text, so this is lossless.
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                b = b.header(name.as_str(), value);
            }
        }
        // Empty means unset, as for every other variable.
        if let Some(t) = timeout.filter(|t| !t.trim().is_empty()) {
            let d = parse_duration(ENV_TIMEOUT, &t)?;
            b = b.timeout(positive(ENV_TIMEOUT, d)?);
        }
        if let Some(g) = gzip {
            let on = parse_bool(&g).ok_or_else(|| {
                ConfigError::invalid(
                    ENV_GZIP,
                    format!("{g:?} is not one of true/false, 1/0, yes/no, on/off, gzip/none"),
                )
            })?;
            b = b.gzip(on);
        }
        if let Some(path) = ca_file.filter(|p| !p.trim().is_empty()) {
            let pem = tls::read_ca_file(ENV_CA_FILE, std::path::Path::new(&path))?;
            tls::parse_pem_certs(ENV_CA_FILE, &pem)?;
            b = b.ca_pem(pem);
        }
        Ok(b)
    }

    /// Validates the settings and builds the exporter. Needs no runtime; the first request
    /// must run on a Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the parameter: `url` (unparsable, no scheme or one
    /// other than `http`/`https`, no host, a port outside 1–65535, credentials in the URL), `headers` (bad name or value),
    /// `timeout`, `probe_timeout`, `pool_idle_timeout` (zero; values above
    /// [`MAX_DURATION`](outlast_core::units::MAX_DURATION) are saturated, not refused),
    /// `max_in_flight` (zero),
    /// `health_url`, `ca_file` (unreadable, not a regular file, larger than
    /// [`MAX_CA_FILE_BYTES`](super::MAX_CA_FILE_BYTES)), `ca_pem` (no or bad certificate).
    pub fn build(self) -> Result<HttpExporter, ConfigError> {
        let uri = validate_url("url", &self.url)?;
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let (name, value) = parse_header("headers", name, value)?;
            headers.append(name, value);
        }
        if !headers.contains_key(http::header::USER_AGENT) {
            headers.insert(
                http::header::USER_AGENT,
                HeaderValue::from_static(USER_AGENT),
            );
        }
        // Durations are saturated at the edge: `Duration::MAX` means "no limit".
        let timeout = saturate(positive(
            "timeout",
            self.timeout.unwrap_or(DEFAULT_TIMEOUT),
        )?);
        let probe_timeout = saturate(positive(
            "probe_timeout",
            self.probe_timeout.unwrap_or(DEFAULT_PROBE_TIMEOUT),
        )?);
        // The pool adds its idle timeout to the current instant: at the ceiling, it is
        // handed "no idle timeout" instead, which it supports natively.
        let pool_idle_timeout = Some(positive(
            "pool_idle_timeout",
            self.pool_idle_timeout.unwrap_or(DEFAULT_POOL_IDLE_TIMEOUT),
        )?)
        .filter(|d| *d < MAX_DURATION);
        let max_in_flight = self.max_in_flight.unwrap_or(DEFAULT_HTTP_MAX_IN_FLIGHT);
        if max_in_flight == 0 {
            return Err(ConfigError::invalid("max_in_flight", "must be at least 1"));
        }
        let probe = match self.probe.unwrap_or_default() {
            Probe::TcpConnect => {
                let (host, port) = host_port(&uri);
                ProbeTarget::Tcp { host, port }
            }
            Probe::HealthUrl(u) => ProbeTarget::Health(validate_url("health_url", &u)?),
            Probe::Disabled => ProbeTarget::Disabled,
        };
        let mut extra_roots: Vec<CertificateDer<'static>> = Vec::new();
        let mut ca_param = "ca_pem";
        for source in &self.ca {
            match source {
                CaSource::File(path) => {
                    ca_param = "ca_file";
                    let pem = tls::read_ca_file("ca_file", path)?;
                    extra_roots.extend(tls::parse_pem_certs("ca_file", &pem)?);
                }
                CaSource::Pem(pem) => extra_roots.extend(tls::parse_pem_certs("ca_pem", pem)?),
            }
        }
        let tls = tls::client_config(ca_param, &extra_roots)?;
        Ok(HttpExporter::from_parts(Parts {
            uri,
            headers,
            timeout,
            gzip: self.gzip.unwrap_or(false),
            max_in_flight,
            probe,
            probe_timeout,
            pool_idle_timeout,
            tls,
            framing: self.framing.unwrap_or_default(),
            retryable_statuses: self.retryable_statuses.clone().map(Into::into),
        }))
    }
}

impl fmt::Debug for HttpExporterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Validate-and-redact: names that parse are shown with redaction; values never raw.
        let mut shown = HeaderMap::new();
        for (name, value) in &self.headers {
            if let Ok((n, v)) = parse_header("headers", name, value) {
                shown.append(n, v);
            }
        }
        f.debug_struct("HttpExporterBuilder")
            .field("url", &self.url)
            .field("headers", &Redacted(&shown))
            .field("timeout", &self.timeout)
            .field("gzip", &self.gzip)
            .field("max_in_flight", &self.max_in_flight)
            .field("probe", &self.probe)
            .field("probe_timeout", &self.probe_timeout)
            .field("pool_idle_timeout", &self.pool_idle_timeout)
            .field("custom_cas", &self.ca.len())
            .field("framing", &self.framing)
            .field("retryable_statuses", &self.retryable_statuses)
            .finish()
    }
}

/// Parses and checks an endpoint URL; errors name `param`. The messages say how to fix the
/// URL (a missing scheme is the most common mistake).
pub(crate) fn validate_url(param: &'static str, url: &str) -> Result<Uri, ConfigError> {
    let trimmed = url.trim();
    if trimmed.is_empty() {
        return Err(ConfigError::invalid(
            param,
            "empty URL: use http://host:port/path",
        ));
    }
    if !trimmed.contains("://") {
        // Only echo the value back when it cannot hold credentials.
        let example = if trimmed.contains('@') || trimmed.starts_with('/') {
            "e.g. http://127.0.0.1:4318/v1/logs".to_owned()
        } else {
            format!("e.g. \"http://{trimmed}\"")
        };
        return Err(ConfigError::invalid(
            param,
            format!("missing scheme: add http:// or https:// in front ({example})"),
        ));
    }
    let uri: Uri = trimmed
        .parse()
        .map_err(|e| ConfigError::invalid(param, format!("not a valid URL: {e}")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(ConfigError::invalid(
                param,
                format!("unsupported scheme {other:?}: use http:// or https://"),
            ));
        }
        None => {
            return Err(ConfigError::invalid(
                param,
                "missing scheme: add http:// or https:// in front",
            ));
        }
    }
    let Some(authority) = uri.authority() else {
        return Err(ConfigError::invalid(param, "missing host"));
    };
    if authority.as_str().contains('@') {
        return Err(ConfigError::invalid(
            param,
            "credentials in the URL are not supported: send them in an authorization header",
        ));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(ConfigError::invalid(param, "missing host"));
    }
    if let Some(port) = port_text(authority.as_str())
        && !port.parse::<u16>().is_ok_and(|p| p != 0)
    {
        return Err(ConfigError::invalid(
            param,
            format!("port {port:?} is not a number from 1 to 65535"),
        ));
    }
    Ok(uri)
}

/// The text after the port colon of an authority (`host:port`, `[v6]:port`), if there is one.
fn port_text(authority: &str) -> Option<&str> {
    let after_host = match authority.rfind(']') {
        Some(i) => &authority[i + 1..],
        None => authority,
    };
    after_host.rfind(':').map(|i| &after_host[i + 1..])
}

/// The host (without IPv6 brackets) and port (default by scheme) of a validated URL.
pub(crate) fn host_port(uri: &Uri) -> (String, u16) {
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let default_port = if uri.scheme_str() == Some("https") {
        443
    } else {
        80
    };
    (host, uri.port_u16().unwrap_or(default_port))
}

fn positive(param: &'static str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        Err(ConfigError::invalid(param, "must be greater than zero"))
    } else {
        Ok(d)
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" | "gzip" => Some(true),
        "0" | "false" | "no" | "off" | "none" | "" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param_of(e: &ConfigError) -> &'static str {
        match e {
            ConfigError::Invalid { param, .. } => param,
            _ => "other",
        }
    }

    #[test]
    fn build_rejects_bad_urls_naming_the_url_parameter() {
        for bad in [
            "not a url",
            "ftp://example.com/x",
            "example.com/v1",
            "http://user:pw@example.com/",
            "/v1/traces",
            "http://127.0.0.1:99999/v1/logs",
            "http://127.0.0.1:0/",
            "http://127.0.0.1:/",
            "http://[::1]:65536/",
            "",
        ] {
            let e = HttpExporter::builder(bad).build().expect_err(bad);
            assert_eq!(param_of(&e), "url", "{bad}: {e}");
        }
        for good in [
            "http://127.0.0.1:65535/",
            "https://[::1]/x",
            "http://[::1]:4318/x",
            " http://collector/v1 ",
        ] {
            assert!(HttpExporter::builder(good).build().is_ok(), "{good}");
        }
    }

    #[test]
    fn url_errors_say_how_to_fix_the_url() {
        let msg = |url: &str| {
            HttpExporter::builder(url)
                .build()
                .expect_err(url)
                .to_string()
        };
        assert_eq!(
            msg("127.0.0.1:4318/v1/logs"),
            "invalid configuration: url: missing scheme: add http:// or https:// in front (e.g. \"http://127.0.0.1:4318/v1/logs\")"
        );
        assert_eq!(
            msg("localhost:4318"),
            "invalid configuration: url: missing scheme: add http:// or https:// in front (e.g. \"http://localhost:4318\")"
        );
        assert_eq!(
            msg("http://127.0.0.1:99999/v1/logs"),
            "invalid configuration: url: port \"99999\" is not a number from 1 to 65535"
        );
        assert_eq!(
            msg("grpc://collector:4317"),
            "invalid configuration: url: unsupported scheme \"grpc\": use http:// or https://"
        );
        // A value that may hold credentials is not echoed.
        assert!(!msg("user:secret@collector/v1").contains("secret"));
    }

    #[test]
    fn build_rejects_bad_headers_and_zero_limits_naming_each_parameter() {
        let ok = || HttpExporter::builder("http://127.0.0.1:1/");
        let cases = [
            (ok().header("bad name", "v"), "headers"),
            (ok().header("x-a", "line\nbreak"), "headers"),
            (ok().timeout(Duration::ZERO), "timeout"),
            (ok().probe_timeout(Duration::ZERO), "probe_timeout"),
            (ok().pool_idle_timeout(Duration::ZERO), "pool_idle_timeout"),
            (ok().max_in_flight(0), "max_in_flight"),
            (ok().probe(Probe::HealthUrl("nope".into())), "health_url"),
            (ok().ca_pem("garbage"), "ca_pem"),
            (ok().ca_file("/nonexistent/outlast-ca.pem"), "ca_file"),
        ];
        for (b, param) in cases {
            let e = b.build().expect_err(param);
            assert_eq!(param_of(&e), param, "{e}");
        }
    }

    #[test]
    fn an_empty_timeout_variable_keeps_the_default() {
        let e = HttpExporterBuilder::from_env_vars([
            (ENV_ENDPOINT, "http://127.0.0.1:4318/"),
            (ENV_TIMEOUT, "  "),
        ])
        .and_then(HttpExporterBuilder::build)
        .expect("empty is unset");
        assert_eq!(e.timeout(), DEFAULT_TIMEOUT);
        let err = HttpExporterBuilder::from_env_vars([
            (ENV_ENDPOINT, "http://127.0.0.1:4318/"),
            (ENV_TIMEOUT, "0"),
        ])
        .expect_err("zero refused");
        assert_eq!(param_of(&err), ENV_TIMEOUT);
    }

    #[test]
    fn booleans_parse_in_the_documented_forms() {
        assert_eq!(parse_bool("Gzip"), Some(true));
        assert_eq!(parse_bool("off"), Some(false));
        assert_eq!(parse_bool("maybe"), None);
    }

    #[test]
    fn host_port_defaults_by_scheme_and_strips_ipv6_brackets() {
        let u: Uri = "https://[::1]/x".parse().expect("uri");
        assert_eq!(host_port(&u), ("::1".to_owned(), 443));
        let u: Uri = "http://collector:4318/v1".parse().expect("uri");
        assert_eq!(host_port(&u), ("collector".to_owned(), 4318));
    }
}
