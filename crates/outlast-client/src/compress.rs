//! Compression of spooled payloads: gzip before the spool append when it pays, and on
//! replay the stored bytes as they are for an exporter that takes gzip, decompressed for
//! any other. See "Compressed records" in `docs/spool-format.md`.

use std::io::Read as _;

use bytes::Bytes;
use outlast_core::{ContentEncoding, Payload};

/// Payloads smaller than this are stored as they are: a gzip member costs 18 bytes of
/// framing and compressing a few hundred bytes saves little disk for its time.
pub(crate) const MIN_COMPRESS_BYTES: usize = 512;

/// A payload is stored compressed only if that saves at least 1/8 of its bytes
/// (compressed ≤ 7/8 of the original); otherwise it is stored as it is, so incompressible
/// payloads cost no more disk than before.
pub(crate) const MIN_SAVING_DIVISOR: usize = 8;

/// The gzip level of stored records: 1, the fastest. On SDK-made OTLP batches it stores
/// 0.15-0.22 bytes per payload byte against 0.12-0.19 at level 6, for a fifth to a half of
/// the time, and it keeps a payload that does not compress cheap to try (row 12 in
/// docs/benchmarks.md). The deflate backend is flate2's default, miniz_oxide: the zlib-rs
/// backend (0.6.8) was faster on small payloads but panicked on text that barely
/// compresses at level 1 (see the test `text_that_barely_compresses_is_tried_and_never_panics`).
pub(crate) const LEVEL: u32 = 1;

/// What to append to the spool for `payload`: a gzip-encoded copy if it is large enough,
/// not encoded already, and shrinks by the margin; `None` to store it as it is.
pub(crate) fn for_spool(payload: &Payload) -> Option<Payload> {
    if payload.len() < MIN_COMPRESS_BYTES || payload.content_encoding() != ContentEncoding::Identity
    {
        return None;
    }
    if looks_incompressible(payload.bytes()) {
        return None;
    }
    let limit = payload.len() - payload.len() / MIN_SAVING_DIVISOR;
    // Compression only saves disk: if the codec ever panics, the payload is stored as it is
    // (the export path must not panic, and nothing accepted may be lost for it).
    let gz = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        gzip(payload.bytes(), limit)
    })) {
        Ok(gz) => gz?,
        Err(_) => {
            // The thread's deflate state may be half-way through: start afresh.
            DEFLATE.with(|cell| {
                if let Ok(mut c) = cell.try_borrow_mut() {
                    *c = None;
                }
            });
            tracing::error!(target: crate::LOG_TARGET,
                bytes = payload.len(),
                "outlast: gzip of a payload panicked; storing it uncompressed"
            );
            return None;
        }
    };
    let (meta, _) = payload.clone().into_parts();
    Some(Payload::from_parts(meta, gz).with_content_encoding(ContentEncoding::Gzip))
}

/// Bytes looked at to tell whether a payload is worth compressing.
const SAMPLE_BYTES: usize = 4096;

/// Byte entropy (bits per byte) above which a sample is taken for incompressible: random
/// or already compressed bytes measure 7.8 or more on a 1 KiB sample (the estimate runs
/// low on small samples), telemetry (OTLP protobuf, JSON) 4.5 to 6.5.
const MAX_ENTROPY_BITS: f64 = 7.5;

/// Whether the first [`SAMPLE_BYTES`] of `data` have so even a byte distribution that
/// gzip would not save the margin: then trying costs a compression for nothing (on the
/// outage path, about as long as the append itself).
fn looks_incompressible(data: &[u8]) -> bool {
    let sample = &data[..data.len().min(SAMPLE_BYTES)];
    let mut counts = [0u32; 256];
    for &b in sample {
        counts[usize::from(b)] += 1;
    }
    let n = sample.len() as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum();
    entropy > MAX_ENTROPY_BITS
}

/// The payload to append for `payload`, and the original if that is a compressed copy
/// (to hand back if the append fails).
pub(crate) fn stored_form(payload: Payload) -> (Payload, Option<Payload>) {
    match for_spool(&payload) {
        Some(gz) => (gz, Some(payload)),
        None => (payload, None),
    }
}

/// The fixed gzip member header written before the deflate stream (RFC 1952): magic,
/// method deflate, no flags, no modification time, no extra flags, operating system
/// unknown (255). The decoder checks it, and the trailer's CRC-32 and length.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

thread_local! {
    /// One deflate state per thread, reset for each payload: allocating a fresh one (a few
    /// hundred KiB, zeroed) cost more than compressing a 1 KiB payload.
    static DEFLATE: std::cell::RefCell<Option<flate2::Compress>> =
        const { std::cell::RefCell::new(None) };
}

