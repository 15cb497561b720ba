//! `outlast replay` takes the application's replay rate caps from `OUTLAST_REPLAY_BYTES_PER_SEC`
//! and `OUTLAST_REPLAY_REQUESTS_PER_SEC` when `--replay-rate` is absent; the flag wins over the
//! variable; an unparsable value is a usage error naming the variable. Run as a real process
//! against a spool built with `outlast_spool::Spool` and a loopback receiver.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use common::{key, outlast_with_env};
use outlast_client::testing::TestReceiver;
use outlast_spool::{Payload, Spool, SpoolConfig};

const LIMIT: Duration = Duration::from_secs(30);

/// Records in each test's spool, and the bytes of each.
const RECORDS: u64 = 20;
const RECORD_BYTES: usize = 100;

/// A spool under `dir` holding [`RECORDS`] keyed records of [`RECORD_BYTES`] bytes.
fn make_spool(dir: &Path) {
    let (spool, _) = Spool::open(SpoolConfig::new(dir)).expect("a fresh spool opens");
    for i in 0..RECORDS {
        let mut bytes = format!("payload {i} ").into_bytes();
        bytes.resize(RECORD_BYTES, b'.');
        spool
            .append(Payload::new(bytes).with_key(key(i)))
            .expect("append to a fresh spool succeeds");
    }
    spool.close().expect("the spool closes");
}

/// Replays a fresh spool of [`RECORDS`] records to a loopback receiver with `vars` set and
/// `flags` added; returns the run and the keys the receiver got.
async fn replay(vars: &[(&str, &str)], flags: &[&str]) -> (common::Run, HashSet<String>) {
    let dir = tempfile::tempdir().expect("temp dir");
    make_spool(dir.path());
    let receiver = TestReceiver::start().await.expect("receiver starts");
    let mut args: Vec<String> = [
        "replay",
        dir.path().to_str().expect("utf-8"),
        "--endpoint",
        &receiver.url(),
        "--timeout",
        "20s",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(flags.iter().map(|s| (*s).to_owned()));
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let run = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        outlast_with_env(&args, &vars, LIMIT)
    })
    .await
    .expect("the runner thread ends");
    let keys = receiver.unique_keys().into_iter().collect();
    (run, keys)
}

/// Asserts the replay delivered every record and returns how long it took (`elapsed_s`).
fn delivered_all(run: &common::Run, keys: &HashSet<String>) -> f64 {
    assert_eq!(run.code, Some(0), "{run:?}");
    let v = run.json();
    assert_eq!(v["delivered"], RECORDS, "{v}");
    assert_eq!(v["complete"], true, "{v}");
    for i in 0..RECORDS {
        assert!(keys.contains(&key(i)), "key {} never arrived", key(i));
    }
    v["elapsed_s"].as_f64().expect("elapsed_s is a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_paces_its_bytes_by_the_variable_when_the_flag_is_absent() {
    // 2000 bytes at 1000 B/s: the token bucket lets at most rate × (t + 50 ms) through by t,
    // so the last record cannot leave before 1.95 s. Unpaced, the replay takes milliseconds.
    let (run, keys) = replay(&[("OUTLAST_REPLAY_BYTES_PER_SEC", "1000/s")], &[]).await;
    let elapsed = delivered_all(&run, &keys);
    let floor = (RECORDS as f64 * RECORD_BYTES as f64) / 1000.0 - 0.05;
    assert!(
        elapsed >= floor,
        "took {elapsed} s, the cap allows no less than {floor} s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_paces_its_requests_by_the_variable() {
    // One request per record (the exporter merges nothing): 20 requests at 10 per second,
    // the first one from the bucket's burst (at least one request), the other 19 paced.
    let (run, keys) = replay(&[("OUTLAST_REPLAY_REQUESTS_PER_SEC", "10")], &[]).await;
    let elapsed = delivered_all(&run, &keys);
    let floor = (RECORDS - 1) as f64 / 10.0;
    assert!(
        elapsed >= floor,
        "took {elapsed} s, the cap allows no less than {floor} s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_rate_flag_wins_over_the_variable() {
    // The variable alone would take 2000 s for 2000 bytes, far past the 20 s timeout: the
    // replay ends complete only because the flag replaced it.
    let (run, keys) = replay(
        &[("OUTLAST_REPLAY_BYTES_PER_SEC", "1/s")],
        &["--replay-rate", "1MiB/s"],
    )
    .await;
    delivered_all(&run, &keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unparsable_replay_rate_variable_is_a_usage_error_naming_it() {
    for (var, value) in [
        ("OUTLAST_REPLAY_BYTES_PER_SEC", "fast"),
        ("OUTLAST_REPLAY_BYTES_PER_SEC", "5 furlongs/s"),
        ("OUTLAST_REPLAY_REQUESTS_PER_SEC", "many"),
        ("OUTLAST_REPLAY_REQUESTS_PER_SEC", "-3"),
    ] {
        let (run, keys) = replay(&[(var, value)], &[]).await;
        assert_eq!(run.code, Some(2), "{var}={value}: {run:?}");
        run.assert_one_line_error();
        assert!(run.stderr.contains(var), "{var}={value}: {run:?}");
        assert!(keys.is_empty(), "{var}={value}: nothing is sent");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_rate_variable_is_a_usage_error_naming_it() {
    // A cap of 0 would never replay: the client refuses it when it is built (after the
    // replay has named what it found), naming the variable.
    let (run, keys) = replay(&[("OUTLAST_REPLAY_BYTES_PER_SEC", "0")], &[]).await;
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(!run.stderr.contains("panicked"), "{run:?}");
    let last = run.stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("outlast: error: "), "{run:?}");
    assert!(last.contains("OUTLAST_REPLAY_BYTES_PER_SEC"), "{run:?}");
    assert!(keys.is_empty(), "nothing is sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unparsable_rate_variable_is_an_error_even_beside_the_flag() {
    // The flag wins over the value, but a variable that cannot be read is still an error:
    // the operator's environment says something the replay would otherwise silently ignore.
    let (run, _) = replay(
        &[("OUTLAST_REPLAY_BYTES_PER_SEC", "fast")],
        &["--replay-rate", "1MiB/s"],
    )
    .await;
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        run.stderr.contains("OUTLAST_REPLAY_BYTES_PER_SEC"),
        "{run:?}"
    );
}
