//! The request body: the bytes of one payload, or the payloads of a merged request one after
//! the other, handed to hyper as they are.
//!
//! A merged request used to be built by copying its payloads into one buffer. For large
//! records that copy, and above all the fresh pages of a buffer of several hundred KiB,
//! cost more than sending: replaying 16 KiB records merged 25 to a request ran at about
//! 0.6 of the rate of sending them one by one (row 7b in docs/benchmarks.md). Each chunk
//! here is a `Bytes` that shares the payload's storage; hyper writes the chunks of a body
//! with vectored writes, and the `Content-Length` comes from the exact size.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};

/// A request body made of chunks sent in order, with its exact length known up front.
#[derive(Debug, Default, Clone)]
pub(crate) struct Body {
    chunks: VecDeque<Bytes>,
    len: u64,
}

impl Body {
    /// A body of the given chunks, in order (empty ones are left out).
    pub(crate) fn from_chunks(chunks: impl IntoIterator<Item = Bytes>) -> Body {
        let mut body = Body::default();
        for c in chunks {
            body.push(c);
        }
        body
    }

    /// Appends a chunk (an empty one adds nothing).
    pub(crate) fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.len += chunk.len() as u64;
            self.chunks.push_back(chunk);
        }
    }

    /// The last byte of the body, if it has one.
    pub(crate) fn last_byte(&self) -> Option<u8> {
        self.chunks.back().and_then(|c| c.last().copied())
    }

    /// The body gzip-compressed as a whole, in one chunk.
    ///
    /// # Errors
    ///
    /// What the encoder reports (not expected: it writes to memory).
    pub(crate) fn gzip(&self) -> std::io::Result<Body> {
        let cap = usize::try_from(self.len / 2 + 64).unwrap_or(usize::MAX);
        let mut enc =
            flate2::write::GzEncoder::new(Vec::with_capacity(cap), flate2::Compression::default());
        for c in &self.chunks {
            enc.write_all(c)?;
        }
        Ok(Body::from_chunks([Bytes::from(enc.finish()?)]))
    }

    /// The body's bytes in one buffer (tests and error paths; sending never joins them).
    #[cfg(test)]
    pub(crate) fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(usize::try_from(self.len).unwrap_or(0));
        for c in &self.chunks {
            out.extend_from_slice(c);
        }
        out
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Body {
        Body::from_chunks([bytes])
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        match this.chunks.pop_front() {
            Some(chunk) => {
                this.len -= chunk.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use http_body_util::BodyExt as _;

    use super::*;

    #[tokio::test]
    async fn chunks_come_out_in_order_with_the_exact_length_announced() {
        let body = Body::from_chunks([
            Bytes::from_static(b"ab"),
            Bytes::new(),
            Bytes::from_static(b"cde"),
        ]);
        assert_eq!(hyper::body::Body::size_hint(&body).exact(), Some(5));
        assert_eq!(body.last_byte(), Some(b'e'));
        let collected = body.collect().await.expect("infallible").to_bytes();
        assert_eq!(&collected[..], b"abcde");
        let empty = Body::default();
        assert!(hyper::body::Body::is_end_stream(&empty));
        assert_eq!(hyper::body::Body::size_hint(&empty).exact(), Some(0));
    }

    #[test]
    fn gzip_compresses_the_chunks_as_one_stream() {
        let body = Body::from_chunks([Bytes::from_static(b"hello "), Bytes::from_static(b"world")]);
        let gz = body.gzip().expect("gzip");
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gz.to_vec()[..])
            .read_to_end(&mut out)
            .expect("one gzip member");
        assert_eq!(out, b"hello world");
    }
}
