//! A lane's identity file: who the lane's records are for (e.g. the exporter's destination),
//! recorded when the lane is created, so that a spool never replays another identity's
//! records. The crate documentation describes the format.

use std::io;
use std::path::Path;

use crate::config::Adoption;
use crate::fs::{SpoolFs, read_full_at, write_all_at};
use crate::types::RecordedIdentity;

/// Name of a lane's identity file.
pub(crate) const IDENTITY_FILE: &str = "identity";
/// Magic at the start of the identity file.
pub const IDENTITY_MAGIC: [u8; 4] = *b"OLID";
/// The identity file version written by this build.
pub const IDENTITY_VERSION: u16 = 1;
/// Longest identity recorded, in bytes (an endpoint URL or a name fits many times over).
pub const MAX_IDENTITY_BYTES: usize = 4096;
/// Flag bit: an identity is declared (clear: the spool was opened with no identity).
const FLAG_DECLARED: u16 = 1;
/// Bytes before the identity: magic, version, flags, length.
const PREFIX_LEN: usize = 12;

/// What a lane directory says about its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LaneIdentity {
    /// No identity file: the lane was written before identities were recorded.
    Absent,
    /// The recorded identity (or damage).
    Recorded(RecordedIdentity),
}

impl LaneIdentity {
    /// Whether a spool opened with `mine` may take the lane: lanes with no identity file are
    /// taken by anyone (they were written before identities existed; taking them keeps
    /// their data on upgrade), others only by the same identity. An unreadable identity is
    /// nobody's.
    pub(crate) fn accepts(&self, mine: Option<&str>) -> bool {
        accepts(self.recorded(), mine)
    }

    /// Whether a spool opened with `mine` and the adoption rule `rule` may take the lane
    /// (to drain it; only a lane it [`accepts`](Self::accepts) can become its own).
    pub(crate) fn adoptable(&self, mine: Option<&str>, rule: &Adoption) -> bool {
        adoptable(self.recorded(), mine, rule)
    }

    fn recorded(&self) -> Option<&RecordedIdentity> {
        match self {
            LaneIdentity::Absent => None,
            LaneIdentity::Recorded(r) => Some(r),
        }
    }
}

/// Whether a spool opened with identity `mine` and the adoption rule `rule` takes a lane
/// whose identity file says `recorded` (`None`: the lane has none), to drain it: what
/// [`accepts`] takes, and under a wider rule the identities it names (and lanes of no
/// declared identity), or every lane.
pub fn adoptable(recorded: Option<&RecordedIdentity>, mine: Option<&str>, rule: &Adoption) -> bool {
    if accepts(recorded, mine) {
        return true;
    }
    match rule {
        Adoption::Own => false,
        Adoption::Also(names) => match recorded {
            None | Some(RecordedIdentity::Anonymous) => true,
            Some(RecordedIdentity::Named(s)) => names.iter().any(|n| n == s),
            Some(RecordedIdentity::Unreadable) => false,
        },
        Adoption::Any => true,
    }
}

/// Whether a spool opened with identity `mine` may take a lane whose identity file says
/// `recorded` (`None`: the lane has none): the rule of adoption, for tools that report
/// which lanes a client would leave alone.
pub fn accepts(recorded: Option<&RecordedIdentity>, mine: Option<&str>) -> bool {
    match recorded {
        None => true,
        Some(RecordedIdentity::Named(s)) => mine == Some(s.as_str()),
        Some(RecordedIdentity::Anonymous) => mine.is_none(),
        Some(RecordedIdentity::Unreadable) => false,
    }
}

