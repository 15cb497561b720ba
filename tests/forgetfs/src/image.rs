//! The file system's state: every inode with what it holds now and what is durable, and
//! the power cut that keeps only the durable part.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

/// Size of the pages un-synced writes are kept or lost by, when a cut tears them.
pub const PAGE: u64 = 4096;

/// Inode number of the root directory.
pub(crate) const ROOT: u64 = 1;

/// One inode: a regular file or a directory. Metadata (permissions, owner, times) is
/// durable at once: only data and directory entries wait for an fsync.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) kind: Kind,
    pub(crate) perm: u16,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mtime: SystemTime,
    pub(crate) ctime: SystemTime,
    /// Names in current directories that lead to this inode.
    pub(crate) links: u32,
}

/// What an inode holds.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// A regular file.
    File(FileData),
    /// A directory.
    Dir(DirData),
}

/// A regular file's contents, now and as last made durable.
#[derive(Debug, Clone, Default)]
pub(crate) struct FileData {
    /// What a read sees.
    pub(crate) data: Vec<u8>,
    /// What survives a power cut: the contents at the last fsync or fdatasync.
    pub(crate) durable: Vec<u8>,
    /// Pages written (or cut by a truncation) since the last sync.
    pub(crate) dirty: BTreeSet<u64>,
    /// Smallest length the file had since the last sync: everything past it in `durable`
    /// was truncated away and must not come back.
    pub(crate) low_water: u64,
}

/// A directory's entries, now and as last made durable.
#[derive(Debug, Clone, Default)]
pub(crate) struct DirData {
    /// What a lookup sees.
    pub(crate) entries: BTreeMap<OsString, u64>,
    /// What survives a power cut: the entries at the last fsync of this directory.
    pub(crate) durable: BTreeMap<OsString, u64>,
}

impl FileData {
    /// Writes `buf` at `offset`, extending the file (with zeros) as needed.
    pub(crate) fn write(&mut self, offset: u64, buf: &[u8]) {
        if buf.is_empty() {
            return;
        }
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(buf.len());
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        self.data[start..end].copy_from_slice(buf);
        let first = offset / PAGE;
        let last = (offset + buf.len() as u64 - 1) / PAGE;
        self.dirty.extend(first..=last);
    }

    /// Truncates or extends (with zeros) to `len`.
    pub(crate) fn set_len(&mut self, len: u64) {
        let old = self.data.len() as u64;
        self.data
            .resize(usize::try_from(len).unwrap_or(usize::MAX), 0);
        self.low_water = self.low_water.min(len);
        if len != old {
            // The page holding the new end: its tail bytes changed (cut or zeroed).
            self.dirty.insert(old.min(len) / PAGE);
        }
    }

    /// fsync: what the file holds now becomes durable.
    pub(crate) fn sync(&mut self) {
        self.durable
            .truncate(usize::try_from(self.low_water).unwrap_or(usize::MAX));
        self.durable.resize(self.data.len(), 0);
        for &p in &self.dirty {
            copy_page(&self.data, &mut self.durable, p);
        }
        self.dirty.clear();
        self.low_water = self.data.len() as u64;
    }

    /// What survives a power cut. `torn`: a random subset of the un-synced pages is
    /// written back too, and the length is the durable or the current one.
    fn after_cut(&self, torn: Option<&mut StdRng>) -> Vec<u8> {
        let Some(rng) = torn else {
            return self.durable.clone();
        };
        let mut out = self.durable.clone();
        if rng.random_bool(0.5) {
            out.truncate(usize::try_from(self.low_water).unwrap_or(usize::MAX));
        }
        let len = if rng.random_bool(0.5) {
            self.data.len()
        } else {
            out.len()
        };
        out.resize(len, 0);
        for &p in &self.dirty {
            if rng.random_bool(0.5) {
                copy_page(&self.data, &mut out, p);
            }
        }
        out
    }
}

/// Copies page `p` of `from` into `to`, as far as both reach.
fn copy_page(from: &[u8], to: &mut [u8], p: u64) {
    let start = usize::try_from(p * PAGE).unwrap_or(usize::MAX);
    let end = start
        .saturating_add(PAGE as usize)
        .min(from.len())
        .min(to.len());
    if start < end {
        to[start..end].copy_from_slice(&from[start..end]);
    }
}

