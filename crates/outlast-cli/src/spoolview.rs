//! `outlast inspect` and `outlast verify`: read-only views of a spool, built on
//! `outlast_spool::inspect::scan` (which never modifies anything).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use outlast_spool::identity;
use outlast_spool::inspect::{self, Inspection, LaneInspection, LockState};
use outlast_spool::{FORMAT_VERSION, RecordedIdentity};
use serde::Serialize;

use crate::args::{InspectArgs, VerifyArgs};
use crate::console::{age, human_bytes, print_json_pretty, rfc3339};
use crate::error::CliError;

/// Scans `dir`, refusing a missing directory and one that holds no lane (not a spool).
///
/// # Errors
///
/// [`CliError::NoSuchDirectory`], [`CliError::NotASpool`], [`CliError::Spool`].
pub(crate) fn scan_spool(dir: &Path) -> Result<Inspection, CliError> {
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CliError::NoSuchDirectory {
                path: dir.to_path_buf(),
            });
        }
        Ok(m) if !m.is_dir() => {
            return Err(CliError::NotASpool {
                path: dir.to_path_buf(),
            });
        }
        _ => {}
    }
    let inspection = inspect::scan(dir)?;
    if inspection.lanes.is_empty() {
        return Err(CliError::NotASpool {
            path: dir.to_path_buf(),
        });
    }
    Ok(inspection)
}

/// The first file of a newer format version, if any.
pub(crate) fn newer_version(inspection: &Inspection) -> Option<CliError> {
    inspection
        .lanes
        .iter()
        .flat_map(|l| &l.segments)
        .find(|s| s.newer_version)
        .map(|s| CliError::NewerVersion {
            path: s.path.clone(),
            version: s.version.unwrap_or(0),
            known: FORMAT_VERSION,
        })
}

/// The lanes held by a live process.
pub(crate) fn held_lanes(inspection: &Inspection) -> Vec<&LaneInspection> {
    inspection
        .lanes
        .iter()
        .filter(|l| l.lock == LockState::Held)
        .collect()
}

/// The error for a lane held by a live process.
pub(crate) fn locked(inspection: &Inspection, l: &LaneInspection) -> CliError {
    CliError::Locked {
        path: inspection.root.clone(),
        lane: l.lane,
        owner: lock_owner(&l.path.join("lock")),
    }
}

/// How a lane's identity is shown: `-` for none recorded (written before identities; any
/// client adopts it).
pub(crate) fn identity_text(identity: Option<&RecordedIdentity>) -> String {
    match identity {
        None => "-".to_owned(),
        Some(RecordedIdentity::Named(s)) => s.clone(),
        Some(RecordedIdentity::Anonymous) => "(none declared)".to_owned(),
        Some(RecordedIdentity::Unreadable) => "(unreadable)".to_owned(),
    }
}

/// The process holding an OS lock on `lock_file`, from `/proc/locks` (Linux). `None` if it
/// is not locked or the system does not say.
pub(crate) fn lock_owner(lock_file: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(lock_file).ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let dev = meta.dev();
    let (major, minor) = (
        ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff),
        (dev & 0xff) | ((dev >> 12) & !0xff),
    );
    locks.lines().find_map(|line| {
        // `1: FLOCK  ADVISORY  WRITE 1234 08:02:131090 0 EOF`
        let fields: Vec<&str> = line.split_whitespace().collect();
        let at = fields.iter().position(|f| f.matches(':').count() == 2)?;
        let pid: i64 = fields.get(at.checked_sub(1)?)?.parse().ok()?;
        let mut id = fields[at].split(':');
        let maj = u64::from_str_radix(id.next()?, 16).ok()?;
        let min = u64::from_str_radix(id.next()?, 16).ok()?;
        let ino: u64 = id.next()?.parse().ok()?;
        (ino == meta.ino() && maj == major && min == minor && pid > 0)
            .then(|| u32::try_from(pid).ok())
            .flatten()
    })
}

