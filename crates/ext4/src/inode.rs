//! 256-byte inodes with nanosecond timestamps and checksums.

use crate::checksum::{crc32c, inode_seed};
use crate::le::*;

pub const INODE_SIZE: usize = 256;
/// Bytes of the fixed inode part after the classic 128 bytes (`i_extra_isize`).
pub const EXTRA_ISIZE: u16 = 32;
/// Where in-inode extended attributes start.
pub const XATTR_IBODY_OFFSET: usize = 128 + EXTRA_ISIZE as usize;

pub const S_IFMT: u16 = 0o170000;
pub const S_IFSOCK: u16 = 0o140000;
pub const S_IFLNK: u16 = 0o120000;
pub const S_IFREG: u16 = 0o100000;
pub const S_IFBLK: u16 = 0o060000;
pub const S_IFDIR: u16 = 0o040000;
pub const S_IFCHR: u16 = 0o020000;
pub const S_IFIFO: u16 = 0o010000;

pub const FLAG_INDEX: u32 = 0x1000;
pub const FLAG_EXTENTS: u32 = 0x80000;

/// An inode as this crate writes it. `i_block` is the raw 60-byte area (extent root,
/// fast symlink target or device numbers); `ibody_xattrs` is the in-inode xattr area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime: (i64, u32),
    pub ctime: (i64, u32),
    pub mtime: (i64, u32),
    pub crtime: (i64, u32),
    pub links_count: u16,
    /// In 512-byte sectors.
    pub blocks_512: u64,
    pub flags: u32,
    pub block: [u8; 60],
    pub file_acl: u64,
    pub ibody_xattrs: Vec<u8>,
}

impl Default for Inode {
    fn default() -> Self {
        Inode {
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            atime: (0, 0),
            ctime: (0, 0),
            mtime: (0, 0),
            crtime: (0, 0),
            links_count: 0,
            blocks_512: 0,
            flags: 0,
            block: [0; 60],
            file_acl: 0,
            ibody_xattrs: Vec::new(),
        }
    }
}

pub const MIN_TIME: i64 = i32::MIN as i64;
pub const MAX_TIME: i64 = i32::MAX as i64 + (3 << 32);

/// Splits a timestamp into the 32-bit seconds field and the `_extra` field, which holds
/// two epoch bits (seconds beyond the signed 32-bit range) and the nanoseconds.
/// Times outside what ext4 can hold (1901-12-13 to 2446-05-10) are clamped, as the kernel does.
pub fn encode_time(secs: i64, nsec: u32) -> (u32, u32) {
    let secs = secs.clamp(MIN_TIME, MAX_TIME);
    let lo = secs as i32;
    let epoch = ((secs - lo as i64) >> 32) as u32 & 3;
    (lo as u32, epoch | (nsec.min(999_999_999) << 2))
}

pub fn decode_time(lo: u32, extra: u32) -> (i64, u32) {
    let epoch = (extra & 3) as i64;
    ((lo as i32 as i64) + (epoch << 32), extra >> 2)
}

impl Inode {
    pub fn encode(&self, csum_seed: u32, ino: u32) -> [u8; INODE_SIZE] {
        let mut b = [0u8; INODE_SIZE];
        put16(&mut b, 0x0, self.mode);
        put16(&mut b, 0x2, self.uid as u16);
        put32(&mut b, 0x4, self.size as u32);
        let (a, ax) = encode_time(self.atime.0, self.atime.1);
        let (c, cx) = encode_time(self.ctime.0, self.ctime.1);
        let (m, mx) = encode_time(self.mtime.0, self.mtime.1);
        let (cr, crx) = encode_time(self.crtime.0, self.crtime.1);
        put32(&mut b, 0x8, a);
        put32(&mut b, 0xC, c);
        put32(&mut b, 0x10, m);
        put16(&mut b, 0x18, self.gid as u16);
        put16(&mut b, 0x1A, self.links_count);
        put32(&mut b, 0x1C, self.blocks_512 as u32);
        put32(&mut b, 0x20, self.flags);
        b[0x28..0x64].copy_from_slice(&self.block);
        put32(&mut b, 0x68, self.file_acl as u32);
        put32(&mut b, 0x6C, (self.size >> 32) as u32);
        put16(&mut b, 0x74, (self.blocks_512 >> 32) as u16);
        put16(&mut b, 0x76, (self.file_acl >> 32) as u16);
        put16(&mut b, 0x78, (self.uid >> 16) as u16);
        put16(&mut b, 0x7A, (self.gid >> 16) as u16);
        put16(&mut b, 0x80, EXTRA_ISIZE);
        put32(&mut b, 0x84, cx);
        put32(&mut b, 0x88, mx);
        put32(&mut b, 0x8C, ax);
        put32(&mut b, 0x90, cr);
        put32(&mut b, 0x94, crx);
        let n = self.ibody_xattrs.len().min(INODE_SIZE - XATTR_IBODY_OFFSET);
        b[XATTR_IBODY_OFFSET..XATTR_IBODY_OFFSET + n].copy_from_slice(&self.ibody_xattrs[..n]);
        let csum = inode_csum(csum_seed, ino, &b);
        put16(&mut b, 0x7C, csum as u16);
        put16(&mut b, 0x82, (csum >> 16) as u16);
        b
    }

