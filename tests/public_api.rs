//! The names each library crate shows at its root, against the committed listings in
//! `tests/public-api/`: a name added to, removed from or hidden at a root changes a listing,
//! so every change of the documented surface shows up in review. To accept a change, run
//! this test with `OUTLAST_UPDATE_PUBLIC_API=1` and commit the listings it writes.
//!
//! A listing names what the root declares or re-exports, with the feature that gates it;
//! `#[doc(hidden)]` items are left out (they are not part of the API), and so are the
//! contents of modules (each module's own documentation lists them).

use std::path::{Path, PathBuf};

/// The library crates (outlast-otel keeps its listing in its own tests, beside its root).
const LIBRARIES: [&str; 3] = ["outlast-core", "outlast-spool", "outlast-client"];

const KINDS: [&str; 8] = [
    "mod", "struct", "enum", "trait", "fn", "const", "static", "type",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the test crate lives in the workspace")
        .to_path_buf()
}

/// The public names at the root of a crate whose `lib.rs` is `source`, one line each:
/// `kind name` for an item the root declares, `use name` for a re-export, followed by
/// `(feature "x")` when a feature gates it. Sorted.
fn root_items(source: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut hidden = false;
    let mut gate = String::new();
    let mut lines = source.lines();
    while let Some(line) = lines.next() {
        // Only the root's own items: they start in the first column.
        if line.starts_with("#[doc(hidden)]") {
            hidden = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("#[cfg(feature = ") {
            gate = format!(" (feature {})", rest.trim_end_matches(")]"));
            continue;
        }
        if line.starts_with("#[") || line.starts_with("///") || line.trim().is_empty() {
            continue;
        }
        let suffix = std::mem::take(&mut gate);
        let was_hidden = std::mem::replace(&mut hidden, false);
        if let Some(rest) = line.strip_prefix("pub use ") {
            let mut statement = rest.to_owned();
            while !statement.contains(';') {
                match lines.next() {
                    Some(more) => statement.push_str(more),
                    None => break,
                }
            }
            if was_hidden {
                continue;
            }
            let statement = statement.split(';').next().unwrap_or_default();
            let list = match (statement.find('{'), statement.rfind('}')) {
                (Some(a), Some(b)) => statement[a + 1..b].to_owned(),
                _ => statement.rsplit("::").next().unwrap_or_default().to_owned(),
            };
            for name in list.split(',') {
                let name = name.trim();
                let name = name.rsplit(" as ").next().unwrap_or(name).trim();
                if !name.is_empty() {
                    items.push(format!("use {name}{suffix}"));
                }
            }
            continue;
        }
        let Some(rest) = line.strip_prefix("pub ") else {
            continue;
        };
        let rest = rest.strip_prefix("async ").unwrap_or(rest);
        let mut words = rest.split(|c: char| !(c.is_alphanumeric() || c == '_'));
        let (Some(kind), Some(name)) = (words.next(), words.next()) else {
            continue;
        };
        if KINDS.contains(&kind) && !was_hidden {
            items.push(format!("{kind} {name}{suffix}"));
        }
    }
    items.sort();
    items
}

#[test]
fn every_library_root_shows_what_its_committed_listing_says() {
    let root = workspace();
    let update = std::env::var_os("OUTLAST_UPDATE_PUBLIC_API").is_some();
    let mut stale = Vec::new();
    for krate in LIBRARIES {
        let source = std::fs::read_to_string(root.join("crates").join(krate).join("src/lib.rs"))
            .expect("lib.rs");
        let mut found = root_items(&source).join("\n");
        found.push('\n');
        let listing = root.join("tests/public-api").join(format!("{krate}.txt"));
        if update {
            std::fs::write(&listing, &found).expect("write the listing");
            continue;
        }
        let committed = std::fs::read_to_string(&listing).unwrap_or_default();
        if committed != found {
            stale.push(format!(
                "{krate}: the root shows\n{found}\nbut {} says\n{committed}",
                listing.display()
            ));
        }
    }
    assert!(
        stale.is_empty(),
        "{}\n(if the change is meant, run this test with OUTLAST_UPDATE_PUBLIC_API=1 and \
         commit tests/public-api/)",
        stale.join("\n")
    );
}

#[test]
fn hidden_gated_and_declared_items_are_read_as_such() {
    let source = "\
//! A crate.
#[doc(hidden)]
pub mod internals;
pub mod shown;
#[cfg(feature = \"extra\")]
pub use a::{B, C as D};
/// Documented.
pub use e::F;
#[doc(hidden)]
pub use g::H;
pub struct Config {
    pub inner: u8,
}
pub(crate) fn private() {}
#[cfg(test)]
mod tests {
    pub use super::*;
}
";
    assert_eq!(
        root_items(source),
        [
            "mod shown",
            "struct Config",
            "use B (feature \"extra\")",
            "use D (feature \"extra\")",
            "use F",
        ]
    );
}
