//! Project automation for outlast, run as `cargo xtask <command>` (alias in `.cargo/config.toml`).
//!
//! - `cargo xtask ci`: everything CI checks — formatting, clippy, tests, the API docs, the
//!   packages of the published crates, cargo-deny.
//! - `cargo xtask bench [-- ARGS]`: the benchmark harness (`xtask/bench`), in release mode.
//! - `cargo xtask powerloss --rounds N [--seed S]`: a long run of the power-cut tests.

#![forbid(unsafe_code)]

mod deny;
mod powerloss;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  ci                 fmt check, clippy -D warnings, tests, docs -D warnings, cargo package
                     of the published crates, cargo-deny (bans, licenses, sources, and
                     advisories against ../shared/advisory-db)
  deny               only the cargo-deny checks
  bench [ARGS...]    run the benchmark harness in release mode (ARGS go to it; try --help)
  powerloss --rounds N [--seed S]
                     N power-cut rounds on the forgetting file system (seeds S.., random
                     S if not given); a failure names its seed
";

fn main() {
    if let Err(e) = run() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let root = workspace_root()?;
    match args.next().as_deref() {
        Some("ci") => ci(&root),
        Some("deny") => deny::check(&root),
        Some("bench") => {
            let rest: Vec<String> = args.collect();
            let mut cmd = cargo();
            cmd.args(["run", "--release", "--package", "outlast-bench", "--"])
                .args(&rest);
            step("bench", &root, cmd)
        }
        Some("powerloss") => powerloss::run(&root, args.collect()),
        Some("-h" | "--help") | None => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown command {other:?}\n{USAGE}"),
    }
}

fn ci(root: &Path) -> Result<()> {
    let started = Instant::now();

    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    step("fmt", root, fmt)?;

    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]);
    step("clippy", root, clippy)?;

    // `cargo test` also builds every example (with `--all-features`, those behind
    // `required-features` too), so the examples need no step of their own.
    let mut test = cargo();
    test.args(["test", "--workspace", "--all-features", "--locked"]);
    step("test", root, test)?;

    // The API documentation as docs.rs builds it (every feature), broken links denied.
    let mut doc = cargo();
    doc.args([
        "doc",
        "--workspace",
        "--all-features",
        "--no-deps",
        "--locked",
    ])
    .env("RUSTDOCFLAGS", "-D warnings");
    step("doc", root, doc)?;

    // Every publishable crate packaged as crates.io would receive it, and built from the
    // package alone (verification catches a file the build needs that the package lacks).
    // The workspace's crates depend on each other, so they are packaged together.
    // `--allow-dirty`: the check runs on work not yet committed too (publishing is not).
    forget_packaged_sources(root)?;
    let mut package = cargo();
    package.args(["package", "--locked", "--allow-dirty"]);
    for krate in PUBLISHED {
        package.args(["--package", krate]);
    }
    step("package", root, package)?;

    deny::check(root)?;

    println!(
        "xtask ci: all checks passed in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The crates published to crates.io; the other workspace members say `publish = false`.
const PUBLISHED: [&str; 5] = [
    "outlast-core",
    "outlast-spool",
    "outlast-client",
    "outlast-otel",
    "outlast-cli",
];

/// Removes what an earlier `cargo package` left for the next one to trip on. Cargo verifies a
/// crate that depends on another one packaged in the same run against a temporary local
/// registry (`target/package/tmp-registry`). It unpacks that registry's crates under
/// `$CARGO_HOME/registry/src/-<hash>/` (a local registry's directory name starts with `-`)
/// and compiles them into the workspace's `target/debug`, and it reuses both in a later run
/// when name and version are the same (a registry crate is taken to never change): after a
/// change to a crate's API, the crates depending on it would be verified against its old
/// sources and fail. So the temporary registry, those unpacked copies of the published
/// crates, and their compiled artifacts (whose dep-info names those copies) are removed;
/// everything else stays cached.
fn forget_packaged_sources(root: &Path) -> Result<()> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    remove_dir_if_present(&target.join("package").join("tmp-registry"))?;

    let ours = |name: &str, separator: char| {
        PUBLISHED.iter().any(|krate| {
            name.strip_prefix(&krate.replace('-', &separator.to_string()))
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_alphanumeric()))
        })
    };

    // Compiled from an unpacked copy: the dep-info file lists that copy's sources.
    let deps = target.join("debug").join("deps");
    if let Ok(entries) = std::fs::read_dir(&deps) {
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(stem) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
                continue;
            };
            if path.extension().is_none_or(|e| e != "d") || !ours(&stem, '_') {
                continue;
            }
            let from_registry =
                std::fs::read_to_string(&path).is_ok_and(|info| info.contains("/registry/src/-"));
            if !from_registry {
                continue;
            }
            for file in [
                format!("{stem}.d"),
                format!("lib{stem}.rlib"),
                format!("lib{stem}.rmeta"),
            ] {
                remove_file_if_present(&deps.join(file))?;
            }
            let fingerprint = stem.replace('_', "-");
            remove_dir_if_present(&target.join("debug").join(".fingerprint").join(fingerprint))?;
        }
    }

    let cargo_home = match std::env::var_os("CARGO_HOME") {
        Some(home) => PathBuf::from(home),
        None => match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(".cargo"),
            None => return Ok(()),
        },
    };
    let Ok(registries) = std::fs::read_dir(cargo_home.join("registry").join("src")) else {
        return Ok(());
    };
    for registry in registries.flatten() {
        if !registry.file_name().to_string_lossy().starts_with('-') {
            continue;
        }
        let Ok(crates) = std::fs::read_dir(registry.path()) else {
            continue;
        };
        for unpacked in crates.flatten() {
            if ours(&unpacked.file_name().to_string_lossy(), '-') {
                remove_dir_if_present(&unpacked.path())?;
            }
        }
    }
    Ok(())
}

fn remove_file_if_present(file: &Path) -> Result<()> {
    match std::fs::remove_file(file) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("could not remove {}", file.display())),
    }
}

fn remove_dir_if_present(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("could not remove {}", dir.display())),
    }
}

/// Runs one step, echoing it, and fails with its name if it fails.
fn step(name: &str, root: &Path, mut cmd: Command) -> Result<()> {
    cmd.current_dir(root);
    println!("xtask: [{name}] {cmd:?}");
    let t = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("could not start step {name}"))?;
    if !status.success() {
        bail!("step {name} failed ({status})");
    }
    println!("xtask: [{name}] ok in {:.1}s", t.elapsed().as_secs_f64());
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The workspace root: the parent of this crate's manifest directory.
fn workspace_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .context("xtask manifest has no parent directory")
}
