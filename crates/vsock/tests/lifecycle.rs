//! The process around the channel: sockets appear, and when QEMU goes away the process ends
//! and takes its sockets with it. No VM needed.

use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BACKEND: &str = env!("CARGO_BIN_EXE_vessel-vsock");

#[test]
fn exits_and_removes_its_sockets_when_the_frontend_disconnects() {
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial.sock");
    let hybrid = dir.path().join("vsock.sock");
    let mut child = Command::new(BACKEND)
        .arg("--serial")
        .arg(&serial)
        .arg("--uds-path")
        .arg(&hybrid)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let frontend = loop {
        match UnixStream::connect(&serial) {
            Ok(stream) => break stream,
            Err(_) if started.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => {
                let _ = child.kill();
                panic!("no serial socket after 10 s: {e}");
            }
        }
    };
    assert!(hybrid.exists(), "the hybrid socket exists before the serial one");
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
    assert!(!serial.exists() && !hybrid.exists(), "sockets left behind");
}
