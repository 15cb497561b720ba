//! Power loss, measured through real system calls: a process runs the spool or the client on
//! a FUSE file system that forgets everything not made durable (`outlast-forgetfs`); at a
//! random moment the power is cut (every later request fails, the un-synced state is
//! dropped, or with a torn cut partly kept, page by page), the process is killed with
//! SIGKILL, the durable state is mounted again, and a new spool or client on it delivers
//! what it finds. Checked every round:
//!
//! - every record whose durability outlast confirmed is delivered: an append or export that
//!   answered in `FsyncEveryAppend` mode, or one made before a `sync` (spool) or a
//!   `force_flush` that reported `synced` (client) in the default `OsWrite` mode;
//! - nothing is delivered that was never submitted, and every delivered body is exactly the
//!   one submitted under its key (each body carries its index and a check value, so torn or
//!   stale bytes cannot pass for a record);
//! - recovery neither fails nor stalls (bounded in time), and the new client's counters
//!   match what arrived: the records it counts as replayed are those that reached the
//!   receiver after the restart, its only drops are damaged frames (`corrupt`), nothing is
//!   left;
//! - duplicates only where documented: a record the spool-alone child acknowledged before
//!   a successful sync never comes back; a record delivered twice was first delivered
//!   before the cut (its acknowledgement was not durable yet).
//!
//! Some rounds only kill the process (then everything accepted must be delivered: the
//! kernel keeps what was written), and some cut the power again, once or twice, while a new
//! process recovers and works on what the last cut left.
//!
//! Records accepted but not yet durable may be lost: that is the `OsWrite` promise (about
//! the last fsync interval), and nothing can count them after the power is gone.
//!
//! The working process is this test binary run again on the ignored child test below, with
//! its settings in the environment; it prints one line per answer on its standard output,
//! which the parent reads (a pipe: outside the mount). Rounds are seeded: a failure prints
//! the seed, and `OUTLAST_POWERLOSS_SEED=<seed> OUTLAST_POWERLOSS_ROUNDS=1` replays it
//! (`cargo xtask powerloss --rounds N --seed S` runs a longer soak).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use outlast_client::testing::{Mode, TestReceiver};
use outlast_client::{Delivery, Durability, Payload};
use outlast_forgetfs::{Image, Mount};
use outlast_spool::{Spool, SpoolConfig};
use outlast_tests::{CALM_ATTEMPT_TIMEOUT, ChildTest, TEST_BOUND, fast_builder, key, key_index};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

/// Environment variable naming the child's scenario (and switching it on).
const ENV_SCENARIO: &str = "OUTLAST_POWERLOSS_CHILD_SCENARIO";
/// Environment variable giving the child its spool directory (on the mount).
const ENV_DIR: &str = "OUTLAST_POWERLOSS_CHILD_DIR";
/// Environment variable giving the child the receiver's URL.
const ENV_URL: &str = "OUTLAST_POWERLOSS_CHILD_URL";
/// Environment variable giving the child the index of its first payload.
const ENV_FIRST: &str = "OUTLAST_POWERLOSS_CHILD_FIRST";
/// Environment variable giving the child its seed (how often it acks, syncs, flushes).
const ENV_SEED: &str = "OUTLAST_POWERLOSS_CHILD_SEED";
/// Rounds of [`power_cuts_lose_nothing_outlast_confirmed_durable`] (default [`CI_ROUNDS`]).
const ENV_ROUNDS: &str = "OUTLAST_POWERLOSS_ROUNDS";
/// First seed of the rounds (default: drawn at random, and printed).
const ENV_FIRST_SEED: &str = "OUTLAST_POWERLOSS_SEED";
/// The child test's name, for `--exact`.
const CHILD_TEST: &str = "child_works_on_the_forgetting_mount_until_the_power_is_cut";
/// Rounds per run in CI: every scenario twice (consecutive seeds take the scenarios in turn).
const CI_ROUNDS: u64 = 2 * SCENARIOS.len() as u64;
/// The child stops after this many payloads: far more than it reaches before the cut.
const CHILD_MAX: usize = 100_000;
/// Largest spool record in these tests, and the segment size: small, so that rotations
/// (new files, directory fsyncs) happen every few dozen records.
const MAX_RECORD_BYTES: u64 = 8 * 1024;
const SEGMENT_BYTES: u64 = 32 * 1024;
/// Records the `SpoolNoSync` child appends before it waits for the kill.
const NO_SYNC_RECORDS: usize = 60;
/// What starts each line the child prints for the parent.
const LINE_MARK: &str = "@ ";
/// How long recovery may take, at most.
const RECOVERY_BOUND: Duration = Duration::from_secs(40);

