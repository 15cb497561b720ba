//! The HTTP exporter on hyper (being written, issue 5).
