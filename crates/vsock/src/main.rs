//! `vessel-vsock`: the host end of one VM's agent channel, with the host side in the hybrid
//! (Firecracker) model: a Unix socket stands for the guest.
//!
//! ```text
//! vessel-vsock --serial vm/agent-port.sock --uds-path vm/vsock.sock
//! ```
//!
//! QEMU connects the guest's virtio-serial port to `--serial`; the port carries vsock
//! packets (see `serial.rs`). The host connects to `--uds-path`, writes `CONNECT <port>\n`,
//! reads `OK <hostport>\n`, and the stream is then guest port `port`; a guest connecting to
//! CID 2 port P reaches the Unix listener at `<uds-path>_P`. The process ends when QEMU
//! disconnects. See docs/vsock.md.

#![forbid(unsafe_code)]

mod conn;
mod muxer;
mod packet;
mod serial;

use anyhow::Context;
use clap::Parser;
use muxer::Muxer;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "vessel-vsock",
    version,
    about = "the host end of a VM's agent channel (vsock over virtio-serial, hybrid Unix sockets)"
)]
struct Args {
    /// Socket to create for the port's chardev; QEMU connects to it.
    #[arg(long)]
    serial: PathBuf,
    /// Hybrid socket to create: the host side of the guest's vsock.
    #[arg(long)]
    uds_path: PathBuf,
    /// More logging (also RUST_LOG).
    #[arg(long)]
    debug: bool,
}

fn main() {
    let args = Args::parse();
    let filter = if args.debug { "debug" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = run(&args);
    let _ = std::fs::remove_file(&args.serial);
    let _ = std::fs::remove_file(&args.uds_path);
    if let Err(err) = result {
        eprint!("vessel-vsock: {err}");
        for cause in err.chain().skip(1) {
            eprint!(": {cause}");
        }
        eprintln!();
        std::process::exit(1);
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    // The hybrid socket exists before the serial one, which is what callers wait for.
    let muxer = Muxer::new(packet::GUEST_CID, &args.uds_path)
        .with_context(|| format!("listening on {}", args.uds_path.display()))?;
    serial::serve(&args.serial, muxer)?;
    tracing::info!("QEMU disconnected, exiting");
    Ok(())
}
