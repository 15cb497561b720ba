//! The HTTP exporter: sends each payload as one `POST` over a pooled keep-alive hyper client.
//!
//! [`HttpExporter`] implements [`Exporter`] for OTLP/HTTP collectors and any endpoint that
//! takes a request body per batch.
//!
//! # On the wire
//!
//! - One `POST` to the configured URL per payload, HTTP/1.1 with keep-alive. Connections come
//!   from a pool (hyper-util's client); idle ones are closed after
//!   [`DEFAULT_POOL_IDLE_TIMEOUT`] (the pool has a timer, so this is enforced, not only
//!   checked on reuse). Every response body is read (up to [`DRAIN_LIMIT_BYTES`]) so that the
//!   connection goes back to the pool.
//! - `Content-Type` is the payload's [`content_type`](Payload::content_type)
//!   (`application/x-protobuf` for OTLP protobuf, `application/json` for JSON).
//! - With [`gzip`](HttpExporterBuilder::gzip) on, the body is gzip-compressed and
//!   `Content-Encoding: gzip` is sent.
//! - When the payload has a [`key`](outlast_core::PayloadMeta::key), it is sent in the
//!   [`KEY_HEADER`] (`x-outlast-key`) header, so a backend (or
//!   `outlast_client::testing::TestReceiver`) can recognise a payload delivered twice
//!   (delivery is at least once). A key that is not visible ASCII (a newline, a space,
//!   non-ASCII letters) or contains `%` is percent-encoded ([`encode_key`]), so every key
//!   arrives.
//! - Every request (connect, TLS handshake, body, response) is bounded by the request
//!   timeout: hyper's client has no timeout of its own.
//!
//! # Coalesced replay
//!
//! With [`payload_framing`](HttpExporterBuilder::payload_framing) set to say what the
//! payloads are, the client's replay may send several consecutive spooled payloads of one
//! content type in one `POST` ([`Exporter::export_many`]):
//!
//! | framing | merges | body of a merged request |
//! |---|---|---|
//! | [`PayloadFraming::Opaque`] (default) | never | — |
//! | [`PayloadFraming::OtlpProtobuf`] | payloads with content type `application/x-protobuf` | the payloads' bytes concatenated: OTLP export requests of one signal concatenated are one valid request (protobuf merges repeated fields) |
//! | [`PayloadFraming::NdJson`] | payloads of the same content type | the payloads joined by `\n` (none added after a payload that already ends with one) |
//!
//! A merged request carries [`RECORDS_HEADER`] (`x-outlast-records`, how many payloads it
//! holds) and, if any of them has a key, one [`KEYS_HEADER`] (`x-outlast-keys`) line per
//! payload, in order, with the payload's key percent-encoded as for `x-outlast-key`
//! ([`encode_key`]; empty for a payload without one). It carries no `x-outlast-key`. With gzip on, the merged
//! body is compressed as a whole.
//!
//! # Compressed records
//!
//! With gzip on, the exporter takes gzip-encoded payloads
//! ([`Exporter::accepts_encoding`]): a record the client stored gzipped is sent as it was
//! stored, with `Content-Encoding: gzip`, never compressed a second time. Merged
//! [`PayloadFraming::OtlpProtobuf`] records that are all gzipped are sent as their gzip
//! members one after the other, which is one gzip stream of the concatenated requests
//! (RFC 1952: a gzip file is a series of members; Go's `compress/gzip`, which the
//! OpenTelemetry Collector uses, and the `testing` receiver read every member). Merged
//! [`PayloadFraming::NdJson`] records are decompressed to be joined (a newline goes between
//! payloads only where one is missing) and the body is compressed once. A payload whose
//! encoding is gzip is always sent with `Content-Encoding: gzip`, gzip on or not.
//!
//! # Status mapping
//!
//! | Outcome | Result |
//! |---|---|
//! | 2xx | `Ok(())` |
//! | 408, 429, 500, 502, 503, 504 (or the list given to [`retryable_statuses`](HttpExporterBuilder::retryable_statuses)) | retryable, the backend answered: [`ExportError::Failing`], or for 429 and 503 with a `Retry-After` delay (seconds or HTTP-date; an unparsable value is ignored) [`ExportError::Retryable`] with that delay |
//! | other statuses (400, 401, 403, 404, 413, 3xx...) | [`ExportError::Permanent`], with the status and the start of the body |
//! | invalid response | [`ExportError::Failing`] |
//! | connection refused, reset, closed, TLS failure | [`ExportError::Unreachable`]: the client probes on its short cadence |
//! | request timeout | [`ExportError::Timeout`] |
//!
//! The error's source is an [`HttpError`] (except for the timeout).
//!
//! # TLS: why rustls with ring
//!
//! HTTPS uses rustls through hyper-rustls, with the `ring` crypto provider, and trusts the
//! Mozilla root certificates compiled in from `webpki-roots`, plus any
//! [custom CA](HttpExporterBuilder::ca_file). Certificate verification is always on.
//!
//! - *rustls, not native-tls*: no dependency on the system's OpenSSL (version skew, missing
//!   headers in slim containers, a different TLS stack per OS); the same behaviour
//!   everywhere, in memory-safe Rust.
//! - *ring, not aws-lc-rs*: `ring` builds with a C compiler only; `aws-lc-rs` (rustls'
//!   default) needs CMake, and sometimes Go or NASM, which many build images lack.
//! - *webpki-roots, not the system store*: it works in `FROM scratch` and distroless images
//!   and in serverless runtimes where no CA bundle is installed. Private collectors add their
//!   CA with [`ca_file`](HttpExporterBuilder::ca_file) / [`ca_pem`](HttpExporterBuilder::ca_pem)
//!   or `OUTLAST_CA_FILE`.
//!
//! # Secrets
//!
//! Header values of `Authorization`, `Proxy-Authorization`, `Cookie` and any header whose
//! name contains `key`, `token`, `secret` or `auth` ([`is_sensitive_header`]) are marked
//! sensitive, printed as `<redacted>` by Debug, and never logged. URLs with credentials
//! (`https://user:pw@host`) are refused: put them in a header.

