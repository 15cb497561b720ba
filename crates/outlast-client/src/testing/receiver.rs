//! A loopback HTTP test receiver (being written, issue 5).
