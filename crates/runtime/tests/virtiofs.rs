//! Host directories shared with the guest over virtio-fs, end to end: a real VM, one
//! virtiofsd per share, mounted by the agent's Mount RPC inside a busybox container's root.
//! Boots real VMs; fails, never skips, when the kernel, QEMU or virtiofsd is missing.
//!
//! Also prints (measures, never asserts) 50 MB sequential write and read through a share with
//! `dd` in the guest: `cargo test --test virtiofs -- --nocapture`.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;
use vessel_image::{create_empty, create_rootfs, RootfsOptions};
use vessel_proto::agent::MountRequest;
use vessel_runtime::process::ProcessIo;
use vessel_runtime::sandbox::{Sandbox, SandboxOptions, SHUTDOWN_TIMEOUT};
use vessel_runtime::Host;
use vessel_vm::{Disk, Share, VmExit};

const CONTAINER: &str = "box";
/// Where the container's root is in the guest (crates/agent/src/container.rs).
const CONTAINER_ROOT: &str = "/run/containers/box/rootfs";
const BIG_FILE_MB: usize = 50;

/// A VM with the busybox image and the given shares, and the state that holds them.
async fn boot(state: &Path, name: &str, shares: Vec<Share>) -> Sandbox {
    let layer = state.join("busybox.tar");
    common::busybox_layer(&layer);
    let rootfs = state.join("rootfs.img");
    let writable = state.join("writable.img");
    let options = RootfsOptions { nested: true, ..Default::default() };
    create_rootfs(&rootfs, &[layer], &options, &mut |_| {}).unwrap();
    // Room for the 50 MB comparison on the container's own root.
    create_empty(&writable, 160 << 20, &RootfsOptions::default()).unwrap();
    let host = Host::new(Some(state.join("root")));
    let mut options = SandboxOptions::new(format!("{name}-{}", std::process::id()));
    options.disks =
        vec![Disk { path: rootfs, read_only: true }, Disk { path: writable, read_only: false }];
    options.shares = shares;
    Sandbox::start(&host, options).await.unwrap()
}

/// The agent's Mount request for a share: the tag is the source.
fn mount_share(tag: &str, target: &str, read_only: bool) -> MountRequest {
    MountRequest {
        source: tag.into(),
        target: format!("{CONTAINER_ROOT}{target}"),
        fstype: "virtiofs".into(),
        options: vec![],
        read_only,
    }
}

async fn sh(sandbox: &mut Sandbox, id: &str, user: &str, script: &str) -> (i32, String, String) {
    let mut spec = common::spec(CONTAINER, id, &["sh", "-c", script]);
    spec.user = user.into();
    let (exit, stdout, stderr) = common::run(sandbox, spec, None).await;
    (exit.code, stdout, stderr)
}

/// A virtiofsd process of this test (its command line names a share under `state`).
#[derive(Debug)]
struct Daemon {
    pid: u32,
    /// The process is in a PID namespace of its own: virtiofsd's sandboxed server.
    sandboxed: bool,
}

fn daemons_under(state: &Path) -> Vec<Daemon> {
    let state = state.to_str().unwrap();
    let mut daemons = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        let is_virtiofsd = args.first().is_some_and(|arg0| arg0.ends_with("/virtiofsd"));
        if !is_virtiofsd || !args.iter().any(|arg| arg.starts_with(state)) {
            continue;
        }
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let sandboxed = status
            .lines()
            .find_map(|line| line.strip_prefix("NSpid:"))
            .is_some_and(|pids| pids.split_whitespace().count() > 1);
        daemons.push(Daemon { pid, sandboxed });
    }
    daemons
}

