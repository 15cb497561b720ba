//! The HTTP exporter: sends each payload as one `POST` over a pooled keep-alive hyper client.
//!
//! [`HttpExporter`] implements [`Exporter`](crate::Exporter) for OTLP/HTTP collectors and any endpoint that
//! takes a request body per batch.
//!
//! # On the wire
//!
//! - One `POST` to the configured URL per payload, HTTP/1.1 with keep-alive. Connections come
//!   from a pool (hyper-util's client); idle ones are closed after
//!   [`DEFAULT_POOL_IDLE_TIMEOUT`] (the pool has a timer, so this is enforced, not only
//!   checked on reuse). Every response body is read (up to [`DRAIN_LIMIT_BYTES`]) so that the
//!   connection goes back to the pool.
//! - `Content-Type` is the payload's [`content_type`](crate::Payload::content_type)
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
//! content type in one `POST` ([`Exporter::export_many`](crate::Exporter::export_many)):
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
//! ([`Exporter::accepts_encoding`](crate::Exporter::accepts_encoding)): a record the client stored gzipped is sent as it was
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
//! | 408, 429, 500, 502, 503, 504 (or the list given to [`retryable_statuses`](HttpExporterBuilder::retryable_statuses)) | retryable, the backend answered: [`ExportError::Failing`](crate::ExportError::Failing), or for 429 and 503 with a `Retry-After` delay (seconds or HTTP-date; an unparsable value is ignored) [`ExportError::Retryable`](crate::ExportError::Retryable) with that delay |
//! | other statuses (400, 401, 403, 404, 413, 3xx...) | [`ExportError::Permanent`](crate::ExportError::Permanent), with the status and the start of the body |
//! | invalid response | [`ExportError::Failing`](crate::ExportError::Failing) |
//! | connection refused, reset, closed, TLS failure | [`ExportError::Unreachable`](crate::ExportError::Unreachable): the client probes on its short cadence |
//! | request timeout | [`ExportError::Timeout`](crate::ExportError::Timeout) |
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
mod exporter;
mod headers;
mod tls;

pub use builder::{
    DEFAULT_HTTP_MAX_IN_FLIGHT, DEFAULT_POOL_IDLE_TIMEOUT, DEFAULT_PROBE_TIMEOUT, DEFAULT_TIMEOUT,
    ENV_CA_FILE, ENV_ENDPOINT, ENV_GZIP, ENV_HEADERS, ENV_TIMEOUT, HttpExporterBuilder, Probe,
    SETTINGS,
};
pub use error::{HttpError, is_retryable_status};
pub use exporter::{
    BODY_EXCERPT_BYTES, DRAIN_LIMIT_BYTES, HttpExporter, KEY_HEADER, KEYS_HEADER, PayloadFraming,
    RECORDS_HEADER, SuccessResponse,
};
pub use headers::{encode_key, is_sensitive_header};
pub use tls::MAX_CA_FILE_BYTES;
