//! Row 10: one serverless invocation ("export + flush" with an 800 ms budget) against a
//! receiver that refuses connections, hangs, or is up: `export_by` + `force_flush` with the
//! time left, beside the older pattern `export` + `force_flush(800 ms)`.

use std::time::Duration;

use crate::measure::{Collector, SideSpec, Unit};
use crate::report::{Row, Target};
use crate::rows::Ctx;

/// The invocation's budget.
const BUDGET: Duration = Duration::from_millis(800);
/// What the bound may exceed the budget by and still be "a few ms": scheduling and the
/// spool append after a cut-off attempt.
const SLACK: Duration = Duration::from_millis(10);

/// How the receiver behaves during one row.
#[derive(Debug, Clone, Copy)]
enum Backend {
    Refusing,
    Hanging,
    Up,
}

impl Backend {
    fn id(self) -> &'static str {
        match self {
            Backend::Refusing => "10a",
            Backend::Hanging => "10b",
            Backend::Up => "10c",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Backend::Refusing => "receiver refusing connections",
            Backend::Hanging => "receiver accepting and never answering",
            Backend::Up => "receiver up",
        }
    }

    /// Invocations per repetition: fewer where each one takes seconds.
    #[cfg_attr(not(feature = "outlast"), allow(dead_code))]
    fn invocations(self, bounded: bool) -> usize {
        match (self, bounded) {
            (Backend::Hanging, true) => 5,
            (Backend::Hanging, false) | (Backend::Refusing, false) => 2,
            _ => 20,
        }
    }
}

/// Row 10: invocation duration, p99 and median, for each receiver behaviour.
pub(crate) fn group_serverless(ctx: &Ctx<'_>) -> Vec<Row> {
    let figs = [("p99", Unit::Seconds), ("p50", Unit::Seconds)];
    let mut rows = Vec::new();
    for backend in [Backend::Refusing, Backend::Hanging, Backend::Up] {
        eprintln!(
            "[bench] row {}: one invocation, {}",
            backend.id(),
            backend.describe()
        );
        let mut bounded = Collector::new(SideSpec::new(
            "export_by(deadline) + force_flush(time left)",
            &figs,
        ));
        let mut plain = Collector::new(SideSpec::new("export + force_flush(800 ms)", &figs));
        for _ in 0..ctx.plan.reps {
            bounded.run(|| imp::invocations(ctx, backend, true));
            plain.run(|| imp::invocations(ctx, backend, false));
        }
        rows.push(Row::new(
            backend.id(),
            format!("Serverless invocation, {}", backend.describe()),
            format!(
                "1 × 1 KiB export + flush, {} ms budget, a new client per invocation, attempt_timeout 2 s",
                BUDGET.as_millis()
            ),
            bounded.finish(),
            plain.finish(),
            Target::AtMost {
                max: (BUDGET + SLACK).as_secs_f64(),
                unit: Unit::Seconds,
                note: Some("p99: the budget plus a few ms".into()),
            },
        ));
    }
    rows
}

#[cfg(not(feature = "outlast"))]
mod imp {
    use super::Backend;
    use crate::measure::{NotMeasured, Sample};
    use crate::rows::Ctx;

    pub(super) fn invocations(_: &Ctx<'_>, _: Backend, _: bool) -> anyhow::Result<Sample> {
        Err(NotMeasured("harness built without the `outlast` feature".to_owned()).into())
    }
}

#[cfg(feature = "outlast")]
mod imp {
    use std::time::Duration;

    use anyhow::Context as _;
    use outlast_client::http::HttpExporter;
    use outlast_client::testing::{Mode, TestReceiver};
    use outlast_client::{Client, Payload};
    use tokio::time::Instant;

    use super::{BUDGET, Backend};
    use crate::measure::{Sample, quantile};
    use crate::rows::Ctx;

    /// Runs the backend's number of invocations, each with a new client on a fresh spool,
    /// and returns their p99 and median durations in seconds. Checks that every payload was
    /// accepted (delivered or in the spool).
    pub(super) fn invocations(
        ctx: &Ctx<'_>,
        backend: Backend,
        bounded: bool,
    ) -> anyhow::Result<Sample> {
        let n = backend.invocations(bounded);
        let mut took = Vec::with_capacity(n);
        ctx.rt.block_on(async {
            let receiver = TestReceiver::start().await.context("starting a receiver")?;
            let mode = match backend {
                Backend::Refusing => Mode::Down,
                Backend::Hanging => Mode::Hang,
                Backend::Up => Mode::Up,
            };
            receiver.set_mode(mode).await.context("receiver mode")?;
            for i in 0..n {
                let dir = ctx
                    .dir
                    .join(format!("serverless-{}-{bounded}-{i}", backend.id()));
                let _ = std::fs::remove_dir_all(&dir);
                let exporter = HttpExporter::builder(receiver.url())
                    .timeout(Duration::from_secs(2))
                    .build()
                    .context("exporter")?;
                let client = Client::builder()
                    .spool_dir(&dir)
                    .attempt_timeout(Duration::from_secs(2))
                    .build(exporter)
                    .context("client")?;
                let payload = Payload::new(crate::disk::record(1024, i as u64));
                let start = Instant::now();
                let deadline = start + BUDGET;
                let delivery = if bounded {
                    client.export_by(payload, deadline).await
                } else {
                    client.export(payload).await
                };
                let report = if bounded {
                    client
                        .force_flush(deadline.saturating_duration_since(Instant::now()))
                        .await
                } else {
                    client.force_flush(BUDGET).await
                };
                took.push(start.elapsed().as_secs_f64());
                let _delivery = delivery.context("the payload was not accepted")?;
                let kept = client.stats();
                anyhow::ensure!(
                    kept.delivered() + report.remaining_records == 1,
                    "the payload is neither delivered nor in the spool: {report:?}"
                );
                drop(client);
                let _ = std::fs::remove_dir_all(&dir);
            }
            receiver.shutdown().await;
            anyhow::Ok(())
        })?;
        took.sort_by(f64::total_cmp);
        Ok(vec![quantile(&took, 0.99), quantile(&took, 0.5)])
    }
}
