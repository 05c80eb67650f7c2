//! A container's resource use, end to end in a real VM: CPU time, memory and its limit,
//! processes and block I/O, as its cgroup counts them.

mod common;

use vessel_runtime::process::ProcessIo;
use vessel_runtime::RuntimeError;

#[tokio::test(flavor = "current_thread")]
async fn stats_come_from_the_container_s_cgroup() {
    let common::Booted { state: _state, mut sandbox, rootfs, writable } =
        common::boot("stats").await;
    let mut limited = common::container("box", true);
    limited.memory_limit_bytes = 100 << 20;
    sandbox.agent().create_container(limited).await.unwrap();
    sandbox.agent().create_container(common::container("free", false)).await.unwrap();
    let first = sandbox
        .start_process(common::spec("box", "first", &["sleep", "600"]), ProcessIo::default())
        .await
        .unwrap();

    // Some CPU time, and 4 MiB written to the container's disk and synced.
    let work = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; \
                dd if=/dev/zero of=/written bs=1M count=4 2>/dev/null; sync";
    let (exit, _, stderr) =
        common::run(&mut sandbox, common::spec("box", "work", &["sh", "-c", work]), None).await;
    assert_eq!(exit.code, 0, "{stderr}");

    let before = sandbox.agent().stats("box").await.unwrap();
    assert!(before.cpu_usage_usec > 10_000, "{before:?}");
    assert!(before.cpu_usage_usec >= before.cpu_user_usec, "{before:?}");
    assert!(before.memory_usage_bytes > 0, "{before:?}");
    assert_eq!(before.memory_limit_bytes, 100 << 20);
    // Only `sleep` is left.
    assert_eq!(before.pids_current, 1, "{before:?}");
    assert!(before.block_read_bytes > 0, "busybox came off the image disk: {before:?}");
    assert!(before.block_write_bytes >= 4 << 20, "{before:?}");

    let after = sandbox.agent().stats("box").await.unwrap();
    assert!(after.uptime_usec > before.uptime_usec);
    assert!(after.cpu_usage_usec >= before.cpu_usage_usec);

    // No limit reads as 0; an unknown container is not found.
    let free = sandbox.agent().stats("free").await.unwrap();
    assert_eq!((free.memory_limit_bytes, free.pids_current), (0, 0));
    match sandbox.agent().stats("nobody").await {
        Err(RuntimeError::AgentCall { status, .. }) => {
            assert_eq!(status.code(), tonic::Code::NotFound)
        }
        other => panic!("expected NotFound, got {other:?}"),
    }

    common::end_cleanly(sandbox, first, [&rootfs, &writable]).await;
}
