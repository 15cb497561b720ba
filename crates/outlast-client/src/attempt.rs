//! One export attempt, bounded in time: the exporter and the timers around each call, for
//! direct exports and replayed records alike. It reports nothing: the caller decides what a
//! failure means and tells the drain task (direct exports) or its own books (replay).

use std::sync::Arc;
use std::time::Duration;

use outlast_core::{DynExporter, ExportError, Payload};
use tokio::time::Instant;

/// How much longer than the attempt timeout the client waits for an exporter that bounds
/// its own calls within it (`Exporter::export_timeout`): long enough for the exporter's own
/// timeout to fire first and report its own error, short enough that an exporter that does
/// not keep its promise holds an attempt only a moment longer.
pub(crate) const EXPORTER_TIMEOUT_GRACE: Duration = Duration::from_millis(100);

/// The exporter and the bound on each attempt.
pub(crate) struct Attempts {
    pub(crate) exporter: Arc<dyn DynExporter>,
    /// The exporter bounds every export within this time itself (see
    /// `Exporter::export_timeout`), if it does.
    exporter_timeout: Option<Duration>,
    /// The client's `attempt_timeout`.
    timeout: Duration,
}

impl Attempts {
    pub(crate) fn new(exporter: Arc<dyn DynExporter>, timeout: Duration) -> Attempts {
        let exporter_timeout = exporter.export_timeout_dyn();
        Attempts {
            exporter,
            exporter_timeout,
            timeout,
        }
    }

    /// One attempt bounded by the attempt timeout: one payload through `export`, several
    /// (merged) through `export_many`.
    pub(crate) async fn attempt(&self, payloads: &[Payload]) -> Result<(), ExportError> {
        self.attempt_by(payloads, None).await.0
    }

    /// One attempt of `payloads` bounded by the attempt timeout and by `deadline`. The flag
    /// is true when the attempt was cut short by the deadline (not by the attempt timeout):
    /// its failure then says nothing about the backend.
    pub(crate) async fn attempt_by(
        &self,
        payloads: &[Payload],
        deadline: Option<Instant>,
    ) -> (Result<(), ExportError>, bool) {
        let mut limit = self.timeout;
        let mut cut = false;
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left < limit {
                limit = left;
                cut = true;
            }
        }
        let send = match payloads {
            [payload] => self.exporter.export_boxed(payload),
            merged => self.exporter.export_many_boxed(merged),
        };
        // The client's timer bounds every attempt, whatever the exporter declares: an
        // exporter that says it bounds its calls and then hangs must not hang `export` or
        // the replay. When its own bound is not longer than ours, ours waits a little longer
        // (not past a caller's deadline), so that the exporter's own timeout, with its own
        // error, is the one that normally ends the attempt.
        let timer = if !cut && self.exporter_timeout.is_some_and(|t| t <= limit) {
            limit.saturating_add(EXPORTER_TIMEOUT_GRACE)
        } else {
            limit
        };
        let result = match tokio::time::timeout(timer, send).await {
            Ok(result) => result,
            Err(_) => Err(ExportError::Timeout { after: timer }),
        };
        let cut_short = cut && matches!(result, Err(ExportError::Timeout { .. }));
        (result, cut_short)
    }
}
