//! Extracting an archive at a destination with docker cp's rules:
//!
//! - the destination is an existing directory: the archive is extracted into it;
//! - it does not exist but its parent directory does: the archive's single top-level entry
//!   is created under the destination's name;
//! - it is an existing file: a single-file archive replaces it; a directory cannot;
//! - anything else (a missing parent, `dir/` naming a file) is an error.
//!
//! Every entry is created relative to a directory descriptor, walking one component at a
//! time without following symlinks, so no entry can reach outside the destination: not by
//! an absolute name or `..` (refused), not through a symlink the archive made earlier or one
//! that was there before (refused), not by a hard link to a file the archive did not create
//! (refused). Device nodes are refused too.

use crate::{name, ArchiveError};
use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid};
use rustix::io::Errno;
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use tar::EntryType;

#[derive(Debug, Clone, Default)]
pub struct ExtractOptions {
    /// Give entries the owners the archive names (`docker cp -a`); otherwise they belong to
    /// whoever extracts.
    pub preserve_owner: bool,
    /// Keep setuid and setgid bits. Off for archives from a guest, whose programs must not
    /// become privileged ones on the host.
    pub keep_setid: bool,
}

/// Extracts the tar stream `reader` at `dest` (see the module's rules), then reads the
/// stream to its end so that its writer can finish.
pub fn extract<R: Read>(
    reader: R,
    dest: &Path,
    options: &ExtractOptions,
) -> Result<(), ArchiveError> {
    let target = Target::resolve(dest)?;
    let mut extractor =
        Extractor { target, options, top: None, files: HashSet::new(), dirs: Vec::new() };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(ArchiveError::Read)? {
        let mut entry = entry.map_err(ArchiveError::Read)?;
        extractor.add(&mut entry)?;
    }
    extractor.finish_dirs()?;
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(ArchiveError::Read)?;
    Ok(())
}

/// Where entries go, decided from the destination before the first entry is read.
#[derive(Debug)]
struct Target {
    /// The directory every entry is created in (the destination or its parent).
    dir: OwnedFd,
    mode: TargetMode,
    dest: PathBuf,
}

#[derive(Debug, PartialEq, Eq)]
enum TargetMode {
    /// Entries keep their names inside the destination directory.
    Into,
    /// The archive's top-level entry takes this name (the destination's).
    Rename(OsString),
    /// As Rename, over an existing file: only a single non-directory entry fits.
    Replace(OsString),
}

impl Target {
    /// Resolves `dest`, which the caller chose: symlinks in it are followed (docker does);
    /// nothing below it is.
    fn resolve(dest: &Path) -> Result<Target, ArchiveError> {
        let bytes = dest.as_os_str().as_bytes();
        let wants_dir = bytes == b"." || bytes.ends_with(b"/") || bytes.ends_with(b"/.");
        let io_err = |source| ArchiveError::Destination { path: dest.to_path_buf(), source };
        let missing = || ArchiveError::DestinationMissing { path: dest.to_path_buf() };
        let not_dir = || ArchiveError::NotADirectory { path: dest.to_path_buf() };
        match std::fs::metadata(dest) {
            Ok(metadata) if metadata.is_dir() => {
                let dir = open_dir(dest).map_err(io_err)?;
                Ok(Target { dir, mode: TargetMode::Into, dest: dest.to_path_buf() })
            }
            Ok(_) if wants_dir => Err(not_dir()),
            Ok(_) => {
                let (parent, name) = split(dest).ok_or_else(not_dir)?;
                let dir = open_dir(&parent).map_err(io_err)?;
                Ok(Target { dir, mode: TargetMode::Replace(name), dest: dest.to_path_buf() })
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                if wants_dir {
                    return Err(missing());
                }
                let (parent, name) = split(dest).ok_or_else(missing)?;
                let dir = match std::fs::metadata(&parent) {
                    Ok(metadata) if metadata.is_dir() => open_dir(&parent).map_err(io_err)?,
                    Ok(_) => return Err(ArchiveError::NotADirectory { path: parent }),
                    Err(err) if err.kind() == io::ErrorKind::NotFound => return Err(missing()),
                    Err(err) if err.raw_os_error() == Some(enotdir()) => return Err(not_dir()),
                    Err(err) => return Err(io_err(err)),
                };
                Ok(Target { dir, mode: TargetMode::Rename(name), dest: dest.to_path_buf() })
            }
            // A file where a directory should be, on the way.
            Err(err) if err.raw_os_error() == Some(enotdir()) => Err(not_dir()),
            Err(err) => Err(io_err(err)),
        }
    }
}

