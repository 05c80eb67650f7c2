//! `vessel cp` end to end in a real VM: a host tree archived, copied into a container,
//! seen there with its modes, links and times, copied back out and extracted on the host;
//! paths resolved as the container sees them (its own mounts included, the agent's files
//! never); docker cp's destination rules and their errors.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use tokio::io::AsyncBufReadExt;
use vessel_runtime::copy::{archive_host_path, extract_to_host};
use vessel_runtime::process::ProcessIo;
use vessel_runtime::sandbox::{Sandbox, SHUTDOWN_TIMEOUT};
use vessel_runtime::RuntimeError;
use vessel_vm::VmExit;

/// A host tree with what a copy must keep: modes, times, a symlink, a hard link, depth,
/// and a file large enough to take many vsock writes.
fn host_tree(root: &Path) -> Vec<u8> {
    let tree = root.join("tree");
    fs::create_dir_all(tree.join("sub")).unwrap();
    fs::write(tree.join("file"), b"hello\n").unwrap();
    fs::set_permissions(tree.join("file"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::hard_link(tree.join("file"), tree.join("hard")).unwrap();
    std::os::unix::fs::symlink("file", tree.join("link")).unwrap();
    fs::write(tree.join("sub/deep"), b"deep\n").unwrap();
    fs::write(tree.join("big"), big()).unwrap();
    let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
    fs::File::options().write(true).open(tree.join("file")).unwrap().set_modified(old).unwrap();
    let mut archive = Vec::new();
    archive_host_path(&tree, &mut archive).unwrap();
    archive
}

fn big() -> Vec<u8> {
    (0..3u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

async fn copy_out(sandbox: &mut Sandbox, path: &str) -> Result<Vec<u8>, RuntimeError> {
    let mut archive = Vec::new();
    sandbox.copy_out("box", path, &mut archive).await?;
    Ok(archive)
}

async fn copy_in(sandbox: &mut Sandbox, path: &str, archive: Vec<u8>) -> Result<(), RuntimeError> {
    sandbox.copy_in("box", path, std::io::Cursor::new(archive)).await
}

/// The gRPC status code of a failed agent call.
fn code(result: Result<impl std::fmt::Debug, RuntimeError>) -> tonic::Code {
    match result {
        Err(RuntimeError::AgentCall { status, .. }) => status.code(),
        other => panic!("expected a failed agent call, got {other:?}"),
    }
}

async fn sh(sandbox: &mut Sandbox, process_id: &str, script: &str) -> String {
    let spec = common::spec("box", process_id, &["sh", "-c", script]);
    let (exit, stdout, stderr) = common::run(sandbox, spec, None).await;
    assert_eq!(exit.code, 0, "stdout: {stdout}\nstderr: {stderr}");
    stdout
}

#[tokio::test(flavor = "current_thread")]
async fn copies_go_in_and_out_as_the_container_sees_its_files() {
    let common::Booted { state, mut sandbox, rootfs, writable } = common::boot("copy").await;
    let host = state.path();
    sandbox.agent().create_container(common::container("box", true)).await.unwrap();

    // Before any process runs, copies resolve in the container's root directory: /data is
    // missing and / is a directory, so the tree arrives as /data.
    copy_in(&mut sandbox, "/data", host_tree(host)).await.unwrap();

    // The first process mounts a volume-like tmpfs in the container's own namespace and
    // leaves a symlink that leads up from /tmp as far as it can.
    let mut first = common::spec(
        "box",
        "first",
        &[
            "sh",
            "-c",
            "mkdir -p /mnt/vol && mount -t tmpfs vol /mnt/vol && echo in-volume >/mnt/vol/note \
             && ln -s /../../.. /tmp/up && echo ready && exec sleep 600",
        ],
    );
    first.capabilities = Some(vec!["ALL".into()]);
    let (stdout_writer, stdout_reader) = tokio::io::duplex(1 << 16);
    let io = ProcessIo { stdout: Some(Box::new(stdout_writer)), ..Default::default() };
    let first = sandbox.start_process(first, io).await.unwrap();
    let mut lines = tokio::io::BufReader::new(stdout_reader).lines();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("ready"));

    // Inside: modes and times kept, the symlink a symlink, the hard link a link, owners
    // root (docker cp without -a), the large file whole.
    let seen = sh(
        &mut sandbox,
        "inspect",
        "cd /data && stat -c '%n %a %u:%g %h %Y' file hard && readlink link && cat sub/deep \
         && md5sum big | cut -c1-32",
    )
    .await;
    let big_md5 = {
        let digest = std::process::Command::new("md5sum")
            .arg(host.join("tree/big"))
            .output()
            .expect("md5sum (coreutils)");
        String::from_utf8_lossy(&digest.stdout)[..32].to_string()
    };
    assert_eq!(
        seen,
        format!("file 640 0:0 2 1600000000\nhard 640 0:0 2 1600000000\nfile\ndeep\n{big_md5}\n")
    );

    // Out again, into an existing host directory.
    let out = host.join("out");
    fs::create_dir(&out).unwrap();
    let archive = copy_out(&mut sandbox, "/data").await.unwrap();
    extract_to_host(&archive[..], &out).unwrap();
    let file = fs::metadata(out.join("data/file")).unwrap();
    assert_eq!((file.mode() & 0o7777, file.mtime(), file.nlink()), (0o640, 1_600_000_000, 2));
    assert_eq!(fs::read(out.join("data/sub/deep")).unwrap(), b"deep\n");
    assert_eq!(fs::read_link(out.join("data/link")).unwrap(), Path::new("file"));
    assert!(fs::read(out.join("data/big")).unwrap() == big());

    // `dir/.` is the directory's contents: they fill a new directory.
    let archive = copy_out(&mut sandbox, "/data/sub/.").await.unwrap();
    extract_to_host(&archive[..], &host.join("contents")).unwrap();
    assert_eq!(fs::read(host.join("contents/deep")).unwrap(), b"deep\n");

    // The container's own mounts are in view; the agent's view of its root has none of it.
    let archive = copy_out(&mut sandbox, "/mnt/vol/note").await.unwrap();
    extract_to_host(&archive[..], &host.join("note.txt")).unwrap();
    assert_eq!(fs::read(host.join("note.txt")).unwrap(), b"in-volume\n");
    let agent_view = sandbox.agent().read_dir("/run/containers/box/rootfs/mnt/vol").await.unwrap();
    assert!(agent_view.is_empty(), "{agent_view:?}");

    // Symlinks resolve inside the container: up from /tmp is the container's root, never
    // the agent's (whose / holds only vessel-init and its mounts).
    let mut escape = Vec::new();
    let escape_dir = host.join("escaped");
    fs::write(&escape_dir, b"contained\n").unwrap();
    archive_host_path(&escape_dir, &mut escape).unwrap();
    copy_in(&mut sandbox, "/tmp/up/", escape).await.unwrap();
    assert_eq!(sh(&mut sandbox, "root", "cat /escaped").await, "contained\n");
    let agent_root = sandbox.agent().read_dir("/").await.unwrap();
    assert!(!agent_root.iter().any(|entry| entry.name == "escaped"), "{agent_root:?}");
    let agent_files = copy_out(&mut sandbox, "/tmp/up/run/containers").await;
    assert_eq!(code(agent_files), tonic::Code::NotFound);

    // docker cp's errors.
    assert_eq!(code(copy_out(&mut sandbox, "/no/such/file").await), tonic::Code::NotFound);
    let mut one_file = Vec::new();
    archive_host_path(&escape_dir, &mut one_file).unwrap();
    let missing_parent = copy_in(&mut sandbox, "/no/such/dir", one_file.clone()).await;
    assert_eq!(code(missing_parent), tonic::Code::NotFound);
    let relative = copy_in(&mut sandbox, "data", one_file).await;
    assert_eq!(code(relative), tonic::Code::InvalidArgument);
    let onto_file = copy_in(&mut sandbox, "/etc/passwd", host_tree(&host.join("again"))).await;
    assert_eq!(code(onto_file), tonic::Code::InvalidArgument);
    sandbox.agent().create_container(common::container("ro", false)).await.unwrap();
    let read_only = sandbox.copy_in("ro", "/", std::io::Cursor::new(Vec::new())).await;
    assert_eq!(code(read_only), tonic::Code::FailedPrecondition);

    // Once the first process has ended, copies resolve in the root directory again; the
    // volume went with its namespace.
    sandbox.agent().signal_process("first", 9).await.unwrap();
    first.wait(sandbox.agent()).await.unwrap();
    let archive = copy_out(&mut sandbox, "/data/file").await.unwrap();
    extract_to_host(&archive[..], &host.join("after")).unwrap();
    assert_eq!(fs::read(host.join("after")).unwrap(), b"hello\n");
    assert_eq!(code(copy_out(&mut sandbox, "/mnt/vol/note").await), tonic::Code::NotFound);

    let stopped = sandbox.shutdown(SHUTDOWN_TIMEOUT).await.unwrap();
    assert_eq!(stopped.exit, VmExit::GuestExit, "{}", stopped.console);
    for image in [&rootfs, &writable] {
        common::assert_fsck_clean(image);
    }
}
