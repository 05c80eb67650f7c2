//! Shared helpers for the CLI's end-to-end tests: they run the real `vessel` binary, which
//! boots real VMs. Nothing here skips: a missing QEMU or kernel fails the test with the
//! command that fixes it.
#![allow(dead_code)]

pub mod images;
pub mod pty;
pub mod registry;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn vessel_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vessel"))
}

/// A state root of its own for one test, removed at the end.
pub struct TestRoot {
    pub dir: tempfile::TempDir,
}

impl TestRoot {
    pub fn new() -> TestRoot {
        TestRoot { dir: tempfile::Builder::new().prefix("vessel-test-").tempdir().unwrap() }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(vessel_bin());
        command.arg("--root").arg(self.path()).args(args);
        command
    }

    /// Runs vessel and returns its output, failing the test if it cannot start.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("cannot run the vessel binary")
    }

    /// Runs vessel, expecting success.
    pub fn ok(&self, args: &[&str]) -> String {
        succeeded(self.run(args), args)
    }
}

/// The stdout of a vessel run that must have succeeded; else the test fails with both
/// outputs.
pub fn succeeded(output: Output, args: &[&str]) -> String {
    assert!(
        output.status.success(),
        "vessel {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A test that fails midway may leave detached containers running: their supervisors (and
/// with them their VMs) go with the test's root. Its networks go too: their bridges and
/// rules are kernel state that would outlive the directory.
impl Drop for TestRoot {
    fn drop(&mut self) {
        if self.path().join("networks").exists() {
            let listed = self.run(&["ps", "-a", "-q"]);
            let ids = String::from_utf8_lossy(&listed.stdout).into_owned();
            let mut rm = vec!["rm", "-f"];
            rm.extend(ids.split_whitespace());
            if rm.len() > 2 {
                let _ = self.run(&rm);
            }
            let _ = self.run(&["network", "prune", "--force"]);
            let _ = self.run(&["network", "rm", "default"]);
        }
        let root = self.path().display().to_string();
        for process in processes_mentioning(&root) {
            if let Some(pid) = process.split(':').next().and_then(|pid| pid.parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Processes whose command line mentions `needle` (our VMs name their state root in theirs).
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{}: {cmdline}", name.to_string_lossy()));
        }
    }
    found
}

/// Imports the image the README's set-up makes (`vessel.local/busybox`, from
/// busybox-static) into a test's root, with the set-up's own script.
pub fn import_demo_image(root: &TestRoot) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/demo-image");
    let output = Command::new(script)
        .arg("--root")
        .arg(root.path())
        .env("VESSEL", vessel_bin())
        .output()
        .expect("cannot run scripts/demo-image");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}
