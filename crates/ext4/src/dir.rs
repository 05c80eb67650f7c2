//! Directory blocks: linear blocks for small directories, an htree index for
//! directories spanning more than one block. Every leaf block ends in a checksum tail.

use crate::checksum::crc32c;
use crate::htree::{self, NODE_LIMIT, ROOT_LIMIT};
use crate::le::*;
use crate::{Ext4Error, Result};

const BS: usize = 4096;
/// Usable bytes of a leaf block: the last 12 hold the checksum tail.
const LEAF_SPACE: usize = BS - 12;

pub const FT_REG: u8 = 1;
pub const FT_DIR: u8 = 2;
pub const FT_CHR: u8 = 3;
pub const FT_BLK: u8 = 4;
pub const FT_FIFO: u8 = 5;
pub const FT_SOCK: u8 = 6;
pub const FT_SYMLINK: u8 = 7;

#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub name: &'a [u8],
    pub ino: u32,
    pub ftype: u8,
}

fn rec_len(name_len: usize) -> usize {
    (8 + name_len + 3) & !3
}

/// A directory laid out as blocks in logical order, and whether it is indexed.
#[derive(Debug)]
pub struct DirBlocks {
    pub blocks: Vec<Vec<u8>>,
    pub indexed: bool,
}

/// Lays out directory `ino` (whose parent is `parent`) holding `entries`.
/// `seed` is the directory inode's checksum seed.
pub fn build(
    ino: u32,
    parent: u32,
    entries: &[Entry<'_>],
    hash_seed: &[u32; 4],
    seed: u32,
) -> Result<DirBlocks> {
    let mut linear = Packer::new(seed);
    linear.push(&Entry { name: b".", ino, ftype: FT_DIR });
    linear.push(&Entry { name: b"..", ino: parent, ftype: FT_DIR });
    for e in entries {
        linear.push(e);
    }
    let blocks = linear.finish();
    if blocks.len() == 1 {
        return Ok(DirBlocks { blocks, indexed: false });
    }

    let mut hashed: Vec<(u32, u32, &Entry<'_>)> = entries
        .iter()
        .map(|e| {
            let (h, minor) = htree::name_hash(e.name, hash_seed);
            (h, minor, e)
        })
        .collect();
    hashed.sort_by(|a, b| (a.0, a.1, a.2.name).cmp(&(b.0, b.1, b.2.name)));

    // Leaves, and the index hash of each: its first entry's hash, with the low bit set
    // when a run of equal hashes continues from the previous leaf.
    let mut leaves = Packer::new(seed);
    let mut leaf_hashes: Vec<u32> = Vec::new();
    let mut last_hash: Option<u32> = None;
    for &(h, _, e) in &hashed {
        if leaves.push(e) {
            leaf_hashes.push(if last_hash == Some(h) { h | 1 } else { h });
        }
        last_hash = Some(h);
    }
    let leaf_blocks = leaves.finish();
    let n = leaf_blocks.len();

    let mut out = Vec::with_capacity(n + 2);
    if n <= ROOT_LIMIT {
        let ents: Vec<(u32, u32)> =
            leaf_hashes.iter().enumerate().map(|(i, &h)| (h, 1 + i as u32)).collect();
        let mut root = htree::root_block(ino, parent, 0, &ents);
        htree::set_index_csum(&mut root, 32, seed);
        out.push(root);
    } else {
        let nodes = n.div_ceil(NODE_LIMIT);
        if nodes > ROOT_LIMIT {
            return Err(Ext4Error::DirTooLarge { path: String::new(), entries: entries.len() });
        }
        let first_leaf = 1 + nodes as u32;
        let root_ents: Vec<(u32, u32)> =
            (0..nodes).map(|j| (leaf_hashes[j * NODE_LIMIT], 1 + j as u32)).collect();
        let mut root = htree::root_block(ino, parent, 1, &root_ents);
        htree::set_index_csum(&mut root, 32, seed);
        out.push(root);
        for j in 0..nodes {
            let lo = j * NODE_LIMIT;
            let hi = (lo + NODE_LIMIT).min(n);
            let ents: Vec<(u32, u32)> =
                (lo..hi).map(|i| (leaf_hashes[i], first_leaf + i as u32)).collect();
            let mut node = htree::node_block(&ents);
            htree::set_index_csum(&mut node, 8, seed);
            out.push(node);
        }
    }
    out.extend(leaf_blocks);
    Ok(DirBlocks { blocks: out, indexed: true })
}

/// An empty directory block (one unused entry spanning it), as lost+found keeps spare.
pub fn empty_block(seed: u32) -> Vec<u8> {
    let mut b = vec![0u8; BS];
    put16(&mut b, 4, LEAF_SPACE as u16);
    set_leaf_tail(&mut b, seed);
    b
}

fn set_leaf_tail(b: &mut [u8], seed: u32) {
    put32(b, LEAF_SPACE, 0);
    put16(b, LEAF_SPACE + 4, 12);
    b[LEAF_SPACE + 6] = 0;
    b[LEAF_SPACE + 7] = 0xDE;
    let c = crc32c(seed, &b[..LEAF_SPACE]);
    put32(b, LEAF_SPACE + 8, c);
}

/// Packs entries greedily into leaf blocks.
struct Packer {
    seed: u32,
    blocks: Vec<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    last: Option<usize>,
}

impl Packer {
    fn new(seed: u32) -> Self {
        Packer { seed, blocks: Vec::new(), cur: vec![0u8; BS], pos: 0, last: None }
    }

    /// Adds an entry; returns true when it starts a new block.
    fn push(&mut self, e: &Entry<'_>) -> bool {
        let len = rec_len(e.name.len());
        let mut new_block = self.last.is_none() && self.blocks.is_empty();
        if self.pos + len > LEAF_SPACE {
            self.close();
            new_block = true;
        }
        let b = &mut self.cur[self.pos..];
        put32(b, 0, e.ino);
        put16(b, 4, len as u16);
        b[6] = e.name.len() as u8;
        b[7] = e.ftype;
        b[8..8 + e.name.len()].copy_from_slice(e.name);
        self.last = Some(self.pos);
        self.pos += len;
        new_block
    }

    fn close(&mut self) {
        if let Some(last) = self.last {
            put16(&mut self.cur, last + 4, (LEAF_SPACE - last) as u16);
        } else {
            put16(&mut self.cur, 4, LEAF_SPACE as u16);
        }
        set_leaf_tail(&mut self.cur, self.seed);
        self.blocks.push(std::mem::replace(&mut self.cur, vec![0u8; BS]));
        self.pos = 0;
        self.last = None;
    }

    fn finish(mut self) -> Vec<Vec<u8>> {
        if self.last.is_some() || self.blocks.is_empty() {
            self.close();
        }
        self.blocks
    }
}

/// Parses the live entries of one directory block (skipping unused and htree entries):
/// (inode, file type, name). `None` if the block is malformed.
pub fn parse_block(b: &[u8]) -> Option<Vec<(u32, u8, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos + 8 <= b.len() {
        let ino = get32(b, pos);
        let rl = get16(b, pos + 4) as usize;
        let nl = b[pos + 6] as usize;
        if rl < 8 || pos + rl > b.len() || 8 + nl > rl {
            return None;
        }
        if ino != 0 {
            out.push((ino, b[pos + 7], b[pos + 8..pos + 8 + nl].to_vec()));
        }
        pos += rl;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("file-with-a-longish-name-{i}").into_bytes()).collect()
    }

    #[test]
    fn small_dir_is_linear() {
        let ns = names(10);
        let es: Vec<Entry<'_>> = ns
            .iter()
            .enumerate()
            .map(|(i, n)| Entry { name: n, ino: 20 + i as u32, ftype: FT_REG })
            .collect();
        let d = build(12, 2, &es, &[1, 2, 3, 4], 0).unwrap();
        assert!(!d.indexed);
        let parsed = parse_block(&d.blocks[0]).unwrap();
        assert_eq!(parsed.len(), 12);
        assert_eq!(parsed[0].2, b".");
    }

    #[test]
    fn large_dirs_are_indexed_and_complete() {
        for n in [200usize, 70_000] {
            let ns = names(n);
            let es: Vec<Entry<'_>> = ns
                .iter()
                .enumerate()
                .map(|(i, n)| Entry { name: n, ino: 20 + i as u32, ftype: FT_REG })
                .collect();
            let d = build(12, 2, &es, &[1, 2, 3, 4], 0).unwrap();
            assert!(d.indexed);
            let mut seen: Vec<Vec<u8>> = d
                .blocks
                .iter()
                .flat_map(|b| parse_block(b).unwrap())
                .map(|e| e.2)
                .filter(|n| n != b"." && n != b"..")
                .collect();
            seen.sort();
            let mut want = ns.clone();
            want.sort();
            assert_eq!(seen, want);
        }
    }
}
