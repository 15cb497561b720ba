//! Building a client: resolving the settings, naming its identity, opening the spool
//! (recovering what an earlier process left there) and starting the drain task.

use std::sync::Arc;

use outlast_core::{ConfigError, DynExporter, Exporter};
use outlast_spool::Spool;

use crate::shared::Shared;
use crate::{Client, ClientBuilder, DropReason};

impl ClientBuilder {
    /// Builds a client that exports through `exporter`, opens the spool (recovering what an
    /// earlier process left there), and starts the drain task on the Tokio runtime (the
    /// current one, or the one given to [`runtime`](ClientBuilder::runtime); it must have its
    /// time driver enabled, as `#[tokio::main]` and `Builder::enable_all` do).
    ///
    /// Opening the spool does blocking file I/O (it reads segment headers and scans the last
    /// segment): call this at start-up.
    ///
    /// A spool that cannot be opened (permissions, read-only, not a directory) does not make
    /// this fail: the client warns once and runs without one.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] for an invalid setting (naming it, or the environment
    /// variable it came from), or (`param: "runtime"`) when called outside a Tokio runtime
    /// and no [`runtime`](ClientBuilder::runtime) was given.
    ///
    /// The client's identity (see [`identity`](ClientBuilder::identity)) is the builder's,
    /// else the exporter's [`identity`](Exporter::identity), else the exporter's type name.
    pub fn build<E: Exporter>(self, exporter: E) -> Result<Client, ConfigError> {
        let type_name = std::any::type_name::<E>();
        self.build_named(Arc::new(exporter), Some(type_name), None)
    }

    /// As [`build`](ClientBuilder::build), for an exporter already behind a pointer.
    ///
    /// The exporter's type is not known here: without an
    /// [`identity`](ClientBuilder::identity) on the builder or the exporter, the client's
    /// lanes record no identity, and it shares them with every other client that has none.
    ///
    /// # Errors
    ///
    /// As [`build`](ClientBuilder::build).
    pub fn build_dyn(self, exporter: Arc<dyn DynExporter>) -> Result<Client, ConfigError> {
        self.build_named(exporter, None, None)
    }

    /// As [`build`](ClientBuilder::build), with every operation on the spool's segment and
    /// cursor files going through `fs` (see [`Spool::open_with_fs`]; lane directories and
    /// lock files are handled directly): tests inject disk faults this way. Not for
    /// production use. Available with the `testing` feature.
    ///
    /// # Errors
    ///
    /// As [`build`](ClientBuilder::build).
    #[cfg(feature = "testing")]
    pub fn build_with_spool_fs<E: Exporter>(
        self,
        exporter: E,
        fs: Arc<dyn outlast_spool::fs::SpoolFs>,
    ) -> Result<Client, ConfigError> {
        let type_name = std::any::type_name::<E>();
        self.build_named(Arc::new(exporter), Some(type_name), Some(fs))
    }

    fn build_named(
        self,
        exporter: Arc<dyn DynExporter>,
        type_name: Option<&'static str>,
        fs: Option<Arc<dyn outlast_spool::fs::SpoolFs>>,
    ) -> Result<Client, ConfigError> {
        let mut settings = self.resolve()?;
        let recovery = self.resolve_recovery()?;
        let identity = recovery
            .identity
            .clone()
            .or_else(|| exporter.identity_dyn().filter(|i| !i.trim().is_empty()))
            .or_else(|| type_name.map(str::to_owned));
        settings.spool = settings.spool.with_identity(identity);
        let runtime = match self.runtime {
            Some(h) => h,
            None => tokio::runtime::Handle::try_current().map_err(|_| {
                ConfigError::invalid(
                    "runtime",
                    "build() must be called within a Tokio runtime, or be given one with ClientBuilder::runtime",
                )
            })?,
        };
        let opened = match fs {
            Some(fs) => Spool::open_with_fs(settings.spool.clone(), fs),
            None => Spool::open(settings.spool.clone()),
        };
        let (spool, open_error, recovered) = match opened {
            Ok((spool, report)) => {
                if report.records > 0
                    || report.corrupt_frames_skipped > 0
                    || report.torn_tail_bytes_truncated > 0
                {
                    tracing::info!(target: crate::LOG_TARGET,
                        dir = %settings.spool.root().display(),
                        records = report.records,
                        bytes = report.bytes,
                        torn_tail_bytes_truncated = report.torn_tail_bytes_truncated,
                        corrupt_frames_skipped = report.corrupt_frames_skipped,
                        adopted_lanes = report.adopted_lanes.len(),
                        "outlast: spool recovered; draining what an earlier run left"
                    );
                }
                if !report.newer_version_files.is_empty() {
                    tracing::warn!(target: crate::LOG_TARGET,
                        dir = %settings.spool.root().display(),
                        files = report.newer_version_files.len(),
                        "outlast: spool files of a newer format version left untouched"
                    );
                }
                (Some(Arc::new(spool)), None, report)
            }
            Err(e) => {
                tracing::warn!(target: crate::LOG_TARGET,
                    dir = %settings.spool.root().display(),
                    error = %e,
                    "outlast: spool unavailable, continuing without it: payloads that cannot be delivered will be dropped"
                );
                (None, Some(Arc::new(e)), Default::default())
            }
        };
        let (mailbox, inbox) = crate::mailbox::mailbox();
        let shared = Arc::new(Shared::new(
            exporter,
            settings,
            recovery,
            spool,
            open_error,
            recovered.records > 0,
            mailbox,
        ));
        if recovered.corrupt_frames_skipped > 0 {
            shared.record_drop(DropReason::Corrupt, recovered.corrupt_frames_skipped);
        }
        // The spool warned about lanes of another identity as it opened (once): they are
        // only counted here, for `stats()`.
        let foreign: u64 = recovered.foreign_lanes.iter().map(|l| l.records).sum();
        shared
            .foreign_records
            .store(foreign, std::sync::atomic::Ordering::Release);
        Ok(Client::start(shared, inbox, &runtime))
    }
}
