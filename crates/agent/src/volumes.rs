//! Mounts inside a container's root: volumes (ext4 disks), virtio-fs shares (bind mounts
//! from the host) and tmpfs. They are mounted under the container's overlay root in the
//! agent's own namespace before its first process starts; that process's private copy of
//! the mount table (and so every later process) has them.

use crate::container::{io_status, mount_ext4};
use nix::mount::{mount, MsFlags};
use std::path::{Component, Path, PathBuf};
use tonic::Status;
use vessel_proto::agent::ContainerMount;

/// The directory of a volume's filesystem the container sees: its root also holds ext4's
/// `lost+found`, which is not the container's business.
const VOLUME_DATA: &str = "data";

/// Mounts `mounts` under `rootfs`, parents first. `staging` holds each volume's own mount.
pub fn mount_all(rootfs: &Path, staging: &Path, mounts: &[ContainerMount]) -> Result<(), Status> {
    let mut ordered: Vec<(usize, &ContainerMount)> = mounts.iter().enumerate().collect();
    ordered.sort_by_key(|(_, m)| Path::new(&m.target).components().count());
    for (index, request) in ordered {
        let is_file = request.kind == "bind" && !request.file.is_empty();
        let target = target_in(rootfs, &request.target, is_file, false)?;
        match request.kind.as_str() {
            "volume" => {
                let disk = staging.join(format!("volume-{index}"));
                mount_ext4(&request.source, &disk, false)?;
                let data = disk.join(VOLUME_DATA);
                if !data.exists() {
                    std::fs::create_dir(&data).map_err(|e| io_status("create", &data, e))?;
                }
                if request.populate && is_empty(&data) && target.is_dir() {
                    copy_up(&target, &data)?;
                }
                bind(&data, &target, request.read_only)?;
            }
            "bind" => {
                let share = staging.join(format!("share-{index}"));
                std::fs::create_dir_all(&share).map_err(|e| io_status("create", &share, e))?;
                mount_fs(&request.source, &share, "virtiofs", MsFlags::empty(), None)?;
                let source = if is_file { share.join(&request.file) } else { share };
                bind(&source, &target, request.read_only)?;
            }
            "tmpfs" => {
                let options =
                    if request.options.is_empty() { "mode=1777" } else { &request.options };
                let flags =
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | read_only_flag(request.read_only);
                mount_fs("tmpfs", &target, "tmpfs", flags, Some(options))?;
            }
            other => return Err(Status::invalid_argument(format!("unknown mount kind {other:?}"))),
        }
    }
    Ok(())
}

/// Files the host wrote for the container (its network's /etc/hosts, /etc/resolv.conf,
/// /etc/hostname: `(target, bytes)`), put in `staging` and bind-mounted over the image's
/// own, which are created empty if missing. One of the container's own `mounts` on the same
/// path wins; empty bytes leave the image's file alone. Read-only in a read-only container,
/// as docker has them.
pub fn mount_files(
    rootfs: &Path,
    staging: &Path,
    files: &[(&str, &[u8])],
    mounts: &[ContainerMount],
    read_only: bool,
) -> Result<(), Status> {
    let user_mounted =
        |target: &str| mounts.iter().any(|m| Path::new(&m.target) == Path::new(target));
    for (target, bytes) in files {
        if bytes.is_empty() || user_mounted(target) {
            continue;
        }
        let name = Path::new(target).file_name().unwrap_or_default();
        std::fs::create_dir_all(staging).map_err(|e| io_status("create", staging, e))?;
        let source = staging.join(name);
        std::fs::write(&source, bytes).map_err(|e| io_status("write", &source, e))?;
        // An image whose file is a link (`/etc/resolv.conf -> ../run/…`) gets ours in its
        // place, in the container's own layer; one whose /etc is odd (a link itself) keeps
        // its own file rather than failing to start.
        match target_in(rootfs, target, true, true) {
            Ok(path) => bind(&source, &path, read_only)?,
            Err(status) => crate::log::error(format_args!(
                "not mounting the generated {target}: {}",
                status.message()
            )),
        }
    }
    Ok(())
}

