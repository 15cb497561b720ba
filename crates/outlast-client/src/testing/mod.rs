//! Test support for applications and exporter authors: a scriptable in-memory exporter and a
//! loopback HTTP receiver that can be switched down, slow, 5xx, 429, hanging or resetting.
//!
//! Enabled by the `testing` feature; not meant for production builds.

mod memory;
mod receiver;

pub use memory::{MemoryExporter, Outcome, ProbeMode};
pub use receiver::{
    Answer, CannedResponse, Mode, ReceivedRequest, ReceiverError, Recording, TestReceiver,
    TestReceiverBuilder,
};
