//! `vessel system selftest`: boot a VM, reach the agent, ask it for facts, power it off, and
//! time each step. The quickest end-to-end proof that a host can run vessel.

use crate::sandbox::{Sandbox, SandboxOptions, SHUTDOWN_TIMEOUT};
use crate::{Host, RuntimeError};
use serde::Serialize;
use std::time::Instant;
use vessel_vm::{Accel, Vm, VmExit};

#[derive(Debug, Clone, Serialize)]
pub struct SelftestReport {
    pub accel: String,
    pub kernel_release: String,
    pub agent_version: String,
    pub cpus: u32,
    pub memory_total_bytes: u64,
    pub filesystems: Vec<String>,
    pub cgroup_controllers: Vec<String>,
    pub namespaces: Vec<String>,
    /// Guest uptime when the agent started serving, by the guest's clock.
    pub guest_agent_ready_ms: u64,
    /// Whether the VM restored a saved one (a warm start) rather than booting.
    pub restored: bool,
    /// VM start → the agent announced itself.
    pub ready_ms: f64,
    /// VM start → Info answered.
    pub info_ms: f64,
    /// VM start → the VMM exited after Shutdown.
    pub off_ms: f64,
    /// Whether the guest powered itself off (as opposed to being killed).
    pub clean_shutdown: bool,
    /// Bytes echoed through one vsock stream each way, when asked for.
    pub transfer_bytes: u64,
    /// Throughput of that echo, each way at once.
    pub transfer_mb_per_second: Option<f64>,
    /// What the guest printed on its console, start to power-off.
    pub console: String,
}

#[derive(Debug, Clone)]
pub struct SelftestOptions {
    pub accel: Accel,
    pub cpus: u32,
    pub memory_mib: u32,
    /// Echo this many bytes through vsock after Info (0: none).
    pub transfer_bytes: u64,
    pub echo_console: bool,
}

pub async fn run(host: &Host, options: SelftestOptions) -> Result<SelftestReport, RuntimeError> {
    let mut sandbox_options = SandboxOptions::new(format!("selftest-{}", std::process::id()));
    sandbox_options.accel = options.accel;
    sandbox_options.cpus = options.cpus;
    sandbox_options.memory_mib = options.memory_mib;
    sandbox_options.echo_console = options.echo_console;
    let mut sandbox = Sandbox::start(host, sandbox_options).await?;
    let started = sandbox.started;
    let ready_ms = ms(sandbox.ready_after);
    let restored = sandbox.vm().restored_from().is_some();
    let info = sandbox.agent().info().await?;
    let info_ms = ms(started.elapsed());
    let transfer = if options.transfer_bytes > 0 {
        Some(crate::transfer::echo(sandbox.vm().vsock(), options.transfer_bytes).await?)
    } else {
        None
    };
    let stopped = sandbox.shutdown(SHUTDOWN_TIMEOUT).await?;
    let off_ms = ms(Instant::now().duration_since(started));
    Ok(SelftestReport {
        accel: options.accel.resolve().to_string(),
        kernel_release: info.kernel_release,
        agent_version: info.agent_version,
        cpus: info.cpus_online,
        memory_total_bytes: info.memory_total_bytes,
        guest_agent_ready_ms: info.agent_ready_uptime_ms,
        filesystems: info.filesystems,
        cgroup_controllers: info.cgroup_controllers,
        namespaces: info.namespaces,
        restored,
        ready_ms,
        info_ms,
        off_ms,
        clean_shutdown: stopped.exit == VmExit::GuestExit,
        transfer_bytes: options.transfer_bytes,
        transfer_mb_per_second: transfer.map(|t| t.mb_per_second()),
        console: stopped.console,
    })
}

fn ms(duration: std::time::Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0 * 10.0).round() / 10.0
}
