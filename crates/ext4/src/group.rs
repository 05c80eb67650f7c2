//! Block group descriptors (64-byte, `64bit` feature) and group geometry.

use crate::checksum::crc32c;
use crate::le::*;

pub const DESC_SIZE: usize = 64;
pub const BLOCKS_PER_GROUP: u64 = 32768;

/// `bg_flags`: the inode table is known to be zeroed (the image file is sparse and fresh).
pub const BG_INODE_ZEROED: u16 = 0x4;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupDesc {
    pub block_bitmap: u64,
    pub inode_bitmap: u64,
    pub inode_table: u64,
    pub free_blocks_count: u32,
    pub free_inodes_count: u32,
    pub used_dirs_count: u32,
    pub flags: u16,
    pub block_bitmap_csum: u32,
    pub inode_bitmap_csum: u32,
    pub itable_unused: u32,
}

impl GroupDesc {
    /// Encodes the descriptor of group `group` with its checksum.
    pub fn encode(&self, csum_seed: u32, group: u32) -> [u8; DESC_SIZE] {
        let mut b = [0u8; DESC_SIZE];
        put32(&mut b, 0x0, self.block_bitmap as u32);
        put32(&mut b, 0x4, self.inode_bitmap as u32);
        put32(&mut b, 0x8, self.inode_table as u32);
        put16(&mut b, 0xC, self.free_blocks_count as u16);
        put16(&mut b, 0xE, self.free_inodes_count as u16);
        put16(&mut b, 0x10, self.used_dirs_count as u16);
        put16(&mut b, 0x12, self.flags);
        put16(&mut b, 0x18, self.block_bitmap_csum as u16);
        put16(&mut b, 0x1A, self.inode_bitmap_csum as u16);
        put16(&mut b, 0x1C, self.itable_unused as u16);
        put32(&mut b, 0x20, (self.block_bitmap >> 32) as u32);
        put32(&mut b, 0x24, (self.inode_bitmap >> 32) as u32);
        put32(&mut b, 0x28, (self.inode_table >> 32) as u32);
        put16(&mut b, 0x2C, (self.free_blocks_count >> 16) as u16);
        put16(&mut b, 0x2E, (self.free_inodes_count >> 16) as u16);
        put16(&mut b, 0x30, (self.used_dirs_count >> 16) as u16);
        put16(&mut b, 0x32, (self.itable_unused >> 16) as u16);
        put16(&mut b, 0x38, (self.block_bitmap_csum >> 16) as u16);
        put16(&mut b, 0x3A, (self.inode_bitmap_csum >> 16) as u16);
        let csum = desc_csum(csum_seed, group, &b);
        put16(&mut b, 0x1E, csum);
        b
    }

    pub fn decode(b: &[u8]) -> Self {
        GroupDesc {
            block_bitmap: get32(b, 0x0) as u64 | (get32(b, 0x20) as u64) << 32,
            inode_bitmap: get32(b, 0x4) as u64 | (get32(b, 0x24) as u64) << 32,
            inode_table: get32(b, 0x8) as u64 | (get32(b, 0x28) as u64) << 32,
            free_blocks_count: get16(b, 0xC) as u32 | (get16(b, 0x2C) as u32) << 16,
            free_inodes_count: get16(b, 0xE) as u32 | (get16(b, 0x2E) as u32) << 16,
            used_dirs_count: get16(b, 0x10) as u32 | (get16(b, 0x30) as u32) << 16,
            flags: get16(b, 0x12),
            block_bitmap_csum: get16(b, 0x18) as u32 | (get16(b, 0x38) as u32) << 16,
            inode_bitmap_csum: get16(b, 0x1A) as u32 | (get16(b, 0x3A) as u32) << 16,
            itable_unused: get16(b, 0x1C) as u32 | (get16(b, 0x32) as u32) << 16,
        }
    }
}

/// The descriptor checksum: crc32c over the group number and the descriptor with its
/// checksum field skipped, truncated to 16 bits.
pub fn desc_csum(seed: u32, group: u32, b: &[u8]) -> u16 {
    let mut c = crc32c(seed, &group.to_le_bytes());
    c = crc32c(c, &b[..0x1E]);
    c = crc32c(c, &[0, 0]);
    c = crc32c(c, &b[0x20..DESC_SIZE]);
    (c & 0xFFFF) as u16
}

/// Whether group `g` holds a superblock backup under `sparse_super`: groups 0, 1 and
/// powers of 3, 5 and 7.
pub fn has_super(g: u64) -> bool {
    if g <= 1 {
        return true;
    }
    for base in [3u64, 5, 7] {
        let mut p = base;
        while p < g {
            p *= base;
        }
        if p == g {
            return true;
        }
    }
    false
}

/// Blocks of group descriptor table for `groups` groups.
pub fn gdt_blocks(groups: u64) -> u64 {
    (groups * DESC_SIZE as u64).div_ceil(crate::BLOCK_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_groups() {
        let v: Vec<u64> = (0..100).filter(|&g| has_super(g)).collect();
        assert_eq!(v, vec![0, 1, 3, 5, 7, 9, 25, 27, 49, 81]);
    }

    #[test]
    fn desc_round_trip() {
        let d = GroupDesc {
            block_bitmap: 1 << 33,
            inode_bitmap: 5,
            inode_table: 77,
            free_blocks_count: 70000,
            free_inodes_count: 8000,
            used_dirs_count: 3,
            flags: BG_INODE_ZEROED,
            block_bitmap_csum: 0xDEADBEEF,
            inode_bitmap_csum: 0x12345678,
            itable_unused: 100,
        };
        assert_eq!(GroupDesc::decode(&d.encode(1, 2)), d);
    }
}
