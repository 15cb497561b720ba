//! outlast: telemetry export that survives network outages, crashes and restarts.
//!
//! Hand a [`Client`] encoded payloads (an OTLP batch, a JSON body, anything); it delivers them
//! through an [`Exporter`] (the [`http::HttpExporter`], or your own), and when the backend
//! cannot be reached it keeps them in a disk spool and delivers them later, oldest first,
//! without blocking the application and without losing what it accepted.
//!
//! # The pipeline
//!
//! [`Client::export`] first tries the exporter directly. A retryable failure is retried once
//! after 1 s; if that fails too, the payload is appended to the spool and the call returns
//! [`Delivery::Spooled`]. A permanent failure (an HTTP 400, say) is neither retried nor
//! spooled: it comes back as [`DropError::Permanent`], with the payload. Every attempt has its
//! own timeout, so `export` never hangs.
//!
//! Once a backlog exists (a payload was spooled, or an earlier process left records), new
//! payloads go straight to the spool, without touching the network: they queue behind the
//! backlog so that the backend sees data oldest first, and during an outage a call costs one
//! `write(2)` (microseconds), not a second of retry plus timeouts.
//!
//! One background task per client (the *drain task*) delivers the spool, oldest first, and
//! removes a record only after the backend confirmed it (at-least-once delivery). While the
//! backend is down it waits with jittered exponential backoff (1 s doubling to 128 s, raised
//! by the server's `Retry-After`) and tests the backend with the exporter's cheap
//! [`probe`](Exporter::probe) if it has one, or with the oldest record alone; while the
//! backend is unreachable at the transport level the probe runs every `probe_interval` (1 s),
//! so its return is noticed within a second whatever the outage's length. When the
//! backend is back it replays the backlog in batches with several requests in flight, so a
//! large backlog drains at the backend's speed. A record the backend rejects permanently is
//! dropped (counted, logged) so it cannot block the queue. Once the spool is empty, exports go
//! direct again. The task ends when the last `Client` clone is dropped; it never keeps the
//! process alive.
//!
//! Two settings shape a recovery. [`ReplayOrder::LiveFirst`] sends new payloads directly
//! once the backend answers again, while the backlog drains beside them (the default,
//! [`ReplayOrder::OldestFirst`], queues them behind it); a replay rate cap
//! ([`ClientBuilder::replay_bytes_per_sec`], [`ClientBuilder::replay_requests_per_sec`])
//! spares a recovering backend. [`ClientStats`] shows the backlog, the drain rate and the
//! time left.
//!
//! Nothing is dropped silently: every [`DropError`] and every record dropped by the drain
//! task is counted in [`Client::stats`] under its [`DropReason`] and logged at error level
//! (at most once a minute per reason). While retrying, a warning of the form
//! `currently retrying 12 failed export(s) (98304 bytes)` is logged at most once a minute;
//! going offline and online are logged at info level. All events carry structured fields.
//!
//! If the spool cannot be opened or written (no permission, read-only or full disk), the
//! client warns once and carries on: exports still succeed while the backend is up, and what
//! cannot be delivered is dropped as [`DropReason::SpoolUnavailable`]. It never crashes the
//! application, and [`ClientBuilder::build`] fails only for invalid settings.
//!
//! # An async service
//!
//! ```
//! use std::time::Duration;
//! use outlast_client::{Client, ContentType, Delivery, ExportError, Exporter, Payload};
//!
//! /// Your backend (or use `outlast_client::http::HttpExporter`).
//! #[derive(Debug)]
//! struct Collector;
//!
//! impl Exporter for Collector {
//!     async fn export(&self, payload: &Payload) -> Result<(), ExportError> {
//!         // Send `payload.bytes()` somewhere; classify failures as retryable or permanent.
//!         let _ = payload;
//!         Ok(())
//!     }
//! }
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! #   let dir = tempfile::tempdir()?;
//! #   let spool_dir = dir.path().join("outlast");
//! #   /*
//!     let spool_dir = "/var/lib/my-service/outlast"; // persistent storage on a server
//! #   */
//!     let client = Client::builder()
//!         .spool_dir(spool_dir)
//!         .attempt_timeout(Duration::from_secs(5))
//!         .build(Collector)?;
//!
//!     let batch = Payload::new(&b"{\"resourceSpans\":[]}"[..]).with_content_type(ContentType::Json);
//!     match client.export(batch).await {
//!         Ok(Delivery::Delivered) => {}
//!         Ok(Delivery::Spooled) => {} // on disk; the drain task delivers it later
//!         Err(dropped) => eprintln!("telemetry dropped: {dropped}"), // counted in stats()
//!     }
//!
//!     // On the way out: deliver what can be delivered in 5 s, keep the rest on disk.
//!     let report = client.shutdown(Duration::from_secs(5)).await?;
//!     assert!(report.complete);
//!     Ok(())
//! }
//! ```
//!
//! # A serverless handler
//!
//! A function instance may be frozen right after it answers, so a handler flushes before it
//! returns, within one time budget: [`Client::export_by`] spools instead of retrying past its
//! deadline, and [`Client::force_flush`] never takes longer than its timeout, whatever the
//! network does (it returns at once when the backend is unreachable); what it could not
//! deliver stays in the spool for the next invocation (or the next cold start, which drains
//! what an earlier instance left).
//!
//! ```
//! use std::time::Duration;
//! use outlast_client::{Client, ExportError, Exporter, Payload};
//! use tokio::time::Instant;
//!
//! # #[derive(Debug)] struct Collector;
//! # impl Exporter for Collector {
//! #     async fn export(&self, _p: &Payload) -> Result<(), ExportError> { Ok(()) }
//! # }
//! async fn handle(client: &Client, event: &str) -> String {
//!     let answer = format!("handled {event}");
//!     let deadline = Instant::now() + Duration::from_millis(500);
//!     let _ = client.export_by(Payload::new(answer.clone().into_bytes()), deadline).await;
//!
//!     let report = client
//!         .force_flush(deadline.saturating_duration_since(Instant::now()))
//!         .await;
//!     if !report.complete {
//!         eprintln!("{} record(s) left for later", report.remaining_records);
//!     }
//!     answer
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! // Built once per instance; `/tmp` is the writable place in most serverless sandboxes.
//! let client = Client::builder()
//! #   .spool_dir(dir.path())
//!     .build(Collector)?;
//! assert_eq!(handle(&client, "e1").await, "handled e1");
//! # Ok(())
//! # }
//! ```
//!
//! # Configuration
//!
//! Every setting has a named default and a [`ClientBuilder`] method;
//! [`ClientBuilder::from_env`] reads the same settings from the environment, so operators can
//! tune without a rebuild (builder calls made afterwards take precedence). Unset or empty
//! variables keep the default. A value that cannot be parsed, or that [`ClientBuilder::build`]
//! rejects, is reported as [`ConfigError::Invalid`] naming the variable.
//!
//! Durations are a number with a unit (`500ms`, `10s`, `2m`, `1h`; `us` too) or a plain number
//! of seconds (`10`, `0.5`). Sizes are bytes (`1048576`) or a whole number with a binary unit
//! (`64KiB`, `512MiB`, `1GiB`; `K`, `M`, `G` mean the same).
//!
//! | Variable | Builder method | Format | Default |
//! |---|---|---|---|
//! | `OUTLAST_SPOOL_DIR` | [`spool_dir`](ClientBuilder::spool_dir) | path | `<temp dir>/outlast-<executable name>-<user id>`, one per service ([`default_spool_dir`]; servers: use persistent storage) |
//! | `OUTLAST_SPOOL_MAX_BYTES` | [`spool_max_bytes`](ClientBuilder::spool_max_bytes) | size | 512 MiB |
//! | `OUTLAST_SPOOL_SEGMENT_BYTES` | [`segment_bytes`](ClientBuilder::segment_bytes) | size | 16 MiB |
//! | `OUTLAST_MAX_RECORD_BYTES` | [`max_record_bytes`](ClientBuilder::max_record_bytes) | size | 8 MiB |
//! | `OUTLAST_SPOOL_FULL_POLICY` | [`full_policy`](ClientBuilder::full_policy) | `drop_newest` or `drop_oldest` | `drop_newest` |
//! | `OUTLAST_MAX_RECORD_AGE` | [`max_record_age`](ClientBuilder::max_record_age) | duration, or `none` / `off` | none (records never expire) |
//! | `OUTLAST_DURABILITY` | [`durability`](ClientBuilder::durability) | `os_write` or `fsync_every_append` (`fsync` is accepted too) | `os_write` |
//! | `OUTLAST_FSYNC_INTERVAL` | [`durability`](ClientBuilder::durability) (`OsWrite { fsync_interval }`) | duration (only with `os_write`) | 1 s |
//! | `OUTLAST_ATTEMPT_TIMEOUT` | [`attempt_timeout`](ClientBuilder::attempt_timeout) | duration | 10 s |
//! | `OUTLAST_IMMEDIATE_RETRY_DELAY` | [`immediate_retry_delay`](ClientBuilder::immediate_retry_delay) | duration, at most 60 s | 1 s |
//! | `OUTLAST_INITIAL_BACKOFF` | [`initial_backoff`](ClientBuilder::initial_backoff) | duration | 1 s |
//! | `OUTLAST_MAX_BACKOFF` | [`max_backoff`](ClientBuilder::max_backoff) | duration | 128 s |
//! | `OUTLAST_BACKOFF_JITTER` | [`jitter`](ClientBuilder::jitter) | number in `[0, 1]` | 0.5 |
//! | `OUTLAST_MAX_RETRY_AFTER` | [`max_retry_after`](ClientBuilder::max_retry_after) | duration | 128 s |
//! | `OUTLAST_WARN_INTERVAL` | [`warn_interval`](ClientBuilder::warn_interval) | duration | 60 s |
//! | `OUTLAST_BATCH_SIZE` | [`batch_size`](ClientBuilder::batch_size) | count | 100 |
//! | `OUTLAST_BATCH_MAX_BYTES` | [`batch_max_bytes`](ClientBuilder::batch_max_bytes) | size | 4 MiB |
//! | `OUTLAST_MAX_IN_FLIGHT` | [`max_in_flight`](ClientBuilder::max_in_flight) | count, 1 to 1024 | 4 (and at most the exporter's own limit) |
//! | `OUTLAST_BATCH_DELAY` | [`batch_delay`](ClientBuilder::batch_delay) | duration | 0 |
//! | `OUTLAST_REPLAY_ORDER` | [`replay_order`](ClientBuilder::replay_order) | `oldest_first` or `live_first` | `oldest_first` ([`ReplayOrder`]) |
//! | `OUTLAST_REPLAY_BYTES_PER_SEC` | [`replay_bytes_per_sec`](ClientBuilder::replay_bytes_per_sec) | rate (a size per second: `5MiB/s`), or `none` / `off` | none (no cap) |
//! | `OUTLAST_REPLAY_REQUESTS_PER_SEC` | [`replay_requests_per_sec`](ClientBuilder::replay_requests_per_sec) | count (per second), or `none` / `off` | none (no cap) |
//! | `OUTLAST_PROBE_INTERVAL` | [`probe_interval`](ClientBuilder::probe_interval) | duration | 1 s |
//! | `OUTLAST_COALESCE_MAX_RECORDS` | [`coalesce_max_records`](ClientBuilder::coalesce_max_records) | count | 25 |
//! | `OUTLAST_COALESCE_MAX_BYTES` | [`coalesce_max_bytes`](ClientBuilder::coalesce_max_bytes) | size | 1 MiB |
//! | `OUTLAST_IDENTITY` | [`identity`](ClientBuilder::identity) | text | the exporter's identity (`HttpExporter`: its endpoint without the query), else its type name |
//!
//! The HTTP exporter reads its own variables (endpoint, headers...): see [`http`].
//!
//! # Durability
//!
//! In the default [`Durability::OsWrite`] mode a spooled payload has been handed to the
//! operating system when `export` returns: it survives a crash or `kill -9` of the process;
//! the spool is fsynced every second, on rotation and on shutdown. With
//! [`Durability::FsyncEveryAppend`] it has reached the disk (concurrent exports share one
//! fsync); the append then runs on Tokio's blocking pool.
//!
//! Delivery is at least once. The drain task acknowledges the delivered prefix of the backlog
//! as it grows, and the spool writes every acknowledgement to the OS at once, so after a
//! process crash only records sent but not yet acknowledged are sent again: the replay window
//! never reaches more than `batch_size` records past the oldest record not yet delivered, so
//! that is at most `batch_size` records, plus those whose acknowledgement was being written
//! at the moment of the crash. `docs/delivery-guarantees.md` has the details, including a
//! power loss.
//!
//! # The public API
//!
//! Everything an application or an exporter author writes is at the crate root:
//!
//! - the pipeline: [`Client`], [`ClientBuilder`] (and [`Client::builder`]), [`Delivery`],
//!   [`FlushReport`], [`FlushOptions`], [`FlushOutcome`], [`BackendState`], [`ClientStats`],
//!   [`DropCounts`], [`DropReason`], [`SpoolState`];
//! - errors: [`DropError`], [`ShutdownError`], [`SpoolFault`], [`ConfigError`],
//!   [`SpoolError`], and [`ErrorChain`] to print an error with its causes;
//! - writing an exporter: [`Exporter`], [`DynExporter`], [`Payload`], [`PayloadMeta`],
//!   [`ContentType`], [`ContentEncoding`], [`ExportError`], [`BoxError`], [`Reachability`],
//!   [`Coalescing`];
//! - settings: [`Durability`], [`FullPolicy`], [`Adoption`], [`ReplayOrder`], [`default_spool_dir`]; each
//!   setting's default is an associated constant next to its setter on [`ClientBuilder`]
//!   (`ClientBuilder::DEFAULT_ATTEMPT_TIMEOUT`, ...), and so are the limits
//!   `ClientBuilder::MAX_IN_FLIGHT_LIMIT` and `ClientBuilder::MAX_IMMEDIATE_RETRY_DELAY`;
//!   [`units::MAX_DURATION`] is the longest duration the text grammar reads.
//!
//! And these modules:
//!
//! - [`http`]: the HTTP exporter ([`http::HttpExporter`], its builder, errors and variables);
//! - [`env`](mod@env): the names of the `OUTLAST_*` variables and [`env::unknown_variables`];
//! - [`units`]: the grammar of durations and sizes written as text;
//! - `testing` (feature `testing`): test doubles, below.
//!
//! # Features
//!
//! - `testing`: `testing::MemoryExporter`, a scriptable in-memory exporter (fail, hang,
//!   throttle, reject on command) and `testing::TestReceiver`, a loopback HTTP server, for
//!   your own tests.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

