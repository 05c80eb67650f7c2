//! `vessel system selftest`: boot a VM, reach the agent, ask it for facts, power it off, and
//! time each step. The quickest end-to-end proof that a host can run vessel.

use crate::sandbox::{Sandbox, SandboxOptions, SHUTDOWN_TIMEOUT};
use crate::{Host, RuntimeError};
use serde::Serialize;
use std::time::Instant;
use vessel_vm::{Accel, VmExit};

#[derive(Debug, Clone, Serialize)]
pub struct SelftestReport {
    pub accel: String,
    pub kernel_release: String,
    pub agent_version: String,
    pub cpus: u32,
    pub memory_total_bytes: u64,
    /// Guest uptime when the agent started serving, by the guest's clock.
    pub guest_agent_ready_ms: u64,
    /// VM start → the agent announced itself.
    pub ready_ms: f64,
    /// VM start → Info answered.
    pub info_ms: f64,
    /// VM start → the VMM exited after Shutdown.
    pub off_ms: f64,
    /// Whether the guest powered itself off (as opposed to being killed).
    pub clean_shutdown: bool,
}

pub async fn run(
    host: &Host,
    accel: Accel,
    cpus: u32,
    memory_mib: u32,
    echo_console: bool,
) -> Result<SelftestReport, RuntimeError> {
    let name = format!("selftest-{}", std::process::id());
    let mut options = SandboxOptions::new(name);
    options.accel = accel;
    options.cpus = cpus;
    options.memory_mib = memory_mib;
    options.echo_console = echo_console;
    let mut sandbox = Sandbox::start(host, options).await?;
    let started = sandbox.started;
    let ready_ms = ms(sandbox.ready_after);
    let info = sandbox.agent().info().await?;
    let info_ms = ms(started.elapsed());
    let exit = sandbox.shutdown(SHUTDOWN_TIMEOUT).await?;
    let off_ms = ms(Instant::now().duration_since(started));
    Ok(SelftestReport {
        accel: accel.resolve().to_string(),
        kernel_release: info.kernel_release,
        agent_version: info.agent_version,
        cpus: info.cpus_online,
        memory_total_bytes: info.memory_total_bytes,
        guest_agent_ready_ms: info.agent_ready_uptime_ms,
        ready_ms,
        info_ms,
        off_ms,
        clean_shutdown: exit == VmExit::GuestExit,
    })
}

fn ms(duration: std::time::Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0 * 10.0).round() / 10.0
}
