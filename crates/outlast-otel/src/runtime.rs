//! Where the bridge's Tokio work runs: the runtime current at build time, one given to the
//! builder, or a small runtime of its own when the set-up code runs outside Tokio.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::runtime::{Handle, Runtime};

/// A handle to the runtime the clients and hand-off tasks run on, keeping an owned runtime
/// alive as long as an exporter or pipeline uses it.
#[derive(Debug, Clone)]
pub(crate) struct RuntimeRef {
    handle: Handle,
    _owned: Option<Arc<OwnedRuntime>>,
}

/// A runtime the bridge started itself. Dropped with `shutdown_background`, which (unlike
/// dropping a `Runtime`) may happen inside another runtime's task without panicking.
#[derive(Debug)]
struct OwnedRuntime(Mutex<Option<Runtime>>);

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        let rt = self
            .0
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(rt) = rt {
            rt.shutdown_background();
        }
    }
}

impl RuntimeRef {
    /// `given`, else the current runtime, else a new one-worker runtime of our own.
    ///
    /// # Errors
    ///
    /// The I/O error of starting a runtime (threads could not be spawned).
    pub(crate) fn resolve(given: Option<Handle>) -> std::io::Result<RuntimeRef> {
        if let Some(handle) = given.or_else(|| Handle::try_current().ok()) {
            return Ok(RuntimeRef {
                handle,
                _owned: None,
            });
        }
        // One worker is plenty: it only runs the hand-off tasks, the drain tasks and hyper.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("outlast-otel")
            .enable_all()
            .build()?;
        Ok(RuntimeRef {
            handle: rt.handle().clone(),
            _owned: Some(Arc::new(OwnedRuntime(Mutex::new(Some(rt))))),
        })
    }

    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }
}