/// The target of this crate's `tracing` events, whichever part of the client logs them:
/// filter them with it, e.g. `RUST_LOG=outlast::client=debug` or
/// `EnvFilter::new("info,outlast::client=warn")`. The spool's events have the target
/// `outlast_spool`; the OpenTelemetry bridge's, `outlast::otel`.
pub const LOG_TARGET: &str = "outlast::client";

mod attempt;
mod client;
mod compress;
mod config;
mod defaults;
mod drain;
pub mod env;
mod error;
mod fill;
mod flush;
mod health;
mod mailbox;
mod open;
mod pace;
mod replay;
mod shared;
mod stats;
mod store;
mod window;
mod work;

// What a user writes, and nothing else: the core's internals (`throttle`, `BoxFuture`,
// `unix_nanos`, the retry schedule) stay in `outlast_core`, and each default is an associated
// constant of `ClientBuilder` (`defaults.rs`).
pub use outlast_core::{
    BoxError, Coalescing, ConfigError, ContentEncoding, ContentType, DynExporter, ErrorChain,
    ExportError, Exporter, Payload, PayloadMeta, Reachability, units,
};
pub use outlast_spool::{Adoption, Durability, FullPolicy, SpoolError};

pub use client::Client;
pub use config::{ClientBuilder, ReplayOrder, default_spool_dir};
pub use error::{Delivery, DropError, ShutdownError, SpoolFault};
pub use flush::{FlushOptions, FlushOutcome, FlushReport};
pub use health::BackendState;
pub use stats::{ClientStats, DropCounts, DropReason, SpoolState};

