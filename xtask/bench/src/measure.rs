//! Repeated measurements: samples, their median/min/max, and interleaved repetition of the
//! outlast side and its reference so that both see the same machine noise.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// Bytes in a megabyte as used in every MB/s figure (decimal, like disk vendors and `dd`).
pub(crate) const MB: f64 = 1_000_000.0;
/// Bytes in a mebibyte, for sizes of workloads and memory.
pub(crate) const MIB: u64 = 1024 * 1024;
/// Bytes in a kibibyte.
pub(crate) const KIB: u64 = 1024;

/// A measurement that could not be taken, with the reason (printed as "not measured: …").
#[derive(Debug)]
pub(crate) struct NotMeasured(pub(crate) String);

impl fmt::Display for NotMeasured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotMeasured {}

/// The unit of a figure, which also says which direction is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Unit {
    /// Records (or requests, or rows) per second.
    RecordsPerSec,
    /// Decimal megabytes per second.
    MbPerSec,
    /// Seconds of wall-clock time.
    Seconds,
    /// Microseconds of wall-clock time.
    Micros,
    /// Mebibytes of memory.
    Mib,
    /// A dimensionless ratio (e.g. disk bytes per payload byte).
    Ratio,
}

impl Unit {
    /// The suffix printed after a value.
    pub(crate) fn suffix(self) -> &'static str {
        match self {
            Unit::RecordsPerSec => "rec/s",
            Unit::MbPerSec => "MB/s",
            Unit::Seconds => "s",
            Unit::Micros => "µs",
            Unit::Mib => "MiB",
            Unit::Ratio => "×",
        }
    }

    /// Formats `v` in this unit, short enough for a table cell.
    pub(crate) fn format(self, v: f64) -> String {
        let num = match self {
            Unit::RecordsPerSec if v >= 10_000_000.0 => format!("{:.1}M", v / 1e6),
            Unit::RecordsPerSec if v >= 1_000_000.0 => format!("{:.2}M", v / 1e6),
            Unit::RecordsPerSec if v >= 10_000.0 => format!("{:.0}k", v / 1e3),
            Unit::RecordsPerSec if v >= 1_000.0 => format!("{:.1}k", v / 1e3),
            Unit::RecordsPerSec => format!("{v:.0}"),
            Unit::MbPerSec if v >= 100.0 => format!("{v:.0}"),
            Unit::MbPerSec => format!("{v:.1}"),
            Unit::Seconds if v >= 10.0 => format!("{v:.1}"),
            Unit::Seconds => format!("{v:.3}"),
            Unit::Micros if v >= 100.0 => format!("{v:.0}"),
            Unit::Micros => format!("{v:.1}"),
            Unit::Mib => format!("{v:.1}"),
            Unit::Ratio => format!("{v:.3}"),
        };
        format!("{num} {}", self.suffix())
    }
}

/// The values one repetition produced, one per figure of its side, in the side's order.
pub(crate) type Sample = Vec<f64>;

/// Median, minimum and maximum of a figure over the repetitions, plus the raw samples.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Stat {
    /// What the figure is ("records/s", "p99 latency", ...).
    pub(crate) label: String,
    /// Its unit.
    pub(crate) unit: Unit,
    /// Median over repetitions (mean of the two middle values for an even count).
    pub(crate) median: f64,
    /// Smallest sample.
    pub(crate) min: f64,
    /// Largest sample.
    pub(crate) max: f64,
    /// Every sample, in the order taken.
    pub(crate) samples: Vec<f64>,
}

impl Stat {
    /// The statistics of `samples` (at least one).
    pub(crate) fn of(label: &str, unit: Unit, samples: Vec<f64>) -> Stat {
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => sorted[n / 2],
            _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Stat {
            label: label.to_owned(),
            unit,
            median,
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
            samples,
        }
    }
}

/// What one side of a comparison reports: its name and the figures of each sample.
#[derive(Debug, Clone)]
pub(crate) struct SideSpec {
    /// Shown in the table, e.g. "raw write(2)".
    pub(crate) name: String,
    /// Label and unit of each value of a [`Sample`]; the first is the one compared.
    pub(crate) figures: Vec<(&'static str, Unit)>,
}

impl SideSpec {
    /// A side named `name` with `figures`.
    pub(crate) fn new(name: impl Into<String>, figures: &[(&'static str, Unit)]) -> SideSpec {
        SideSpec {
            name: name.into(),
            figures: figures.to_vec(),
        }
    }
}

/// The result of one side: its figures, or why it has none.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub(crate) enum Cell {
    /// Measured: the statistics of each figure (the first one is the compared one).
    Measured {
        /// What was measured.
        name: String,
        /// One entry per figure.
        figures: Vec<Stat>,
    },
    /// Not measured, and why.
    NotMeasured {
        /// What would have been measured.
        name: String,
        /// Why it was not.
        reason: String,
    },
}

impl Cell {
    /// The median of the compared (first) figure, if measured.
    pub(crate) fn primary(&self) -> Option<&Stat> {
        match self {
            Cell::Measured { figures, .. } => figures.first(),
            Cell::NotMeasured { .. } => None,
        }
    }