/// What the child does on the mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// The spool alone, `FsyncEveryAppend`; the child also reads and acknowledges.
    SpoolFsync,
    /// The spool alone, `OsWrite`, with a `sync` every few appends; reads and acknowledges.
    SpoolSync,
    /// The client, `FsyncEveryAppend`, the receiver in this state.
    ClientFsync(Backend),
    /// The client, `OsWrite` (default), a short `force_flush` every few exports.
    ClientFlush(Backend),
    /// The spool alone, `OsWrite` with an interval far longer than the test: appends only,
    /// nothing is fsynced but what rotation syncs (not in the random rounds).
    SpoolNoSync,
}

/// The receiver while the child works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Down,
    Up,
    Flapping,
}

const SCENARIOS: [Scenario; 7] = [
    Scenario::SpoolFsync,
    Scenario::SpoolSync,
    Scenario::ClientFsync(Backend::Down),
    Scenario::ClientFsync(Backend::Up),
    Scenario::ClientFsync(Backend::Flapping),
    Scenario::ClientFlush(Backend::Down),
    Scenario::ClientFlush(Backend::Flapping),
];

impl Scenario {
    fn name(self) -> String {
        format!("{self:?}")
    }

    fn from_name(name: &str) -> Option<Scenario> {
        SCENARIOS
            .into_iter()
            .chain([Scenario::SpoolNoSync])
            .find(|s| s.name() == name)
    }

    fn is_spool(self) -> bool {
        matches!(
            self,
            Scenario::SpoolFsync | Scenario::SpoolSync | Scenario::SpoolNoSync
        )
    }

    fn backend(self) -> Backend {
        match self {
            Scenario::SpoolFsync | Scenario::SpoolSync | Scenario::SpoolNoSync => Backend::Down,
            Scenario::ClientFsync(b) | Scenario::ClientFlush(b) => b,
        }
    }
}

/// A well-mixed 64-bit value of `x` (splitmix64's finaliser).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The body of the `i`-th payload: its index, a check value, and a padding of a length
/// and letter that depend on `i` (40 bytes to 3 KiB, so records straddle pages).
fn body(i: usize) -> String {
    let h = mix(i as u64);
    let pad_len = 40 + (h % 3000) as usize;
    let letter = char::from(b'a' + (h >> 32) as u8 % 26);
    format!(
        "{{\"payload\":{i},\"check\":\"{h:016x}\",\"pad\":\"{}\"}}",
        letter.to_string().repeat(pad_len)
    )
}

fn payload(i: usize) -> Payload {
    Payload::new(body(i).into_bytes()).with_key(key(i))
}

// ---------------------------------------------------------------------------------------
// The child.

#[test]
#[ignore = "the child process of the power-cut tests, which run it with its environment; \
            on its own it does nothing"]
fn child_works_on_the_forgetting_mount_until_the_power_is_cut() {
    let (Some(scenario), Some(dir), Some(seed)) = (
        std::env::var(ENV_SCENARIO)
            .ok()
            .and_then(|s| Scenario::from_name(&s)),
        std::env::var_os(ENV_DIR),
        std::env::var(ENV_SEED).ok().and_then(|s| s.parse().ok()),
    ) else {
        return;
    };
    let first: usize = std::env::var(ENV_FIRST)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let dir = Path::new(&dir);
    let mut rng = StdRng::seed_from_u64(seed);
    let out = std::io::stdout();
    let say = |line: String| {
        let mut out = out.lock();
        writeln!(out, "{LINE_MARK}{line}")
            .and_then(|()| out.flush())
            .expect("the parent reads the child's output");
    };
    if scenario.is_spool() {
        child_spool(scenario, dir, first, &mut rng, say);
    } else {
        let url = std::env::var(ENV_URL).expect("receiver URL");
        child_client(scenario, dir, &url, first, &mut rng, say);
    }
    // Wait for the kill: the test is about a power cut, not a clean exit.
    std::thread::sleep(TEST_BOUND);
}

