use crate::Context;
use std::process::ExitCode;
use vessel_vm::Accel;

#[derive(Debug, clap::Args)]
pub struct SelftestArgs {
    /// Output format: table or json
    #[arg(long, default_value = "table")]
    format: String,
    /// Accelerator: auto (KVM when usable, else TCG), kvm or tcg
    #[arg(long, default_value = "auto")]
    accel: Accel,
    /// Virtual CPUs
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Guest memory in MiB
    #[arg(long, default_value_t = 256)]
    memory: u32,
    /// Also echo this many MiB through one vsock stream each way, checking every byte
    #[arg(long, default_value_t = 0)]
    transfer_mib: u64,
}

pub fn run(args: SelftestArgs, context: &Context) -> anyhow::Result<ExitCode> {
    if !matches!(args.format.as_str(), "table" | "json") {
        anyhow::bail!("unknown format {:?} (use table or json)", args.format);
    }
    let options = vessel_runtime::selftest::SelftestOptions {
        accel: args.accel,
        cpus: args.cpus,
        memory_mib: args.memory,
        transfer_bytes: args.transfer_mib << 20,
        echo_console: context.debug,
    };
    let report = super::super::block_on(vessel_runtime::selftest::run(&context.host, options))??;
    if args.format == "json" {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("accelerator      {}", report.accel);
        println!("guest kernel     {}", report.kernel_release);
        println!("agent            vessel-init {}", report.agent_version);
        println!("guest            {} CPU, {} MiB", report.cpus, report.memory_total_bytes >> 20);
        let start = if report.restored { "restored a saved VM" } else { "booted" };
        println!("start            {start}");
        println!("agent ready      {:>7.1} ms after VM start", report.ready_ms);
        println!("info answered    {:>7.1} ms", report.info_ms);
        println!("powered off      {:>7.1} ms", report.off_ms);
        if let Some(rate) = report.transfer_mb_per_second {
            println!(
                "vsock echo       {} MiB each way at {rate:.1} MB/s",
                report.transfer_bytes >> 20
            );
        }
        println!("clean shutdown   {}", if report.clean_shutdown { "yes" } else { "no" });
    }
    Ok(if report.clean_shutdown { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
