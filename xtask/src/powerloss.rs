//! `cargo xtask powerloss --rounds N [--seed S]`: runs the power-cut test
//! (`tests/e2e_powerloss.rs`) for N seeded rounds instead of CI's few, and prints its
//! summary: rounds, seeds, time, and records confirmed durable (all delivered, or the run
//! fails naming the seed that lost one).

use std::path::Path;

use anyhow::{Context, Result, bail};

/// Parses `--rounds N [--seed S]` and runs the rounds.
pub(crate) fn run(root: &Path, args: Vec<String>) -> Result<()> {
    let mut rounds: Option<u64> = None;
    let mut seed: Option<u64> = None;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| -> Result<u64> {
            it.next()
                .with_context(|| format!("{name} needs a value"))?
                .parse()
                .with_context(|| format!("{name} takes a whole number"))
        };
        match arg.as_str() {
            "--rounds" => rounds = Some(value("--rounds")?),
            "--seed" => seed = Some(value("--seed")?),
            other => bail!("unknown argument {other:?} (usage: powerloss --rounds N [--seed S])"),
        }
    }
    let rounds = rounds.context("usage: cargo xtask powerloss --rounds N [--seed S]")?;
    let mut cmd = crate::cargo();
    cmd.args([
        "test",
        "--package",
        "outlast-tests",
        "--test",
        "e2e_powerloss",
        "--",
        "--exact",
        "power_cuts_lose_nothing_outlast_confirmed_durable",
        "--nocapture",
    ])
    .env("OUTLAST_POWERLOSS_ROUNDS", rounds.to_string());
    if let Some(seed) = seed {
        cmd.env("OUTLAST_POWERLOSS_SEED", seed.to_string());
    }
    crate::step("powerloss", root, cmd)
}
