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

fn mkfifo(path: &std::path::Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success(), "mkfifo {}", path.display());
}

#[test]
fn verify_and_inspect_never_hang_on_fifos_named_like_spool_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_spool(dir.path(), 5);
    let lane = dir.path().join("lane-0");
    mkfifo(&lane.join("00000000000000000050.seg"));
    std::fs::remove_file(lane.join("cursor")).expect("rm cursor");
    mkfifo(&lane.join("cursor"));
    std::fs::write(dir.path().join("lane-9"), b"not a lane").expect("stray file");
    let path = dir.path().to_str().expect("utf-8");
    // `outlast` kills the run and fails the test if it does not end within LIMIT.
    let verify = outlast(&["verify", path], LIMIT);
    assert_eq!(verify.code, Some(1), "{verify:?}");
    assert!(verify.stdout.contains("not a regular file"), "{verify:?}");
    assert!(verify.stdout.contains("cursor unreadable"), "{verify:?}");
    assert!(verify.stdout.contains("not a lane directory"), "{verify:?}");
    let inspect = outlast(&["inspect", path], LIMIT);
    assert_eq!(inspect.code, Some(0), "{inspect:?}");
    assert!(
        inspect.stdout.contains("skipped, never opened"),
        "{inspect:?}"
    );
}

#[test]
fn verify_exits_1_when_a_middle_segment_was_deleted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = SpoolConfig::new(dir.path())
        .with_segment_bytes(64 * 1024)
        .with_max_record_bytes(16 * 1024);
    let (spool, _) = Spool::open(config).expect("spool opens");
    for i in 0..2000 {
        spool
            .append(outlast_spool::Payload::new(vec![7u8; 100]).with_key(key(i)))
            .expect("append");
    }
    spool.close().expect("close");
    let segs = segment_files(dir.path());
    assert!(segs.len() >= 3, "{segs:?}");
    std::fs::remove_file(&segs[1]).expect("delete a middle segment");
    let run = outlast(&["verify", dir.path().to_str().expect("utf-8")], LIMIT);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stdout.contains("missing between segments"), "{run:?}");
}

/// Opens the spool at `dir` until it takes lane `n` (at most 5 s). Another test of this
/// binary spawning a child at the moment a spool closed can hold a copy of that spool's lock
/// for an instant (between fork and exec), so a spool opened right then takes the next lane.
fn open_lane(dir: &std::path::Path, n: u32) -> Spool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (spool, _) = Spool::open(SpoolConfig::new(dir)).expect("spool opens");
        if spool.lane() == n {
            return spool;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "lane {n} of {} still held after 5 s (got lane {})",
            dir.display(),
            spool.lane()
        );
        spool.close().expect("close");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_drains_the_free_lanes_and_names_the_lane_it_skips() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_spool(dir.path(), 5);
    // This test process holds lane 0, as a running application would; lane 1 was left by a
    // process that is gone.
    let held = open_lane(dir.path(), 0);
    let gone = open_lane(dir.path(), 1);
    for i in 100..103 {
        gone.append(outlast_spool::Payload::new(vec![1u8; 8]).with_key(key(i)))
            .expect("append");
    }
    gone.close().expect("close");
    let receiver = TestReceiver::start().await.expect("receiver starts");
    let url = receiver.url();
    let path = dir.path().to_str().expect("utf-8").to_owned();
    let run = tokio::task::spawn_blocking(move || {
        outlast(
            &["replay", &path, "--endpoint", &url, "--timeout", "20s"],
            LIMIT,
        )
    })
    .await
    .expect("the runner thread ends");
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stderr.contains("skipping lane 0"), "{run:?}");
    let v = run.json();
    assert_eq!(v["skipped_lanes"], serde_json::json!([0]), "{v}");
    let got: HashSet<String> = receiver.unique_keys().into_iter().collect();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!((100..103).all(|i| got.contains(&key(i))), "{got:?}");
    held.close().expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_delivers_a_lane_of_another_identity_only_when_asked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = SpoolConfig::new(dir.path()).with_identity(Some("service-a".into()));
    let (spool, _) = Spool::open(config).expect("spool opens");
    for i in 0..4 {
        spool
            .append(outlast_spool::Payload::new(vec![2u8; 8]).with_key(key(i)))
            .expect("append");
    }
    spool.close().expect("close");
    let path = dir.path().to_str().expect("utf-8").to_owned();
    let inspect = outlast(&["inspect", &path, "--identity", "service-b"], LIMIT);
    assert!(
        inspect
            .stdout
            .contains("lane 0 identity: service-a (foreign"),
        "{inspect:?}"
    );

    let receiver = TestReceiver::start().await.expect("receiver starts");
    let url = receiver.url();
    let (p, u) = (path.clone(), url.clone());
    let plain = tokio::task::spawn_blocking(move || {
        outlast(&["replay", &p, "--endpoint", &u, "--timeout", "5s"], LIMIT)
    })
    .await
    .expect("the runner thread ends");
    assert_eq!(receiver.request_count(), 0, "not without asking: {plain:?}");
    let asked = tokio::task::spawn_blocking(move || {
        outlast(
            &[
                "replay",
                &path,
                "--endpoint",
                &url,
                "--timeout",
                "20s",
                "--identity",
                "service-a",
            ],
            LIMIT,
        )
    })
    .await
    .expect("the runner thread ends");
    assert_eq!(asked.code, Some(0), "{asked:?}");
    assert_eq!(asked.json()["other_identity_lanes"], serde_json::json!([0]));
    assert_eq!(receiver.unique_keys().len(), 4, "{asked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_never_hangs_on_a_fifo_and_delivers_the_rest() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_spool(dir.path(), 5);
    mkfifo(&dir.path().join("lane-0").join("00000000000000000050.seg"));
    let receiver = TestReceiver::start().await.expect("receiver starts");
    let url = receiver.url();
    let path = dir.path().to_str().expect("utf-8").to_owned();
    // `outlast` kills the run and fails the test if it does not end within LIMIT.
    let run = tokio::task::spawn_blocking(move || {
        outlast(
            &["replay", &path, "--endpoint", &url, "--timeout", "20s"],
            LIMIT,
        )
    })
    .await
    .expect("the runner thread ends");
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(receiver.unique_keys().len(), 5, "{run:?}");
}

