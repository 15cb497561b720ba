//! Lane identity: spools of different identities on one directory never read each other's
//! records; lanes written before identities existed are adopted; a lane released after
//! open is adopted by `adopt_released`.

mod common;

use std::path::Path;

use common::{body_index, payload, small_config};
use outlast_spool::{Adoption, RecordedIdentity, Spool, SpoolConfig, inspect};

fn config(root: &Path, identity: Option<&str>) -> SpoolConfig {
    small_config(root).with_identity(identity.map(str::to_owned))
}

fn deliver_all(spool: &Spool) -> Vec<u64> {
    let mut seen = Vec::new();
    loop {
        let b = spool.read_batch(100, u64::MAX).expect("read");
        if b.records.is_empty() {
            return seen;
        }
        seen.extend(b.records.iter().map(|r| body_index(&r.payload)));
        // Acknowledge each lane's newest record of the batch.
        let mut last_of_lane = std::collections::BTreeMap::new();
        for r in &b.records {
            last_of_lane.insert(r.id.lane, r.id);
        }
        for id in last_of_lane.into_values() {
            spool.ack(id).expect("ack");
        }
    }
}

fn append_and_close(root: &Path, identity: Option<&str>, values: std::ops::Range<u64>) {
    let (spool, _) = Spool::open(config(root, identity)).expect("open");
    for i in values {
        spool.append(payload(i)).expect("append");
    }
    spool.close().expect("close");
}

#[test]
fn spools_of_different_identities_on_one_directory_never_read_each_others_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    append_and_close(dir.path(), Some("https://a.example"), 0..5);
    append_and_close(dir.path(), Some("https://b.example"), 100..103);
    append_and_close(dir.path(), None, 200..202);

    let (a, report) = Spool::open(config(dir.path(), Some("https://a.example"))).expect("open a");
    let foreign: Vec<(u32, RecordedIdentity, u64)> = report
        .foreign_lanes
        .iter()
        .map(|f| (f.lane, f.identity.clone(), f.records))
        .collect();
    assert_eq!(
        foreign,
        vec![
            (1, RecordedIdentity::Named("https://b.example".into()), 3),
            (2, RecordedIdentity::Anonymous, 2),
        ]
    );
    assert!(report.foreign_lanes.iter().all(|f| f.bytes > 0));
    assert_eq!(a.stats().foreign_lanes, 2);
    assert_eq!(deliver_all(&a), (0..5).collect::<Vec<_>>());
    a.close().expect("close");

    let (b, _) = Spool::open(config(dir.path(), Some("https://b.example"))).expect("open b");
    assert_eq!(deliver_all(&b), vec![100, 101, 102]);
    b.close().expect("close");
    let (none, report) = Spool::open(config(dir.path(), None)).expect("open none");
    assert_eq!(report.foreign_lanes.len(), 2, "{report:?}");
    assert_eq!(deliver_all(&none), vec![200, 201]);

    let scan = inspect::scan(dir.path()).expect("scan");
    assert_eq!(
        scan.lanes[0].identity,
        Some(RecordedIdentity::Named("https://a.example".into()))
    );
}

#[test]
fn a_lane_written_before_identities_existed_is_adopted_and_then_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    append_and_close(dir.path(), Some("old"), 0..4);
    std::fs::remove_file(dir.path().join("lane-0").join("identity")).expect("rm identity");
    let (spool, report) = Spool::open(config(dir.path(), Some("new"))).expect("open");
    assert!(report.foreign_lanes.is_empty());
    assert_eq!(spool.lane(), 0, "the lane without identity is taken");
    assert_eq!(deliver_all(&spool), (0..4).collect::<Vec<_>>());
    spool.append(payload(9)).expect("append");
    spool.close().expect("close");
    let scan = inspect::scan(dir.path()).expect("scan");
    assert_eq!(
        scan.lanes[0].identity,
        Some(RecordedIdentity::Named("new".into())),
        "recorded before the new record"
    );
}

#[test]
fn a_lane_released_after_open_is_adopted_by_adopt_released_and_drained_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The first spool holds lane 0 (a process about to exit).
    let (first, _) = Spool::open(config(dir.path(), Some("svc"))).expect("open first");
    for i in 0..5 {
        first.append(payload(i)).expect("append");
    }
    // A second one, same identity, and one of another identity.
    let (second, report) = Spool::open(config(dir.path(), Some("svc"))).expect("open second");
    assert!(
        report.adopted_lanes.is_empty(),
        "a held lane is not adopted"
    );
    let (other, _) = Spool::open(config(dir.path(), Some("other"))).expect("open other");
    second.append(payload(50)).expect("append");
    assert_eq!(second.adopt_released().expect("adopt"), 0, "still held");
    first.close().expect("the first process exits");
    assert_eq!(
        other.adopt_released().expect("adopt"),
        0,
        "not its identity"
    );
    assert_eq!(second.adopt_released().expect("adopt"), 1);
    assert_eq!(second.adopt_released().expect("adopt"), 0, "adopted once");
    let mut want: Vec<u64> = (0..5).collect();
    want.push(50);
    assert_eq!(deliver_all(&second), want, "the adopted lane first");
    assert!(
        !dir.path().join("lane-0").exists(),
        "drained adopted lane removed"
    );
    assert!(deliver_all(&other).is_empty());
}