/// The spool alone: appends, and every few appends reads and acknowledges a batch (like a
/// drain task), and in `SpoolSync` syncs. Prints `durable <key>` (an append answered in
/// `FsyncEveryAppend`), `appended <key>` (in `OsWrite`), `synced <index>` (everything
/// appended up to that index is durable), `acking <key>` and `acked <key>` around each
/// acknowledgement, `error <key> <error>`.
fn child_spool(
    scenario: Scenario,
    dir: &Path,
    first: usize,
    rng: &mut StdRng,
    say: impl Fn(String),
) {
    let durability = match scenario {
        Scenario::SpoolFsync => Durability::FsyncEveryAppend,
        Scenario::SpoolNoSync => Durability::OsWrite {
            fsync_interval: Duration::from_secs(3600),
        },
        _ => Durability::default(),
    };
    // Without rotations, nothing but the first segment's creation is fsynced.
    let segment_bytes = if scenario == Scenario::SpoolNoSync {
        1 << 20
    } else {
        SEGMENT_BYTES
    };
    let config = SpoolConfig::new(dir)
        .with_durability(durability)
        .with_segment_bytes(segment_bytes)
        .with_max_record_bytes(MAX_RECORD_BYTES);
    let (spool, _) = match Spool::open(config) {
        Ok(s) => s,
        Err(e) => {
            say(format!("error open {e}"));
            return;
        }
    };
    let ack_every = rng.random_range(3..40);
    let sync_every = rng.random_range(5..60);
    for i in first..first + CHILD_MAX {
        match spool.append(payload(i)) {
            Ok(_) if durability == Durability::FsyncEveryAppend => {
                say(format!("durable {}", key(i)));
            }
            Ok(_) => say(format!("appended {}", key(i))),
            Err(e) => {
                say(format!("error {} {e}", key(i)));
                return;
            }
        }
        if scenario == Scenario::SpoolNoSync {
            if i + 1 == first + NO_SYNC_RECORDS {
                // Then nothing more, and no close (it would sync): the kill finds every
                // write complete and nothing fsynced since the last rotation.
                std::thread::sleep(TEST_BOUND);
                return;
            }
            continue;
        }
        if i % ack_every == ack_every - 1 {
            let Ok(batch) = spool.read_batch(rng.random_range(1..20), 1 << 20) else {
                return;
            };
            for r in batch.records {
                let k = r.payload.meta().key.clone().unwrap_or_default();
                // Before the ack too: a kill right after it must not make the record look
                // lost (the acknowledgement is written to the OS at once).
                say(format!("acking {k}"));
                if spool.ack(r.id).is_err() {
                    return;
                }
                say(format!("acked {k}"));
            }
        }
        if scenario == Scenario::SpoolSync && i % sync_every == sync_every - 1 {
            if spool.sync().is_err() {
                return;
            }
            say(format!("synced {i}"));
        }
    }
}

/// The client: exports, printing `delivered <key>`, `spooled <key>` or `refused <key>
/// <reason>`; in `ClientFlush`, every few exports a short `force_flush`, printing
/// `synced <index>` when it reports `synced` (everything accepted up to that index is
/// delivered or durable).
fn child_client(
    scenario: Scenario,
    dir: &Path,
    url: &str,
    first: usize,
    rng: &mut StdRng,
    say: impl Fn(String),
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let durability = match scenario {
        Scenario::ClientFsync(_) => Durability::FsyncEveryAppend,
        _ => Durability::default(),
    };
    let flush_every = rng.random_range(5..80);
    rt.block_on(async {
        let client = match fast_builder(dir)
            .durability(durability)
            .segment_bytes(SEGMENT_BYTES)
            .max_record_bytes(MAX_RECORD_BYTES)
            .build(outlast_tests::http_exporter(url))
        {
            Ok(c) => c,
            Err(e) => {
                say(format!("error build {e}"));
                return;
            }
        };
        for i in first..first + CHILD_MAX {
            match client.export(payload(i)).await {
                Ok(Delivery::Delivered) => say(format!("delivered {}", key(i))),
                Ok(Delivery::Spooled) => say(format!("spooled {}", key(i))),
                Err(e) => say(format!("refused {} {:?}", key(i), e.reason())),
            }
            if matches!(scenario, Scenario::ClientFlush(_)) && i % flush_every == flush_every - 1 {
                let report = client.force_flush(Duration::from_millis(300)).await;
                if report.synced {
                    say(format!("synced {i}"));
                }
            }
        }
    });
}

// ---------------------------------------------------------------------------------------
// The parent.

/// What the child reported before it died.
#[derive(Debug, Default)]
struct Reported {
    /// Keys whose durability (or delivery) was confirmed: every one must be delivered.
    confirmed: BTreeSet<usize>,
    /// Keys accepted (appended, spooled or delivered), confirmed durable or not.
    accepted: BTreeSet<usize>,
    /// Keys the spool-alone child started to acknowledge (delivered, in its terms): they
    /// may be gone.
    acking: BTreeSet<usize>,
    /// Keys whose acknowledgement returned.
    acked: BTreeSet<usize>,
    /// Keys acknowledged before the last `synced`: they must not come back.
    acked_before_sync: BTreeSet<usize>,
    /// Keys the child's export refused.
    refused: BTreeSet<usize>,
    /// The index range each phase's child worked in: first index, and one past the last
    /// whose export or append it started.
    started: Vec<(usize, usize)>,
    lines: usize,
}

