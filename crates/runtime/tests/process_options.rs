//! What a container process may do, end to end in a real VM: docker's default capabilities
//! (or a chosen set), no_new_privileges, resource limits, supplementary groups, and
//! `--init` running as the container's PID 1, forwarding signals to the command and
//! passing its exit code back.

mod common;

use tokio::io::AsyncBufReadExt;
use vessel_runtime::process::{ProcessExit, ProcessIo, ProcessSpec, Rlimit};
use vessel_runtime::sandbox::Sandbox;

const STATUS: &str = "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status";

fn spec(process_id: &str, script: &str) -> ProcessSpec {
    common::spec("box", process_id, &["sh", "-c", script])
}

/// Runs a script to its end; returns its stdout, which the test's failure message shows
/// with stderr and the exit when the exit is not 0.
async fn output(sandbox: &mut Sandbox, spec: ProcessSpec) -> String {
    let (exit, stdout, stderr) = common::run(sandbox, spec, None).await;
    assert_eq!(exit.code, 0, "stdout: {stdout}\nstderr: {stderr}");
    stdout
}

fn status(inheritable: &str, permitted: &str, bounding: &str, no_new_privs: u8) -> String {
    format!(
        "CapInh:\t{inheritable}\nCapPrm:\t{permitted}\nCapEff:\t{permitted}\nCapBnd:\t{bounding}\n\
         CapAmb:\t0000000000000000\nNoNewPrivs:\t{no_new_privs}\n"
    )
}

const NONE: &str = "0000000000000000";
const DOCKER_DEFAULT: &str = "00000000a80425fb";

#[tokio::test(flavor = "current_thread")]
async fn process_options_shape_what_a_process_may_do() {
    let common::Booted { state: _state, mut sandbox, rootfs, writable } =
        common::boot("options").await;
    sandbox.agent().create_container(common::container("box", true)).await.unwrap();
    let first = sandbox
        .start_process(common::spec("box", "first", &["sleep", "600"]), ProcessIo::default())
        .await
        .unwrap();

    // Root gets docker's default set, nothing inheritable (as docker since CVE-2022-24769).
    let root = output(&mut sandbox, spec("root", STATUS)).await;
    assert_eq!(root, status(NONE, DOCKER_DEFAULT, DOCKER_DEFAULT, 0));

    // Another user keeps none but the bounding set; its supplementary groups apply.
    let mut app = spec("app", &format!("{STATUS}; id"));
    app.user = "app".into();
    let app = output(&mut sandbox, app).await;
    // The kernel keeps supplementary groups sorted.
    let id = "uid=1000(app) gid=1000(app) groups=50(staff),1000(app)\n";
    assert_eq!(app, status(NONE, NONE, DOCKER_DEFAULT, 0) + id);

    // A chosen set; none at all, where even root cannot chown; no new privileges.
    let mut chosen = spec("chosen", STATUS);
    chosen.capabilities = Some(vec!["CAP_NET_ADMIN".into(), "chown".into()]);
    let chosen = output(&mut sandbox, chosen).await;
    assert_eq!(chosen, status(NONE, "0000000000001001", "0000000000001001", 0));
    let mut bare =
        spec("bare", &format!("{STATUS}; touch /tmp/f; chown 1000 /tmp/f || echo denied"));
    bare.capabilities = Some(Vec::new());
    bare.no_new_privileges = true;
    let bare = output(&mut sandbox, bare).await;
    assert_eq!(bare, status(NONE, NONE, NONE, 1) + "denied\n");

    // Resource limits, by either spelling.
    let mut limited = spec("limited", "ulimit -n; ulimit -Hn; ulimit -c");
    limited.rlimits = vec![
        Rlimit { name: "nofile".into(), soft: 1000, hard: 2000 },
        Rlimit { name: "RLIMIT_CORE".into(), soft: 0, hard: 0 },
    ];
    assert_eq!(output(&mut sandbox, limited).await, "1000\n2000\n0\n");

    // Requests the agent cannot honour fail the call.
    let mut bad = spec("bad-limit", "true");
    bad.rlimits = vec![Rlimit { name: "wings".into(), soft: 1, hard: 1 }];
    let err = sandbox.start_process(bad, ProcessIo::default()).await.unwrap_err().to_string();
    assert!(err.contains("unknown resource limit"), "{err}");
    let mut bad = spec("bad-cap", "true");
    bad.capabilities = Some(vec!["CAP_FLY".into()]);
    let err = sandbox.start_process(bad, ProcessIo::default()).await.unwrap_err().to_string();
    assert!(err.contains("unknown capability"), "{err}");

    // With --init, an exec'd command's exit code comes back through the init, and a
    // missing program is still the call's error.
    let mut exec = spec("exec-init", "exit 7");
    exec.init = true;
    let (exit, _, _) = common::run(&mut sandbox, exec, None).await;
    assert_eq!(exit, ProcessExit { code: 7, signal: None });
    let mut missing = common::spec("box", "missing-init", &["no-such-program"]);
    missing.init = true;
    let err = sandbox.start_process(missing, ProcessIo::default()).await.unwrap_err().to_string();
    assert!(err.contains("no such file or directory"), "{err}");

    init_is_pid_1(&mut sandbox).await;

    common::end_cleanly(sandbox, first, [&rootfs, &writable]).await;
}

/// A container whose first process runs under --init: the init is PID 1, the command is
/// not; orphans are reaped; a signal to the process reaches the command, whose exit code
/// comes back.
async fn init_is_pid_1(sandbox: &mut Sandbox) {
    sandbox.agent().create_container(common::container("initbox", false)).await.unwrap();
    let script = "trap 'echo got TERM; exit 42' TERM; echo pid $$; tr '\\0' ' ' </proc/1/cmdline; \
                  echo; while :; do sleep 0.1; done";
    let mut main = common::spec("initbox", "init-main", &["sh", "-c", script]);
    main.init = true;
    let (stdout_writer, stdout_reader) = tokio::io::duplex(1 << 16);
    let io = ProcessIo { stdout: Some(Box::new(stdout_writer)), ..Default::default() };
    let main = sandbox.start_process(main, io).await.unwrap();
    let mut lines = tokio::io::BufReader::new(stdout_reader).lines();
    assert_eq!(lines.next_line().await.unwrap().unwrap(), "pid 2");
    let cmdline = lines.next_line().await.unwrap().unwrap();
    assert!(cmdline.starts_with("vessel-init --container-init /bin/sh -- sh -c trap"), "{cmdline}");

    // An orphan (the subshell's sleep) goes to PID 1 when it ends; the init reaps it.
    let reaped =
        "(sleep 0.2 &); sleep 1.5; grep -h '^State' /proc/[0-9]*/status | grep -c zombie || true";
    let reaped = common::spec("initbox", "orphans", &["sh", "-c", reaped]);
    assert_eq!(output(sandbox, reaped).await, "0\n");

    sandbox.agent().signal_process("init-main", 15).await.unwrap();
    let exit = main.wait(sandbox.agent()).await.unwrap();
    assert_eq!(exit, ProcessExit { code: 42, signal: None });
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("got TERM"));
}
