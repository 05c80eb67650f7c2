//! The filesystems every guest needs before anything else runs.

use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot create mount point {path}")]
    CreateDir {
        path: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("cannot mount {fstype} on {path}")]
    Mount {
        fstype: &'static str,
        path: &'static str,
        #[source]
        source: nix::Error,
    },
}

struct KernelMount {
    fstype: &'static str,
    path: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const NOSUID_NODEV_NOEXEC: MsFlags =
    MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV).union(MsFlags::MS_NOEXEC);

/// In mount order: a later entry may live inside an earlier one.
const KERNEL_MOUNTS: &[KernelMount] = &[
    KernelMount { fstype: "proc", path: "/proc", flags: NOSUID_NODEV_NOEXEC, data: None },
    KernelMount { fstype: "sysfs", path: "/sys", flags: NOSUID_NODEV_NOEXEC, data: None },
    KernelMount { fstype: "devtmpfs", path: "/dev", flags: MsFlags::MS_NOSUID, data: None },
    KernelMount {
        fstype: "devpts",
        path: "/dev/pts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        // Containers bind-mount this instance as their /dev/pts (a process's terminal must
        // be found there): docker's modes, terminals owned by group tty (5).
        data: Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    },
    KernelMount {
        fstype: "tmpfs",
        path: "/dev/shm",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
    KernelMount {
        fstype: "tmpfs",
        path: "/run",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
    },
    KernelMount {
        fstype: "tmpfs",
        path: "/tmp",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
    KernelMount {
        fstype: "cgroup2",
        path: "/sys/fs/cgroup",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("nsdelegate"),
    },
];

pub fn mount_kernel_filesystems() -> Result<(), MountError> {
    for m in KERNEL_MOUNTS {
        if !Path::new(m.path).exists() {
            nix::unistd::mkdir(m.path, Mode::from_bits_truncate(0o755))
                .map_err(|source| MountError::CreateDir { path: m.path, source })?;
        }
        mount(Some(m.fstype), m.path, Some(m.fstype), m.flags, m.data)
            .map_err(|source| MountError::Mount { fstype: m.fstype, path: m.path, source })?;
    }
    Ok(())
}
