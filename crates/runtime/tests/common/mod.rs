//! Helpers shared by the runtime's VM tests.
// Each test binary uses its own share of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use vessel_image::{create_empty, create_rootfs, RootfsOptions};
use vessel_proto::agent::CreateContainerRequest;
use vessel_runtime::process::{ProcessExit, ProcessIo, ProcessSpec};
use vessel_runtime::sandbox::{Sandbox, SandboxOptions};
use vessel_runtime::Host;
use vessel_vm::Disk;

/// `e2fsck -fn` finds nothing to fix in `image` (a clean journal included).
pub fn assert_fsck_clean(image: &Path) {
    let output = std::process::Command::new("e2fsck")
        .arg("-fn")
        .arg(image)
        .output()
        .expect("e2fsck is needed (apt-get install e2fsprogs)");
    assert!(
        output.status.success(),
        "e2fsck {}: {}{}",
        image.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

const BUSYBOX: &str = "/bin/busybox";

/// A layer with a static busybox, its applets as symlinks, and a passwd with one user.
pub fn busybox_layer(path: &Path) {
    let busybox =
        std::fs::read(BUSYBOX).expect("busybox-static is needed (apt-get install busybox-static)");
    let mut tar = tar::Builder::new(std::fs::File::create(path).unwrap());
    let entry = |kind: tar::EntryType, name: &str, mode: u32, size: usize| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_path(name).unwrap();
        header.set_mode(mode);
        header.set_size(size as u64);
        header.set_mtime(1_700_000_000);
        header.set_uid(0);
        header.set_gid(0);
        header
    };
    for (dir, mode) in [
        ("bin/", 0o755),
        ("etc/", 0o755),
        ("tmp/", 0o1777),
        ("proc/", 0o555),
        ("sys/", 0o555),
        ("dev/", 0o755),
        ("home/app/", 0o755),
    ] {
        let mut header = entry(tar::EntryType::Directory, dir, mode, 0);
        header.set_cksum();
        tar.append(&header, std::io::empty()).unwrap();
    }
    let mut header = entry(tar::EntryType::Regular, "bin/busybox", 0o755, busybox.len());
    header.set_cksum();
    tar.append(&header, &busybox[..]).unwrap();
    for applet in [
        "sh", "cat", "echo", "hostname", "id", "pwd", "sleep", "seq", "wc", "ls", "grep", "stat",
        "tty",
    ] {
        let mut header = entry(tar::EntryType::Symlink, &format!("bin/{applet}"), 0o777, 0);
        header.set_link_name("busybox").unwrap();
        header.set_cksum();
        tar.append(&header, std::io::empty()).unwrap();
    }
    for (name, content) in [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"),
        ("etc/group", "root:x:0:\napp:x:1000:\nstaff:x:50:app\n"),
    ] {
        let mut header = entry(tar::EntryType::Regular, name, 0o644, content.len());
        header.set_cksum();
        tar.append(&header, content.as_bytes()).unwrap();
    }
    tar.finish().unwrap();
}

/// A VM booted with the busybox image's snapshot (/dev/vda) and an empty writable disk
/// (/dev/vdb).
pub struct Booted {
    /// Holds the images and the state root; removed on drop.
    pub state: tempfile::TempDir,
    pub sandbox: Sandbox,
    pub rootfs: PathBuf,
    pub writable: PathBuf,
}

/// Ends a test's container and VM as the host would: SIGKILL to the first process (the
/// container's namespaces go with it), a clean power-off, and both disks fsck-clean.
pub async fn end_cleanly(
    mut sandbox: Sandbox,
    first: vessel_runtime::process::ProcessHandle,
    disks: [&Path; 2],
) {
    sandbox.agent().signal_process("first", 9).await.unwrap();
    first.wait(sandbox.agent()).await.unwrap();
    let stopped = sandbox.shutdown(vessel_runtime::sandbox::SHUTDOWN_TIMEOUT).await.unwrap();
    assert_eq!(stopped.exit, vessel_vm::VmExit::GuestExit, "{}", stopped.console);
    for image in disks {
        assert_fsck_clean(image);
    }
}

pub async fn boot(name: &str) -> Booted {
    boot_with(name, |_| {}).await
}

/// As [`boot`], with the sandbox's options adjusted first (a NIC, say).
pub async fn boot_with(name: &str, adjust: impl FnOnce(&mut SandboxOptions)) -> Booted {
    let state = tempfile::tempdir().unwrap();
    let layer = state.path().join("busybox.tar");
    busybox_layer(&layer);
    let (rootfs, writable) = (state.path().join("rootfs.img"), state.path().join("writable.img"));
    // Laid out as a snapshot, which is what the agent takes as an image disk.
    let options = RootfsOptions { nested: true, ..Default::default() };
    create_rootfs(&rootfs, &[layer], &options, &mut |_| {}).unwrap();
    create_empty(&writable, 64 << 20, &RootfsOptions::default()).unwrap();

    let host = Host::new(Some(state.path().join("root")));
    let mut options = SandboxOptions::new(format!("{name}-{}", std::process::id()));
    options.disks = vec![
        Disk { path: rootfs.clone(), read_only: true },
        Disk { path: writable.clone(), read_only: false },
    ];
    adjust(&mut options);
    let sandbox = Sandbox::start(&host, options).await.unwrap();
    Booted { state, sandbox, rootfs, writable }
}

/// A container of the busybox image; `writable` gives it /dev/vdb, else a read-only root.
pub fn container(id: &str, writable: bool) -> CreateContainerRequest {
    CreateContainerRequest {
        container_id: id.into(),
        image_device: "/dev/vda".into(),
        writable_device: if writable { "/dev/vdb".into() } else { String::new() },
        hostname: format!("{id}host"),
        memory_limit_bytes: 0,
        cpu_millis: 0,
        mounts: Vec::new(),
        shm_size_bytes: 0,
        network: None,
    }
}

pub fn spec(container_id: &str, process_id: &str, args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        container_id: container_id.into(),
        process_id: process_id.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: vec!["GREETING=hello".into()],
        ..Default::default()
    }
}

/// Runs a process to its end; returns its exit, stdout and stderr.
pub async fn run(
    sandbox: &mut Sandbox,
    spec: ProcessSpec,
    stdin: Option<&'static [u8]>,
) -> (ProcessExit, String, String) {
    let (stdout_writer, mut stdout_reader) = tokio::io::duplex(1 << 20);
    let (stderr_writer, mut stderr_reader) = tokio::io::duplex(1 << 20);
    let io = ProcessIo {
        stdin: stdin.map(|bytes| Box::new(bytes) as _),
        stdout: Some(Box::new(stdout_writer)),
        stderr: Some(Box::new(stderr_writer)),
    };
    let handle = sandbox.start_process(spec, io).await.unwrap();
    let (exit, stdout, stderr) = tokio::join!(
        async { handle.wait(sandbox.agent()).await.unwrap() },
        read_all(&mut stdout_reader),
        read_all(&mut stderr_reader)
    );
    (exit, stdout, stderr)
}

pub async fn read_all(reader: &mut tokio::io::DuplexStream) -> String {
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(reader, &mut text).await.unwrap();
    text
}
