//! The process around the device: sockets appear, and when the frontend (QEMU) goes away the
//! process ends and takes its sockets with it. No VM needed.

use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BACKEND: &str = env!("CARGO_BIN_EXE_vessel-vsock");

#[test]
fn exits_and_removes_its_sockets_when_the_frontend_disconnects() {
    let dir = tempfile::tempdir().unwrap();
    let vhost = dir.path().join("vhost.sock");
    let hybrid = dir.path().join("vsock.sock");
    let mut child = Command::new(BACKEND)
        .args(["--guest-cid", "3", "--socket"])
        .arg(&vhost)
        .arg("--uds-path")
        .arg(&hybrid)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let frontend = loop {
        match UnixStream::connect(&vhost) {
            Ok(stream) => break stream,
            Err(_) if started.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => {
                let _ = child.kill();
                panic!("no vhost-user socket after 10 s: {e}");
            }
        }
    };
    assert!(hybrid.exists(), "the hybrid socket exists before the vhost-user one");
    drop(frontend);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running 10 s after the frontend left");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(!vhost.exists() && !hybrid.exists(), "sockets left behind");
}

#[test]
fn refuses_reserved_cids() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BACKEND)
        .args(["--guest-cid", "2", "--socket"])
        .arg(dir.path().join("v.sock"))
        .arg("--uds-path")
        .arg(dir.path().join("h.sock"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--guest-cid 2 is reserved"), "{stderr}");
}
