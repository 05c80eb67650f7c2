//! Real VMs (TCG here) whose vsock is served by vessel-vsock: the agent answers, and 64 MiB
//! go each way through the guest's echo port at once, in several VMs in parallel, every
//! byte checked (crates/runtime/src/transfer.rs).
//!
//! Needs the debug `vessel` built beside us (`scripts/build --debug`) and the guest kernel
//! cache. `VESSEL_VSOCK_ROUNDS` (default 1) and `VESSEL_VSOCK_PARALLEL` (default 2) scale it
//! up: `VESSEL_VSOCK_ROUNDS=10 cargo test -p vessel-vsock --test vm -- --nocapture`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BACKEND: &str = env!("CARGO_BIN_EXE_vessel-vsock");
/// 64 MiB at the 1 MB/s floor the echo check allows, plus boot.
const DEADLINE: Duration = Duration::from_secs(120);

fn vessel() -> PathBuf {
    let path = PathBuf::from(BACKEND).with_file_name("vessel");
    assert!(path.exists(), "{} is missing: run scripts/build --debug first", path.display());
    path
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Runs one selftest with a bulk echo; returns its JSON report or why it failed.
fn selftest(root: &std::path::Path, transfer_mib: u32) -> Result<serde_json::Value, String> {
    let mut child = Command::new(vessel())
        .arg("--root")
        .arg(root)
        .args(["system", "selftest", "--format", "json", "--transfer-mib"])
        .arg(transfer_mib.to_string())
        .env("VESSEL_VSOCK", BACKEND)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning vessel: {e}"))?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() > DEADLINE => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("stalled: no end after {DEADLINE:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("waiting for vessel: {e}")),
        }
    }
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(format!(
            "{}: {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| format!("selftest JSON: {e}"))
}

#[test]
fn bulk_echo_in_parallel_vms_never_stalls() {
    let rounds = env_count("VESSEL_VSOCK_ROUNDS", 1);
    let parallel = env_count("VESSEL_VSOCK_PARALLEL", 2);
    let mut failures = Vec::new();
    for round in 0..rounds {
        let runs: Vec<_> = (0..parallel)
            .map(|_| {
                std::thread::spawn(|| {
                    let root = tempfile::tempdir().expect("temp dir");
                    selftest(root.path(), 64)
                })
            })
            .collect();
        for (i, run) in runs.into_iter().enumerate() {
            match run.join().expect("selftest thread") {
                Ok(report) => {
                    let rate = report["transfer_mb_per_second"].as_f64();
                    assert!(rate.is_some_and(|r| r > 0.0), "no transfer rate in {report}");
                    eprintln!(
                        "round {round} vm {i}: ready {} ms, echo {:.1} MB/s",
                        report["ready_ms"],
                        rate.unwrap_or_default()
                    );
                }
                Err(why) => failures.push(format!("round {round} vm {i}: {why}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} runs failed:\n{}",
        failures.len(),
        rounds * parallel,
        failures.join("\n")
    );
}
