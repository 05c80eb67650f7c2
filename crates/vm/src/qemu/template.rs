//! Warm starts: a VM of each shape is booted once, up to where vessel-init waits for the
//! host's hello on the agent port, and saved; later VMs of that shape restore it instead of
//! booting (docs/warm-start.md). Under TCG that skips about 0.4 s of kernel boot, device
//! probing and first-run code translation.
//!
//! A shape is everything the saved state depends on: QEMU, kernel, initramfs, and QEMU's
//! whole command line (CPUs, memory, the devices in order). Disks are placeholders the
//! guest never opened: a restored VM gets its own files in their places. The guest keeps
//! the capacity it probed, so a read-write disk's placeholder has the disk's own size (part
//! of the shape), and the read-only image disk's is [`READ_ONLY_CAPACITY`], above any
//! image.
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
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bump when what a template holds changes in a way its key does not show.
const FORMAT: &str = "vessel-vm-template-3";
/// The capacity read-only disks have in a restored guest.
pub const READ_ONLY_CAPACITY: u64 = 1 << 40;
/// How long a template's guest may take to open its agent port, and QEMU to save it.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// The template's NIC address; a restored guest sets its own (the agent does).
const TEMPLATE_MAC: [u8; 6] = [0x02, 0x76, 0x00, 0x00, 0x00, 0x01];
/// Templates kept at most; the least recently used go first. Each holds its guest's RAM as
/// a sparse file (about 40 MiB on disk), and one whose kernel, init or QEMU changed is
/// never used again.
const KEEP: usize = 8;

/// A saved VM: its RAM file and its device state.
#[derive(Debug, Clone)]
pub struct Template {
    pub dir: PathBuf,
    /// The state file's inode: [`Template::discard`] removes this template, never one
    /// made anew in its place meanwhile.
    state_inode: u64,
}

impl Template {
    pub fn ram(&self) -> PathBuf {
        self.dir.join("ram")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Removes a template that failed to restore, unless it was replaced already; the next
    /// VM of its shape makes it anew.
    pub fn discard(&self) {
        let current = std::fs::metadata(self.state()).map(|m| m.ino()).ok();
        if current != Some(self.state_inode) {
            return;
        }
        // Renamed first: a maker of this shape never finds it half removed.
        let dead = self.dir.with_extension(format!("dead-{}", std::process::id()));
        if std::fs::rename(&self.dir, &dead).is_ok() {
            let _ = std::fs::remove_dir_all(&dead);
        }
    }

    /// The template in `dir`, if it is whole.
    fn open(dir: PathBuf) -> Option<Template> {
        let state_inode = std::fs::metadata(dir.join("state")).ok()?.ino();
        Some(Template { dir, state_inode })
    }
}

/// Where `config` finds its template, if it can start from one: virtio-fs shares are
/// vhost-user devices, which QEMU cannot save, and they need RAM shared with virtiofsd.
pub fn templates_for(config: &VmConfig) -> Option<&Path> {
    config.templates.as_deref().filter(|_| config.shares.is_empty())
}

/// The template in `templates` for `config`'s shape, made now if there is none yet.
/// Concurrent callers of one shape wait for the first.
pub async fn for_config(
    qemu: &Path,
    config: &VmConfig,
    templates: &Path,
    accel: crate::Accel,
    tsc_khz: u64,
) -> Result<Template, VmError> {
    let key = shape_key(qemu, config, accel, tsc_khz)?;
    let dir = templates.join(&key);
    if let Some(template) = Template::open(dir.clone()) {
        mark_used(&template.dir);
        return Ok(template);
    }
    std::fs::create_dir_all(templates).map_err(io("create", templates))?;
    // A template's RAM is its guest's memory: root's alone.
    std::fs::set_permissions(templates, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(io("restrict", templates))?;
    let lock_path = templates.join(format!("{key}.lock"));
    let lock = std::fs::File::create(&lock_path).map_err(io("create", &lock_path))?;
    let deadline = tokio::time::Instant::now() + 2 * BOOT_TIMEOUT;
    loop {
        match lock.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(VmError::Template(format!(
                    "another process has been making {} for {:?}",
                    dir.display(),
                    2 * BOOT_TIMEOUT
                )))
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(VmError::File { action: "lock", path: lock_path, source })
            }
        }
    }
    if let Some(template) = Template::open(dir.clone()) {
        return Ok(template);
    }
    let started = std::time::Instant::now();
    let made = make(qemu, config, accel, tsc_khz, &dir).await;
    tracing::debug!(dir = %dir.display(), took = ?started.elapsed(), ok = made.is_ok(), "made a VM template");
    made?;
    prune(templates, &key);
    Template::open(dir.clone())
        .ok_or_else(|| VmError::Template(format!("{} vanished once made", dir.display())))
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VmError {
    let path = path.to_path_buf();
    move |source| VmError::File { action, path, source }
}

/// Marks a template used now, for [`prune`]: its directory's modification time.
fn mark_used(dir: &Path) {
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.set_modified(std::time::SystemTime::now());
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
        let metadata = std::fs::metadata(file).map_err(io("read", file))?;
        hash.update(format!(
            "{}|{}|{}|{}\n",
            file.display(),
            metadata.len(),
            metadata.mtime(),
            metadata.mtime_nsec()
        ));
    }
    // QEMU's command line as the template gets it, with fixed paths: it names CPUs,
    // memory, every device and its options, and the guest's kernel command line.
    let dir = Path::new("/template");
    let disks = placeholders(config, dir);
    let nic = config.nic.as_ref().map(|nic| nic.with_mac(TEMPLATE_MAC));
    let shape = shape_config(config, disks, nic, dir);
    let args = cmdline::qemu_args(
        &shape,
        accel,
        Start::Template { ram: &dir.join("ram") },
        &dir.join("agent.sock"),
        &[],
        &dir.join("boot.log"),
        tsc_khz,
    );
    hash.update(args.join("\n"));
    for (disk, size) in shape.disks.iter().zip(placeholder_sizes(config)?) {
        hash.update(format!("\ndisk|{}|{size}", disk.read_only));
    }
    if accel == crate::Accel::Kvm {
        // `-cpu host` saves the host's CPU model: another kernel or microcode may not
        // take it back.
        hash.update(std::fs::read("/proc/sys/kernel/osrelease").unwrap_or_default());
        hash.update(first_cpu_description());
    }
    let digest = hash.finalize();
    Ok(digest.iter().take(12).map(|b| format!("{b:02x}")).collect())
}

