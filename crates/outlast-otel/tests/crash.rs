//! End to end, a crash: a process emitting spans through the real SDK batch processor into
//! outlast-otel, its collector down, is killed with SIGKILL; a new process on the same spool
//! root delivers every span the SDK handed to the exporter and was answered `Ok` for.
//!
//! The child is this test binary run again with `--exact --ignored` on the child test and
//! its settings in the environment. Its exporter is ours, wrapped by an observer that prints
//! `handed <span id>` before each export and `ok <span id>` after an `Ok` answer.

mod support;

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::process::ExitStatusExt as _;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanExporter};
use outlast_client::testing::Mode;
use support::*;

/// Environment variable giving the child its spool root (and switching it on).
const CHILD_ROOT: &str = "OUTLAST_OTEL_CHILD_ROOT";
/// Environment variable giving the child the collector's URL.
const CHILD_URL: &str = "OUTLAST_OTEL_CHILD_URL";
/// The child test's name, for `--exact`.
const CHILD_TEST: &str = "child_emits_spans_into_an_outage_until_killed";
/// Spans per exported batch in the child.
const BATCH: usize = 32;

/// Our exporter, observed: prints what the SDK hands over and what was answered `Ok`.
#[derive(Debug)]
struct Observed(outlast_otel::OutlastSpanExporter);

impl SpanExporter for Observed {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let ids: Vec<String> = batch
            .iter()
            .map(|s| s.span_context.span_id().to_string())
            .collect();
        print_lines("handed", &ids);
        let got = self.0.export(batch).await;
        if got.is_ok() {
            print_lines("ok", &ids);
        }
        got
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.0.set_resource(resource);
    }
}

fn print_lines(tag: &str, ids: &[String]) {
    let mut out = std::io::stdout().lock();
    for id in ids {
        writeln!(out, "{tag} {id}").expect("the parent reads the child's output");
    }
    out.flush().expect("the parent reads the child's output");
}

#[test]
#[ignore = "the child process of a_sigkilled_process_loses_no_span_its_exporter_answered_ok_for, \
            which runs it with its environment; on its own it does nothing"]
fn child_emits_spans_into_an_outage_until_killed() {
    let (Some(root), Ok(url)) = (std::env::var_os(CHILD_ROOT), std::env::var(CHILD_URL)) else {
        return;
    };
    // Built outside any runtime: the pipeline runs on one of its own.
    let otel = outlast_otel::Pipeline::builder()
        .endpoint(url)
        .spool_root(root)
        .client(fast_client())
        .build()
        .expect("valid settings");
    let processor =
        BatchSpanProcessor::builder(Observed(otel.span_exporter().expect("traces are on")))
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_export_batch_size(BATCH)
                    .with_scheduled_delay(Duration::from_millis(5))
                    .build(),
            )
            .build();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_span_processor(processor)
        .build();
    let tracer = provider.tracer("crash");
    let started = Instant::now();
    while started.elapsed() < TEST_BOUND {
        tracer.start("work").end();
        std::thread::sleep(Duration::from_micros(200));
    }
}

#[test]
fn a_sigkilled_process_loses_no_span_its_exporter_answered_ok_for() {
    let server = tokio::runtime::Runtime::new().expect("a runtime for the collector");
    let receiver = server.block_on(receiver_down());
    let root = tempfile::tempdir().expect("temporary spool root");

    let mut child = Command::new(std::env::current_exe().expect("path of this test binary"))
        .args([
            CHILD_TEST,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ROOT, root.path())
        .env(CHILD_URL, receiver.url())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the child process");
    let stdout = child.stdout.take().expect("child stdout is piped");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        // Complete lines only: a line cut by the kill reports nothing.
        let mut stdout = BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            match stdout.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if line.ends_with(b"\n") => {
                    let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                    if tx.send(text).is_err() {
                        break;
                    }
                }
                Ok(_) => break,
            }
        }
    });

    // Kill after a number of spans answered `Ok` that varies from run to run.
    let kill_after = 200 + (std::process::id() as usize % 400);
    let deadline = Instant::now() + TEST_BOUND;
    let mut handed = HashSet::new();
    let mut ok = HashSet::new();
    let mut killed = false;
    loop {
        let line = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!("the child did not report {kill_after} spans within {TEST_BOUND:?}");
            }
        };
        // The test harness may print its own text on the same line first.
        if let Some((_, id)) = line.split_once("handed ") {
            handed.insert(id.to_owned());
        } else if let Some((_, id)) = line.split_once("ok ") {
            ok.insert(id.to_owned());
        }
        if !killed && ok.len() >= kill_after {
            child.kill().expect("SIGKILL the child");
            killed = true;
        }
    }
    let status = child.wait().expect("reap the child");
    reader.join().expect("reader thread");
    assert_eq!(
        status.signal(),
        Some(9),
        "the child died of SIGKILL: {status:?}"
    );

    // A new process (here: a new pipeline) on the same spool root, the collector back.
    server.block_on(async {
        receiver
            .set_mode(Mode::Up)
            .await
            .expect("receiver comes up");
        let otel = pipeline_to(&receiver, root.path())
            .build()
            .expect("valid settings");
        let flush = otel.force_flush(TEST_BOUND).await;
        assert!(flush.complete, "{flush:?}");
    });
    let arrived_list = span_ids(&receiver);
    let arrived: HashSet<String> = arrived_list.iter().cloned().collect();
    let lost: Vec<_> = ok.difference(&arrived).collect();
    assert!(
        lost.is_empty(),
        "{} span(s) answered Ok were lost: {lost:?}",
        lost.len()
    );
    let unknown: Vec<_> = arrived.difference(&handed).collect();
    assert!(
        unknown.is_empty(),
        "span(s) never handed over arrived: {unknown:?}"
    );
    // Handed over but not answered `Ok`: only the batches under way at the kill.
    let unanswered = handed.difference(&ok).count();
    assert!(
        unanswered <= 2 * BATCH,
        "{unanswered} span(s) handed over without an answer"
    );
    assert_eq!(duplicates(&arrived_list), 0, "no span arrives twice");
}
