//! A process with a terminal sees it inside the container as docker's do: `tty` names it
//! `/dev/pts/N` (owned by group tty, mode 0620), for the container's first process and for
//! one started later in its namespaces, and programs inside can open new terminals through
//! `/dev/ptmx`. Boots a real VM.

mod common;

use tokio::io::AsyncBufReadExt;
use vessel_runtime::process::{ProcessIo, ProcessSpec};

fn with_terminal(process_id: &str, script: &str) -> ProcessSpec {
    let mut spec = common::spec("box", process_id, &["sh", "-c", script]);
    spec.terminal = Some((24, 80));
    spec
}

/// What a terminal prints, with its `\r\n` line ends made plain.
fn lines(output: &str) -> String {
    output.replace("\r\n", "\n")
}

#[tokio::test(flavor = "current_thread")]
async fn a_process_terminal_is_a_dev_pts_of_the_container() {
    let common::Booted { state: _state, mut sandbox, rootfs, writable } =
        common::boot("terminal").await;
    sandbox.agent().create_container(common::container("box", true)).await.unwrap();

    // The container's first process (`vessel run -it`): its terminal is the guest's first.
    let first = with_terminal("first", "tty; echo ready; exec sleep 600");
    let (stdout_writer, stdout_reader) = tokio::io::duplex(1 << 16);
    let io = ProcessIo { stdout: Some(Box::new(stdout_writer)), ..Default::default() };
    let first = sandbox.start_process(first, io).await.unwrap();
    let mut first_output = tokio::io::BufReader::new(stdout_reader).lines();
    let mut seen = Vec::new();
    while let Some(line) = first_output.next_line().await.unwrap() {
        if line.trim_end() == "ready" {
            break;
        }
        seen.push(line.trim_end().to_string());
    }
    assert_eq!(seen, ["/dev/pts/0"]);

    // A later process (`vessel exec -it`) joins the container's mounts and sees its own
    // terminal there too, with docker's owner and modes; /dev/ptmx makes new ones, which
    // appear beside the others.
    let script = "tty; stat -c '%a %u:%g' \"$(tty)\"; stat -L -c '%a %t:%T' /dev/ptmx; \
                  exec 3<>/dev/ptmx; ls -1 /dev/pts";
    let (exit, stdout, _) = common::run(&mut sandbox, with_terminal("second", script), None).await;
    assert_eq!(exit.code, 0, "{stdout}");
    assert_eq!(lines(&stdout), "/dev/pts/1\n620 0:5\n666 5:2\n0\n1\n2\nptmx\n");

    // Another user reads its terminal's name the same way.
    let mut app = with_terminal("app", "tty; id -u");
    app.user = "app".into();
    let (exit, stdout, _) = common::run(&mut sandbox, app, None).await;
    assert_eq!(exit.code, 0, "{stdout}");
    let output = lines(&stdout);
    let number = output.strip_prefix("/dev/pts/").and_then(|rest| rest.strip_suffix("\n1000\n"));
    assert!(number.is_some_and(|n| n.parse::<u32>().is_ok()), "{output:?}");

    common::end_cleanly(sandbox, first, [&rootfs, &writable]).await;
}
