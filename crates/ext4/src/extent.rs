//! Extent trees: the in-inode root (4 entries) and, for fragmented or huge files,
//! index and leaf blocks of 340 entries each.

use crate::checksum::{crc32c, inode_seed};
use crate::le::*;
use crate::BLOCK_SIZE;

pub const MAGIC: u16 = 0xF30A;
/// Longest initialized extent.
pub const MAX_LEN: u32 = 32768;
const ROOT_ENTRIES: usize = 4;
/// Entries per tree block: (4096 - 12 header - 4 checksum tail) / 12.
pub const BLOCK_ENTRIES: usize = (BLOCK_SIZE as usize - 12 - 4) / 12;

/// One run of physically contiguous blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub logical: u32,
    pub physical: u64,
    pub len: u32,
}

/// Appends a mapping of `logical` → `physical`, merging with the last extent when both
/// ends are contiguous.
pub fn push_block(extents: &mut Vec<Extent>, logical: u32, physical: u64) {
    if let Some(last) = extents.last_mut() {
        if last.len < MAX_LEN
            && last.logical as u64 + last.len as u64 == logical as u64
            && last.physical + last.len as u64 == physical
        {
            last.len += 1;
            return;
        }
    }
    extents.push(Extent { logical, physical, len: 1 });
}

/// Number of blocks all extents map.
pub fn mapped_blocks(extents: &[Extent]) -> u64 {
    extents.iter().map(|e| e.len as u64).sum()
}

/// How many tree blocks (leaves and index nodes) `n` extents need.
pub fn tree_blocks(n: usize) -> usize {
    if n <= ROOT_ENTRIES {
        return 0;
    }
    let mut cur = n.div_ceil(BLOCK_ENTRIES);
    let mut total = cur;
    while cur > ROOT_ENTRIES {
        cur = cur.div_ceil(BLOCK_ENTRIES);
        total += cur;
    }
    total
}

fn header(b: &mut [u8], entries: usize, max: usize, depth: u16) {
    put16(b, 0, MAGIC);
    put16(b, 2, entries as u16);
    put16(b, 4, max as u16);
    put16(b, 6, depth);
}

fn leaf_entry(b: &mut [u8], e: &Extent) {
    put32(b, 0, e.logical);
    put16(b, 4, e.len as u16);
    put16(b, 6, (e.physical >> 32) as u16);
    put32(b, 8, e.physical as u32);
}

fn index_entry(b: &mut [u8], logical: u32, child: u64) {
    put32(b, 0, logical);
    put32(b, 4, child as u32);
    put16(b, 8, (child >> 32) as u16);
}

/// A built extent tree: the 60-byte `i_block` root and the tree blocks to write.
#[derive(Debug)]
pub struct BuiltTree {
    pub root: [u8; 60],
    pub blocks: Vec<(u64, Vec<u8>)>,
}

/// Builds the tree for `extents` (sorted by logical block) using `tree_blocks` exactly
/// `tree_blocks(extents.len())` pre-allocated block numbers.
pub fn build(extents: &[Extent], tree_block_nrs: &[u64], csum_seed: u32, ino: u32) -> BuiltTree {
    debug_assert_eq!(tree_block_nrs.len(), tree_blocks(extents.len()));
    let mut root = [0u8; 60];
    if extents.len() <= ROOT_ENTRIES {
        header(&mut root, extents.len(), ROOT_ENTRIES, 0);
        for (i, e) in extents.iter().enumerate() {
            leaf_entry(&mut root[12 + 12 * i..], e);
        }
        return BuiltTree { root, blocks: Vec::new() };
    }
    let seed = inode_seed(csum_seed, ino, 0);
    let mut next = tree_block_nrs.iter().copied();
    let mut blocks = Vec::new();
    // (first logical block, physical block) of each node at the current level.
    let mut level: Vec<(u32, u64)> = Vec::new();
    for chunk in extents.chunks(BLOCK_ENTRIES) {
        let nr = next.next().unwrap_or(0);
        let mut b = vec![0u8; BLOCK_SIZE as usize];
        header(&mut b, chunk.len(), BLOCK_ENTRIES, 0);
        for (i, e) in chunk.iter().enumerate() {
            leaf_entry(&mut b[12 + 12 * i..], e);
        }
        finish_block(&mut b, seed);
        level.push((chunk[0].logical, nr));
        blocks.push((nr, b));
    }
    let mut depth = 1u16;
    while level.len() > ROOT_ENTRIES {
        let mut up = Vec::new();
        for chunk in level.chunks(BLOCK_ENTRIES) {
            let nr = next.next().unwrap_or(0);
            let mut b = vec![0u8; BLOCK_SIZE as usize];
            header(&mut b, chunk.len(), BLOCK_ENTRIES, depth);
            for (i, &(l, child)) in chunk.iter().enumerate() {
                index_entry(&mut b[12 + 12 * i..], l, child);
            }
            finish_block(&mut b, seed);
            up.push((chunk[0].0, nr));
            blocks.push((nr, b));
        }
        level = up;
        depth += 1;
    }
    header(&mut root, level.len(), ROOT_ENTRIES, depth);
    for (i, &(l, child)) in level.iter().enumerate() {
        index_entry(&mut root[12 + 12 * i..], l, child);
    }
    BuiltTree { root, blocks }
}

