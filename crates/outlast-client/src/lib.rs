//! Placeholder: the client pipeline is being written (issue 4).
#![forbid(unsafe_code)]
