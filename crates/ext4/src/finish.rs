//! Completing an image: numbering inodes, laying out directories and metadata after
//! the streamed data, and writing inode tables, bitmaps, descriptors and superblocks.

use std::collections::{HashMap, VecDeque};

use crate::alloc::Alloc;
use crate::checksum::{crc32c, inode_seed};
use crate::dir::{self, DirBlocks, Entry};
use crate::extent::{self, push_block, Extent};
use crate::group::{gdt_blocks, has_super, GroupDesc, BG_INODE_ZEROED, BLOCKS_PER_GROUP};
use crate::inode::{self, Inode, INODE_SIZE};
use crate::journal::{self, JOURNAL_INO};
use crate::superblock::*;
use crate::tree::{Metadata, Node, NodeId, NodeKind, Timestamp, Tree};
use crate::writer::{
    random_bytes, BuildOptions, Builder, Out, Summary, AUTO_MAX_GROUPS, INODES_PER_BLOCK,
    INODE_RATIO,
};
use crate::xattr::{self, Encoded};
use crate::{io_err, Ext4Error, Result, BLOCK_SIZE, ROOT_INO};

const BS: usize = BLOCK_SIZE as usize;
const LOST_FOUND_INO: u32 = 11;
const FIRST_INO: u32 = 11;
const MAX_LINKS: u32 = 65000;

pub(crate) fn run(b: Builder) -> Result<Summary> {
    Finisher::run(b)
}

/// Per-inode facts gathered before layout.
struct Geometry {
    blocks: u64,
    groups: u64,
    ipg: u64,
    gdt: u64,
    journal_blocks: u64,
}

/// Where every piece of metadata goes.
#[derive(Clone)]
struct Plan {
    block_bitmap: Vec<u64>,
    inode_bitmap: Vec<u64>,
    inode_table: Vec<u64>,
    dir_extents: Vec<Vec<Extent>>,
    dir_tree: Vec<Vec<u64>>,
    file_tree: HashMap<u32, Vec<u64>>,
    symlink_block: HashMap<u32, u64>,
    xattr_block: HashMap<u32, u64>,
    journal_extents: Vec<Extent>,
    journal_tree: Vec<u64>,
}

struct Finisher {
    out: Out,
    tree: Tree,
    alloc: Alloc,
    opts: BuildOptions,
    fixed_blocks: Option<u64>,
    now: i64,
    uuid: [u8; 16],
    hash_seed: [u32; 4],
    csum_seed: u32,
    /// Node of each inode number (index = ino); `None` for reserved inodes.
    by_ino: Vec<Option<NodeId>>,
    /// Inode number of each node (index = node id); 0 if unreachable.
    ino_of: Vec<u32>,
    links: Vec<u32>,
    /// Directories in inode order, with their laid-out blocks.
    dirs: Vec<(u32, NodeId, DirBlocks)>,
    xattrs: HashMap<u32, Encoded>,
    /// The directory holding each directory's one kept entry.
    parent: Vec<NodeId>,
}

fn runs_to_extents(runs: &[(u64, u64)]) -> Vec<Extent> {
    let mut v = Vec::new();
    let mut logical = 0u32;
    for &(start, len) in runs {
        for i in 0..len {
            push_block(&mut v, logical, start + i);
            logical += 1;
        }
    }
    v
}

fn ftype(kind: &NodeKind) -> u8 {
    match kind {
        NodeKind::File(_) => dir::FT_REG,
        NodeKind::Dir(_) => dir::FT_DIR,
        NodeKind::Symlink(_) => dir::FT_SYMLINK,
        NodeKind::CharDev(_) => dir::FT_CHR,
        NodeKind::BlockDev(_) => dir::FT_BLK,
        NodeKind::Fifo => dir::FT_FIFO,
        NodeKind::Socket => dir::FT_SOCK,
    }
}

