//! Power loss under the OpenTelemetry bridge: a process emits spans through the SDK's batch
//! processor into `outlast-otel` (its client in `FsyncEveryAppend` mode), on the forgetting
//! FUSE file system of `tests/forgetfs`, the collector down or flapping. At a seeded random
//! moment the power is cut and the process killed; the durable state is mounted again and a
//! new pipeline on it delivers what it finds. Every span whose batch the exporter answered
//! `Ok` arrives (delivered before the cut, or found on disk after it), nothing arrives that
//! was never handed to the exporter, and the new pipeline's flush completes in bounded time.
//!
//! The child is this test binary run again on the ignored child test, printing
//! `handed <span id>` before each export and `ok <span id>` after an `Ok` answer.

use std::collections::HashSet;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanExporter};
use outlast_client::testing::{Mode, TestReceiver};
use outlast_client::{Client, ClientBuilder, Durability};
use outlast_forgetfs::{Image, Mount, MountPoint};
use outlast_tests::{ChildTest, TEST_BOUND};
use prost::Message as _;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

/// Environment variable giving the child its spool root (and switching it on).
const ENV_ROOT: &str = "OUTLAST_POWERLOSS_OTEL_CHILD_ROOT";
/// Environment variable giving the child the collector's URL.
const ENV_URL: &str = "OUTLAST_POWERLOSS_OTEL_CHILD_URL";
/// Rounds per run (default [`CI_ROUNDS`]).
const ENV_ROUNDS: &str = "OUTLAST_POWERLOSS_OTEL_ROUNDS";
/// First seed (default: random, printed).
const ENV_FIRST_SEED: &str = "OUTLAST_POWERLOSS_OTEL_SEED";
/// The child test's name, for `--exact`.
const CHILD_TEST: &str = "child_emits_spans_on_the_forgetting_mount_until_the_power_is_cut";
/// Rounds per run in CI.
const CI_ROUNDS: u64 = 4;
/// Spans per exported batch in the child.
const BATCH: usize = 32;
/// What starts each line the child prints for the parent.
const LINE_MARK: &str = "@ ";

/// Client settings of both processes: quick retries, small segments, every append fsynced.
fn client_settings() -> ClientBuilder {
    Client::builder()
        .durability(Durability::FsyncEveryAppend)
        .segment_bytes(64 * 1024)
        .max_record_bytes(32 * 1024)
        .attempt_timeout(Duration::from_secs(3))
        .immediate_retry_delay(Duration::from_millis(50))
        .initial_backoff(Duration::from_millis(50))
        .max_backoff(Duration::from_millis(300))
        .max_retry_after(Duration::from_secs(1))
}

/// The bridge's exporter, observed: prints what the SDK hands over and what was answered
/// `Ok`.
#[derive(Debug)]
struct Observed(outlast_otel::OutlastSpanExporter);

impl SpanExporter for Observed {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let ids: Vec<String> = batch
            .iter()
            .map(|s| s.span_context.span_id().to_string())
            .collect();
        say("handed", &ids);
        let got = self.0.export(batch).await;
        if got.is_ok() {
            say("ok", &ids);
        }
        got
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.0.set_resource(resource);
    }
}

fn say(tag: &str, ids: &[String]) {
    let mut out = std::io::stdout().lock();
    for id in ids {
        writeln!(out, "{LINE_MARK}{tag} {id}").expect("the parent reads the child's output");
    }
    out.flush().expect("the parent reads the child's output");
}

#[test]
#[ignore = "the child process of spans_answered_ok_survive_a_power_cut, which runs it with its \
            environment; on its own it does nothing"]
