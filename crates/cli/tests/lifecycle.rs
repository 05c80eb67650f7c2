//! The container lifecycle through the CLI, end to end: detached containers with their
//! supervisors, exec, logs, stop/kill/start/wait/rm, signals, names and ids, recovery after
//! a supervisor is killed, and nothing left behind.

mod common;

use common::images::{busybox_root, BUSYBOX as IMAGE};
use common::{processes_mentioning, TestRoot};
use std::time::{Duration, Instant};

fn inspect(root: &TestRoot, container: &str, field: &str) -> String {
    root.ok(&["inspect", "-f", &format!("{{{{{field}}}}}"), container]).trim().to_string()
}

/// No process, VM directory or control socket outlives the containers.
fn assert_nothing_running(root: &TestRoot) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_mentioning(&root.path().display().to_string());
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "processes outlived the containers: {left:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    for dir in ["run/vm", "run/ctl"] {
        let entries: Vec<_> = std::fs::read_dir(root.path().join(dir))
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(entries.is_empty(), "{dir} outlived the containers: {entries:?}");
    }
}

/// The guest's wall clock, read by an exec, falls between the host's before and after it.
/// The slack covers the guest's estimate of the host's time (half a round trip, which a
/// loaded host stretches); a guest left on its RTC's time is behind by up to a second.
fn assert_guest_clock_is_the_hosts(root: &TestRoot, container: &str) {
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    // busybox's adjtimex prints the time in seconds and microseconds.
    let script = "adjtimex | awk '/tv_sec/ {s = $2} /tv_usec/ {u = $2} END {print s, u}'";
    let before = now();
    let printed = root.ok(&["exec", container, "sh", "-c", script]);
    let after = now();
    let fields: Vec<u64> =
        printed.split_whitespace().map(|field| field.parse().expect(&printed)).collect();
    assert_eq!(fields.len(), 2, "adjtimex printed no time: {printed:?}");
    let guest = Duration::from_secs(fields[0]) + Duration::from_micros(fields[1]);
    let slack = Duration::from_millis(50);
    assert!(
        before.saturating_sub(slack) <= guest && guest <= after + slack,
        "guest clock {guest:?} is outside the host's {before:?}..{after:?}"
    );
}