impl Finisher {
    fn run(b: Builder) -> Result<Summary> {
        let Builder { mut out, tree, alloc, opts, fixed_blocks, now, .. } = b;
        out.flush()?;
        let uuid = opts.uuid.unwrap_or_else(random_bytes::<16>);
        let hs: [u8; 16] = random_bytes::<16>();
        let hash_seed =
            [0, 4, 8, 12].map(|i| u32::from_le_bytes([hs[i], hs[i + 1], hs[i + 2], hs[i + 3]]));
        let csum_seed = crc32c(!0, &uuid);
        let mut f = Finisher {
            out,
            tree,
            alloc,
            opts,
            fixed_blocks,
            now,
            uuid,
            hash_seed,
            csum_seed,
            by_ino: Vec::new(),
            ino_of: Vec::new(),
            links: Vec::new(),
            dirs: Vec::new(),
            xattrs: HashMap::new(),
            parent: Vec::new(),
        };
        f.ensure_lost_found()?;
        f.number_inodes()?;
        f.layout_dirs()?;
        f.encode_xattrs()?;
        let (geo, plan) = f.plan()?;
        f.write(&geo, &plan)
    }

    fn ensure_lost_found(&mut self) -> Result<()> {
        if self.tree.lookup(Tree::ROOT, b"lost+found").is_none() {
            let t = Timestamp { secs: self.now, nsec: 0 };
            let id = self.tree.add(Node {
                meta: Metadata { mode: 0o700, mtime: t, atime: t, ..Default::default() },
                kind: NodeKind::Dir(Default::default()),
                tag: 0,
            });
            self.tree.insert(Tree::ROOT, b"lost+found", id)?;
        }
        Ok(())
    }

    /// Numbers reachable inodes breadth-first (root 2, lost+found 11, then from 12) and
    /// counts links. A directory reachable twice keeps only its first entry.
    fn number_inodes(&mut self) -> Result<()> {
        let n = self.tree.len();
        self.ino_of = vec![0; n];
        self.links = vec![0; n];
        let mut parent: Vec<NodeId> = vec![NodeId::MAX; n];
        self.by_ino = vec![None; FIRST_INO as usize + 1];
        self.ino_of[Tree::ROOT as usize] = ROOT_INO;
        self.by_ino[ROOT_INO as usize] = Some(Tree::ROOT);
        parent[Tree::ROOT as usize] = Tree::ROOT;
        if let Some(lf) = self.tree.lookup(Tree::ROOT, b"lost+found") {
            if self.tree.get(lf).is_dir() {
                self.ino_of[lf as usize] = LOST_FOUND_INO;
                self.by_ino[LOST_FOUND_INO as usize] = Some(lf);
            }
        }
        let mut next = FIRST_INO + 1;
        let mut queue = VecDeque::from([Tree::ROOT]);
        while let Some(d) = queue.pop_front() {
            let kids: Vec<NodeId> = self.tree.children(d).map(|(_, c)| c).collect();
            for c in kids {
                let ci = c as usize;
                if self.tree.get(c).is_dir() {
                    if parent[ci] != NodeId::MAX {
                        continue; // second entry for a directory: dropped below
                    }
                    parent[ci] = d;
                    self.links[d as usize] += 1;
                    queue.push_back(c);
                } else {
                    self.links[ci] += 1;
                }
                if self.ino_of[ci] == 0 {
                    if next == u32::MAX {
                        return Err(Ext4Error::TooManyInodes {
                            needed: u32::MAX as u64,
                            max: u32::MAX as u64,
                            size_mib: 0,
                        });
                    }
                    self.ino_of[ci] = next;
                    self.by_ino.push(Some(c));
                    next += 1;
                }
            }
        }
        for (i, l) in self.links.iter_mut().enumerate() {
            if self.tree.get(i as NodeId).is_dir() {
                *l += 2;
                if *l > MAX_LINKS {
                    *l = 1; // dir_nlink: "many"
                }
            } else if *l > MAX_LINKS {
                return Err(Ext4Error::TooManyLinks { ino: self.ino_of[i] });
            }
        }
        self.parent = parent;
        Ok(())
    }