fn finish_block(b: &mut [u8], seed: u32) {
    let tail = 12 + 12 * BLOCK_ENTRIES;
    let c = crc32c(seed, &b[..tail]);
    put32(b, tail, c);
}

/// A node of an extent tree as read back: either leaf extents or children to visit.
#[derive(Debug)]
pub enum Node {
    Leaves(Vec<Extent>),
    Index { children: Vec<u64> },
}

/// Parses an extent tree node (the inode root or a tree block); `None` if malformed.
pub fn parse_node(b: &[u8]) -> Option<Node> {
    if b.len() < 12 || get16(b, 0) != MAGIC {
        return None;
    }
    let entries = get16(b, 2) as usize;
    let depth = get16(b, 6);
    if 12 + entries * 12 > b.len() {
        return None;
    }
    if depth == 0 {
        let v = (0..entries)
            .map(|i| {
                let e = &b[12 + 12 * i..];
                let raw_len = get16(e, 4) as u32;
                // Lengths above 32768 mark unwritten extents: they read as zeros.
                Extent {
                    logical: get32(e, 0),
                    len: if raw_len > MAX_LEN { raw_len - MAX_LEN } else { raw_len },
                    physical: get32(e, 8) as u64 | (get16(e, 6) as u64) << 32,
                }
            })
            .collect();
        Some(Node::Leaves(v))
    } else {
        let children = (0..entries)
            .map(|i| {
                let e = &b[12 + 12 * i..];
                get32(e, 4) as u64 | (get16(e, 8) as u64) << 32
            })
            .collect();
        Some(Node::Index { children })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging() {
        let mut v = Vec::new();
        push_block(&mut v, 0, 100);
        push_block(&mut v, 1, 101);
        push_block(&mut v, 3, 102);
        push_block(&mut v, 4, 200);
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].len, 2);
    }

    #[test]
    fn tree_sizes() {
        assert_eq!(tree_blocks(4), 0);
        assert_eq!(tree_blocks(5), 1);
        assert_eq!(tree_blocks(340 * 4), 4);
        assert_eq!(tree_blocks(340 * 4 + 1), 5 + 1);
    }

    #[test]
    fn build_and_parse_two_levels() {
        let exts: Vec<Extent> = (0..2000u32)
            .map(|i| Extent { logical: i * 2, physical: i as u64 * 3, len: 1 })
            .collect();
        let n = tree_blocks(exts.len());
        let nrs: Vec<u64> = (0..n as u64).map(|i| 1_000_000 + i).collect();
        let t = build(&exts, &nrs, 1, 12);
        let mut out = Vec::new();
        let mut stack = vec![t.root.to_vec()];
        while let Some(b) = stack.pop() {
            match parse_node(&b).unwrap() {
                Node::Leaves(v) => out.extend(v),
                Node::Index { children, .. } => {
                    for c in children.into_iter().rev() {
                        let blk = t.blocks.iter().find(|(nr, _)| *nr == c).unwrap();
                        stack.push(blk.1.clone());
                    }
                }
            }
        }
        assert_eq!(out, exts);
    }
}
