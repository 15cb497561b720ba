//! End to end on a real small file system (a tmpfs): a spool on a read-only mount from the
//! first byte, and a disk another program fills up in the middle of an outage. (Linux
//! refuses to remount read-only while the client holds files open for writing, so
//! "read-only mid-way" is the full disk here.) Every payload is delivered, or refused with
//! its reason and counted; none that the client accepted is lost, nothing panics or hangs.

use outlast_client::testing::{Mode, TestReceiver};
use outlast_client::{DropReason, Durability};
use outlast_tests::{GENEROUS_FLUSH, Ledger, Tmpfs, bounded, fast_builder, http_exporter, key};

/// The tmpfs, or why a test skips (it needs root to mount).
fn tmpfs() -> Option<Tmpfs> {
    match Tmpfs::mount("4m") {
        Ok(fs) => Some(fs),
        Err(reason) => {
            eprintln!("SKIPPED: cannot mount a tmpfs here ({reason})");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_read_only_from_the_first_byte_refuses_what_it_cannot_hold_and_counts_it() {
    let Some(fs) = tmpfs() else { return };
    fs.set_read_only(true);
    bounded("the read-only spool test", async {
        let receiver = TestReceiver::start().await.expect("receiver");
        receiver.set_mode(Mode::Down).await.expect("down");
        let client = fast_builder(&fs.path().join("spool"))
            .build(http_exporter(&receiver.url()))
            .expect("a client whose spool cannot open still builds");
        let mut ledger = Ledger::default();
        // Backend down and no spool: each payload is handed back, counted, never lost.
        for i in 0..10 {
            assert_eq!(
                ledger.export(&client, i).await,
                Err(DropReason::SpoolUnavailable)
            );
        }
        // Backend up: delivered directly, spool or not.
        receiver.set_mode(Mode::Up).await.expect("up");
        for i in 10..20 {
            assert!(ledger.export(&client, i).await.is_ok());
        }
        let report = client.force_flush(GENEROUS_FLUSH).await;
        assert_eq!(report.remaining_records, 0, "{report:?}");
        let stats = client.stats();
        ledger.assert_counters_add_up(&stats);
        assert_eq!(stats.dropped.spool_unavailable, 10, "{stats:?}");
        let arrived = receiver.unique_keys();
        assert_eq!(arrived, (10..20).map(key).collect::<Vec<_>>());
        let _ = client.shutdown(GENEROUS_FLUSH).await;
    })
    .await;
}

/// Fills the file system under `dir` from outside the client: writes a file there until
/// the disk says it is full.
fn fill_up(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write as _;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler file");
    let chunk = vec![0u8; 64 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(28), "ENOSPC, not {e}");
                break;
            }
        }
    }
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_filled_by_someone_else_mid_outage_loses_nothing_the_client_took() {
    let Some(fs) = tmpfs() else { return };
    let dir = fs.path().join("spool");
    bounded("the disk filled mid-outage test", async {
        let receiver = TestReceiver::start().await.expect("receiver");
        receiver.set_mode(Mode::Down).await.expect("down");
        let mut ledger = Ledger::default();
        let client = fast_builder(&dir)
            .build(http_exporter(&receiver.url()))
            .expect("valid client");
        for i in 0..30 {
            assert!(ledger.export(&client, i).await.is_ok(), "spooled {i}");
        }
        // Another program fills the disk. What still fits in the page the segment already
        // has is taken (and must arrive); then the spool refuses, and counts, the rest.
        let filler = fill_up(fs.path());
        let mut refused = 0;
        for i in 30..300 {
            if let Err(reason) = ledger.export(&client, i).await {
                assert!(
                    matches!(reason, DropReason::SpoolUnavailable | DropReason::SpoolFull),
                    "{i}: {reason:?}"
                );
                refused += 1;
            }
        }
        assert!(refused > 200, "the full disk refused most: {refused}");
        // The backend is back: everything spooled goes out while the disk is still full
        // (acknowledging needs no new space).
        receiver.set_mode(Mode::Up).await.expect("up");
        let report = client.force_flush(GENEROUS_FLUSH).await;
        assert_eq!(report.remaining_records, 0, "{report:?}");
        let stats = client.stats();
        ledger.assert_counters_add_up(&stats);
        let mut arrived = receiver.unique_keys();
        arrived.sort();
        let mut accepted = ledger.accepted.clone();
        accepted.sort();
        assert_eq!(arrived, accepted, "every accepted payload, and only those");
        // Room again: the next outage spools as before.
        std::fs::remove_file(filler).expect("remove the filler");
        receiver.set_mode(Mode::Down).await.expect("down");
        assert!(ledger.export(&client, 300).await.is_ok(), "spooled again");
        let _ = client.shutdown(GENEROUS_FLUSH).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_in_fsync_every_append_mode_takes_what_the_filled_room_holds_and_loses_nothing()
{
    let Some(fs) = tmpfs() else { return };
    let dir = fs.path().join("spool");
    bounded("the disk filled with durable appends test", async {
        let receiver = TestReceiver::start().await.expect("receiver");
        receiver.set_mode(Mode::Down).await.expect("down");
        let mut ledger = Ledger::default();
        let client = fast_builder(&dir)
            .durability(Durability::FsyncEveryAppend)
            .build(http_exporter(&receiver.url()))
            .expect("valid client");
        for i in 0..30 {
            assert!(ledger.export(&client, i).await.is_ok(), "spooled {i}");
        }
        // The active segment was written with zeros ahead of its records before the disk
        // filled up: records keep landing there, durably, until that room is used up;
        // then the spool refuses, and counts, the rest.
        let filler = fill_up(fs.path());
        let (mut taken, mut refused, mut in_a_row) = (0, 0, 0);
        let mut i = 30;
        while in_a_row < 20 && i < 20_000 {
            match ledger.export(&client, i).await {
                Ok(_) => {
                    taken += 1;
                    in_a_row = 0;
                }
                Err(reason) => {
                    assert!(
                        matches!(reason, DropReason::SpoolUnavailable | DropReason::SpoolFull),
                        "{i}: {reason:?}"
                    );
                    refused += 1;
                    in_a_row += 1;
                }
            }
            i += 1;
        }
        assert!(
            taken > 100,
            "the filled room took records on a full disk: {taken}"
        );
        assert!(
            in_a_row == 20,
            "then the disk refused them: {refused} refused"
        );
        receiver.set_mode(Mode::Up).await.expect("up");
        let report = client.force_flush(GENEROUS_FLUSH).await;
        assert_eq!(report.remaining_records, 0, "{report:?}");
        ledger.assert_counters_add_up(&client.stats());
        let mut arrived = receiver.unique_keys();
        arrived.sort();
        let mut accepted = ledger.accepted.clone();
        accepted.sort();
        assert_eq!(arrived, accepted, "every accepted payload, and only those");
        std::fs::remove_file(filler).expect("remove the filler");
        let _ = client.shutdown(GENEROUS_FLUSH).await;
    })
    .await;
}