/// `target` (absolute, as the container sees it) under `rootfs`, its directories created
/// (and itself, as an empty file for a single file's mount); a symlink on the way is
/// refused, so an image cannot aim a mount elsewhere in the guest. With `replace_link`, a
/// symlink that is the target itself is replaced by an empty file instead.
fn target_in(
    rootfs: &Path,
    target: &str,
    is_file: bool,
    replace_link: bool,
) -> Result<PathBuf, Status> {
    let relative = Path::new(target).strip_prefix("/").map_err(|_| {
        Status::invalid_argument(format!("mount target {target:?} is not absolute"))
    })?;
    let mut path = rootfs.to_path_buf();
    let count = relative.components().count();
    for (position, component) in relative.components().enumerate() {
        let last = position + 1 == count;
        match component {
            Component::Normal(name) => path.push(name),
            Component::CurDir => continue,
            _ => return Err(Status::invalid_argument(format!("mount target {target:?} holds .."))),
        }
        match std::fs::symlink_metadata(&path) {
            Ok(metadata) if metadata.file_type().is_symlink() && last && replace_link => {
                // Every directory above was checked: the link itself is what goes.
                std::fs::remove_file(&path).map_err(|e| io_status("remove", &path, e))?;
                std::fs::write(&path, b"").map_err(|e| io_status("create", &path, e))?;
            }
            Ok(metadata) if metadata.file_type().is_symlink() => {
                return Err(Status::invalid_argument(format!(
                    "mount target {target:?} goes through a symlink in the image"
                )))
            }
            Ok(metadata) if last && is_file => {
                if metadata.is_dir() {
                    return Err(Status::invalid_argument(format!(
                        "mount target {target:?} is a directory in the image; a file cannot \
                         be mounted on it"
                    )));
                }
            }
            Ok(metadata) if !metadata.is_dir() => {
                return Err(Status::invalid_argument(format!(
                    "mount target {target:?}: {} is not a directory",
                    path.display()
                )))
            }
            Ok(_) => {}
            Err(_) if last && is_file => {
                std::fs::write(&path, b"").map_err(|e| io_status("create", &path, e))?
            }
            Err(_) => std::fs::create_dir(&path).map_err(|e| io_status("create", &path, e))?,
        }
    }
    Ok(path)
}

/// Copies the image's files at a mount target into a fresh volume, owners and modes kept,
/// streamed through a pipe (the guest's memory is the container's limit, not the tree's
/// size).
fn copy_up(from: &Path, to: &Path) -> Result<(), Status> {
    let (reader, writer) = std::io::pipe().map_err(|err| io_status("make a pipe for", to, err))?;
    let source = from.join(".");
    let archiver = std::thread::spawn(move || vessel_archive::write_path(&source, writer));
    let options = vessel_archive::ExtractOptions { preserve_owner: true, keep_setid: true };
    let extracted = vessel_archive::extract(reader, to, &options);
    let archived =
        archiver.join().map_err(|_| Status::internal("the archiving thread panicked"))?;
    archived.map_err(|err| Status::internal(format!("cannot read {}: {err}", from.display())))?;
    extracted.map_err(|err| Status::internal(format!("cannot fill the volume: {err}")))
}

fn is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

fn bind(source: &Path, target: &Path, read_only: bool) -> Result<(), Status> {
    mount_fs_path(source, target, MsFlags::MS_BIND)?;
    if read_only {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount_fs_path(source, target, flags)?;
    }
    Ok(())
}

fn mount_fs_path(source: &Path, target: &Path, flags: MsFlags) -> Result<(), Status> {
    mount(Some(source), target, None::<&str>, flags, None::<&str>).map_err(|errno| {
        Status::internal(format!(
            "cannot mount {} on {}: {errno}",
            source.display(),
            target.display()
        ))
    })
}

fn mount_fs(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), Status> {
    mount(Some(source), target, Some(fstype), flags, data).map_err(|errno| {
        Status::internal(format!("cannot mount {fstype} {source} on {}: {errno}", target.display()))
    })
}

fn read_only_flag(read_only: bool) -> MsFlags {
    if read_only {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_generated_file_replaces_the_image_s_link_but_never_goes_through_one() {
        let root = tempfile::tempdir().unwrap();
        let rootfs = root.path();
        std::fs::create_dir(rootfs.join("etc")).unwrap();
        symlink("../run/resolve/stub-resolv.conf", rootfs.join("etc/resolv.conf")).unwrap();
        assert!(target_in(rootfs, "/etc/resolv.conf", true, false).is_err(), "a user's mount");
        let path = target_in(rootfs, "/etc/resolv.conf", true, true).unwrap();
        let metadata = std::fs::symlink_metadata(&path).unwrap();
        assert!(metadata.is_file() && metadata.len() == 0);

        // A link above the target is refused either way: it could lead out of the rootfs.
        std::fs::create_dir(rootfs.join("real")).unwrap();
        symlink("/real", rootfs.join("linked")).unwrap();
        assert!(target_in(rootfs, "/linked/hosts", true, true).is_err());
        assert!(!rootfs.join("real/hosts").exists());
    }
}
