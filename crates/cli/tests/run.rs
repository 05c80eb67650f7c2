//! `vessel run` in the foreground, end to end: an image imported from a busybox-static root
//! filesystem, a real VM per container, docker's exit codes.

mod common;

use common::pty::PtySession;
use common::{processes_mentioning, TestRoot};
use std::io::Write;
use std::process::Stdio;

/// The image the README's set-up makes (scripts/demo-image, from busybox-static).
const IMAGE: &str = "vessel.local/busybox";

fn import_busybox(root: &TestRoot) {
    common::import_demo_image(root);
}

/// Nothing outlives the test's containers: no process, VM directory or control socket,
/// and (all of them ran with --rm) no container.
fn assert_nothing_left(root: &TestRoot) {
    let left = processes_mentioning(&root.path().display().to_string());
    assert!(left.is_empty(), "processes outlived the container: {left:#?}");
    for dir in ["run/vm", "run/ctl", "containers"] {
        let entries: Vec<_> = std::fs::read_dir(root.path().join(dir))
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(entries.is_empty(), "{dir} outlived the container: {entries:?}");
    }
}

#[test]
fn run_passes_output_environment_and_exit_code() {
    let root = TestRoot::new();
    import_busybox(&root);
    let env_file = root.path().join("env");
    std::fs::write(&env_file, "# settings\nFROM_FILE=yes\n").unwrap();
    let output = root.run(&[
        "run",
        "--rm",
        "-e",
        "GREETING=hi",
        "--env-file",
        env_file.to_str().unwrap(),
        "-w",
        "/work",
        "-u",
        "nobody",
        "--hostname",
        "box",
        IMAGE,
        "sh",
        "-c",
        "echo $GREETING $FROM_FILE; pwd; id -u; hostname; echo oops >&2; exit 7",
    ]);
    assert_eq!(output.status.code(), Some(7), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "hi yes\n/work\n65534\nbox\n");
    assert!(String::from_utf8_lossy(&output.stderr).ends_with("oops\n"));
    assert_nothing_left(&root);
}

/// `-m` and `--cpus` size the VM and limit the container's cgroup, which the container sees
/// as its own /sys/fs/cgroup.
#[test]
fn run_limits_are_visible_inside() {
    let root = TestRoot::new();
    import_busybox(&root);
    let output = root.run(&[
        "run",
        "--rm",
        "-m",
        "100m",
        "--cpus",
        "1.5",
        IMAGE,
        "sh",
        "-c",
        "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max; nproc",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "104857600\n150000 100000\n2\n");
    assert_nothing_left(&root);
}

#[test]
fn run_with_interactive_stdin_and_a_read_only_root() {
    let root = TestRoot::new();
    import_busybox(&root);
    let mut child = root
        .command(&["run", "--rm", "-i", IMAGE, "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"through stdin\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "through stdin\n");

    let output = root.run(&["run", "--rm", "--read-only", IMAGE, "touch", "/made"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("Read-only file system"));
    assert_nothing_left(&root);
}

#[test]
fn run_failures_use_dockers_exit_codes() {
    let root = TestRoot::new();
    import_busybox(&root);
    let output = root.run(&["run", "--rm", IMAGE, "no-such-command"]);
    assert_eq!(output.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no such file or directory"));

    // (--pull never: tests reach no registry but their own on 127.0.0.1)
    let output = root.run(&["run", "--pull", "never", "test/absent:latest", "true"]);
    assert_eq!(output.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("vessel: ") && stderr.lines().count() == 1, "{stderr}");
    assert_nothing_left(&root);
}

/// `run -it` through a real pseudo-terminal: echo, the terminal's size at start and after a
/// resize, and the shell's exit code.
#[test]
fn run_with_a_terminal_follows_its_size() {
    let root = TestRoot::new();
    import_busybox(&root);
    let mut terminal =
        PtySession::spawn(root.command(&["run", "--rm", "-it", IMAGE, "sh"]), 30, 100);
    terminal.wait_for("/ # ");
    terminal.type_text("stty size; echo $((6*7))\n");
    terminal.wait_for("42");
    assert!(terminal.output().contains("30 100"), "{:?}", terminal.output());
    // Echo: what we typed comes back from the container's terminal.
    assert!(terminal.output().contains("stty size; echo $((6*7))"));

    terminal.resize(40, 120);
    std::thread::sleep(std::time::Duration::from_millis(500));
    terminal.type_text("stty size; exit 5\n");
    terminal.wait_for("40 120");
    assert_eq!(terminal.wait().code(), Some(5));
    assert_nothing_left(&root);
}

/// As `docker run`, a missing image is pulled first; progress goes to stderr, so stdout is
/// the container's alone.
#[test]
fn run_pulls_a_missing_image() {
    let registry = common::registry::Registry::start();
    let archive = common::registry::busybox().join("busybox-amd64.tar");
    registry.push(&format!("oci-archive:{}", archive.display()), "busybox:latest", &[]);
    let root = TestRoot::new();
    let image = format!("{}/busybox", registry.addr);
    let output = root.run(&["run", "--rm", &image, "echo", "pulled and ran"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "pulled and ran\n");
    assert!(String::from_utf8_lossy(&output.stderr).contains("Unable to find image"));

    let output = root.run(&["run", "--pull", "never", "test/absent", "true"]);
    assert_eq!(output.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&output.stderr).contains("image not found"));
    assert_nothing_left(&root);
}
