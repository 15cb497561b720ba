//! The on-disk format: segment header, record frames and the cursor file, all explicit
//! little-endian. The crate documentation (and `docs/spool-format.md`) is its specification.

use bytes::Bytes;
use outlast_core::{ContentEncoding, ContentType, Payload, PayloadMeta};
use serde::{Deserialize, Serialize};

/// Magic at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"OUTLSPSG";
/// The segment format version written by this build (2: a record header may end with the
/// payload's content encoding). Version-1 segments are read as well.
pub const FORMAT_VERSION: u16 = 2;
/// Length of the segment header.
pub const SEGMENT_HEADER_LEN: u64 = 32;
/// Marker at the start of every record frame.
pub const RECORD_MARKER: [u8; 4] = *b"OLRC";
/// Bytes of a frame before its body: marker, body length, CRC.
pub const FRAME_PREFIX_LEN: usize = 12;
/// Bytes a frame adds around the encoded header and payload (prefix + seq + header length).
pub const FRAME_OVERHEAD: u64 = FRAME_PREFIX_LEN as u64 + 8 + 4;
/// Hard limit on a frame body, whatever the configuration: bounds the length field before
/// it is trusted.
pub const FORMAT_MAX_RECORD_BYTES: u64 = 256 * 1024 * 1024;
/// Magic at the start of every cursor record.
pub const CURSOR_MAGIC: [u8; 4] = *b"OLCU";
/// The cursor record version written by this build (2: two slots, with a generation).
pub const CURSOR_VERSION: u16 = 2;
/// Length of a version-2 cursor record (one slot's content).
pub const CURSOR_RECORD_LEN: usize = 36;
/// Offsets of the cursor file's two slots: different 512-byte disk sectors, so that a write
/// torn by a power loss can damage at most the slot being written.
pub const CURSOR_SLOT_OFFSETS: [u64; 2] = [0, 512];
/// Length of the version-1 cursor record (a single record at offset 0, no generation).
pub const CURSOR_V1_LEN: usize = 28;
/// Largest encoded record header (content type and key, bincode-encoded) accepted on read,
/// and so refused on write.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// bincode configuration for record headers: little-endian, variable-length integers, and a
/// decode limit so that a damaged length cannot make the decoder allocate much.
fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_variable_int_encoding()
        .with_limit::<MAX_HEADER_BYTES>()
}

/// The bincode-encoded part of a record header (the sequence number is a fixed field), as
/// format version 1 defined it. Version 2 appends the content encoding after it when the
/// payload's is not identity, so that an identity record's header is the same in both.
#[derive(Serialize)]
struct MetaRef<'a> {
    content_type: &'a ContentType,
    created_at_unix_nanos: u64,
    key: &'a Option<String>,
}

#[derive(Deserialize)]
struct MetaOwned {
    content_type: ContentType,
    created_at_unix_nanos: u64,
    key: Option<String>,
}

/// Decodes a record header that must use exactly all of `header`: the version-1 fields,
/// then, if bytes are left, the content encoding (format version 2), else identity.
fn decode_header(header: &[u8]) -> Option<PayloadMeta> {
    let (m, used): (MetaOwned, usize) =
        bincode::serde::decode_from_slice(header, bincode_config()).ok()?;
    let rest = header.get(used..)?;
    let content_encoding = if rest.is_empty() {
        ContentEncoding::Identity
    } else {
        let (e, n): (ContentEncoding, usize) =
            bincode::serde::decode_from_slice(rest, bincode_config()).ok()?;
        if n != rest.len() {
            return None;
        }
        e
    };
    Some(PayloadMeta {
        content_type: m.content_type,
        created_at_unix_nanos: m.created_at_unix_nanos,
        key: m.key,
        content_encoding,
    })
}

/// A parsed segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Format version.
    pub version: u16,
    /// Segment id (also in the file name).
    pub segment_id: u64,
    /// Sequence number the first record of the segment gets.
    pub first_seq: u64,
}