    fn max_ino(&self) -> u32 {
        (self.by_ino.len() - 1) as u32
    }

    fn layout_dirs(&mut self) -> Result<()> {
        let mut emitted = vec![false; self.tree.len()];
        for ino in 1..self.by_ino.len() {
            let Some(id) = self.by_ino[ino] else { continue };
            if !self.tree.get(id).is_dir() {
                continue;
            }
            let mut entries = Vec::new();
            for (name, c) in self.tree.children(id) {
                let child = self.tree.get(c);
                if child.is_dir() {
                    if self.parent[c as usize] != id || emitted[c as usize] {
                        continue;
                    }
                    emitted[c as usize] = true;
                }
                entries.push(Entry {
                    name,
                    ino: self.ino_of[c as usize],
                    ftype: ftype(&child.kind),
                });
            }
            let parent_ino = self.ino_of[self.parent[id as usize] as usize];
            let seed = inode_seed(self.csum_seed, ino as u32, 0);
            let mut blocks = dir::build(ino as u32, parent_ino, &entries, &self.hash_seed, seed)
                .map_err(|e| match e {
                    Ext4Error::DirTooLarge { entries, .. } => {
                        Ext4Error::DirTooLarge { path: format!("inode {ino}"), entries }
                    }
                    e => e,
                })?;
            if ino as u32 == LOST_FOUND_INO {
                // mke2fs gives lost+found spare blocks so e2fsck never has to allocate.
                while blocks.blocks.len() < 4 && !blocks.indexed {
                    blocks.blocks.push(dir::empty_block(seed));
                }
            }
            self.dirs.push((ino as u32, id, blocks));
        }
        Ok(())
    }

    fn encode_xattrs(&mut self) -> Result<()> {
        for ino in 1..self.by_ino.len() {
            let Some(id) = self.by_ino[ino] else { continue };
            let attrs = &self.tree.get(id).meta.xattrs;
            if !attrs.is_empty() {
                self.xattrs.insert(ino as u32, xattr::encode(attrs)?);
            }
        }
        Ok(())
    }

    fn inodes_needed(&self) -> u64 {
        self.max_ino() as u64
    }

    fn geometry_for(&self, blocks: u64, inodes: u64) -> Result<Geometry> {
        let groups = blocks.div_ceil(BLOCKS_PER_GROUP);
        let ipg = inodes.div_ceil(groups).next_multiple_of(INODES_PER_BLOCK).max(INODES_PER_BLOCK);
        if ipg > BLOCKS_PER_GROUP || ipg * groups > u32::MAX as u64 {
            return Err(Ext4Error::TooManyInodes {
                needed: self.inodes_needed(),
                max: (BLOCKS_PER_GROUP * groups).min(u32::MAX as u64),
                size_mib: (blocks * BLOCK_SIZE) >> 20,
            });
        }
        let journal_blocks =
            if self.opts.journal { journal::default_blocks(blocks).max(1024) } else { 0 };
        Ok(Geometry { blocks, groups, ipg, gdt: gdt_blocks(groups), journal_blocks })
    }

    /// Blocks needed for everything but inode tables and bitmaps (an estimate: extent
    /// tree blocks of directories depend on where they land).
    fn other_meta_blocks(&self) -> u64 {
        let dirs: u64 = self.dirs.iter().map(|d| d.2.blocks.len() as u64 + 1).sum();
        let mut n = dirs;
        for ino in 1..self.by_ino.len() {
            let Some(id) = self.by_ino[ino] else { continue };
            match &self.tree.get(id).kind {
                NodeKind::File(f) => n += extent::tree_blocks(f.extents.len()) as u64,
                NodeKind::Symlink(t) if t.len() >= 60 => n += 1,
                _ => {}
            }
        }
        n + self.xattrs.values().filter(|e| e.block.is_some()).count() as u64
    }

