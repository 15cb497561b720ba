//! What a published crate carries: each publishable crate has its README and both licence
//! files, and its licence files are the workspace's, byte for byte (crates.io cannot follow a
//! path out of a crate, so each crate keeps a copy).

use std::path::{Path, PathBuf};

/// The crates published to crates.io (everything under `crates/`).
const PUBLISHED: [&str; 5] = [
    "outlast-core",
    "outlast-spool",
    "outlast-client",
    "outlast-otel",
    "outlast-cli",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the test crate lives in the workspace")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_published_crate_is_listed() {
    let mut found: Vec<String> = std::fs::read_dir(workspace().join("crates"))
        .expect("crates/")
        .map(|e| {
            e.expect("crates/ entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    found.sort();
    let mut listed: Vec<String> = PUBLISHED.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(found, listed);
}

#[test]
fn every_published_crate_carries_the_workspace_licences() {
    let root = workspace();
    for licence in ["LICENSE-MIT", "LICENSE-APACHE"] {
        let expected = read(&root.join(licence));
        for krate in PUBLISHED {
            let copy = root.join("crates").join(krate).join(licence);
            assert!(
                read(&copy) == expected,
                "{} differs from the workspace's {licence}",
                copy.display()
            );
        }
    }
}

#[test]
fn every_published_crate_has_a_readme_and_is_publishable() {
    let root = workspace();
    for krate in PUBLISHED {
        let dir = root.join("crates").join(krate);
        let readme = read(&dir.join("README.md"));
        assert!(
            readme.starts_with(&format!("# {krate}\n")),
            "{krate}/README.md"
        );
        let manifest = read(&dir.join("Cargo.toml"));
        for key in ["description", "readme", "keywords", "categories", "include"] {
            assert!(
                manifest.lines().any(|l| l.starts_with(&format!("{key} ="))),
                "{krate}/Cargo.toml has no {key}"
            );
        }
        assert!(
            !manifest.contains("publish"),
            "{krate}/Cargo.toml says publish"
        );
    }
    let workspace_manifest = read(&root.join("Cargo.toml"));
    assert!(!workspace_manifest.contains("example.invalid"));
}
