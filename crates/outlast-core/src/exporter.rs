//! The `Exporter` trait: what a backend must implement to get retry, spill and replay.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::error::ExportError;
use crate::payload::{ContentEncoding, Payload};

/// What a reachability probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reachability {
    /// The backend answered the probe: worth sending real payloads again.
    Reachable,
    /// The backend did not answer the probe: stay offline.
    Unreachable,
    /// This exporter has no cheap probe: the drain task sends a real payload instead.
    Unsupported,
}

/// How far an exporter lets the client merge consecutive spooled payloads into one request
/// while replaying a backlog (see [`Exporter::coalescing`]).
///
/// Only payloads that are [`compatible`](Coalescing::compatible) with the first of a
/// request join it; the client's own caps (records and bytes per merged request) apply as
/// well, whichever is smaller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Coalescing {
    /// Most payloads in one merged request (at least 1).
    pub max_records: usize,
    /// Most payload bytes in one merged request. A payload larger than this is sent alone.
    pub max_bytes: u64,
}

impl Coalescing {
    /// No limit of the exporter's own: only the client's caps apply.
    pub const UNLIMITED: Coalescing = Coalescing {
        max_records: usize::MAX,
        max_bytes: u64::MAX,
    };

    /// At most `max_records` payloads and `max_bytes` payload bytes per merged request.
    pub fn new(max_records: usize, max_bytes: u64) -> Coalescing {
        Coalescing {
            max_records,
            max_bytes,
        }
    }

    /// Whether `next` may travel in one request with `first`: they have the same content
    /// type and the same content encoding (this is the one place that rule lives).
    pub fn compatible(first: &Payload, next: &Payload) -> bool {
        first.content_type() == next.content_type()
            && first.content_encoding() == next.content_encoding()
    }
}

