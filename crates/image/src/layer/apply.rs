//! Applying the entries of one layer tarball, in order.

use std::io::{self, Read};

use tar::EntryType;
use vessel_ext4::{
    validate_xattrs, Builder, DevNumbers, Ext4Error, Metadata, Node, NodeId, NodeKind, Timestamp,
    Tree,
};

use super::path::{clean, resolve_dir};
use super::{pax, LayerError};

const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
/// Longest symlink target Linux accepts (PATH_MAX without the NUL).
const MAX_SYMLINK: usize = 4095;

/// Counts of what one layer held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerStats {
    pub entries: u64,
    pub bytes: u64,
}

/// Why an entry failed; turned into a [`LayerError`] with the layer and entry names.
enum Fail {
    Invalid(String),
    Ext4(Ext4Error),
    Io(io::Error),
}

impl From<Ext4Error> for Fail {
    fn from(e: Ext4Error) -> Self {
        match e {
            Ext4Error::ReadData { source } => Fail::Io(source),
            Ext4Error::ShortData { expected, got } => Fail::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("file data ended after {got} of {expected} bytes"),
            )),
            e => Fail::Ext4(e),
        }
    }
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Self {
        Fail::Io(e)
    }
}

fn invalid(s: impl Into<String>) -> Fail {
    Fail::Invalid(s.into())
}

/// Applies the (uncompressed) tar stream `r` as layer number `tag` (1-based, increasing)
/// on top of what `builder` already holds. `layer` names the layer in errors;
/// `on_entry` is called after every entry (for progress).
pub fn apply_layer(
    builder: &mut Builder,
    r: &mut dyn Read,
    layer: &str,
    tag: u32,
    on_entry: &mut dyn FnMut(&LayerStats),
) -> Result<LayerStats, LayerError> {
    let mut archive = tar::Archive::new(r);
    let corrupt = |entry: Option<String>, source: io::Error| LayerError::Corrupt {
        layer: layer.to_string(),
        entry,
        source: tidy(source),
    };
    let mut stats = LayerStats::default();
    let entries = archive.entries().map_err(|e| corrupt(None, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| {
            if stats.entries == 0 && e.kind() == io::ErrorKind::Other {
                corrupt(None, io::Error::new(e.kind(), "not a tar archive (nor gzip or zstd)"))
            } else {
                corrupt(None, e)
            }
        })?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        match apply_entry(builder, &mut entry, tag) {
            Ok(bytes) => {
                stats.entries += 1;
                stats.bytes += bytes;
                on_entry(&stats);
            }
            Err(Fail::Io(e)) => return Err(corrupt(Some(name), e)),
            Err(Fail::Invalid(reason)) => {
                return Err(LayerError::Invalid { layer: layer.to_string(), entry: name, reason })
            }
            Err(Fail::Ext4(source)) => {
                return Err(LayerError::Ext4 { layer: layer.to_string(), entry: name, source })
            }
        }
    }
    Ok(stats)
}

/// Error texts from the tar parser can quote raw header bytes: keep them printable and
/// short.
fn tidy(e: io::Error) -> io::Error {
    let text = e.to_string();
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() || c == char::REPLACEMENT_CHARACTER { '?' } else { c })
        .take(160)
        .collect();
    if clean == text {
        e
    } else {
        io::Error::new(e.kind(), clean)
    }
}

fn timestamp(secs: u64) -> Timestamp {
    Timestamp { secs: i64::try_from(secs).unwrap_or(i64::MAX), nsec: 0 }
}

fn id(v: u64, what: &str) -> Result<u32, Fail> {
    u32::try_from(v)
        .map_err(|_| invalid(format!("{what} {v} is too large (the maximum is 4294967295)")))
}

