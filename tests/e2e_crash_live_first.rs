//! End to end, a crash with live-first replay: a process exports through an outage, the
//! receiver comes back while it goes on exporting (new payloads sent directly while the
//! backlog drains beside them, slowly, under a rate cap), and it is killed with SIGKILL at
//! a random moment; a new process on the same spool directory delivers everything the dead
//! one had reported spooled, and everything it reported delivered had arrived.
//!
//! The exporting process is this test binary run again on the child test below; it prints
//! `ok <key>` after each `export` that returned `Delivered` or `Spooled`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use outlast_client::testing::Mode;
use outlast_client::{Delivery, ReplayOrder};
use outlast_tests::{
    CALM_ATTEMPT_TIMEOUT, ChildTest, GENEROUS_FLUSH, fast_builder, http_exporter,
    http_exporter_with_timeout, key, keyed_payload, random_below,
};

/// Environment variable giving the child its spool directory (and switching it on).
const CHILD_SPOOL_DIR: &str = "OUTLAST_E2E_LIVE_CHILD_SPOOL_DIR";
/// Environment variable giving the child the receiver's URL.
const CHILD_URL: &str = "OUTLAST_E2E_LIVE_CHILD_URL";
/// The child test's name, for `--exact`.
const CHILD_TEST: &str = "child_exports_live_first_until_killed";
/// The child exports at most this many payloads: far more than it gets to before the kill.
const CHILD_MAX_EXPORTS: usize = 200_000;
/// The child's replay rate cap, in requests per second: a backlog of a few hundred records
/// drains for seconds, beside the live sends, and the kill lands in the middle of it.
const CHILD_REPLAY_RATE: u64 = 20;
/// Kill rounds per test run, each at another random moment.
const ROUNDS: usize = 3;

#[test]
#[ignore = "the child process of a_sigkilled_live_first_process_loses_nothing_it_reported, \
            which runs it with its environment; on its own it does nothing"]
fn child_exports_live_first_until_killed() {
    use std::io::Write as _;
    let (Some(dir), Some(url)) = (
        std::env::var_os(CHILD_SPOOL_DIR),
        std::env::var(CHILD_URL).ok(),
    ) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    rt.block_on(async {
        let client = fast_builder(std::path::Path::new(&dir))
            .replay_order(ReplayOrder::LiveFirst)
            .replay_requests_per_sec(Some(CHILD_REPLAY_RATE))
            .build(http_exporter(&url))
            .expect("valid client settings");
        let mut out = std::io::stdout().lock();
        for i in 0..CHILD_MAX_EXPORTS {
            match client.export(keyed_payload(i)).await {
                Ok(Delivery::Delivered | Delivery::Spooled) => writeln!(out, "ok {}", key(i)),
                other => writeln!(out, "unexpected {} {other:?}", key(i)),
            }
            .and_then(|()| out.flush())
            .expect("the parent reads the child's output");
            // About a thousand exports a second: the receiver's return comes mid-run.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        writeln!(out, "done").expect("the parent reads the child's output");
    });
}

/// One round: start the child against a receiver that is down, bring the receiver up at a
/// random moment, kill the child after a random number of reported keys, restart on the
/// same directory and check that every reported key arrived.
fn kill_and_recover(server: &tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().expect("temporary spool directory");
    let receiver = Arc::new(outlast_tests::receiver_down(server));

    let mut child = ChildTest::spawn(
        CHILD_TEST,
        &[
            (CHILD_SPOOL_DIR, dir.path().as_os_str()),
            (CHILD_URL, receiver.url().as_ref()),
        ],
        true,
    );
    let up_after = Duration::from_millis(100 + random_below(500));
    let up = {
        let receiver = Arc::clone(&receiver);
        server.spawn(async move {
            tokio::time::sleep(up_after).await;
            receiver
                .set_mode(Mode::Up)
                .await
                .expect("receiver comes up");
        })
    };
    let kill_after = 300 + random_below(1500) as usize;
    let reported = child.read_reported_then_kill("ok ", kill_after);
    child.assert_killed();
    server.block_on(up).expect("the receiver's switch ran");
    let delivered_before = receiver.unique_keys().len();

    // A new process (here, a new client) on the same spool, with the backend up.
    let stats = server.block_on(async {
        let client = fast_builder(dir.path())
            .attempt_timeout(CALM_ATTEMPT_TIMEOUT)
            .replay_order(ReplayOrder::LiveFirst)
            .build(http_exporter_with_timeout(
                &receiver.url(),
                CALM_ATTEMPT_TIMEOUT,
            ))
            .expect("valid client settings");
        let report = client.force_flush(GENEROUS_FLUSH).await;
        assert!(report.complete, "{report:?}");
        assert_eq!(report.remaining_records, 0, "{report:?}");
        client.stats()
    });

    let arrived = receiver.unique_keys();
    let arrived_set: HashSet<&str> = arrived.iter().map(String::as_str).collect();
    let lost: Vec<&String> = reported
        .iter()
        .filter(|k| !arrived_set.contains(k.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} reported key(s) lost: {lost:?}",
        lost.len()
    );
    // Nothing arrived that was never exported.
    let exported: HashSet<String> = (0..=reported.len() + 1).map(key).collect();
    assert!(
        arrived.iter().all(|k| exported.contains(k)),
        "unknown keys arrived"
    );
    assert_eq!(stats.dropped.total(), 0, "{stats:?}");
    eprintln!(
        "receiver up after {up_after:?}, killed after {kill_after} reported line(s): {} \
         reported, {delivered_before} had arrived before the kill, {} after the restart \
         ({} duplicate(s), at least once)",
        reported.len(),
        arrived.len() - delivered_before,
        receiver.duplicates()
    );
}

#[test]
fn a_sigkilled_live_first_process_loses_nothing_it_reported() {
    let server = outlast_tests::runtime();
    for _ in 0..ROUNDS {
        kill_and_recover(&server);
    }
    server.shutdown_timeout(Duration::from_secs(5));
}