fn enotdir() -> i32 {
    Errno::NOTDIR.raw_os_error()
}

/// A path's parent (`.` when it has none) and last component.
fn split(path: &Path) -> Option<(PathBuf, OsString)> {
    let name = path.file_name()?.to_os_string();
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Some((parent, name))
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    Ok(rustix::fs::open(path, flags, Mode::empty())?)
}

/// One component below `dir`, which must be a directory and not a symlink.
fn open_dir_at(dir: impl AsFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(dir, name, flags, Mode::empty())
}

struct Extractor<'a> {
    target: Target,
    options: &'a ExtractOptions,
    /// The archive's top-level component, set by its first entry (`Some(None)`: the first
    /// entry is `.`, so the archive holds a directory's contents).
    top: Option<Option<OsString>>,
    /// Regular files this archive created, by path below the target directory: the only
    /// things a hard link may name.
    files: HashSet<Vec<OsString>>,
    /// Directories, whose modes and times are set last (a read-only one must still take
    /// its contents, and adding them changes its time).
    dirs: Vec<(Vec<OsString>, Metadata)>,
}

/// The metadata an entry asks for.
#[derive(Debug, Clone, Copy)]
struct Metadata {
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
    mtime: i64,
}

impl Extractor<'_> {
    fn add<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ArchiveError> {
        let kind = entry.header().entry_type();
        let display = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let refuse = |reason| ArchiveError::Refused { name: display.clone(), reason };
        match kind {
            EntryType::XGlobalHeader => return Ok(()),
            EntryType::Char | EntryType::Block => {
                return Err(refuse("device nodes are not copied"));
            }
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::GNUSparse
            | EntryType::Directory
            | EntryType::Symlink
            | EntryType::Link
            | EntryType::Fifo => {}
            _ => return Err(refuse("unsupported entry type")),
        }
        let parts = name::components(&entry.path_bytes()).map_err(refuse)?;
        let Some(path) = self.map(&display, parts, kind)? else { return Ok(()) };
        let metadata = self.metadata(entry.header()).map_err(ArchiveError::Read)?;
        let (last, parents) = path.split_last().ok_or_else(|| refuse("the name is empty"))?;
        let dir = self.open_parents(&display, parents, true)?;
        let fail = |source: io::Error| ArchiveError::Extract { name: display.clone(), source };
        let errno = |errno: Errno| fail(errno.into());
        // Whatever was at this path is replaced: it is no hard link target anymore.
        self.files.remove(&path);
        match kind {
            EntryType::Directory => {
                match rustix::fs::statat(&dir, last, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => {}
                    Ok(_) => {
                        rustix::fs::unlinkat(&dir, last, AtFlags::empty()).map_err(errno)?;
                        rustix::fs::mkdirat(&dir, last, Mode::from_raw_mode(0o700))
                            .map_err(errno)?;
                    }
                    Err(Errno::NOENT) => {
                        rustix::fs::mkdirat(&dir, last, Mode::from_raw_mode(0o700))
                            .map_err(errno)?;
                    }
                    Err(err) => return Err(errno(err)),
                }
                self.dirs.push((path, metadata));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.remove_existing(&display, &dir, last)?;
                let flags = OFlags::WRONLY
                    | OFlags::CREATE
                    | OFlags::EXCL
                    | OFlags::NOFOLLOW
                    | OFlags::CLOEXEC;
                let fd = rustix::fs::openat(&dir, last, flags, Mode::from_raw_mode(0o600))
                    .map_err(errno)?;
                let mut file = File::from(fd);
                io::copy(entry, &mut file).map_err(fail)?;
                self.apply_to_fd(&file, metadata).map_err(errno)?;
                self.files.insert(path);
            }
            EntryType::Symlink => {
                let target = entry.link_name_bytes().ok_or_else(|| refuse("no link target"))?;
                if target.is_empty() || target.contains(&0) {
                    return Err(refuse("bad link target"));
                }
                self.remove_existing(&display, &dir, last)?;
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &dir, last).map_err(errno)?;
                self.apply_at(&dir, last, metadata, false).map_err(errno)?;
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().ok_or_else(|| refuse("no link target"))?;
                let parts = name::components(&target).map_err(refuse)?;
                let source = match self.map(&display, parts, kind)? {
                    Some(source) if self.files.contains(&source) => source,
                    _ => return Err(refuse("hard links may only name files of the archive")),
                };
                let (source_last, source_parents) =
                    source.split_last().ok_or_else(|| refuse("bad link target"))?;
                let source_dir = self.open_parents(&display, source_parents, false)?;
                self.remove_existing(&display, &dir, last)?;
                rustix::fs::linkat(&source_dir, source_last, &dir, last, AtFlags::empty())
                    .map_err(errno)?;
                self.files.insert(path);
            }
            EntryType::Fifo => {
                self.remove_existing(&display, &dir, last)?;
                let mode = Mode::from_raw_mode(0o600);
                rustix::fs::mknodat(&dir, last, FileType::Fifo, mode, 0).map_err(errno)?;
                self.apply_at(&dir, last, metadata, true).map_err(errno)?;
            }
            _ => return Err(refuse("unsupported entry type")),
        }
        Ok(())
    }

    /// Where an entry goes below the target directory, by the destination's rules; None for
    /// the `.` entry of an archive extracted into a directory (the directory itself).
    fn map(
        &mut self,
        display: &str,
        parts: Vec<OsString>,
        kind: EntryType,
    ) -> Result<Option<Vec<OsString>>, ArchiveError> {
        let name = match &self.target.mode {
            TargetMode::Into => {
                if parts.is_empty() {
                    if kind != EntryType::Directory {
                        return Err(ArchiveError::Refused {
                            name: display.to_string(),
                            reason: "`.` must be a directory",
                        });
                    }
                    return Ok(None);
                }
                return Ok(Some(parts));
            }
            TargetMode::Rename(name) | TargetMode::Replace(name) => name.clone(),
        };
        let top = self.top.get_or_insert_with(|| parts.first().cloned());
        let rest = match top {
            None => &parts[..],
            Some(top) if parts.first() == Some(top) => &parts[1..],
            Some(top) => {
                return Err(ArchiveError::SeveralTopLevel {
                    first: top.to_string_lossy().into_owned(),
                    other: display.to_string(),
                })
            }
        };
        let onto_file = matches!(self.target.mode, TargetMode::Replace(_));
        if onto_file && (kind == EntryType::Directory || !rest.is_empty()) {
            return Err(ArchiveError::DirectoryOntoFile { path: self.target.dest.clone() });
        }
        let mut path = Vec::with_capacity(rest.len() + 1);
        path.push(name);
        path.extend(rest.iter().cloned());
        Ok(Some(path))
    }

    /// Opens the directory `parents` names below the target, one component at a time and
    /// never through a symlink; missing ones are made when `create` is set.
    fn open_parents(
        &self,
        display: &str,
        parents: &[OsString],
        create: bool,
    ) -> Result<OwnedFd, ArchiveError> {
        let fail = |errno: Errno| ArchiveError::Extract {
            name: display.to_string(),
            source: errno.into(),
        };
        let mut dir = rustix::io::fcntl_dupfd_cloexec(&self.target.dir, 0).map_err(fail)?;
        for part in parents {
            dir = match open_dir_at(&dir, part) {
                Ok(next) => next,
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&dir, part, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(err) => return Err(fail(err)),
                    }
                    open_dir_at(&dir, part).map_err(fail)?
                }
                Err(Errno::LOOP | Errno::NOTDIR) => {
                    return Err(ArchiveError::Refused {
                        name: display.to_string(),
                        reason: "its path goes through a symlink or a non-directory",
                    })
                }
                Err(err) => return Err(fail(err)),
            };
        }
        Ok(dir)
    }

    /// Makes room for a non-directory: an existing file or symlink goes, a directory stays.
    fn remove_existing(
        &self,
        display: &str,
        dir: &OwnedFd,
        last: &OsStr,
    ) -> Result<(), ArchiveError> {
        let fail = |errno: Errno| ArchiveError::Extract {
            name: display.to_string(),
            source: errno.into(),
        };
        match rustix::fs::statat(dir, last, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => {
                Err(ArchiveError::ReplaceDirectory { name: display.to_string() })
            }
            Ok(_) => rustix::fs::unlinkat(dir, last, AtFlags::empty()).map_err(fail),
            Err(Errno::NOENT) => Ok(()),
            Err(err) => Err(fail(err)),
        }
    }

    fn metadata(&self, header: &tar::Header) -> io::Result<Metadata> {
        let mut mode = header.mode()? & 0o7777;
        if !self.options.keep_setid {
            mode &= !0o6000;
        }
        let id = |id: u64| u32::try_from(id).ok().filter(|id| *id != u32::MAX);
        let (uid, gid) = if self.options.preserve_owner {
            (id(header.uid()?), id(header.gid()?))
        } else {
            (None, None)
        };
        let mtime = i64::try_from(header.mtime()?).unwrap_or(i64::MAX);
        Ok(Metadata { mode, uid, gid, mtime })
    }

    /// Owner, then mode (a change of owner clears setuid bits), then time.
    fn apply_to_fd(&self, fd: impl AsFd, metadata: Metadata) -> Result<(), Errno> {
        if metadata.uid.is_some() || metadata.gid.is_some() {
            rustix::fs::fchown(
                &fd,
                metadata.uid.map(Uid::from_raw),
                metadata.gid.map(Gid::from_raw),
            )?;
        }
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(metadata.mode))?;
        rustix::fs::futimens(&fd, &times(metadata.mtime))
    }

    /// As apply_to_fd, by name, for what cannot be opened (symlinks, FIFOs); symlinks have
    /// no mode of their own.
    fn apply_at(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        metadata: Metadata,
        chmod: bool,
    ) -> Result<(), Errno> {
        if metadata.uid.is_some() || metadata.gid.is_some() {
            let (uid, gid) = (metadata.uid.map(Uid::from_raw), metadata.gid.map(Gid::from_raw));
            rustix::fs::chownat(dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)?;
        }
        if chmod {
            rustix::fs::chmodat(dir, name, Mode::from_raw_mode(metadata.mode), AtFlags::empty())?;
        }
        rustix::fs::utimensat(dir, name, &times(metadata.mtime), AtFlags::SYMLINK_NOFOLLOW)
    }

    /// Directories' metadata, deepest (latest) first, once nothing more goes into them.
    fn finish_dirs(&mut self) -> Result<(), ArchiveError> {
        for (path, metadata) in std::mem::take(&mut self.dirs).into_iter().rev() {
            let display = path_display(&path);
            let Some((last, parents)) = path.split_last() else { continue };
            let fail = |errno: Errno| ArchiveError::Extract {
                name: display.clone(),
                source: errno.into(),
            };
            let parent = self.open_parents(&display, parents, false)?;
            let dir = open_dir_at(&parent, last).map_err(fail)?;
            self.apply_to_fd(&dir, metadata).map_err(fail)?;
        }
        Ok(())
    }
}