/// Applies one entry; returns the file bytes it stored.
fn apply_entry<R: Read>(
    b: &mut Builder,
    entry: &mut tar::Entry<'_, R>,
    tag: u32,
) -> Result<u64, Fail> {
    let etype = entry.header().entry_type();
    if matches!(etype, EntryType::XGlobalHeader) {
        return Ok(0);
    }
    let path = entry.path_bytes().into_owned();
    let link = entry.link_name_bytes().map(|l| l.into_owned());
    let p = match entry.pax_extensions()? {
        Some(exts) => {
            let recs: Vec<(Vec<u8>, Vec<u8>)> = exts
                .filter_map(|e| e.ok())
                .map(|e| (e.key_bytes().to_vec(), e.value_bytes().to_vec()))
                .collect();
            pax::parse(recs.iter().map(|(k, v)| (&k[..], &v[..])))
        }
        None => pax::Pax::default(),
    };
    let h = entry.header();
    let mtime = match p.mtime {
        Some(t) => t,
        None => timestamp(h.mtime()?),
    };
    let meta = Metadata {
        mode: (h.mode()? & 0o7777) as u16,
        uid: id(p.uid.map_or_else(|| h.uid(), Ok)?, "uid")?,
        gid: id(p.gid.map_or_else(|| h.gid(), Ok)?, "gid")?,
        mtime,
        atime: p.atime.unwrap_or(mtime),
        xattrs: p.xattrs,
    };
    let dev = DevNumbers {
        major: h.device_major().ok().flatten().unwrap_or(0),
        minor: h.device_minor().ok().flatten().unwrap_or(0),
    };
    validate_xattrs(&meta.xattrs)?;

    let comps = clean(&path);
    let Some((&name, parent_comps)) = comps.split_last() else {
        // The entry names the root itself ("./"): only its metadata can change.
        if etype.is_dir() {
            let root = b.tree_mut().get_mut(Tree::ROOT);
            root.meta = meta;
            return Ok(0);
        }
        return Err(invalid("only a directory can stand for the image root"));
    };

    if let Some(target) = name.strip_prefix(WHITEOUT) {
        let tree = b.tree_mut();
        // A parent that does not resolve to a directory has nothing below it to hide.
        let Ok(Some(parent)) = resolve_dir(tree, parent_comps, None) else {
            return Ok(0);
        };
        if name == OPAQUE {
            make_opaque(tree, parent, tag);
        } else if !target.starts_with(WHITEOUT) {
            tree.remove(parent, target);
        }
        return Ok(0);
    }

    let mut mkdir = |t: &mut Tree| {
        // Parents missing from the layer are created like `mkdir -p` would.
        t.add(Node {
            meta: Metadata { mode: 0o755, ..Default::default() },
            kind: NodeKind::Dir(Default::default()),
            tag,
        })
    };
    let parent = resolve_dir(b.tree_mut(), parent_comps, Some(&mut mkdir))
        .map_err(|e| invalid(e.to_string()))?
        .unwrap_or(Tree::ROOT);
    vessel_ext4::Tree::check_name(name)?;

    let kind = match etype {
        EntryType::Directory => {
            let tree = b.tree_mut();
            if let Some(existing) = tree.lookup(parent, name) {
                let node = tree.get_mut(existing);
                if node.is_dir() {
                    node.meta = meta;
                    node.tag = tag;
                    return Ok(0);
                }
            }
            NodeKind::Dir(Default::default())
        }
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
            let size = entry.size();
            let data = b.write_file(entry, size)?;
            NodeKind::File(data)
        }
        EntryType::Symlink => {
            let target = link.ok_or_else(|| invalid("symlink without a target"))?;
            if target.is_empty() || target.len() > MAX_SYMLINK || target.contains(&0) {
                return Err(invalid(
                    "symlink target is empty, longer than 4095 bytes or contains NUL",
                ));
            }
            NodeKind::Symlink(target)
        }
        EntryType::Link => {
            let target = link.ok_or_else(|| invalid("hard link without a target"))?;
            let tree = b.tree_mut();
            let tcomps = clean(&target);
            let found = match tcomps.split_last() {
                Some((&tname, tparent)) => resolve_dir(tree, tparent, None)
                    .ok()
                    .flatten()
                    .and_then(|d| tree.lookup(d, tname)),
                None => None,
            };
            let show = String::from_utf8_lossy(&target).into_owned();
            let Some(node) = found else {
                return Err(invalid(format!("hard link target {show:?} does not exist")));
            };
            if tree.get(node).is_dir() {
                return Err(invalid(format!("hard link target {show:?} is a directory")));
            }
            if tree.lookup(parent, name) != Some(node) {
                tree.insert(parent, name, node)?;
            }
            tree.get_mut(node).tag = tag;
            return Ok(0);
        }
        EntryType::Char => NodeKind::CharDev(dev),
        EntryType::Block => NodeKind::BlockDev(dev),
        EntryType::Fifo => NodeKind::Fifo,
        other => {
            return Err(invalid(format!(
                "unsupported tar entry type {:?}",
                other.as_byte() as char
            )))
        }
    };
    let bytes = match &kind {
        NodeKind::File(f) => f.size,
        _ => 0,
    };
    let tree = b.tree_mut();
    let id: NodeId = tree.add(Node { meta, kind, tag });
    tree.insert(parent, name, id)?;
    Ok(bytes)
}

/// Removes everything below `dir` that the current layer did not write.
fn make_opaque(tree: &mut Tree, dir: NodeId, tag: u32) {
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        let kids: Vec<(Vec<u8>, NodeId)> = tree.children(d).map(|(n, c)| (n.to_vec(), c)).collect();
        for (name, c) in kids {
            let node = tree.get(c);
            if node.tag != tag {
                tree.remove(d, &name);
            } else if node.is_dir() {
                stack.push(c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree_with(names: &[(&str, u32, bool)]) -> (Tree, NodeId) {
        let mut t = Tree::new(Metadata::default());
        let d = t.add(Node {
            meta: Metadata::default(),
            kind: NodeKind::Dir(Default::default()),
            tag: 1,
        });
        t.insert(Tree::ROOT, b"d", d).unwrap();
        for &(n, tag, dir) in names {
            let kind = if dir { NodeKind::Dir(Default::default()) } else { NodeKind::Fifo };
            let id = t.add(Node { meta: Metadata::default(), kind, tag });
            t.insert(d, n.as_bytes(), id).unwrap();
        }
        (t, d)
    }

    #[test]
    fn opaque_keeps_only_this_layer() {
        let (mut t, d) = tree_with(&[
            ("old", 1, false),
            ("new", 2, false),
            ("olddir", 1, true),
            ("newdir", 2, true),
        ]);
        let newdir = t.lookup(d, b"newdir").unwrap();
        let stale = t.add(Node { meta: Metadata::default(), kind: NodeKind::Fifo, tag: 1 });
        t.insert(newdir, b"stale", stale).unwrap();
        make_opaque(&mut t, d, 2);
        let names: Vec<&[u8]> = t.children(d).map(|(n, _)| n).collect();
        assert_eq!(names, vec![&b"new"[..], b"newdir"]);
        assert_eq!(t.children(newdir).count(), 0);
    }

    #[test]
    fn ids_must_fit() {
        assert!(id(u32::MAX as u64, "uid").is_ok());
        assert!(id(u32::MAX as u64 + 1, "uid").is_err());
    }
}