    fn plan(&mut self) -> Result<(Geometry, Plan)> {
        let needed = self.inodes_needed();
        if let Some(blocks) = self.fixed_blocks {
            // mke2fs's inode ratio, or more if the content needs it.
            let ratio = blocks * BLOCK_SIZE / INODE_RATIO;
            let geo = self.geometry_for(blocks, needed.max(ratio))?;
            let mut alloc = self.alloc.clone();
            alloc.set_limit(blocks);
            return match self.try_plan(&geo, &mut alloc) {
                Some(p) => Ok((geo, p)),
                None => Err(Ext4Error::NoSpace {
                    what: "metadata (inode tables, directories)".into(),
                    size_mib: (blocks * BLOCK_SIZE) >> 20,
                }),
            };
        }
        // Automatic size: data written so far, metadata, plus 10% and 16 MiB of headroom.
        let inodes = needed + needed / 10 + 256;
        let base = self.alloc.next() + self.other_meta_blocks();
        let mut blocks = base + base / 10 + 4096;
        for _ in 0..64 {
            let geo = self.geometry_for(blocks, inodes)?;
            let tables = geo.groups * (2 + geo.ipg / INODES_PER_BLOCK);
            let want = (base + tables) + (base + tables) / 10 + 4096;
            let mut total = want.max(blocks);
            let rem = total % BLOCKS_PER_GROUP;
            let reserve = 1 + gdt_blocks(AUTO_MAX_GROUPS);
            if rem != 0 && rem < reserve + 256 {
                total += reserve + 256 - rem;
            }
            if total > AUTO_MAX_GROUPS * BLOCKS_PER_GROUP {
                return Err(Ext4Error::SizeTooLarge {
                    size: total * BLOCK_SIZE,
                    max: AUTO_MAX_GROUPS * BLOCKS_PER_GROUP * BLOCK_SIZE,
                });
            }
            let geo = self.geometry_for(total, inodes)?;
            let mut alloc = self.alloc.clone();
            alloc.set_limit(total);
            if total.div_ceil(BLOCKS_PER_GROUP) == blocks.div_ceil(BLOCKS_PER_GROUP) {
                if let Some(p) = self.try_plan(&geo, &mut alloc) {
                    return Ok((geo, p));
                }
                blocks = total + total / 10 + 4096;
            } else {
                blocks = total;
            }
        }
        Err(Ext4Error::NoSpace { what: "metadata".into(), size_mib: (blocks * BLOCK_SIZE) >> 20 })
    }

    fn try_plan(&self, geo: &Geometry, alloc: &mut Alloc) -> Option<Plan> {
        let itb = geo.ipg / INODES_PER_BLOCK;
        let mut p = Plan {
            block_bitmap: Vec::with_capacity(geo.groups as usize),
            inode_bitmap: Vec::with_capacity(geo.groups as usize),
            inode_table: Vec::with_capacity(geo.groups as usize),
            dir_extents: Vec::with_capacity(self.dirs.len()),
            dir_tree: Vec::with_capacity(self.dirs.len()),
            file_tree: HashMap::new(),
            symlink_block: HashMap::new(),
            xattr_block: HashMap::new(),
            journal_extents: Vec::new(),
            journal_tree: Vec::new(),
        };
        // Bitmaps of all groups together, then all inode tables (flex_bg style).
        for _ in 0..geo.groups {
            p.block_bitmap.push(alloc.block()?);
        }
        for _ in 0..geo.groups {
            p.inode_bitmap.push(alloc.block()?);
        }
        for _ in 0..geo.groups {
            p.inode_table.push(alloc.contiguous(itb)?);
        }
        if geo.journal_blocks > 0 {
            let runs = alloc.runs(geo.journal_blocks)?;
            p.journal_extents = runs_to_extents(&runs);
            p.journal_tree = take(alloc, extent::tree_blocks(p.journal_extents.len()))?;
        }
        for (_, _, d) in &self.dirs {
            let runs = alloc.runs(d.blocks.len() as u64)?;
            let ext = runs_to_extents(&runs);
            p.dir_tree.push(take(alloc, extent::tree_blocks(ext.len()))?);
            p.dir_extents.push(ext);
        }
        for ino in 1..self.by_ino.len() {
            let Some(id) = self.by_ino[ino] else { continue };
            let ino = ino as u32;
            match &self.tree.get(id).kind {
                NodeKind::File(f) => {
                    let n = extent::tree_blocks(f.extents.len());
                    if n > 0 {
                        p.file_tree.insert(ino, take(alloc, n)?);
                    }
                }
                NodeKind::Symlink(t) if t.len() >= 60 => {
                    p.symlink_block.insert(ino, alloc.block()?);
                }
                _ => {}
            }
            if self.xattrs.get(&ino).is_some_and(|e| e.block.is_some()) {
                p.xattr_block.insert(ino, alloc.block()?);
            }
        }
        if alloc.next() > geo.blocks {
            return None;
        }
        Some(p)
    }
}

