//! Empty journaled filesystems of many sizes, and files larger than 4 GiB with
//! multi-level extent trees: all must pass `e2fsck -fn`; the root-only parts mount them
//! (read-write for the empty ones) and fail loudly when not root.

use std::io::Read;
use std::path::Path;
use std::process::Command;

use vessel_ext4::reader::Reader;
use vessel_ext4::*;

fn e2fsck(path: &Path) {
    let out = Command::new("/usr/sbin/e2fsck")
        .arg("-fn")
        .arg(path)
        .output()
        .expect("e2fsck must be installed");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "e2fsck -fn failed:\n{text}");
}

fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next());
    assert_eq!(uid, Some("0"), "this test mounts images and must run as root (it does in CI)");
}

fn run(cmd: &str, args: &[&str]) {
    let st = Command::new(cmd).args(args).status().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(st.success(), "{cmd} {args:?} failed");
}

#[test]
fn empty_filesystems_of_many_sizes_pass_e2fsck() {
    let dir = tempfile::tempdir().unwrap();
    for size in
        [8u64 << 20, 64 << 20, (128 << 20) + (300 << 12), 1 << 30, 6 << 30, (20 << 30) + 12345]
    {
        let p = dir.path().join(format!("fs-{size}"));
        let s = format_empty(&p, size, None).unwrap();
        assert!(s.size_bytes <= size && s.size_bytes > size - (2 << 20), "{size}: {s:?}");
        e2fsck(&p);
        let r = Reader::open(&p).unwrap();
        let names: Vec<Vec<u8>> = r.walk().unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec![b"lost+found".to_vec()]);
        assert!(r.sb.journal_inum == 8);
        // Sparse: only metadata takes space on the host.
        use std::os::unix::fs::MetadataExt;
        let used = std::fs::metadata(&p).unwrap().blocks() * 512;
        assert!(used < 80 << 20, "{size}: {used} bytes allocated");
    }
    assert!(format_empty(&dir.path().join("tiny"), 1 << 20, None).is_err());
}

#[test]
fn empty_filesystem_mounts_read_write() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("rw.img");
    format_empty(&img, 256 << 20, None).unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    run("mount", &["-o", "loop", img.to_str().unwrap(), mnt.to_str().unwrap()]);
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(mnt.join("a/b/c"))?;
        std::fs::write(mnt.join("a/b/c/file"), vec![7u8; 5 << 20])?;
        for i in 0..2000 {
            std::fs::write(mnt.join(format!("a/{i}")), b"x")?;
        }
        std::fs::remove_file(mnt.join("a/7"))?;
        Ok(())
    };
    let res = write();
    run("umount", &[mnt.to_str().unwrap()]);
    res.unwrap();
    e2fsck(&img);
}

/// Yields `size` bytes: every other block of the first `frag` blocks holds data (so the
/// file needs many extents), then zeros, then a marker block at the very end.
struct Pattern {
    pos: u64,
    size: u64,
    frag: u64,
}

impl Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.size - self.pos).min(1 << 20) as usize;
        if n == 0 {
            return Ok(0);
        }
        buf[..n].fill(0);
        let last = (self.size - 1) / 4096;
        let (start, end) = (self.pos, self.pos + n as u64);
        for blk in start / 4096..=(end - 1) / 4096 {
            if (blk < self.frag && blk % 2 == 0) || blk == last {
                let from = (blk * 4096).max(start);
                let to = ((blk + 1) * 4096).min(end);
                buf[(from - start) as usize..(to - start) as usize].fill((blk % 251) as u8 | 1);
            }
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[test]
fn file_over_4gib_with_deep_extent_tree() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("big.img");
    let mut b =
        Builder::new(std::fs::File::create(&img).unwrap(), BuildOptions::default()).unwrap();
    let size = (4u64 << 30) + 12345;
    // 1400 data blocks separated by holes: more extents than one index level holds.
    let frag = 2800;
    let data = b.write_file(&mut Pattern { pos: 0, size, frag }, size).unwrap();
    assert_eq!(data.allocated_blocks(), frag / 2 + 1);
    let meta = Metadata { mode: 0o644, ..Default::default() };
    let id = b.tree_mut().add(Node { meta, kind: NodeKind::File(data), tag: 0 });
    b.tree_mut().insert(Tree::ROOT, b"big", id).unwrap();
    b.finish().unwrap();
    e2fsck(&img);
    let r = Reader::open(&img).unwrap();
    let st = r.walk().unwrap().into_iter().find(|(n, _)| n == b"big").unwrap().1;
    assert_eq!(st.size, size);
}

#[test]
fn huge_directory_gets_two_level_htree() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("dir.img");
    let mut b =
        Builder::new(std::fs::File::create(&img).unwrap(), BuildOptions::default()).unwrap();
    let d = b.tree_mut().add(Node {
        meta: Metadata { mode: 0o755, ..Default::default() },
        kind: NodeKind::Dir(Default::default()),
        tag: 0,
    });
    b.tree_mut().insert(Tree::ROOT, b"d", d).unwrap();
    let f = b.tree_mut().add(Node {
        meta: Metadata { mode: 0o644, ..Default::default() },
        kind: NodeKind::Fifo,
        tag: 0,
    });
    // ~64 bytes per entry, 63 per block: about 950 leaf blocks, more than one index
    // block (507 entries) can address.
    let n = 60_000;
    for i in 0..n {
        let name = format!("{i:08}-{}", "n".repeat(48));
        b.tree_mut().insert(d, name.as_bytes(), f).unwrap();
    }
    b.finish().unwrap();
    e2fsck(&img);
    let r = Reader::open(&img).unwrap();
    let ents =
        r.read_dir(r.walk().unwrap().iter().find(|(p, _)| p == b"d").unwrap().1.ino).unwrap();
    assert_eq!(ents.len(), n);
}
