//! Writing a file tree as a tar stream, as `docker cp` sends it: one top-level entry named
//! after the copied path, directories recursively, symlinks kept as symlinks, and modes,
//! owners and modification times as they are.

use crate::ArchiveError;
use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use tar::{EntryType, Header};

/// Writes `path` (not followed if it is a symlink) to `writer` as a tar archive. Its entry is
/// named after the path's last component, or `.` for `/` and for `dir/.` (docker's "the
/// directory's contents"). Sockets are left out; so are the contents of kernel filesystems
/// such as /proc, whose files claim sizes they do not have.
pub fn write_path<W: Write>(path: &Path, writer: W) -> Result<(), ArchiveError> {
    let metadata = fs::symlink_metadata(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => ArchiveError::NotFound { path: path.to_path_buf() },
        _ => ArchiveError::Archive { path: path.to_path_buf(), source },
    })?;
    let mut writer = Writer { builder: tar::Builder::new(writer), links: HashMap::new() };
    // Depth-first with an explicit stack: a deep tree must not exhaust ours.
    let mut pending = vec![(path.to_path_buf(), top_name(path), metadata)];
    while let Some((path, name, metadata)) = pending.pop() {
        let children = writer.add(&path, &name, &metadata)?;
        pending.extend(children.into_iter().rev());
    }
    let mut writer = writer.builder.into_inner().map_err(ArchiveError::Finish)?;
    writer.flush().map_err(ArchiveError::Finish)
}

/// The name of the archive's top-level entry.
fn top_name(path: &Path) -> PathBuf {
    let bytes = path.as_os_str().as_bytes();
    if bytes == b"." || bytes.ends_with(b"/.") {
        return PathBuf::from(".");
    }
    path.file_name().map_or_else(|| PathBuf::from("."), PathBuf::from)
}

struct Writer<W: Write> {
    builder: tar::Builder<W>,
    /// Files with several links already written, by (device, inode): later names become
    /// hard links to the first.
    links: HashMap<(u64, u64), PathBuf>,
}

type Child = (PathBuf, PathBuf, Metadata);

impl<W: Write> Writer<W> {
    /// Appends one entry; returns a directory's children, sorted by name.
    fn add(
        &mut self,
        path: &Path,
        name: &Path,
        metadata: &Metadata,
    ) -> Result<Vec<Child>, ArchiveError> {
        let fail = |source| ArchiveError::Archive { path: path.to_path_buf(), source };
        let file_type = metadata.file_type();
        let mut header = Header::new_gnu();
        header.set_mode(metadata.mode() & 0o7777);
        header.set_uid(metadata.uid().into());
        header.set_gid(metadata.gid().into());
        header.set_mtime(u64::try_from(metadata.mtime()).unwrap_or(0));
        header.set_size(0);
        if file_type.is_dir() {
            header.set_entry_type(EntryType::Directory);
            self.builder.append_data(&mut header, name, io::empty()).map_err(fail)?;
            if is_kernel_filesystem(path) {
                return Ok(Vec::new());
            }
            let mut children = Vec::new();
            for entry in fs::read_dir(path).map_err(fail)? {
                let entry = entry.map_err(fail)?;
                // DirEntry::metadata does not follow symlinks.
                let metadata = entry.metadata().map_err(fail)?;
                children.push((entry.path(), name.join(entry.file_name()), metadata));
            }
            children.sort_by(|a, b| a.0.cmp(&b.0));
            return Ok(children);
        }
        if file_type.is_file() {
            if metadata.nlink() > 1 {
                let key = (metadata.dev(), metadata.ino());
                if let Some(first) = self.links.get(&key) {
                    header.set_entry_type(EntryType::Link);
                    let first = first.clone();
                    self.builder.append_link(&mut header, name, first).map_err(fail)?;
                    return Ok(Vec::new());
                }
                self.links.insert(key, name.to_path_buf());
            }
            // O_NOFOLLOW: a file swapped for a symlink meanwhile is not followed.
            let file = fs::OpenOptions::new()
                .read(true)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(path)
                .map_err(fail)?;
            header.set_entry_type(EntryType::Regular);
            header.set_size(metadata.len());
            let data = Exact { file, left: metadata.len() };
            self.builder.append_data(&mut header, name, data).map_err(fail)?;
        } else if file_type.is_symlink() {
            let target = fs::read_link(path).map_err(fail)?;
            header.set_entry_type(EntryType::Symlink);
            self.builder.append_link(&mut header, name, target).map_err(fail)?;
        } else if file_type.is_fifo() {
            header.set_entry_type(EntryType::Fifo);
            self.builder.append_data(&mut header, name, io::empty()).map_err(fail)?;
        } else if file_type.is_char_device() || file_type.is_block_device() {
            let kind = if file_type.is_char_device() { EntryType::Char } else { EntryType::Block };
            header.set_entry_type(kind);
            let rdev = metadata.rdev();
            header.set_device_major(rustix::fs::major(rdev)).map_err(fail)?;
            header.set_device_minor(rustix::fs::minor(rdev)).map_err(fail)?;
            self.builder.append_data(&mut header, name, io::empty()).map_err(fail)?;
        }
        // Sockets have no tar form.
        Ok(Vec::new())
    }
}

