//! Reads an image back: superblock, inodes, directories, file data, xattrs. Used by
//! tests and property tests to check what the writer produced; it verifies inode and
//! directory block checksums on the way.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::checksum::{crc32c, inode_seed};
use crate::extent::{self, Extent};
use crate::group::{GroupDesc, DESC_SIZE};
use crate::inode::{self, Inode, INODE_SIZE};
use crate::le::*;
use crate::superblock::Superblock;
use crate::tree::{DevNumbers, Timestamp, Xattr};
use crate::{dir, xattr, BLOCK_SIZE, ROOT_INO};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read the image")]
    Io {
        #[from]
        source: std::io::Error,
    },
    #[error("corrupt image: {what}")]
    Corrupt { what: String },
}

type Result<T> = std::result::Result<T, ReadError>;

fn corrupt(what: impl Into<String>) -> ReadError {
    ReadError::Corrupt { what: what.into() }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink(Vec<u8>),
    CharDev(DevNumbers),
    BlockDev(DevNumbers),
    Fifo,
    Socket,
}

/// What `stat` would show, plus xattrs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub ino: u32,
    pub kind: Kind,
    /// Permission bits (`0o7777`).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub links: u16,
    pub mtime: Timestamp,
    pub atime: Timestamp,
    pub xattrs: Vec<Xattr>,
    /// 512-byte sectors allocated.
    pub blocks_512: u64,
}