/// The names in a directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "current_thread")]
async fn guest_reads_and_writes_shared_directories_and_sees_nothing_outside_them() {
    let state = tempfile::tempdir().unwrap();
    let rw = state.path().join("rw");
    let ro = state.path().join("ro");
    std::fs::create_dir(&rw).unwrap();
    std::fs::create_dir(&ro).unwrap();
    // Writable by the container's user too (uid 1000).
    std::fs::set_permissions(&rw, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(rw.join("hello.txt"), "from the host\n").unwrap();
    std::os::unix::fs::symlink("/etc", rw.join("link")).unwrap();
    std::fs::write(ro.join("keep.txt"), "unchanged\n").unwrap();
    // Read back in the guest, for the read figure: never in the guest's page cache before.
    std::fs::write(rw.join("big-from-host"), vec![7u8; BIG_FILE_MB << 20]).unwrap();
    let host_hostname = std::fs::read_to_string("/etc/hostname").unwrap();
    assert!(Path::new("/etc/os-release").exists(), "the host has /etc/os-release");

    let shares = vec![
        Share { tag: "rw".into(), host_path: rw.clone(), read_only: false, owner: None },
        Share { tag: "ro".into(), host_path: ro.clone(), read_only: true, owner: None },
    ];
    let mut sandbox = boot(state.path(), "virtiofs", shares).await;
    let agent = sandbox.agent();
    agent.create_container(common::container(CONTAINER, true)).await.unwrap();
    agent.mount(mount_share("rw", "/mnt/rw", false)).await.unwrap();
    // The read-only share mounted read-write in the guest, so virtiofsd must refuse writes
    // itself; mounted first, as the guest's superblock of a tag takes the first mount's mode.
    agent.mount(mount_share("ro", "/mnt/ro-rw", false)).await.unwrap();
    agent.mount(mount_share("ro", "/mnt/ro", true)).await.unwrap();
    // The container's first process holds its namespaces (and the mounts above) for the rest.
    let first = common::spec(CONTAINER, "first", &["sleep", "600"]);
    let first = sandbox.start_process(first, ProcessIo::default()).await.unwrap();

    // Each share has its own daemon, whose sandboxed server has the share as its root: from
    // the host, that root holds the share's files and nothing of the host's.
    let daemons = daemons_under(state.path());
    let servers: Vec<&Daemon> = daemons.iter().filter(|d| d.sandboxed).collect();
    assert_eq!(servers.len(), 2, "{daemons:?}");
    let mut roots: Vec<Vec<String>> =
        servers.iter().map(|d| names(&PathBuf::from(format!("/proc/{}/root", d.pid)))).collect();
    roots.sort();
    assert_eq!(roots, [vec!["big-from-host", "hello.txt", "link"], vec!["keep.txt"]]);

    // The guest reads the host's file, and what it writes lands on the host as its user.
    let (code, stdout, stderr) = sh(&mut sandbox, "read", "", "cat /mnt/rw/hello.txt").await;
    assert_eq!((code, stdout.as_str()), (0, "from the host\n"), "{stderr}");
    let script = "echo from root > /mnt/rw/by-root && busybox mkdir /mnt/rw/dir";
    let (code, _, stderr) = sh(&mut sandbox, "write-root", "", script).await;
    assert_eq!(code, 0, "{stderr}");
    let script = "echo from app > /mnt/rw/by-app";
    let (code, _, stderr) = sh(&mut sandbox, "write-app", "app", script).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(std::fs::read_to_string(rw.join("by-root")).unwrap(), "from root\n");
    assert_eq!(std::fs::read_to_string(rw.join("by-app")).unwrap(), "from app\n");
    for (name, owner) in [("by-root", (0, 0)), ("dir", (0, 0)), ("by-app", (1000, 1000))] {
        let metadata = std::fs::metadata(rw.join(name)).unwrap();
        assert_eq!((metadata.uid(), metadata.gid()), owner, "{name}");
    }
    // What the host writes while the guest runs shows up there.
    std::fs::write(rw.join("later.txt"), "written later\n").unwrap();
    let (code, stdout, _) = sh(&mut sandbox, "later", "", "cat /mnt/rw/later.txt").await;
    assert_eq!((code, stdout.as_str()), (0, "written later\n"));

    // The read-only share refuses writes, by the guest's mount and by virtiofsd alike.
    let (_, mounts, _) = sh(&mut sandbox, "mounts", "", "grep virtiofs /proc/mounts").await;
    let mut mounts: Vec<&str> = mounts.lines().collect();
    mounts.sort();
    let modes: Vec<(&str, &str, &str)> = mounts
        .iter()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            (fields[0], fields[1], fields[3].split(',').next().unwrap_or_default())
        })
        .collect();
    assert_eq!(
        modes,
        [("ro", "/mnt/ro", "ro"), ("ro", "/mnt/ro-rw", "rw"), ("rw", "/mnt/rw", "rw")],
        "{mounts:?}"
    );
    for (id, dir) in [("ro", "/mnt/ro"), ("ro-rw", "/mnt/ro-rw")] {
        let (code, stdout, _) =
            sh(&mut sandbox, &format!("{id}-read"), "", &format!("cat {dir}/keep.txt")).await;
        assert_eq!((code, stdout.as_str()), (0, "unchanged\n"), "{dir}");
        for (n, script) in [
            format!("echo changed > {dir}/keep.txt"),
            format!("echo new > {dir}/new.txt"),
            format!("busybox mkdir {dir}/newdir"),
        ]
        .iter()
        .enumerate()
        {
            let (code, _, stderr) = sh(&mut sandbox, &format!("{id}-write-{n}"), "", script).await;
            assert_ne!(code, 0, "{script} succeeded");
            assert!(stderr.contains("Read-only file system"), "{script}: {stderr}");
        }
    }
    assert_eq!(std::fs::read_to_string(ro.join("keep.txt")).unwrap(), "unchanged\n");
    assert_eq!(names(&ro), ["keep.txt"]);

    // A symlink in the share to /etc resolves in the guest, never to the host's /etc.
    let (_, stdout, _) = sh(&mut sandbox, "link-hostname", "", "cat /mnt/rw/link/hostname").await;
    assert_ne!(stdout, host_hostname, "the host's /etc/hostname leaked through the share");
    let (code, stdout, _) =
        sh(&mut sandbox, "link-os-release", "", "cat /mnt/rw/link/os-release").await;
    assert_ne!(code, 0, "the host's /etc/os-release leaked through the share: {stdout}");
    // Followed by the agent in the guest's own root, the link reaches the guest's /etc.
    let through_link = sandbox.agent().read_dir(&format!("{CONTAINER_ROOT}/mnt/rw/link")).await;
    if let Ok(entries) = through_link {
        assert!(!entries.iter().any(|e| e.name == "os-release"), "{entries:?}");
    }

    measure_dd(&mut sandbox).await;

    sandbox.agent().signal_process("first", 9).await.unwrap();
    first.wait(sandbox.agent()).await.unwrap();
    let stopped = sandbox.shutdown(SHUTDOWN_TIMEOUT).await.unwrap();
    assert_eq!(stopped.exit, VmExit::GuestExit, "{}", stopped.console);
    // The daemons end with the VM.
    assert!(daemons_under(state.path()).is_empty(), "{:?}", daemons_under(state.path()));
    assert_eq!(
        std::fs::metadata(rw.join("big-by-guest")).unwrap().len(),
        (BIG_FILE_MB << 20) as u64
    );
}