    pub fn decode(b: &[u8]) -> Self {
        let extra = get16(b, 0x80) as usize;
        let has = |end: usize| 128 + extra >= end;
        let xt = |off: usize| if has(off + 4) { get32(b, off) } else { 0 };
        let mut block = [0u8; 60];
        block.copy_from_slice(&b[0x28..0x64]);
        let ibody_start = 128 + extra;
        Inode {
            mode: get16(b, 0x0),
            uid: get16(b, 0x2) as u32 | (get16(b, 0x78) as u32) << 16,
            gid: get16(b, 0x18) as u32 | (get16(b, 0x7A) as u32) << 16,
            size: get32(b, 0x4) as u64 | (get32(b, 0x6C) as u64) << 32,
            atime: decode_time(get32(b, 0x8), xt(0x8C)),
            ctime: decode_time(get32(b, 0xC), xt(0x84)),
            mtime: decode_time(get32(b, 0x10), xt(0x88)),
            crtime: decode_time(xt(0x90), xt(0x94)),
            links_count: get16(b, 0x1A),
            blocks_512: get32(b, 0x1C) as u64 | (get16(b, 0x74) as u64) << 32,
            flags: get32(b, 0x20),
            block,
            file_acl: get32(b, 0x68) as u64 | (get16(b, 0x76) as u64) << 32,
            ibody_xattrs: if ibody_start < b.len() {
                b[ibody_start..].to_vec()
            } else {
                Vec::new()
            },
        }
    }
}

/// The inode checksum: crc32c over inode number, generation (always 0 here) and the
/// inode with both checksum halves zeroed.
pub fn inode_csum(csum_seed: u32, ino: u32, b: &[u8]) -> u32 {
    let generation = get32(b, 0x64);
    let mut c = inode_seed(csum_seed, ino, generation);
    c = crc32c(c, &b[..0x7C]);
    c = crc32c(c, &[0, 0]);
    c = crc32c(c, &b[0x7E..0x82]);
    c = crc32c(c, &[0, 0]);
    crc32c(c, &b[0x84..INODE_SIZE.min(b.len())])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_epochs() {
        for t in
            [0i64, 1, -1, i32::MAX as i64, i32::MIN as i64, 1 << 32, (1 << 33) + 5, -5, MAX_TIME]
        {
            let (lo, x) = encode_time(t, 123);
            assert_eq!(decode_time(lo, x), (t, 123), "{t}");
        }
    }

    #[test]
    fn out_of_range_times_clamp() {
        let (lo, x) = encode_time(i64::MIN, 0);
        assert_eq!(decode_time(lo, x).0, MIN_TIME);
        let (lo, x) = encode_time(i64::MAX, 0);
        assert_eq!(decode_time(lo, x).0, MAX_TIME);
    }

    #[test]
    fn round_trip() {
        let i = Inode {
            mode: S_IFREG | 0o4755,
            uid: 70000,
            gid: 3,
            size: 5 << 32,
            mtime: (1_700_000_000, 999_999_999),
            links_count: 2,
            blocks_512: 1 << 33,
            flags: FLAG_EXTENTS,
            file_acl: 1234,
            ..Default::default()
        };
        let enc = i.encode(9, 12);
        let mut d = Inode::decode(&enc);
        assert_eq!(d.ibody_xattrs.len(), INODE_SIZE - XATTR_IBODY_OFFSET);
        d.ibody_xattrs.clear();
        assert_eq!(d, i);
    }
}
