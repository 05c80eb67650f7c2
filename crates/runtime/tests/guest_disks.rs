//! The guest kernel mounts the ext4 images our writer makes: a root filesystem built from a
//! layer (read-only) and an empty journaled disk (read-write), each listed by the agent;
//! the root filesystem, laid out as `vessel rootfs create` writes it, is no container image.
//! Boots a real VM; fails, never skips, when the kernel or QEMU is missing.

mod common;

use std::path::Path;
use vessel_image::{create_empty, create_rootfs, RootfsOptions};
use vessel_proto::agent::{FileType, MountRequest};
use vessel_runtime::sandbox::{Sandbox, SandboxOptions, SHUTDOWN_TIMEOUT};
use vessel_runtime::Host;
use vessel_vm::{Disk, VmExit};

fn layer(path: &Path) {
    let mut tar = tar::Builder::new(std::fs::File::create(path).unwrap());
    let header = |kind: tar::EntryType, name: &str, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_path(name).unwrap();
        h.set_mode(mode);
        h.set_uid(1000);
        h.set_gid(100);
        h.set_size(size);
        h.set_mtime(1_700_000_000);
        h
    };
    let mut dir = header(tar::EntryType::Directory, "etc/", 0o755, 0);
    dir.set_cksum();
    tar.append(&dir, std::io::empty()).unwrap();
    let content = b"vessel-guest\n";
    let mut file = header(tar::EntryType::Regular, "etc/hostname", 0o4755, content.len() as u64);
    file.set_cksum();
    tar.append(&file, &content[..]).unwrap();
    let mut link = header(tar::EntryType::Symlink, "etc/name", 0o777, 0);
    link.set_link_name("hostname").unwrap();
    link.set_cksum();
    tar.append(&link, std::io::empty()).unwrap();
    let mut null = header(tar::EntryType::Char, "etc/null", 0o666, 0);
    null.set_device_major(1).unwrap();
    null.set_device_minor(3).unwrap();
    null.set_cksum();
    tar.append(&null, std::io::empty()).unwrap();
    let mut fifo = header(tar::EntryType::Fifo, "etc/pipe", 0o600, 0);
    fifo.set_cksum();
    tar.append(&fifo, std::io::empty()).unwrap();
    let mut hard = header(tar::EntryType::Link, "etc/hostname.again", 0, 0);
    hard.set_link_name("etc/hostname").unwrap();
    hard.set_cksum();
    tar.append(&hard, std::io::empty()).unwrap();
    tar.finish().unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn guest_mounts_and_lists_images_from_our_writer() {
    let state = tempfile::tempdir().unwrap();
    let layer_path = state.path().join("layer.tar");
    layer(&layer_path);
    let rootfs = state.path().join("rootfs.img");
    let writable = state.path().join("writable.img");
    let options = RootfsOptions::default();
    create_rootfs(&rootfs, &[layer_path], &options, &mut |_| {}).unwrap();
    create_empty(&writable, 64 << 20, &options).unwrap();

    let host = Host::new(Some(state.path().join("root")));
    let mut sandbox_options = SandboxOptions::new(format!("disks-{}", std::process::id()));
    sandbox_options.disks = vec![
        Disk { path: rootfs.clone(), read_only: true },
        Disk { path: writable.clone(), read_only: false },
    ];
    let mut sandbox = Sandbox::start(&host, sandbox_options).await.unwrap();
    let agent = sandbox.agent();
    let mount = |source: &str, target: &str, read_only| MountRequest {
        source: source.into(),
        target: target.into(),
        fstype: "ext4".into(),
        options: vec![],
        read_only,
    };
    agent.mount(mount("/dev/vda", "/mnt/rootfs", true)).await.unwrap();
    agent.mount(mount("/dev/vdb", "/mnt/writable", false)).await.unwrap();

    let etc = agent.read_dir("/mnt/rootfs/etc").await.unwrap();
    let names: Vec<&str> = etc.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["hostname", "hostname.again", "name", "null", "pipe"]);
    let by_name = |name: &str| etc.iter().find(|e| e.name == name).unwrap();
    let hostname = by_name("hostname");
    assert_eq!(hostname.file_type(), FileType::Regular);
    assert_eq!((hostname.mode, hostname.uid, hostname.gid), (0o4755, 1000, 100));
    assert_eq!((hostname.size, hostname.nlink), (13, 2));
    assert_eq!(by_name("name").file_type(), FileType::Symlink);
    assert_eq!(by_name("name").link_target, "hostname");
    let null = by_name("null");
    assert_eq!(null.file_type(), FileType::CharDevice);
    assert_eq!((null.rdev_major, null.rdev_minor), (1, 3));
    assert_eq!(by_name("pipe").file_type(), FileType::Fifo);

    let writable_root = agent.read_dir("/mnt/writable").await.unwrap();
    assert!(writable_root.iter().any(|e| e.name == "lost+found"), "{writable_root:?}");

    // A container's image disk is a snapshot, the image's tree in /rootfs: a disk with the
    // tree at its root (as `vessel rootfs create` writes, and snapshots of older vessels)
    // is refused rather than shown with the filesystem's lost+found.
    let err = agent.create_container(common::container("flat", false)).await.unwrap_err();
    assert!(err.to_string().contains("has no /rootfs directory"), "{err}");

    let stopped = sandbox.shutdown(SHUTDOWN_TIMEOUT).await.unwrap();
    assert_eq!(stopped.exit, VmExit::GuestExit, "{}", stopped.console);
    assert!(!stopped.console.contains("EXT4-fs error"), "{}", stopped.console);

    // The read-write disk was unmounted cleanly: e2fsck finds nothing to fix.
    for image in [&rootfs, &writable] {
        common::assert_fsck_clean(image);
    }
}