/// Exactly `left` bytes of a file: a file that shrinks while it is read is padded with
/// zeros and one that grows is cut, so the entry always matches its header's size.
struct Exact {
    file: File,
    left: u64,
}

impl Read for Exact {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = usize::try_from(self.left).unwrap_or(usize::MAX).min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = match self.file.read(&mut buf[..want])? {
            0 => {
                buf[..want].fill(0);
                want
            }
            n => n,
        };
        self.left -= n as u64;
        Ok(n)
    }
}

/// Filesystems whose files are the kernel's views (/proc, /sys, cgroups): their sizes are
/// made up and some never end, so their contents are not archived.
fn is_kernel_filesystem(path: &Path) -> bool {
    const MAGIC: &[u64] = &[
        0x9fa0,      // proc
        0x6265_6572, // sysfs
        0x6367_7270, // cgroup2
        0x0027_e0eb, // cgroup
        0x1cd1,      // devpts
        0x7363_6673, // securityfs
        0x6462_6720, // debugfs
        0x7472_6163, // tracefs
        0xcafe_4a11, // bpf
    ];
    match rustix::fs::statfs(path) {
        #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
        Ok(stats) => MAGIC.contains(&(stats.f_type as u64)),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn names(archive: &[u8]) -> Vec<(String, EntryType)> {
        let mut archive = tar::Archive::new(archive);
        archive
            .entries()
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                (name, entry.header().entry_type())
            })
            .collect()
    }

    #[test]
    fn a_tree_is_named_after_its_last_component() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("sub")).unwrap();
        fs::write(tree.join("sub/file"), b"data").unwrap();
        fs::set_permissions(tree.join("sub/file"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::hard_link(tree.join("sub/file"), tree.join("again")).unwrap();
        symlink("/etc/passwd", tree.join("link")).unwrap();
        let mut out = Vec::new();
        write_path(&tree, &mut out).unwrap();
        assert_eq!(
            names(&out),
            [
                ("tree".to_string(), EntryType::Directory),
                ("tree/again".to_string(), EntryType::Regular),
                ("tree/link".to_string(), EntryType::Symlink),
                ("tree/sub".to_string(), EntryType::Directory),
                ("tree/sub/file".to_string(), EntryType::Link),
            ]
        );
        let mut archive = tar::Archive::new(&out[..]);
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            if entry.header().entry_type() == EntryType::Symlink {
                assert_eq!(&*entry.link_name_bytes().unwrap(), b"/etc/passwd");
            }
            if entry.header().entry_type() == EntryType::Regular {
                assert_eq!(entry.header().mode().unwrap(), 0o640);
                assert_eq!(entry.header().size().unwrap(), 4);
            }
        }

        let mut contents = Vec::new();
        write_path(&tree.join("sub/."), &mut contents).unwrap();
        let listed: Vec<String> = names(&contents).into_iter().map(|(name, _)| name).collect();
        assert_eq!(listed, [".", "file"]);
    }

    #[test]
    fn a_missing_path_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_path(&dir.path().join("missing"), Vec::new()).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::NotFound);
    }

    #[test]
    fn a_shrunk_file_is_padded_to_its_stated_size() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), b"abc").unwrap();
        let file = File::open(dir.path().join("f")).unwrap();
        let mut data = Vec::new();
        Exact { file, left: 5 }.read_to_end(&mut data).unwrap();
        assert_eq!(data, b"abc\0\0");
    }
}
