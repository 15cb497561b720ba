//! The benchmark harness behind `cargo xtask bench`: measures outlast beside a fair reference
//! for each claim (raw syscalls, a bare hyper client, a SQLite queue), in the same run, and
//! prints a markdown table plus `results.json`. See docs/benchmarks.md.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod child;
mod childproc;
mod codec;
mod disk;
mod http;
#[cfg(any(test, not(feature = "outlast")))]
mod loopback;
mod machine;
mod measure;
#[cfg(not(feature = "outlast"))]
#[path = "outlast_off.rs"]
mod ol;
#[cfg(feature = "outlast")]
#[path = "outlast_on.rs"]
mod ol;
#[cfg(feature = "outlast")]
mod otel;
#[cfg(feature = "outlast")]
mod pacing;
mod report;
mod rows;
mod serverless;
mod sqlite;
mod workload;

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Parser;

use crate::measure::MIB;
use crate::report::{Results, Row};
use crate::rows::{Ctx, Plan};

/// Measure outlast against fair references and print a markdown table.
#[derive(Debug, Parser)]
#[command(name = "outlast-bench", version)]
struct Args {
    /// Small sizes and 3 repetitions: a smoke run that finishes in under a minute.
    #[arg(long)]
    quick: bool,
    /// Size of the spool built for the recovery row (e.g. 512MiB, 64MiB).
    #[arg(long, value_parser = parse_size)]
    recovery_bytes: Option<u64>,
    /// Size of the large replay backlog (row 7b), e.g. 512MiB.
    #[arg(long, value_parser = parse_size)]
    backlog_bytes: Option<u64>,
    /// Directory for results.json [default: target/bench in the workspace].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run only these row groups (1-8; 9 = the SQLite lines, produced by groups 1 and 3;
    /// 10 = the serverless invocation; 11 = OpenTelemetry; 12 = the codec of stored records;
    /// 13 = replay order and rate cap),
    /// comma-separated. Ids like 3a select their group.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where on-disk measurements write [default: a temporary directory under the
    /// workspace's target directory, on the same disk as the workspace].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Repetitions per figure (the median is reported) [default: 5, --quick: 3].
    #[arg(long)]
    reps: Option<usize>,
    /// Requests in flight for the HTTP rows.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Also measure the time to first delivery after a long outage (row 7e): 60 s, or the
    /// length given (`--long-outage 2m`); adds that much per repetition.
    #[arg(long, num_args = 0..=1, default_missing_value = "60s", value_parser = parse_outage)]
    long_outage: Option<std::time::Duration>,
    /// Internal: run as a child process of the harness.
    #[command(subcommand)]
    child: Option<Internal>,
}

#[derive(Debug, clap::Subcommand)]
enum Internal {
    /// A child process of the harness (not for direct use).
    #[command(name = "__child", hide = true)]
    Child {
        #[command(subcommand)]
        cmd: child::ChildCmd,
    },
}

/// Parses an outage length in the product's grammar ("60s", "2m"); at least 3 s, so that
/// row 7e is longer than 7d.
fn parse_outage(s: &str) -> Result<std::time::Duration, String> {
    let d = outlast_core::units::parse_duration(s).map_err(|e| e.to_string())?;
    if d < std::time::Duration::from_secs(3) {
        return Err(format!("{s:?}: a long outage lasts at least 3s"));
    }
    Ok(d)
}