fn take(alloc: &mut Alloc, n: usize) -> Option<Vec<u64>> {
    (0..n).map(|_| alloc.block()).collect()
}

fn set_bits(bitmap: &mut [u8], from: u64, to: u64) {
    for i in from..to {
        bitmap[(i / 8) as usize] |= 1 << (i % 8);
    }
}

impl Finisher {
    fn write(mut self, geo: &Geometry, p: &Plan) -> Result<Summary> {
        let mut used: Vec<(u64, u64)> = Vec::new();
        for g in 0..geo.groups {
            if has_super(g) {
                used.push((g * BLOCKS_PER_GROUP, 1 + geo.gdt));
            }
        }
        for &b in p.block_bitmap.iter().chain(&p.inode_bitmap) {
            used.push((b, 1));
        }
        let itb = geo.ipg / INODES_PER_BLOCK;
        for &t in &p.inode_table {
            used.push((t, itb));
        }

        // Directories.
        for (i, (ino, _, d)) in self.dirs.iter().enumerate() {
            let ext = &p.dir_extents[i];
            let mut blocks = d.blocks.iter();
            for e in ext {
                used.push((e.physical, e.len as u64));
                for k in 0..e.len as u64 {
                    if let Some(b) = blocks.next() {
                        self.out.put(e.physical + k, b)?;
                    }
                }
            }
            let t = extent::build(ext, &p.dir_tree[i], self.csum_seed, *ino);
            for (nr, b) in &t.blocks {
                used.push((*nr, 1));
                self.out.put(*nr, b)?;
            }
        }
        // Journal.
        if geo.journal_blocks > 0 {
            for e in &p.journal_extents {
                used.push((e.physical, e.len as u64));
            }
            let first = p.journal_extents[0].physical;
            self.out.put(first, &journal::superblock(geo.journal_blocks as u32, &self.uuid))?;
        }

        // Inode tables, group by group.
        let max_ino = self.max_ino() as u64;
        let mut dirs_per_group = vec![0u32; geo.groups as usize];
        let mut dir_index: HashMap<u32, usize> = HashMap::new();
        for (i, (ino, _, _)) in self.dirs.iter().enumerate() {
            dir_index.insert(*ino, i);
            dirs_per_group[((*ino as u64 - 1) / geo.ipg) as usize] += 1;
        }
        let mut sb_jnl_blocks = [0u32; 17];
        for g in 0..geo.groups {
            let first = g * geo.ipg + 1;
            if first > max_ino {
                break;
            }
            let last = max_ino.min((g + 1) * geo.ipg);
            let mut table =
                vec![0u8; ((last - first + 1) as usize * INODE_SIZE).next_multiple_of(BS)];
            for ino in first..=last {
                let ino32 = ino as u32;
                let inode = if ino32 == JOURNAL_INO && geo.journal_blocks > 0 {
                    let t =
                        extent::build(&p.journal_extents, &p.journal_tree, self.csum_seed, ino32);
                    for (nr, b) in &t.blocks {
                        used.push((*nr, 1));
                        self.out.put(*nr, b)?;
                    }
                    for (i, w) in t.root.chunks_exact(4).enumerate() {
                        sb_jnl_blocks[i] = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
                    }
                    let size = geo.journal_blocks * BLOCK_SIZE;
                    sb_jnl_blocks[15] = (size >> 32) as u32;
                    sb_jnl_blocks[16] = size as u32;
                    let now = (self.now, 0);
                    Some(Inode {
                        mode: inode::S_IFREG | 0o600,
                        size,
                        atime: now,
                        ctime: now,
                        mtime: now,
                        crtime: now,
                        links_count: 1,
                        blocks_512: (geo.journal_blocks + p.journal_tree.len() as u64) * 8,
                        flags: inode::FLAG_EXTENTS,
                        block: t.root,
                        ..Default::default()
                    })
                } else {
                    match self.by_ino.get(ino as usize).copied().flatten() {
                        Some(id) => Some(self.make_inode(ino32, id, p, &dir_index, &mut used)?),
                        None => None,
                    }
                };
                if let Some(inode) = inode {
                    let off = (ino - first) as usize * INODE_SIZE;
                    table[off..off + INODE_SIZE]
                        .copy_from_slice(&inode.encode(self.csum_seed, ino32));
                }
            }
            let start = p.inode_table[g as usize];
            for (i, chunk) in table.chunks(BS).enumerate() {
                self.out.put(start + i as u64, chunk)?;
            }
        }

        // Bitmaps and group descriptors.
        used.sort_unstable();
        let mut descs = Vec::with_capacity(geo.groups as usize);
        let mut free_blocks_total = 0u64;
        let mut ui = 0usize;
        for g in 0..geo.groups {
            let gstart = g * BLOCKS_PER_GROUP;
            let gend = (gstart + BLOCKS_PER_GROUP).min(geo.blocks);
            let mut bm = vec![0u8; BS];
            while ui < used.len() && used[ui].0 + used[ui].1 <= gstart {
                ui += 1;
            }
            let mut k = ui;
            while k < used.len() && used[k].0 < gend {
                let (s, l) = used[k];
                let from = s.max(gstart);
                let to = (s + l).min(gend);
                if from < to {
                    set_bits(&mut bm, from - gstart, to - gstart);
                }
                k += 1;
            }
            let used_bits: u64 = bm.iter().map(|b| b.count_ones() as u64).sum();
            let free = (gend - gstart) - used_bits;
            free_blocks_total += free;
            set_bits(&mut bm, gend - gstart, BLOCKS_PER_GROUP);
            let bb_csum = crc32c(self.csum_seed, &bm);
            self.out.put(p.block_bitmap[g as usize], &bm)?;

            let first = g * geo.ipg;
            let used_inodes = max_ino.saturating_sub(first).min(geo.ipg);
            let mut im = vec![0u8; BS];
            set_bits(&mut im, 0, used_inodes);
            set_bits(&mut im, geo.ipg, BLOCKS_PER_GROUP);
            let ib_csum = crc32c(self.csum_seed, &im[..(geo.ipg / 8) as usize]);
            self.out.put(p.inode_bitmap[g as usize], &im)?;

            descs.push(GroupDesc {
                block_bitmap: p.block_bitmap[g as usize],
                inode_bitmap: p.inode_bitmap[g as usize],
                inode_table: p.inode_table[g as usize],
                free_blocks_count: free as u32,
                free_inodes_count: (geo.ipg - used_inodes) as u32,
                used_dirs_count: dirs_per_group[g as usize],
                flags: BG_INODE_ZEROED,
                block_bitmap_csum: bb_csum,
                inode_bitmap_csum: ib_csum,
                itable_unused: (geo.ipg - used_inodes) as u32,
            });
        }
        let mut gdt = vec![0u8; geo.gdt as usize * BS];
        for (g, d) in descs.iter().enumerate() {
            gdt[g * 64..g * 64 + 64].copy_from_slice(&d.encode(self.csum_seed, g as u32));
        }

        let journal = geo.journal_blocks > 0;
        let inodes_count = geo.ipg * geo.groups;
        let mut sb = Superblock {
            inodes_count: inodes_count as u32,
            blocks_count: geo.blocks,
            r_blocks_count: 0,
            free_blocks_count: free_blocks_total,
            free_inodes_count: (inodes_count - max_ino) as u32,
            first_data_block: 0,
            log_block_size: 2,
            blocks_per_group: BLOCKS_PER_GROUP as u32,
            inodes_per_group: geo.ipg as u32,
            mtime: 0,
            wtime: self.now as u32,
            max_mnt_count: 0xFFFF,
            state: 1,
            errors: 1,
            lastcheck: self.now as u32,
            rev_level: 1,
            first_ino: FIRST_INO,
            inode_size: INODE_SIZE as u16,
            block_group_nr: 0,
            feature_compat: COMPAT_EXT_ATTR
                | COMPAT_DIR_INDEX
                | if journal { COMPAT_HAS_JOURNAL } else { 0 },
            feature_incompat: INCOMPAT_FILETYPE
                | INCOMPAT_EXTENTS
                | INCOMPAT_64BIT
                | INCOMPAT_FLEX_BG,
            feature_ro_compat: RO_COMPAT_SPARSE_SUPER
                | RO_COMPAT_LARGE_FILE
                | RO_COMPAT_HUGE_FILE
                | RO_COMPAT_DIR_NLINK
                | RO_COMPAT_EXTRA_ISIZE
                | RO_COMPAT_METADATA_CSUM,
            uuid: self.uuid,
            volume_name: [0; 16],
            journal_inum: if journal { JOURNAL_INO } else { 0 },
            hash_seed: self.hash_seed,
            def_hash_version: crate::htree::HASH_HALF_MD4,
            jnl_backup_type: if journal { 1 } else { 0 },
            desc_size: 64,
            default_mount_opts: 0x000C, // user_xattr, acl
            mkfs_time: self.now as u32,
            jnl_blocks: sb_jnl_blocks,
            min_extra_isize: inode::EXTRA_ISIZE,
            want_extra_isize: inode::EXTRA_ISIZE,
            flags: FLAGS_UNSIGNED_HASH,
            log_groups_per_flex: 4,
            checksum_type: 1,
        };
        for g in 0..geo.groups {
            if !has_super(g) {
                continue;
            }
            sb.block_group_nr = g as u16;
            let start = g * BLOCKS_PER_GROUP;
            let mut first = vec![0u8; BS];
            let off = if g == 0 { 1024 } else { 0 };
            first[off..off + 1024].copy_from_slice(&sb.encode());
            self.out.put(start, &first)?;
            self.out.put(start + 1, &gdt)?;
        }
        self.out.flush()?;
        self.out.file.set_len(geo.blocks * BLOCK_SIZE).map_err(io_err("resize"))?;
        Ok(Summary {
            size_bytes: geo.blocks * BLOCK_SIZE,
            blocks: geo.blocks,
            free_blocks: free_blocks_total,
            inodes: inodes_count,
            free_inodes: inodes_count - max_ino,
        })
    }

