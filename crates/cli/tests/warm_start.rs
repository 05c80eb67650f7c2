//! Warm starts: containers restore a saved VM of their shape instead of booting one
//! (crates/vm/src/qemu/template.rs). A restored container must look like a booted one,
//! except where each copy has to be its own: random numbers, MAC address.

mod common;

use common::images::{busybox_root, BUSYBOX as IMAGE};
use common::{processes_mentioning, TestRoot};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// What a container reports about its VM.
const PROBE: &str = "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; \
                     cat /sys/class/net/eth0/address; nproc; cat /sys/fs/cgroup/memory.max; \
                     cat /proc/cmdline; \
                     mount | sed 's|/run/containers/[0-9a-f]*/|/run/containers/ID/|g' | sort";

struct Probe {
    random: String,
    /// Everything else, which restores and boots must agree on.
    rest: Vec<String>,
    /// The saved VM it was restored from, if it was: the RAM file QEMU maps.
    restored_from: Option<String>,
}

/// Starts container `name` with `env`, probes it and removes it.
fn probe(root: &TestRoot, name: &str, env: &[(&str, &Path)]) -> Probe {
    let args = ["run", "-d", "--name", name, "--memory", "200m", IMAGE, "sleep", "600"];
    let mut command = root.command(&args);
    command.envs(env.iter().copied());
    common::succeeded(command.output().unwrap(), &args);
    let restored_from = restored_from(root, name);
    let output = root.ok(&["exec", name, "sh", "-c", PROBE]);
    let mut lines = output.lines().map(str::to_string);
    let mut next = || lines.next().unwrap_or_else(|| panic!("short probe output:\n{output}"));
    let (random, mac) = (next(), next());
    // A restored NIC starts with the saved VM's address; the agent sets the container's.
    let expected_mac = root.ok(&["inspect", "-f", "{{.NetworkSettings.MacAddress}}", name]);
    assert_eq!(mac, expected_mac.trim(), "{name}'s eth0 has the MAC vessel gave it");
    let rest = lines.collect();
    root.ok(&["rm", "-f", name]);
    Probe { random, rest, restored_from }
}

/// The template RAM file the QEMU of container `name` maps, if it restored one.
fn restored_from(root: &TestRoot, name: &str) -> Option<String> {
    let id = root.ok(&["inspect", "-f", "{{.Id}}", name]);
    let vm_name = format!("vessel-{}", &id.trim()[..12]);
    let qemu: Vec<String> = processes_mentioning(&vm_name)
        .into_iter()
        .filter(|process| process.contains("qemu-system"))
        .collect();
    assert_eq!(qemu.len(), 1, "one QEMU for {name}: {qemu:#?}");
    let restored = qemu[0].contains(" -incoming defer");
    let mem_path = qemu[0].split([' ', ',']).find_map(|part| part.strip_prefix("mem-path="));
    assert_eq!(restored, mem_path.is_some(), "{}", qemu[0]);
    // QEMU maps the file it was handed open: `/proc/self/fd/N`, seen from here.
    let pid = qemu[0].split(':').next().unwrap();
    let ram = mem_path?.replace("/proc/self/", &format!("/proc/{pid}/"));
    let target = std::fs::read_link(&ram).unwrap_or_else(|err| panic!("{ram}: {err}"));
    Some(target.display().to_string())
}

#[test]
fn restored_containers_are_each_their_own() {
    let root = busybox_root();
    let first = probe(&root, "warm1", &[]);
    let second = probe(&root, "warm2", &[]);
    let cold = Path::new("0");
    let booted = probe(&root, "booted", &[("VESSEL_WARM_START", cold)]);
    assert!(first.restored_from.is_some(), "a container restores a saved VM by default");
    assert_eq!(first.restored_from, second.restored_from, "one saved VM per shape");
    assert_eq!(booted.restored_from, None, "VESSEL_WARM_START=0 boots");
    assert_ne!(first.random, second.random, "restored copies draw the same random numbers");
    // Drawn as soon as the container starts: the guest's generator would reseed by itself
    // a second after its last reseed, but until then restored copies share its state
    // unless the host's hello reseeded it (without, two of three runs matched).
    let draws: std::collections::HashSet<String> = (0..4)
        .map(|_| {
            let draw = "head -c 16 /dev/urandom | od -An -tx1";
            root.ok(&["run", "--rm", "--memory", "200m", IMAGE, "sh", "-c", draw])
        })
        .collect();
    assert_eq!(draws.len(), 4, "restored copies drew the same random numbers: {draws:?}");
    assert_eq!(first.rest, booted.rest, "a restored container differs from a booted one");
}

/// A saved VM QEMU cannot load is thrown away: the container boots, and the next one of
/// its shape makes a new saved VM.
#[test]
fn a_saved_vm_that_cannot_be_restored_is_replaced() {
    let root = busybox_root();
    // Saved VMs of this test's own: no other test restores the broken one.
    let templates = root.path().join("vm-templates");
    let env = [("VESSEL_VM_TEMPLATES", templates.as_path())];
    let first = probe(&root, "first", &env).restored_from.expect("restored");
    assert!(first.starts_with(&templates.display().to_string()), "{first}");
    let mode = std::fs::metadata(&templates).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "saved guest memory is root's alone");
    let state = Path::new(&first).with_file_name("state");
    std::fs::write(&state, b"not a QEMU state").unwrap();
    let fallback = probe(&root, "fallback", &env);
    assert_eq!(fallback.restored_from, None, "the broken saved VM was booted past");
    let again = probe(&root, "again", &env).restored_from;
    assert_eq!(again.as_deref(), Some(first.as_str()), "made anew for its shape");
    assert_ne!(std::fs::read(&state).unwrap(), b"not a QEMU state");
    // A template missing its RAM fails before QEMU even starts loading: the same.
    std::fs::remove_file(&first).unwrap();
    assert_eq!(probe(&root, "no-ram", &env).restored_from, None);
    assert_eq!(probe(&root, "remade", &env).restored_from.as_deref(), Some(first.as_str()));
}