/// What the first bytes of a segment file say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderCheck {
    /// A valid header of the current version.
    Valid(SegmentHeader),
    /// Our magic, a newer version: leave the file alone.
    Newer(u16),
    /// Fewer bytes than a header: torn at creation (or zero-length).
    Short,
    /// Not our magic: not a spool file.
    Foreign,
    /// Our magic and version but a bad CRC (or version 0): frames are still scanned.
    Damaged,
}

/// Encodes a segment header.
pub fn encode_segment_header(segment_id: u64, first_seq: u64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    // 10..12: flags, zero.
    h[12..20].copy_from_slice(&segment_id.to_le_bytes());
    h[20..28].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32fast::hash(&h[0..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks the first bytes of a segment file (`buf` may be shorter than a header).
pub fn check_segment_header(buf: &[u8]) -> HeaderCheck {
    let n = buf.len().min(8);
    if buf[..n] != SEGMENT_MAGIC[..n] {
        return HeaderCheck::Foreign;
    }
    if buf.len() < SEGMENT_HEADER_LEN as usize {
        return HeaderCheck::Short;
    }
    let version = u16::from_le_bytes([buf[8], buf[9]]);
    if version > FORMAT_VERSION {
        return HeaderCheck::Newer(version);
    }
    let crc = u32::from_le_bytes([buf[28], buf[29], buf[30], buf[31]]);
    if version == 0 || crc != crc32fast::hash(&buf[0..28]) {
        return HeaderCheck::Damaged;
    }
    HeaderCheck::Valid(SegmentHeader {
        version,
        segment_id: le_u64(&buf[12..20]),
        first_seq: le_u64(&buf[20..28]),
    })
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

/// Why a record cannot be framed. Every limit [`parse_frame`] checks on read is checked here
/// on write, so that no record is accepted that a reader would then discard.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The encoded header (content type and key) is larger than [`MAX_HEADER_BYTES`].
    HeaderTooLarge {
        /// Its encoded size.
        size: u64,
        /// [`MAX_HEADER_BYTES`].
        max: u64,
    },
    /// The frame body is larger than [`FORMAT_MAX_RECORD_BYTES`].
    BodyTooLarge {
        /// Its size.
        size: u64,
        /// [`FORMAT_MAX_RECORD_BYTES`].
        max: u64,
    },
    /// The metadata could not be encoded.
    Encode(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::HeaderTooLarge { size, max } => write!(
                f,
                "record header (content type and key) of {size} bytes exceeds the format's limit of {max} bytes"
            ),
            FrameError::BodyTooLarge { size, max } => write!(
                f,
                "record of {size} bytes exceeds the format's limit of {max} bytes"
            ),
            FrameError::Encode(e) => write!(f, "record header cannot be encoded: {e}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// The size of the encoded record header (content type, creation time, key, and the
/// content encoding unless identity) of a record with `meta` stored with `encoding`: what
/// [`MAX_HEADER_BYTES`] limits. Computed without building the header.
pub fn header_len(meta: &PayloadMeta, encoding: ContentEncoding) -> u64 {
    let mut size = bincode::enc::write::SizeWriter::default();
    let head = bincode::serde::encode_into_writer(
        MetaRef {
            content_type: &meta.content_type,
            created_at_unix_nanos: meta.created_at_unix_nanos,
            key: &meta.key,
        },
        &mut size,
        bincode_config(),
    );
    let tail = if encoding == ContentEncoding::Identity {
        Ok(())
    } else {
        bincode::serde::encode_into_writer(encoding, &mut size, bincode_config())
    };
    match (head, tail) {
        (Ok(()), Ok(())) => size.bytes_written as u64,
        // Not encodable at all: larger than any limit.
        _ => u64::MAX,
    }
}

/// The size of the record header `payload` would be stored with, and the format's limit on
/// it (64 KiB), if it is over the limit (a key of about 64 KiB or more): such a
/// payload can never be spooled. Stored compressed, a payload's header also names its
/// encoding, so that is the size counted for a payload not encoded yet: the answer does not
/// depend on whether it would be compressed.
pub fn header_over_limit(payload: &Payload) -> Option<(u64, u64)> {
    let max = MAX_HEADER_BYTES as u64;
    let meta = payload.meta();
    let text = meta.key.as_ref().map_or(0, String::len) + meta.content_type.as_str().len();
    // Lengths, the creation time and the encoding take at most a few dozen bytes more.
    if (text as u64) < max - 64 {
        return None;
    }
    let encoding = match payload.content_encoding() {
        ContentEncoding::Identity => ContentEncoding::Gzip,
        other => other,
    };
    let size = header_len(meta, encoding);
    (size > max).then_some((size, max))
}

/// Builds the frame of one record into `buf` (cleared first). Returns the frame length.
///
/// # Errors
///
/// [`FrameError`] if the record breaks a limit of the format (a reader would discard it),
/// or the metadata cannot be encoded.
pub fn encode_frame(buf: &mut Vec<u8>, seq: u64, payload: &Payload) -> Result<usize, FrameError> {
    buf.clear();
    buf.extend_from_slice(&RECORD_MARKER);
    buf.extend_from_slice(&[0u8; 8]); // body length and CRC, patched below
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&[0u8; 4]); // header length, patched below
    let header_start = buf.len();
    let meta = payload.meta();
    bincode::serde::encode_into_std_write(
        MetaRef {
            content_type: &meta.content_type,
            created_at_unix_nanos: meta.created_at_unix_nanos,
            key: &meta.key,
        },
        buf,
        bincode_config(),
    )
    .map_err(|e| FrameError::Encode(e.to_string()))?;
    if meta.content_encoding != ContentEncoding::Identity {
        bincode::serde::encode_into_std_write(meta.content_encoding, buf, bincode_config())
            .map_err(|e| FrameError::Encode(e.to_string()))?;
    }
    let header_len = buf.len() - header_start;
    if header_len > MAX_HEADER_BYTES {
        return Err(FrameError::HeaderTooLarge {
            size: header_len as u64,
            max: MAX_HEADER_BYTES as u64,
        });
    }
    buf[header_start - 4..header_start].copy_from_slice(&(header_len as u32).to_le_bytes());
    buf.extend_from_slice(payload.bytes());
    let body_len = buf.len() - FRAME_PREFIX_LEN;
    let too_large = || FrameError::BodyTooLarge {
        size: body_len as u64,
        max: FORMAT_MAX_RECORD_BYTES,
    };
    if body_len as u64 > FORMAT_MAX_RECORD_BYTES {
        return Err(too_large());
    }
    let body_len32 = u32::try_from(body_len).map_err(|_| too_large())?;
    buf[4..8].copy_from_slice(&body_len32.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&buf[0..8]);
    h.update(&buf[FRAME_PREFIX_LEN..]);
    let crc = h.finalize();
    buf[8..12].copy_from_slice(&crc.to_le_bytes());
    Ok(buf.len())
}

/// Framed size of a payload, without encoding it.
pub fn frame_len_estimate(payload: &Payload) -> u64 {
    FRAME_OVERHEAD + payload.len() as u64
}

/// The outcome of parsing the bytes at a candidate frame position.
#[derive(Debug)]
pub enum Parse {
    /// A valid frame of `len` bytes.
    Frame(FrameView),
    /// The frame (if it is one) needs this many bytes in total to be checked.
    NeedMore(usize),
    /// Not a valid frame.
    Bad,
}

/// A valid frame, located in the parsed slice.
#[derive(Debug, Clone)]
pub struct FrameView {
    /// Total frame length.
    pub len: usize,
    /// Sequence number.
    pub seq: u64,
    /// Metadata.
    pub meta: PayloadMeta,
    /// Range of the payload bytes within the parsed slice.
    pub payload_start: usize,
}

impl FrameView {
    /// Builds the payload (copies the bytes out of `buf`, the slice that was parsed).
    pub fn payload(&self, buf: &[u8]) -> Payload {
        Payload::from_parts(
            self.meta.clone(),
            Bytes::copy_from_slice(self.payload_bytes(buf)),
        )
    }

    /// The payload's bytes in `buf`, the slice that was parsed.
    pub fn payload_bytes<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.payload_start..self.len]
    }
}

/// Parses the frame at the start of `buf`.
pub fn parse_frame(buf: &[u8]) -> Parse {
    if buf.len() < FRAME_PREFIX_LEN {
        if buf[..buf.len().min(4)] != RECORD_MARKER[..buf.len().min(4)] {
            return Parse::Bad;
        }
        return Parse::NeedMore(FRAME_PREFIX_LEN);
    }
    if buf[0..4] != RECORD_MARKER {
        return Parse::Bad;
    }
    let body_len = u64::from(le_u32(&buf[4..8]));
    if body_len > FORMAT_MAX_RECORD_BYTES || body_len < FRAME_OVERHEAD - FRAME_PREFIX_LEN as u64 {
        return Parse::Bad;
    }
    let total = FRAME_PREFIX_LEN + body_len as usize;
    if buf.len() < total {
        return Parse::NeedMore(total);
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&buf[0..8]);
    h.update(&buf[FRAME_PREFIX_LEN..total]);
    if h.finalize() != le_u32(&buf[8..12]) {
        return Parse::Bad;
    }
    let seq = le_u64(&buf[12..20]);
    let header_len = le_u32(&buf[20..24]) as usize;
    let header_start = 24;
    if header_len > MAX_HEADER_BYTES || header_start + header_len > total {
        return Parse::Bad;
    }
    match decode_header(&buf[header_start..header_start + header_len]) {
        Some(meta) => Parse::Frame(FrameView {
            len: total,
            seq,
            meta,
            payload_start: header_start + header_len,
        }),
        None => Parse::Bad,
    }
}

/// Finds the next position in `buf` at or after `from` where a record marker starts, or a
/// position from which a marker could start in bytes not yet read (within the last 3 bytes).
pub fn find_marker(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        let rest = &buf[i..];
        match rest.iter().position(|&b| b == RECORD_MARKER[0]) {
            None => return None,
            Some(p) => {
                let at = i + p;
                let tail = &buf[at..];
                let n = tail.len().min(4);
                if tail[..n] == RECORD_MARKER[..n] {
                    return Some(at);
                }
                i = at + 1;
            }
        }
    }
    None
}

/// The persisted read progress of a lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CursorState {
    /// Every record with a sequence number up to this one is acknowledged (0: none).
    pub acked_through: u64,
    /// The next sequence number the lane's writer would use (0: unknown).
    pub next_seq: u64,
}

/// What one slot of the cursor file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorSlot {
    /// Nothing was ever written there (no bytes, or only zero bytes).
    Empty,
    /// A valid record: the higher `generation` of the two slots is the newer.
    Valid {
        /// Write counter of the cursor file (a version-1 record counts as generation 0).
        generation: u64,
        /// The read progress it records.
        state: CursorState,
    },
    /// Bytes that are not a valid record: torn, damaged, or of a newer version.
    Damaged,
}