    fn make_inode(
        &mut self,
        ino: u32,
        id: NodeId,
        p: &Plan,
        dir_index: &HashMap<u32, usize>,
        used: &mut Vec<(u64, u64)>,
    ) -> Result<Inode> {
        let node = self.tree.get(id);
        let m = &node.meta;
        let t = |ts: Timestamp| (ts.secs, ts.nsec);
        let mut inode = Inode {
            mode: m.mode & 0o7777,
            uid: m.uid,
            gid: m.gid,
            atime: t(m.atime),
            ctime: t(m.mtime),
            mtime: t(m.mtime),
            crtime: t(m.mtime),
            links_count: self.links[id as usize] as u16,
            ..Default::default()
        };
        let mut blocks = 0u64;
        match &node.kind {
            NodeKind::Dir(_) => {
                let i = dir_index[&ino];
                let ext = &p.dir_extents[i];
                let t = extent::build(ext, &p.dir_tree[i], self.csum_seed, ino);
                inode.mode |= inode::S_IFDIR;
                inode.size = self.dirs[i].2.blocks.len() as u64 * BLOCK_SIZE;
                inode.flags = inode::FLAG_EXTENTS;
                if self.dirs[i].2.indexed {
                    inode.flags |= inode::FLAG_INDEX;
                }
                inode.block = t.root;
                blocks = extent::mapped_blocks(ext) + p.dir_tree[i].len() as u64;
            }
            NodeKind::File(f) => {
                inode.mode |= inode::S_IFREG;
                inode.size = f.size;
                inode.flags = inode::FLAG_EXTENTS;
                let tree_nrs = p.file_tree.get(&ino).map(|v| &v[..]).unwrap_or(&[]);
                let t = extent::build(&f.extents, tree_nrs, self.csum_seed, ino);
                for e in &f.extents {
                    used.push((e.physical, e.len as u64));
                }
                for (nr, b) in &t.blocks {
                    used.push((*nr, 1));
                    self.out.put(*nr, b)?;
                }
                inode.block = t.root;
                blocks = f.allocated_blocks() + tree_nrs.len() as u64;
            }
            NodeKind::Symlink(target) => {
                if target.is_empty() || target.len() >= BS || target.contains(&0) {
                    return Err(Ext4Error::InvalidSymlink {
                        reason: "targets must be 1 to 4095 bytes without NUL",
                    });
                }
                inode.mode |= inode::S_IFLNK;
                inode.size = target.len() as u64;
                if target.len() < 60 {
                    inode.block[..target.len()].copy_from_slice(target);
                } else {
                    let nr = p.symlink_block[&ino];
                    let mut b = vec![0u8; BS];
                    b[..target.len()].copy_from_slice(target);
                    self.out.put(nr, &b)?;
                    used.push((nr, 1));
                    let t = extent::build(
                        &[Extent { logical: 0, physical: nr, len: 1 }],
                        &[],
                        self.csum_seed,
                        ino,
                    );
                    inode.flags = inode::FLAG_EXTENTS;
                    inode.block = t.root;
                    blocks = 1;
                }
            }
            NodeKind::CharDev(d) | NodeKind::BlockDev(d) => {
                inode.mode |= if matches!(node.kind, NodeKind::CharDev(_)) {
                    inode::S_IFCHR
                } else {
                    inode::S_IFBLK
                };
                if d.major < 256 && d.minor < 256 {
                    let old = (d.major << 8) | d.minor;
                    inode.block[0..4].copy_from_slice(&old.to_le_bytes());
                } else {
                    let new = (d.minor & 0xFF) | (d.major << 8) | ((d.minor & !0xFF) << 12);
                    inode.block[4..8].copy_from_slice(&new.to_le_bytes());
                }
            }
            NodeKind::Fifo => inode.mode |= inode::S_IFIFO,
            NodeKind::Socket => inode.mode |= inode::S_IFSOCK,
        }
        if let Some(enc) = self.xattrs.get_mut(&ino) {
            inode.ibody_xattrs = std::mem::take(&mut enc.ibody);
            if let Some(mut b) = enc.block.take() {
                let nr = p.xattr_block[&ino];
                xattr::finish_block(&mut b, self.csum_seed, nr);
                self.out.put(nr, &b)?;
                used.push((nr, 1));
                inode.file_acl = nr;
                blocks += 1;
            }
        }
        inode.blocks_512 = blocks * (BLOCK_SIZE / 512);
        Ok(inode)
    }
}