impl Reported {
    /// Adds what one phase's child reported.
    fn merge(&mut self, phase: Reported) {
        self.confirmed.extend(phase.confirmed);
        self.accepted.extend(phase.accepted);
        self.acking.extend(phase.acking);
        self.acked.extend(phase.acked);
        self.acked_before_sync.extend(phase.acked_before_sync);
        self.refused.extend(phase.refused);
        self.started.extend(phase.started);
        self.lines += phase.lines;
    }

    /// Whether the child of some phase started to submit record `i`.
    fn submitted(&self, i: usize) -> bool {
        self.started
            .iter()
            .any(|&(first, end)| first <= i && i <= end)
    }

    fn take(&mut self, line: &str, fsync_every_append: bool) {
        // The test harness prints too, even on the same line first: only the child's own
        // text counts.
        let Some((_, line)) = line.split_once(LINE_MARK) else {
            return;
        };
        self.lines += 1;
        let mut words = line.split_whitespace();
        let (Some(what), Some(arg)) = (words.next(), words.next()) else {
            panic!("child: {line}");
        };
        let parsed = arg.strip_prefix('k').and_then(|n| n.parse::<usize>().ok());
        let idx = || parsed.unwrap_or_else(|| panic!("child: {line}"));
        match what {
            "durable" | "delivered" => {
                self.accepted.insert(idx());
                self.confirmed.insert(idx());
            }
            "spooled" | "appended" => {
                self.accepted.insert(idx());
                if fsync_every_append {
                    self.confirmed.insert(idx());
                }
            }
            "synced" => {
                let upto: usize = arg.parse().expect("synced index");
                self.confirmed.extend(self.accepted.range(..=upto).copied());
                self.acked_before_sync.extend(self.acked.iter().copied());
            }
            "acking" => {
                self.acking.insert(idx());
            }
            "acked" => {
                self.acked.insert(idx());
            }
            "refused" => {
                self.refused.insert(idx());
            }
            "error" => {}
            _ => panic!("child: {line}"),
        }
        if let (Some(i), Some(last)) = (parsed, self.started.last_mut()) {
            last.1 = last.1.max(i + 1);
        }
    }
}

/// What a round found, for the summary.
#[derive(Debug, Default, Clone, Copy)]
struct RoundStats {
    confirmed: usize,
    accepted: usize,
    recovered: usize,
    /// Accepted, not confirmed durable, and not found after the cut: the loss `OsWrite`
    /// allows.
    lost_unconfirmed: usize,
    duplicates: u64,
    corrupt: u64,
    /// Refused by an export that failed at the cut, yet found and delivered afterwards
    /// (the data reached the disk before the error).
    refused_delivered: usize,
}