    /// A cell that was not measured because of `reason`.
    pub(crate) fn not_measured(name: impl Into<String>, reason: impl Into<String>) -> Cell {
        Cell::NotMeasured {
            name: name.into(),
            reason: reason.into(),
        }
    }
}

/// Collects samples of one side, or the reason it failed.
#[derive(Debug)]
pub(crate) struct Collector {
    spec: SideSpec,
    samples: Vec<Sample>,
    failed: Option<String>,
}

impl Collector {
    /// An empty collector for `spec`.
    pub(crate) fn new(spec: SideSpec) -> Collector {
        Collector {
            spec,
            samples: Vec::new(),
            failed: None,
        }
    }

    /// Whether this side is still worth running (it has not failed).
    pub(crate) fn live(&self) -> bool {
        self.failed.is_none()
    }

    /// Runs one repetition unless the side has already failed; keeps its sample or its error.
    pub(crate) fn run(&mut self, f: impl FnOnce() -> anyhow::Result<Sample>) {
        if !self.live() {
            return;
        }
        match f() {
            Ok(s) if s.len() == self.spec.figures.len() => self.samples.push(s),
            Ok(s) => {
                self.failed = Some(format!(
                    "harness bug: {} values for {} figures",
                    s.len(),
                    self.spec.figures.len()
                ))
            }
            Err(e) => {
                let reason = match e.downcast_ref::<NotMeasured>() {
                    Some(nm) => nm.0.clone(),
                    None => format!("failed: {e:#}"),
                };
                eprintln!("  {}: {reason}", self.spec.name);
                self.failed = Some(reason);
            }
        }
    }

    /// Records a sample produced elsewhere (e.g. by a combined run).
    pub(crate) fn push(&mut self, r: anyhow::Result<Sample>) {
        self.run(|| r);
    }

    /// The final cell: statistics of every figure, or the reason there are none.
    pub(crate) fn finish(self) -> Cell {
        if let Some(reason) = self.failed {
            return Cell::not_measured(self.spec.name, reason);
        }
        if self.samples.is_empty() {
            return Cell::not_measured(self.spec.name, "no repetition ran");
        }
        let figures = self
            .spec
            .figures
            .iter()
            .enumerate()
            .map(|(i, (label, unit))| {
                Stat::of(label, *unit, self.samples.iter().map(|s| s[i]).collect())
            })
            .collect();
        Cell::Measured {
            name: self.spec.name,
            figures,
        }
    }
}

/// Records per second and MB/s for `records` records totalling `bytes` bytes done in `elapsed`.
pub(crate) fn rates(records: u64, bytes: u64, elapsed: Duration) -> Sample {
    let s = elapsed.as_secs_f64().max(1e-9);
    vec![records as f64 / s, bytes as f64 / MB / s]
}

/// The `q`-quantile (0..=1) of `sorted` (ascending), nearest-rank.
pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Human size of `bytes` ("256 MiB", "1 KiB", "1500 B").
pub(crate) fn size(bytes: u64) -> String {
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_count_is_mean_of_middle_values() {
        let s = Stat::of("x", Unit::Seconds, vec![4.0, 1.0, 3.0, 2.0]);
        assert_eq!(s.median, 2.5);
        assert_eq!((s.min, s.max), (1.0, 4.0));
        assert_eq!(s.samples, vec![4.0, 1.0, 3.0, 2.0]);
    }

    #[test]
    fn quantile_uses_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
    }

    #[test]
    fn collector_reports_the_reason_of_a_failed_side() {
        let mut c = Collector::new(SideSpec::new("s", &[("x", Unit::Seconds)]));
        c.run(|| Ok(vec![1.0]));
        c.run(|| Err(NotMeasured("crate missing".into()).into()));
        c.run(|| Ok(vec![2.0]));
        match c.finish() {
            Cell::NotMeasured { reason, .. } => assert_eq!(reason, "crate missing"),
            Cell::Measured { .. } => panic!("a failed side must not be reported as measured"),
        }
    }
}
