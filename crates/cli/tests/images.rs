//! Images end to end: a real `docker-registry` on 127.0.0.1, images built with buildah
//! and pushed with skopeo, and the real `vessel` binary. Nothing skips: a missing tool
//! fails the test with the package that has it.

mod common;

use common::registry::{busybox, need, sh, Registry, Setup};
use common::TestRoot;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn amd64() -> String {
    format!("oci-archive:{}", busybox().join("busybox-amd64.tar").display())
}

fn fail(root: &TestRoot, args: &[&str]) -> String {
    let output = root.run(args);
    assert_eq!(output.status.code(), Some(125), "vessel {args:?} should fail with 125: {output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("vessel: ")).collect();
    assert_eq!(lines.len(), 1, "one error line expected: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let line = lines[0].to_string();
    let first = line.trim_start_matches("vessel: ").chars().next().unwrap();
    assert!(!first.is_uppercase(), "error should start lowercase: {line}");
    line
}

fn inspect(root: &TestRoot, name: &str) -> Value {
    let out = root.ok(&["image", "inspect", name]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v[0].clone()
}

fn blobs(root: &TestRoot) -> usize {
    std::fs::read_dir(root.path().join("images/blobs/sha256")).map(|d| d.count()).unwrap_or(0)
}

fn snapshots(root: &TestRoot) -> Vec<PathBuf> {
    std::fs::read_dir(root.path().join("snapshots"))
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default()
}

fn e2fsck(path: &Path) {
    need("e2fsck", "e2fsprogs");
    sh(Command::new("e2fsck").arg("-fn").arg(path));
}

/// Store state that a failed command must leave as it was.
fn state(root: &TestRoot) -> (String, usize) {
    let index = std::fs::read_to_string(root.path().join("images/index.json")).unwrap_or_default();
    (index, blobs(root))
}

#[test]
fn pull_ls_inspect_tag_rm_prune() {
    let registry = Registry::start();
    registry.push(&amd64(), "busybox:latest", &[]);
    registry.push(&amd64(), "busybox:v2s2", &["--format", "v2s2"]);
    assert_eq!(
        registry.inspect_raw("busybox:v2s2")["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let root = TestRoot::new();
    let name = format!("{}/busybox", registry.addr);
    let out = root.ok(&["pull", &name]);
    assert_eq!(out.trim(), format!("{name}:latest"));
    let image = inspect(&root, &name);
    assert_eq!(image["Os"], "linux");
    assert_eq!(image["Architecture"], "amd64");
    assert_eq!(image["Config"]["Cmd"][0], "/bin/sh");
    assert_eq!(image["Snapshot"]["Exists"], true);
    let snapshot = PathBuf::from(image["Snapshot"]["Path"].as_str().unwrap());
    e2fsck(&snapshot);
    // skopeo reads our store.
    let layout = format!("oci:{}:{name}:latest", root.path().join("images").display());
    let skopeo: Value =
        serde_json::from_str(&sh(Command::new("skopeo").args(["inspect", &layout]))).unwrap();
    assert_eq!(skopeo["Architecture"], "amd64");

    // The docker v2s2 variant has the same layers: the snapshot is shared.
    let second = root.run(&["image", "pull", &format!("{name}:v2s2")]);
    assert!(second.status.success(), "{second:?}");
    assert!(String::from_utf8_lossy(&second.stderr).contains("already exists"));
    let v2 = inspect(&root, &format!("{name}:v2s2"));
    assert_eq!(v2["Snapshot"]["Path"], image["Snapshot"]["Path"]);
    // Stored with OCI's media types (as `skopeo copy … oci:` does), so OCI tools read it.
    assert_eq!(v2["Manifest"]["MediaType"], "application/vnd.oci.image.manifest.v1+json");
    let registry_digest = sh(Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
        .arg(format!("docker://{name}:v2s2")));
    let by_digest = inspect(&root, &format!("{name}@{}", registry_digest.trim()));
    assert_eq!(by_digest["Id"], v2["Id"]);
    let layout = format!("oci:{}:{name}:v2s2", root.path().join("images").display());
    sh(Command::new("skopeo").args(["inspect", &layout]));

    // Pulling again fetches nothing.
    let again = root.run(&["pull", "--quiet", &name]);
    assert!(again.status.success());

    // ls: table, json, ids.
    let table = root.ok(&["images"]);
    assert!(table.lines().next().unwrap().starts_with("REPOSITORY"));
    assert_eq!(table.lines().count(), 3, "{table}");
    let json: Value = serde_json::from_str(&root.ok(&["image", "ls", "--format", "json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);
    let ids = root.ok(&["image", "ls", "-q"]);
    assert_eq!(ids.lines().count(), 1, "both names are one image: {ids}");
    let id = ids.trim().to_string();

    // tag, then remove names one by one.
    root.ok(&["tag", &name, "localhost/mine:1"]);
    assert_eq!(inspect(&root, "localhost/mine:1")["Id"], image["Id"]);
    // An id naming several images needs --force.
    fail(&root, &["rmi", &id]);
    root.ok(&["rmi", &name, &format!("{name}:v2s2")]);
    assert!(snapshot.is_file(), "still needed by localhost/mine:1");
    assert!(blobs(&root) > 0);
    root.ok(&["image", "rm", "localhost/mine:1"]);
    assert!(!snapshot.exists());
    assert!(snapshots(&root).is_empty());
    assert_eq!(blobs(&root), 0);
    let prune = root.ok(&["image", "prune"]);
    assert!(prune.contains("Deleted 0 blobs"), "{prune}");
    fail(&root, &["image", "inspect", &name]);
}

#[test]
fn manifest_lists_select_the_platform() {
    let registry = Registry::start();
    need("buildah", "buildah");
    let archives: Vec<String> = ["amd64", "arm64"]
        .iter()
        .map(|a| busybox().join(format!("busybox-{a}.tar")).display().to_string())
        .collect();
    for (tag, format) in [("oci", "oci"), ("v2s2", "v2s2")] {
        sh(Command::new(common::registry::repo().join("tests/images/push-list"))
            .arg(format!("{}/multi:{tag}", registry.addr))
            .arg(format)
            .args(&archives));
    }
    let root = TestRoot::new();
    for tag in ["oci", "v2s2"] {
        let name = format!("{}/multi:{tag}", registry.addr);
        root.ok(&["pull", &name]);
        assert_eq!(inspect(&root, &name)["Architecture"], "amd64");
        let arm = format!("{}/multi-arm:{tag}", registry.addr);
        root.ok(&["pull", "--platform", "linux/arm64", &name]);
        assert_eq!(inspect(&root, &name)["Architecture"], "arm64");
        let _ = arm;
        let line = fail(&root, &["pull", "--platform", "linux/s390x", &name]);
        assert!(line.contains("linux/s390x") && line.contains("--platform"), "{line}");
    }
}

#[test]
fn push_is_checked_by_pulling_back_with_skopeo() {
    let registry = Registry::start();
    registry.push(&amd64(), "busybox:latest", &[]);
    let root = TestRoot::new();
    let name = format!("{}/busybox:latest", registry.addr);
    root.ok(&["pull", "-q", &name]);
    let copy = format!("{}/copy/busybox:1", registry.addr);
    root.ok(&["tag", &name, &copy]);
    let push = root.run(&["push", &copy]);
    assert!(push.status.success(), "{push:?}");
    let stderr = String::from_utf8_lossy(&push.stderr);
    assert!(stderr.contains("mounted from busybox"), "cross-repository mount expected: {stderr}");
    let pushed = registry.inspect_raw("copy/busybox:1");
    assert_eq!(
        pushed["layers"][0]["digest"],
        inspect(&root, &name)["Manifest"]["Layers"][0]["Digest"]
    );
    // Pull it back with skopeo into an OCI directory.
    let out = tempfile::tempdir().unwrap();
    let mut command = Command::new("skopeo");
    command.args(["copy", "--quiet"]).args(registry.skopeo_flags(Some("src")));
    command.arg(format!("docker://{copy}")).arg(format!("oci:{}:x", out.path().display()));
    sh(&mut command);
    // A second push finds everything there.
    let again = root.run(&["image", "push", &copy]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    // Another registry has nothing to mount from: every blob is uploaded.
    let second = Registry::start();
    let uploaded = format!("{}/uploaded:1", second.addr);
    let push = root.run(&["push", &name, &uploaded]);
    assert!(push.status.success(), "{push:?}");
    assert!(String::from_utf8_lossy(&push.stderr).contains("upload done"), "{push:?}");
    let out = tempfile::tempdir().unwrap();
    let mut command = Command::new("skopeo");
    command.args(["copy", "--quiet"]).args(second.skopeo_flags(Some("src")));
    command.arg(format!("docker://{uploaded}")).arg(format!("oci:{}:x", out.path().display()));
    sh(&mut command);
    let fresh = TestRoot::new();
    fresh.ok(&["pull", "-q", &uploaded]);
    assert_eq!(inspect(&fresh, &uploaded)["Id"], inspect(&root, &name)["Id"]);
}

#[test]
fn save_load_and_import_round_trip() {
    let registry = Registry::start();
    registry.push(&amd64(), "busybox:latest", &[]);
    let root = TestRoot::new();
    let name = format!("{}/busybox:latest", registry.addr);
    root.ok(&["pull", "-q", &name]);
    let id = inspect(&root, &name)["Id"].clone();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("busybox.tar");
    root.ok(&["image", "save", "-o", archive.to_str().unwrap(), &name]);
    for transport in [
        format!("oci-archive:{}:{name}", archive.display()),
        format!("docker-archive:{}", archive.display()),
    ] {
        let out: Value =
            serde_json::from_str(&sh(Command::new("skopeo").args(["inspect", &transport])))
                .unwrap();
        assert_eq!(out["Architecture"], "amd64", "{transport}");
    }
    // Load into a fresh store, from a file and from standard input.
    let other = TestRoot::new();
    let out = other.ok(&["image", "load", "-q", "-i", archive.to_str().unwrap()]);
    assert!(out.contains("Loaded image"), "{out}");
    assert_eq!(inspect(&other, &name)["Id"], id);
    assert_eq!(inspect(&other, &name)["Snapshot"]["Exists"], true);
    let third = TestRoot::new();
    let mut load = third.command(&["image", "load", "-q"]);
    load.stdin(std::fs::File::open(&archive).unwrap());
    assert!(load.output().unwrap().status.success());
    assert_eq!(inspect(&third, &name)["Id"], id);
    // A docker-archive written by skopeo (manifest.json only) loads too.
    let docker = dir.path().join("docker.tar");
    sh(Command::new("skopeo")
        .args(["copy", "--quiet", &amd64()])
        .arg(format!("docker-archive:{}:dockerish:1", docker.display())));
    let fourth = TestRoot::new();
    fourth.ok(&["image", "load", "-q", "-i", docker.to_str().unwrap()]);
    e2fsck(Path::new(inspect(&fourth, "dockerish:1")["Snapshot"]["Path"].as_str().unwrap()));
    // Saving to standard output.
    let mut save = root.command(&["image", "save", &name]);
    let output = save.output().unwrap();
    assert!(output.status.success());
    assert!(output.stdout.len() > 1_000_000);

    // import: a rootfs tarball (here from a directory) becomes a one-layer image.
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::write(rootfs.join("etc/motd"), "imported\n").unwrap();
    let tarball = dir.path().join("rootfs.tar.gz");
    sh(Command::new("tar").arg("-czf").arg(&tarball).arg("-C").arg(&rootfs).arg("."));
    let imported = TestRoot::new();
    let id =
        imported.ok(&["image", "import", "-q", tarball.to_str().unwrap(), "localhost/imported:1"]);
    let image = inspect(&imported, "localhost/imported:1");
    assert_eq!(image["Id"], id.trim());
    assert_eq!(image["RootFS"]["Layers"].as_array().unwrap().len(), 1);
    e2fsck(Path::new(image["Snapshot"]["Path"].as_str().unwrap()));
    let mut stdin = imported.command(&["image", "import", "-q", "-", "localhost/imported:2"]);
    stdin.stdin(std::fs::File::open(&tarball).unwrap());
    assert!(stdin.output().unwrap().status.success());
    let before = state(&imported);
    let junk = dir.path().join("junk");
    std::fs::write(&junk, "this is not a tarball at all, not even close".repeat(40)).unwrap();
    fail(&imported, &["image", "import", junk.to_str().unwrap(), "localhost/imported:3"]);
    fail(&imported, &["image", "load", "-i", junk.to_str().unwrap()]);
    assert_eq!(state(&imported).0, before.0);
}

#[test]
fn tls_and_basic_auth() {
    use std::os::unix::fs::PermissionsExt;
    let registry = Registry::with(Setup { tls: true, auth: Some(("tester", "s3cret")) });
    registry.push(&amd64(), "private/busybox:latest", &[]);
    let root = TestRoot::new();
    // The test CA, where docker keeps such certificates (<root>/certs.d/<registry>/).
    let certs = root.path().join("certs.d").join(&registry.addr);
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(registry.ca.as_ref().unwrap(), certs.join("ca.crt")).unwrap();
    let name = format!("{}/private/busybox:latest", registry.addr);
    let line = fail(&root, &["pull", &name]);
    assert!(line.contains("vessel registry login"), "{line}");
    let mut wrong =
        root.command(&["registry", "login", "-u", "tester", "--password-stdin", &registry.addr]);
    wrong.stdin(std::process::Stdio::piped());
    let mut child = wrong
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"wrong\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(125), "{output:?}");
    assert!(!root.path().join("auth.json").exists());
    root.ok(&["registry", "login", "-u", "tester", "-p", "s3cret", &registry.addr]);
    let mode = std::fs::metadata(root.path().join("auth.json")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let out = root.run(&["pull", &name]);
    assert!(out.status.success(), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("plain HTTP"));
    // Push to the TLS registry too.
    root.ok(&["tag", &name, &format!("{}/private/again:1", registry.addr)]);
    root.ok(&["push", "-q", &format!("{}/private/again:1", registry.addr)]);
    registry.inspect_raw("private/again:1");
    root.ok(&["registry", "logout", &registry.addr]);
    fail(&root, &["pull", &format!("{}/private/again:1", registry.addr)]);
    // Without the CA, TLS verification fails with one clear line.
    let bare = TestRoot::new();
    bare.ok(&[
        "registry",
        "login",
        "-u",
        "tester",
        "-p",
        "s3cret",
        "--certs-dir",
        certs.parent().unwrap().to_str().unwrap(),
        &registry.addr,
    ]);
    let line = fail(&bare, &["pull", &name]);
    assert!(line.contains("cannot reach") || line.contains("certificate"), "{line}");
    // docker's config.json is read too.
    let docker = tempfile::tempdir().unwrap();
    let auth = sh(Command::new("sh").arg("-c").arg("printf tester:s3cret | base64"));
    std::fs::write(
        docker.path().join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#, registry.addr, auth.trim()),
    )
    .unwrap();
    let via_docker = TestRoot::new();
    let mut pull = via_docker.command(&[
        "pull",
        "-q",
        "--certs-dir",
        certs.parent().unwrap().to_str().unwrap(),
        &name,
    ]);
    pull.env("DOCKER_CONFIG", docker.path());
    let out = pull.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    // …and its credential helpers (`credHelpers`, then `credsStore`).
    let bin = tempfile::tempdir().unwrap();
    let helper = bin.path().join("docker-credential-vesseltest");
    std::fs::write(
        &helper,
        "#!/bin/sh\nread server\necho \"$server\" >> \"$(dirname \"$0\")/asked\"\necho '{\"Username\":\"tester\",\"Secret\":\"s3cret\"}'\n",
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap());
    for config in [
        format!(r#"{{"credHelpers":{{"{}":"vesseltest"}}}}"#, registry.addr),
        r#"{"credsStore":"vesseltest"}"#.to_string(),
    ] {
        std::fs::write(docker.path().join("config.json"), config).unwrap();
        let helped = TestRoot::new();
        let certs_dir = certs.parent().unwrap().to_str().unwrap();
        let mut pull = helped.command(&["pull", "-q", "--certs-dir", certs_dir, &name]);
        pull.env("DOCKER_CONFIG", docker.path()).env("PATH", &path);
        let out = pull.output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let asked = std::fs::read_to_string(bin.path().join("asked")).unwrap();
    assert!(asked.contains(&registry.addr), "{asked}");
}

#[test]
fn concurrent_pulls_tags_and_removals_keep_the_store_consistent() {
    let registry = Registry::start();
    registry.push(&amd64(), "busybox:latest", &[]);
    let arm64 = format!("oci-archive:{}", busybox().join("busybox-arm64.tar").display());
    registry.push(&arm64, "other:latest", &[]);
    let root = TestRoot::new();
    let busybox = format!("{}/busybox:latest", registry.addr);
    let other = format!("{}/other:latest", registry.addr);
    for round in 0..3 {
        let mut children = Vec::new();
        let commands: Vec<Vec<String>> = vec![
            vec!["pull".into(), "-q".into(), busybox.clone()],
            vec![
                "pull".into(),
                "-q".into(),
                "--platform".into(),
                "linux/arm64".into(),
                other.clone(),
            ],
            vec!["pull".into(), "-q".into(), busybox.clone()],
            vec!["tag".into(), busybox.clone(), format!("localhost/t:{round}")],
            vec!["rmi".into(), other.clone()],
            vec!["image".into(), "prune".into()],
            vec!["rmi".into(), format!("localhost/t:{}", round.max(1) - 1)],
        ];
        for args in &commands {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            children.push(
                root.command(&args)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap(),
            );
        }
        for child in children {
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!stderr.contains("panicked"), "{stderr}");
            // Losing a race (removing what is not there yet) is fine; corruption is not.
            assert!(
                !stderr.contains("digest mismatch") && !stderr.contains("does not parse"),
                "{stderr}"
            );
        }
        check_consistent(&root);
    }
}

/// Every named image loads, has its blobs and can be read by skopeo; nothing is left in
/// ingest/ after a prune.
fn check_consistent(root: &TestRoot) {
    let list: Value = serde_json::from_str(&root.ok(&["image", "ls", "--format", "json"])).unwrap();
    for image in list.as_array().unwrap() {
        let name = image["Name"].as_str().unwrap();
        let layout = format!("oci:{}:{name}", root.path().join("images").display());
        sh(Command::new("skopeo").args(["inspect", &layout]));
        let inspected = inspect(root, name);
        for layer in inspected["Manifest"]["Layers"].as_array().unwrap() {
            let digest = layer["Digest"].as_str().unwrap().trim_start_matches("sha256:");
            assert!(
                root.path().join("images/blobs/sha256").join(digest).is_file(),
                "{name}: {digest} missing"
            );
        }
    }
    root.ok(&["image", "prune"]);
    assert_eq!(std::fs::read_dir(root.path().join("images/ingest")).unwrap().count(), 0);
}

#[test]
fn a_killed_pull_leaves_the_store_consistent() {
    let registry = Registry::start();
    registry.push(&amd64(), "busybox:latest", &[]);
    let root = TestRoot::new();
    let name = format!("{}/busybox:latest", registry.addr);
    for delay_ms in [0u64, 5, 10, 20, 40, 80, 120, 200] {
        root.ok(&["image", "prune"]);
        let _ = root.run(&["rmi", &name]);
        let mut child = root
            .command(&["pull", "-q", &name])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        let index = std::fs::read_to_string(root.path().join("images/index.json"))
            .unwrap_or_else(|_| "{}".into());
        serde_json::from_str::<Value>(&index).expect("index.json always parses");
        check_consistent(&root);
    }
    root.ok(&["pull", "-q", &name]);
    e2fsck(Path::new(inspect(&root, &name)["Snapshot"]["Path"].as_str().unwrap()));
}

/// The registry's stored copy of a blob.
fn registry_blob(registry: &Registry, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    registry
        .dir
        .path()
        .join("storage/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

#[test]
fn bad_input_gives_one_clear_line_and_leaves_the_store_alone() {
    let registry = Registry::start();
    registry.push(&amd64(), "good:latest", &[]);
    let root = TestRoot::new();
    root.ok(&["pull", "-q", &format!("{}/good", registry.addr)]);
    let before = state(&root);
    let check = |args: &[&str], expect: &str| {
        let line = fail(&root, args);
        assert!(line.contains(expect), "{args:?}: {line}");
        assert_eq!(state(&root), before, "{args:?} changed the store");
        assert_eq!(std::fs::read_dir(root.path().join("images/ingest")).unwrap().count(), 0);
    };
    check(&["pull", "Not A Reference"], "invalid image reference");
    check(&["pull", "127.0.0.1:1/nothing:here"], "cannot reach registry");
    check(&["pull", &format!("{}/missing:tag", registry.addr)], "not found");
    let wrong = format!("{}/good@sha256:{}", registry.addr, "0".repeat(64));
    check(&["pull", &wrong], "not found");

    // Tamper with what the registry serves: each copy gets its own repository.
    let manifest = registry.inspect_raw("good:latest");
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_string();
    let config = manifest["config"]["digest"].as_str().unwrap().to_string();
    let blob = registry_blob(&registry, &layer);
    let original = std::fs::read(&blob).unwrap();
    // Truncated layer.
    std::fs::write(&blob, &original[..original.len() / 2]).unwrap();
    let fresh = TestRoot::new();
    let line = fail(&fresh, &["pull", &format!("{}/good", registry.addr)]);
    assert!(line.contains("size mismatch") || line.contains("cannot download"), "{line}");
    let untouched = |root: &TestRoot| {
        let (index, blobs) = state(root);
        assert!(!index.contains("good"), "{index}");
        assert_eq!(blobs, 0, "a failed pull stored blobs");
    };
    untouched(&fresh);
    // Same size, wrong bytes.
    let mut corrupt = original.clone();
    let at = corrupt.len() / 2;
    corrupt[at] ^= 0xff;
    std::fs::write(&blob, &corrupt).unwrap();
    let line = fail(&fresh, &["pull", &format!("{}/good", registry.addr)]);
    assert!(line.contains("digest") || line.contains("cannot download"), "{line}");
    untouched(&fresh);
    std::fs::write(&blob, &original).unwrap();
    // A config that does not parse.
    let config_blob = registry_blob(&registry, &config);
    let config_bytes = std::fs::read(&config_blob).unwrap();
    let mut broken = vec![b'{'; config_bytes.len()];
    broken[0] = b'[';
    std::fs::write(&config_blob, &broken).unwrap();
    let line = fail(&fresh, &["pull", &format!("{}/good", registry.addr)]);
    assert!(line.contains("digest") || line.contains("parse"), "{line}");
    untouched(&fresh);
    std::fs::write(&config_blob, &config_bytes).unwrap();
    // A manifest that does not parse, one with an unknown media type, and a server
    // error: docker-registry checks what it serves, so a small fake registry sends these.
    for (body, content_type, expect) in [
        (&b"{\"schemaVersion\": 2, \"mediaType\": \"application/vnd.oci.image.manifest.v1+json\", \"layers\": 7}"[..], "application/vnd.oci.image.manifest.v1+json", "does not parse"),
        (&b"{\"schemaVersion\": 2, \"mediaType\": \"application/vnd.example.unknown+json\"}"[..], "application/vnd.example.unknown+json", "unsupported manifest media type"),
        (&b"<html>not json</html>"[..], "text/html", "unsupported manifest media type"),
    ] {
        let fake = common::registry::FakeRegistry::serving(body.to_vec(), content_type);
        let line = fail(&fresh, &["pull", &format!("{}/bad:1", fake.addr)]);
        assert!(line.contains(expect), "{line}");
        untouched(&fresh);
    }
    assert!(fresh.run(&["pull", "-q", &format!("{}/good", registry.addr)]).status.success());
    assert_eq!(std::fs::read_dir(fresh.path().join("images/ingest")).unwrap().count(), 0);
}

/// The Debian image from `debootstrap --variant=minbase` (built once, cached under
/// /var/cache/vessel/test-images): pulled, written to ext4, checked with e2fsck and
/// compared with the rootfs tarball it came from.
#[test]
fn debian_image_pulls_into_a_clean_snapshot() {
    need("debugfs", "e2fsprogs");
    let archive = sh(&mut Command::new(common::registry::repo().join("tests/images/debian")));
    let registry = Registry::start();
    registry.push(&format!("oci-archive:{}", archive.trim()), "debian:bookworm", &[]);
    let root = TestRoot::new();
    let name = format!("{}/debian:bookworm", registry.addr);
    root.ok(&["pull", "-q", "--max-concurrent-downloads", "1", &name]);
    let image = inspect(&root, &name);
    assert_eq!(image["Config"]["Cmd"][0], "/bin/bash");
    let snapshot = PathBuf::from(image["Snapshot"]["Path"].as_str().unwrap());
    e2fsck(&snapshot);
    let version =
        sh(Command::new("debugfs").arg("-R").arg("cat /rootfs/etc/debian_version").arg(&snapshot));
    assert!(version.trim().starts_with("12."), "{version}");
    let ls = sh(Command::new("debugfs").arg("-R").arg("ls -l /rootfs/usr/bin").arg(&snapshot));
    assert!(ls.contains("apt-get") && ls.contains("bash"), "{ls}");
    // Round trip through save and load keeps the same image and snapshot key.
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("debian.tar");
    root.ok(&["image", "save", "-o", saved.to_str().unwrap(), &name]);
    let other = TestRoot::new();
    other.ok(&["image", "load", "-q", "-i", saved.to_str().unwrap()]);
    assert_eq!(inspect(&other, &name)["Snapshot"]["Key"], image["Snapshot"]["Key"]);
}

/// A registry image whose layer is valid gzip but not a tar archive: the digests all
/// match, so only writing the snapshot finds out. The pull fails with one line and the
/// name is not kept.
#[test]
fn a_layer_that_is_not_a_tar_archive_is_not_kept() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
set -euo pipefail
cd "$1"
mkdir -p layout/blobs/sha256
head -c 20000 /dev/urandom | gzip -c > layer.gz
layer=$(sha256sum layer.gz | cut -d' ' -f1); lsize=$(stat -c %s layer.gz)
diff=$(gzip -dc layer.gz | sha256sum | cut -d' ' -f1)
mv layer.gz layout/blobs/sha256/$layer
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$diff" > config
config=$(sha256sum config | cut -d' ' -f1); csize=$(stat -c %s config)
mv config layout/blobs/sha256/$config
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' "$config" "$csize" "$layer" "$lsize" > manifest
manifest=$(sha256sum manifest | cut -d' ' -f1); msize=$(stat -c %s manifest)
mv manifest layout/blobs/sha256/$manifest
printf '{"imageLayoutVersion":"1.0.0"}' > layout/oci-layout
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"junk"}}]}' "$manifest" "$msize" > layout/index.json
"#;
    sh(Command::new("bash").arg("-c").arg(script).arg("bash").arg(dir.path()));
    registry.push(&format!("oci:{}:junk", dir.path().join("layout").display()), "junk:1", &[]);
    registry.push(&amd64(), "good:latest", &[]);
    let root = TestRoot::new();
    root.ok(&["pull", "-q", &format!("{}/good", registry.addr)]);
    let before = state(&root);
    let line = fail(&root, &["pull", &format!("{}/junk:1", registry.addr)]);
    assert!(line.contains("snapshot"), "{line}");
    assert_eq!(state(&root), before);
    assert!(snapshots(&root).len() <= 1);
}