/// The bytes of every lane's identity file under `root`, by lane directory name.
fn identity_files(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(root).expect("read root") {
        let entry = entry.expect("entry");
        let path = entry.path().join("identity");
        if let Ok(bytes) = std::fs::read(&path) {
            files.insert(entry.file_name().to_string_lossy().into_owned(), bytes);
        }
    }
    files
}

#[test]
fn a_wider_adoption_rule_drains_other_identities_lanes_under_its_locks_and_never_rewrites_an_identity()
 {
    let dir = tempfile::tempdir().expect("tempdir");
    append_and_close(dir.path(), Some("https://a.example"), 0..3);
    append_and_close(dir.path(), Some("https://b.example"), 100..102);
    append_and_close(dir.path(), None, 200..201);
    let before = identity_files(dir.path());
    assert_eq!(before.len(), 3);

    // An operator's spool of its own identity, taking `a`'s lanes and anonymous ones on
    // purpose, but not `b`'s.
    let operator = config(dir.path(), Some("operator"))
        .with_adoption(Adoption::Also(vec!["https://a.example".to_owned()]));
    let (op, report) = Spool::open(operator).expect("open");
    assert_eq!(report.adopted_lanes.len(), 2, "{report:?}");
    assert_eq!(report.foreign_lanes.len(), 1, "{report:?}");
    // While it holds them, a spool of `a` cannot take them: it gets a new lane of its own.
    let (a, a_report) = Spool::open(config(dir.path(), Some("https://a.example"))).expect("open a");
    assert!(a_report.adopted_lanes.is_empty(), "{a_report:?}");
    assert!(
        a.read_batch(100, u64::MAX)
            .expect("read")
            .records
            .is_empty()
    );
    assert_eq!(a.adopt_released().expect("adopt"), 0);
    a.close().expect("close a");
    // The operator's own lane is a new one, of its identity.
    assert!(![0, 1, 2].contains(&op.lane()), "{}", op.lane());
    // Part-way (records read, none acknowledged), dropped without a close, as a killed
    // process would leave it: every identity file as it was.
    assert!(!op.read_batch(1, u64::MAX).expect("read").records.is_empty());
    drop(op);
    let after = identity_files(dir.path());
    for (lane, bytes) in &before {
        assert_eq!(after.get(lane), Some(bytes), "lane {lane}'s identity file");
    }
    // So `a`'s lane is `a`'s again, and the anonymous lane nobody's of a declared identity.
    let (a, _) = Spool::open(config(dir.path(), Some("https://a.example"))).expect("open a");
    assert_eq!(deliver_all(&a), vec![0, 1, 2]);
    a.close().expect("close a");
    // A second operator run delivers what is left of what it asks for.
    let operator = config(dir.path(), Some("operator"))
        .with_adoption(Adoption::Also(vec!["https://a.example".to_owned()]));
    let (op, _) = Spool::open(operator).expect("open");
    assert_eq!(deliver_all(&op), vec![200]);
    op.close().expect("close");
    // `b`'s records are still `b`'s alone.
    let (b, _) = Spool::open(config(dir.path(), Some("https://b.example"))).expect("open b");
    assert_eq!(deliver_all(&b), vec![100, 101]);
    b.close().expect("close b");

    // `Any` takes every lane, including one whose identity cannot be read, and the own lane
    // is still a new one.
    let dir = tempfile::tempdir().expect("tempdir");
    append_and_close(dir.path(), Some("https://b.example"), 0..2);
    let lane0 = dir
        .path()
        .join(identity_files(dir.path()).keys().next().expect("a lane"));
    std::fs::write(lane0.join("identity"), b"not an identity").expect("damage");
    append_and_close(dir.path(), Some("https://c.example"), 10..11);
    let before = identity_files(dir.path());
    let (any, report) =
        Spool::open(config(dir.path(), Some("operator")).with_adoption(Adoption::Any))
            .expect("open");
    assert_eq!(report.adopted_lanes.len(), 2, "{report:?}");
    let mut got = deliver_all(&any);
    got.sort_unstable();
    assert_eq!(got, vec![0, 1, 10]);
    any.close().expect("close");
    let after = identity_files(dir.path());
    for (lane, bytes) in &before {
        if let Some(now) = after.get(lane) {
            assert_eq!(now, bytes, "lane {lane}'s identity file");
        }
    }
}

#[test]
fn the_default_rule_takes_only_its_own_and_unrecorded_lanes() {
    use outlast_spool::identity::adoptable;
    let named = |s: &str| RecordedIdentity::Named(s.to_owned());
    let also = Adoption::Also(vec!["b".to_owned()]);
    for (recorded, own, also_b, any) in [
        (None, true, true, true),
        (Some(named("a")), true, true, true),
        (Some(named("b")), false, true, true),
        (Some(named("c")), false, false, true),
        (Some(RecordedIdentity::Anonymous), false, true, true),
        (Some(RecordedIdentity::Unreadable), false, false, true),
    ] {
        let r = recorded.as_ref();
        assert_eq!(adoptable(r, Some("a"), &Adoption::Own), own, "{recorded:?}");
        assert_eq!(adoptable(r, Some("a"), &also), also_b, "{recorded:?}");
        assert_eq!(adoptable(r, Some("a"), &Adoption::Any), any, "{recorded:?}");
    }
}