/// 10 000 zero bytes, gzip-compressed (45 bytes; the trailer's ISIZE says 10 000).
const GZIP_OF_10000_ZEROS: [u8; 45] = [
    31, 139, 8, 0, 0, 0, 0, 0, 2, 3, 237, 193, 1, 13, 0, 0, 0, 194, 160, 247, 79, 109, 14, 55, 160,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 224, 223, 0, 46, 202, 59, 77, 16, 39, 0, 0,
];

#[test]
fn inspect_and_verify_show_each_segments_format_version_encodings_and_both_sizes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (spool, _) = Spool::open(SpoolConfig::new(dir.path())).expect("spool opens");
    for _ in 0..3 {
        spool
            .append(
                outlast_spool::Payload::new(GZIP_OF_10000_ZEROS.to_vec())
                    .with_content_encoding(outlast_core::ContentEncoding::Gzip),
            )
            .expect("append gzip");
    }
    spool
        .append(outlast_spool::Payload::new(vec![7u8; 100]))
        .expect("append identity");
    spool.close().expect("close");
    let path = dir.path().to_str().expect("utf-8");

    let run = outlast(&["inspect", path, "--json"], LIMIT);
    assert_eq!(run.code, Some(0), "{run:?}");
    let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("stdout is JSON");
    let seg = &v["lane_details"][0]["segments"][0];
    assert_eq!(seg["version"], outlast_spool::FORMAT_VERSION, "{v}");
    assert_eq!(seg["gzip_records"], 3, "{v}");
    assert_eq!(seg["identity_records"], 1, "{v}");
    assert_eq!(seg["gzip_uncompressed_bytes"], 30_000, "{v}");
    let gz_stored = seg["gzip_stored_bytes"].as_u64().expect("a number");
    assert!((3 * 45..3 * 200).contains(&gz_stored), "{v}");

    let run = outlast(&["inspect", path], LIMIT);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout.contains(&format!(
            "format v{}, 4 record(s): 1 identity",
            outlast_spool::FORMAT_VERSION
        )),
        "{run:?}"
    );
    assert!(
        run.stdout.contains("3 gzip (")
            && run
                .stdout
                .contains("30000 bytes uncompressed per gzip ISIZE"),
        "{run:?}"
    );
    let run = outlast(&["verify", path], LIMIT);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("30000 bytes uncompressed"), "{run:?}");
}

#[test]
fn inspect_shows_a_version_1_segment_as_version_1() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../outlast-spool/tests/fixtures/spool-v1");
    let run = outlast(
        &["inspect", fixture.to_str().expect("utf-8"), "--json"],
        LIMIT,
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("stdout is JSON");
    let segs = v["lane_details"][0]["segments"]
        .as_array()
        .expect("segments");
    assert_eq!(segs.len(), 3, "{v}");
    for s in segs {
        assert_eq!(s["version"], 1, "{v}");
        assert_eq!(s["gzip_records"], 0, "{v}");
    }
    let run = outlast(&["verify", fixture.to_str().expect("utf-8")], LIMIT);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains(": format v1, "), "{run:?}");
}

