//! The defaults of the client's settings, as associated constants of [`ClientBuilder`], next
//! to the setters they are the defaults of.

use std::time::Duration;

use crate::config::{self, ClientBuilder};

impl ClientBuilder {
    /// Default of [`attempt_timeout`](ClientBuilder::attempt_timeout): 10 s, far above a
    /// healthy backend's answer time and short enough that a hung connection is noticed
    /// quickly.
    pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = config::DEFAULT_ATTEMPT_TIMEOUT;
    /// Default of [`immediate_retry_delay`](ClientBuilder::immediate_retry_delay): 1 s.
    pub const DEFAULT_IMMEDIATE_RETRY_DELAY: Duration =
        outlast_core::retry::DEFAULT_IMMEDIATE_RETRY_DELAY;
    /// The longest [`immediate_retry_delay`](ClientBuilder::immediate_retry_delay) accepts
    /// (60 s): the quick retry waits inside the caller's `export`, so it must stay short.
    pub const MAX_IMMEDIATE_RETRY_DELAY: Duration = outlast_core::retry::MAX_IMMEDIATE_RETRY_DELAY;
    /// Default of [`initial_backoff`](ClientBuilder::initial_backoff): 1 s.
    pub const DEFAULT_INITIAL_BACKOFF: Duration = outlast_core::retry::DEFAULT_INITIAL_BACKOFF;
    /// Default of [`max_backoff`](ClientBuilder::max_backoff): 128 s.
    pub const DEFAULT_MAX_BACKOFF: Duration = outlast_core::retry::DEFAULT_MAX_BACKOFF;
    /// Default of [`jitter`](ClientBuilder::jitter): each backoff delay is randomised by this
    /// fraction.
    pub const DEFAULT_JITTER: f64 = outlast_core::retry::DEFAULT_JITTER;
    /// Default of [`max_retry_after`](ClientBuilder::max_retry_after): 128 s.
    pub const DEFAULT_MAX_RETRY_AFTER: Duration = outlast_core::retry::DEFAULT_MAX_RETRY_AFTER;
    /// Default of [`warn_interval`](ClientBuilder::warn_interval): 60 s.
    pub const DEFAULT_WARN_INTERVAL: Duration = outlast_core::throttle::DEFAULT_WARN_INTERVAL;
    /// Default fsync interval of [`Durability::OsWrite`](crate::Durability::OsWrite), the
    /// default [`durability`](ClientBuilder::durability): 1 s.
    pub const DEFAULT_FSYNC_INTERVAL: Duration = outlast_spool::DEFAULT_FSYNC_INTERVAL;
    /// Default of [`spool_max_bytes`](ClientBuilder::spool_max_bytes): 512 MiB.
    pub const DEFAULT_SPOOL_MAX_BYTES: u64 = outlast_spool::DEFAULT_SPOOL_MAX_BYTES;
    /// Default of [`segment_bytes`](ClientBuilder::segment_bytes).
    pub const DEFAULT_SEGMENT_BYTES: u64 = outlast_spool::DEFAULT_SEGMENT_BYTES;
    /// Default of [`max_record_bytes`](ClientBuilder::max_record_bytes).
    pub const DEFAULT_MAX_RECORD_BYTES: u64 = outlast_spool::DEFAULT_MAX_RECORD_BYTES;
    /// Default of [`batch_size`](ClientBuilder::batch_size): 100 records keep a replay
    /// batch's memory small while amortising its acknowledgement (one cursor write).
    pub const DEFAULT_BATCH_SIZE: usize = config::DEFAULT_BATCH_SIZE;
    /// Default of [`batch_max_bytes`](ClientBuilder::batch_max_bytes): 4 MiB bounds the
    /// memory a replay holds however large the payloads.
    pub const DEFAULT_BATCH_MAX_BYTES: u64 = config::DEFAULT_BATCH_MAX_BYTES;
    /// Default of [`max_in_flight`](ClientBuilder::max_in_flight): 4 requests hide most of a
    /// round trip without overloading a recovering backend.
    pub const DEFAULT_MAX_IN_FLIGHT: usize = config::DEFAULT_MAX_IN_FLIGHT;
    /// The most [`max_in_flight`](ClientBuilder::max_in_flight) accepts: far above what any
    /// backend needs, and small enough that the replay window's bookkeeping stays a few
    /// kilobytes.
    pub const MAX_IN_FLIGHT_LIMIT: usize = config::MAX_IN_FLIGHT_LIMIT;
    /// Default of [`batch_delay`](ClientBuilder::batch_delay): none, so a backlog drains at
    /// the backend's speed.
    pub const DEFAULT_BATCH_DELAY: Duration = config::DEFAULT_BATCH_DELAY;
    /// Default of [`probe_interval`](ClientBuilder::probe_interval): about a second notices a
    /// backend's return within a second, while a connect per second costs a dead backend
    /// nothing worth mentioning.
    pub const DEFAULT_PROBE_INTERVAL: Duration = config::DEFAULT_PROBE_INTERVAL;
    /// Default of [`coalesce_max_records`](ClientBuilder::coalesce_max_records): records per
    /// merged replay request, for exporters that merge.
    pub const DEFAULT_COALESCE_MAX_RECORDS: usize = config::DEFAULT_COALESCE_MAX_RECORDS;
    /// Default of [`coalesce_max_bytes`](ClientBuilder::coalesce_max_bytes): payload bytes
    /// per merged replay request.
    pub const DEFAULT_COALESCE_MAX_BYTES: u64 = config::DEFAULT_COALESCE_MAX_BYTES;
    /// The order of replay against new exports: oldest first, so the backend sees data in
    /// the order it was produced unless told otherwise.
    pub const DEFAULT_REPLAY_ORDER: crate::ReplayOrder = config::DEFAULT_REPLAY_ORDER;
    /// The replay's byte rate cap: none, so a backlog drains at the backend's speed.
    pub const DEFAULT_REPLAY_BYTES_PER_SEC: Option<u64> = config::DEFAULT_REPLAY_BYTES_PER_SEC;
    /// The replay's request rate cap: none.
    pub const DEFAULT_REPLAY_REQUESTS_PER_SEC: Option<u64> =
        config::DEFAULT_REPLAY_REQUESTS_PER_SEC;
    /// Prefix of the default spool directory's name under [`std::env::temp_dir`] (see
    /// [`default_spool_dir`](crate::default_spool_dir)).
    pub const DEFAULT_SPOOL_DIR_PREFIX: &'static str = config::DEFAULT_SPOOL_DIR_PREFIX;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each constant is the value a builder with nothing set resolves to.
    #[test]
    fn the_constants_are_the_defaults_a_builder_resolves() {
        let s = ClientBuilder::new()
            .resolve()
            .expect("the defaults are valid");
        assert_eq!(s.attempt_timeout, ClientBuilder::DEFAULT_ATTEMPT_TIMEOUT);
        assert_eq!(
            s.retry.immediate_retry_delay,
            ClientBuilder::DEFAULT_IMMEDIATE_RETRY_DELAY
        );
        assert_eq!(
            s.retry.initial_backoff,
            ClientBuilder::DEFAULT_INITIAL_BACKOFF
        );
        assert_eq!(s.retry.max_backoff, ClientBuilder::DEFAULT_MAX_BACKOFF);
        assert_eq!(s.retry.jitter, ClientBuilder::DEFAULT_JITTER);
        assert_eq!(
            s.retry.max_retry_after,
            ClientBuilder::DEFAULT_MAX_RETRY_AFTER
        );
        assert_eq!(s.warn_interval, ClientBuilder::DEFAULT_WARN_INTERVAL);
        assert_eq!(
            s.durability,
            crate::Durability::OsWrite {
                fsync_interval: ClientBuilder::DEFAULT_FSYNC_INTERVAL
            }
        );
        assert_eq!(
            s.spool.spool_max_bytes(),
            ClientBuilder::DEFAULT_SPOOL_MAX_BYTES
        );
        assert_eq!(
            s.spool.segment_bytes(),
            ClientBuilder::DEFAULT_SEGMENT_BYTES
        );
        assert_eq!(s.max_record_bytes, ClientBuilder::DEFAULT_MAX_RECORD_BYTES);
        assert_eq!(s.batch_size, ClientBuilder::DEFAULT_BATCH_SIZE);
        assert_eq!(s.batch_max_bytes, ClientBuilder::DEFAULT_BATCH_MAX_BYTES);
        assert_eq!(s.max_in_flight, ClientBuilder::DEFAULT_MAX_IN_FLIGHT);
        assert_eq!(s.batch_delay, ClientBuilder::DEFAULT_BATCH_DELAY);
        assert_eq!(
            s.coalesce_max_records,
            ClientBuilder::DEFAULT_COALESCE_MAX_RECORDS
        );
        assert_eq!(
            s.coalesce_max_bytes,
            ClientBuilder::DEFAULT_COALESCE_MAX_BYTES
        );
        assert_eq!(s.pacing.order, ClientBuilder::DEFAULT_REPLAY_ORDER);
        assert_eq!(
            s.pacing.bytes_per_sec,
            ClientBuilder::DEFAULT_REPLAY_BYTES_PER_SEC
        );
        assert_eq!(
            s.pacing.requests_per_sec,
            ClientBuilder::DEFAULT_REPLAY_REQUESTS_PER_SEC
        );
    }
}
