//! The outlast disk spool: append-only, CRC-framed segment files with a size cap, crash
//! recovery, acknowledgements that survive restarts, and lanes that let several processes
//! share one directory.
//!
//! What follows is the on-disk format specification. It is written once, in
//! `docs/spool-format.md` (the crate's `spool-format.md` is a symbolic link to it, which
//! `cargo package` follows, so the published crate carries the text), and included here;
//! the tests `format_doc_example_parses*` and `format_v2` parse its examples, so it stays
//! true.
//!
#![doc = include_str!("../spool-format.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod adopt;
mod background;
mod commit;
mod config;
mod cursor;
mod error;
#[cfg(feature = "fault-injection")]
pub mod fault;
mod format;
pub mod fs;
pub mod identity;
mod index;
pub mod inspect;
mod lane;
mod layout;
mod ledger;
mod locks;
mod reader;
mod recovery;
mod scan;
mod segfile;
mod seqset;
mod spool;
mod types;
mod writer;

pub use background::CURSOR_FSYNC_INTERVAL;
pub use config::{
    Adoption, DEFAULT_FSYNC_INTERVAL, DEFAULT_MAX_RECORD_BYTES, DEFAULT_SEGMENT_BYTES,
    DEFAULT_SPOOL_MAX_BYTES, DISK_FREE_SHARE_PERCENT, Durability, FullPolicy, SpoolConfig,
};
pub use error::{AppendError, AppendErrorKind, SpoolError};
/// The newest on-disk format version this build reads and writes. Tools print it next to a
/// segment that [`inspect`] reports as `newer_version`; what a version means stays in here.
pub use format::FORMAT_VERSION;
pub use format::{FORMAT_MAX_RECORD_BYTES, header_over_limit};
pub use ledger::CAP_REMEASURE_INTERVAL;
pub use outlast_core::Payload;
pub use spool::Spool;
pub use types::{
    Appended, Dropped, ForeignLane, ReadBatch, Record, RecordId, RecordedIdentity, RecoveryReport,
    SpoolStats,
};

/// The frame and cursor codec, for the spool's own tests and tools that build or pick apart
/// files byte by byte. Not part of the API: the format is specified by the crate
/// documentation, and the codec's functions may change in any release.
#[doc(hidden)]
pub mod testing {
    pub use crate::format::*;
}

// The crate's README (what crates.io shows) is compiled as a doctest, so it cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct CrateReadmeDoctests;