#[test]
fn detached_container_with_exec_logs_stop_start_and_rm() {
    let root = busybox_root();
    let id = root.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-e",
        "ROLE=server",
        IMAGE,
        "sh",
        "-c",
        "echo started; echo warming >&2; trap 'echo bye; exit 3' TERM; \
         while true; do sleep 0.1; done",
    ]);
    let id = id.trim();
    assert_eq!(id.len(), 64, "run -d prints the full id: {id:?}");
    assert!(root.ok(&["ps"]).contains("web"));
    assert_eq!(root.ok(&["ps", "-q"]).trim(), &id[..12]);
    let listed: serde_json::Value =
        serde_json::from_str(root.ok(&["ps", "--format", "json"]).trim()).unwrap();
    assert_eq!(listed["State"], "running");
    assert_eq!(listed["Names"], "web");
    assert_eq!(inspect(&root, &id[..5], ".State.Status"), "running");

    // Names are unique.
    let output = root.run(&["create", "--name", "web", IMAGE, "true"]);
    assert_eq!(output.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&output.stderr).contains("already in use"));

    // exec: the container's environment plus ours, its workdir or ours, users, exit codes.
    let out = root.ok(&[
        "exec",
        "-e",
        "EXTRA=1",
        "-w",
        "/tmp",
        "web",
        "sh",
        "-c",
        "echo $ROLE $EXTRA; pwd",
    ]);
    assert_eq!(out, "server 1\n/tmp\n");
    assert_eq!(root.ok(&["exec", "-u", "nobody", "web", "id", "-u"]), "65534\n");
    // A user by name gets its groups from the image's /etc/group.
    assert_eq!(root.ok(&["exec", "-u", "tester", "web", "id", "-Gn"]).trim(), "tester users extra");
    assert_eq!(root.ok(&["exec", "-u", "1000:100", "web", "id", "-g"]), "100\n");
    assert_eq!(root.run(&["exec", "web", "sh", "-c", "exit 5"]).status.code(), Some(5));
    let output = root.run(&["exec", "web", "no-such-command"]);
    assert_eq!(output.status.code(), Some(127));
    // The guest's clock is the host's (its RTC alone leaves it up to a second behind).
    assert_guest_clock_is_the_hosts(&root, "web");
    // exec -i: our stdin reaches the process.
    let mut child = root
        .command(&["exec", "-i", "web", "tr", "a-z", "A-Z"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"shout\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "SHOUT\n");
    // exec -d returns at once; the process runs on.
    root.ok(&["exec", "-d", "web", "sh", "-c", "echo later > /tmp/detached"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while root.run(&["exec", "web", "cat", "/tmp/detached"]).stdout != b"later\n" {
        assert!(Instant::now() < deadline, "exec -d never ran");
        std::thread::sleep(Duration::from_millis(200));
    }

    // logs: both streams, in order per stream; -f follows until the container ends.
    let output = root.run(&["logs", "web"]);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "started\n");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "warming\n");
    assert!(root.ok(&["logs", "-t", "web"]).starts_with("20"));
    let follower = root
        .command(&["logs", "-f", "web"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();

    // stop: the shell traps SIGTERM and exits 3, long before the timeout.
    let started = Instant::now();
    assert_eq!(root.ok(&["stop", "web"]), "web\n");
    assert!(started.elapsed() < Duration::from_secs(8), "stop took {:?}", started.elapsed());
    let followed = follower.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&followed.stdout), "started\nbye\n");
    assert_eq!(inspect(&root, "web", ".State.Status"), "exited");
    assert_eq!(inspect(&root, "web", ".State.ExitCode"), "3");
    assert!(root.ok(&["ps", "-a"]).contains("Exited (3)"));
    assert!(!root.ok(&["ps"]).contains("web"));
    assert_eq!(root.ok(&["wait", "web"]), "3\n");

    // start again: same container, same log (appended), same writable disk.
    root.ok(&["start", "web"]);
    assert_eq!(inspect(&root, "web", ".State.Status"), "running");
    root.ok(&["exec", "web", "cat", "/tmp/detached"]);
    let output = root.run(&["rm", "web"]);
    assert_eq!(output.status.code(), Some(125), "rm refuses a running container");
    assert_eq!(root.ok(&["kill", "web"]), "web\n");
    assert_eq!(root.ok(&["wait", "web"]), "137\n");
    assert_eq!(root.ok(&["logs", "web"]).matches("started").count(), 2);
    assert_eq!(root.ok(&["rm", "web"]), "web\n");
    assert!(root.run(&["inspect", "web"]).status.code() == Some(125));
    assert!(root.ok(&["ps", "-a", "-q"]).is_empty());
    assert_nothing_running(&root);
}

/// A process that ignores SIGTERM (PID 1 without a handler) is killed after the timeout.
#[test]
fn stop_kills_after_its_timeout_and_rm_force_removes_running_containers() {
    let root = busybox_root();
    root.ok(&["run", "-d", "--name", "sleeper", IMAGE, "sleep", "1000"]);
    let started = Instant::now();
    root.ok(&["stop", "-t", "2", "sleeper"]);
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(15), "stop took {took:?}");
    assert_eq!(inspect(&root, "sleeper", ".State.ExitCode"), "137");

    root.ok(&["start", "sleeper"]);
    root.ok(&["rm", "-f", "sleeper"]);
    assert!(root.ok(&["ps", "-a", "-q"]).is_empty());
    assert_nothing_running(&root);
}

