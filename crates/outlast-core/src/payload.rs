//! The unit of export: encoded bytes plus the little metadata a later replay needs.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The media type of a payload's bytes, sent as `Content-Type` by HTTP exporters.
///
/// The two common telemetry encodings have their own variants so that the value costs no
/// allocation; anything else is carried as text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[non_exhaustive]
pub enum ContentType {
    /// `application/x-protobuf`: OTLP/HTTP binary encoding.
    Protobuf,
    /// `application/json`: OTLP/HTTP JSON encoding, or any JSON body.
    Json,
    /// `application/octet-stream`: opaque bytes. The default.
    #[default]
    OctetStream,
    /// Any other media type, as written.
    Other(String),
}

impl ContentType {
    /// The media type as it goes on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            ContentType::Protobuf => "application/x-protobuf",
            ContentType::Json => "application/json",
            ContentType::OctetStream => "application/octet-stream",
            ContentType::Other(s) => s,
        }
    }

    /// Maps a media type to its variant; well-known types get their own variant.
    pub fn from_media_type(s: &str) -> ContentType {
        match s {
            "application/x-protobuf" => ContentType::Protobuf,
            "application/json" => ContentType::Json,
            "application/octet-stream" => ContentType::OctetStream,
            other => ContentType::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for ContentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a payload's bytes are encoded on top of their media type, sent as `Content-Encoding`
/// by HTTP exporters.
///
/// The client may store a spooled payload compressed; it hands an exporter only encodings
/// the exporter accepts ([`Exporter::accepts_encoding`](crate::Exporter::accepts_encoding)),
/// decompressing for the others. Payloads given to `Client::export` are
/// [`Identity`](ContentEncoding::Identity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[non_exhaustive]
pub enum ContentEncoding {
    /// The bytes as they are. The default.
    #[default]
    Identity,
    /// A gzip stream (RFC 1952): one or more gzip members.
    Gzip,
}

impl ContentEncoding {
    /// The token as it goes on the wire (`identity`, `gzip`).
    pub fn as_str(self) -> &'static str {
        match self {
            ContentEncoding::Identity => "identity",
            ContentEncoding::Gzip => "gzip",
        }
    }
}

impl fmt::Display for ContentEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Metadata carried with a payload through the spool and back.
///
/// Kept small on purpose: it is encoded in every spool record header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadMeta {
    /// Media type of the bytes.
    pub content_type: ContentType,
    /// When the application created the payload, as nanoseconds since the Unix epoch.
    ///
    /// Stored as an integer (not `SystemTime`) so the encoding is explicit and portable.
    pub created_at_unix_nanos: u64,
    /// An optional caller-supplied key, e.g. a batch id used by a receiver to de-duplicate.
    pub key: Option<String>,
    /// How the bytes are encoded ([`ContentEncoding::Identity`] unless the client stored
    /// them compressed).
    pub content_encoding: ContentEncoding,
}

/// An encoded telemetry payload (an OTLP batch, a JSON body, anything) and its metadata.
///
/// Cloning is cheap: the bytes are reference-counted ([`Bytes`]).
///
/// # Examples
///
/// ```
/// use outlast_core::{ContentType, Payload};
///
/// let p = Payload::new(&b"{\"resourceSpans\":[]}"[..])
///     .with_content_type(ContentType::Json)
///     .with_key("batch-0001");
/// assert_eq!(p.len(), 20);
/// assert_eq!(p.meta().key.as_deref(), Some("batch-0001"));
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    meta: PayloadMeta,
    bytes: Bytes,
}

impl Payload {
    /// A payload of opaque bytes created now.
    pub fn new(bytes: impl Into<Bytes>) -> Payload {
        Payload {
            meta: PayloadMeta {
                content_type: ContentType::default(),
                created_at_unix_nanos: unix_nanos(SystemTime::now()),
                key: None,
                content_encoding: ContentEncoding::Identity,
            },
            bytes: bytes.into(),
        }
    }

    /// Reassembles a payload from its parts, as read back from a spool.
    pub fn from_parts(meta: PayloadMeta, bytes: Bytes) -> Payload {
        Payload { meta, bytes }
    }

    /// Sets the media type.
    #[must_use]
    pub fn with_content_type(mut self, content_type: ContentType) -> Payload {
        self.meta.content_type = content_type;
        self
    }

    /// Sets the caller-supplied key.
    #[must_use]
    pub fn with_key(mut self, key: impl Into<String>) -> Payload {
        self.meta.key = Some(key.into());
        self
    }

    /// Sets the creation time (defaults to the time of [`Payload::new`]).
    #[must_use]
    pub fn with_created_at(mut self, at: SystemTime) -> Payload {
        self.meta.created_at_unix_nanos = unix_nanos(at);
        self
    }

    /// Sets the content encoding: says how the bytes are already encoded (it does not
    /// encode them).
    #[must_use]
    pub fn with_content_encoding(mut self, encoding: ContentEncoding) -> Payload {
        self.meta.content_encoding = encoding;
        self
    }

    /// How the bytes are encoded.
    pub fn content_encoding(&self) -> ContentEncoding {
        self.meta.content_encoding
    }

    /// The encoded bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The metadata.
    pub fn meta(&self) -> &PayloadMeta {
        &self.meta
    }

    /// The media type.
    pub fn content_type(&self) -> &ContentType {
        &self.meta.content_type
    }

    /// When the payload was created.
    pub fn created_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.meta.created_at_unix_nanos)
    }

    /// Number of payload bytes (metadata not included).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the payload has no bytes.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Splits the payload into its metadata and bytes.
    pub fn into_parts(self) -> (PayloadMeta, Bytes) {
        (self.meta, self.bytes)
    }
}

impl fmt::Debug for Payload {
    // The bytes may be large and may hold user data: show their length, never their content.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Payload")
            .field("len", &self.bytes.len())
            .field("content_type", &self.meta.content_type)
            .field("created_at_unix_nanos", &self.meta.created_at_unix_nanos)
            .field("key", &self.meta.key)
            .field("content_encoding", &self.meta.content_encoding)
            .finish()
    }
}

/// Nanoseconds since the Unix epoch, saturating: times before 1970 map to 0 and times after
/// the year 2554 map to `u64::MAX`.
pub fn unix_nanos(at: SystemTime) -> u64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(d) => u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_length_not_content() {
        let p = Payload::new(&b"secret-token"[..]);
        let s = format!("{p:?}");
        assert!(s.contains("len: 12"), "{s}");
        assert!(!s.contains("secret"), "{s}");
    }

    #[test]
    fn content_type_round_trips_through_its_media_type() {
        for ct in [
            ContentType::Protobuf,
            ContentType::Json,
            ContentType::OctetStream,
            ContentType::Other("text/plain".into()),
        ] {
            assert_eq!(ContentType::from_media_type(ct.as_str()), ct);
        }
    }

    #[test]
    fn payload_round_trips_through_serde() {
        let p = Payload::new(&b"abc"[..])
            .with_content_type(ContentType::Protobuf)
            .with_key("k1");
        let enc =
            bincode::serde::encode_to_vec(&p, bincode::config::standard()).expect("encode payload");
        let (back, _): (Payload, usize) =
            bincode::serde::decode_from_slice(&enc, bincode::config::standard())
                .expect("decode payload");
        assert_eq!(back, p);
    }

    #[test]
    fn created_at_is_kept_to_the_nanosecond() {
        let at = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let p = Payload::new(Bytes::new()).with_created_at(at);
        assert_eq!(p.created_at(), at);
        assert_eq!(unix_nanos(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
