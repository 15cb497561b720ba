//! End to end, a crash during a coalesced replay: a process replaying a spooled backlog in
//! merged requests is killed with SIGKILL at a random moment; a new process on the same
//! spool directory delivers every record, and sends again no more records than the
//! documented duplicate window.
//!
//! The replaying process is this test binary run again, with `--exact --ignored` on the
//! child test below and the spool directory and receiver URL in its environment. The parent
//! watches the receiver and kills the child once a random number of records has arrived.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use outlast_client::http::{HttpExporter, PayloadFraming};
use outlast_client::testing::Mode;
use outlast_client::{Client, ContentType, Delivery, Payload, ShutdownError};
use outlast_tests::{
    CALM_ATTEMPT_TIMEOUT, ChildTest, GENEROUS_FLUSH, TEST_BOUND, fast_builder, key, random_below,
};

/// Environment variable giving the child its spool directory (and switching it on).
const CHILD_SPOOL_DIR: &str = "OUTLAST_E2E_COALESCED_SPOOL_DIR";
/// Environment variable giving the child the receiver's URL.
const CHILD_URL: &str = "OUTLAST_E2E_COALESCED_URL";
/// The child test's name, for `--exact`.
const CHILD_TEST: &str = "child_replays_a_backlog_in_merged_requests_until_killed";
/// Records in the backlog.
const RECORDS: usize = 1000;
/// Records per replay batch: the replay window, and so the duplicate window.
const BATCH: usize = 50;
/// Records per merged request.
const MERGE: usize = 10;
/// Kill rounds per test run, each at another random moment.
const ROUNDS: usize = 3;

/// The `i`-th record: an OTLP-like protobuf request (one length-delimited field-1 entry
/// naming its key), so that merged requests concatenate.
fn record(i: usize) -> Payload {
    let k = key(i);
    let mut bytes = vec![0x0a, u8::try_from(k.len()).expect("short key")];
    bytes.extend_from_slice(k.as_bytes());
    Payload::new(bytes)
        .with_content_type(ContentType::Protobuf)
        .with_key(k)
}

/// A client on `dir` replaying into `url` in merged requests.
fn coalescing_client(dir: &std::path::Path, url: &str) -> Client {
    let exporter = HttpExporter::builder(url)
        .timeout(CALM_ATTEMPT_TIMEOUT)
        .payload_framing(PayloadFraming::OtlpProtobuf)
        .build()
        .expect("valid exporter settings");
    fast_builder(dir)
        .attempt_timeout(CALM_ATTEMPT_TIMEOUT)
        .batch_size(BATCH)
        .coalesce_max_records(MERGE)
        .build(exporter)
        .expect("valid client settings")
}

#[test]
#[ignore = "the child process of a_sigkilled_coalesced_replay_loses_nothing_and_duplicates_at_most_the_window, \
            which runs it with its environment; on its own it does nothing"]
fn child_replays_a_backlog_in_merged_requests_until_killed() {
    let (Some(dir), Some(url)) = (
        std::env::var_os(CHILD_SPOOL_DIR),
        std::env::var(CHILD_URL).ok(),
    ) else {
        return;
    };
    let rt = outlast_tests::runtime();
    rt.block_on(async {
        let client = coalescing_client(std::path::Path::new(&dir), &url);
        let _ = client.force_flush(TEST_BOUND).await;
        // Wait to be killed: the test is about a crash, not a clean exit.
        tokio::time::sleep(TEST_BOUND).await;
    });
}

/// One round: spool the backlog, let the child replay it, kill the child after a random
/// number of records arrived, then replay the rest in a new client and check.
fn kill_during_replay(server: &tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().expect("temporary spool directory");
    let receiver = outlast_tests::receiver_down(server);

    // The backlog, spooled during an outage and left on disk.
    server.block_on(async {
        let client = coalescing_client(dir.path(), &receiver.url());
        for i in 0..RECORDS {
            let got = client.export(record(i)).await;
            assert!(matches!(got, Ok(Delivery::Spooled)), "{i}: {got:?}");
        }
        // The receiver is down: the shutdown's flush cannot deliver anything, so a short
        // timeout; what matters is that the spool is synced, closed and released.
        match client.shutdown(Duration::from_millis(300)).await {
            Ok(_) | Err(ShutdownError::Exporter { .. }) => {}
            Err(e) => panic!("shutdown: {e}"),
        }
    });
    // Slow enough that the replay takes a while and the kill lands in its middle.
    server
        .block_on(receiver.set_mode(Mode::Slow(Duration::from_millis(5))))
        .expect("receiver comes up, slowly");

    let mut child = ChildTest::spawn(
        CHILD_TEST,
        &[
            (CHILD_SPOOL_DIR, dir.path().as_os_str()),
            (CHILD_URL, receiver.url().as_ref()),
        ],
        false,
    );

    let kill_at = 1 + random_below((RECORDS / 2) as u64) as usize;
    let deadline = Instant::now() + TEST_BOUND;
    while receiver.unique_keys().len() < kill_at {
        if Instant::now() >= deadline {
            child.kill();
            panic!("the child did not deliver {kill_at} records within {TEST_BOUND:?}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    std::thread::sleep(Duration::from_micros(random_below(3000)));
    child.kill();
    child.assert_killed();
    let before_restart = receiver.unique_keys().len();
    assert!(
        before_restart < RECORDS,
        "the kill landed after the replay ended: pick a slower receiver"
    );

    // A new process (here, a new client) on the same spool.
    let stats = server.block_on(async {
        receiver.set_mode(Mode::Up).await.expect("receiver up");
        let client = coalescing_client(dir.path(), &receiver.url());
        let report = client.force_flush(GENEROUS_FLUSH).await;
        assert!(report.complete, "{report:?}");
        assert_eq!(report.remaining_records, 0, "{report:?}");
        client.stats()
    });

    // Nothing lost...
    let arrived: HashSet<String> = receiver.unique_keys().into_iter().collect();
    let lost: Vec<String> = (0..RECORDS)
        .map(key)
        .filter(|k| !arrived.contains(k))
        .collect();
    assert!(lost.is_empty(), "{} record(s) lost: {lost:?}", lost.len());
    assert_eq!(stats.dropped.total(), 0, "{stats:?}");
    // ...and no more sent twice than the window: the records sent but not settled (at most
    // `BATCH`) plus those whose acknowledgement was being written (at most `BATCH` more).
    let duplicates = receiver.duplicates();
    assert!(
        duplicates <= 2 * BATCH as u64,
        "{duplicates} duplicates: {:?}",
        receiver.duplicate_keys()
    );
    // Merged requests were really used.
    let merged = receiver
        .received()
        .iter()
        .filter(|r| r.keys.len() > 1)
        .count();
    assert!(merged > 0, "no merged request");
    eprintln!(
        "killed after {before_restart} of {RECORDS} records arrived; {duplicates} sent again \
         after the restart"
    );
}

#[test]
fn a_sigkilled_coalesced_replay_loses_nothing_and_duplicates_at_most_the_window() {
    let server = outlast_tests::runtime();
    for _ in 0..ROUNDS {
        kill_during_replay(&server);
    }
    server.shutdown_timeout(Duration::from_secs(5));
}
