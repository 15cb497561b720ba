//! [`HttpExporter`]: one request per payload or per merged batch, responses classified into
//! [`ExportError`]s, the probe, and what goes on the wire (see the [module documentation](super)).

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

use super::body::Body;
use super::error::{self, HttpError};
use super::headers::{self, encode_key};

/// The header carrying the payload's [`key`](outlast_core::PayloadMeta::key) (percent-encoded by
/// [`encode_key`]), when it has
/// one, so that a receiver can de-duplicate.
pub const KEY_HEADER: &str = "x-outlast-key";

/// The header of a merged request listing its payloads' keys ([`encode_key`]), one header
/// line per payload in order (empty for a payload without a key); see the
/// [module documentation](super).
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
pub(super) const USER_AGENT: &str = concat!("outlast/", env!("CARGO_PKG_VERSION"));

type HttpsClient = Client<HttpsConnector<HttpConnector>, Body>;

/// What the payloads sent through an [`HttpExporter`] are, so that the client's replay may
/// merge consecutive spooled payloads into one request (see "Coalesced replay" in the
/// [module documentation](super)). Set it only if every payload sent through the exporter
/// is of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PayloadFraming {
    /// Bytes that must travel alone: never merged. The default.
    #[default]
    Opaque,
    /// OTLP/HTTP protobuf export requests, all of one signal (the exporter's URL is one
    /// `/v1/<signal>` endpoint). Those with content type `application/x-protobuf` are
    /// merged by concatenation.
    OtlpProtobuf,
    /// Newline-delimited JSON: payloads of the same content type are joined by `\n`.
    NdJson,
}

/// Where [`HttpExporter::probe`](Exporter::probe) looks.
#[derive(Debug, Clone)]
pub(super) enum ProbeTarget {
    Tcp { host: String, port: u16 },
    Health(Uri),
    Disabled,
}

/// Validated settings handed from the builder.
pub(super) struct Parts {
    pub(super) uri: Uri,
    pub(super) headers: HeaderMap,
    pub(super) timeout: Duration,
    pub(super) gzip: bool,
    pub(super) max_in_flight: usize,
    pub(super) probe: ProbeTarget,
    pub(super) probe_timeout: Duration,
    /// `None`: idle connections are kept until the server closes them.
    pub(super) pool_idle_timeout: Option<Duration>,
    pub(super) tls: rustls::ClientConfig,
    pub(super) framing: PayloadFraming,
    /// `None`: the default list ([`is_retryable_status`](super::is_retryable_status)).
    pub(super) retryable_statuses: Option<std::sync::Arc<[StatusCode]>>,
}

/// Sends payloads to an HTTP(S) endpoint; see the [module documentation](super) for what goes
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
    pub(super) fn from_parts(p: Parts) -> HttpExporter {
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
    /// See the status mapping in the [module documentation](super).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future abandons the request; its connection is closed, not
    /// returned to the pool, and the exporter stays usable.
    async fn export(&self, payload: &Payload) -> Result<(), ExportError> {
        let req = self.request(payload);
        self.finish(req).await
    }

    /// Gzip when gzip is on (see "Compressed records" in the [module documentation](super)).
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
    /// [module documentation](super)), bounded by the request timeout.
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