pub mod http;
#[cfg(feature = "testing")]
pub mod testing;

#[cfg(test)]
mod tests {
    /// The names a `pub use` of this file brings to the crate root.
    fn reexported_names(source: &str) -> Vec<String> {
        let mut names = Vec::new();
        for statement in source.split("pub use ").skip(1) {
            let statement = statement.split(';').next().unwrap_or_default();
            let list = match (statement.find('{'), statement.rfind('}')) {
                (Some(a), Some(b)) => &statement[a + 1..b],
                _ => statement.rsplit("::").next().unwrap_or_default(),
            };
            for item in list.split(',') {
                let item = item.trim();
                let name = item.rsplit(" as ").next().unwrap_or(item).trim();
                if !name.is_empty() {
                    names.push(name.to_owned());
                }
            }
        }
        names
    }

    #[test]
    fn the_crate_doc_lists_every_name_at_the_root() {
        let source = include_str!("lib.rs");
        let doc: String = source
            .lines()
            .filter(|l| l.starts_with("//!"))
            .collect::<Vec<_>>()
            .join(" ");
        let code = source.split("#[cfg(test)]").next().unwrap_or_default();
        let names = reexported_names(code);
        assert!(names.len() > 25, "{names:?}");
        for name in names {
            assert!(
                doc.contains(&format!("[`{name}`]")) || doc.contains(&format!("[`{name}`](")),
                "{name} is public at the root but not listed in the crate doc"
            );
        }
    }
}

// The README's examples are compiled as doctests of this crate, so they cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;

// So are the pages that show how to use it.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/getting-started.md")]
struct GettingStartedDoctests;

#[cfg(doctest)]
#[doc = include_str!("../../../docs/configuration.md")]
struct ConfigurationDoctests;

#[cfg(doctest)]
#[doc = include_str!("../../../docs/exporter.md")]
struct ExporterDoctests;

// The crate's README (what crates.io shows) is compiled as a doctest, so it cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct CrateReadmeDoctests;