/// One lane in `inspect --json`.
#[derive(Debug, Serialize)]
struct LaneView {
    lane: u32,
    path: PathBuf,
    /// `free`, `held` (a live process has it) or `unknown`.
    lock: &'static str,
    lock_owner_pid: Option<u32>,
    acked_through: u64,
    cursor_damaged: bool,
    /// Intact records not yet acknowledged: what is waiting for delivery.
    records: u64,
    bytes: u64,
    /// Creation time of the oldest / newest intact record in the lane's files (a partly
    /// acknowledged segment still counts its acknowledged records here).
    oldest_record: Option<String>,
    newest_record: Option<String>,
    corrupt_frames: u64,
    torn_tail_bytes: u64,
    /// Who the records are for (`-`: none recorded, adopted by any client).
    identity: String,
    /// With `--identity`: the lane belongs to another identity.
    foreign: bool,
    missing_records: u64,
    misplaced_segments: Vec<PathBuf>,
    corrupt_segments: Vec<PathBuf>,
    skipped_entries: Vec<PathBuf>,
    /// No client can use the lane as it is: its records are stranded.
    unusable: bool,
    /// Records no client will deliver as things are (all of an unusable lane's).
    stranded_records: u64,
    /// Files named like segments that cannot be placed (they make the lane unusable).
    stranded_files: Vec<PathBuf>,
    segments: Vec<SegmentView>,
    unknown_files: Vec<PathBuf>,
}

/// One segment in `inspect --json`.
#[derive(Debug, Serialize)]
struct SegmentView {
    id: u64,
    path: PathBuf,
    bytes: u64,
    version: Option<u16>,
    header_ok: bool,
    newer_version: bool,
    records: u64,
    first_seq: u64,
    last_seq: u64,
    corrupt_frames: u64,
    torn_tail_bytes: u64,
    oldest_record: Option<String>,
    newest_record: Option<String>,
    /// Records stored as they are.
    identity_records: u64,
    /// Framed bytes of those on disk.
    identity_stored_bytes: u64,
    /// Records stored gzip-compressed.
    gzip_records: u64,
    /// Framed bytes of those on disk.
    gzip_stored_bytes: u64,
    /// Their payload bytes once decompressed, from each gzip trailer's ISIZE field.
    gzip_uncompressed_bytes: u64,
}

/// `inspect --json`.
#[derive(Debug, Serialize)]
struct SpoolView {
    root: PathBuf,
    healthy: bool,
    lanes: usize,
    segments: usize,
    /// Unacknowledged intact records, all lanes.
    records: u64,
    bytes: u64,
    oldest_record: Option<String>,
    newest_record: Option<String>,
    corrupt_frames: u64,
    torn_tail_bytes: u64,
    /// Records no client will deliver as things are (in lanes no client can use).
    stranded_records: u64,
    newer_version_files: Vec<PathBuf>,
    /// Entries named like lanes that are not directories.
    skipped_entries: Vec<PathBuf>,
    lane_details: Vec<LaneView>,
}

fn lock_name(l: LockState) -> &'static str {
    match l {
        LockState::Free => "free",
        LockState::Held => "held",
        LockState::Unknown => "unknown",
    }
}

fn lane_times(l: &LaneInspection) -> (Option<SystemTime>, Option<SystemTime>) {
    let oldest = l.segments.iter().filter_map(|s| s.oldest_created_at).min();
    let newest = l.segments.iter().filter_map(|s| s.newest_created_at).max();
    (oldest, newest)
}