/// Prints 50 MB sequential write and read with dd in the guest through the share, and the
/// write on the container's own root (ext4 on virtio-blk, through overlayfs) for comparison.
/// The read is of a file the host wrote, so none of it is in the guest's page cache. Figures, not
/// assertions: TCG on a shared 2-core host varies.
async fn measure_dd(sandbox: &mut Sandbox) {
    let count = BIG_FILE_MB;
    let cases = [
        (
            "virtio-fs write",
            format!("dd if=/dev/zero of=/mnt/rw/big-by-guest bs=1M count={count} conv=fsync"),
        ),
        ("virtio-fs read", "dd if=/mnt/rw/big-from-host of=/dev/null bs=1M".to_string()),
        ("root fs write", format!("dd if=/dev/zero of=/big bs=1M count={count} conv=fsync")),
    ];
    for (n, (what, script)) in cases.iter().enumerate() {
        let started = Instant::now();
        let script = format!("busybox time busybox {script}");
        let (code, _, stderr) = sh(sandbox, &format!("dd-{n}"), "", &script).await;
        let elapsed = started.elapsed();
        assert_eq!(code, 0, "{script}: {stderr}");
        let seconds = stderr.lines().find_map(real_seconds).unwrap_or(f64::NAN);
        println!(
            "{what:>15}: {BIG_FILE_MB} MB in {seconds:.2} s ({:.0} MB/s) in the guest, \
             {:.2} s with the process round trip",
            BIG_FILE_MB as f64 / seconds,
            elapsed.as_secs_f64()
        );
    }
}

/// The seconds of busybox time's `real 0m 0.23s` line (a tab after `real`).
fn real_seconds(line: &str) -> Option<f64> {
    let (minutes, seconds) = line.strip_prefix("real")?.trim().split_once('m')?;
    let seconds: f64 = seconds.trim().trim_end_matches('s').parse().ok()?;
    Some(minutes.parse::<f64>().ok()? * 60.0 + seconds)
}

#[tokio::test(flavor = "current_thread")]
async fn virtiofsd_ends_with_a_killed_vm() {
    let state = tempfile::tempdir().unwrap();
    let shared = state.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let share = Share { tag: "data".into(), host_path: shared, read_only: false, owner: None };
    let sandbox = boot(state.path(), "virtiofs-kill", vec![share]).await;
    assert_eq!(daemons_under(state.path()).len(), 2, "{:?}", daemons_under(state.path()));
    sandbox.kill().await.unwrap();
    assert!(daemons_under(state.path()).is_empty(), "{:?}", daemons_under(state.path()));
}

#[tokio::test(flavor = "current_thread")]
async fn a_missing_host_directory_is_refused_before_anything_starts() {
    let state = tempfile::tempdir().unwrap();
    let missing = state.path().join("missing");
    let host = Host::new(Some(state.path().join("root")));
    let mut options = SandboxOptions::new(format!("virtiofs-missing-{}", std::process::id()));
    options.shares = vec![Share {
        tag: "src".into(),
        host_path: missing.clone(),
        read_only: false,
        owner: None,
    }];
    let err = Sandbox::start(&host, options).await.unwrap_err();
    let message = chain(&err);
    assert!(message.contains(&missing.display().to_string()), "{message}");
    assert!(message.contains("No such file or directory"), "{message}");
    // Nothing was left behind: no VM directory, no daemon.
    let vm_dirs = host.run.join("vm");
    assert!(!vm_dirs.exists() || names(&vm_dirs).is_empty());
    assert!(daemons_under(state.path()).is_empty());

    let mut options = SandboxOptions::new(format!("virtiofs-full-{}", std::process::id()));
    options.shares = (0..7)
        .map(|i| Share {
            tag: format!("s{i}"),
            host_path: state.path().into(),
            read_only: true,
            owner: None,
        })
        .collect();
    let err = Sandbox::start(&host, options).await.unwrap_err();
    let message = chain(&err);
    assert!(message.contains("need 9 virtio-mmio transports"), "{message}");
}

/// An error and its sources, as a command prints them.
fn chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        message.push_str(": ");
        message.push_str(&err.to_string());
        source = err.source();
    }
    message
}