fn child_emits_spans_on_the_forgetting_mount_until_the_power_is_cut() {
    let (Some(root), Ok(url)) = (std::env::var_os(ENV_ROOT), std::env::var(ENV_URL)) else {
        return;
    };
    let otel = outlast_otel::Pipeline::builder()
        .endpoint(url)
        .spool_root(root)
        .client(client_settings())
        .request_timeout(Duration::from_secs(3))
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
    let tracer = provider.tracer("powerloss");
    let started = Instant::now();
    while started.elapsed() < TEST_BOUND {
        tracer.start("work").end();
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Every span id (hex) in the accepted trace requests, once per arrival.
fn span_ids(receiver: &TestReceiver) -> Vec<String> {
    receiver
        .received()
        .into_iter()
        .filter(|r| r.answer.is_accepted() && r.path == "/v1/traces")
        .flat_map(|r| {
            let body = r
                .decoded_body()
                .expect("a valid body")
                .expect("bodies are recorded");
            ExportTraceServiceRequest::decode(&body[..])
                .expect("an OTLP trace request (a torn record never passes for one)")
                .resource_spans
        })
        .flat_map(|r| r.scope_spans)
        .flat_map(|s| s.spans)
        .map(|s| s.span_id.iter().map(|b| format!("{b:02x}")).collect())
        .collect()
}

/// One round: see the module documentation.
fn round(server: &tokio::runtime::Runtime, mnt: &std::path::Path, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let flapping = rng.random_bool(0.5);
    let torn = rng.random_bool(0.5).then(|| rng.random::<u64>());
    let cut_after = rng.random_range(1..600usize);
    eprintln!(
        "powerloss-otel: seed {seed}: collector {}, cut after {cut_after} span(s) answered Ok{}",
        if flapping { "flapping" } else { "down" },
        if torn.is_some() { ", torn" } else { "" }
    );
    let receiver = Arc::new(server.block_on(async {
        TestReceiver::builder()
            .mode(Mode::Down)
            .start()
            .await
            .expect("receiver starts")
    }));
    let flap = Arc::new(AtomicBool::new(flapping));
    let flapper = {
        let (r, on) = (Arc::clone(&receiver), Arc::clone(&flap));
        let mut frng = StdRng::seed_from_u64(seed ^ 0x5eed);
        server.spawn(async move {
            let mut up = false;
            while on.load(Ordering::Acquire) {
                up = !up;
                let _ = r.set_mode(if up { Mode::Up } else { Mode::Down }).await;
                tokio::time::sleep(Duration::from_millis(frng.random_range(5..80))).await;
            }
        })
    };

    let mount = Mount::new(mnt, Image::for_this_user()).expect("mount the forgetting fs");
    let root = mnt.join("otel");
    let mut child = ChildTest::spawn(
        CHILD_TEST,
        &[
            (ENV_ROOT, root.as_os_str()),
            (ENV_URL, receiver.url().as_ref()),
        ],
        true,
    );
    let lines = child.take_lines().expect("started with read_stdout");
    let (mut handed, mut ok) = (HashSet::new(), HashSet::new());
    let deadline = Instant::now() + TEST_BOUND;
    while ok.len() < cut_after {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => take(&line, &mut handed, &mut ok),
            Err(e) => {
                child.kill();
                panic!(
                    "seed {seed}: {} of {cut_after} spans answered Ok before the output ended or \
                     stalled: {e}",
                    ok.len()
                );
            }
        }
    }
    let survived = mount.cut_power(torn);
    child.kill();
    // Everything it printed before dying counts: those answers came before the cut.
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = drain_deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => take(&line, &mut handed, &mut ok),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("seed {seed}: the killed child's output did not end")
            }
        }
    }
    child.assert_killed();
    flap.store(false, Ordering::Release);
    server.block_on(async {
        let _ = flapper.await;
    });
    mount.unmount();

    // The power is back: a new pipeline on what survived, the collector up.
    let mount = Mount::new(mnt, survived).expect("mount what survived");
    let started = Instant::now();
    server.block_on(async {
        receiver.set_mode(Mode::Up).await.expect("receiver up");
        let otel = outlast_otel::Pipeline::builder()
            .endpoint(receiver.url())
            .spool_root(&root)
            .client(client_settings())
            .request_timeout(Duration::from_secs(3))
            .build()
            .unwrap_or_else(|e| panic!("seed {seed}: the pipeline does not start: {e}"));
        let flush = otel.force_flush(TEST_BOUND).await;
        assert!(flush.complete, "seed {seed}: {flush:?}");
        let _ = otel.shutdown(Duration::from_secs(5)).await;
    });
    let took = started.elapsed();
    mount.unmount();

    let arrived: HashSet<String> = span_ids(&receiver).into_iter().collect();
    let lost: Vec<&String> = ok.difference(&arrived).collect();
    assert!(
        lost.is_empty(),
        "seed {seed}: {} span(s) answered Ok were lost: {lost:?}",
        lost.len()
    );
    let unknown: Vec<&String> = arrived.difference(&handed).collect();
    assert!(
        unknown.is_empty(),
        "seed {seed}: span(s) never handed to the exporter arrived: {unknown:?}"
    );
    eprintln!(
        "powerloss-otel: seed {seed}: {} answered Ok, {} handed, {} arrived, recovery in {took:?}",
        ok.len(),
        handed.len(),
        arrived.len()
    );
}

/// Records one line of the child's.
fn take(line: &str, handed: &mut HashSet<String>, ok: &mut HashSet<String>) {
    // The test harness may print its own text on the same line first.
    let Some((_, rest)) = line.split_once(LINE_MARK) else {
        return;
    };
    match rest.split_once(' ') {
        Some(("handed", id)) => handed.insert(id.to_owned()),
        Some(("ok", id)) => ok.insert(id.to_owned()),
        _ => panic!("child: {line}"),
    };
}

#[test]
fn spans_answered_ok_survive_a_power_cut() {
    if let Err(reason) = outlast_forgetfs::available() {
        assert!(
            !outlast_forgetfs::required(),
            "CI must run the power-cut rounds: {reason}"
        );
        println!("SKIPPED: power-cut rounds need FUSE: {reason}");
        return;
    }
    let rounds = std::env::var(ENV_ROUNDS)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CI_ROUNDS);
    let first = std::env::var(ENV_FIRST_SEED)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| outlast_tests::random_below(1 << 40));
    println!("powerloss-otel: first seed {first} ({ENV_FIRST_SEED}={first} replays this run)");
    let server = outlast_tests::runtime();
    let mnt = MountPoint::new().expect("mount point");
    for seed in first..first.saturating_add(rounds) {
        round(&server, mnt.path(), seed);
    }
    server.shutdown_timeout(Duration::from_secs(5));
}
