//! Extreme values at the configuration's edge: no duration, size or count a user can pass —
//! through `ClientBuilder`, `HttpExporterBuilder` or an `OUTLAST_*` variable — panics, at
//! build time or later in a background thread or task. Each value is either accepted or
//! refused with an error naming the parameter (or variable) it came from.
//!
//! Panics in other threads (the spool's sync thread, Tokio tasks) do not fail a test by
//! themselves, so this binary installs a panic hook that counts every panic in the process;
//! no test here panics on purpose.

mod common;

use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use outlast_client::http::{HttpExporter, HttpExporterBuilder};
use outlast_client::testing::{MemoryExporter, Outcome, TestReceiver};
use outlast_client::units::MAX_DURATION;
use outlast_client::{ClientBuilder, ConfigError, Durability, Payload};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts every panic of the process from now on (the default hook still prints it).
fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

fn no_panics_so_far() -> Result<(), TestCaseError> {
    let n = PANICS.load(Ordering::SeqCst);
    prop_assert_eq!(n, 0, "{} panic(s) so far (see stderr)", n);
    Ok(())
}

/// The named edges, each tried once, before random values.
const EDGE_DURATIONS: [Duration; 7] = [
    Duration::ZERO,
    Duration::from_nanos(1),
    Duration::from_secs(1),
    MAX_DURATION,
    Duration::from_secs(10_000_000_000_000_000_000),
    Duration::from_secs(u64::MAX),
    Duration::MAX,
];
const EDGE_SIZES: [u64; 6] = [0, 1, 4096, 1 << 40, u64::MAX - 1, u64::MAX];

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (0u64..10_000).prop_map(Duration::from_millis),
        any::<u64>().prop_map(Duration::from_nanos),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..(64 << 20), any::<u64>()]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime")
}

type Setter<T> = (
    &'static str,
    &'static [&'static str],
    fn(ClientBuilder, T) -> ClientBuilder,
);

/// Every duration parameter of `ClientBuilder`, with the parameters an error about it may
/// name (a value can be refused because of the one it is checked against).
const CLIENT_DURATIONS: [Setter<Duration>; 10] = [
    ("probe_interval", &[], |b, d| b.probe_interval(d)),
    ("attempt_timeout", &[], |b, d| b.attempt_timeout(d)),
    ("immediate_retry_delay", &[], |b, d| {
        b.immediate_retry_delay(d)
    }),
    ("initial_backoff", &["max_backoff"], |b, d| {
        b.initial_backoff(d)
    }),
    ("max_backoff", &[], |b, d| b.max_backoff(d)),
    ("max_retry_after", &[], |b, d| b.max_retry_after(d)),
    ("warn_interval", &[], |b, d| b.warn_interval(d)),
    ("max_record_age", &[], |b, d| b.max_record_age(Some(d))),
    ("durability", &[], |b, d| {
        b.durability(Durability::OsWrite { fsync_interval: d })
    }),
    ("batch_delay", &[], |b, d| b.batch_delay(d)),
];

/// Every size and count parameter of `ClientBuilder`.
const CLIENT_SIZES: [Setter<u64>; 8] = [
    ("coalesce_max_bytes", &[], |b, n| b.coalesce_max_bytes(n)),
    ("coalesce_max_records", &[], |b, n| {
        b.coalesce_max_records(usize::try_from(n).unwrap_or(usize::MAX))
    }),
    ("spool_max_bytes", &[], |b, n| b.spool_max_bytes(n)),
    ("segment_bytes", &["spool_max_bytes"], |b, n| {
        b.segment_bytes(n)
    }),
    ("max_record_bytes", &["segment_bytes"], |b, n| {
        b.max_record_bytes(n)
    }),
    ("batch_max_bytes", &[], |b, n| b.batch_max_bytes(n)),
    ("batch_size", &[], |b, n| {
        b.batch_size(usize::try_from(n).unwrap_or(usize::MAX))
    }),
    ("max_in_flight", &[], |b, n| {
        b.max_in_flight(usize::try_from(n).unwrap_or(usize::MAX))
    }),
];

/// Builds a client from `builder`; if it builds, spools a payload, delivers it and shuts
/// down, so that the background thread and the drain task run with the values.
fn build_and_run(builder: ClientBuilder, allowed: &[&str]) -> Result<(), TestCaseError> {
    let rt = runtime();
    let result: Result<(), TestCaseError> = rt.block_on(async {
        // No limit of its own, so the client's `max_in_flight` alone sizes the window.
        let exporter = MemoryExporter::new().with_max_in_flight(usize::MAX);
        exporter.set_mode(Outcome::Fail);
        let client = match builder.build(exporter.clone()) {
            Ok(c) => c,
            Err(ConfigError::Invalid { param, reason }) => {
                prop_assert!(
                    allowed.contains(&param),
                    "refused naming {param} ({reason}), expected one of {allowed:?}"
                );
                return Ok(());
            }
            Err(other) => return Err(TestCaseError::fail(format!("unexpected {other}"))),
        };
        // Spooled, or refused (a tiny max_record_bytes): either way no panic.
        let _ = client.export(Payload::new(&b"edge"[..])).await;
        exporter.set_mode(Outcome::Accept);
        let _ = client.force_flush(Duration::from_secs(5)).await;
        let _ = client.shutdown(Duration::from_secs(5)).await;
        Ok(())
    });
    drop(rt);
    result?;
    no_panics_so_far()
}

