//! The cargo-deny step: bans, licenses and sources online-free; advisories against the RustSec
//! snapshot shipped in `../shared/advisory-db`, since CI cannot fetch the live database.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::step;

/// The cargo-deny release `cargo xtask ci` installs when missing; the database directory name
/// below depends on it.
pub(crate) const CARGO_DENY_VERSION: &str = "0.20.2";

/// Where cargo-deny 0.20 looks for the default database (`db-urls` in deny.toml) under
/// `db-path`: the repository name plus a hash of its URL.
const DB_DIR_NAME: &str = "advisory-db-3157b0e258782691";

pub(crate) fn check(root: &Path) -> Result<()> {
    ensure_cargo_deny()?;

    let mut policy = Command::new("cargo");
    policy.args([
        "deny",
        "--all-features",
        "check",
        "bans",
        "licenses",
        "sources",
    ]);
    step("deny bans licenses sources", root, policy)?;

    let snapshot = root.join("../shared/advisory-db");
    if !snapshot.join("crates").is_dir() {
        bail!(
            "advisory snapshot not found at {}: CI expects ../shared beside the checkout",
            snapshot.display()
        );
    }
    let date = snapshot_date(&snapshot);
    let db = root.join("target/advisory-dbs").join(DB_DIR_NAME);
    install_snapshot(&snapshot, &db)?;
    println!(
        "xtask: advisories are checked against a snapshot of the RustSec database dated {date}; \
         advisories published after that date are not covered."
    );
    let mut advisories = Command::new("cargo");
    advisories.args(["deny", "--offline", "--all-features", "check", "advisories"]);
    step("deny advisories (snapshot)", root, advisories)?;
    println!("xtask: advisories ok as of the snapshot dated {date}");
    Ok(())
}

/// Makes sure the pinned cargo-deny is on the PATH, installing it (from crates.io, with
/// `--locked`) when it is missing or another version, so that `cargo xtask ci` passes on a
/// fresh machine that has only the pinned toolchain.
fn ensure_cargo_deny() -> Result<()> {
    let found = installed_cargo_deny();
    if found
        .as_deref()
        .is_some_and(|v| v.split_whitespace().any(|w| w == CARGO_DENY_VERSION))
    {
        return Ok(());
    }
    println!(
        "xtask: cargo-deny {CARGO_DENY_VERSION} not found ({}); installing it with \
         `cargo install --locked cargo-deny@{CARGO_DENY_VERSION}` (a few minutes, once)",
        found.as_deref().unwrap_or("not installed")
    );
    let status = Command::new("cargo")
        .args(["install", "--locked"])
        .arg(format!("cargo-deny@{CARGO_DENY_VERSION}"))
        .status()
        .context("running cargo install cargo-deny")?;
    if !status.success() {
        bail!(
            "installing cargo-deny {CARGO_DENY_VERSION} failed ({status}); install it by hand \
             with `cargo install --locked cargo-deny@{CARGO_DENY_VERSION}`"
        );
    }
    match installed_cargo_deny() {
        Some(v) if v.split_whitespace().any(|w| w == CARGO_DENY_VERSION) => Ok(()),
        other => bail!(
            "cargo-deny {CARGO_DENY_VERSION} was installed but `cargo deny --version` says {:?}: \
             is cargo's bin directory on the PATH?",
            other.unwrap_or_default()
        ),
    }
}

/// What `cargo deny --version` prints, or `None` when it does not run.
fn installed_cargo_deny() -> Option<String> {
    let out = Command::new("cargo")
        .args(["deny", "--version"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The commit date recorded in the snapshot's SNAPSHOT file.
fn snapshot_date(snapshot: &Path) -> String {
    fs::read_to_string(snapshot.join("SNAPSHOT"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("commit date:").map(|d| d.trim().to_owned()))
        })
        .unwrap_or_else(|| "unknown (no SNAPSHOT file)".to_owned())
}

/// Copies the snapshot into a fresh one-commit git repository where cargo-deny expects it.
fn install_snapshot(snapshot: &Path, db: &Path) -> Result<()> {
    if db.exists() {
        fs::remove_dir_all(db).with_context(|| format!("removing old {}", db.display()))?;
    }
    copy_dir(snapshot, db)?;
    let git = |args: &[&str]| -> Result<()> {
        let status = Command::new("git")
            .arg("-C")
            .arg(db)
            .args([
                "-c",
                "user.name=outlast-ci",
                "-c",
                "user.email=ci@outlast.invalid",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .stdout(std::process::Stdio::null())
            .status()
            .context("running git")?;
        if !status.success() {
            bail!("git {args:?} failed in {}", db.display());
        }
        Ok(())
    };
    git(&["init", "--quiet"])?;
    git(&["add", "--all"])?;
    git(&[
        "commit",
        "--quiet",
        "--message",
        "RustSec advisory snapshot",
    ])?;
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target: PathBuf = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if kind.is_file() {
            fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
            // The snapshot is read-only; the copy must be writable so a later run can replace it.
            let mut perms = fs::metadata(&target)?.permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perms.set_readonly(false);
            fs::set_permissions(&target, perms)?;
        }
    }
    Ok(())
}
