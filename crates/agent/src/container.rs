//! Container root filesystems: the image's tree in its read-only ext4 and the container's
//! writable ext4 joined with overlayfs, under /run/containers/<id>.

use nix::mount::{mount, MsFlags};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tonic::Status;
use vessel_proto::agent::CreateContainerRequest;
use vessel_proto::writable_disk;

const CONTAINERS_DIR: &str = "/run/containers";
/// The directory of an image disk (a snapshot) holding the image's tree; the filesystem
/// root beside it holds `lost+found`, which is no file of the image
/// (`vessel_image::NESTED_ROOT`).
const IMAGE_TREE: &str = "rootfs";

#[derive(Debug, Clone)]
pub struct Container {
    pub rootfs: PathBuf,
    /// The root is made read-only once the container's mounts are in place.
    pub read_only: bool,
    pub hostname: String,
    /// The container's first process, whose namespaces later processes join.
    pub init_pid: Option<i32>,
    /// The container's cgroup (`/sys/fs/cgroup/<id>`); every process of it joins.
    pub cgroup: PathBuf,
    /// Bytes of its /dev/shm.
    pub shm_size: u64,
}

/// docker's /dev/shm size.
const DEFAULT_SHM_SIZE: u64 = 64 << 20;

#[derive(Debug, Default)]
pub struct Containers {
    by_id: HashMap<String, Container>,
}

impl Containers {
    pub fn get(&self, id: &str) -> Result<&Container, Status> {
        self.by_id.get(id).ok_or_else(|| Status::not_found(format!("no container {id:?}")))
    }

    pub fn get_mut(&mut self, id: &str) -> Result<&mut Container, Status> {
        self.by_id.get_mut(id).ok_or_else(|| Status::not_found(format!("no container {id:?}")))
    }

    pub fn create(&mut self, request: &CreateContainerRequest) -> Result<(), Status> {
        let id = &request.container_id;
        if !valid_id(id) {
            return Err(Status::invalid_argument(format!("invalid container id {id:?}")));
        }
        if self.by_id.contains_key(id) {
            return Err(Status::already_exists(format!("container {id} exists")));
        }
        // First: a bad configuration fails the request before anything is mounted.
        crate::network::configure(request.network.as_ref())?;
        let dir = Path::new(CONTAINERS_DIR).join(id);
        let image = dir.join("image");
        let rootfs = dir.join("rootfs");
        mount_ext4(&request.image_device, &image, true)?;
        let lower = image.join(IMAGE_TREE);
        if !lower.is_dir() {
            let _ = nix::mount::umount(&image);
            return Err(Status::failed_precondition(format!(
                "image disk {} has no /{IMAGE_TREE} directory (a snapshot of an older vessel?)",
                request.image_device
            )));
        }
        let read_only = request.writable_device.is_empty();
        // A read-only container still gets a small scratch upper layer, so its /proc, /sys
        // and /dev mount points can be made; its first process then makes the whole root
        // read-only (as runc does).
        let writable = dir.join("writable");
        if read_only {
            std::fs::create_dir_all(&writable)
                .map_err(|err| io_status("create", &writable, err))?;
            let scratch = Some("size=1m,mode=0755");
            mount(Some("tmpfs"), &writable, Some("tmpfs"), MsFlags::empty(), scratch).map_err(
                |errno| Status::internal(format!("cannot mount scratch space: {errno}")),
            )?;
        } else {
            mount_ext4(&request.writable_device, &writable, false)?;
        }
        let (upper, work) =
            (writable.join(writable_disk::UPPER), writable.join(writable_disk::WORK));
        for path in [&upper, &work, &rootfs] {
            std::fs::create_dir_all(path).map_err(|err| io_status("create", path, err))?;
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        mount(Some("overlay"), &rootfs, Some("overlay"), MsFlags::empty(), Some(options.as_str()))
            .map_err(|errno| {
                Status::internal(format!("cannot mount the container's overlay: {errno}"))
            })?;
        crate::volumes::mount_all(&rootfs, &dir.join("mounts"), &request.mounts)?;
        if let Some(network) = &request.network {
            let files: [(&str, &[u8]); 3] = [
                ("/etc/hosts", &network.hosts),
                ("/etc/resolv.conf", &network.resolv_conf),
                ("/etc/hostname", &network.hostname_file),
            ];
            let staging = dir.join("network");
            crate::volumes::mount_files(&rootfs, &staging, &files, &request.mounts, read_only)?;
        }
        let cgroup = create_cgroup(id, request.memory_limit_bytes, request.cpu_millis)?;
        let hostname =
            if request.hostname.is_empty() { id.clone() } else { request.hostname.clone() };
        let shm_size =
            if request.shm_size_bytes == 0 { DEFAULT_SHM_SIZE } else { request.shm_size_bytes };
        let container = Container { rootfs, read_only, hostname, init_pid: None, cgroup, shm_size };
        self.by_id.insert(id.clone(), container);
        Ok(())
    }
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A cgroup for the container with its limits; the controllers are enabled for the root's
/// children first (cgroup v2 only limits what the parent delegates).
fn create_cgroup(id: &str, memory_limit: u64, cpu_millis: u32) -> Result<PathBuf, Status> {
    let root = Path::new(CGROUP_ROOT);
    let write = |path: &Path, value: &str| {
        std::fs::write(path, value).map_err(|err| io_status("write", path, err))
    };
    // Only what the kernel offers: one missing controller would fail the whole write.
    let available = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    let wanted: Vec<String> = ["cpu", "memory", "pids", "io"]
        .into_iter()
        .filter(|controller| available.split_whitespace().any(|c| c == *controller))
        .map(|controller| format!("+{controller}"))
        .collect();
    write(&root.join("cgroup.subtree_control"), &wanted.join(" "))?;
    let cgroup = root.join(id);
    std::fs::create_dir_all(&cgroup).map_err(|err| io_status("create", &cgroup, err))?;
    if memory_limit > 0 {
        write(&cgroup.join("memory.max"), &memory_limit.to_string())?;
        // No swap in the guest; say so, so tools reading the limits see it.
        let _ = std::fs::write(cgroup.join("memory.swap.max"), "0");
    }
    if cpu_millis > 0 {
        const PERIOD_US: u64 = 100_000;
        let quota = u64::from(cpu_millis) * PERIOD_US / 1000;
        write(&cgroup.join("cpu.max"), &format!("{quota} {PERIOD_US}"))?;
    }
    Ok(cgroup)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

pub(crate) fn mount_ext4(device: &str, target: &Path, read_only: bool) -> Result<(), Status> {
    std::fs::create_dir_all(target).map_err(|err| io_status("create", target, err))?;
    let flags = if read_only { MsFlags::MS_RDONLY } else { MsFlags::empty() };
    mount(Some(device), target, Some("ext4"), flags, None::<&str>).map_err(|errno| {
        Status::internal(format!("cannot mount {device} on {}: {errno}", target.display()))
    })
}

pub(crate) fn io_status(action: &str, path: &Path, err: std::io::Error) -> Status {
    Status::internal(format!("cannot {action} {}: {err}", path.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_cannot_escape_the_containers_dir() {
        assert!(super::valid_id("web-1.a_b"));
        for bad in ["", "..", ".hidden", "a/b", "a b", &"x".repeat(129)] {
            assert!(!super::valid_id(bad), "{bad:?}");
        }
    }
}