/// Encodes the identity file.
pub fn encode_identity(identity: Option<&str>) -> Vec<u8> {
    let bytes = identity.map_or(&[][..], str::as_bytes);
    let mut b = Vec::with_capacity(PREFIX_LEN + bytes.len() + 4);
    b.extend_from_slice(&IDENTITY_MAGIC);
    b.extend_from_slice(&IDENTITY_VERSION.to_le_bytes());
    let flags = if identity.is_some() { FLAG_DECLARED } else { 0 };
    b.extend_from_slice(&flags.to_le_bytes());
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(bytes);
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes the identity file's bytes.
pub fn decode_identity(b: &[u8]) -> RecordedIdentity {
    if b.len() < PREFIX_LEN + 4 || b[0..4] != IDENTITY_MAGIC {
        return RecordedIdentity::Unreadable;
    }
    let version = u16::from_le_bytes([b[4], b[5]]);
    let flags = u16::from_le_bytes([b[6], b[7]]);
    let len = u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize;
    if version != IDENTITY_VERSION || len > MAX_IDENTITY_BYTES || b.len() != PREFIX_LEN + len + 4 {
        return RecordedIdentity::Unreadable;
    }
    let end = PREFIX_LEN + len;
    let crc = u32::from_le_bytes([b[end], b[end + 1], b[end + 2], b[end + 3]]);
    if crc != crc32fast::hash(&b[..end]) {
        return RecordedIdentity::Unreadable;
    }
    match (
        flags & FLAG_DECLARED != 0,
        std::str::from_utf8(&b[PREFIX_LEN..end]),
    ) {
        (false, _) if len == 0 => RecordedIdentity::Anonymous,
        (true, Ok(s)) => RecordedIdentity::Named(s.to_owned()),
        _ => RecordedIdentity::Unreadable,
    }
}

/// Reads a lane's identity. A file that is not a regular file, or cannot be read, is
/// unreadable (the lane is left alone).
pub(crate) fn read_identity(fs: &dyn SpoolFs, dir: &Path) -> LaneIdentity {
    let path = dir.join(IDENTITY_FILE);
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return LaneIdentity::Absent,
        Ok(m) if m.file_type().is_file() => {}
        _ => return LaneIdentity::Recorded(RecordedIdentity::Unreadable),
    }
    let read = || -> io::Result<Vec<u8>> {
        let f = fs.open(&path, false)?;
        let mut buf = vec![0u8; PREFIX_LEN + MAX_IDENTITY_BYTES + 5];
        let n = read_full_at(&*f, &mut buf, 0)?;
        buf.truncate(n);
        Ok(buf)
    };
    match read() {
        Ok(b) => LaneIdentity::Recorded(decode_identity(&b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => LaneIdentity::Absent,
        Err(_) => LaneIdentity::Recorded(RecordedIdentity::Unreadable),
    }
}

/// Records `identity` in the lane directory `dir` (we hold its lock): written, fdatasynced
/// and its directory entry synced, before the lane takes its first record. On failure
/// nothing is left behind (a torn file would make the lane nobody's).
pub(crate) fn write_identity(
    fs: &dyn SpoolFs,
    dir: &Path,
    identity: Option<&str>,
) -> io::Result<()> {
    let path = dir.join(IDENTITY_FILE);
    let result = (|| {
        let f = fs.create_truncate(&path)?;
        write_all_at(&*f, &encode_identity(identity), 0)?;
        f.sync_data()?;
        fs.sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs.remove_file(&path);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_and_any_flipped_bit_is_detected() {
        for id in [Some("https://a.example/v1/logs"), Some(""), None] {
            let b = encode_identity(id);
            let want = match id {
                Some(s) => RecordedIdentity::Named(s.to_owned()),
                None => RecordedIdentity::Anonymous,
            };
            assert_eq!(decode_identity(&b), want);
            for bit in 0..b.len() * 8 {
                let mut d = b.clone();
                d[bit / 8] ^= 1 << (bit % 8);
                assert_eq!(
                    decode_identity(&d),
                    RecordedIdentity::Unreadable,
                    "flipped bit {bit} of {id:?}"
                );
            }
            assert_eq!(
                decode_identity(&b[..b.len() - 1]),
                RecordedIdentity::Unreadable
            );
        }
    }

    #[test]
    fn lanes_without_identity_are_anyones_and_others_only_their_own() {
        let named = LaneIdentity::Recorded(RecordedIdentity::Named("a".into()));
        assert!(LaneIdentity::Absent.accepts(Some("a")));
        assert!(LaneIdentity::Absent.accepts(None));
        assert!(named.accepts(Some("a")));
        assert!(!named.accepts(Some("b")));
        assert!(!named.accepts(None));
        let anon = LaneIdentity::Recorded(RecordedIdentity::Anonymous);
        assert!(anon.accepts(None));
        assert!(!anon.accepts(Some("a")));
        let bad = LaneIdentity::Recorded(RecordedIdentity::Unreadable);
        assert!(!bad.accepts(None) && !bad.accepts(Some("a")));
    }
}
