//! A spool root created in a directory its user may write in but not read (mode 0300): the
//! spool cannot open that directory to fsync the new root's entry in it, and must still
//! open and work (it did before it fsynced parents), leaving that entry's durability to the
//! file system.
//!
//! Root reads every directory, so the spool runs in a child process (this test binary run
//! again) under another user, through `setpriv`. Where that is not possible (not root, no
//! `setpriv`), the test prints SKIPPED with the reason.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use outlast_spool::{Payload, Spool, SpoolConfig};

/// Environment variable giving the child the spool root (and switching it on).
const CHILD_ROOT: &str = "OUTLAST_SPOOL_UNREADABLE_PARENT_ROOT";
/// The user and group the child runs as: `nobody` on Debian.
const OTHER_ID: u32 = 65534;

#[test]
#[ignore = "the child of a_root_in_an_unreadable_parent_still_opens; on its own it does nothing"]
fn child_opens_a_spool_in_an_unreadable_parent() {
    let Some(root) = std::env::var_os(CHILD_ROOT) else {
        return;
    };
    let (spool, _) = Spool::open(SpoolConfig::new(Path::new(&root)))
        .expect("a spool opens where its root's parent cannot be read");
    spool
        .append(Payload::new(&b"kept"[..]))
        .expect("and takes a record");
    spool.close().expect("and closes");
}

#[test]
fn a_root_in_an_unreadable_parent_still_opens() {
    if !rustix::process::geteuid().is_root() {
        println!("SKIPPED: needs root to run the spool as another user");
        return;
    }
    let base = tempfile::tempdir().expect("temporary directory");
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755))
        .expect("let the other user through");
    let parent = base.path().join("writable-not-readable");
    std::fs::create_dir(&parent).expect("parent");
    rustix::fs::chown(
        &parent,
        Some(rustix::fs::Uid::from_raw(OTHER_ID)),
        Some(rustix::fs::Gid::from_raw(OTHER_ID)),
    )
    .expect("give the parent to the other user");
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o300))
        .expect("write and search, no read");
    let exe = std::env::current_exe().expect("path of this test binary");
    let status = Command::new("setpriv")
        .args([
            &format!("--reuid={OTHER_ID}"),
            &format!("--regid={OTHER_ID}"),
            "--clear-groups",
        ])
        .arg(&exe)
        .args([
            "child_opens_a_spool_in_an_unreadable_parent",
            "--exact",
            "--ignored",
            "--test-threads=1",
        ])
        .env(CHILD_ROOT, parent.join("spool"))
        .status();
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            println!("SKIPPED: cannot run setpriv: {e}");
            return;
        }
    };
    assert!(status.success(), "the child failed: {status:?}");
    // What it wrote is there (read as root).
    let lanes = std::fs::read_dir(parent.join("spool"))
        .expect("the root was created")
        .count();
    assert!(lanes >= 1, "a lane was created");
}
