//! The ext4 superblock: 1024 bytes at byte offset 1024, with backups in sparse groups.

use crate::checksum::crc32c;
use crate::le::*;

pub const MAGIC: u16 = 0xEF53;

pub const COMPAT_HAS_JOURNAL: u32 = 0x4;
pub const COMPAT_EXT_ATTR: u32 = 0x8;
pub const COMPAT_DIR_INDEX: u32 = 0x20;

pub const INCOMPAT_FILETYPE: u32 = 0x2;
pub const INCOMPAT_EXTENTS: u32 = 0x40;
pub const INCOMPAT_64BIT: u32 = 0x80;
pub const INCOMPAT_FLEX_BG: u32 = 0x200;

pub const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
pub const RO_COMPAT_LARGE_FILE: u32 = 0x2;
pub const RO_COMPAT_HUGE_FILE: u32 = 0x8;
pub const RO_COMPAT_DIR_NLINK: u32 = 0x20;
pub const RO_COMPAT_EXTRA_ISIZE: u32 = 0x40;
pub const RO_COMPAT_METADATA_CSUM: u32 = 0x400;

/// `s_flags`: directory hashes treat name bytes as unsigned.
pub const FLAGS_UNSIGNED_HASH: u32 = 0x2;

/// The superblock fields this crate writes or reads. Everything else is zero.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Superblock {
    pub inodes_count: u32,
    pub blocks_count: u64,
    pub r_blocks_count: u64,
    pub free_blocks_count: u64,
    pub free_inodes_count: u32,
    pub first_data_block: u32,
    pub log_block_size: u32,
    pub blocks_per_group: u32,
    pub inodes_per_group: u32,
    pub mtime: u32,
    pub wtime: u32,
    pub max_mnt_count: u16,
    pub state: u16,
    pub errors: u16,
    pub lastcheck: u32,
    pub rev_level: u32,
    pub first_ino: u32,
    pub inode_size: u16,
    pub block_group_nr: u16,
    pub feature_compat: u32,
    pub feature_incompat: u32,
    pub feature_ro_compat: u32,
    pub uuid: [u8; 16],
    pub volume_name: [u8; 16],
    pub journal_inum: u32,
    pub hash_seed: [u32; 4],
    pub def_hash_version: u8,
    pub jnl_backup_type: u8,
    pub desc_size: u16,
    pub default_mount_opts: u32,
    pub mkfs_time: u32,
    pub jnl_blocks: [u32; 17],
    pub min_extra_isize: u16,
    pub want_extra_isize: u16,
    pub flags: u32,
    pub log_groups_per_flex: u8,
    pub checksum_type: u8,
}

impl Superblock {
    pub fn block_size(&self) -> u64 {
        1024u64 << self.log_block_size.min(16)
    }

    /// Encodes the superblock with its checksum.
    pub fn encode(&self) -> [u8; 1024] {
        let mut b = [0u8; 1024];
        put32(&mut b, 0x0, self.inodes_count);
        put32(&mut b, 0x4, self.blocks_count as u32);
        put32(&mut b, 0x8, self.r_blocks_count as u32);
        put32(&mut b, 0xC, self.free_blocks_count as u32);
        put32(&mut b, 0x10, self.free_inodes_count);
        put32(&mut b, 0x14, self.first_data_block);
        put32(&mut b, 0x18, self.log_block_size);
        put32(&mut b, 0x1C, self.log_block_size); // s_log_cluster_size: no bigalloc
        put32(&mut b, 0x20, self.blocks_per_group);
        put32(&mut b, 0x24, self.blocks_per_group); // s_clusters_per_group
        put32(&mut b, 0x28, self.inodes_per_group);
        put32(&mut b, 0x2C, self.mtime);
        put32(&mut b, 0x30, self.wtime);
        put16(&mut b, 0x36, self.max_mnt_count);
        put16(&mut b, 0x38, MAGIC);
        put16(&mut b, 0x3A, self.state);
        put16(&mut b, 0x3C, self.errors);
        put32(&mut b, 0x40, self.lastcheck);
        put32(&mut b, 0x4C, self.rev_level);
        put32(&mut b, 0x54, self.first_ino);
        put16(&mut b, 0x58, self.inode_size);
        put16(&mut b, 0x5A, self.block_group_nr);
        put32(&mut b, 0x5C, self.feature_compat);
        put32(&mut b, 0x60, self.feature_incompat);
        put32(&mut b, 0x64, self.feature_ro_compat);
        b[0x68..0x78].copy_from_slice(&self.uuid);
        b[0x78..0x88].copy_from_slice(&self.volume_name);
        put32(&mut b, 0xE0, self.journal_inum);
        for (i, w) in self.hash_seed.iter().enumerate() {
            put32(&mut b, 0xEC + 4 * i, *w);
        }
        b[0xFC] = self.def_hash_version;
        b[0xFD] = self.jnl_backup_type;
        put16(&mut b, 0xFE, self.desc_size);
        put32(&mut b, 0x100, self.default_mount_opts);
        put32(&mut b, 0x108, self.mkfs_time);
        for (i, w) in self.jnl_blocks.iter().enumerate() {
            put32(&mut b, 0x10C + 4 * i, *w);
        }
        put32(&mut b, 0x150, (self.blocks_count >> 32) as u32);
        put32(&mut b, 0x154, (self.r_blocks_count >> 32) as u32);
        put32(&mut b, 0x158, (self.free_blocks_count >> 32) as u32);
        put16(&mut b, 0x15C, self.min_extra_isize);
        put16(&mut b, 0x15E, self.want_extra_isize);
        put32(&mut b, 0x160, self.flags);
        b[0x174] = self.log_groups_per_flex;
        b[0x175] = self.checksum_type;
        let csum = crc32c(!0, &b[..0x3FC]);
        put32(&mut b, 0x3FC, csum);
        b
    }

