//! A scriptable in-memory exporter (being written, issue 4).