mod body;
mod builder;
mod error;
mod headers;
mod tls;

use std::fmt;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use outlast_core::{
    Coalescing, ContentEncoding, ContentType, ExportError, Exporter, Payload, Reachability,
};

pub use builder::PayloadFraming;
pub use builder::{
    DEFAULT_HTTP_MAX_IN_FLIGHT, DEFAULT_POOL_IDLE_TIMEOUT, DEFAULT_PROBE_TIMEOUT, DEFAULT_TIMEOUT,
    ENV_CA_FILE, ENV_ENDPOINT, ENV_GZIP, ENV_HEADERS, ENV_TIMEOUT, HttpExporterBuilder, Probe,
    SETTINGS,
};
pub use error::{HttpError, is_retryable_status};
pub use headers::{encode_key, is_sensitive_header};
pub use tls::MAX_CA_FILE_BYTES;

use body::Body;

/// The header carrying the payload's [`key`](outlast_core::PayloadMeta::key) (percent-encoded by
/// [`encode_key`]), when it has
/// one, so that a receiver can de-duplicate.
pub const KEY_HEADER: &str = "x-outlast-key";

/// The header of a merged request listing its payloads' keys ([`encode_key`]), one header
/// line per payload in order (empty for a payload without a key); see the
/// [module documentation](self).
pub const KEYS_HEADER: &str = "x-outlast-keys";

/// The header of a merged request saying how many payloads it holds.
pub const RECORDS_HEADER: &str = "x-outlast-records";

/// At most this many bytes of an error response body are kept in
/// [`HttpError::Status`]: enough for a collector's error message, bounded for logs.
pub const BODY_EXCERPT_BYTES: usize = 512;

/// At most this many response body bytes are read to return a connection to the pool; a
/// longer body is abandoned and its connection closed instead of reading without bound.
pub const DRAIN_LIMIT_BYTES: u64 = 64 * 1024;

/// The default `User-Agent`.
const USER_AGENT: &str = concat!("outlast/", env!("CARGO_PKG_VERSION"));

type HttpsClient = Client<HttpsConnector<HttpConnector>, Body>;

/// Where [`HttpExporter::probe`](Exporter::probe) looks.
#[derive(Debug, Clone)]
enum ProbeTarget {
    Tcp { host: String, port: u16 },
    Health(Uri),
    Disabled,
}