/// One round: the child works, the power is cut, the durable state is mounted again and
/// drained; the checks of the module documentation.
fn round(server: &tokio::runtime::Runtime, mnt: &Path, seed: u64) -> RoundStats {
    let mut rng = StdRng::seed_from_u64(seed);
    let scenario = SCENARIOS[(seed % SCENARIOS.len() as u64) as usize];
    let torn = rng.random_bool(0.5).then(|| rng.random::<u64>());
    let cut_after = rng.random_range(1..400usize);
    let cut_delay = Duration::from_micros(rng.random_range(0..3000));
    // Drawn from a second stream, so that the draws above stay what they were for the
    // seeds kept as regressions: one round in five only kills the process (the kernel
    // keeps what was written), one in four runs long enough for rotations, segment
    // deletions and interval fsyncs.
    let mut more = StdRng::seed_from_u64(mix(seed ^ 2));
    let power_cut = !more.random_bool(0.2);
    let cut_after = if more.random_bool(0.25) {
        cut_after * 8
    } else {
        cut_after
    };
    // One round in four has the power cut again while a new process recovers and works
    // on what the first cut left (or twice again).
    let phases = if more.random_bool(0.25) {
        more.random_range(2..=3)
    } else {
        1
    };
    eprintln!(
        "powerloss: seed {seed}: {scenario:?}, {} after {cut_after} line(s) + {cut_delay:?}{}{}",
        if power_cut {
            "power cut"
        } else {
            "kill -9 only"
        },
        if torn.is_some() && power_cut {
            ", torn"
        } else {
            ""
        },
        if phases > 1 {
            format!(", then {} more cut(s) while recovering", phases - 1)
        } else {
            String::new()
        }
    );

    let receiver = server.block_on(async {
        TestReceiver::builder()
            .mode(match scenario.backend() {
                Backend::Up => Mode::Up,
                Backend::Down | Backend::Flapping => Mode::Down,
            })
            .start()
            .await
            .expect("receiver starts")
    });
    let receiver = Arc::new(receiver);
    let flapping = Arc::new(AtomicBool::new(scenario.backend() == Backend::Flapping));
    let flapper = {
        let (r, on) = (Arc::clone(&receiver), Arc::clone(&flapping));
        let mut frng = StdRng::seed_from_u64(mix(seed));
        server.spawn(async move {
            let mut up = false;
            while on.load(Ordering::Acquire) {
                up = !up;
                let _ = r.set_mode(if up { Mode::Up } else { Mode::Down }).await;
                tokio::time::sleep(Duration::from_millis(frng.random_range(5..80))).await;
            }
        })
    };

    let mut rep = Reported::default();
    let mut image = Image::for_this_user();
    let dir = mnt.join("spool");
    for phase in 0..phases {
        let cut_after = if phase == 0 {
            cut_after
        } else {
            more.random_range(1..400usize)
        };
        let power_cut = phase > 0 || power_cut;
        let (phase_rep, survived) = run_phase(
            &Phase {
                seed,
                scenario,
                mnt,
                dir: &dir,
                url: &receiver.url(),
                first: phase * CHILD_MAX,
                cut_after,
                cut_delay,
                cut: power_cut.then_some(torn),
            },
            image,
        );
        rep.merge(phase_rep);
        image = survived;
    }
    let survived = image;
    flapping.store(false, Ordering::Release);
    server.block_on(async {
        let _ = flapper.await;
    });
    let before_cut: HashSet<String> = receiver.unique_keys().into_iter().collect();

    // The power is back: the durable state, mounted again, drained by a new spool or client.
    let mount = Mount::new(mnt, survived).expect("mount what survived");
    let started = Instant::now();
    let mut stats = RoundStats::default();
    let recovered: BTreeMap<usize, usize> = if scenario.is_spool() {
        recover_spool(&dir, seed, &mut stats)
    } else {
        recover_client(server, &receiver, &dir, seed, &before_cut, &mut stats)
    };
    let took = started.elapsed();
    assert!(took < RECOVERY_BOUND, "seed {seed}: recovery took {took:?}");
    mount.unmount();

    // Every record confirmed durable (and not acknowledged by the spool-alone child) is
    // there.
    let lost: Vec<usize> = rep
        .confirmed
        .iter()
        .filter(|i| !recovered.contains_key(i) && !rep.acking.contains(i))
        .copied()
        .collect();
    assert!(
        lost.is_empty(),
        "seed {seed} ({scenario:?}, torn: {}): {} record(s) confirmed durable were lost: \
         {lost:?}",
        torn.is_some(),
        lost.len()
    );
    // Nothing that was never submitted.
    for &i in recovered.keys() {
        assert!(
            rep.submitted(i),
            "seed {seed}: record {i} delivered, but no child submitted it: {:?}",
            rep.started
        );
    }
    // No acknowledged record comes back once a sync made the acknowledgement durable.
    let back: Vec<usize> = rep
        .acked_before_sync
        .iter()
        .filter(|i| recovered.contains_key(i))
        .copied()
        .collect();
    assert!(
        back.is_empty(),
        "seed {seed}: record(s) acknowledged before a successful sync came back: {back:?}"
    );
    stats.confirmed = rep.confirmed.len();
    stats.accepted = rep.accepted.len();
    stats.recovered = recovered.len();
    stats.lost_unconfirmed = rep
        .accepted
        .iter()
        .filter(|i| !rep.confirmed.contains(i) && !recovered.contains_key(i))
        .filter(|i| !rep.acking.contains(i))
        .count();
    stats.refused_delivered = rep
        .refused
        .iter()
        .filter(|i| recovered.contains_key(i))
        .count();
    eprintln!(
        "powerloss: seed {seed}: {} confirmed, {} accepted, {} found after the cut, {} \
         unconfirmed lost, {} duplicate(s), {} corrupt, recovery in {took:?}",
        stats.confirmed,
        stats.accepted,
        stats.recovered,
        stats.lost_unconfirmed,
        stats.duplicates,
        stats.corrupt
    );
    stats
}

/// One child's life on the mount, up to the cut.
struct Phase<'a> {
    seed: u64,
    scenario: Scenario,
    mnt: &'a Path,
    dir: &'a Path,
    url: &'a str,
    /// Index of the child's first payload.
    first: usize,
    /// The cut (or kill) comes after this many lines of the child.
    cut_after: usize,
    cut_delay: Duration,
    /// `Some(torn seed)`: a power cut; `None`: a kill only.
    cut: Option<Option<u64>>,
}