/// Parses a size in the workspace's grammar ([`outlast_core::units::parse_size`]: "512MiB",
/// "64M", "1GiB", "16MB", "4096" bytes), at least one byte.
fn parse_size(s: &str) -> Result<u64, String> {
    match outlast_core::units::parse_size(s) {
        Ok(0) => Err(format!("{s:?} is out of range")),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn plan(args: &Args) -> Plan {
    let q = args.quick;
    let pick = |quick: u64, full: u64| if q { quick } else { full };
    Plan {
        reps: args.reps.unwrap_or(if q { 3 } else { 5 }).max(1),
        volume_bytes: pick(16 * MIB, 256 * MIB),
        sqlite_bytes: pick(4 * MIB, 32 * MIB),
        fsync_records: pick(200, 2000),
        recovery_bytes: args.recovery_bytes.unwrap_or(pick(32 * MIB, 512 * MIB)),
        http_requests: pick(2000, 20_000),
        concurrency: args.concurrency.max(1),
        outage_calls: pick(2000, 20_000),
        backlog_small_records: 500,
        backlog_bytes: args.backlog_bytes.unwrap_or(pick(8 * MIB, 512 * MIB)),
        backlog_record_len: 16 * 1024,
        coalesce_records: 2000,
        request_cost: std::time::Duration::from_micros(500),
        outages: std::iter::once(std::time::Duration::from_secs(2))
            .chain(args.long_outage)
            .collect(),
        memory_bytes: if q {
            [8 * MIB, 32 * MIB]
        } else {
            [64 * MIB, 512 * MIB]
        },
        memory_record_len: 16 * 1024,
        memory_reps: if q { 1 } else { 3 },
    }
}

/// The workspace root (this crate lives in `xtask/bench`).
fn workspace_root() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..");
    std::fs::canonicalize(&p).unwrap_or(p)
}

/// The row groups selected by `--only` (all when empty).
fn selected(only: &[String]) -> anyhow::Result<Vec<u8>> {
    if only.is_empty() {
        return Ok((1..=8).chain([10, 11, 12, 13]).collect());
    }
    let mut groups = Vec::new();
    for o in only {
        let digits: String = o.chars().take_while(char::is_ascii_digit).collect();
        let g: u8 = digits
            .parse()
            .ok()
            .filter(|g| (1..=13).contains(g))
            .with_context(|| format!("--only {o:?}: rows are 1-13 (e.g. 1, 3a, 9)"))?;
        let add: &[u8] = if g == 9 { &[1, 3] } else { &[g] };
        for g in add {
            if !groups.contains(g) {
                groups.push(*g);
            }
        }
    }
    groups.sort_unstable();
    Ok(groups)
}

fn main() {
    // `cargo xtask bench -- --quick` hands us a leading `--`: skip it so the flags still parse.
    let argv = std::env::args_os()
        .enumerate()
        .filter(|(i, a)| !(*i == 1 && a == "--"))
        .map(|(_, a)| a);
    let args = Args::parse_from(argv);
    if let Some(Internal::Child { cmd }) = args.child {
        std::process::exit(child::run(cmd));
    }
    if let Err(e) = run(&args) {
        eprintln!("outlast-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let plan = plan(args);
    let groups = selected(&args.only)?;
    let root = workspace_root();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| root.join("target").join("bench"));
    // The temporary directory (if any) is removed when `_tmp` drops at the end of the run.
    let (dir, _tmp) = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            (d.clone(), None)
        }
        None => {
            let base = root.join("target");
            std::fs::create_dir_all(&base)
                .with_context(|| format!("creating {}", base.display()))?;
            let t = tempfile::Builder::new()
                .prefix("bench-tmp-")
                .tempdir_in(&base)
                .context("creating the bench directory")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let machine = machine::Machine::gather(&dir);
    println!("## outlast benchmark\n");
    print!("{machine}");
    println!(
        "- mode: {}, {} repetitions per figure (median shown; min/max in results.json), groups {:?}\n",
        if args.quick { "--quick" } else { "full" },
        plan.reps,
        groups
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(machine.cores.max(2))
        .enable_all()
        .build()
        .context("building the runtime")?;
    let receiver = rt.block_on(ol::Receiver::start())?;
    let ctx = Ctx {
        plan: &plan,
        dir: &dir,
        rt: &rt,
        receiver: &receiver,
    };
    let mut rows: Vec<Row> = Vec::new();
    for g in &groups {
        let mut r = match g {
            1 => rows::group_append(&ctx),
            2 => rows::group_fsync(&ctx),
            3 => rows::group_read(&ctx),
            4 => rows::group_recovery(&ctx),
            5 => rows::group_happy(&ctx),
            6 => rows::group_outage(&ctx),
            7 => rows::group_replay(&ctx),
            8 => rows::group_memory(&ctx),
            10 => serverless::group_serverless(&ctx),
            #[cfg(feature = "outlast")]
            11 => otel::group_otel(&ctx),
            12 => codec::group_codec(&ctx),
            #[cfg(feature = "outlast")]
            13 => pacing::group_pacing(&ctx),
            _ => Vec::new(),
        };
        rows.append(&mut r);
    }
    drop(receiver);
    let table = report::markdown(&rows);
    println!("{table}");
    let total = started.elapsed().as_secs_f64();
    println!("Total run time: {total:.0} s. MB = 10^6 bytes; MB/s counts payload bytes.");
    let results = Results {
        machine,
        config: serde_json::json!({ "quick": args.quick, "plan": plan, "groups": groups, "dir": dir }),
        started_unix_secs: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .saturating_sub(total as u64),
        total_seconds: total,
        rows,
    };
    report::save_json(&out, &results)?;
    eprintln!(
        "[bench] results saved to {}",
        out.join("results.json").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("512MiB"), Ok(512 * MIB));
        assert_eq!(parse_size("64M"), Ok(64 * MIB));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("16MB"), Ok(16_000_000));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("0").is_err());
        assert_eq!(parse_outage("2m"), Ok(std::time::Duration::from_secs(120)));
        assert_eq!(parse_outage("60s"), Ok(std::time::Duration::from_secs(60)));
        assert!(parse_outage("1s").is_err());
        assert!(parse_outage("soon").is_err());
    }

    #[test]
    fn only_nine_selects_the_groups_that_produce_the_sqlite_lines() {
        assert_eq!(selected(&["9".into()]).expect("valid"), vec![1, 3]);
        assert_eq!(
            selected(&["3a".into(), "1".into()]).expect("valid"),
            vec![1, 3]
        );
        assert_eq!(selected(&["10b".into()]).expect("valid"), vec![10]);
        assert_eq!(selected(&["11a".into()]).expect("valid"), vec![11]);
        assert_eq!(selected(&["12h".into()]).expect("valid"), vec![12]);
        assert_eq!(selected(&["13a".into()]).expect("valid"), vec![13]);
        assert!(selected(&["14".into()]).is_err());
    }
}
