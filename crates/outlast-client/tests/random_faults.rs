//! Random settings, a backend that changes its answer every few milliseconds, exports
//! cancelled at random points, and a shutdown at a random moment with a random time limit:
//! every payload handed to `export` is counted once (delivered, dropped for one reason, or
//! waiting in the spool), and what the client says is waiting is what the disk holds after.
//!
//! Each case is one seed; a failure names it. `OUTLAST_TEST_SEEDS=first..end` runs other
//! seeds (the default is a few dozen, a few seconds in all).

mod common;

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use common::{accounted, payload, spool_dir};
use outlast_client::testing::{MemoryExporter, Outcome};
use outlast_client::{ClientBuilder, Durability, FullPolicy, ReplayOrder};

/// A small xorshift generator: the same seed gives the same case.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    fn millis(&mut self, from: u64, span: u64) -> Duration {
        Duration::from_millis(from + self.below(span))
    }
}

/// A client with settings drawn from `r`: small segments and cap, either full policy and
/// durability, either replay order, sometimes an age limit and merged requests.
fn random_client(r: &mut Rng, dir: &Path, exporter: &MemoryExporter) -> outlast_client::Client {
    let mut b: ClientBuilder = common::builder(dir)
        .immediate_retry_delay(r.millis(0, 3))
        .initial_backoff(r.millis(2, 10))
        .max_backoff(Duration::from_millis(30))
        .attempt_timeout(r.millis(20, 100))
        .max_record_bytes(2048)
        .segment_bytes(4096 + r.below(8192))
        .spool_max_bytes(16 * 1024 + r.below(64 * 1024))
        .full_policy(if r.one_in(2) {
            FullPolicy::DropOldest
        } else {
            FullPolicy::DropNewest
        })
        .replay_order(if r.one_in(2) {
            ReplayOrder::OldestFirst
        } else {
            ReplayOrder::LiveFirst
        })
        .batch_size(1 + r.below(16) as usize)
        .max_in_flight(1 + r.below(4) as usize)
        .durability(if r.one_in(2) {
            Durability::FsyncEveryAppend
        } else {
            Durability::OsWrite {
                fsync_interval: Duration::from_millis(50),
            }
        });
    if r.one_in(3) {
        b = b.max_record_age(Some(r.millis(20, 200)));
    }
    if r.one_in(2) {
        b = b.coalesce_max_records(1 + r.below(8) as usize);
    }
    b.build(exporter.clone()).expect("valid settings")
}

async fn one_case(seed: u64) {
    let mut r = Rng::new(seed);
    let dir = spool_dir();
    let exporter = MemoryExporter::new().with_max_in_flight(1 + r.below(4) as usize);
    let c = random_client(&mut r, dir.path(), &exporter);

    // The backend: a new answer every 1-10 ms, 60 times, then it stays as it is.
    let modes = [
        Outcome::Accept,
        Outcome::Fail,
        Outcome::Reject,
        Outcome::Hang,
        Outcome::Throttle(Duration::from_millis(5)),
        Outcome::SlowAccept(Duration::from_millis(3)),
    ];
    let mut fr = Rng::new(r.next());
    let backend = {
        let e = exporter.clone();
        tokio::spawn(async move {
            for _ in 0..60 {
                e.set_mode(modes[fr.below(modes.len() as u64) as usize].clone());
                tokio::time::sleep(fr.millis(1, 10)).await;
            }
        })
    };

    // Up to six tasks export 20-140 payloads of 10-1500 bytes each; one export in five is
    // cancelled after up to 3 ms.
    let mut tasks = Vec::new();
    for t in 0..1 + r.below(6) {
        let c = c.clone();
        let mut tr = Rng::new(r.next());
        tasks.push(tokio::spawn(async move {
            let mut calls = 0u64;
            for i in 0..20 + tr.below(120) {
                let body = format!("{t}-{i}-{}", "x".repeat(10 + tr.below(1500) as usize));
                calls += 1;
                if tr.one_in(5) {
                    let cancel_after = Duration::from_micros(tr.below(3000));
                    let _ = tokio::time::timeout(cancel_after, c.export(payload(&body))).await;
                } else {
                    let _ = c.export(payload(&body)).await;
                }
                if tr.one_in(8) {
                    tokio::time::sleep(tr.millis(0, 5)).await;
                }
            }
            calls
        }));
    }

    // A shutdown at a random moment (sometimes after a flush), while exports go on.
    tokio::time::sleep(r.millis(0, 400)).await;
    if r.one_in(2) {
        let _ = c.force_flush(r.millis(0, 100)).await;
    }
    let _ = c.shutdown(r.millis(0, 300)).await;
    let mut calls = 0;
    for t in tasks {
        calls += t.await.expect("an export task");
    }
    backend.abort();

    // Once the spool is closed (a spool call may outlive the shutdown's time limit, and
    // counts what it does when it ends), every payload is counted once, and the disk holds
    // what the client says is waiting.
    common::lane_released(dir.path(), 0).await;
    let s = c.stats();
    assert_eq!(accounted(&s), calls, "seed {seed}: {s:?}");
    let on_disk = common::unacked_on_disk(dir.path());
    assert_eq!(on_disk, s.spool_records, "seed {seed}: {s:?}");
}

/// Seeds that once found a defect, run every time besides the range.
/// 277: records found expired behind a record in flight were counted at once; the shutdown
/// left them on disk, where the next run counted them again.
const FOUND_DEFECTS: &[u64] = &[277];

fn seeds() -> Range<u64> {
    std::env::var("OUTLAST_TEST_SEEDS")
        .ok()
        .and_then(|v| {
            let (a, b) = v.split_once("..")?;
            Some(a.parse().ok()?..b.parse().ok()?)
        })
        .unwrap_or(1..41)
}

#[test]
fn counts_add_up_and_match_the_disk_under_random_faults_and_shutdowns() {
    for seed in FOUND_DEFECTS.iter().copied().chain(seeds()) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(one_case(seed));
    }
}