/// The bytes of every lane's identity file under `root`, by lane directory name.
fn identity_files(root: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(root).expect("read root") {
        let entry = entry.expect("entry");
        if let Ok(bytes) = std::fs::read(entry.path().join("identity")) {
            files.insert(entry.file_name().to_string_lossy().into_owned(), bytes);
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_of_another_identity_holds_its_lanes_and_leaves_their_identity_even_when_killed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let owner = || SpoolConfig::new(dir.path()).with_identity(Some("service-a".into()));
    let (spool, _) = Spool::open(owner()).expect("spool opens");
    for i in 0..4 {
        spool
            .append(outlast_spool::Payload::new(vec![2u8; 8]).with_key(key(i)))
            .expect("append");
    }
    spool.close().expect("close");
    let before = identity_files(dir.path());
    assert_eq!(before.len(), 1);

    // The backend answers 503: the replay keeps trying until it is killed.
    let receiver = TestReceiver::start().await.expect("receiver starts");
    receiver
        .set_mode(outlast_client::testing::Mode::Status(503))
        .await
        .expect("mode");
    let path = dir.path().to_str().expect("utf-8").to_owned();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_outlast"))
        .args([
            "replay",
            &path,
            "--endpoint",
            &receiver.url(),
            "--timeout",
            "60s",
            "--any-identity",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("outlast starts");
    // Wait until it has tried the backend: it holds the lane by then.
    let start = std::time::Instant::now();
    while receiver.request_count() == 0 {
        assert!(
            start.elapsed() < LIMIT,
            "the replay never tried the backend"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Meanwhile the owner's identity file is untouched, and a client of the owner's
    // identity opening the directory cannot take the lane: the replay holds it.
    assert_eq!(
        identity_files(dir.path()).get("lane-0"),
        before.get("lane-0")
    );
    let (racer, report) = Spool::open(owner()).expect("a racing spool opens");
    assert!(report.adopted_lanes.is_empty(), "{report:?}");
    assert_ne!(racer.lane(), 0);
    assert!(
        racer
            .read_batch(100, u64::MAX)
            .expect("read")
            .records
            .is_empty()
    );
    racer.close().expect("close");

    // Killed mid-way: the lane keeps its owner's identity, and the owner delivers it.
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    assert_eq!(
        identity_files(dir.path()).get("lane-0"),
        before.get("lane-0")
    );
    let (owner_spool, report) = Spool::open(owner()).expect("the owner opens");
    assert!(
        report.adopted_lanes.contains(&0) || owner_spool.lane() == 0,
        "{report:?}"
    );
    let b = owner_spool.read_batch(100, u64::MAX).expect("read");
    assert_eq!(b.records.len(), 4, "every record is still the owner's");
    owner_spool.close().expect("close");
}

#[test]
fn verify_exits_1_when_the_end_of_a_lane_was_cut_off() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_spool(dir.path(), 50);
    let segs = segment_files(dir.path());
    let last = segs.last().expect("a segment");
    let len = std::fs::metadata(last).expect("meta").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .expect("open");
    f.set_len(len / 2).expect("cut the tail");
    drop(f);
    let run = outlast(&["verify", dir.path().to_str().expect("utf-8")], LIMIT);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stdout.contains("at the end of the lane"), "{run:?}");
}

#[test]
fn verify_exits_1_for_a_segment_renamed_beyond_u64() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_spool(dir.path(), 50);
    let segs = segment_files(dir.path());
    let first = &segs[0];
    let renamed = first.with_file_name("99999999999999999999.seg");
    std::fs::rename(first, &renamed).expect("rename");
    let run = outlast(&["verify", dir.path().to_str().expect("utf-8")], LIMIT);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stdout.contains("99999999999999999999.seg"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_exits_1_and_reports_records_stranded_in_a_lane_no_client_can_use() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_spool(dir.path(), 30);
    let cursor = dir.path().join("lane-0").join("cursor");
    std::fs::remove_file(&cursor).expect("rm cursor");
    std::fs::create_dir(&cursor).expect("a directory where the cursor was");
    let verify = outlast(&["verify", dir.path().to_str().expect("utf-8")], LIMIT);
    assert_eq!(verify.code, Some(1), "{verify:?}");
    assert!(
        verify.stdout.contains("30 record(s) stranded"),
        "{verify:?}"
    );

    let receiver = TestReceiver::start().await.expect("receiver starts");
    let url = receiver.url();
    let path = dir.path().to_str().expect("utf-8").to_owned();
    let run = tokio::task::spawn_blocking(move || {
        outlast(
            &["replay", &path, "--endpoint", &url, "--timeout", "10s"],
            LIMIT,
        )
    })
    .await
    .expect("the runner thread ends");
    assert_eq!(
        run.code,
        Some(1),
        "records left on disk are not a success: {run:?}"
    );
    let v = run.json();
    assert_eq!(v["stranded_lanes"], 1, "{v}");
    assert_eq!(v["stranded_records"], 30, "{v}");
    assert_eq!(v["complete"], false, "{v}");
    assert!(run.stderr.contains("stranded"), "{run:?}");
}
