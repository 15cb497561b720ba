//! Benchmark harness (being written, issue 7).
#![forbid(unsafe_code)]
fn main() {}