/// Sends one payload to a backend.
///
/// Implement this for your own backend (a vendor API, Kafka, a file) and hand it to the
/// client: the retry, spill-to-disk and replay machinery then come for free. Nothing here
/// depends on HTTP or on the spool.
///
/// # Contract
///
/// - **Concurrency.** `export` may be called concurrently from several tasks: the
///   application's direct exports and the drain task's pipelined replay share one exporter.
///   It must be safe for that (hence `Send + Sync`). An exporter that cannot send in parallel
///   should serialise internally (e.g. with a `tokio::sync::Mutex`).
/// - **Cancel safety.** The pipeline bounds every attempt with a timeout and drops the
///   returned future when it expires. Dropping the future at any `.await` must leave the
///   exporter usable for the next call. A dropped attempt is treated as failed; the payload may
///   still have reached the backend, so delivery is *at least once*.
/// - **Errors.** Return a retryable error when a later attempt may succeed, saying where it
///   failed if you know: [`ExportError::unreachable`] when no answer came at the transport
///   level (connection refused or reset, DNS, TLS handshake: the client then probes on its
///   short cadence), [`ExportError::failing`] when the backend answered with a failure that
///   may pass (5xx), [`ExportError::retryable_after`] when it said how long to wait (429),
///   [`ExportError::retryable`] when you cannot tell (then the client follows the backoff).
///   [`ExportError::Permanent`] when it never will (malformed payload, 400). Permanent failures
///   are dropped and counted, never retried. `Ok(())` means the backend has accepted the
///   payload: a spooled record is deleted after it.
/// - **Idempotence.** The same payload may be exported more than once (after a crash, or when
///   an attempt timed out after the backend had accepted it). [`Payload::meta`]'s `key` lets a
///   backend de-duplicate.
///
/// # Examples
///
/// ```
/// use outlast_core::{ExportError, Exporter, Payload};
///
/// /// Writes payload sizes to standard output.
/// #[derive(Debug)]
/// struct Stdout;
///
/// impl Exporter for Stdout {
///     async fn export(&self, payload: &Payload) -> Result<(), ExportError> {
///         println!("exported {} bytes", payload.len());
///         Ok(())
///     }
/// }
/// ```
pub trait Exporter: Send + Sync + 'static {
    /// Sends one payload. See the trait documentation for the contract.
    ///
    /// # Errors
    ///
    /// [`ExportError`], classified as retryable or permanent.
    ///
    /// # Cancel safety
    ///
    /// Must be cancel safe: the pipeline drops the future on timeout.
    fn export(&self, payload: &Payload) -> impl Future<Output = Result<(), ExportError>> + Send;

    /// A cheap check of whether the backend is reachable (a TCP connect, a health URL),
    /// used by the drain task while offline instead of sending real payloads.
    ///
    /// The default has no probe ([`Reachability::Unsupported`]).
    ///
    /// # Cancel safety
    ///
    /// Must be cancel safe: the pipeline bounds it with the attempt timeout.
    fn probe(&self) -> impl Future<Output = Reachability> + Send {
        async { Reachability::Unsupported }
    }

    /// How many `export` calls the drain task may have in flight at once while replaying a
    /// backlog. Records are still acknowledged in order. The default, 1, sends one at a time;
    /// an exporter whose backend accepts concurrent requests may allow more.
    fn max_in_flight(&self) -> usize {
        1
    }

    /// The longest one [`export`](Exporter::export) call can take, if the exporter bounds
    /// every call itself (a request timeout of its own). The client bounds every attempt
    /// with its own attempt timeout all the same; when this is set and not longer than that
    /// timeout, the client's timer waits a moment longer (100 ms), so that the exporter's
    /// own timeout, and its own error, normally end the attempt. The default is `None`.
    ///
    /// An exporter that declares a bound and does not keep it is cut off by the client's
    /// timer: it cannot hang `export`, a flush or the replay.
    fn export_timeout(&self) -> Option<Duration> {
        None
    }

    /// Whether the client may send `payload` together with its neighbours in one
    /// [`export_many`](Exporter::export_many) call while it replays a backlog, and up to
    /// what size. Called for each spooled record before it is sent.
    ///
    /// Return `Some` only for payloads whose encoding lets several of them be joined into
    /// one valid request (e.g. OTLP protobuf requests of one signal, whose concatenation is
    /// one request by protobuf's rule for repeated fields; newline-delimited JSON). The
    /// default, `None`, sends every payload on its own, so an exporter that does not
    /// override this never sees `export_many`.
    fn coalescing(&self, payload: &Payload) -> Option<Coalescing> {
        let _ = payload;
        None
    }

    /// Sends several consecutive spooled payloads as one request.
    ///
    /// The client calls it only while replaying, with two or more payloads, oldest first,
    /// for each of which [`coalescing`](Exporter::coalescing) returned `Some`, all
    /// [compatible](Coalescing::compatible) with the first, within the caps.
    /// [`export_timeout`](Exporter::export_timeout) must bound it as it bounds `export`.
    ///
    /// `Ok(())` means the backend accepted every payload: they are all deleted from the
    /// spool. A retryable error sends them all again later. A permanent error does not drop
    /// them: the client sends each again on its own with [`export`](Exporter::export), so
    /// that only the payloads the backend rejects by themselves are dropped.
    ///
    /// The default sends them one by one with `export`, in order, and stops at the first
    /// error (those already accepted may then be sent again: at least once).
    ///
    /// # Errors
    ///
    /// [`ExportError`], classified as for `export`.
    ///
    /// # Cancel safety
    ///
    /// Must be cancel safe, as `export`.
    fn export_many(
        &self,
        payloads: &[Payload],
    ) -> impl Future<Output = Result<(), ExportError>> + Send {
        async move {
            for p in payloads {
                self.export(p).await?;
            }
            Ok(())
        }
    }

    /// Whether [`export`](Exporter::export) and [`export_many`](Exporter::export_many) take
    /// payloads whose bytes are in `encoding` (and send them as they are, e.g. with that
    /// `Content-Encoding`). The client may store spooled payloads compressed; while it
    /// replays, it hands over a stored payload as it is only when its encoding is accepted,
    /// and decompresses it otherwise.
    ///
    /// The default accepts only [`ContentEncoding::Identity`]: an exporter that does not
    /// override this always gets the original bytes.
    fn accepts_encoding(&self, encoding: ContentEncoding) -> bool {
        encoding == ContentEncoding::Identity
    }

    /// Who this exporter delivers to, as recorded with every record it spools: the client
    /// replays a spooled record only through an exporter of the same identity, so that two
    /// services sharing a spool directory never send each other's data to their backends.
    ///
    /// Return something that names the destination and nothing secret (the HTTP exporter
    /// returns its URL without credentials). The default, `None`, lets the client use the
    /// identity given to its builder, or else the exporter's type name.
    fn identity(&self) -> Option<String> {
        None
    }

    /// Releases resources (connections, files) when the client shuts down.
    /// Called once, after the last `export`. The default does nothing.
    ///
    /// # Errors
    ///
    /// An error is logged by the client as a warning and returned from its `shutdown` (as
    /// `ShutdownError::Exporter`, with the flush report); the spool is closed either way.
    fn shutdown(&self) -> impl Future<Output = Result<(), ExportError>> + Send {
        async { Ok(()) }
    }
}

/// A boxed, `Send` future, as returned by [`DynExporter`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The object-safe form of [`Exporter`], implemented for every `Exporter`.
///
/// [`Exporter`] returns `impl Future`, which keeps implementations free of boxing and of
/// `async_trait`, but makes `dyn Exporter` impossible. Code that must hold exporters of
/// different types behind one pointer (the client does) uses `Arc<dyn DynExporter>`; each call
/// then costs one allocation, which is noise next to a network request.
pub trait DynExporter: Send + Sync + 'static {
    /// See [`Exporter::export`].
    fn export_boxed<'a>(&'a self, payload: &'a Payload) -> BoxFuture<'a, Result<(), ExportError>>;
    /// See [`Exporter::probe`].
    fn probe_boxed(&self) -> BoxFuture<'_, Reachability>;
    /// See [`Exporter::max_in_flight`].
    fn max_in_flight_dyn(&self) -> usize;
    /// See [`Exporter::export_timeout`].
    fn export_timeout_dyn(&self) -> Option<Duration>;
    /// See [`Exporter::accepts_encoding`].
    fn accepts_encoding_dyn(&self, encoding: ContentEncoding) -> bool;
    /// See [`Exporter::identity`].
    fn identity_dyn(&self) -> Option<String>;
    /// See [`Exporter::coalescing`].
    fn coalescing_dyn(&self, payload: &Payload) -> Option<Coalescing>;
    /// See [`Exporter::export_many`].
    fn export_many_boxed<'a>(
        &'a self,
        payloads: &'a [Payload],
    ) -> BoxFuture<'a, Result<(), ExportError>>;

    /// See [`Exporter::shutdown`].
    fn shutdown_boxed(&self) -> BoxFuture<'_, Result<(), ExportError>>;
}