/// Mounts `image`, runs the child on it until `cut_after` lines, cuts the power (or not),
/// kills the child. Returns what it reported and what survived.
fn run_phase(p: &Phase<'_>, image: Image) -> (Reported, Image) {
    let seed = p.seed;
    let fsync_every_append = matches!(p.scenario, Scenario::SpoolFsync | Scenario::ClientFsync(_));
    let mount = Mount::new(p.mnt, image).expect("mount the forgetting fs");
    let mut child = ChildTest::spawn(
        CHILD_TEST,
        &[
            (ENV_SCENARIO, p.scenario.name().as_ref()),
            (ENV_DIR, p.dir.as_os_str()),
            (ENV_URL, p.url.as_ref()),
            (
                ENV_SEED,
                mix(seed ^ 1 ^ p.first as u64).to_string().as_ref(),
            ),
            (ENV_FIRST, p.first.to_string().as_ref()),
        ],
        true,
    );
    let lines = child.take_lines().expect("started with read_stdout");
    let mut rep = Reported {
        started: vec![(p.first, p.first)],
        ..Reported::default()
    };
    let deadline = Instant::now() + TEST_BOUND;
    while rep.lines < p.cut_after {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => rep.take(&line, fsync_every_append),
            Err(e) => {
                child.kill();
                panic!(
                    "seed {seed}: the child gave {} of {} lines ({e}); started: {:?}",
                    rep.lines, p.cut_after, rep.started
                );
            }
        }
    }
    std::thread::sleep(p.cut_delay);
    let cut = p.cut.map(|torn| mount.cut_power(torn));
    child.kill();
    // Everything it printed before dying counts: those answers came before the cut.
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = drain_deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => rep.take(&line, fsync_every_append),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("seed {seed}: the killed child's output did not end")
            }
        }
    }
    child.assert_killed();
    // Without a power cut, what the dead process wrote stays: the kernel has it.
    let survived = cut.unwrap_or_else(|| mount.snapshot());
    if p.cut.is_none() {
        rep.confirmed.extend(rep.accepted.iter().copied());
    }
    if let Some(keep) = std::env::var_os("OUTLAST_POWERLOSS_KEEP") {
        // For a round being investigated: the state before the cut and what survived, as
        // plain directories (`outlast inspect` reads them).
        let keep = Path::new(&keep).join(format!("{seed}-{}", p.first / CHILD_MAX));
        for (name, image) in [("before", mount.snapshot()), ("after", survived.clone())] {
            let d = keep.join(name);
            std::fs::create_dir_all(&d).expect("directory to keep the state in");
            image.write_to(&d).expect("keep the state");
        }
    }
    mount.unmount();
    (rep, survived)
}

/// Checks that a delivered body is exactly the one submitted under `k`; returns the index.
fn check_body(seed: u64, k: &str, bytes: &[u8]) -> usize {
    let i = key_index(k);
    assert!(
        bytes == body(i).as_bytes(),
        "seed {seed}: the body delivered under {k} is not the one submitted: {:?}",
        String::from_utf8_lossy(&bytes[..bytes.len().min(120)])
    );
    i
}

/// A new spool on the durable state: opens it (recovery), reads and acknowledges
/// everything, checking each record. Returns index → times found.
fn recover_spool(dir: &Path, seed: u64, stats: &mut RoundStats) -> BTreeMap<usize, usize> {
    let mut found = BTreeMap::new();
    if !dir.exists() {
        // The root's own entry was never durable: nothing was confirmed either (checked
        // by the caller).
        return found;
    }
    let config = SpoolConfig::new(dir)
        .with_segment_bytes(SEGMENT_BYTES)
        .with_max_record_bytes(MAX_RECORD_BYTES);
    let (spool, report) = Spool::open(config)
        .unwrap_or_else(|e| panic!("seed {seed}: the spool does not open after the cut: {e}"));
    stats.corrupt += report.corrupt_frames_skipped;
    let deadline = Instant::now() + RECOVERY_BOUND;
    let mut last = None;
    loop {
        assert!(Instant::now() < deadline, "seed {seed}: draining stalls");
        let batch = spool
            .read_batch(256, 4 << 20)
            .unwrap_or_else(|e| panic!("seed {seed}: read after the cut fails: {e}"));
        stats.corrupt += batch.corrupt_skipped;
        if batch.records.is_empty() {
            break;
        }
        for r in batch.records {
            let k = r.payload.meta().key.clone().unwrap_or_default();
            let i = check_body(seed, &k, r.payload.bytes());
            assert!(
                last < Some(i),
                "seed {seed}: record {i} read after {last:?}: out of order or twice"
            );
            last = Some(i);
            *found.entry(i).or_insert(0) += 1;
            spool
                .ack(r.id)
                .unwrap_or_else(|e| panic!("seed {seed}: ack after the cut fails: {e}"));
        }
    }
    spool
        .close()
        .unwrap_or_else(|e| panic!("seed {seed}: close after the cut fails: {e}"));
    found
}