/// Gzip of `data` at [`LEVEL`] (one member: header, raw deflate stream by flate2, CRC-32 and
/// length), if it is at most `limit` bytes.
fn gzip(data: &[u8], limit: usize) -> Option<Bytes> {
    #[cfg(test)]
    if tests::PANIC_IN_GZIP.with(|p| p.replace(false)) {
        panic!("a codec failure injected by a test");
    }
    let mut out = Vec::with_capacity(limit);
    out.extend_from_slice(&GZIP_HEADER);
    let done = DEFLATE.with(|cell| {
        let mut cell = cell.try_borrow_mut().ok()?;
        let c = cell
            .get_or_insert_with(|| flate2::Compress::new(flate2::Compression::new(LEVEL), false));
        c.reset();
        loop {
            let consumed = usize::try_from(c.total_in()).ok()?;
            let written = out.len();
            let status = c
                .compress_vec(
                    data.get(consumed..)?,
                    &mut out,
                    flate2::FlushCompress::Finish,
                )
                .ok()?;
            if status == flate2::Status::StreamEnd {
                return Some(());
            }
            // Out of room: give up once it cannot fit in `limit` anymore (or, never
            // expected, if the compressor made no progress).
            let progressed = out.len() > written || c.total_in() > consumed as u64;
            if out.len() + 8 > limit || !progressed {
                return None;
            }
            out.reserve(limit.saturating_sub(out.len()).max(64));
        }
    });
    done?;
    out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    // ISIZE: the length modulo 2^32, as RFC 1952 defines it.
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    (out.len() <= limit).then(|| Bytes::from(out))
}

/// Why a stored record cannot be handed to an exporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Undecodable {
    /// Its bytes do not decode as their encoding says (bad gzip, a bad checksum, trailing
    /// garbage, an unknown encoding): counted `corrupt`.
    Corrupt,
    /// It decodes to more than the limit (`max_record_bytes`: more than `export` accepts,
    /// e.g. a decompression bomb, or a record written with a larger limit): counted
    /// `too_large`, never decoded further.
    TooLarge,
}

/// A stored record as an exporter takes it, and how many bytes it is once decoded (what a
/// backend, or an exporter that decodes it to join it with others, holds in memory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ready {
    pub(crate) payload: Payload,
    pub(crate) decoded_len: u64,
}

/// The payload to hand an exporter for a stored record: as it is if the exporter accepts
/// its encoding (checked to decode, so that damaged bytes are never sent), else decoded;
/// never decoded past `limit` bytes.
///
/// # Errors
///
/// [`Undecodable::Corrupt`] if the bytes do not decode as their encoding says;
/// [`Undecodable::TooLarge`] if they decode to more than `limit` bytes.
pub(crate) fn for_exporter(
    payload: Payload,
    accepts: impl Fn(ContentEncoding) -> bool,
    limit: u64,
) -> Result<Ready, Undecodable> {
    match payload.content_encoding() {
        // Stored as it is: nothing is decoded, so nothing can grow (a record written while
        // `max_record_bytes` was larger is still delivered).
        ContentEncoding::Identity => Ok(Ready {
            decoded_len: payload.len() as u64,
            payload,
        }),
        ContentEncoding::Gzip if accepts(ContentEncoding::Gzip) => {
            // Sent as stored: decoded only to check it (and measure it), into nothing.
            let decoded_len = decode_into(payload.bytes(), &mut std::io::sink(), limit)?;
            Ok(Ready {
                payload,
                decoded_len,
            })
        }
        ContentEncoding::Gzip => {
            let decoded = gunzip(payload.bytes(), limit)?;
            let (meta, _) = payload.into_parts();
            let payload =
                Payload::from_parts(meta, decoded).with_content_encoding(ContentEncoding::Identity);
            Ok(Ready {
                decoded_len: payload.len() as u64,
                payload,
            })
        }
        // An encoding this build does not know: never handed out as something else.
        _ => Err(Undecodable::Corrupt),
    }
}

/// Decodes a gzip stream (every member), never holding more than `limit` decoded bytes
/// (plus what the vector's growth reserves): the one gunzip of the crate.
///
/// # Errors
///
/// As [`decode_into`].
pub(crate) fn gunzip(data: &[u8], limit: u64) -> Result<Bytes, Undecodable> {
    let first = data
        .len()
        .saturating_mul(4)
        .min(usize::try_from(limit).unwrap_or(usize::MAX));
    let mut out = Vec::with_capacity(first);
    decode_into(data, &mut out, limit)?;
    Ok(Bytes::from(out))
}

