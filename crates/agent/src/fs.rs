//! Filesystem requests from the host: mounting disks and listing directories.

use nix::mount::{mount, MsFlags};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use tonic::Status;
use vessel_proto::agent::{DirEntry, FileType, MountRequest};

pub fn mount_request(request: &MountRequest) -> Result<(), Status> {
    let target = Path::new(&request.target);
    if !target.is_absolute() {
        return Err(Status::invalid_argument(format!(
            "mount target {:?} is not an absolute path",
            request.target
        )));
    }
    std::fs::create_dir_all(target).map_err(|err| {
        Status::internal(format!("cannot create mount point {}: {err}", target.display()))
    })?;
    let mut flags = MsFlags::empty();
    if request.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    let data = request.options.join(",");
    let data = (!data.is_empty()).then_some(data.as_str());
    mount(Some(request.source.as_str()), target, Some(request.fstype.as_str()), flags, data)
        .map_err(|errno| {
            Status::internal(format!(
                "cannot mount {} ({}) on {}: {errno}",
                request.source,
                request.fstype,
                target.display()
            ))
        })
}

pub fn read_dir(path: &str) -> Result<Vec<DirEntry>, Status> {
    let io = |err: std::io::Error| Status::internal(format!("cannot list {path}: {err}"));
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let entry = entry.map_err(io)?;
        let metadata = entry.metadata().map_err(io)?;
        let file_type = metadata.file_type();
        let kind = if file_type.is_symlink() {
            FileType::Symlink
        } else if file_type.is_dir() {
            FileType::Directory
        } else if file_type.is_file() {
            FileType::Regular
        } else if file_type.is_char_device() {
            FileType::CharDevice
        } else if file_type.is_block_device() {
            FileType::BlockDevice
        } else if file_type.is_fifo() {
            FileType::Fifo
        } else if file_type.is_socket() {
            FileType::Socket
        } else {
            FileType::Unspecified
        };
        let link_target = if file_type.is_symlink() {
            std::fs::read_link(entry.path()).map_err(io)?.to_string_lossy().into_owned()
        } else {
            String::new()
        };
        let rdev = metadata.rdev();
        entries.push(DirEntry {
            name: entry.file_name().to_string_lossy().into_owned(),
            file_type: kind.into(),
            mode: metadata.mode() & 0o7777,
            uid: metadata.uid(),
            gid: metadata.gid(),
            size: metadata.size(),
            link_target,
            rdev_major: nix::sys::stat::major(rdev) as u32,
            rdev_minor: nix::sys::stat::minor(rdev) as u32,
            nlink: metadata.nlink(),
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}