/// A new client on the durable state with the receiver up: flushes everything, checks the
/// receiver's requests and the client's counters. Returns index → deliveries (both phases).
fn recover_client(
    server: &tokio::runtime::Runtime,
    receiver: &TestReceiver,
    dir: &Path,
    seed: u64,
    before_cut: &HashSet<String>,
    stats: &mut RoundStats,
) -> BTreeMap<usize, usize> {
    let requests_before = receiver.received().len();
    let cstats = server.block_on(async {
        receiver.set_mode(Mode::Up).await.expect("receiver up");
        let client = fast_builder(dir)
            .attempt_timeout(CALM_ATTEMPT_TIMEOUT)
            .segment_bytes(SEGMENT_BYTES)
            .max_record_bytes(MAX_RECORD_BYTES)
            .build(outlast_tests::http_exporter_with_timeout(
                &receiver.url(),
                CALM_ATTEMPT_TIMEOUT,
            ))
            .unwrap_or_else(|e| panic!("seed {seed}: the client does not start: {e}"));
        let report = client.force_flush(RECOVERY_BOUND).await;
        assert!(report.complete, "seed {seed}: {report:?}");
        assert_eq!(report.remaining_records, 0, "seed {seed}: {report:?}");
        let s = client.stats();
        let _ = client
            .shutdown(Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: shutdown: {e:?}"));
        s
    });
    // The new client found records and accounted for each: delivered or dropped (corrupt
    // frames are counted, not delivered).
    assert_eq!(
        cstats.exported, 0,
        "seed {seed}: nothing was exported: {cstats:?}"
    );
    assert_eq!(cstats.spool_records, 0, "seed {seed}: {cstats:?}");
    let d = cstats.dropped;
    assert_eq!(
        d.total(),
        d.corrupt,
        "seed {seed}: only damage may be dropped after a cut: {cstats:?}"
    );
    stats.corrupt = d.corrupt;
    let requests = receiver.received();
    let mut found: BTreeMap<usize, usize> = BTreeMap::new();
    let mut replayed = 0u64;
    for (n, r) in requests.iter().enumerate() {
        if !r.answer.is_accepted() {
            continue;
        }
        let got = r
            .decoded_body()
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("seed {seed}: request without a body"));
        if let [k] = &r.keys[..] {
            check_body(seed, k, &got);
        } else {
            for k in &r.keys {
                let b = body(key_index(k));
                assert!(
                    got.windows(b.len()).any(|w| w == b.as_bytes()),
                    "seed {seed}: merged request lacks the body of {k}"
                );
            }
        }
        for k in &r.keys {
            *found.entry(key_index(k)).or_insert(0) += 1;
            if n >= requests_before {
                replayed += 1;
            }
        }
    }
    assert_eq!(
        cstats.replayed, replayed,
        "seed {seed}: the new client's count of replayed records matches what arrived: \
         {cstats:?}"
    );
    stats.duplicates = receiver.duplicates();
    // Every duplicate was delivered before the cut, then found again in the spool (its
    // acknowledgement was not durable yet): never twice by one process.
    for (k, _) in receiver.duplicate_keys() {
        assert!(
            before_cut.contains(&k),
            "seed {seed}: {k} delivered twice after the cut"
        );
    }
    found
}

/// Runs `rounds` rounds from seed `first`, each bounded; returns the per-round stats.
fn run_rounds(first: u64, rounds: u64) -> Vec<RoundStats> {
    if let Err(reason) = outlast_forgetfs::available() {
        assert!(
            !outlast_forgetfs::required(),
            "CI must run the power-cut rounds: {reason}"
        );
        println!("SKIPPED: power-cut rounds need FUSE: {reason}");
        return Vec::new();
    }
    let server = outlast_tests::runtime();
    let mnt = outlast_forgetfs::MountPoint::new().expect("mount point");
    let started = Instant::now();
    let mut all = Vec::new();
    for seed in first..first.saturating_add(rounds) {
        all.push(round(&server, mnt.path(), seed));
    }
    let total = |f: fn(&RoundStats) -> u64| all.iter().map(f).sum::<u64>();
    println!(
        "powerloss: {rounds} round(s), seeds {first}..{}, {:.1}s, 0 failures: {} confirmed \
         durable all delivered, {} accepted, {} accepted-but-unconfirmed lost, {} duplicate(s), \
         {} corrupt frame(s) counted, {} refused-at-the-cut delivered",
        first.saturating_add(rounds),
        started.elapsed().as_secs_f64(),
        total(|s| s.confirmed as u64),
        total(|s| s.accepted as u64),
        total(|s| s.lost_unconfirmed as u64),
        total(|s| s.duplicates),
        total(|s| s.corrupt),
        total(|s| s.refused_delivered as u64),
    );
    server.shutdown_timeout(Duration::from_secs(5));
    all
}

#[test]
fn power_cuts_lose_nothing_outlast_confirmed_durable() {
    let rounds = std::env::var(ENV_ROUNDS)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CI_ROUNDS);
    let first = std::env::var(ENV_FIRST_SEED)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| outlast_tests::random_below(1 << 40));
    println!("powerloss: first seed {first} ({ENV_FIRST_SEED}={first} replays this run)");
    run_rounds(first, rounds);
}

