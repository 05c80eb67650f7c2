//! The image writer: streams file data to its final blocks while the tree is built,
//! then lays out and writes all metadata in [`Builder::finish`].

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::alloc::Alloc;
use crate::extent::{push_block, Extent};
use crate::group::{gdt_blocks, BLOCKS_PER_GROUP};
use crate::inode::INODE_SIZE;
use crate::tree::{FileData, Metadata, Node, NodeId, NodeKind, Timestamp, Tree};
use crate::{io_err, Ext4Error, Result, BLOCK_SIZE};

const BS: usize = BLOCK_SIZE as usize;
/// Without `--size`, images may grow to this many groups (512 GiB); the descriptor
/// table copies for that many groups are kept free while data streams in.
pub(crate) const AUTO_MAX_GROUPS: u64 = 4096;
/// The largest image: 2^32 blocks (16 TiB).
const MAX_BLOCKS: u64 = 1 << 32;
const MIN_BLOCKS: u64 = 256;
const MIN_JOURNAL_BLOCKS: u64 = 2048;
pub(crate) const INODES_PER_BLOCK: u64 = BLOCK_SIZE / INODE_SIZE as u64;
/// Bytes per inode for filesystems of a given size (mke2fs `inode_ratio`).
pub(crate) const INODE_RATIO: u64 = 16384;
/// Coalesce writes of contiguous blocks up to this size.
const WRITE_BUFFER: usize = 4 << 20;

#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Image size in bytes; `None` sizes the image from its content, with headroom.
    pub size: Option<u64>,
    /// Add a journal (writable filesystems). Needs `size`.
    pub journal: bool,
    /// Filesystem UUID; random when `None`.
    pub uuid: Option<[u8; 16]>,
    /// Seconds since the epoch for superblock times and created directories; now when `None`.
    pub timestamp: Option<i64>,
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub size_bytes: u64,
    pub blocks: u64,
    pub free_blocks: u64,
    pub inodes: u64,
    pub free_inodes: u64,
}

/// Coalesces writes of consecutive blocks into large positional writes.
pub(crate) struct Out {
    pub(crate) file: File,
    buf: Vec<u8>,
    start: u64,
}

impl Out {
    pub(crate) fn put(&mut self, block: u64, data: &[u8]) -> Result<()> {
        debug_assert_eq!(data.len() % BS, 0);
        if !self.buf.is_empty() && self.start + (self.buf.len() / BS) as u64 != block {
            self.flush()?;
        }
        if self.buf.is_empty() {
            self.start = block;
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= WRITE_BUFFER {
            self.flush()?;
        }
        Ok(())
    }

    pub(crate) fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.file
                .write_all_at(&self.buf, self.start * BLOCK_SIZE)
                .map_err(io_err("write to"))?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// Builds one ext4 image. Add nodes through [`Builder::tree_mut`], stream regular file
/// contents with [`Builder::write_file`], then call [`Builder::finish`].
#[derive(Debug)]
pub struct Builder {
    pub(crate) out: Out,
    pub(crate) tree: Tree,
    pub(crate) alloc: Alloc,
    pub(crate) opts: BuildOptions,
    pub(crate) fixed_blocks: Option<u64>,
    pub(crate) now: i64,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Out").field("start", &self.start).finish_non_exhaustive()
    }
}

fn fixed_geometry(size: u64, journal: bool) -> Result<u64> {
    let max = MAX_BLOCKS * BLOCK_SIZE;
    if size > max {
        return Err(Ext4Error::SizeTooLarge { size, max });
    }
    let min = if journal { MIN_JOURNAL_BLOCKS } else { MIN_BLOCKS } * BLOCK_SIZE;
    let mut blocks = size / BLOCK_SIZE;
    if blocks < min / BLOCK_SIZE {
        return Err(Ext4Error::SizeTooSmall { size, min });
    }
    // Drop a last group too small to hold its own metadata, as mke2fs does.
    let rem = blocks % BLOCKS_PER_GROUP;
    let groups = blocks.div_ceil(BLOCKS_PER_GROUP);
    if blocks > BLOCKS_PER_GROUP && rem != 0 && rem < 1 + gdt_blocks(groups) + 256 {
        blocks -= rem;
    }
    Ok(blocks)
}

pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    if File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).is_err() {
        // Fall back to the clock: uniqueness matters, secrecy does not.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        for (i, x) in b.iter_mut().enumerate() {
            *x = (t >> ((i % 16) * 8)) as u8 ^ (std::process::id() as u8).wrapping_mul(i as u8);
        }
    }
    b
}