fn times(mtime: i64) -> Timestamps {
    let time = Timespec { tv_sec: mtime, tv_nsec: 0 };
    Timestamps { last_access: time, last_modification: time }
}

fn path_display(path: &[OsString]) -> String {
    let joined: PathBuf = path.iter().collect();
    joined.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{write_path, ErrorKind};
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// One entry with its name written raw, so hostile names get through.
    struct Raw<'a> {
        name: &'a [u8],
        kind: EntryType,
        data: &'a [u8],
        link: &'a [u8],
        mode: u32,
    }

    fn raw(name: &'static str, kind: EntryType) -> Raw<'static> {
        Raw { name: name.as_bytes(), kind, data: b"", link: b"", mode: 0o644 }
    }

    fn file(name: &'static str, data: &'static [u8]) -> Raw<'static> {
        Raw { data, ..raw(name, EntryType::Regular) }
    }

    fn link(name: &'static str, kind: EntryType, target: &'static str) -> Raw<'static> {
        Raw { link: target.as_bytes(), ..raw(name, kind) }
    }

    fn archive(entries: &[Raw<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for entry in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(entry.kind);
            header.set_mode(entry.mode);
            header.set_size(entry.data.len() as u64);
            header.set_mtime(1_600_000_000);
            let bytes = header.as_mut_bytes();
            bytes[..entry.name.len()].copy_from_slice(entry.name);
            bytes[157..157 + entry.link.len()].copy_from_slice(entry.link);
            header.set_cksum();
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(entry.data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    /// A destination directory beside an `outside` one that must never change.
    struct Scene {
        _dir: tempfile::TempDir,
        dest: PathBuf,
        outside: PathBuf,
    }

    impl Scene {
        fn new() -> Scene {
            let dir = tempfile::tempdir().unwrap();
            let dest = dir.path().join("dest");
            let outside = dir.path().join("outside");
            fs::create_dir(&dest).unwrap();
            fs::create_dir(&outside).unwrap();
            fs::write(outside.join("secret"), b"keep").unwrap();
            fs::set_permissions(outside.join("secret"), fs::Permissions::from_mode(0o644)).unwrap();
            Scene { _dir: dir, dest, outside }
        }

        fn extract(&self, entries: &[Raw<'_>]) -> Result<(), ArchiveError> {
            extract(&archive(entries)[..], &self.dest, &ExtractOptions::default())
        }

        fn assert_outside_untouched(&self) {
            let mut names: Vec<_> =
                fs::read_dir(&self.outside).unwrap().map(|e| e.unwrap().file_name()).collect();
            names.sort();
            assert_eq!(names, ["secret"]);
            let secret = self.outside.join("secret");
            assert_eq!(fs::read(&secret).unwrap(), b"keep");
            assert_eq!(fs::metadata(&secret).unwrap().nlink(), 1);
            assert_eq!(fs::metadata(&secret).unwrap().mode() & 0o7777, 0o644);
        }
    }

    fn refused(result: Result<(), ArchiveError>) {
        match result {
            Err(ArchiveError::Refused { .. }) => {}
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_tree_comes_back_as_it_was() {
        let scene = Scene::new();
        let tree = scene.outside.join("tree");
        fs::create_dir_all(tree.join("sub")).unwrap();
        fs::write(tree.join("sub/file"), b"data").unwrap();
        fs::set_permissions(tree.join("sub/file"), fs::Permissions::from_mode(0o751)).unwrap();
        fs::hard_link(tree.join("sub/file"), tree.join("again")).unwrap();
        std::os::unix::fs::symlink("sub/file", tree.join("link")).unwrap();
        fs::set_permissions(tree.join("sub"), fs::Permissions::from_mode(0o555)).unwrap();
        let mut out = Vec::new();
        write_path(&tree, &mut out).unwrap();
        extract(&out[..], &scene.dest, &ExtractOptions::default()).unwrap();

        let copy = scene.dest.join("tree");
        assert_eq!(fs::read(copy.join("sub/file")).unwrap(), b"data");
        let file = fs::metadata(copy.join("sub/file")).unwrap();
        assert_eq!(file.mode() & 0o7777, 0o751);
        assert_eq!(file.nlink(), 2, "hard links stay links");
        assert_eq!(file.mtime(), fs::metadata(tree.join("sub/file")).unwrap().mtime());
        assert_eq!(fs::read_link(copy.join("link")).unwrap(), Path::new("sub/file"));
        assert_eq!(fs::metadata(copy.join("sub")).unwrap().mode() & 0o7777, 0o555);
        fs::set_permissions(tree.join("sub"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(copy.join("sub"), fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn a_missing_destination_takes_the_top_entry_s_place() {
        let scene = Scene::new();
        let new = scene.dest.join("new");
        let entries = [raw("etc/", EntryType::Directory), file("etc/hosts", b"127.0.0.1\n")];
        extract(&archive(&entries)[..], &new, &ExtractOptions::default()).unwrap();
        assert_eq!(fs::read(new.join("hosts")).unwrap(), b"127.0.0.1\n");

        let single = scene.dest.join("renamed");
        extract(&archive(&[file("hosts", b"x")])[..], &single, &Default::default()).unwrap();
        assert_eq!(fs::read(&single).unwrap(), b"x");

        // `dir/.` archives hold a directory's contents: they fill the new directory.
        let contents = scene.dest.join("contents");
        let entries = [raw("./", EntryType::Directory), file("a", b"1"), file("b/c", b"2")];
        extract(&archive(&entries)[..], &contents, &Default::default()).unwrap();
        assert_eq!(fs::read(contents.join("b/c")).unwrap(), b"2");

        let entries = [file("a", b"1"), file("b", b"2")];
        let err = extract(&archive(&entries)[..], &scene.dest.join("two"), &Default::default());
        assert!(matches!(err, Err(ArchiveError::SeveralTopLevel { .. })), "{err:?}");
    }

    #[test]
    fn an_existing_file_is_replaced_by_a_file_only() {
        let scene = Scene::new();
        let existing = scene.dest.join("existing");
        fs::write(&existing, b"old").unwrap();
        extract(&archive(&[file("other", b"new")])[..], &existing, &Default::default()).unwrap();
        assert_eq!(fs::read(&existing).unwrap(), b"new");
        let dir = [raw("d/", EntryType::Directory), file("d/f", b"")];
        let err = extract(&archive(&dir)[..], &existing, &Default::default()).unwrap_err();
        assert!(matches!(err, ArchiveError::DirectoryOntoFile { .. }), "{err:?}");
        assert_eq!(err.kind(), ErrorKind::Invalid);
    }

    #[test]
    fn destinations_that_cannot_be_used_are_errors() {
        let scene = Scene::new();
        let tar = archive(&[file("f", b"")]);
        let missing_parent = scene.dest.join("no/such");
        let err = extract(&tar[..], &missing_parent, &Default::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        let mut missing_dir = scene.dest.join("nodir").into_os_string();
        missing_dir.push("/");
        let err = extract(&tar[..], Path::new(&missing_dir), &Default::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        fs::write(scene.dest.join("file"), b"").unwrap();
        let err = extract(&tar[..], &scene.dest.join("file/"), &Default::default()).unwrap_err();
        assert!(matches!(err, ArchiveError::NotADirectory { .. }), "{err:?}");
        let err = extract(&tar[..], &scene.dest.join("file/x"), &Default::default()).unwrap_err();
        assert!(matches!(err, ArchiveError::NotADirectory { .. }), "{err:?}");
    }

    #[test]
    fn names_that_leave_the_destination_are_refused() {
        let scene = Scene::new();
        refused(scene.extract(&[file("../outside/secret", b"pwned")]));
        refused(scene.extract(&[file("a/../../outside/secret", b"pwned")]));
        let absolute = format!("{}/secret", scene.outside.display()).into_bytes();
        let entry = Raw { name: &absolute, ..file("", b"pwned") };
        refused(scene.extract(&[entry]));
        scene.assert_outside_untouched();
    }

    #[test]
    fn entries_never_go_through_symlinks() {
        let scene = Scene::new();
        let outside = scene.outside.to_str().unwrap().to_string();
        let outside: &'static str = Box::leak(outside.into_boxed_str());
        // A symlink the archive made, then an entry through it.
        refused(scene.extract(&[
            link("escape", EntryType::Symlink, outside),
            file("escape/secret", b"pwned"),
        ]));
        refused(scene.extract(&[
            link("up", EntryType::Symlink, "../outside"),
            raw("up/new/", EntryType::Directory),
        ]));
        // A symlink left by an earlier copy: the same.
        std::os::unix::fs::symlink(&scene.outside, scene.dest.join("earlier")).unwrap();
        refused(scene.extract(&[file("earlier/secret", b"pwned")]));
        // A symlink at an entry's own name is replaced, never written through.
        let target = format!("{outside}/secret");
        std::os::unix::fs::symlink(target, scene.dest.join("swap")).unwrap();
        scene.extract(&[file("swap", b"mine")]).unwrap();
        assert_eq!(fs::read(scene.dest.join("swap")).unwrap(), b"mine");
        assert!(fs::symlink_metadata(scene.dest.join("swap")).unwrap().is_file());
        scene.assert_outside_untouched();
    }

    #[test]
    fn hard_links_only_name_files_of_the_archive() {
        let scene = Scene::new();
        refused(scene.extract(&[link("h", EntryType::Link, "../outside/secret")]));
        std::os::unix::fs::symlink(&scene.outside, scene.dest.join("dir")).unwrap();
        refused(scene.extract(&[link("h", EntryType::Link, "dir/secret")]));
        let outside = format!("{}/secret", scene.outside.display());
        let outside: &'static str = Box::leak(outside.into_boxed_str());
        refused(
            scene.extract(&[
                link("s", EntryType::Symlink, outside),
                link("h", EntryType::Link, "s"),
            ]),
        );
        // A file the archive wrote, then replaced by a symlink: no longer a link target.
        refused(scene.extract(&[
            file("f", b"x"),
            link("f", EntryType::Symlink, outside),
            link("h", EntryType::Link, "f"),
        ]));
        fs::write(scene.dest.join("before"), b"").unwrap();
        refused(scene.extract(&[link("h", EntryType::Link, "before")]));
        scene.extract(&[file("f", b"x"), link("h", EntryType::Link, "f")]).unwrap();
        assert_eq!(fs::metadata(scene.dest.join("h")).unwrap().nlink(), 2);
        scene.assert_outside_untouched();
    }

    #[test]
    fn devices_are_refused_and_setid_bits_dropped() {
        let scene = Scene::new();
        refused(scene.extract(&[raw("null", EntryType::Char)]));
        refused(scene.extract(&[raw("disk", EntryType::Block)]));
        let setuid = Raw { mode: 0o6755, ..file("su", b"#!") };
        scene.extract(&[setuid]).unwrap();
        assert_eq!(fs::metadata(scene.dest.join("su")).unwrap().mode() & 0o7777, 0o755);
        let setuid = Raw { mode: 0o4755, ..file("kept", b"#!") };
        let options = ExtractOptions { keep_setid: true, ..Default::default() };
        extract(&archive(&[setuid])[..], &scene.dest, &options).unwrap();
        assert_eq!(fs::metadata(scene.dest.join("kept")).unwrap().mode() & 0o7777, 0o4755);
    }

    #[test]
    fn a_directory_is_not_replaced_by_a_file() {
        let scene = Scene::new();
        fs::create_dir(scene.dest.join("d")).unwrap();
        let err = scene.extract(&[file("d", b"")]).unwrap_err();
        assert!(matches!(err, ArchiveError::ReplaceDirectory { .. }), "{err:?}");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn name() -> impl Strategy<Value = String> {
            let part = prop::sample::select(vec!["a", "b", "..", ".", "", "c"]);
            prop::collection::vec(part, 1..4).prop_map(|parts| parts.join("/"))
        }

        fn entry() -> impl Strategy<Value = (String, u8, String)> {
            let target = prop::sample::select(vec![
                "/",
                "..",
                "../outside",
                "../outside/secret",
                "a",
                "a/b",
                "/etc",
                "b/../..",
            ]);
            (prop_oneof![name(), Just("/x".to_string())], 0u8..6, target.prop_map(String::from))
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            /// Whatever the entries, nothing outside the destination changes and nothing
            /// panics.
            #[test]
            fn hostile_archives_stay_inside(entries in prop::collection::vec(entry(), 1..8)) {
                let scene = Scene::new();
                let raws: Vec<Raw<'_>> = entries
                    .iter()
                    .map(|(name, kind, target)| {
                        let kind = match kind {
                            0 => EntryType::Regular,
                            1 => EntryType::Directory,
                            2 => EntryType::Symlink,
                            3 => EntryType::Link,
                            4 => EntryType::Fifo,
                            _ => EntryType::Char,
                        };
                        Raw {
                            name: name.as_bytes(),
                            kind,
                            data: b"pwned",
                            link: target.as_bytes(),
                            mode: 0o777,
                        }
                    })
                    .map(|raw| if raw.kind == EntryType::Regular { raw } else { Raw { data: b"", ..raw } })
                    .collect();
                let _ = scene.extract(&raws);
                let _ = extract(&archive(&raws)[..], &scene.dest.join("renamed"), &Default::default());
                scene.assert_outside_untouched();
            }

            #[test]
            fn garbage_is_an_error_not_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
                let scene = Scene::new();
                let _ = extract(&bytes[..], &scene.dest, &Default::default());
                scene.assert_outside_untouched();
            }
        }
    }
}