/// Everything the file system holds. Cloned from the durable part on a power cut, and
/// served again by the next mount.
#[derive(Debug, Clone)]
pub struct Image {
    pub(crate) nodes: HashMap<u64, Node>,
    pub(crate) next_ino: u64,
}

impl Image {
    /// An empty file system: a root directory (mode 0755, owned by `uid`:`gid`).
    pub fn empty(uid: u32, gid: u32) -> Image {
        let now = SystemTime::now();
        let root = Node {
            kind: Kind::Dir(DirData::default()),
            perm: 0o755,
            uid,
            gid,
            mtime: now,
            ctime: now,
            links: 1,
        };
        Image {
            nodes: HashMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
        }
    }

    /// An empty file system owned by this process's user.
    pub fn for_this_user() -> Image {
        Image::empty(
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        )
    }

    /// What a power cut leaves: every inode reachable from the root through durable
    /// directory entries, holding its durable contents.
    ///
    /// With `torn_seed`, writeback is modelled as having been under way: each directory
    /// keeps its current entries instead of its durable ones with probability ½, each file
    /// keeps a random subset of its un-synced pages (4 KiB each) and its current or durable
    /// length, all drawn from the seed.
    pub fn after_power_cut(&self, torn_seed: Option<u64>) -> Image {
        let mut rng = torn_seed.map(StdRng::seed_from_u64);
        let mut nodes: HashMap<u64, Node> = HashMap::new();
        let mut visited = HashSet::new();
        let mut stack = vec![ROOT];
        while let Some(ino) = stack.pop() {
            if !visited.insert(ino) {
                continue;
            }
            let Some(node) = self.nodes.get(&ino) else {
                continue;
            };
            let kind = match &node.kind {
                Kind::File(f) => {
                    let data = f.after_cut(rng.as_mut());
                    Kind::File(FileData {
                        low_water: data.len() as u64,
                        durable: data.clone(),
                        data,
                        dirty: BTreeSet::new(),
                    })
                }
                Kind::Dir(d) => {
                    let current = rng.as_mut().is_some_and(|r| r.random_bool(0.5));
                    let mut entries = if current {
                        d.entries.clone()
                    } else {
                        d.durable.clone()
                    };
                    // A directory never leads back to one already placed (no cycles, one
                    // name per directory).
                    entries.retain(|_, child| {
                        !(visited.contains(child)
                            && matches!(self.nodes.get(child).map(|n| &n.kind), Some(Kind::Dir(_))))
                    });
                    stack.extend(entries.values().copied());
                    Kind::Dir(DirData {
                        durable: entries.clone(),
                        entries,
                    })
                }
            };
            nodes.insert(
                ino,
                Node {
                    kind,
                    links: 0,
                    ..node.clone()
                },
            );
        }
        // Only entries to inodes that made it; a directory reached twice keeps its first
        // name only.
        let present: HashSet<u64> = nodes.keys().copied().collect();
        let mut dir_seen = HashSet::from([ROOT]);
        let mut counts: HashMap<u64, u32> = HashMap::new();
        let mut order: Vec<u64> = nodes.keys().copied().collect();
        order.sort_unstable();
        for ino in order {
            let is_dir = |n: &u64| matches!(nodes.get(n).map(|n| &n.kind), Some(Kind::Dir(_)));
            let kept: BTreeMap<OsString, u64> = match nodes.get(&ino).map(|n| &n.kind) {
                Some(Kind::Dir(d)) => d
                    .entries
                    .iter()
                    .filter(|(_, c)| present.contains(c) && (!is_dir(c) || dir_seen.insert(**c)))
                    .map(|(k, v)| (k.clone(), *v))
                    .collect(),
                _ => continue,
            };
            for c in kept.values() {
                *counts.entry(*c).or_default() += 1;
            }
            if let Some(Node {
                kind: Kind::Dir(d), ..
            }) = nodes.get_mut(&ino)
            {
                d.durable = kept.clone();
                d.entries = kept;
            }
        }
        for (ino, n) in &mut nodes {
            n.links = if *ino == ROOT {
                1
            } else {
                counts.get(ino).copied().unwrap_or(0)
            };
        }
        // Inodes only reachable through a dropped duplicate entry are gone.
        nodes.retain(|ino, n| *ino == ROOT || n.links > 0);
        Image {
            nodes,
            next_ino: self.next_ino,
        }
    }