/// Encodes one cursor record (version 2) for a slot.
pub fn encode_cursor(generation: u64, c: CursorState) -> [u8; CURSOR_RECORD_LEN] {
    let mut b = [0u8; CURSOR_RECORD_LEN];
    b[0..4].copy_from_slice(&CURSOR_MAGIC);
    b[4..6].copy_from_slice(&CURSOR_VERSION.to_le_bytes());
    // 6..8: flags, zero.
    b[8..16].copy_from_slice(&generation.to_le_bytes());
    b[16..24].copy_from_slice(&c.acked_through.to_le_bytes());
    b[24..32].copy_from_slice(&c.next_seq.to_le_bytes());
    let crc = crc32fast::hash(&b[0..32]);
    b[32..36].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes the bytes of one slot (`b` is what the file holds at the slot's offset, up to
/// [`CURSOR_RECORD_LEN`] bytes; shorter at the end of the file). A version-1 record (the
/// single-record layout) is accepted as generation 0; any other version is damaged.
pub fn decode_cursor_slot(b: &[u8]) -> CursorSlot {
    if b.iter().all(|&x| x == 0) {
        return CursorSlot::Empty;
    }
    if b.len() < 6 || b[0..4] != CURSOR_MAGIC {
        return CursorSlot::Damaged;
    }
    match u16::from_le_bytes([b[4], b[5]]) {
        1 if b.len() >= CURSOR_V1_LEN && crc32fast::hash(&b[0..24]) == le_u32(&b[24..28]) => {
            CursorSlot::Valid {
                generation: 0,
                state: CursorState {
                    acked_through: le_u64(&b[8..16]),
                    next_seq: le_u64(&b[16..24]),
                },
            }
        }
        CURSOR_VERSION
            if b.len() >= CURSOR_RECORD_LEN && crc32fast::hash(&b[0..32]) == le_u32(&b[32..36]) =>
        {
            CursorSlot::Valid {
                generation: le_u64(&b[8..16]),
                state: CursorState {
                    acked_through: le_u64(&b[16..24]),
                    next_seq: le_u64(&b[24..32]),
                },
            }
        }
        _ => CursorSlot::Damaged,
    }
}

/// The cursor a file's two slots amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CursorChoice {
    /// The newest valid slot's state (the initial state if none is valid).
    pub state: CursorState,
    /// Its generation (0 if none is valid).
    pub generation: u64,
    /// Which slot holds it (`None`: neither is valid).
    pub slot: Option<usize>,
    /// No slot is valid and at least one holds damaged bytes: the lane counts as having
    /// nothing acknowledged (more duplicates, no loss).
    pub damaged: bool,
}

/// Chooses between the two slots: the valid one with the higher generation wins; a damaged
/// slot next to a valid one is ignored (a write torn by a crash leaves exactly that).
pub fn choose_cursor(slots: [CursorSlot; 2]) -> CursorChoice {
    let mut best: Option<(usize, u64, CursorState)> = None;
    for (i, s) in slots.iter().enumerate() {
        if let CursorSlot::Valid { generation, state } = *s
            && best.is_none_or(|(_, g, _)| generation > g)
        {
            best = Some((i, generation, state));
        }
    }
    match best {
        Some((slot, generation, state)) => CursorChoice {
            state,
            generation,
            slot: Some(slot),
            damaged: false,
        },
        None => CursorChoice {
            damaged: slots.contains(&CursorSlot::Damaged),
            ..CursorChoice::default()
        },
    }
}

/// Reads the two slots out of the first bytes of a cursor file (`file` may be shorter than
/// both slots, or empty).
pub fn decode_cursor_file(file: &[u8]) -> CursorChoice {
    let slot = |i: usize| {
        let start = usize::try_from(CURSOR_SLOT_OFFSETS[i]).unwrap_or(usize::MAX);
        let bytes = file.get(start..).unwrap_or(&[]);
        decode_cursor_slot(&bytes[..bytes.len().min(CURSOR_RECORD_LEN)])
    };
    choose_cursor([slot(0), slot(1)])
}

/// The file name of segment `id`.
pub fn segment_file_name(id: u64) -> String {
    format!("{id:020}.seg")
}

/// The segment id in a file name, if it is one.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_over_limit_is_whether_encode_frame_would_refuse_the_header_compressed() {
        let max = MAX_HEADER_BYTES as u64;
        for key_len in [
            0,
            1000,
            MAX_HEADER_BYTES - 200,
            MAX_HEADER_BYTES - 60,
            MAX_HEADER_BYTES - 30,
            MAX_HEADER_BYTES,
            70_000,
        ] {
            let payload = Payload::new(&b"x"[..]).with_key("k".repeat(key_len));
            let stored = payload.clone().with_content_encoding(ContentEncoding::Gzip);
            let mut buf = Vec::new();
            let refused = matches!(
                encode_frame(&mut buf, 1, &stored),
                Err(FrameError::HeaderTooLarge { .. })
            );
            match header_over_limit(&payload) {
                Some((size, limit)) => {
                    assert!(refused, "key of {key_len}: over the limit but encodable");
                    assert_eq!(limit, max);
                    assert_eq!(size, header_len(payload.meta(), ContentEncoding::Gzip));
                }
                None => assert!(!refused, "key of {key_len}: refused but not over the limit"),
            }
        }
        assert!(header_over_limit(&Payload::new(&b"x"[..]).with_key("k".repeat(70_000))).is_some());
        assert!(header_over_limit(&Payload::new(&b"x"[..])).is_none());
    }

    #[test]
    fn header_len_is_the_size_encode_frame_writes_and_checks() {
        for key in [
            None,
            Some(String::new()),
            Some("k".repeat(300)),
            Some("é".repeat(40_000)),
        ] {
            for encoding in [ContentEncoding::Identity, ContentEncoding::Gzip] {
                let mut p = Payload::new(&b"body"[..])
                    .with_content_type(ContentType::Protobuf)
                    .with_content_encoding(encoding);
                if let Some(k) = &key {
                    p = p.with_key(k.clone());
                }
                let want = header_len(p.meta(), encoding);
                let mut buf = Vec::new();
                match encode_frame(&mut buf, 1, &p) {
                    Ok(_) => {
                        // The header length field follows the prefix and the sequence number.
                        let at = FRAME_PREFIX_LEN + 8;
                        let got = u64::from(le_u32(&buf[at..at + 4]));
                        assert_eq!(
                            got,
                            want,
                            "{encoding:?}, key of {:?} bytes",
                            key.as_ref().map(String::len)
                        );
                    }
                    Err(FrameError::HeaderTooLarge { size, .. }) => {
                        assert_eq!(size, want);
                        assert!(want > MAX_HEADER_BYTES as u64);
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
    }

    #[test]
    fn frame_round_trips_and_any_flipped_bit_is_detected() {
        let p = Payload::new(&b"hello"[..]).with_key("k");
        let mut buf = Vec::new();
        let n = encode_frame(&mut buf, 7, &p).expect("encode");
        match parse_frame(&buf) {
            Parse::Frame(f) => {
                assert_eq!(f.len, n);
                assert_eq!(f.seq, 7);
                assert_eq!(f.payload(&buf), p);
            }
            other => panic!("expected a frame, got {other:?}"),
        }
        for bit in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !matches!(parse_frame(&b), Parse::Frame(_)),
                "flipped bit {bit} went undetected"
            );
        }
    }

    #[test]
    fn an_encoded_record_round_trips_and_an_identity_record_keeps_the_version_1_header() {
        let plain = Payload::new(&b"hello"[..]).with_key("k");
        let gz = plain.clone().with_content_encoding(ContentEncoding::Gzip);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        encode_frame(&mut a, 7, &plain).expect("encode");
        encode_frame(&mut b, 7, &gz).expect("encode");
        assert_eq!(
            b.len(),
            a.len() + 1,
            "the encoding costs one byte, only when not identity"
        );
        assert_eq!(le_u32(&a[20..24]) + 1, le_u32(&b[20..24]));
        for (buf, p) in [(&a, &plain), (&b, &gz)] {
            match parse_frame(buf) {
                Parse::Frame(f) => assert_eq!(&f.payload(buf), p),
                other => panic!("expected a frame, got {other:?}"),
            }
        }
        // A header with an encoding the build does not know, or with a byte too many,
        // is not a frame.
        for extra in [&[7u8][..], &[1, 1][..]] {
            let mut c = a.clone();
            let at = 24 + le_u32(&a[20..24]) as usize;
            let hl = le_u32(&a[20..24]) + extra.len() as u32;
            c[20..24].copy_from_slice(&hl.to_le_bytes());
            c.splice(at..at, extra.iter().copied());
            let body = (c.len() - FRAME_PREFIX_LEN) as u32;
            c[4..8].copy_from_slice(&body.to_le_bytes());
            let mut h = crc32fast::Hasher::new();
            h.update(&c[0..8]);
            h.update(&c[FRAME_PREFIX_LEN..]);
            let crc = h.finalize();
            c[8..12].copy_from_slice(&crc.to_le_bytes());
            assert!(matches!(parse_frame(&c), Parse::Bad), "{extra:?}");
        }
    }

    #[test]
    fn header_and_cursor_round_trip_and_reject_damage() {
        let h = encode_segment_header(3, 42);
        assert_eq!(
            check_segment_header(&h),
            HeaderCheck::Valid(SegmentHeader {
                version: 2,
                segment_id: 3,
                first_seq: 42
            })
        );
        assert_eq!(check_segment_header(&h[..10]), HeaderCheck::Short);
        assert_eq!(check_segment_header(&[]), HeaderCheck::Short);
        assert_eq!(
            check_segment_header(b"garbage!garbage!"),
            HeaderCheck::Foreign
        );
        let mut d = h;
        d[25] ^= 1;
        assert_eq!(check_segment_header(&d), HeaderCheck::Damaged);
        let mut n = h;
        n[8] = 3;
        assert_eq!(check_segment_header(&n), HeaderCheck::Newer(3));
        let mut v1 = h;
        v1[8] = 1;
        let crc = crc32fast::hash(&v1[0..28]);
        v1[28..32].copy_from_slice(&crc.to_le_bytes());
        assert!(
            matches!(
                check_segment_header(&v1),
                HeaderCheck::Valid(SegmentHeader { version: 1, .. })
            ),
            "a version-1 segment is still read"
        );
    }

    fn state(acked_through: u64) -> CursorState {
        CursorState {
            acked_through,
            next_seq: acked_through + 2,
        }
    }

    #[test]
    fn cursor_slot_round_trips_and_any_flipped_bit_is_detected() {
        let rec = encode_cursor(5, state(9));
        assert_eq!(
            decode_cursor_slot(&rec),
            CursorSlot::Valid {
                generation: 5,
                state: state(9)
            }
        );
        for bit in 0..rec.len() * 8 {
            let mut b = rec;
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !matches!(decode_cursor_slot(&b), CursorSlot::Valid { .. }),
                "flipped bit {bit} went undetected"
            );
        }
        assert_eq!(decode_cursor_slot(&[]), CursorSlot::Empty);
        assert_eq!(decode_cursor_slot(&[0; 36]), CursorSlot::Empty);
        assert_eq!(decode_cursor_slot(&rec[..20]), CursorSlot::Damaged);
        let mut newer = rec;
        newer[4] = 3;
        let crc = crc32fast::hash(&newer[0..32]);
        newer[32..36].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_cursor_slot(&newer), CursorSlot::Damaged);
    }

    #[test]
    fn version_1_cursor_file_is_read_as_generation_0() {
        let mut v1 = [0u8; CURSOR_V1_LEN];
        v1[0..4].copy_from_slice(&CURSOR_MAGIC);
        v1[4..6].copy_from_slice(&1u16.to_le_bytes());
        v1[8..16].copy_from_slice(&9u64.to_le_bytes());
        v1[16..24].copy_from_slice(&11u64.to_le_bytes());
        let crc = crc32fast::hash(&v1[0..24]);
        v1[24..28].copy_from_slice(&crc.to_le_bytes());
        let c = decode_cursor_file(&v1);
        assert_eq!(c.state, state(9));
        assert_eq!((c.generation, c.slot, c.damaged), (0, Some(0), false));
    }

    #[test]
    fn newest_valid_slot_wins_and_a_damaged_slot_is_ignored() {
        let mut file = vec![0u8; 512 + CURSOR_RECORD_LEN];
        file[0..36].copy_from_slice(&encode_cursor(7, state(30)));
        file[512..548].copy_from_slice(&encode_cursor(8, state(40)));
        let c = decode_cursor_file(&file);
        assert_eq!((c.state, c.generation, c.slot), (state(40), 8, Some(1)));
        file[520] ^= 1;
        let c = decode_cursor_file(&file);
        assert_eq!((c.state, c.slot, c.damaged), (state(30), Some(0), false));
        file[3] ^= 1;
        let c = decode_cursor_file(&file);
        assert_eq!(
            (c.state, c.slot, c.damaged),
            (CursorState::default(), None, true)
        );
        assert_eq!(decode_cursor_file(&[]), CursorChoice::default());
    }

    #[test]
    fn segment_file_names_round_trip() {
        assert_eq!(parse_segment_file_name(&segment_file_name(12)), Some(12));
        assert_eq!(parse_segment_file_name("12.seg"), None);
        assert_eq!(parse_segment_file_name("cursor"), None);
    }
}