/// Decodes a gzip stream (every member) into `out`, checking each member's CRC-32 and
/// length, no trailing garbage, not empty, and stopping as soon as it passes `limit`
/// decoded bytes. Returns the decoded length.
fn decode_into(data: &[u8], out: &mut impl std::io::Write, limit: u64) -> Result<u64, Undecodable> {
    if data.is_empty() {
        return Err(Undecodable::Corrupt);
    }
    let mut dec = flate2::read::MultiGzDecoder::new(data).take(limit.saturating_add(1));
    let n = std::io::copy(&mut dec, out).map_err(|_| Undecodable::Corrupt)?;
    if n > limit {
        return Err(Undecodable::TooLarge);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use outlast_core::ContentType;

    thread_local! {
        /// Makes the next `gzip` on this thread panic, as a codec bug would.
        pub(super) static PANIC_IN_GZIP: std::cell::Cell<bool> =
            const { std::cell::Cell::new(false) };
    }

    #[test]
    fn a_panicking_codec_stores_the_payload_as_it_is_and_the_next_one_compresses() {
        let p = json_logs(40);
        PANIC_IN_GZIP.with(|f| f.set(true));
        let (stored, original) = stored_form(p.clone());
        assert_eq!(stored, p, "stored as it was given");
        assert!(original.is_none());
        let next = for_spool(&p).expect("compressed again");
        assert_eq!(
            for_exporter(next, identity_only, LIMIT)
                .expect("decodes")
                .payload,
            p
        );
    }

    fn json_logs(n: usize) -> Payload {
        let mut s = String::new();
        for i in 0..n {
            s.push_str(&format!(
                "{{\"ts\":\"2026-12-02T12:00:{:02}Z\",\"level\":\"info\",\"msg\":\"request served\",\"status\":200,\"latency_ms\":{}}}\n",
                i % 60,
                i * 7 % 300
            ));
        }
        Payload::new(s.into_bytes())
            .with_content_type(ContentType::Json)
            .with_key("k")
    }

    /// A decoding limit none of these tests' payloads reach.
    const LIMIT: u64 = 64 << 20;

    fn identity_only(e: ContentEncoding) -> bool {
        e == ContentEncoding::Identity
    }

    fn takes_gzip(_: ContentEncoding) -> bool {
        true
    }

    #[test]
    fn a_compressible_payload_is_stored_gzipped_and_comes_back_identical() {
        let p = json_logs(40);
        let stored = for_spool(&p).expect("compressible");
        assert_eq!(stored.content_encoding(), ContentEncoding::Gzip);
        assert!(
            stored.len() * 4 < p.len(),
            "{} of {}",
            stored.len(),
            p.len()
        );
        assert_eq!(stored.meta().key, p.meta().key);
        let back = for_exporter(stored.clone(), identity_only, LIMIT)
            .expect("decodes")
            .payload;
        assert_eq!(back, p);
        let as_is = for_exporter(stored.clone(), takes_gzip, LIMIT)
            .expect("decodes")
            .payload;
        assert_eq!(
            as_is, stored,
            "an exporter that takes gzip gets the stored bytes"
        );
    }

    #[test]
    fn the_reused_deflate_state_makes_the_same_valid_gzip_each_time() {
        let (a, b) = (json_logs(40), json_logs(7));
        let first = for_spool(&a).expect("a");
        for _ in 0..3 {
            assert_eq!(
                for_spool(&b).map(|p| p.len()),
                for_spool(&b).map(|p| p.len())
            );
            assert_eq!(for_spool(&a), Some(first.clone()));
        }
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&first.bytes()[..])
            .read_to_end(&mut out)
            .expect("a standard gzip member");
        assert_eq!(out, a.bytes().to_vec());
        // A payload larger than the room first reserved still compresses whole.
        let big = Payload::new(json_logs(4000).bytes().clone());
        let gz = for_spool(&big).expect("big");
        assert_eq!(
            gunzip(gz.bytes(), LIMIT).expect("decodes"),
            big.bytes().clone()
        );
    }

    /// Random lowercase letters (4.7 bits of entropy per byte: below the sampling
    /// threshold, so gzip is tried) that a fixed-table level 1 does not shrink by the
    /// margin: the compressor runs out of the room it was given, over and over. One
    /// deflate backend panicked here (a pending-buffer overflow) on an OTLP batch of
    /// spans with random text attributes; the payload must come back stored or not, never
    /// a panic.
    #[test]
    fn text_that_barely_compresses_is_tried_and_never_panics() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for len in [600, 4096, 65_536, 600_000] {
            let text: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    b'a' + (x % 26) as u8
                })
                .collect();
            let p = Payload::new(text).with_content_type(ContentType::Protobuf);
            assert!(!looks_incompressible(p.bytes()), "{len}: gzip is tried");
            // Stored compressed only within the margin, and then it decodes to the payload.
            if let Some(gz) = for_spool(&p) {
                assert!(gz.len() <= p.len() - p.len() / MIN_SAVING_DIVISOR);
                let back = for_exporter(gz, identity_only, LIMIT)
                    .expect("decodes")
                    .payload;
                assert_eq!(back, p, "{len}");
            }
        }
    }

    #[test]
    fn small_incompressible_and_already_encoded_payloads_are_stored_as_they_are() {
        assert!(for_spool(&Payload::new(vec![b'a'; MIN_COMPRESS_BYTES - 1])).is_none());
        assert!(for_spool(&Payload::new(vec![b'a'; MIN_COMPRESS_BYTES])).is_some());
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(for_spool(&Payload::new(noise)).is_none());
        let encoded = json_logs(40).with_content_encoding(ContentEncoding::Gzip);
        assert!(for_spool(&encoded).is_none());
    }

    #[test]
    fn random_bytes_are_taken_for_incompressible_and_telemetry_is_not() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let noise: Vec<u8> = (0..1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert!(looks_incompressible(&noise));
        assert!(!looks_incompressible(json_logs(10).bytes()));
    }

    #[test]
    fn bytes_that_are_not_the_gzip_they_claim_are_corrupt_for_every_exporter() {
        let stored = for_spool(&json_logs(40)).expect("compressible");
        let mut damaged = stored.bytes().to_vec();
        let mid = damaged.len() / 2;
        damaged[mid] ^= 0x55;
        let last = damaged.len() - 1;
        let mut bad_size = stored.bytes().to_vec();
        bad_size[last] ^= 1;
        let mut trailing = stored.bytes().to_vec();
        trailing.extend_from_slice(b"junk");
        for bytes in [
            damaged,
            bad_size,
            trailing,
            stored.bytes()[..10].to_vec(),
            Vec::new(),
            b"plain text".to_vec(),
        ] {
            let p = Payload::from_parts(stored.meta().clone(), Bytes::from(bytes));
            assert_eq!(
                for_exporter(p.clone(), identity_only, LIMIT),
                Err(Undecodable::Corrupt)
            );
            assert_eq!(
                for_exporter(p, takes_gzip, LIMIT),
                Err(Undecodable::Corrupt)
            );
        }
    }

    #[test]
    fn concatenated_stored_records_decode_as_their_concatenation() {
        let (a, b) = (json_logs(30), json_logs(50));
        let (ga, gb) = (for_spool(&a).expect("a"), for_spool(&b).expect("b"));
        let mut both = ga.bytes().to_vec();
        both.extend_from_slice(gb.bytes());
        let mut want = a.bytes().to_vec();
        want.extend_from_slice(b.bytes());
        assert_eq!(
            gunzip(&both, LIMIT).expect("multi-member"),
            Bytes::from(want)
        );
    }

    /// A gzip stream of `members` members, each `member_len` zero bytes once decoded.
    fn bomb(member_len: usize, members: usize) -> Vec<u8> {
        use std::io::Write as _;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        let mut left = member_len;
        while left > 0 {
            let n = left.min(zeros.len());
            enc.write_all(&zeros[..n]).expect("in memory");
            left -= n;
        }
        let one = enc.finish().expect("in memory");
        one.repeat(members)
    }

    #[test]
    fn a_record_that_decodes_past_the_limit_is_too_large_and_is_not_decoded_further() {
        // 16 MiB of zeros in about 16 KiB of gzip.
        let gz = bomb(16 << 20, 1);
        assert!(gz.len() < 32 << 10, "{}", gz.len());
        let p = Payload::new(gz).with_content_encoding(ContentEncoding::Gzip);
        let limit = 1 << 20;
        assert_eq!(
            for_exporter(p.clone(), identity_only, limit),
            Err(Undecodable::TooLarge)
        );
        assert_eq!(
            for_exporter(p.clone(), takes_gzip, limit),
            Err(Undecodable::TooLarge)
        );
        assert_eq!(gunzip(p.bytes(), limit), Err(Undecodable::TooLarge));
        // Many small members add up: the limit is on the whole stream.
        let members = bomb(600 << 10, 4);
        assert_eq!(gunzip(&members, limit), Err(Undecodable::TooLarge));
        assert_eq!(
            gunzip(&members, 4 * (600 << 10)).map(|b| b.len()),
            Ok(4 * (600 << 10))
        );
        // At the limit exactly: decoded, and measured.
        let exact =
            Payload::new(bomb(limit as usize, 1)).with_content_encoding(ContentEncoding::Gzip);
        let ready = for_exporter(exact, takes_gzip, limit).expect("at the limit");
        assert_eq!(ready.decoded_len, limit);
        // A record stored as it is is not decoded: it is handed out whatever the limit.
        let plain = Payload::new(vec![1u8; 2000]);
        assert_eq!(
            for_exporter(plain, identity_only, 1999).map(|r| r.decoded_len),
            Ok(2000)
        );
    }
}