/// Validated settings handed from the builder.
struct Parts {
    uri: Uri,
    headers: HeaderMap,
    timeout: Duration,
    gzip: bool,
    max_in_flight: usize,
    probe: ProbeTarget,
    probe_timeout: Duration,
    /// `None`: idle connections are kept until the server closes them.
    pool_idle_timeout: Option<Duration>,
    tls: rustls::ClientConfig,
    framing: PayloadFraming,
    /// `None`: the default list ([`is_retryable_status`]).
    retryable_statuses: Option<std::sync::Arc<[StatusCode]>>,
}

/// Sends payloads to an HTTP(S) endpoint; see the [module documentation](self) for what goes
/// on the wire and how responses are classified.
///
/// Cloning is cheap and shares the connection pool.
///
/// # Examples
///
/// ```no_run
/// use outlast_client::{ContentType, Exporter, Payload};
/// use outlast_client::http::HttpExporter;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let exporter = HttpExporter::builder("http://127.0.0.1:4318/v1/traces").build()?;
/// let batch = Payload::new(vec![0x0a, 0x00]).with_content_type(ContentType::Protobuf);
/// exporter.export(&batch).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct HttpExporter {
    client: HttpsClient,
    uri: Uri,
    headers: HeaderMap,
    timeout: Duration,
    gzip: bool,
    max_in_flight: usize,
    probe: ProbeTarget,
    probe_timeout: Duration,
    framing: PayloadFraming,
    retryable_statuses: Option<std::sync::Arc<[StatusCode]>>,
    on_success: Option<SuccessHook>,
}

/// What a successful (2xx) response said, as handed to a hook set with
/// [`HttpExporter::with_success_hook`]: its status, headers, and the first
/// [`DRAIN_LIMIT_BYTES`] bytes of its body.
#[derive(Debug)]
#[non_exhaustive]
pub struct SuccessResponse<'a> {
    /// The 2xx status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: &'a HeaderMap,
    /// The body, at most [`DRAIN_LIMIT_BYTES`] bytes of it.
    pub body: &'a [u8],
}

