//! `outlast inspect`, `verify` and `replay` run as a real process against spools built with
//! `outlast_spool::Spool`.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{key, make_spool, outlast, segment_files, snapshot};
use outlast_client::testing::TestReceiver;
use outlast_spool::{Spool, SpoolConfig};

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn inspect_json_shows_the_records_a_spool_holds() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_spool(dir.path(), 25);
    let run = outlast(
        &[
            "inspect",
            dir.path().to_str().expect("utf-8 path"),
            "--json",
        ],
        LIMIT,
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("stdout is JSON");
    assert_eq!(v["records"], 25, "{v}");
    assert_eq!(v["lanes"], 1, "{v}");
    assert_eq!(v["healthy"], true, "{v}");
    assert_eq!(v["lane_details"][0]["lock"], "free", "{v}");
    assert!(v["oldest_record"].is_string(), "{v}");
    assert!(v["bytes"].as_u64().is_some_and(|b| b > 0), "{v}");
}

#[test]
fn inspect_table_shows_records_and_a_live_lock_owner() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (spool, _) = Spool::open(SpoolConfig::new(dir.path())).expect("spool opens");
    for i in 0..7 {
        spool
            .append(outlast_spool::Payload::new(vec![1u8; 10]).with_key(key(i)))
            .expect("append");
    }
    let run = outlast(&["inspect", dir.path().to_str().expect("utf-8")], LIMIT);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("7 record(s) waiting"), "{run:?}");
    assert!(
        run.stdout
            .contains(&format!("held (pid {})", std::process::id())),
        "{run:?}"
    );
    spool.close().expect("close");
}

#[test]
fn verify_passes_a_clean_spool_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_spool(dir.path(), 40);
    let before = snapshot(dir.path());
    let run = outlast(&["verify", dir.path().to_str().expect("utf-8")], LIMIT);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.starts_with("ok:"), "{run:?}");
    assert_eq!(snapshot(dir.path()), before, "verify modified the spool");
}

#[test]
fn verify_exits_1_naming_the_file_after_a_flipped_byte_and_leaves_it_unchanged() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_spool(dir.path(), 40);
    let seg = segment_files(dir.path())
        .into_iter()
        .next()
        .expect("a segment file exists");
    let mut bytes = std::fs::read(&seg).expect("read segment");
    // Inside the first record's frame (the header is 32 bytes): damage in the middle.
    bytes[32 + 30] ^= 0xff;
    std::fs::write(&seg, &bytes).expect("write segment");
    let before = snapshot(dir.path());

    let run = outlast(&["verify", dir.path().to_str().expect("utf-8")], LIMIT);
    assert_eq!(run.code, Some(1), "{run:?}");
    let seg_name = seg.to_str().expect("utf-8");
    assert!(run.stdout.contains(seg_name), "{run:?}");
    assert!(run.stdout.contains("damaged"), "{run:?}");
    run.assert_one_line_error();
    assert_eq!(snapshot(dir.path()), before, "verify modified the spool");
}

#[test]
fn verify_refuses_a_segment_of_a_newer_format_version() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_spool(dir.path(), 3);
    let seg = segment_files(dir.path())
        .into_iter()
        .next()
        .expect("segment");
    let mut bytes = std::fs::read(&seg).expect("read");
    bytes[8..10].copy_from_slice(&99u16.to_le_bytes());
    std::fs::write(&seg, &bytes).expect("write");
    let run = outlast(&["verify", dir.path().to_str().expect("utf-8")], LIMIT);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stdout.contains("format version 99"), "{run:?}");
    run.assert_one_line_error();

    let replay = outlast(
        &[
            "replay",
            dir.path().to_str().expect("utf-8"),
            "--endpoint",
            "http://127.0.0.1:9/",
        ],
        LIMIT,
    );
    assert_eq!(replay.code, Some(1), "{replay:?}");
    assert!(replay.stderr.contains("version 99"), "{replay:?}");
    replay.assert_one_line_error();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_delivers_every_record_of_a_left_behind_spool() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_spool(dir.path(), 150);
    let receiver = TestReceiver::start().await.expect("receiver starts");
    let url = receiver.url();
    let path = dir.path().to_str().expect("utf-8").to_owned();
    let run = tokio::task::spawn_blocking(move || {
        outlast(
            &[
                "replay",
                &path,
                "--endpoint",
                &url,
                "--timeout",
                "20s",
                "--header",
                "x-tenant=acme",
            ],
            LIMIT,
        )
    })
    .await
    .expect("the runner thread ends");
    assert_eq!(run.code, Some(0), "{run:?}");
    let received = receiver.received();
    assert!(!received.is_empty());
    assert!(
        received
            .iter()
            .all(|r| r.header("x-tenant") == Some("acme")),
        "every replayed request carries the --header"
    );
    let v = run.json();
    assert_eq!(v["records"], 150, "{v}");
    assert_eq!(v["delivered"], 150, "{v}");
    assert_eq!(v["remaining_records"], 0, "{v}");
    assert_eq!(v["complete"], true, "{v}");
    let got: HashSet<String> = receiver.unique_keys().into_iter().collect();
    for i in 0..150 {
        assert!(got.contains(&key(i)), "key {} never arrived", key(i));
    }

    let after = outlast(
        &["inspect", dir.path().to_str().expect("utf-8"), "--json"],
        LIMIT,
    );
    let v: serde_json::Value = serde_json::from_str(&after.stdout).expect("stdout is JSON");
    assert_eq!(v["records"], 0, "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_refuses_a_spool_locked_by_a_live_process() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_spool(dir.path(), 5);
    // This test process holds the lane, as a running application would.
    let (spool, _) = Spool::open(SpoolConfig::new(dir.path())).expect("spool opens");
    let receiver = TestReceiver::start().await.expect("receiver starts");
    let url = receiver.url();
    let path = dir.path().to_str().expect("utf-8").to_owned();
    let run = tokio::task::spawn_blocking(move || {
        outlast(
            &["replay", &path, "--endpoint", &url, "--timeout", "5s"],
            LIMIT,
        )
    })
    .await
    .expect("the runner thread ends");
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("locked by a live process"), "{run:?}");
    run.assert_one_line_error();
    assert_eq!(receiver.request_count(), 0, "nothing may be sent");
    spool.close().expect("close");
}
