//! Volumes, bind mounts and tmpfs through the CLI, end to end (issue #7): named volumes
//! outlive containers and start with the image's files, read-only mounts refuse writes,
//! tmpfs sizes hold, and bad sources fail with vessel's exit code.

mod common;

use common::images::{busybox_root, BUSYBOX as IMAGE};

#[test]
fn a_named_volume_outlives_its_containers_and_starts_with_the_images_files() {
    let root = busybox_root();
    // First use: created, and filled with what the image has at /etc.
    let listing = root.ok(&[
        "run",
        "--name",
        "first",
        "-v",
        "conf:/etc",
        IMAGE,
        "sh",
        "-c",
        "ls /etc; echo kept > /etc/written",
    ]);
    assert!(listing.contains("passwd") && listing.contains("group"), "{listing}");
    assert_eq!(root.ok(&["volume", "ls", "-q"]), "conf\n");
    let output = root.run(&["volume", "rm", "conf"]);
    assert_eq!(output.status.code(), Some(125), "a volume a container uses stays");
    root.ok(&["rm", "first"]);

    // Another container sees the data; read-only, it cannot change it.
    assert_eq!(
        root.ok(&["run", "--rm", "-v", "conf:/data:ro", IMAGE, "cat", "/data/written"]),
        "kept\n"
    );
    let output = root.run(&["run", "--rm", "-v", "conf:/data:ro", IMAGE, "touch", "/data/new"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("Read-only file system"));
    let inspect: serde_json::Value =
        serde_json::from_str(&root.ok(&["volume", "inspect", "conf"])).unwrap();
    assert_eq!(inspect[0]["Name"], "conf");
    root.ok(&["volume", "rm", "conf"]);
    assert!(root.ok(&["volume", "ls", "-q"]).is_empty());
}

#[test]
fn anonymous_volumes_go_with_their_container_and_tmpfs_sizes_hold() {
    let root = busybox_root();
    root.ok(&["run", "--rm", "-v", "/cache", IMAGE, "sh", "-c", "echo x > /cache/f"]);
    assert!(root.ok(&["volume", "ls", "-q"]).is_empty(), "--rm removes anonymous volumes");
    root.ok(&["create", "--name", "keeper", "-v", "/cache", IMAGE, "true"]);
    let inspect: serde_json::Value =
        serde_json::from_str(&root.ok(&["inspect", "keeper"])).unwrap();
    assert_eq!(inspect[0]["Mounts"][0]["Type"], "volume");
    assert_eq!(inspect[0]["Mounts"][0]["Destination"], "/cache");
    assert_eq!(root.ok(&["volume", "ls", "-q"]).lines().count(), 1);
    root.ok(&["rm", "-v", "keeper"]);
    assert!(root.ok(&["volume", "ls", "-q"]).is_empty(), "rm -v removes anonymous volumes");

    let script = "dd if=/dev/zero of=/scratch/a bs=1024 count=512 2>/dev/null && echo fits; \
                  dd if=/dev/zero of=/scratch/b bs=1024 count=1024 2>/dev/null || echo full; \
                  stat -c %a /scratch";
    let out = root.ok(&[
        "run",
        "--rm",
        "--tmpfs",
        "/scratch:size=1m,mode=1770",
        IMAGE,
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(out, "fits\nfull\n1770\n");
    let shm = "df -k /dev/shm | tail -1 | awk '{print $2}'";
    assert_eq!(root.ok(&["run", "--rm", IMAGE, "sh", "-c", shm]), "65536\n", "docker's 64 MiB");
    assert_eq!(root.ok(&["run", "--rm", "--shm-size", "8m", IMAGE, "sh", "-c", shm]), "8192\n");
}

#[test]
fn bad_mount_sources_fail_before_anything_runs() {
    let root = busybox_root();
    let output = root.run(&["run", "--rm", "-v", "/no/such/dir:/x", IMAGE, "true"]);
    assert_eq!(output.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/no/such/dir") && stderr.contains("does not exist"), "{stderr}");
    let output = root.run(&["run", "--rm", "-v", "data:relative", IMAGE, "true"]);
    assert_eq!(output.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&output.stderr).contains("absolute path"));
    let output = root.run(&["run", "--rm", "-v", "data:/a", "-v", "data:/b", IMAGE, "true"]);
    assert_eq!(output.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&output.stderr).contains("mounted twice"));
    // An anonymous volume made before a later mount failed is not left behind.
    let output = root.run(&["run", "--rm", "-v", "/cache", "-v", "/no/such/dir:/x", IMAGE, "true"]);
    assert_eq!(output.status.code(), Some(125));
    assert!(root.ok(&["ps", "-a", "-q"]).is_empty());
    let volumes = root.ok(&["volume", "ls", "-q"]);
    assert_eq!(volumes, "data\n", "only the named volume stays");
}

/// A host directory bind-mounted over virtio-fs: the container reads it and writes to it,
/// the host sees the writes owned by the container's user, and `:ro` refuses writes.
#[test]
fn a_bind_mounted_host_directory_is_shared_both_ways() {
    use std::os::unix::fs::MetadataExt;
    let root = busybox_root();
    let shared = root.path().join("shared");
    std::fs::create_dir_all(shared.join("mine")).unwrap();
    std::fs::write(shared.join("from-host"), "hello from the host\n").unwrap();
    std::os::unix::fs::chown(shared.join("mine"), Some(1000), Some(1000)).unwrap();
    let volume = format!("{}:/src", shared.display());
    let out = root.ok(&[
        "run",
        "--rm",
        "-v",
        &volume,
        "-w",
        "/src",
        IMAGE,
        "sh",
        "-c",
        "cat from-host; echo by root > by-root",
    ]);
    assert!(out.starts_with("hello from the host\n"), "{out}");
    assert_eq!(std::fs::read_to_string(shared.join("by-root")).unwrap(), "by root\n");
    assert_eq!(std::fs::metadata(shared.join("by-root")).unwrap().uid(), 0);
    // As another user: the host sees that user's ids.
    root.ok(&[
        "run",
        "--rm",
        "-u",
        "1000:1000",
        "-v",
        &volume,
        IMAGE,
        "sh",
        "-c",
        "echo by 1000 > /src/mine/by-user",
    ]);
    let metadata = std::fs::metadata(shared.join("mine/by-user")).unwrap();
    assert_eq!((metadata.uid(), metadata.gid()), (1000, 1000));

    let read_only = format!("{}:/src:ro", shared.display());
    let output = root.run(&[
        "run",
        "--rm",
        "-v",
        &read_only,
        IMAGE,
        "sh",
        "-c",
        "echo changed > /src/from-host",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("Read-only file system"));
    assert_eq!(std::fs::read_to_string(shared.join("from-host")).unwrap(), "hello from the host\n");

    // `:U`: what the container creates belongs to the invoking user (here as if run with
    // sudo by uid 4321), and that user's files are root's inside.
    // (The user's own directory, as a project checkout would be.)
    let project = shared.join("project");
    std::fs::create_dir(&project).unwrap();
    std::fs::write(project.join("theirs"), "x").unwrap();
    for path in [&project, &project.join("theirs")] {
        std::os::unix::fs::chown(path, Some(4321), Some(4322)).unwrap();
    }
    let mapped = format!("{}:/src:U", project.display());
    let output = root
        .command(&[
            "run",
            "--rm",
            "-v",
            &mapped,
            IMAGE,
            "sh",
            "-c",
            "stat -c %u:%g /src/theirs; echo mine > /src/made-by-u",
        ])
        .env("SUDO_UID", "4321")
        .env("SUDO_GID", "4322")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "0:0\n", "{output:?}");
    let metadata = std::fs::metadata(project.join("made-by-u")).unwrap();
    assert_eq!((metadata.uid(), metadata.gid()), (4321, 4322));

    // A single file: shared alone (its siblings stay out of the VM), read and written.
    let file = format!("{}:/etc/app.conf", shared.join("from-host").display());
    let out = root.ok(&[
        "run",
        "--rm",
        "-v",
        &file,
        IMAGE,
        "sh",
        "-c",
        "cat /etc/app.conf; echo appended >> /etc/app.conf; ls /etc | grep -c by-root || true",
    ]);
    assert_eq!(out, "hello from the host\n0\n");
    assert_eq!(
        std::fs::read_to_string(shared.join("from-host")).unwrap(),
        "hello from the host\nappended\n"
    );
    assert!(
        std::fs::read_dir(root.path().join("run/files")).map_or(true, |mut d| d.next().is_none()),
        "staged files outlived the container"
    );
}