/// A hook called with every successful response.
type SuccessHook = std::sync::Arc<dyn Fn(&SuccessResponse<'_>) + Send + Sync>;

/// A failed attempt and the `Retry-After` delay the server gave with it.
struct Failure {
    error: HttpError,
    retry_after: Option<Duration>,
}

impl From<HttpError> for Failure {
    fn from(error: HttpError) -> Failure {
        Failure {
            error,
            retry_after: None,
        }
    }
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

    fn from_parts(p: Parts) -> HttpExporter {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(p.tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(p.pool_idle_timeout)
            .pool_max_idle_per_host(p.max_in_flight)
            .build(connector);
        HttpExporter {
            client,
            uri: p.uri,
            headers: p.headers,
            timeout: p.timeout,
            gzip: p.gzip,
            max_in_flight: p.max_in_flight,
            probe: p.probe,
            probe_timeout: p.probe_timeout,
            framing: p.framing,
            retryable_statuses: p.retryable_statuses,
            on_success: None,
        }
    }

    /// Calls `hook` with every successful (2xx) response, its body read (up to
    /// [`DRAIN_LIMIT_BYTES`]) instead of discarded: for protocols whose success carries news,
    /// such as OTLP's `partial_success` (items the collector accepted the request for but
    /// rejected). The hook runs on the exporting task: keep it short, and never block.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use outlast_client::http::HttpExporter;
    ///
    /// # fn main() -> Result<(), outlast_client::ConfigError> {
    /// let body_bytes = Arc::new(AtomicU64::new(0));
    /// let seen = Arc::clone(&body_bytes);
    /// let exporter = HttpExporter::builder("http://127.0.0.1:4318/v1/traces")
    ///     .build()?
    ///     .with_success_hook(move |r| {
    ///         seen.fetch_add(r.body.len() as u64, Ordering::Relaxed);
    ///     });
    /// # let _ = exporter; Ok(()) }
    /// ```
    #[must_use]
    pub fn with_success_hook(
        mut self,
        hook: impl Fn(&SuccessResponse<'_>) + Send + Sync + 'static,
    ) -> HttpExporter {
        self.on_success = Some(std::sync::Arc::new(hook));
        self
    }

    /// The endpoint URL.
    pub fn url(&self) -> &Uri {
        &self.uri
    }

    /// The request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn request(&self, payload: &Payload) -> Result<Request<Body>, HttpError> {
        let mut req = self.post(
            Body::from(payload.bytes().clone()),
            payload.content_type(),
            payload.content_encoding(),
        )?;
        if let Some(key) = &payload.meta().key {
            // Percent-encoded to visible ASCII, which is always a valid header value.
            match HeaderValue::from_str(&encode_key(key)) {
                Ok(v) => {
                    req.headers_mut().insert(KEY_HEADER, v);
                }
                Err(_) => {
                    tracing::debug!(target: crate::LOG_TARGET, "payload key is not a valid header value; not sent")
                }
            }
        }
        Ok(req)
    }

    /// One request for several payloads (see "Coalesced replay" in the module docs).
    /// The payloads' bytes are not copied: the body hands them to hyper one after the other
    /// (see [`body`]).
    fn merged_request(&self, payloads: &[Payload]) -> Result<Request<Body>, HttpError> {
        let Some(first) = payloads.first() else {
            return self.post(
                Body::default(),
                &ContentType::OctetStream,
                ContentEncoding::Identity,
            );
        };
        // Gzip members concatenate into one gzip stream; joining NDJSON needs the text.
        let as_members = self.framing != PayloadFraming::NdJson
            && payloads
                .iter()
                .all(|p| p.content_encoding() == ContentEncoding::Gzip);
        let mut body = Body::default();
        // What the records decoded to join them hold, at most.
        let mut decode_budget = MAX_DECODED_BODY_BYTES;
        for p in payloads {
            if self.framing == PayloadFraming::NdJson
                && body.last_byte().is_some_and(|b| b != b'\n')
            {
                body.push(Bytes::from_static(b"\n"));
            }
            if as_members || p.content_encoding() == ContentEncoding::Identity {
                body.push(p.bytes().clone());
            } else {
                let decoded = crate::compress::gunzip(p.bytes(), decode_budget).map_err(|why| {
                    HttpError::Compress {
                        source: std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            match why {
                                crate::compress::Undecodable::TooLarge => format!(
                                    "gzip payloads of the merged request decode to more than {MAX_DECODED_BODY_BYTES} bytes"
                                ),
                                crate::compress::Undecodable::Corrupt => {
                                    "a gzip payload of the merged request does not decode".to_owned()
                                }
                            },
                        ),
                    }
                })?;
                decode_budget = decode_budget.saturating_sub(decoded.len() as u64);
                body.push(decoded);
            }
        }
        let encoding = if as_members {
            ContentEncoding::Gzip
        } else {
            ContentEncoding::Identity
        };
        let mut req = self.post(body, first.content_type(), encoding)?;
        let headers = req.headers_mut();
        headers.insert(RECORDS_HEADER, HeaderValue::from(payloads.len()));
        if payloads.iter().any(|p| p.meta().key.is_some()) {
            for p in payloads {
                let value = p
                    .meta()
                    .key
                    .as_deref()
                    .and_then(|k| HeaderValue::from_str(&encode_key(k)).ok())
                    .unwrap_or_else(|| HeaderValue::from_static(""));
                headers.append(KEYS_HEADER, value);
            }
        }
        Ok(req)
    }

    /// A `POST` of `bytes` (gzipped if configured, unless `encoding` says they are gzip
    /// already: then as they are) with this content type and the configured headers.
    fn post(
        &self,
        body: Body,
        content_type: &ContentType,
        encoding: ContentEncoding,
    ) -> Result<Request<Body>, HttpError> {
        let mut headers = self.headers.clone();
        let body = if encoding == ContentEncoding::Gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            body
        } else if self.gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            body.gzip()
                .map_err(|source| HttpError::Compress { source })?
        } else {
            body
        };
        // The common media types are static header values: no parsing per request.
        let content_type_value = match content_type {
            ContentType::Protobuf => Ok(HeaderValue::from_static("application/x-protobuf")),
            ContentType::Json => Ok(HeaderValue::from_static("application/json")),
            ContentType::OctetStream => Ok(HeaderValue::from_static("application/octet-stream")),
            other => HeaderValue::from_str(other.as_str()),
        };
        match content_type_value {
            Ok(v) => {
                headers.insert(CONTENT_TYPE, v);
            }
            Err(_) => {
                tracing::debug!(target: crate::LOG_TARGET,
                    content_type = content_type.as_str(),
                    "payload content type is not a valid header value; sending none"
                );
                headers.remove(CONTENT_TYPE);
            }
        }
        let mut req = Request::new(body);
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = headers;
        Ok(req)
    }

    async fn send(&self, req: Request<Body>) -> Result<(), Failure> {
        let resp = self
            .client
            .request(req)
            .await
            .map_err(HttpError::from_client)?;
        let status = resp.status();
        if status.is_success() {
            if let Some(hook) = &self.on_success {
                let (parts, body) = resp.into_parts();
                let body = drain(body, DRAIN_LIMIT_BYTES as usize).await;
                hook(&SuccessResponse {
                    status,
                    headers: &parts.headers,
                    body: &body,
                });
            } else {
                drain(resp.into_body(), 0).await;
            }
            return Ok(());
        }
        let retry_after = if status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::SERVICE_UNAVAILABLE
        {
            retry_after(resp.headers())
        } else {
            None
        };
        let excerpt = drain(resp.into_body(), BODY_EXCERPT_BYTES).await;
        tracing::debug!(target: crate::LOG_TARGET,
            url = %self.uri,
            status = status.as_u16(),
            retry_after_secs = retry_after.map(|d| d.as_secs_f64()),
            "export answered with a non-success status"
        );
        Err(Failure {
            error: HttpError::Status {
                status,
                body_excerpt: String::from_utf8_lossy(&excerpt).into_owned(),
            },
            retry_after,
        })
    }

    async fn probe_health(&self, uri: &Uri) -> Reachability {
        let mut req = Request::new(Body::default());
        *req.uri_mut() = uri.clone();
        let mut headers = self.headers.clone();
        headers.remove(CONTENT_TYPE);
        *req.headers_mut() = headers;
        match self.client.request(req).await {
            Ok(resp) => {
                let ok = resp.status().is_success();
                drain(resp.into_body(), 0).await;
                if ok {
                    Reachability::Reachable
                } else {
                    Reachability::Unreachable
                }
            }
            Err(_) => Reachability::Unreachable,
        }
    }
}

