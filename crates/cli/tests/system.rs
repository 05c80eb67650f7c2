//! `vessel system selftest` and `vessel system check`, end to end: real VMs under the host's
//! accelerator (TCG on our build machines), the real agent, real failure paths.

mod common;

use common::{processes_mentioning, TestRoot};
use std::time::Duration;

fn selftest_json(root: &TestRoot, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["system", "selftest", "--format", "json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&root.ok(&args)).expect("selftest prints JSON")
}

fn assert_nothing_left(root: &TestRoot) {
    let needle = root.path().display().to_string();
    let left = processes_mentioning(&needle);
    assert!(left.is_empty(), "processes outlived the VM: {left:#?}");
    let vm_dirs: Vec<_> = std::fs::read_dir(root.path().join("run/vm"))
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(vm_dirs.is_empty(), "VM directories outlived their VM: {vm_dirs:?}");
}

#[test]
fn selftest_boots_a_vm_and_talks_to_its_agent() {
    let root = TestRoot::new();
    let report = selftest_json(&root, &[]);

    assert!(report["kernel_release"].as_str().unwrap().starts_with("6.12."), "{report}");
    assert_eq!(report["agent_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(report["cpus"], 1);
    let memory = report["memory_total_bytes"].as_u64().unwrap();
    assert!((200 << 20..=256 << 20).contains(&memory), "guest memory {memory}");
    let ready = report["ready_ms"].as_f64().unwrap();
    let info = report["info_ms"].as_f64().unwrap();
    let off = report["off_ms"].as_f64().unwrap();
    assert!(0.0 < ready && ready <= info && info <= off, "{report}");

    // What the guest kernel config promises (kernel/vessel.config).
    let listed = |key: &str| -> Vec<String> {
        report[key].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
    };
    let filesystems = listed("filesystems");
    for fs in ["ext4", "overlay", "tmpfs", "devtmpfs", "cgroup2", "fuse", "virtiofs", "proc"] {
        assert!(filesystems.iter().any(|f| f == fs), "no {fs} in {filesystems:?}");
    }
    let controllers = listed("cgroup_controllers");
    for controller in ["cpu", "memory", "pids", "io"] {
        assert!(controllers.iter().any(|c| c == controller), "no {controller}: {controllers:?}");
    }
    let namespaces = listed("namespaces");
    for ns in ["cgroup", "ipc", "mnt", "net", "pid", "user", "uts"] {
        assert!(namespaces.iter().any(|n| n == ns), "no {ns} namespace: {namespaces:?}");
    }

    assert_eq!(report["clean_shutdown"], true);
    let console = report["console"].as_str().unwrap();
    assert!(console.contains("vessel-init: shutdown requested by the host"), "{console}");
    assert!(console.contains("vessel-init: syncing filesystems and powering off"), "{console}");
    assert!(console.contains("reboot: Restarting system"), "{console}");
    assert!(!console.contains("error"), "{console}");
    assert_nothing_left(&root);
}

#[test]
fn selftest_sizes_the_vm() {
    let root = TestRoot::new();
    let report = selftest_json(&root, &["--cpus", "2", "--memory", "512"]);
    assert_eq!(report["cpus"], 2);
    let memory = report["memory_total_bytes"].as_u64().unwrap();
    assert!((450 << 20..=512 << 20).contains(&memory), "guest memory {memory}");
    assert_nothing_left(&root);
}

/// Both directions at once through one stream, every byte checked: rust-vmm's
/// vhost-device-vsock stalled here (docs/vsock.md); our vessel-vsock must not.
#[test]
fn vsock_streams_carry_64_mib_each_way() {
    let root = TestRoot::new();
    let report = selftest_json(&root, &["--transfer-mib", "64"]);
    assert_eq!(report["transfer_bytes"], 64u64 << 20);
    assert!(report["transfer_mb_per_second"].as_f64().unwrap() > 1.0, "{report}");
    assert_nothing_left(&root);
}

#[test]
fn a_killed_vessel_leaves_no_vm_behind() {
    let root = TestRoot::new();
    // The echo keeps the VM busy for a second or more, restored or booted.
    let mut child = root.command(&["system", "selftest", "--transfer-mib", "64"]).spawn().unwrap();
    // Killed as soon as its QEMU runs.
    let qemu_runs = || {
        processes_mentioning(&root.path().display().to_string())
            .iter()
            .any(|process| process.contains("qemu-system"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !qemu_runs() {
        assert!(std::time::Instant::now() < deadline, "the VM never started");
        assert!(child.try_wait().unwrap().is_none(), "the selftest ended first");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // PR_SET_PDEATHSIG delivers SIGKILL to the VM processes; give the kernel a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let needle = root.path().display().to_string();
    while !processes_mentioning(&needle).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(processes_mentioning(&needle).is_empty());
    // The next VM on this root removes what the killed one left.
    selftest_json(&root, &[]);
    assert_nothing_left(&root);
}

#[test]
fn selftest_without_a_kernel_fails_with_the_fix() {
    let root = TestRoot::new();
    let output = root
        .command(&["system", "selftest"])
        .env("VESSEL_KERNEL", root.path().join("no-such-vmlinux"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("guest kernel not found"), "{stderr}");
    assert!(stderr.contains("kernel/build"), "{stderr}");
    assert_nothing_left(&root);
}

#[test]
fn check_passes_on_a_set_up_host() {
    let root = TestRoot::new();
    let out = root.ok(&["system", "check", "--format", "json"]);
    let items: serde_json::Value = serde_json::from_str(&out).unwrap();
    for item in items.as_array().unwrap() {
        assert_eq!(item["ok"], true, "{item}");
    }
}

#[test]
fn check_without_qemu_says_what_to_install() {
    let root = TestRoot::new();
    let output = root
        .command(&["system", "check"])
        .env("PATH", "/nonexistent")
        .env_remove("VESSEL_QEMU")
        .env_remove("VESSEL_VSOCK")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("MISSING qemu"), "{stdout}");
    assert!(stdout.contains("fix: apt-get install qemu-system-x86"), "{stdout}");
    // vessel-vsock (the agent channel's host end) is vessel's own and sits beside the binary.
    assert!(stdout.contains("ok      agent channel"), "{stdout}");
}

#[test]
fn check_without_the_kernel_cache_says_how_to_build_it() {
    let root = TestRoot::new();
    let output = root
        .command(&["system", "check"])
        .env("VESSEL_CACHE", root.path().join("empty-cache"))
        .env_remove("VESSEL_KERNEL")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("MISSING guest kernel"), "{stdout}");
    assert!(stdout.contains("kernel/build"), "{stdout}");
}
