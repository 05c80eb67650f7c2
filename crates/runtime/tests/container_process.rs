//! Processes in a container, end to end: a busybox root filesystem written by our ext4
//! writer, joined with a writable disk by overlayfs in a real VM, and processes started with
//! their stdio relayed over vsock.

mod common;

use vessel_proto::agent::CreateContainerRequest;
use vessel_runtime::process::{ProcessExit, ProcessIo, ProcessSpec};
use vessel_runtime::sandbox::{Sandbox, SHUTDOWN_TIMEOUT};
use vessel_vm::VmExit;

fn spec(process_id: &str, args: &[&str]) -> ProcessSpec {
    common::spec("box", process_id, args)
}

async fn run(
    sandbox: &mut Sandbox,
    spec: ProcessSpec,
    stdin: Option<&'static [u8]>,
) -> (ProcessExit, String, String) {
    common::run(sandbox, spec, stdin).await
}

#[tokio::test(flavor = "current_thread")]
async fn processes_run_in_the_container_with_their_stdio() {
    let common::Booted { state: _state, mut sandbox, rootfs, writable } =
        common::boot("process").await;
    sandbox
        .agent()
        .create_container(CreateContainerRequest {
            container_id: "box".into(),
            image_device: "/dev/vda".into(),
            writable_device: "/dev/vdb".into(),
            hostname: "boxhost".into(),
            memory_limit_bytes: 100 << 20,
            cpu_millis: 500,
            mounts: Vec::new(),
            shm_size_bytes: 0,
            network: None,
        })
        .await
        .unwrap();

    // The first process: new namespaces, a user from the image's passwd, a fresh workdir.
    // It stays up (as a container's main process does) once it has said what it sees.
    let mut first = spec(
        "first",
        &[
            "sh",
            "-c",
            "echo out $GREETING; echo err >&2; hostname; id -u; id -G; pwd; echo $HOME; \
                       echo $$; touch /tmp/made; exec >/dev/null 2>&1; exec sleep 600",
        ],
    );
    first.user = "app".into();
    first.cwd = "/work/dir".into();
    let (stdout_writer, mut stdout_reader) = tokio::io::duplex(1 << 20);
    let (stderr_writer, mut stderr_reader) = tokio::io::duplex(1 << 20);
    let io = ProcessIo {
        stdin: None,
        stdout: Some(Box::new(stdout_writer)),
        stderr: Some(Box::new(stderr_writer)),
    };
    let first = sandbox.start_process(first, io).await.unwrap();
    let (stdout, stderr) =
        tokio::join!(common::read_all(&mut stdout_reader), common::read_all(&mut stderr_reader));
    assert_eq!(stdout, "out hello\nboxhost\n1000\n1000 50\n/work/dir\n/home/app\n1\n");
    assert_eq!(stderr, "err\n");

    // Later processes join the first one's namespaces and see its files.
    let (exit, stdout, _) =
        run(&mut sandbox, spec("second", &["sh", "-c", "hostname; ls /tmp; echo $$"]), None).await;
    assert_eq!(exit.code, 0);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(&lines[..2], ["boxhost", "made"]);
    assert_ne!(lines[2], "1", "an exec'd process is not the container's PID 1");

    let (exit, _, _) = run(&mut sandbox, spec("three", &["sh", "-c", "exit 3"]), None).await;
    assert_eq!(exit, ProcessExit { code: 3, signal: None });

    // stdin reaches the process and its end of file too; large output arrives whole.
    let (exit, stdout, _) = run(&mut sandbox, spec("cat", &["cat"]), Some(b"piped input\n")).await;
    assert_eq!((exit.code, stdout.as_str()), (0, "piped input\n"));
    let (exit, stdout, _) = run(&mut sandbox, spec("seq", &["seq", "1", "200000"]), None).await;
    assert_eq!(exit.code, 0);
    assert_eq!(stdout.len(), 1_288_895);
    assert!(stdout.ends_with("\n199999\n200000\n"));

    // A missing program is "not found", as the shell's 127 means.
    let handle =
        sandbox.start_process(spec("missing", &["no-such-program"]), ProcessIo::default()).await;
    let err = handle.unwrap_err().to_string();
    assert!(err.contains("starting the program failed: no such file or directory"), "{err}");

    // Signals reach the process; its exit says which one ended it.
    let sleeper = sandbox
        .start_process(spec("sleeper", &["sleep", "60"]), ProcessIo::default())
        .await
        .unwrap();
    sandbox.agent().signal_process("sleeper", 15).await.unwrap();
    let exit = sleeper.wait(sandbox.agent()).await.unwrap();
    assert_eq!(exit, ProcessExit { code: 143, signal: Some(15) });

    // When the first process ends, the container stops taking new processes.
    sandbox.agent().signal_process("first", 9).await.unwrap();
    assert_eq!(first.wait(sandbox.agent()).await.unwrap().code, 137);
    let late = sandbox.start_process(spec("late", &["true"]), ProcessIo::default()).await;
    assert!(late.unwrap_err().to_string().contains("container box is not running"));

    let stopped = sandbox.shutdown(SHUTDOWN_TIMEOUT).await.unwrap();
    assert_eq!(stopped.exit, VmExit::GuestExit, "{}", stopped.console);
    for image in [&rootfs, &writable] {
        common::assert_fsck_clean(image);
    }
}
