//! vessel-init: PID 1 of every vessel VM and the only file in its initramfs.
//!
//! It mounts the kernel filesystems, reaps orphans, serves the agent API on vsock and, on
//! request or on a fatal error, syncs and powers the VM off. It logs to the console, which the
//! host keeps as the VM's boot log.

mod channel;
mod clock;
mod container;
mod container_init;
mod copy;
mod entropy;
mod fs;
mod log;
mod mounts;
mod network;
mod power;
mod process;
mod reaper;
mod server;
mod stats;
mod users;
mod volumes;
mod vsock;

use std::time::Duration;

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|arg| arg.as_encoded_bytes() == container_init::FLAG.to_bytes()) {
        container_init::main(&args);
    }
    if std::process::id() != 1 {
        eprintln!("vessel-init: must run as PID 1 inside a vessel VM");
        std::process::exit(2);
    }
    log::info(format_args!("started at {} ms", server::uptime().as_millis()));
    if let Err(err) = mounts::mount_kernel_filesystems() {
        log::error(format_args!("{err}"));
        power::power_off();
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            log::error(format_args!("cannot start the async runtime: {err}"));
            power::power_off();
        }
    };
    let result = runtime.block_on(serve());
    if let Err(err) = result {
        let mut message = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        log::error(format_args!("{message}"));
    }
    // In-flight replies (the Shutdown answer among them) get a moment to leave.
    runtime.shutdown_timeout(Duration::from_millis(20));
    power::power_off();
}

async fn serve() -> Result<(), server::ServeError> {
    reaper::start()?;
    server::run().await
}
