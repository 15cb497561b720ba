//! `outlast --help` and bad input: one-line errors, exit codes 2 (usage) and 1 (runtime),
//! never a panic.

mod common;

use std::time::Duration;

use common::outlast;

const LIMIT: Duration = Duration::from_secs(20);

#[test]
fn help_lists_every_subcommand() {
    let run = outlast(&["--help"], LIMIT);
    assert_eq!(run.code, Some(0), "{run:?}");
    for sub in ["demo", "gen", "inspect", "verify", "replay"] {
        assert!(
            run.stdout.lines().any(|l| l.trim_start().starts_with(sub)),
            "{sub} missing from --help: {run:?}"
        );
    }
}

#[test]
fn no_subcommand_shows_help_and_exits_2() {
    let run = outlast(&[], LIMIT);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(!run.stderr.contains("panicked"), "{run:?}");
}

#[test]
fn bad_numbers_durations_and_urls_are_usage_errors() {
    let cases: &[&[&str]] = &[
        &["demo", "--outage", "5x"],
        &["demo", "--outage", "10"],
        &["demo", "--count", "many"],
        &["demo", "--rate", "0"],
        &[
            "gen",
            "--endpoint",
            "http://127.0.0.1:9/",
            "--count",
            "-3",
            "--size",
            "10",
        ],
        &[
            "gen",
            "--endpoint",
            "ftp://example.invalid/",
            "--count",
            "1",
            "--size",
            "10",
        ],
        &[
            "gen",
            "--endpoint",
            "http://127.0.0.1:9/",
            "--count",
            "1",
            "--size",
            "10",
            "--flush-timeout",
            "soon",
        ],
        &["replay", "/tmp", "--endpoint", "not a url"],
        &["inspect"],
        &["frobnicate"],
    ];
    for args in cases {
        let run = outlast(args, LIMIT);
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
        run.assert_one_line_error();
    }
}

#[test]
fn missing_dirs_and_non_spools_are_runtime_errors() {
    let empty = tempfile::tempdir().expect("temp dir");
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let empty_path = empty.path().to_str().expect("utf-8");
    let file_path = file.path().to_str().expect("utf-8");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["inspect", "/definitely/not/here"], "no such directory"),
        (vec!["verify", "/definitely/not/here"], "no such directory"),
        (vec!["inspect", empty_path], "not an outlast spool"),
        (vec!["verify", file_path], "not an outlast spool"),
        (
            vec!["replay", empty_path, "--endpoint", "http://127.0.0.1:9/"],
            "not an outlast spool",
        ),
    ];
    for (args, message) in cases {
        let run = outlast(&args, LIMIT);
        assert_eq!(run.code, Some(1), "{args:?}: {run:?}");
        run.assert_one_line_error();
        assert!(run.stderr.contains(message), "{args:?}: {run:?}");
    }
    // Refusing a non-spool must not have turned it into one.
    assert_eq!(
        std::fs::read_dir(empty.path()).expect("readable").count(),
        0
    );
}