/// Seeds that found a durability defect, replayed every run.
///
/// - 1 (`SpoolSync`, clean cut): a fresh spool's root and lane directory were created
///   without an fsync of their parent directory; the cut took the whole spool away, 187
///   records reported synced with it.
/// - 7000223 (`ClientFlush(Flapping)`, a kill, then two cuts while recovering): records the
///   killed process left unsynced were found by the next one, which reported `synced`
///   without fsyncing them; the next cut took them. The loss depends on timing as well as on
///   the seed, so the deterministic check is
///   [`records_a_killed_process_left_unsynced_survive_a_power_cut_after_the_next_sync`].
#[test]
fn power_cut_seeds_that_found_defects_stay_fixed() {
    run_rounds(1, 1);
    run_rounds(7_000_223, 1);
}

/// The defect seed 1 found, on its own: a spool created on a fresh file system with
/// `FsyncEveryAppend`; its first appended record must survive a power cut.
#[test]
fn a_fresh_spools_first_fsynced_record_survives_a_power_cut() {
    if let Err(reason) = outlast_forgetfs::available() {
        assert!(!outlast_forgetfs::required(), "CI must run this: {reason}");
        println!("SKIPPED: needs FUSE: {reason}");
        return;
    }
    let mnt = outlast_forgetfs::MountPoint::new().expect("mount point");
    let mount = Mount::new(mnt.path(), Image::for_this_user()).expect("mount");
    // Two levels the spool creates itself.
    let dir = mnt.path().join("var").join("outlast");
    let config = SpoolConfig::new(&dir)
        .with_durability(Durability::FsyncEveryAppend)
        .with_segment_bytes(SEGMENT_BYTES)
        .with_max_record_bytes(MAX_RECORD_BYTES);
    let (spool, _) = Spool::open(config.clone()).expect("open");
    spool.append(payload(0)).expect("append, fdatasynced");
    let survived = mount.cut_power(None);
    drop(spool);
    mount.unmount();
    let mount = Mount::new(mnt.path(), survived).expect("mount again");
    let (spool, _) = Spool::open(config).expect("open after the cut");
    let batch = spool.read_batch(10, 1 << 20).expect("read");
    let keys: Vec<_> = batch
        .records
        .iter()
        .map(|r| r.payload.meta().key.clone())
        .collect();
    assert_eq!(keys, [Some(key(0))], "the fsynced record is gone");
    drop(spool);
    mount.unmount();
}

/// Records a killed process left in the page cache (appended in `OsWrite` mode, never
/// fsynced) are found by the next process; once that process's `sync` succeeds they must
/// survive a power cut like its own records (a sync promises that every record waiting
/// survives a power loss).
#[test]
fn records_a_killed_process_left_unsynced_survive_a_power_cut_after_the_next_sync() {
    if let Err(reason) = outlast_forgetfs::available() {
        assert!(!outlast_forgetfs::required(), "CI must run this: {reason}");
        println!("SKIPPED: needs FUSE: {reason}");
        return;
    }
    let mnt = outlast_forgetfs::MountPoint::new().expect("mount point");
    let dir = mnt.path().join("spool");
    let (rep, left) = run_phase(
        &Phase {
            seed: 0,
            scenario: Scenario::SpoolNoSync,
            mnt: mnt.path(),
            dir: &dir,
            url: "",
            first: 0,
            cut_after: NO_SYNC_RECORDS,
            cut_delay: Duration::from_millis(50),
            cut: None,
        },
        Image::for_this_user(),
    );
    assert_eq!(rep.accepted.len(), NO_SYNC_RECORDS, "{rep:?}");
    // The next process finds them and syncs; then the power is cut.
    let mount = Mount::new(mnt.path(), left).expect("mount");
    let config = SpoolConfig::new(&dir)
        .with_segment_bytes(SEGMENT_BYTES)
        .with_max_record_bytes(MAX_RECORD_BYTES);
    let (spool, report) = Spool::open(config).expect("open what the killed process left");
    assert_eq!(report.records, rep.accepted.len() as u64, "{report:?}");
    spool.sync().expect("sync");
    let survived = mount.cut_power(None);
    drop(spool);
    mount.unmount();
    let mount = Mount::new(mnt.path(), survived).expect("mount what survived");
    let found = recover_spool(&dir, 0, &mut RoundStats::default());
    mount.unmount();
    let lost: Vec<&usize> = rep
        .accepted
        .iter()
        .filter(|i| !found.contains_key(i))
        .collect();
    assert!(
        lost.is_empty(),
        "{} record(s) found and synced by the next process were lost: {lost:?}",
        lost.len()
    );
}
