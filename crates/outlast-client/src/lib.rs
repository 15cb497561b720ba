//! outlast: telemetry export that survives network outages, crashes and restarts.
//!
//! (Crate documentation is being written, issue 4.)

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub use outlast_core::*;

pub mod http;
#[cfg(feature = "testing")]
pub mod testing;