/// The first processor's model, flags and microcode from /proc/cpuinfo.
fn first_cpu_description() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .filter(|line| ["model name", "flags", "microcode"].iter().any(|k| line.starts_with(k)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The size each disk's placeholder has in the template.
fn placeholder_sizes(config: &VmConfig) -> Result<Vec<u64>, VmError> {
    config
        .disks
        .iter()
        .map(|disk| match disk.read_only {
            true => Ok(READ_ONLY_CAPACITY),
            false => Ok(std::fs::metadata(&disk.path).map_err(io("read", &disk.path))?.len()),
        })
        .collect()
}

/// The template's disks: placeholders in `dir`, in the order and modes of `config`'s.
fn placeholders(config: &VmConfig, dir: &Path) -> Vec<crate::Disk> {
    let disks = config.disks.iter().enumerate();
    disks
        .map(|(index, disk)| crate::Disk {
            path: dir.join(format!("disk-{index}")),
            read_only: disk.read_only,
        })
        .collect()
}

/// `config` as its template boots: placeholders for disks, the template's NIC, no shares.
fn shape_config(
    config: &VmConfig,
    disks: Vec<crate::Disk>,
    nic: Option<Nic>,
    dir: &Path,
) -> VmConfig {
    VmConfig {
        name: "template".into(),
        disks,
        nic,
        shares: Vec::new(),
        run_dir: dir.to_path_buf(),
        echo_console: false,
        templates: None,
        ..config.clone()
    }
}

/// Boots the shape with placeholders, waits for vessel-init to open its port, and saves the
/// running VM into `dir`. Everything is made in a directory of its own, synced, and renamed
/// at the end, so a template is whole or absent, even after a crash of the host.
async fn make(
    qemu: &Path,
    config: &VmConfig,
    accel: crate::Accel,
    tsc_khz: u64,
    dir: &Path,
) -> Result<(), VmError> {
    let work = dir.with_extension(format!("new-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(io("create", &work))?;
    let cleanup = WorkDir(Some(work.clone()));
    let disks = placeholders(config, &work);
    for (disk, size) in disks.iter().zip(placeholder_sizes(config)?) {
        let file = std::fs::File::create(&disk.path).map_err(io("create", &disk.path))?;
        file.set_len(size).map_err(io("size", &disk.path))?;
    }
    // The template's NIC is a TAP of its own, on no network, gone with its fd. A TAP and
    // not a backend without one: the guest's driver keeps the features it negotiated at
    // boot, and without the virtio-net header it has no checksum or segmentation offload
    // (TCP 168 MB/s instead of 396 to a restored container, measured). Named after this
    // maker: makers of one shape in two template directories run side by side.
    let tap = match &config.nic {
        Some(_) => {
            static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10_000;
            let name = format!("vt{}.{n}", std::process::id());
            let tap = vessel_net::tap::Tap::create(&name)
                .map_err(|err| VmError::Template(format!("a TAP for the saved VM's NIC: {err}")))?;
            Some(tap)
        }
        None => None,
    };
    let nic = match &tap {
        Some(tap) => {
            let fd = tap
                .fd()
                .try_clone_to_owned()
                .map_err(io("copy the fd of", Path::new(tap.name())))?;
            Some(Nic::new(fd, TEMPLATE_MAC))
        }
        None => None,
    };
    let shape = shape_config(config, disks, nic, &work);
    let ram = work.join("ram");
    let agent_socket = work.join("agent.sock");
    let agent_listener =
        tokio::net::UnixListener::bind(&agent_socket).map_err(io("listen on", &agent_socket))?;
    let (qmp_ours, qmp_theirs) =
        std::os::unix::net::UnixStream::pair().map_err(io("make a socket pair in", &work))?;
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
    // The RAM's pages were written through a shared mapping: on disk only once synced.
    for synced in [&ram, &work.join("state"), &work] {
        let file = std::fs::File::open(synced).map_err(io("open", synced))?;
        file.sync_all().map_err(io("sync", synced))?;
    }
    // A directory left without its state (a removal cut short) is in the way.
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&work, dir).map_err(io("rename into place", dir))?;
    cleanup.keep();
    if let Some(parent) = dir.parent() {
        let _ = std::fs::File::open(parent).and_then(|parent| parent.sync_all());
    }
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
    let (_agent, _) = tokio::time::timeout(BOOT_TIMEOUT, agent_listener.accept())
        .await
        .map_err(|_| timed_out("QEMU never connected the agent port"))??;
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
                None => timed_out("the guest did not open its agent port"),
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
    let receive = async {
        let (mut incoming, _) = state_listener.accept().await?;
        let mut state = tokio::fs::File::create(work.join("state")).await?;
        tokio::io::copy(&mut incoming, &mut state).await?;
        state.sync_all().await
    };
    tokio::time::timeout(BOOT_TIMEOUT, receive)
        .await
        .map_err(|_| timed_out("QEMU did not send its whole state"))??;
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

fn timed_out(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{what} within {BOOT_TIMEOUT:?}"))
}

/// Starts QEMU's load of a saved state in a VM started with `Start::Restore`.
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

/// Removes all but the `KEEP` most recently used templates (never `keep_key`'s), and the
/// work directories of template makers that died. Lock files stay: a maker may wait on one.
fn prune(templates: &Path, keep_key: &str) {
    let Ok(entries) = std::fs::read_dir(templates) else { return };
    let mut made = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((_, pid)) = name.split_once(".new-").or_else(|| name.split_once(".dead-")) {
            let alive = Path::new("/proc").join(pid).exists();
            if !alive {
                let _ = std::fs::remove_dir_all(&path);
            }
            continue;
        }
        if !path.is_dir() || name == keep_key {
            continue;
        }
        let used = entry.metadata().and_then(|m| m.modified()).ok();
        made.push((used, path));
    }
    made.sort_by_key(|(used, _)| std::cmp::Reverse(*used));
    // A VM restored from a removed template keeps its open RAM file.
    for (_, path) in made.into_iter().skip(KEEP - 1) {
        tracing::debug!(dir = %path.display(), "removing an old VM template");
        let dead = path.with_extension(format!("dead-{}", std::process::id()));
        if std::fs::rename(&path, &dead).is_ok() {
            let _ = std::fs::remove_dir_all(&dead);
        }
    }
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
    fn pruning_keeps_the_most_recently_used_and_the_one_just_made() {
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
        // Lock files stay: a maker may be waiting on one.
        let kept = ["00", "05", "06", "07", "08", "09", "10", "11"].map(String::from);
        let locks = (0..12).map(|i| format!("{i:02}.lock"));
        let mut expected: Vec<String> = kept.into_iter().chain(locks).collect();
        expected.push(format!("05.new-{}", std::process::id()));
        expected.sort();
        assert_eq!(left, expected);
    }
}
