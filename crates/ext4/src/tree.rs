//! The in-memory model of the filesystem being built: metadata only. File contents are
//! already on disk; a file node holds its extents.

use std::collections::BTreeMap;

use crate::extent::Extent;
use crate::{Ext4Error, Result, MAX_NAME_LEN};

pub type NodeId = u32;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    pub secs: i64,
    pub nsec: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Xattr {
    /// Full name, e.g. `user.foo` or `security.capability`.
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// Permission bits including setuid, setgid and sticky (`0o7777`); the type comes
    /// from the node kind.
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timestamp,
    pub atime: Timestamp,
    pub xattrs: Vec<Xattr>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DevNumbers {
    pub major: u32,
    pub minor: u32,
}

/// A regular file's size and where its non-zero blocks live.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileData {
    pub size: u64,
    pub(crate) extents: Vec<Extent>,
}

impl FileData {
    /// Data blocks actually allocated (zero blocks are holes).
    pub fn allocated_blocks(&self) -> u64 {
        crate::extent::mapped_blocks(&self.extents)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    File(FileData),
    Dir(BTreeMap<Box<[u8]>, NodeId>),
    Symlink(Vec<u8>),
    CharDev(DevNumbers),
    BlockDev(DevNumbers),
    Fifo,
    Socket,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub meta: Metadata,
    pub kind: NodeKind,
    /// Free for the caller: vessel-image records which layer last wrote the node.
    pub tag: u32,
}

impl Node {
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, NodeKind::Dir(_))
    }
}

/// An arena of nodes; directories map names to node ids. Hard links are several
/// entries naming the same node. Unreachable nodes are simply not written.
#[derive(Debug, Clone)]
pub struct Tree {
    nodes: Vec<Node>,
}

impl Tree {
    pub const ROOT: NodeId = 0;

    pub fn new(root_meta: Metadata) -> Self {
        Tree { nodes: vec![Node { meta: root_meta, kind: NodeKind::Dir(BTreeMap::new()), tag: 0 }] }
    }

    pub fn add(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        (self.nodes.len() - 1) as NodeId
    }

    pub fn get(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }

    pub fn get_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id as usize]
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn lookup(&self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        match &self.get(dir).kind {
            NodeKind::Dir(m) => m.get(name).copied(),
            _ => None,
        }
    }

    pub fn children(&self, dir: NodeId) -> impl Iterator<Item = (&[u8], NodeId)> {
        let m = match &self.get(dir).kind {
            NodeKind::Dir(m) => Some(m),
            _ => None,
        };
        m.into_iter().flat_map(|m| m.iter().map(|(k, v)| (&k[..], *v)))
    }

    /// Links `child` as `name` in `dir`, replacing (and returning) any previous entry.
    pub fn insert(&mut self, dir: NodeId, name: &[u8], child: NodeId) -> Result<Option<NodeId>> {
        check_name(name)?;
        match &mut self.nodes[dir as usize].kind {
            NodeKind::Dir(m) => Ok(m.insert(name.into(), child)),
            _ => Err(Ext4Error::InvalidName {
                name: String::from_utf8_lossy(name).into_owned(),
                reason: "parent is not a directory",
            }),
        }
    }

    pub fn remove(&mut self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        match &mut self.nodes[dir as usize].kind {
            NodeKind::Dir(m) => m.remove(name),
            _ => None,
        }
    }

    /// A valid ext4 file name: 1..=255 bytes, no `/` or NUL, not `.` or `..`.
    pub fn check_name(name: &[u8]) -> Result<()> {
        check_name(name)
    }

    /// Moves the whole tree one level down: the root's entries and metadata (and tag) go
    /// to a new directory `name`, which becomes the only entry of a root with `root_meta`.
    /// Returns the new directory's id.
    pub fn nest_root(&mut self, name: &[u8], root_meta: Metadata) -> Result<NodeId> {
        check_name(name)?;
        let root = Node { meta: root_meta, kind: NodeKind::Dir(BTreeMap::new()), tag: 0 };
        let old = std::mem::replace(&mut self.nodes[Tree::ROOT as usize], root);
        let dir = self.add(old);
        self.insert(Tree::ROOT, name, dir)?;
        Ok(dir)
    }

    /// Removes the entries of `dir` for which `keep` returns false.
    pub fn retain(&mut self, dir: NodeId, mut keep: impl FnMut(&[u8], NodeId) -> bool) {
        if let NodeKind::Dir(m) = &mut self.nodes[dir as usize].kind {
            m.retain(|k, v| keep(k, *v));
        }
    }
}

/// A valid ext4 file name: 1..=255 bytes, no `/` or NUL, not `.` or `..`.
pub fn check_name(name: &[u8]) -> Result<()> {
    let reason = if name.is_empty() {
        "empty name"
    } else if name.len() > MAX_NAME_LEN {
        "longer than 255 bytes"
    } else if name.contains(&b'/') || name.contains(&0) {
        "contains '/' or NUL"
    } else if name == b"." || name == b".." {
        "reserved name"
    } else {
        return Ok(());
    };
    Err(Ext4Error::InvalidName { name: String::from_utf8_lossy(name).into_owned(), reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> NodeKind {
        NodeKind::Dir(BTreeMap::new())
    }

    #[test]
    fn nesting_moves_entries_and_metadata_under_one_directory() {
        let image_root = Metadata { mode: 0o555, uid: 7, gid: 8, ..Default::default() };
        let mut tree = Tree::new(image_root.clone());
        tree.get_mut(Tree::ROOT).tag = 3;
        let etc = tree.add(Node { meta: Metadata::default(), kind: dir(), tag: 1 });
        tree.insert(Tree::ROOT, b"etc", etc).unwrap();
        let file = tree.add(Node { meta: Metadata::default(), kind: NodeKind::Fifo, tag: 1 });
        tree.insert(etc, b"pipe", file).unwrap();

        let fresh = Metadata { mode: 0o755, ..Default::default() };
        let nested = tree.nest_root(b"rootfs", fresh.clone()).unwrap();
        let root: Vec<_> = tree.children(Tree::ROOT).collect();
        assert_eq!(root, [(&b"rootfs"[..], nested)]);
        assert_eq!((&tree.get(Tree::ROOT).meta, tree.get(Tree::ROOT).tag), (&fresh, 0));
        assert_eq!((&tree.get(nested).meta, tree.get(nested).tag), (&image_root, 3));
        assert_eq!(tree.lookup(nested, b"etc"), Some(etc));
        assert_eq!(tree.lookup(etc, b"pipe"), Some(file));
        assert!(tree.nest_root(b"a/b", fresh).is_err());
    }
}
