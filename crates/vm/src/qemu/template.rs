//! Warm starts: a VM of each shape is booted once, up to where vessel-init waits for the
//! host's hello on the agent port, and saved; later VMs of that shape restore it instead of
//! booting (docs/warm-start.md). Under TCG that skips about 0.5 s of kernel boot, device
//! probing and first-run code translation.
//!
//! A shape is everything the saved state depends on: QEMU, kernel, initramfs, CPUs,
//! memory, the devices in order. Disks are placeholders the guest never opened: a restored
//! VM gets its own files in their places. The guest keeps the capacity it probed, so a
//! read-write disk's placeholder has the disk's own size (part of the shape), and the
//! read-only image disk's is [`READ_ONLY_CAPACITY`], above any image.
//!
//! The guest RAM is saved as a file that restores map copy-on-write (`x-ignore-shared`), so
//! a restore reads only the pages it touches, and every VM of a shape shares them.

use super::cmdline::{self, Start, QMP_FD};
use super::process::Child;
use super::qmp::Qmp;
use crate::{Nic, VmConfig, VmError};
use serde_json::json;
use sha2::Digest;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bump when what a template holds changes in a way its key does not show.
const FORMAT: &str = "vessel-vm-template-2";
/// The capacity read-only disks have in a restored guest.
pub const READ_ONLY_CAPACITY: u64 = 1 << 40;
/// How long a template's guest may take to open its agent port.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// The template's NIC address; a restored guest sets its own (the agent does).
const TEMPLATE_MAC: [u8; 6] = [0x02, 0x76, 0x00, 0x00, 0x00, 0x01];

/// A saved VM: its RAM file and its device state.
#[derive(Debug, Clone)]
pub struct Template {
    pub dir: PathBuf,
}