/// kill -9 of a supervisor takes its VM with it; the next `ps` says the container exited
/// and why, and `rm` cleans up what it left.
#[test]
fn a_killed_supervisor_is_recorded_and_cleaned_up() {
    let root = busybox_root();
    root.ok(&["run", "-d", "--name", "victim", IMAGE, "sleep", "1000"]);
    let pid: i32 = inspect(&root, "victim", ".State.Pid").parse().unwrap();
    assert!(pid > 0);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_mentioning(&root.path().display().to_string()).is_empty() {
        assert!(Instant::now() < deadline, "the VM outlived its supervisor");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(root.ok(&["ps", "-a"]).contains("Exited (255)"));
    assert!(inspect(&root, "victim", ".State.Error").contains("supervisor"));
    root.ok(&["rm", "victim"]);
    assert_nothing_running(&root);
}

/// Two containers of one image run at once on its one snapshot, each with a disk of its
/// own; `create` + `start -a` and `run --rm -d` behave as docker's.
#[test]
fn containers_of_one_image_share_its_snapshot() {
    let root = busybox_root();
    let first = root.ok(&["run", "-d", IMAGE, "sh", "-c", "echo one > /mine; sleep 1000"]);
    let second = root.ok(&["run", "-d", IMAGE, "sh", "-c", "echo two > /mine; sleep 1000"]);
    let snapshots = std::fs::read_dir(root.path().join("snapshots"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .count();
    assert_eq!(snapshots, 1);
    let vms = processes_mentioning("image.ext4");
    let ours: Vec<_> =
        vms.iter().filter(|p| p.contains(&root.path().display().to_string())).collect();
    assert_eq!(ours.len(), 2, "{vms:#?}");
    // `run -d` returns once the shell started; it may not have written its file yet.
    let cat_when_written = "while [ ! -s /mine ]; do sleep 0.05; done; cat /mine";
    assert_eq!(root.ok(&["exec", first.trim(), "sh", "-c", cat_when_written]), "one\n");
    assert_eq!(root.ok(&["exec", second.trim(), "sh", "-c", cat_when_written]), "two\n");
    root.ok(&["rm", "-f", first.trim(), second.trim()]);

    root.ok(&["create", "--name", "later", IMAGE, "echo", "hi from create"]);
    assert!(root.ok(&["ps", "-a"]).contains("Created"));
    let output = root.run(&["rmi", IMAGE]);
    assert_eq!(output.status.code(), Some(125), "an image in use stays");
    assert!(String::from_utf8_lossy(&output.stderr).contains("used by container"));
    let output = root.run(&["start", "-a", "later"]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "hi from create\n");

    root.ok(&["run", "-d", "--rm", "--name", "brief", IMAGE, "true"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while root.ok(&["ps", "-a"]).contains("brief") {
        assert!(Instant::now() < deadline, "--rm left the container");
        std::thread::sleep(Duration::from_millis(100));
    }
    let pruned = root.ok(&["container", "prune", "-f"]);
    assert!(pruned.contains("Deleted Containers"));
    assert!(root.ok(&["ps", "-a", "-q"]).is_empty());
    assert_nothing_running(&root);
}

/// `cp` both ways (a tree with a symlink and modes), `--init` as PID 1, `stats`, and
/// `exec -it` through a real terminal.
#[test]
fn cp_init_stats_and_an_interactive_exec() {
    use std::os::unix::fs::PermissionsExt;
    let root = busybox_root();
    root.ok(&["run", "-d", "--init", "--name", "box", IMAGE, "sleep", "1000"]);
    let pid1 = root.ok(&["exec", "box", "cat", "/proc/1/cmdline"]);
    assert!(pid1.contains("container-init") && pid1.contains("sleep"), "{pid1:?}");

    let host = root.path().join("host");
    std::fs::create_dir_all(host.join("tree/sub")).unwrap();
    std::fs::write(host.join("tree/sub/script"), "#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(host.join("tree/sub/script"), std::fs::Permissions::from_mode(0o750))
        .unwrap();
    std::os::unix::fs::symlink("sub/script", host.join("tree/link")).unwrap();
    root.ok(&["cp", host.join("tree").to_str().unwrap(), "box:/srv"]);
    assert_eq!(root.ok(&["exec", "box", "/srv/link"]), "ran\n");
    assert_eq!(root.ok(&["exec", "box", "stat", "-c", "%a", "/srv/sub/script"]), "750\n");

    root.ok(&["exec", "box", "sh", "-c", "echo made inside > /srv/sub/new"]);
    let back = root.path().join("back");
    root.ok(&["cp", "box:/srv", back.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(back.join("sub/new")).unwrap(), "made inside\n");
    assert_eq!(std::fs::read_link(back.join("link")).unwrap(), std::path::Path::new("sub/script"));
    let output = root.run(&["cp", "box:/no/such/file", back.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/no/such/file"));

    let stats: serde_json::Value =
        serde_json::from_str(root.ok(&["stats", "--no-stream", "--format", "json", "box"]).trim())
            .unwrap();
    assert_eq!(stats["Name"], "box");
    assert!(stats["MemUsage"].as_str().unwrap().ends_with("/ 256MiB"), "{stats}");
    assert!(stats["PIDs"].as_str().unwrap().parse::<u32>().unwrap() >= 2, "{stats}");

    let mut terminal =
        common::pty::PtySession::spawn(root.command(&["exec", "-it", "box", "sh"]), 25, 90);
    terminal.wait_for("# ");
    terminal.type_text("stty size; tty; exit 4\n");
    terminal.wait_for("25 90");
    terminal.wait_for("/dev/pts/");
    assert_eq!(terminal.wait().code(), Some(4));

    root.ok(&["rm", "-f", "box"]);
    assert_nothing_running(&root);
}

/// Without a terminal, Ctrl-C (SIGINT) and SIGTERM sent to `vessel run` reach the
/// container's process, and `run` exits with its code.
#[test]
fn signals_reach_a_foreground_container() {
    let root = busybox_root();
    let mut child = root
        .command(&[
            "run",
            "--rm",
            IMAGE,
            "sh",
            "-c",
            "trap 'echo got INT; exit 9' INT; echo ready; while true; do sleep 0.1; done",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line, "ready\n");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert_eq!(rest, "got INT\n");
    assert_eq!(child.wait().unwrap().code(), Some(9));
    assert_nothing_running(&root);
}

/// `--ulimit`, `--cap-drop`/`--cap-add` and `--security-opt no-new-privileges` reach the
/// container's processes, execs included.
#[test]
fn limits_and_privileges_apply_to_every_process() {
    let root = busybox_root();
    let flags = [
        "--ulimit",
        "nofile=100:200",
        "--cap-drop",
        "ALL",
        "--cap-add",
        "NET_ADMIN",
        "--security-opt",
        "no-new-privileges",
    ];
    let mut args = vec!["run", "-d", "--name", "locked"];
    args.extend(flags);
    args.extend([IMAGE, "sleep", "1000"]);
    root.ok(&args);
    let script = "ulimit -n; ulimit -Hn; grep -E '^(CapBnd|CapEff|NoNewPrivs)' /proc/self/status";
    let expected =
        "100\n200\nCapEff:\t0000000000001000\nCapBnd:\t0000000000001000\nNoNewPrivs:\t1\n";
    assert_eq!(root.ok(&["exec", "locked", "sh", "-c", script]), expected);
    root.ok(&["rm", "-f", "locked"]);
    // As docker: --entrypoint replaces the image's CMD as well; "" clears it.
    assert_eq!(root.ok(&["run", "--rm", "--entrypoint", "echo", IMAGE]), "\n");
    assert_eq!(root.ok(&["run", "--rm", "--entrypoint", "", IMAGE, "echo", "only"]), "only\n");
    let output = root.run(&["run", "--rm", "--ulimit", "nofile=9:1", IMAGE, "true"]);
    assert_eq!(output.status.code(), Some(125), "a soft limit above the hard one is refused");
    assert_nothing_running(&root);
}
