//! `vessel-vsock`: one VM's virtio-vsock device, served to QEMU over vhost-user, with the
//! host side in the hybrid (Firecracker) model: a Unix socket stands for the guest.
//!
//! ```text
//! vessel-vsock --guest-cid 3 --socket vm/vhost-vsock.sock --uds-path vm/vsock.sock
//! ```
//!
//! The host connects to `--uds-path`, writes `CONNECT <port>\n`, reads `OK <hostport>\n`,
//! and the stream is then guest port `port`; a guest connecting to CID 2 port P reaches the
//! Unix listener at `<uds-path>_P`. The process ends when QEMU disconnects. See docs/vsock.md.

#![forbid(unsafe_code)]

mod conn;
mod device;
mod muxer;
mod packet;

use anyhow::{bail, Context};
use clap::Parser;
use device::{VsockDevice, BACKEND_EVENT};
use muxer::Muxer;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

#[derive(Debug, Parser)]
#[command(
    name = "vessel-vsock",
    version,
    about = "vhost-user vsock device (hybrid Unix-socket model)"
)]
struct Args {
    /// The guest's context ID.
    #[arg(long)]
    guest_cid: u64,
    /// vhost-user socket to create; QEMU connects to it.
    #[arg(long)]
    socket: PathBuf,
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
    let _ = std::fs::remove_file(&args.socket);
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
    // CIDs 0-2 are the hypervisor, local and host; u32::MAX is "any".
    if args.guest_cid <= 2 || args.guest_cid >= u64::from(u32::MAX) {
        bail!("--guest-cid {} is reserved (use 3 or above)", args.guest_cid);
    }
    // The hybrid socket exists before the vhost-user one, which is what callers wait for.
    let muxer = Muxer::new(args.guest_cid, &args.uds_path)
        .with_context(|| format!("listening on {}", args.uds_path.display()))?;
    let device = VsockDevice::new(args.guest_cid, muxer).context("creating the exit event")?;
    let muxer_fd = device.muxer_fd();
    let device = Arc::new(RwLock::new(device));
    let mut daemon = VhostUserDaemon::new(
        "vessel-vsock".to_string(),
        device,
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(|e| anyhow::anyhow!("creating the vhost-user daemon: {e:?}"))?;
    let handlers = daemon.get_epoll_handlers();
    let handler = handlers.first().context("the daemon has no worker thread")?;
    handler
        .register_listener(muxer_fd, EventSet::IN, u64::from(BACKEND_EVENT))
        .context("watching host streams")?;
    serve(&mut daemon, &args.socket)?;
    tracing::info!("frontend disconnected, exiting");
    Ok(())
}

fn serve(
    daemon: &mut VhostUserDaemon<Arc<RwLock<VsockDevice>>>,
    socket: &Path,
) -> anyhow::Result<()> {
    daemon
        .serve(socket)
        .map_err(|e| anyhow::anyhow!("serving vhost-user on {}: {e}", socket.display()))
}
