//! Core types of outlast: the [`Exporter`] trait that backends implement, the [`Payload`]
//! handed to it, the [`ExportError`] it returns, and the grammar of durations and sizes
//! written as text ([`units`]).
//!
//! This crate does no file or network I/O and starts no tasks: it is what a library author
//! depends on to write an exporter, and what the other outlast crates share. The modules
//! `retry` (the retry schedule) and `throttle` (log throttling) are public for those crates
//! only: they are hidden from this documentation and are not part of the API.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod error;
mod exporter;
mod payload;
#[doc(hidden)]
pub mod retry;
#[doc(hidden)]
pub mod throttle;
pub mod units;

pub use error::{BoxError, ErrorChain, ExportError};
pub use exporter::{BoxFuture, Coalescing, DynExporter, Exporter, Reachability};
pub use payload::{ContentEncoding, ContentType, Payload, PayloadMeta, unix_nanos};

/// A configuration value that was rejected, naming the parameter and the reason.
///
/// `Debug` prints the same line as `Display`, so `main() -> Result<(), Box<dyn Error>>`
/// shows `Error: invalid configuration: OUTLAST_BATCH_SIZE: ...`.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The parameter's value is not allowed, alone or together with another one.
    #[error("invalid configuration: {param}: {reason}")]
    Invalid {
        /// The parameter's name, as in the builder (or the environment variable's name).
        param: &'static str,
        /// Why the value was rejected.
        reason: String,
    },
}

impl std::fmt::Debug for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&ErrorChain(self), f)
    }
}

impl ConfigError {
    /// A rejected `param`, for `reason`.
    pub fn invalid(param: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            param,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    fn assert_send_sync_static<T: Send + Sync + 'static>() {}

    #[test]
    fn config_error_debug_reads_like_its_display() {
        let e = super::ConfigError::invalid("OUTLAST_BATCH_SIZE", "must be at least 1");
        let expected = "invalid configuration: OUTLAST_BATCH_SIZE: must be at least 1";
        assert_eq!(e.to_string(), expected);
        assert_eq!(format!("{e:?}"), expected);
        let boxed: Box<dyn std::error::Error> = Box::new(e);
        assert_eq!(format!("{boxed:?}"), expected);
    }

    #[test]
    fn public_errors_are_send_sync_static() {
        assert_send_sync_static::<super::ConfigError>();
        assert_send_sync_static::<super::ExportError>();
    }
}

// The crate's README (what crates.io shows) is compiled as a doctest, so it cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct CrateReadmeDoctests;