impl Exporter for HttpExporter {
    /// Sends the payload as one `POST`, bounded by the request timeout.
    ///
    /// # Errors
    ///
    /// See the status mapping in the [module documentation](self).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future abandons the request; its connection is closed, not
    /// returned to the pool, and the exporter stays usable.
    async fn export(&self, payload: &Payload) -> Result<(), ExportError> {
        let req = self.request(payload);
        self.finish(req).await
    }

    /// Gzip when gzip is on (see "Compressed records" in the [module documentation](self)).
    fn accepts_encoding(&self, encoding: ContentEncoding) -> bool {
        encoding == ContentEncoding::Identity || (self.gzip && encoding == ContentEncoding::Gzip)
    }

    /// Says which payloads merge, by the [`PayloadFraming`] set on the builder; no caps of
    /// its own (the client's coalescing caps apply).
    fn coalescing(&self, payload: &Payload) -> Option<Coalescing> {
        match self.framing {
            PayloadFraming::Opaque => None,
            PayloadFraming::OtlpProtobuf => {
                (payload.content_type() == &ContentType::Protobuf).then_some(Coalescing::UNLIMITED)
            }
            PayloadFraming::NdJson => Some(Coalescing::UNLIMITED),
        }
    }

    /// Sends the payloads as one `POST` (see "Coalesced replay" in the
    /// [module documentation](self)), bounded by the request timeout.
    ///
    /// # Errors
    ///
    /// As [`export`](Exporter::export), for the merged request as a whole.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as `export`.
    async fn export_many(&self, payloads: &[Payload]) -> Result<(), ExportError> {
        match payloads {
            [one] => self.export(one).await,
            many => {
                let req = self.merged_request(many);
                self.finish(req).await
            }
        }
    }

