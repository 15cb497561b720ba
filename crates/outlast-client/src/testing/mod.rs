//! Test support for applications and exporter authors: a scriptable in-memory exporter and a
//! loopback HTTP receiver that can be switched down, slow, 5xx, 429, hanging or resetting.

mod memory;
mod receiver;
