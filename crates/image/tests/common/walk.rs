//! Walking a mounted or extracted tree into a comparable snapshot: type, mode, owner,
//! size, content hash, link target, device numbers, xattrs, mtime and hard-link groups.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snap {
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub sha256: String,
    pub link: String,
    pub rdev: (u64, u64),
    pub xattrs: BTreeMap<String, Vec<u8>>,
    pub mtime: (i64, i64),
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tree {
    pub entries: BTreeMap<String, Snap>,
    /// Paths sharing an inode, for inodes with more than one name.
    pub hardlinks: BTreeSet<Vec<String>>,
}

pub fn xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut names = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(p, &mut names).unwrap_or(0);
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = std::ffi::CString::new(name).unwrap();
        let mut v = vec![0u8; 65536];
        let len = rustix::fs::lgetxattr(p, cname.as_c_str(), &mut v).unwrap_or(0);
        out.insert(String::from_utf8_lossy(name).into_owned(), v[..len].to_vec());
    }
    out
}

fn sha(p: &Path) -> String {
    let data = std::fs::read(p).unwrap();
    Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect()
}

/// Snapshots everything below `root` (not `root` itself), skipping top-level names in
/// `skip` (e.g. `lost+found`).
pub fn snapshot(root: &Path, skip: &[&str]) -> Tree {
    let mut t = Tree::default();
    let mut by_ino: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for ent in std::fs::read_dir(&dir).unwrap() {
            let ent = ent.unwrap();
            let p = ent.path();
            let rel = String::from_utf8_lossy(p.strip_prefix(root).unwrap().as_os_str().as_bytes())
                .into_owned();
            if skip.contains(&rel.as_str()) {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                'd'
            } else if ft.is_file() {
                'f'
            } else if ft.is_symlink() {
                'l'
            } else if ft.is_fifo() {
                'p'
            } else if ft.is_char_device() {
                'c'
            } else if ft.is_block_device() {
                'b'
            } else {
                's'
            };
            if kind == 'd' {
                stack.push(p.clone());
            } else if m.nlink() > 1 {
                by_ino.entry(m.ino()).or_default().push(rel.clone());
            }
            let rdev = m.rdev();
            let snap = Snap {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                size: if kind == 'f' || kind == 'l' { m.size() } else { 0 },
                sha256: if kind == 'f' { sha(&p) } else { String::new() },
                link: if kind == 'l' {
                    String::from_utf8_lossy(std::fs::read_link(&p).unwrap().as_os_str().as_bytes())
                        .into_owned()
                } else {
                    String::new()
                },
                rdev: if kind == 'c' || kind == 'b' {
                    (
                        ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff),
                        (rdev & 0xff) | ((rdev >> 12) & !0xff),
                    )
                } else {
                    (0, 0)
                },
                xattrs: xattrs(&p),
                mtime: (m.mtime(), m.mtime_nsec()),
            };
            t.entries.insert(rel, snap);
        }
    }
    for (_, mut v) in by_ino {
        if v.len() > 1 {
            v.sort();
            t.hardlinks.insert(v);
        }
    }
    t
}

/// Every difference between two snapshots, one line each (empty when equal).
pub fn diff(want: &Tree, got: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    for (p, w) in &want.entries {
        match got.entries.get(p) {
            None => out.push(format!("missing: {p}")),
            Some(g) if g != w => out.push(format!("differs: {p}\n  want {w:?}\n  got  {g:?}")),
            _ => {}
        }
    }
    for p in got.entries.keys() {
        if !want.entries.contains_key(p) {
            out.push(format!("unexpected: {p}"));
        }
    }
    if want.hardlinks != got.hardlinks {
        out.push(format!(
            "hard links differ:\n  want {:?}\n  got  {:?}",
            want.hardlinks, got.hardlinks
        ));
    }
    out
}

/// Panics with a readable list unless the trees match.
pub fn assert_same(want: &Tree, got: &Tree) {
    let d = diff(want, got);
    assert!(d.is_empty(), "{} differences:\n{}", d.len(), d.join("\n"));
}