impl Template {
    pub fn ram(&self) -> PathBuf {
        self.dir.join("ram")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Removes a template that failed to restore; the next VM of its shape makes it anew.
    pub fn discard(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `config` can start from a template: virtio-fs shares are vhost-user devices,
/// which QEMU cannot save, and they need RAM shared with virtiofsd.
pub fn applies(config: &VmConfig) -> bool {
    config.templates.is_some() && config.shares.is_empty()
}

/// The template for `config`'s shape, made now if there is none yet. Concurrent callers
/// of one shape wait for the first.
pub async fn for_config(
    qemu: &Path,
    config: &VmConfig,
    accel: crate::Accel,
    tsc_khz: u64,
) -> Result<Template, VmError> {
    let templates = config.templates.as_ref().expect("checked by applies()");
    let key = shape_key(qemu, config, accel, tsc_khz)?;
    let template = Template { dir: templates.join(&key) };
    if template.state().is_file() {
        return Ok(template);
    }
    std::fs::create_dir_all(templates)
        .map_err(|source| VmError::RunDir { path: templates.clone(), source })?;
    let lock_path = templates.join(format!("{key}.lock"));
    let lock = std::fs::File::create(&lock_path)
        .map_err(|source| VmError::RunDir { path: lock_path.clone(), source })?;
    let deadline = tokio::time::Instant::now() + 2 * BOOT_TIMEOUT;
    while lock.try_lock().is_err() {
        if tokio::time::Instant::now() > deadline {
            return Err(VmError::Template(format!("{} stayed locked", lock_path.display())));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if template.state().is_file() {
        return Ok(template);
    }
    let started = std::time::Instant::now();
    let made = make(qemu, config, accel, tsc_khz, &template).await;
    tracing::debug!(dir = %template.dir.display(), took = ?started.elapsed(), ok = made.is_ok(), "made a VM template");
    if made.is_ok() {
        prune(templates, &key);
    }
    made.map(|()| template)
}

/// Templates kept at most; the oldest go first. Each holds its guest's RAM as a sparse
/// file (tens of MiB on disk), and one whose kernel, init or QEMU changed is never used
/// again.
const KEEP: usize = 8;

/// Removes all but the `KEEP` newest templates (never `keep_key`'s), and the work
/// directories of template makers that died.
fn prune(templates: &Path, keep_key: &str) {
    let Ok(entries) = std::fs::read_dir(templates) else { return };
    let mut made = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((_, pid)) = name.split_once(".new-") {
            let alive = Path::new("/proc").join(pid).exists();
            if !alive {
                let _ = std::fs::remove_dir_all(&path);
            }
            continue;
        }
        if !path.is_dir() || name == keep_key {
            continue;
        }
        let modified = entry.metadata().and_then(|m| m.modified()).ok();
        made.push((modified, path));
    }
    made.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
    // A VM restored from a removed template keeps its mapping of the deleted RAM file.
    for (_, path) in made.into_iter().skip(KEEP - 1) {
        tracing::debug!(dir = %path.display(), "removing an old VM template");
        let _ = std::fs::remove_dir_all(&path);
        let _ = std::fs::remove_file(path.with_extension("lock"));
    }
}

/// Hex of what the saved state depends on.
fn shape_key(
    qemu: &Path,
    config: &VmConfig,
    accel: crate::Accel,
    tsc_khz: u64,
) -> Result<String, VmError> {
    let mut hash = sha2::Sha256::new();
    hash.update(FORMAT);
    for file in [qemu, &config.kernel, &config.initramfs] {
        let metadata = std::fs::metadata(file)
            .map_err(|source| VmError::RunDir { path: file.to_path_buf(), source })?;
        let modified =
            metadata.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        hash.update(format!("{}|{}|{modified:?}\n", file.display(), metadata.len()));
    }
    hash.update(format!(
        "{accel:?}|{}|{}|{tsc_khz}|{:?}|nic={}\n",
        config.cpus,
        config.memory_mib,
        config.kernel_args,
        config.nic.is_some()
    ));
    for disk in &config.disks {
        hash.update(format!("disk|{}|{}\n", disk.read_only, placeholder_size(disk)?));
    }
    let digest = hash.finalize();
    Ok(digest.iter().take(12).map(|b| format!("{b:02x}")).collect())
}

/// The size a disk's placeholder has in the template.
fn placeholder_size(disk: &crate::Disk) -> Result<u64, VmError> {
    if disk.read_only {
        return Ok(READ_ONLY_CAPACITY);
    }
    let metadata = std::fs::metadata(&disk.path)
        .map_err(|source| VmError::RunDir { path: disk.path.clone(), source })?;
    Ok(metadata.len())
}

/// Boots the shape with placeholders, waits for vessel-init to open its port, and saves the
/// running VM. Everything is made in a directory of its own and renamed at the end, so a
/// template is whole or absent.
async fn make(
    qemu: &Path,
    config: &VmConfig,
    accel: crate::Accel,
    tsc_khz: u64,
    template: &Template,
) -> Result<(), VmError> {
    let work = template.dir.with_extension(format!("new-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| VmError::RunDir { path, source }
    };
    std::fs::create_dir_all(&work).map_err(io(&work))?;
    let cleanup = WorkDir(Some(work.clone()));
    let mut disks = Vec::new();
    for (index, disk) in config.disks.iter().enumerate() {
        let path = work.join(format!("disk-{index}"));
        let file = std::fs::File::create(&path).map_err(io(&path))?;
        file.set_len(placeholder_size(disk)?).map_err(io(&path))?;
        disks.push(crate::Disk { path, read_only: disk.read_only });
    }
    // The template's NIC is a TAP of its own, on no network, gone with its fd. A TAP and
    // not a backend without one: the guest's driver keeps the features it negotiated at
    // boot, and without the virtio-net header it has no checksum or segmentation offload
    // (TCP 168 MB/s instead of 396 to a restored container, measured).
    let tap = match &config.nic {
        Some(_) => Some(
            vessel_net::tap::Tap::create(&format!("vtpl{}", std::process::id()))
                .map_err(|err| VmError::Template(format!("a TAP for the saved VM's NIC: {err}")))?,
        ),
        None => None,
    };
    let nic = match &tap {
        Some(tap) => Some(Nic::new(
            tap.fd().try_clone_to_owned().map_err(io(Path::new("/dev/net/tun")))?,
            TEMPLATE_MAC,
        )),
        None => None,
    };
    let shape = VmConfig {
        name: "template".into(),
        disks,
        nic,
        shares: Vec::new(),
        run_dir: work.clone(),
        echo_console: false,
        ..config.clone()
    };
    let ram = work.join("ram");
    let agent_socket = work.join("agent.sock");
    let agent_listener =
        tokio::net::UnixListener::bind(&agent_socket).map_err(io(&agent_socket))?;
    let (qmp_ours, qmp_theirs) = std::os::unix::net::UnixStream::pair().map_err(io(&work))?;
    let args = cmdline::qemu_args(
        &shape,
        accel,
        Start::Template { ram: &ram },
        &agent_socket,
        &[],
        &work.join("boot.log"),
        tsc_khz,
    );
    tracing::debug!(?args, "booting a VM template");
    let log = work.join("qemu.log");
    let mut fds = vec![(qmp_theirs.as_fd(), QMP_FD)];
    if let Some(tap) = &tap {
        fds.push((tap.fd(), cmdline::NIC_FD));
    }
    let mut vmm = Child::spawn_with_fds(qemu, &args, &log, &fds)?;
    drop(qmp_theirs);
    let saved = save(&mut vmm, qmp_ours, agent_listener, &work).await;
    vmm.kill().await;
    if let Err(err) = saved {
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        return Err(VmError::Template(format!("{err}; QEMU said: {}", said.trim())));
    }
    for leftover in ["agent.sock", "state.sock", "qemu.log"] {
        let _ = std::fs::remove_file(work.join(leftover));
    }
    for disk in &shape.disks {
        let _ = std::fs::remove_file(&disk.path);
    }
    std::fs::rename(&work, &template.dir).map_err(io(&template.dir))?;
    cleanup.keep();
    Ok(())
}

/// Waits for the guest to open its agent port, then saves the running VM into `work`.
async fn save(
    vmm: &mut Child,
    qmp: std::os::unix::net::UnixStream,
    agent_listener: tokio::net::UnixListener,
    work: &Path,
) -> std::io::Result<()> {
    qmp.set_nonblocking(true)?;
    let mut qmp = Qmp::handshake(tokio::net::UnixStream::from_std(qmp)?).await?;
    // QEMU connects the port's chardev at start; holding it keeps the port open, so the
    // guest waits in a read for the hello (which only a restored VM's host sends).
    let (_agent, _) = agent_listener.accept().await?;
    let opened = qmp.wait_event(
        "VSERPORT_CHANGE",
        |data| data.get("open").and_then(serde_json::Value::as_bool) == Some(true),
        BOOT_TIMEOUT,
    );
    tokio::select! {
        opened = opened => { opened?; }
        status = vmm.wait_timeout(BOOT_TIMEOUT) => {
            return Err(match status? {
                Some(status) => std::io::Error::other(format!("QEMU ended while booting ({status})")),
                None => std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the guest did not open its agent port within {BOOT_TIMEOUT:?}"),
                ),
            });
        }
    }
    // Let vessel-init get from opening the port to waiting on it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    qmp.execute(
        "migrate-set-capabilities",
        json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] }),
    )
    .await?;
    let state_socket = work.join("state.sock");
    let state_listener = tokio::net::UnixListener::bind(&state_socket)?;
    qmp.execute("migrate", json!({ "uri": format!("unix:{}", state_socket.display()) })).await?;
    let (mut incoming, _) =
        tokio::time::timeout(BOOT_TIMEOUT, state_listener.accept()).await.map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "QEMU never sent its state")
        })??;
    let mut state = tokio::fs::File::create(work.join("state")).await?;
    tokio::io::copy(&mut incoming, &mut state).await?;
    state.sync_all().await?;
    loop {
        let status = qmp.execute("query-migrate", json!({})).await?;
        match status.get("status").and_then(serde_json::Value::as_str) {
            Some("completed") => return Ok(()),
            Some("failed") | Some("cancelled") => {
                return Err(std::io::Error::other(format!("the save failed: {status}")))
            }
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// Starts QEMU's load of `template`'s state in a VM started with `Start::Restore`.
pub async fn load(qmp: std::os::unix::net::UnixStream) -> std::io::Result<()> {
    qmp.set_nonblocking(true)?;
    let mut qmp = Qmp::handshake(tokio::net::UnixStream::from_std(qmp)?).await?;
    qmp.execute(
        "migrate-set-capabilities",
        json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] }),
    )
    .await?;
    qmp.execute("migrate-incoming", json!({ "uri": format!("fd:{}", cmdline::STATE_FD) })).await?;
    Ok(())
}