#[derive(Debug)]
pub struct Reader {
    file: File,
    pub sb: Superblock,
    groups: Vec<GroupDesc>,
    csum_seed: u32,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path)?;
        let mut b = [0u8; 1024];
        file.read_exact_at(&mut b, 1024)?;
        let sb = Superblock::decode(&b).ok_or_else(|| corrupt("bad superblock magic"))?;
        if sb.block_size() != BLOCK_SIZE || sb.inode_size as usize != INODE_SIZE {
            return Err(corrupt("unsupported block or inode size"));
        }
        if get32(&b, 0x3FC) != crc32c(!0, &b[..0x3FC]) {
            return Err(corrupt("superblock checksum mismatch"));
        }
        let n = sb.group_count() as usize;
        let mut gdt = vec![0u8; n * DESC_SIZE];
        file.read_exact_at(&mut gdt, BLOCK_SIZE)?;
        let groups = gdt.chunks_exact(DESC_SIZE).map(GroupDesc::decode).collect();
        let csum_seed = sb.csum_seed();
        Ok(Reader { file, sb, groups, csum_seed })
    }

    fn read_block(&self, nr: u64) -> Result<Vec<u8>> {
        if nr >= self.sb.blocks_count {
            return Err(corrupt(format!("block {nr} beyond the end")));
        }
        let mut b = vec![0u8; BLOCK_SIZE as usize];
        self.file.read_exact_at(&mut b, nr * BLOCK_SIZE)?;
        Ok(b)
    }

    fn raw_inode(&self, ino: u32) -> Result<Vec<u8>> {
        if ino == 0 || ino > self.sb.inodes_count {
            return Err(corrupt(format!("inode {ino} out of range")));
        }
        let ipg = self.sb.inodes_per_group;
        let g = ((ino - 1) / ipg) as usize;
        let idx = ((ino - 1) % ipg) as u64;
        let table = self.groups.get(g).ok_or_else(|| corrupt("group out of range"))?.inode_table;
        let mut b = vec![0u8; INODE_SIZE];
        self.file.read_exact_at(&mut b, table * BLOCK_SIZE + idx * INODE_SIZE as u64)?;
        let want = inode::inode_csum(self.csum_seed, ino, &b);
        let have = get16(&b, 0x7C) as u32 | (get16(&b, 0x82) as u32) << 16;
        if want != have {
            return Err(corrupt(format!("inode {ino} checksum mismatch")));
        }
        Ok(b)
    }

    fn inode(&self, ino: u32) -> Result<Inode> {
        Ok(Inode::decode(&self.raw_inode(ino)?))
    }

    fn extents(&self, i: &Inode) -> Result<Vec<Extent>> {
        let mut out = Vec::new();
        let mut stack: Vec<(Vec<u8>, u32)> = vec![(i.block.to_vec(), 0)];
        while let Some((b, depth)) = stack.pop() {
            if depth > 5 {
                return Err(corrupt("extent tree too deep"));
            }
            match extent::parse_node(&b).ok_or_else(|| corrupt("bad extent node"))? {
                extent::Node::Leaves(v) => out.extend(v),
                extent::Node::Index { children, .. } => {
                    for c in children.into_iter().rev() {
                        stack.push((self.read_block(c)?, depth + 1));
                    }
                }
            }
        }
        Ok(out)
    }

    /// The whole content of a file (holes read as zeros).
    pub fn read_file(&self, ino: u32) -> Result<Vec<u8>> {
        let i = self.inode(ino)?;
        self.read_data(&i)
    }

    fn read_data(&self, i: &Inode) -> Result<Vec<u8>> {
        let size = usize::try_from(i.size).map_err(|_| corrupt("file too large to read"))?;
        let mut data = vec![0u8; size];
        for e in self.extents(i)? {
            for k in 0..e.len as u64 {
                let off = (e.logical as u64 + k) * BLOCK_SIZE;
                if off >= i.size {
                    break;
                }
                let b = self.read_block(e.physical + k)?;
                let n = ((i.size - off) as usize).min(b.len());
                data[off as usize..off as usize + n].copy_from_slice(&b[..n]);
            }
        }
        Ok(data)
    }

    /// Directory entries other than `.` and `..`: (name, inode).
    pub fn read_dir(&self, ino: u32) -> Result<Vec<(Vec<u8>, u32)>> {
        let i = self.inode(ino)?;
        if i.mode & inode::S_IFMT != inode::S_IFDIR {
            return Err(corrupt(format!("inode {ino} is not a directory")));
        }
        let seed = inode_seed(self.csum_seed, ino, 0);
        let mut out = Vec::new();
        for e in self.extents(&i)? {
            for k in 0..e.len as u64 {
                let b = self.read_block(e.physical + k)?;
                let tail = b.len() - 12;
                let has_tail =
                    get32(&b, tail) == 0 && get16(&b, tail + 4) == 12 && b[tail + 7] == 0xDE;
                if has_tail && get32(&b, tail + 8) != crc32c(seed, &b[..tail]) {
                    return Err(corrupt(format!("directory {ino} block checksum mismatch")));
                }
                let ents = dir::parse_block(&b).ok_or_else(|| corrupt("bad directory block"))?;
                for (child, _, name) in ents {
                    if name != b"." && name != b".." {
                        out.push((name, child));
                    }
                }
            }
        }
        Ok(out)
    }

    pub fn stat(&self, ino: u32) -> Result<Stat> {
        let i = self.inode(ino)?;
        let block = if i.file_acl != 0 { Some(self.read_block(i.file_acl)?) } else { None };
        let xattrs = xattr::decode(&i.ibody_xattrs, block.as_deref())
            .ok_or_else(|| corrupt(format!("inode {ino} has bad xattrs")))?;
        let dev = || {
            let old = get32(&i.block, 0);
            if old != 0 {
                DevNumbers { major: (old >> 8) & 0xFF, minor: old & 0xFF }
            } else {
                let new = get32(&i.block, 4);
                DevNumbers {
                    major: (new >> 8) & 0xFFF,
                    minor: (new & 0xFF) | ((new >> 12) & 0xFFF00),
                }
            }
        };
        let kind = match i.mode & inode::S_IFMT {
            inode::S_IFREG => Kind::File,
            inode::S_IFDIR => Kind::Dir,
            inode::S_IFLNK => {
                if i.flags & inode::FLAG_EXTENTS == 0 {
                    let n = (i.size as usize).min(60);
                    Kind::Symlink(i.block[..n].to_vec())
                } else {
                    Kind::Symlink(self.read_data(&i)?)
                }
            }
            inode::S_IFCHR => Kind::CharDev(dev()),
            inode::S_IFBLK => Kind::BlockDev(dev()),
            inode::S_IFIFO => Kind::Fifo,
            inode::S_IFSOCK => Kind::Socket,
            m => return Err(corrupt(format!("inode {ino} has unknown type {m:o}"))),
        };
        Ok(Stat {
            ino,
            kind,
            perm: i.mode & 0o7777,
            uid: i.uid,
            gid: i.gid,
            size: i.size,
            links: i.links_count,
            mtime: Timestamp { secs: i.mtime.0, nsec: i.mtime.1 },
            atime: Timestamp { secs: i.atime.0, nsec: i.atime.1 },
            xattrs,
            blocks_512: i.blocks_512,
        })
    }

    /// Every entry below the root, depth first, as (path relative to the root, stat).
    pub fn walk(&self) -> Result<Vec<(Vec<u8>, Stat)>> {
        let mut out = Vec::new();
        let mut stack: Vec<(Vec<u8>, u32)> = vec![(Vec::new(), ROOT_INO)];
        while let Some((path, ino)) = stack.pop() {
            let mut ents = self.read_dir(ino)?;
            ents.sort();
            for (name, child) in ents.into_iter().rev() {
                let mut p = path.clone();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(&name);
                let st = self.stat(child)?;
                if st.kind == Kind::Dir {
                    stack.push((p.clone(), child));
                }
                out.push((p, st));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}