fn view(i: &Inspection, mine: Option<&str>) -> SpoolView {
    let lanes: Vec<LaneView> = i
        .lanes
        .iter()
        .map(|l| {
            let (oldest, newest) = lane_times(l);
            LaneView {
                lane: l.lane,
                path: l.path.clone(),
                lock: lock_name(l.lock),
                lock_owner_pid: (l.lock == LockState::Held)
                    .then(|| lock_owner(&l.path.join("lock")))
                    .flatten(),
                acked_through: l.acked_through,
                cursor_damaged: l.cursor_damaged,
                records: l.unacked_records(),
                bytes: l.segments.iter().map(|s| s.bytes).sum(),
                oldest_record: oldest.map(rfc3339),
                newest_record: newest.map(rfc3339),
                corrupt_frames: l.segments.iter().map(|s| s.corrupt_frames).sum(),
                torn_tail_bytes: l.segments.iter().map(|s| s.torn_tail_bytes).sum(),
                identity: identity_text(l.identity.as_ref()),
                // Lanes a client of identity `mine` would leave alone.
                foreign: mine.is_some_and(|m| !identity::accepts(l.identity.as_ref(), Some(m))),
                missing_records: l.missing_records,
                misplaced_segments: l.misplaced_segments.clone(),
                corrupt_segments: l.corrupt_segments.clone(),
                skipped_entries: l.skipped_entries.clone(),
                segments: l
                    .segments
                    .iter()
                    .map(|s| SegmentView {
                        id: s.id,
                        path: s.path.clone(),
                        bytes: s.bytes,
                        version: s.version,
                        header_ok: s.header_ok,
                        newer_version: s.newer_version,
                        records: s.records,
                        first_seq: s.first_seq,
                        last_seq: s.last_seq,
                        corrupt_frames: s.corrupt_frames,
                        torn_tail_bytes: s.torn_tail_bytes,
                        oldest_record: s.oldest_created_at.map(rfc3339),
                        newest_record: s.newest_created_at.map(rfc3339),
                        identity_records: s.encodings.identity_records,
                        identity_stored_bytes: s.encodings.identity_stored_bytes,
                        gzip_records: s.encodings.gzip_records,
                        gzip_stored_bytes: s.encodings.gzip_stored_bytes,
                        gzip_uncompressed_bytes: s.encodings.gzip_uncompressed_bytes,
                    })
                    .collect(),
                unknown_files: l.unknown_files.clone(),
                unusable: l.is_unusable(),
                stranded_records: l.stranded_records(),
                stranded_files: l.stranded_files.clone(),
            }
        })
        .collect();
    let (oldest, newest) = i.lanes.iter().map(lane_times).fold(
        (None::<SystemTime>, None::<SystemTime>),
        |(o, n), (lo, ln)| (min_opt(o, lo), max_opt(n, ln)),
    );
    SpoolView {
        root: i.root.clone(),
        healthy: i.is_healthy(),
        lanes: i.lanes.len(),
        segments: i.lanes.iter().map(|l| l.segments.len()).sum(),
        records: i.unacked_records(),
        bytes: i.total_bytes(),
        oldest_record: oldest.map(rfc3339),
        newest_record: newest.map(rfc3339),
        corrupt_frames: lanes.iter().map(|l| l.corrupt_frames).sum(),
        torn_tail_bytes: lanes.iter().map(|l| l.torn_tail_bytes).sum(),
        stranded_records: i.stranded_records(),
        newer_version_files: i
            .lanes
            .iter()
            .flat_map(|l| l.newer_version_files().map(Path::to_path_buf))
            .collect(),
        skipped_entries: i.skipped_entries.clone(),
        lane_details: lanes,
    }
}

fn min_opt(a: Option<SystemTime>, b: Option<SystemTime>) -> Option<SystemTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn max_opt(a: Option<SystemTime>, b: Option<SystemTime>) -> Option<SystemTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// `outlast inspect DIR [--json]`.
///
/// # Errors
///
/// Those of [`scan_spool`], and [`CliError::Io`] if stdout cannot be written.
pub(crate) fn run_inspect(args: &InspectArgs) -> Result<(), CliError> {
    let inspection = scan_spool(&args.dir)?;
    let mine = args.identity.as_deref();
    if args.json {
        return print_json_pretty(&view(&inspection, mine));
    }
    let text = table(&inspection, SystemTime::now(), mine);
    let mut out = std::io::stdout().lock();
    std::io::Write::write_all(&mut out, text.as_bytes())
        .map_err(|e| CliError::io("writing to stdout", e))
}

/// Time since `t`, as a short age, or `-`.
fn ago(t: Option<SystemTime>, now: SystemTime) -> String {
    t.map_or_else(
        || "-".to_owned(),
        |t| age(now.duration_since(t).unwrap_or(Duration::ZERO)),
    )
}

