//! The jbd2 journal superblock (big-endian, unlike the rest of ext4) for writable
//! filesystems. The journal is created empty and clean: nothing to replay.

pub const JOURNAL_INO: u32 = 8;
const MAGIC: u32 = 0xC03B_3998;
const SUPERBLOCK_V2: u32 = 4;

/// Journal size in blocks for a filesystem of `blocks` 4 KiB blocks, following
/// e2fsprogs' `ext2fs_default_journal_size`.
pub fn default_blocks(blocks: u64) -> u64 {
    match blocks {
        b if b < 2048 => 0,
        b if b < 32768 => 1024,
        b if b < 256 * 1024 => 4096,
        b if b < 512 * 1024 => 8192,
        b if b < 4096 * 1024 => 16384,
        b if b < 8192 * 1024 => 32768,
        b if b < 16384 * 1024 => 65536,
        b if b < 32768 * 1024 => 131072,
        _ => 262144,
    }
}

/// The first block of the journal.
pub fn superblock(blocks: u32, uuid: &[u8; 16]) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    let be = |b: &mut [u8], off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_be_bytes());
    be(&mut b, 0x0, MAGIC);
    be(&mut b, 0x4, SUPERBLOCK_V2);
    be(&mut b, 0xC, 4096); // s_blocksize
    be(&mut b, 0x10, blocks); // s_maxlen
    be(&mut b, 0x14, 1); // s_first: first log block
    be(&mut b, 0x18, 1); // s_sequence
    be(&mut b, 0x1C, 0); // s_start = 0: the journal is empty
    b[0x30..0x40].copy_from_slice(uuid);
    be(&mut b, 0x40, 1); // s_nr_users
    b
}
