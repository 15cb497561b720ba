//! Project automation (being written).
#![forbid(unsafe_code)]
fn main() {}