    /// Decodes a superblock; returns `None` unless the magic matches.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < 1024 || get16(b, 0x38) != MAGIC {
            return None;
        }
        let mut jnl_blocks = [0u32; 17];
        for (i, w) in jnl_blocks.iter_mut().enumerate() {
            *w = get32(b, 0x10C + 4 * i);
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[0x68..0x78]);
        let mut volume_name = [0u8; 16];
        volume_name.copy_from_slice(&b[0x78..0x88]);
        Some(Superblock {
            inodes_count: get32(b, 0x0),
            blocks_count: get32(b, 0x4) as u64 | (get32(b, 0x150) as u64) << 32,
            r_blocks_count: get32(b, 0x8) as u64 | (get32(b, 0x154) as u64) << 32,
            free_blocks_count: get32(b, 0xC) as u64 | (get32(b, 0x158) as u64) << 32,
            free_inodes_count: get32(b, 0x10),
            first_data_block: get32(b, 0x14),
            log_block_size: get32(b, 0x18),
            blocks_per_group: get32(b, 0x20),
            inodes_per_group: get32(b, 0x28),
            mtime: get32(b, 0x2C),
            wtime: get32(b, 0x30),
            max_mnt_count: get16(b, 0x36),
            state: get16(b, 0x3A),
            errors: get16(b, 0x3C),
            lastcheck: get32(b, 0x40),
            rev_level: get32(b, 0x4C),
            first_ino: get32(b, 0x54),
            inode_size: get16(b, 0x58),
            block_group_nr: get16(b, 0x5A),
            feature_compat: get32(b, 0x5C),
            feature_incompat: get32(b, 0x60),
            feature_ro_compat: get32(b, 0x64),
            uuid,
            volume_name,
            journal_inum: get32(b, 0xE0),
            hash_seed: [get32(b, 0xEC), get32(b, 0xF0), get32(b, 0xF4), get32(b, 0xF8)],
            def_hash_version: b[0xFC],
            jnl_backup_type: b[0xFD],
            desc_size: get16(b, 0xFE),
            default_mount_opts: get32(b, 0x100),
            mkfs_time: get32(b, 0x108),
            jnl_blocks,
            min_extra_isize: get16(b, 0x15C),
            want_extra_isize: get16(b, 0x15E),
            flags: get32(b, 0x160),
            log_groups_per_flex: b[0x174],
            checksum_type: b[0x175],
        })
    }

    /// The checksum seed for all other metadata: crc32c of the filesystem UUID.
    pub fn csum_seed(&self) -> u32 {
        crc32c(!0, &self.uuid)
    }

    pub fn group_count(&self) -> u64 {
        let bpg = self.blocks_per_group.max(1) as u64;
        (self.blocks_count.saturating_sub(self.first_data_block as u64)).div_ceil(bpg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let sb = Superblock {
            inodes_count: 1024,
            blocks_count: (5u64 << 32) + 7,
            free_blocks_count: 99,
            log_block_size: 2,
            blocks_per_group: 32768,
            inodes_per_group: 512,
            uuid: [7; 16],
            jnl_blocks: [3; 17],
            desc_size: 64,
            ..Default::default()
        };
        let enc = sb.encode();
        assert_eq!(Superblock::decode(&enc), Some(sb));
        assert_eq!(get32(&enc, 0x3FC), crc32c(!0, &enc[..0x3FC]));
    }
}
