//! Placeholder: the spool is being written (issue 3).
#![forbid(unsafe_code)]