impl<E: Exporter> DynExporter for E {
    fn export_boxed<'a>(&'a self, payload: &'a Payload) -> BoxFuture<'a, Result<(), ExportError>> {
        Box::pin(self.export(payload))
    }

    fn probe_boxed(&self) -> BoxFuture<'_, Reachability> {
        Box::pin(self.probe())
    }

    fn max_in_flight_dyn(&self) -> usize {
        self.max_in_flight()
    }

    fn export_timeout_dyn(&self) -> Option<Duration> {
        self.export_timeout()
    }

    fn identity_dyn(&self) -> Option<String> {
        self.identity()
    }

    fn accepts_encoding_dyn(&self, encoding: ContentEncoding) -> bool {
        self.accepts_encoding(encoding)
    }

    fn coalescing_dyn(&self, payload: &Payload) -> Option<Coalescing> {
        self.coalescing(payload)
    }

    fn export_many_boxed<'a>(
        &'a self,
        payloads: &'a [Payload],
    ) -> BoxFuture<'a, Result<(), ExportError>> {
        Box::pin(self.export_many(payloads))
    }

    fn shutdown_boxed(&self) -> BoxFuture<'_, Result<(), ExportError>> {
        Box::pin(self.shutdown())
    }
}

// Compile-time check that `DynExporter` stays object safe.
const _: Option<&dyn DynExporter> = None;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug, Default)]
    struct Counting(AtomicUsize);

    impl Exporter for Counting {
        async fn export(&self, _payload: &Payload) -> Result<(), ExportError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[tokio::test]
    async fn any_exporter_works_behind_dyn_with_default_lifecycle() {
        let inner = Arc::new(Counting::default());
        let dynamic: Arc<dyn DynExporter> = inner.clone();
        let p = Payload::new(&b"x"[..]);
        dynamic.export_boxed(&p).await.expect("export succeeds");
        dynamic.export_boxed(&p).await.expect("export succeeds");
        assert_eq!(inner.0.load(Ordering::SeqCst), 2);
        assert_eq!(dynamic.probe_boxed().await, Reachability::Unsupported);
        assert_eq!(dynamic.max_in_flight_dyn(), 1);
        assert_eq!(dynamic.export_timeout_dyn(), None);
        assert_eq!(dynamic.coalescing_dyn(&p), None);
        assert!(dynamic.accepts_encoding_dyn(ContentEncoding::Identity));
        assert!(
            !dynamic.accepts_encoding_dyn(ContentEncoding::Gzip),
            "an exporter gets the original bytes unless it says otherwise"
        );
        dynamic
            .export_many_boxed(&[p.clone(), p.clone()])
            .await
            .expect("export_many succeeds");
        assert_eq!(inner.0.load(Ordering::SeqCst), 4, "one by one by default");
        dynamic
            .shutdown_boxed()
            .await
            .expect("default shutdown is Ok");
    }
}

#[cfg(test)]
mod coalescing_tests {
    use super::*;
    use crate::payload::ContentType;

    #[derive(Debug)]
    struct FailsSecond(std::sync::atomic::AtomicUsize);

    impl Exporter for FailsSecond {
        async fn export(&self, _payload: &Payload) -> Result<(), ExportError> {
            let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n == 1 {
                Err(ExportError::permanent("second"))
            } else {
                Ok(())
            }
        }
    }

    #[tokio::test]
    async fn the_default_export_many_stops_at_the_first_error() {
        let e = FailsSecond(std::sync::atomic::AtomicUsize::new(0));
        let p = Payload::new(&b"x"[..]);
        let r = e.export_many(&[p.clone(), p.clone(), p]).await;
        assert!(r.expect_err("second fails").is_permanent());
        assert_eq!(e.0.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn payloads_are_compatible_only_with_the_same_content_type_and_encoding() {
        let a = Payload::new(&b"a"[..]).with_content_type(ContentType::Protobuf);
        let b = Payload::new(&b"b"[..])
            .with_content_type(ContentType::Protobuf)
            .with_key("k");
        let c = Payload::new(&b"c"[..]).with_content_type(ContentType::Json);
        assert!(Coalescing::compatible(&a, &b));
        assert!(!Coalescing::compatible(&a, &c));
        let gz = b
            .clone()
            .with_content_encoding(crate::payload::ContentEncoding::Gzip);
        assert!(!Coalescing::compatible(&a, &gz));
        assert!(Coalescing::compatible(&gz, &gz.clone().with_key("other")));
    }
}