/// The human table of `inspect`.
fn table(i: &Inspection, now: SystemTime, mine: Option<&str>) -> String {
    use std::fmt::Write as _;
    let v = view(i, mine);
    let mut s = String::new();
    let _ = writeln!(s, "spool {}", i.root.display());
    let _ = writeln!(
        s,
        "{:>5}  {:<16} {:>10}  {:>4}  {:>9}  {:>10}  {:>24}  {:>8}  {:>7}  {:>9}",
        "lane",
        "lock",
        "acked",
        "segs",
        "records",
        "bytes",
        "oldest record",
        "age",
        "corrupt",
        "torn tail"
    );
    for (l, lv) in i.lanes.iter().zip(&v.lane_details) {
        let (oldest, _) = lane_times(l);
        let lock = match lv.lock_owner_pid {
            Some(pid) => format!("held (pid {pid})"),
            None => lv.lock.to_owned(),
        };
        let _ = writeln!(
            s,
            "{:>5}  {:<16} {:>10}  {:>4}  {:>9}  {:>10}  {:>24}  {:>8}  {:>7}  {:>9}",
            l.lane,
            lock,
            l.acked_through,
            l.segments.len(),
            lv.records,
            human_bytes(lv.bytes),
            lv.oldest_record.as_deref().unwrap_or("-"),
            ago(oldest, now),
            lv.corrupt_frames,
            lv.torn_tail_bytes,
        );
    }
    let _ = writeln!(
        s,
        "total: {} lane(s), {} segment(s), {} record(s) waiting, {} ({} bytes)",
        v.lanes,
        v.segments,
        v.records,
        human_bytes(v.bytes),
        v.bytes
    );
    let _ = writeln!(
        s,
        "records written: oldest {}, newest {}",
        v.oldest_record.as_deref().unwrap_or("-"),
        v.newest_record.as_deref().unwrap_or("-")
    );
    if v.healthy {
        let _ = writeln!(s, "damage: none found");
    } else {
        let _ = writeln!(
            s,
            "damage: {} corrupt frame(s), {} torn tail byte(s); run `outlast verify` for details",
            v.corrupt_frames, v.torn_tail_bytes
        );
    }
    for l in &v.lane_details {
        let _ = writeln!(
            s,
            "lane {} identity: {}{}",
            l.lane,
            l.identity,
            if l.foreign {
                " (foreign: a client of the given identity leaves it alone; `outlast replay --identity` delivers it)"
            } else {
                ""
            }
        );
    }
    for line in segment_lines(i) {
        let _ = writeln!(s, "{line}");
    }
    for f in &v.newer_version_files {
        let _ = writeln!(s, "newer format version (left untouched): {}", f.display());
    }
    for f in &v.skipped_entries {
        let _ = writeln!(s, "not a lane directory (skipped): {}", f.display());
    }
    for l in &v.lane_details {
        for f in &l.unknown_files {
            let _ = writeln!(s, "not a spool file (left untouched): {}", f.display());
        }
        for f in &l.skipped_entries {
            let _ = writeln!(
                s,
                "not a regular file (skipped, never opened): {}",
                f.display()
            );
        }
    }
    s
}

