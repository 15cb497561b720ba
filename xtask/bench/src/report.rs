//! Rows of the results table, their targets and verdicts, printed as markdown and saved as JSON.

use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

use crate::machine::Machine;
use crate::measure::{Cell, Stat, Unit};

/// What a row must achieve to be MET.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Target {
    /// outlast's compared figure divided by the reference's must be at least `min`.
    RatioAtLeast {
        /// The smallest acceptable ratio.
        min: f64,
    },
    /// outlast's compared figure must be at most `max` (in its unit).
    AtMost {
        /// The largest acceptable value.
        max: f64,
        /// Its unit.
        unit: Unit,
        /// Why this bound (e.g. how it was scaled from the stated target).
        note: Option<String>,
    },
    /// outlast's compared figure must be at least `min` (in its unit).
    AtLeast {
        /// The smallest acceptable value.
        min: f64,
        /// Its unit.
        unit: Unit,
    },
    /// No target: the row is for context.
    None,
}

impl Target {
    fn describe(&self) -> String {
        match self {
            Target::RatioAtLeast { min } => format!("ratio ≥ {min}"),
            Target::AtMost { max, unit, note } => match note {
                Some(n) => format!("≤ {} ({n})", unit.format(*max)),
                None => format!("≤ {}", unit.format(*max)),
            },
            Target::AtLeast { min, unit } => format!("≥ {}", unit.format(*min)),
            Target::None => "—".to_owned(),
        }
    }
}

/// Whether a row met its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum Verdict {
    /// Measured and within the target.
    #[serde(rename = "MET")]
    Met,
    /// Measured and outside the target.
    #[serde(rename = "MISSED")]
    Missed,
    /// No target, or not measured.
    #[serde(rename = "N/A")]
    NotApplicable,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Met => "MET",
            Verdict::Missed => "MISSED",
            Verdict::NotApplicable => "N/A",
        }
    }
}

/// One line of the results table.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    /// Short id, e.g. "1a"; the leading number is the row group (`--only`).
    pub(crate) id: String,
    /// What is compared, e.g. "Spool append 1 KiB, OsWrite".
    pub(crate) title: String,
    /// The workload both sides ran.
    pub(crate) workload: String,
    /// outlast's figures.
    pub(crate) outlast: Cell,
    /// The reference's figures.
    pub(crate) reference: Cell,
    /// outlast's compared median divided by the reference's (same run).
    pub(crate) ratio: Option<f64>,
    /// The target.
    pub(crate) target: Target,
    /// The verdict.
    pub(crate) verdict: Verdict,
}

impl Row {
    /// A row comparing `outlast` with `reference`, judged against `target`.
    pub(crate) fn new(
        id: &str,
        title: impl Into<String>,
        workload: impl Into<String>,
        outlast: Cell,
        reference: Cell,
        target: Target,
    ) -> Row {
        let ratio = match (outlast.primary(), reference.primary()) {
            (Some(o), Some(r)) if r.median > 0.0 => Some(o.median / r.median),
            _ => None,
        };
        let verdict = match (&target, outlast.primary()) {
            (Target::None, _) | (_, None) => Verdict::NotApplicable,
            (Target::RatioAtLeast { min }, Some(_)) => match ratio {
                Some(r) if r >= *min => Verdict::Met,
                Some(_) => Verdict::Missed,
                None => Verdict::NotApplicable,
            },
            (Target::AtMost { max, .. }, Some(o)) => judge(o.median <= *max),
            (Target::AtLeast { min, .. }, Some(o)) => judge(o.median >= *min),
        };
        Row {
            id: id.to_owned(),
            title: title.into(),
            workload: workload.into(),
            outlast,
            reference,
            ratio,
            target,
            verdict,
        }
    }
}

fn judge(ok: bool) -> Verdict {
    if ok { Verdict::Met } else { Verdict::Missed }
}

/// Everything a run produced, as saved to `results.json`.
#[derive(Debug, Serialize)]
pub(crate) struct Results {
    /// The machine the run was on.
    pub(crate) machine: Machine,
    /// The arguments and sizes used.
    pub(crate) config: serde_json::Value,
    /// Seconds since the Unix epoch when the run started.
    pub(crate) started_unix_secs: u64,
    /// Wall-clock duration of the whole run.
    pub(crate) total_seconds: f64,
    /// The rows, in table order.
    pub(crate) rows: Vec<Row>,
}

fn cell_text(c: &Cell) -> String {
    match c {
        Cell::Measured { name, figures } => {
            let figs: Vec<String> = figures.iter().map(stat_text).collect();
            format!("{name}: {}", figs.join(", "))
        }
        Cell::NotMeasured { name, reason } => format!("{name}: not measured: {reason}"),
    }
}

fn stat_text(s: &Stat) -> String {
    let v = s.unit.format(s.median);
    // Plain rates and durations speak for themselves; other figures need their label.
    if matches!(s.label.as_str(), "records/s" | "MB/s" | "seconds") {
        v
    } else {
        format!("{} {v}", s.label)
    }
}

/// The results as a markdown table.
pub(crate) fn markdown(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str("| row | workload | outlast | reference | ratio | target | verdict |\n");
    out.push_str("|---|---|---|---|---|---|---|\n");
    for r in rows {
        let ratio = r
            .ratio
            .map_or_else(|| "—".to_owned(), |x| format!("{x:.2}"));
        out.push_str(&format!(
            "| {} {} | {} | {} | {} | {} | {} | {} |\n",
            r.id,
            r.title,
            r.workload,
            cell_text(&r.outlast).replace('|', "/"),
            cell_text(&r.reference).replace('|', "/"),
            ratio,
            r.target.describe(),
            r.verdict.as_str()
        ));
    }
    out
}

/// Writes `results` as pretty JSON to `dir/results.json`, creating `dir`.
pub(crate) fn save_json(dir: &Path, results: &Results) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("results.json");
    let text = serde_json::to_string_pretty(results).context("encoding results")?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(v: f64) -> Cell {
        Cell::Measured {
            name: "x".into(),
            figures: vec![Stat::of("", Unit::RecordsPerSec, vec![v])],
        }
    }

    #[test]
    fn ratio_target_is_judged_on_the_ratio_of_medians() {
        let met = Row::new(
            "1a",
            "t",
            "w",
            measured(90.0),
            measured(100.0),
            Target::RatioAtLeast { min: 0.8 },
        );
        assert_eq!(met.verdict, Verdict::Met);
        let missed = Row::new(
            "1a",
            "t",
            "w",
            measured(70.0),
            measured(100.0),
            Target::RatioAtLeast { min: 0.8 },
        );
        assert_eq!(missed.verdict, Verdict::Missed);
    }

    #[test]
    fn a_row_not_measured_has_no_verdict_and_says_why() {
        let r = Row::new(
            "5",
            "t",
            "w",
            Cell::not_measured("outlast", "crate did not compile"),
            measured(1.0),
            Target::RatioAtLeast { min: 0.95 },
        );
        assert_eq!(r.verdict, Verdict::NotApplicable);
        assert!(markdown(&[r]).contains("not measured: crate did not compile"));
    }
}