fn client_builder(dir: &std::path::Path) -> ClientBuilder {
    common::builder(dir)
}

#[test]
fn no_client_builder_duration_panics_it_is_accepted_or_refused_by_name() {
    count_panics();
    let dir = common::spool_dir();
    let check = |d: Duration| -> Result<(), TestCaseError> {
        for (param, also, set) in CLIENT_DURATIONS {
            let mut allowed = vec![param];
            allowed.extend_from_slice(also);
            build_and_run(set(client_builder(dir.path()), d), &allowed)?;
        }
        Ok(())
    };
    for d in EDGE_DURATIONS {
        check(d).expect("edge value");
    }
    TestRunner::new(Config::with_cases(24))
        .run(&duration(), check)
        .expect("random values");
}

#[test]
fn no_client_builder_size_or_count_panics_it_is_accepted_or_refused_by_name() {
    count_panics();
    let dir = common::spool_dir();
    let check = |n: u64| -> Result<(), TestCaseError> {
        for (param, also, set) in CLIENT_SIZES {
            let mut allowed = vec![param];
            allowed.extend_from_slice(also);
            build_and_run(set(client_builder(dir.path()), n), &allowed)?;
        }
        Ok(())
    };
    for n in EDGE_SIZES {
        check(n).expect("edge value");
    }
    TestRunner::new(Config::with_cases(24))
        .run(&size(), check)
        .expect("random values");
}

/// The client's duration variables, with the builder parameters an error may name instead.
const ENV_DURATIONS: [(&str, &[&str]); 10] = [
    ("OUTLAST_PROBE_INTERVAL", &[]),
    ("OUTLAST_ATTEMPT_TIMEOUT", &[]),
    ("OUTLAST_IMMEDIATE_RETRY_DELAY", &[]),
    ("OUTLAST_INITIAL_BACKOFF", &["max_backoff"]),
    ("OUTLAST_MAX_BACKOFF", &[]),
    ("OUTLAST_MAX_RETRY_AFTER", &[]),
    ("OUTLAST_WARN_INTERVAL", &[]),
    ("OUTLAST_MAX_RECORD_AGE", &[]),
    ("OUTLAST_FSYNC_INTERVAL", &[]),
    ("OUTLAST_BATCH_DELAY", &[]),
];

/// The client's size and count variables.
const ENV_SIZES: [(&str, &[&str]); 8] = [
    ("OUTLAST_COALESCE_MAX_RECORDS", &[]),
    ("OUTLAST_COALESCE_MAX_BYTES", &[]),
    ("OUTLAST_SPOOL_MAX_BYTES", &[]),
    ("OUTLAST_SPOOL_SEGMENT_BYTES", &["spool_max_bytes"]),
    ("OUTLAST_MAX_RECORD_BYTES", &["segment_bytes"]),
    ("OUTLAST_BATCH_MAX_BYTES", &[]),
    ("OUTLAST_BATCH_SIZE", &[]),
    ("OUTLAST_MAX_IN_FLIGHT", &[]),
];

fn env_case(
    dir: &std::path::Path,
    var: &'static str,
    also: &[&str],
    value: &str,
) -> Result<(), TestCaseError> {
    let vars = [(var.to_owned(), value.to_owned())];
    let builder = match ClientBuilder::from_env_vars(vars) {
        Ok(b) => b,
        Err(ConfigError::Invalid { param, reason }) => {
            prop_assert_eq!(param, var, "{}", reason);
            return Ok(());
        }
        Err(other) => return Err(TestCaseError::fail(format!("unexpected {other}"))),
    };
    let mut allowed = vec![var];
    allowed.extend_from_slice(also);
    build_and_run(builder.spool_dir(dir).jitter(0.0), &allowed)
}

fn duration_text() -> impl Strategy<Value = String> {
    let unit = prop_oneof![
        Just(""),
        Just("us"),
        Just("ms"),
        Just("s"),
        Just("m"),
        Just("h")
    ];
    let number = prop_oneof![
        (0u64..100_000).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<u128>().prop_map(|n| n.to_string()),
        (any::<u32>(), any::<u32>()).prop_map(|(a, b)| format!("{a}.{b}")),
        "[0-9.]{1,30}",
    ];
    (number, unit).prop_map(|(n, u)| format!("{n}{u}"))
}

fn size_text() -> impl Strategy<Value = String> {
    let unit = prop_oneof![Just(""), Just("KiB"), Just("MiB"), Just("GiB"), Just("TiB")];
    let number = prop_oneof![
        (0u64..100_000).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<u128>().prop_map(|n| n.to_string()),
        "[0-9]{1,25}",
    ];
    (number, unit).prop_map(|(n, u)| format!("{n}{u}"))
}