impl Builder {
    /// Starts an image in `file`, which is truncated: unwritten blocks must read as zeros.
    pub fn new(file: File, opts: BuildOptions) -> Result<Self> {
        file.set_len(0).map_err(io_err("truncate"))?;
        let (fixed_blocks, reserve, limit) = match opts.size {
            Some(size) => {
                let blocks = fixed_geometry(size, opts.journal)?;
                let groups = blocks.div_ceil(BLOCKS_PER_GROUP);
                // Keep room for inode tables and bitmaps (at mke2fs's inode ratio), so
                // that running out of space is reported at the file that did it.
                let ipg = (blocks * BLOCK_SIZE / INODE_RATIO)
                    .div_ceil(groups)
                    .next_multiple_of(INODES_PER_BLOCK)
                    .clamp(INODES_PER_BLOCK, BLOCKS_PER_GROUP);
                let meta = groups * (2 + ipg / INODES_PER_BLOCK) + 64;
                (Some(blocks), 1 + gdt_blocks(groups), blocks.saturating_sub(meta))
            }
            None => (None, 1 + gdt_blocks(AUTO_MAX_GROUPS), AUTO_MAX_GROUPS * BLOCKS_PER_GROUP),
        };
        let now = opts.timestamp.unwrap_or_else(seconds_now);
        let root = root_metadata(now);
        Ok(Builder {
            out: Out { file, buf: Vec::with_capacity(WRITE_BUFFER + BS), start: 0 },
            tree: Tree::new(root),
            alloc: Alloc::new(reserve, limit),
            opts,
            fixed_blocks,
            now,
            scratch: vec![0u8; 256 << 10],
        })
    }

    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    pub fn tree_mut(&mut self) -> &mut Tree {
        &mut self.tree
    }

    /// Moves everything added so far into the directory `name` of the filesystem root,
    /// which takes the root's metadata; the root becomes a directory like a new builder's
    /// (0755, owned by root, the build's time) holding `name` and, once finished,
    /// `lost+found`.
    pub fn nest_root(&mut self, name: &[u8]) -> Result<NodeId> {
        self.tree.nest_root(name, root_metadata(self.now))
    }

    /// Adds the empty directory `name` to the filesystem root, made like the root of a new
    /// builder (0755, owned by root, the build's time); a name already there is refused.
    pub fn add_root_dir(&mut self, name: &[u8]) -> Result<NodeId> {
        Tree::check_name(name)?;
        if self.tree.lookup(Tree::ROOT, name).is_some() {
            let name = String::from_utf8_lossy(name).into_owned();
            return Err(Ext4Error::InvalidName { name, reason: "already in the root" });
        }
        let dir = self.tree.add(Node {
            meta: root_metadata(self.now),
            kind: NodeKind::Dir(Default::default()),
            tag: 0,
        });
        self.tree.insert(Tree::ROOT, name, dir)?;
        Ok(dir)
    }

    /// Bytes of the image used so far by file data (a progress hint).
    pub fn data_bytes(&self) -> u64 {
        self.alloc.next() * BLOCK_SIZE
    }

    fn size_mib(&self) -> u64 {
        (self.fixed_blocks.unwrap_or(self.alloc.limit()) * BLOCK_SIZE) >> 20
    }

    /// Streams `size` bytes of file content from `r` to newly allocated blocks. Blocks
    /// that are entirely zero become holes, so sparse files stay sparse.
    pub fn write_file(&mut self, r: &mut dyn Read, size: u64) -> Result<FileData> {
        let max = (MAX_BLOCKS - 1) * BLOCK_SIZE;
        if size > max {
            return Err(Ext4Error::FileTooLarge { size, max });
        }
        let mut extents: Vec<Extent> = Vec::new();
        let mut remaining = size;
        let mut logical: u32 = 0;
        while remaining > 0 {
            let want = remaining.min(self.scratch.len() as u64) as usize;
            let got = read_full(r, &mut self.scratch[..want])
                .map_err(|source| Ext4Error::ReadData { source })?;
            if got < want {
                return Err(Ext4Error::ShortData {
                    expected: size,
                    got: size - remaining + got as u64,
                });
            }
            let padded = want.next_multiple_of(BS);
            self.scratch[want..padded].fill(0);
            for i in 0..padded / BS {
                let chunk = &self.scratch[i * BS..(i + 1) * BS];
                if !is_zero(chunk) {
                    let Some(phys) = self.alloc.block() else {
                        return Err(Ext4Error::NoSpace {
                            what: "file data".into(),
                            size_mib: self.size_mib(),
                        });
                    };
                    self.out.put(phys, chunk)?;
                    push_block(&mut extents, logical, phys);
                }
                logical = logical.wrapping_add(1);
            }
            remaining -= want as u64;
        }
        Ok(FileData { size, extents })
    }

    /// Writes all metadata and completes the image.
    pub fn finish(self) -> Result<Summary> {
        crate::finish::run(self)
    }
}

/// A filesystem root made by the writer rather than taken from the content.
/// The clock's seconds as time(2) gives them, which is what mke2fs stamps and e2fsck
/// compares with: the kernel's coarse clock, a tick behind `SystemTime` at a second's
/// edge. Stamping `SystemTime`'s seconds made e2fsck, run right after, see a superblock
/// "written in the future" (measured: 0.44 % of calls).
fn seconds_now() -> i64 {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_REALTIME_COARSE).map(|t| t.tv_sec()).unwrap_or(0)
}

fn root_metadata(now: i64) -> Metadata {
    let t = Timestamp { secs: now, nsec: 0 };
    Metadata { mode: 0o755, mtime: t, atime: t, ..Default::default() }
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn is_zero(b: &[u8]) -> bool {
    b.chunks_exact(16).fold(0u128, |a, c| a | u128::from_ne_bytes(c.try_into().unwrap_or([0; 16])))
        == 0
}

/// Creates an empty, journaled, writable filesystem of `size` bytes at `path`.
pub fn format_empty(path: &Path, size: u64, uuid: Option<[u8; 16]>) -> Result<Summary> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_err("create"))?;
    let b = Builder::new(
        file,
        BuildOptions { size: Some(size), journal: true, uuid, timestamp: None },
    )?;
    b.finish()
}