/// The problems `verify` reports, one line each: what and where.
fn problems(i: &Inspection) -> Vec<String> {
    let mut out = Vec::new();
    for p in &i.skipped_entries {
        out.push(format!("{}: not a lane directory (skipped)", p.display()));
    }
    for l in &i.lanes {
        if let Some(e) = &l.cursor_error {
            out.push(format!(
                "{}: cursor unreadable ({e}): the lane cannot be used as it is",
                l.path.join("cursor").display()
            ));
        }
        for p in &l.skipped_entries {
            out.push(format!(
                "{}: not a regular file (a FIFO, directory, link or device): skipped, never opened",
                p.display()
            ));
        }
        for p in &l.corrupt_segments {
            out.push(format!(
                "{}: named like a segment, but its magic is damaged and it holds no readable record",
                p.display()
            ));
        }
        for p in &l.stranded_files {
            out.push(format!(
                "{}: named like a segment, but not as the spool names them, and its header does not say which segment it is: rename it to its segment id (20 digits)",
                p.display()
            ));
        }
        if l.is_unusable() {
            out.push(format!(
                "{}: no client can use this lane as it is: {} record(s) stranded (neither delivered nor dropped) until it is repaired",
                l.path.display(),
                l.stranded_records()
            ));
        }
        for p in &l.misplaced_segments {
            out.push(format!(
                "{}: segment out of place (its header names another id, or its records are out of sequence order by name): delivered in sequence order",
                p.display()
            ));
        }
        if l.missing_records > 0 {
            out.push(format!(
                "{}: {} record(s) missing between segments or at the end of the lane (a segment deleted, emptied or damaged, a tail cut off): counted as lost",
                l.path.display(),
                l.missing_records
            ));
        }
        if l.cursor_damaged {
            out.push(format!(
                "{}: damaged cursor (progress unknown: the lane would be delivered again from the start)",
                l.path.join("cursor").display()
            ));
        }
        for s in &l.segments {
            let p = s.path.display();
            if s.newer_version {
                out.push(format!(
                    "{p}: format version {} is newer than this build reads ({FORMAT_VERSION}); not verified",
                    s.version.unwrap_or(0)
                ));
                continue;
            }
            if !s.header_ok && s.torn_tail_bytes < s.bytes {
                out.push(format!("{p}: damaged segment header"));
            }
            let body_corrupt = s.corrupt_frames;
            if body_corrupt > 0 {
                out.push(format!(
                    "{p}: {body_corrupt} damaged record region(s) (bad CRC or framing) between records {} and {}",
                    s.first_seq, s.last_seq
                ));
            }
            if s.torn_tail_bytes > 0 {
                out.push(format!(
                    "{p}: torn tail: last {} byte(s) (from offset {}) are not a complete valid record",
                    s.torn_tail_bytes,
                    s.bytes - s.torn_tail_bytes
                ));
            }
        }
    }
    out
}

/// One line per segment: its format version as its header says, and its records by
/// encoding with their stored sizes (framed, on disk) and, for gzip records, the payload
/// size once decompressed as each gzip trailer's ISIZE field states it (nothing is
/// decompressed).
fn segment_lines(i: &Inspection) -> Vec<String> {
    let mut out = Vec::new();
    for l in &i.lanes {
        for seg in &l.segments {
            let version = seg
                .version
                .map_or_else(|| "?".to_owned(), |v| v.to_string());
            let e = &seg.encodings;
            out.push(format!(
                "lane {} segment {}: format v{version}, {} record(s): {} identity ({} bytes stored), {} gzip ({} bytes stored, {} bytes uncompressed per gzip ISIZE)",
                l.lane,
                seg.id,
                seg.records,
                e.identity_records,
                e.identity_stored_bytes,
                e.gzip_records,
                e.gzip_stored_bytes,
                e.gzip_uncompressed_bytes,
            ));
        }
    }
    out
}

/// `outlast verify DIR`: exit 0 if clean, 1 with one line per problem otherwise.
///
/// # Errors
///
/// Those of [`scan_spool`]; [`CliError::Corrupt`] when damage was found.
pub(crate) fn run_verify(args: &VerifyArgs) -> Result<(), CliError> {
    let inspection = scan_spool(&args.dir)?;
    let found = problems(&inspection);
    let records: u64 = inspection
        .lanes
        .iter()
        .flat_map(|l| &l.segments)
        .map(|s| s.records)
        .sum();
    let segments: usize = inspection.lanes.iter().map(|l| l.segments.len()).sum();
    if found.is_empty() {
        println!(
            "ok: {} lane(s), {segments} segment(s), {records} intact record(s), {} bytes checked; no damage",
            inspection.lanes.len(),
            inspection.total_bytes()
        );
        for line in segment_lines(&inspection) {
            println!("{line}");
        }
        return Ok(());
    }
    for p in &found {
        println!("{p}");
    }
    for line in segment_lines(&inspection) {
        println!("{line}");
    }
    Err(CliError::Corrupt {
        path: inspection.root.clone(),
        problems: found.len(),
    })
}