#[test]
fn no_outlast_duration_variable_panics_it_is_accepted_or_refused_by_name() {
    count_panics();
    let dir = common::spool_dir();
    let check = |value: String| -> Result<(), TestCaseError> {
        for (var, also) in ENV_DURATIONS {
            env_case(dir.path(), var, also, &value)?;
        }
        // The HTTP exporter's one duration variable.
        let built = HttpExporterBuilder::from_env_vars([
            ("OUTLAST_ENDPOINT", "http://127.0.0.1:4318/v1/logs"),
            ("OUTLAST_HTTP_TIMEOUT", value.as_str()),
        ])
        .and_then(HttpExporterBuilder::build);
        match built {
            Ok(e) => prop_assert!(e.timeout() <= MAX_DURATION),
            Err(ConfigError::Invalid { param, reason }) => {
                prop_assert_eq!(param, "OUTLAST_HTTP_TIMEOUT", "{}", reason);
            }
            Err(other) => return Err(TestCaseError::fail(format!("unexpected {other}"))),
        }
        no_panics_so_far()
    };
    for value in [
        "0",
        "1us",
        "10000000000000000000",
        "18446744073709551615",
        "18446744073709551616",
        "99999999999999999999999999999h",
        "1.5",
    ] {
        check(value.to_owned()).expect("edge value");
    }
    TestRunner::new(Config::with_cases(24))
        .run(&duration_text(), check)
        .expect("random values");
}

#[test]
fn no_outlast_size_variable_panics_it_is_accepted_or_refused_by_name() {
    count_panics();
    let dir = common::spool_dir();
    let check = |value: String| -> Result<(), TestCaseError> {
        for (var, also) in ENV_SIZES {
            env_case(dir.path(), var, also, &value)?;
        }
        Ok(())
    };
    for value in [
        "0",
        "1",
        "18446744073709551615",
        "18446744073709551616",
        "16777215TiB",
    ] {
        check(value.to_owned()).expect("edge value");
    }
    TestRunner::new(Config::with_cases(24))
        .run(&size_text(), check)
        .expect("random values");
}

/// The HTTP exporter's duration parameters.
type HttpSetter = fn(HttpExporterBuilder, Duration) -> HttpExporterBuilder;

const HTTP_DURATIONS: [(&str, HttpSetter); 3] = [
    ("timeout", |b, d| b.timeout(d)),
    ("probe_timeout", |b, d| b.probe_timeout(d)),
    ("pool_idle_timeout", |b, d| b.pool_idle_timeout(d)),
];

#[test]
fn no_http_exporter_duration_or_count_panics_even_with_pooled_connections() {
    use outlast_client::Exporter as _;
    count_panics();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let receiver = rt.block_on(TestReceiver::start()).expect("receiver");
    let url = receiver.url();
    // Two exports: the first connection goes back to the pool (which starts its idle timer),
    // the second reuses it; then the pool's tasks get their turn.
    let exercise = |exporter: HttpExporter| {
        rt.block_on(async {
            for _ in 0..2 {
                let _ = exporter.export(&Payload::new(&b"edge"[..])).await;
            }
            let _ = exporter.probe().await;
            for _ in 0..20 {
                tokio::task::yield_now().await;
            }
        });
    };
    let check = |(d, n): (Duration, usize)| -> Result<(), TestCaseError> {
        for (param, set) in HTTP_DURATIONS {
            match set(HttpExporter::builder(url.clone()), d).build() {
                Ok(e) => exercise(e),
                Err(ConfigError::Invalid { param: p, reason }) => {
                    prop_assert_eq!(p, param, "{}", reason);
                }
                Err(other) => return Err(TestCaseError::fail(format!("unexpected {other}"))),
            }
            no_panics_so_far()?;
        }
        match HttpExporter::builder(url.clone()).max_in_flight(n).build() {
            Ok(e) => exercise(e),
            Err(ConfigError::Invalid { param, reason }) => {
                prop_assert_eq!(param, "max_in_flight", "{}", reason);
            }
            Err(other) => return Err(TestCaseError::fail(format!("unexpected {other}"))),
        }
        no_panics_so_far()
    };
    for d in EDGE_DURATIONS {
        check((d, 1)).expect("edge duration");
    }
    for n in [0, 1, usize::MAX] {
        check((Duration::from_secs(1), n)).expect("edge count");
    }
    TestRunner::new(Config::with_cases(16))
        .run(&(duration(), any::<usize>()), check)
        .expect("random values");
}

#[test]
fn the_http_timeout_variable_takes_the_same_grammar_as_the_client_and_saturates() {
    for (value, expected) in [
        ("2m", Duration::from_secs(120)),
        ("250us", Duration::from_micros(250)),
        ("1h", Duration::from_secs(3600)),
        ("10000000000000000000", MAX_DURATION),
    ] {
        let e = HttpExporterBuilder::from_env_vars([
            ("OUTLAST_ENDPOINT", "http://127.0.0.1:4318/v1/logs"),
            ("OUTLAST_HTTP_TIMEOUT", value),
        ])
        .and_then(HttpExporterBuilder::build)
        .expect(value);
        assert_eq!(e.timeout(), expected, "{value}");
    }
}