    /// Bytes held by regular files.
    pub fn used_bytes(&self) -> u64 {
        self.nodes
            .values()
            .map(|n| match &n.kind {
                Kind::File(f) => f.data.len() as u64,
                Kind::Dir(_) => 0,
            })
            .sum()
    }

    /// The inode at `path` (relative to the root, `/`-separated), if any.
    pub(crate) fn resolve(&self, path: &str) -> Option<u64> {
        let mut ino = ROOT;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            match &self.nodes.get(&ino)?.kind {
                Kind::Dir(d) => ino = *d.entries.get(OsStr::new(part))?,
                Kind::File(_) => return None,
            }
        }
        Some(ino)
    }

    /// The contents of the file at `path`, if it is one.
    pub fn read_file(&self, path: &str) -> Option<Vec<u8>> {
        match &self.nodes.get(&self.resolve(path)?)?.kind {
            Kind::File(f) => Some(f.data.clone()),
            Kind::Dir(_) => None,
        }
    }

    /// The names in the directory at `path`, if it is one.
    pub fn list_dir(&self, path: &str) -> Option<Vec<String>> {
        match &self.nodes.get(&self.resolve(path)?)?.kind {
            Kind::Dir(d) => Some(
                d.entries
                    .keys()
                    .map(|k| k.to_string_lossy().into_owned())
                    .collect(),
            ),
            Kind::File(_) => None,
        }
    }

    /// An image holding what the directory `dir` holds (regular files and directories,
    /// with their permissions; anything else is left out), all of it durable: to start from
    /// a state kept on disk, e.g. by [`Image::write_to`].
    ///
    /// # Errors
    ///
    /// Any I/O error.
    pub fn load(dir: &std::path::Path) -> std::io::Result<Image> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(dir)?;
        let mut img = Image::empty(meta.uid(), meta.gid());
        let mut stack = vec![(ROOT, dir.to_path_buf())];
        while let Some((parent, path)) = stack.pop() {
            for entry in std::fs::read_dir(&path)? {
                let entry = entry?;
                let m = entry.metadata()?;
                let kind = if m.is_file() {
                    let data = std::fs::read(entry.path())?;
                    Kind::File(FileData {
                        low_water: data.len() as u64,
                        durable: data.clone(),
                        data,
                        dirty: BTreeSet::new(),
                    })
                } else if m.is_dir() {
                    Kind::Dir(DirData::default())
                } else {
                    continue;
                };
                let ino = img.next_ino;
                img.next_ino += 1;
                if matches!(kind, Kind::Dir(_)) {
                    stack.push((ino, entry.path()));
                }
                let mtime = m.modified().unwrap_or_else(|_| SystemTime::now());
                img.nodes.insert(
                    ino,
                    Node {
                        kind,
                        perm: u16::try_from(m.mode() & 0o7777).unwrap_or(0o600),
                        uid: m.uid(),
                        gid: m.gid(),
                        mtime,
                        ctime: mtime,
                        links: 1,
                    },
                );
                if let Some(Node {
                    kind: Kind::Dir(d), ..
                }) = img.nodes.get_mut(&parent)
                {
                    d.entries.insert(entry.file_name(), ino);
                    d.durable.insert(entry.file_name(), ino);
                }
            }
        }
        Ok(img)
    }

    /// Writes the image's files and directories under `dir` (which must exist), e.g. to
    /// keep the state a failed check saw for inspection.
    ///
    /// # Errors
    ///
    /// Any I/O error.
    pub fn write_to(&self, dir: &std::path::Path) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let mut stack = vec![(ROOT, dir.to_path_buf())];
        while let Some((ino, path)) = stack.pop() {
            let Some(Node {
                kind: Kind::Dir(d), ..
            }) = self.nodes.get(&ino)
            else {
                continue;
            };
            for (name, child) in &d.entries {
                let Some(node) = self.nodes.get(child) else {
                    continue;
                };
                let p = path.join(name);
                match &node.kind {
                    Kind::File(f) => std::fs::write(&p, &f.data)?,
                    Kind::Dir(_) => {
                        std::fs::create_dir(&p)?;
                        stack.push((*child, p.clone()));
                    }
                }
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(node.perm.into()))?;
            }
        }
        Ok(())
    }
}