    /// A TCP connect to the endpoint (default), or a `GET` of the health URL, bounded by the
    /// probe timeout.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    async fn probe(&self) -> Reachability {
        let probe = async {
            match &self.probe {
                ProbeTarget::Tcp { host, port } => {
                    match tokio::net::TcpStream::connect((host.as_str(), *port)).await {
                        Ok(_) => Reachability::Reachable,
                        Err(_) => Reachability::Unreachable,
                    }
                }
                ProbeTarget::Health(uri) => self.probe_health(uri).await,
                ProbeTarget::Disabled => Reachability::Unsupported,
            }
        };
        tokio::time::timeout(self.probe_timeout, probe)
            .await
            .unwrap_or(Reachability::Unreachable)
    }

    fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// Every export is bounded by the request timeout (connect, TLS, body and response).
    fn export_timeout(&self) -> Option<Duration> {
        Some(self.timeout)
    }

    /// The endpoint URL without credentials or query: `scheme://host:port/path` (the port
    /// only if the URL names one).
    fn identity(&self) -> Option<String> {
        let scheme = self.uri.scheme_str().unwrap_or("http");
        let host = self.uri.host().unwrap_or_default();
        let port = self
            .uri
            .port_u16()
            .map(|p| format!(":{p}"))
            .unwrap_or_default();
        Some(format!("{scheme}://{host}{port}{}", self.uri.path()))
    }
}

impl HttpExporter {
    /// Sends a request bounded by the request timeout and classifies the outcome.
    /// A failure for the pipeline: by the status list given to
    /// [`retryable_statuses`](HttpExporterBuilder::retryable_statuses) for a status, else
    /// as [`HttpError::into_export_error`] says.
    fn classify(&self, error: HttpError, retry_after: Option<Duration>) -> ExportError {
        match (&self.retryable_statuses, error.status()) {
            (Some(list), Some(status)) if list.contains(&status) => {
                error::answered_retryable(error, retry_after)
            }
            (Some(_), Some(_)) => ExportError::permanent(error),
            _ => error.into_export_error(retry_after),
        }
    }

    async fn finish(&self, req: Result<Request<Body>, HttpError>) -> Result<(), ExportError> {
        let send = async { self.send(req?).await };
        match tokio::time::timeout(self.timeout, send).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(Failure { error, retry_after })) => {
                if !error.is_status() {
                    tracing::debug!(target: crate::LOG_TARGET, url = %self.uri, error = %outlast_core::ErrorChain(&error), "export failed");
                }
                Err(self.classify(error, retry_after))
            }
            Err(_) => {
                tracing::debug!(target: crate::LOG_TARGET, url = %self.uri, timeout_secs = self.timeout.as_secs_f64(), "export timed out");
                Err(ExportError::Timeout {
                    after: self.timeout,
                })
            }
        }
    }
}

impl fmt::Debug for HttpExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpExporter")
            .field("url", &self.uri)
            .field("headers", &headers::Redacted(&self.headers))
            .field("timeout", &self.timeout)
            .field("gzip", &self.gzip)
            .field("max_in_flight", &self.max_in_flight)
            .field("probe", &self.probe)
            .field("probe_timeout", &self.probe_timeout)
            .field("framing", &self.framing)
            .field("retryable_statuses", &self.retryable_statuses)
            .field("on_success", &self.on_success.as_ref().map(|_| "hook"))
            .finish_non_exhaustive()
    }
}

/// The `Retry-After` delay, if present and parsable; an unparsable value is ignored.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    match outlast_core::retry::parse_retry_after(value, SystemTime::now()) {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::debug!(target: crate::LOG_TARGET, error = %e, "ignoring an unparsable Retry-After header");
            None
        }
    }
}

/// Reads the body (at most [`DRAIN_LIMIT_BYTES`]) so the connection can be reused; returns
/// its first `keep` bytes. A body error ends the read: the connection is then closed by
/// hyper, which is all that can be done with it.
async fn drain(mut body: Incoming, keep: usize) -> Vec<u8> {
    let mut excerpt = Vec::new();
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            break;
        };
        if let Some(data) = frame.data_ref() {
            if excerpt.len() < keep {
                let take = (keep - excerpt.len()).min(data.len());
                excerpt.extend_from_slice(&data[..take]);
            }
            total = total.saturating_add(data.len() as u64);
            if total > DRAIN_LIMIT_BYTES {
                break;
            }
        }
    }
    excerpt
}

/// Most bytes the gzip payloads of one merged request may decode to when they are decoded
/// to be joined: the format's limit on one record. The client's replay never comes near it
/// (it merges records up to its `coalesce_max_bytes`, counted decoded, each at most
/// `max_record_bytes`); it bounds what any other caller of `export_many` can make the
/// exporter hold.
const MAX_DECODED_BODY_BYTES: u64 = outlast_spool::FORMAT_MAX_RECORD_BYTES;