/// Removes a template's work directory unless kept.
struct WorkDir(Option<PathBuf>);

impl WorkDir {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn pruning_keeps_the_newest_and_the_one_just_made() {
        let dir = tempfile::tempdir().unwrap();
        let base = SystemTime::now() - Duration::from_secs(3600);
        for i in 0..12u64 {
            let template = dir.path().join(format!("{i:02}"));
            std::fs::create_dir(&template).unwrap();
            std::fs::write(template.with_extension("lock"), b"").unwrap();
            let when = base + Duration::from_secs(i * 60);
            std::fs::File::open(&template).unwrap().set_modified(when).unwrap();
        }
        // A maker that died (no such pid) and one that is alive (us).
        let dead = dir.path().join("05.new-999999999");
        let alive = dir.path().join(format!("05.new-{}", std::process::id()));
        std::fs::create_dir(&dead).unwrap();
        std::fs::create_dir(&alive).unwrap();
        // The oldest was just made (say its clock was off): it stays.
        prune(dir.path(), "00");
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut expected: Vec<String> = ["00", "05", "06", "07", "08", "09", "10", "11"]
            .iter()
            .flat_map(|key| [key.to_string(), format!("{key}.lock")])
            .collect();
        expected.push(format!("05.new-{}", std::process::id()));
        expected.sort();
        assert_eq!(left, expected);
    }
}
