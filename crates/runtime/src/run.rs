//! Running a container in the foreground: image → snapshot, a fresh writable disk, a VM,
//! one process with the caller's stdio, its exit code, and nothing left afterwards.
//!
//! The detached lifecycle (supervisor, `ps`, `logs`, `exec`) builds on the same steps.

use crate::process::{ProcessExit, ProcessIo, ProcessSpec};
use crate::sandbox::{Sandbox, SandboxOptions, SHUTDOWN_TIMEOUT};
use crate::{Host, RuntimeError};
use vessel_proto::agent::CreateContainerRequest;
use vessel_vm::{Accel, Disk};

/// Size of a container's writable disk: sparse, so only what is written takes space.
pub const WRITABLE_DISK_SIZE: u64 = 8 << 30;

/// Guest memory beyond the container's limit: the kernel, vessel-init and page cache.
pub const VM_MEMORY_OVERHEAD_MIB: u32 = 64;

/// What to run: docker's `run` flags that shape the container.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// An image name or id in the local store.
    pub image: String,
    /// Replaces the image's CMD (its ENTRYPOINT stays, unless `entrypoint` is given).
    pub command: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    /// KEY=VALUE entries, added to (and overriding) the image's.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    /// CPUs for the container (fractions allowed): the VM gets the next whole number, the
    /// container's cgroup the exact share.
    pub cpus: f64,
    /// The container's memory limit; its VM gets `VM_MEMORY_OVERHEAD_MIB` more.
    pub memory_mib: u32,
    pub read_only: bool,
    /// A terminal for the process (`-t`): its initial size, then every change.
    pub terminal: Option<tokio::sync::watch::Receiver<(u16, u16)>>,
    pub accel: Accel,
    pub echo_console: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Image(#[from] vessel_image::snapshot::SnapshotError),
    #[error("cannot create the container's writable disk")]
    WritableDisk(#[from] vessel_image::RootfsError),
    #[error(
        "no command: the image has neither ENTRYPOINT nor CMD (give one after the image name)"
    )]
    NoCommand,
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Runs the container to its end and returns its process's exit.
pub async fn run(host: &Host, options: RunOptions, io: ProcessIo) -> Result<ProcessExit, RunError> {
    host.ensure_dirs()?;
    let prepared = vessel_image::snapshot::prepare(&host.root, &options.image)?;
    let config = &prepared.config;
    let args = command_line(
        options.entrypoint.clone().or_else(|| config.entrypoint().clone()),
        if options.command.is_empty() {
            config.cmd().clone()
        } else {
            Some(options.command.clone())
        },
    )?;
    let id = container_id();
    let dir = host.root.join("containers").join(&id);
    std::fs::create_dir_all(&dir).map_err(|source| RuntimeError::Io {
        action: "create",
        path: dir.clone(),
        source,
    })?;
    let result = run_in(host, &options, &prepared, args, &id, &dir, io).await;
    // Foreground containers go with their process (the lifecycle commands come later).
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(
    host: &Host,
    options: &RunOptions,
    prepared: &vessel_image::snapshot::Prepared,
    args: Vec<String>,
    id: &str,
    dir: &std::path::Path,
    io: ProcessIo,
) -> Result<ProcessExit, RunError> {
    let mut disks = vec![Disk { path: prepared.snapshot.clone(), read_only: true }];
    if !options.read_only {
        let writable = dir.join("writable.ext4");
        vessel_image::create_empty(&writable, WRITABLE_DISK_SIZE, &Default::default())?;
        disks.push(Disk { path: writable, read_only: false });
    }
    let short_id = &id[..12];
    let mut sandbox_options = SandboxOptions::new(short_id);
    sandbox_options.cpus = (options.cpus.ceil() as u32).max(1);
    sandbox_options.memory_mib = options.memory_mib.max(64).saturating_add(VM_MEMORY_OVERHEAD_MIB);
    sandbox_options.disks = disks;
    sandbox_options.accel = options.accel;
    sandbox_options.echo_console = options.echo_console;
    let mut sandbox = Sandbox::start(host, sandbox_options).await?;
    let result = async {
        sandbox
            .agent()
            .create_container(CreateContainerRequest {
                container_id: short_id.to_string(),
                image_device: "/dev/vda".into(),
                writable_device: if options.read_only { String::new() } else { "/dev/vdb".into() },
                hostname: options.hostname.clone().unwrap_or_else(|| short_id.to_string()),
                memory_limit_bytes: u64::from(options.memory_mib.max(64)) << 20,
                cpu_millis: (options.cpus * 1000.0).round() as u32,
            })
            .await?;
        let config = &prepared.config;
        let spec = ProcessSpec {
            container_id: short_id.to_string(),
            process_id: "main".into(),
            args,
            env: merge_env(config.env().as_deref().unwrap_or_default(), &options.env),
            cwd: options
                .workdir
                .clone()
                .or_else(|| config.working_dir().clone())
                .unwrap_or_default(),
            user: options.user.clone().or_else(|| config.user().clone()).unwrap_or_default(),
            terminal: options.terminal.as_ref().map(|size| *size.borrow()),
        };
        let process = sandbox.start_process(spec, io).await?;
        let mut agent = sandbox.agent().clone();
        let wait = process.wait(sandbox.agent());
        match options.terminal.clone() {
            None => wait.await,
            Some(mut size) => {
                // Window changes reach the process's terminal until it ends.
                let resize = async move {
                    while size.changed().await.is_ok() {
                        let (rows, columns) = *size.borrow_and_update();
                        let _ = agent.resize_terminal("main", rows.into(), columns.into()).await;
                    }
                    std::future::pending::<()>().await
                };
                tokio::select! {
                    exit = wait => exit,
                    () = resize => unreachable!("resizing never ends by itself"),
                }
            }
        }
    }
    .await;
    let stopped = sandbox.shutdown(SHUTDOWN_TIMEOUT).await;
    let exit = result?;
    stopped?;
    Ok(exit)
}

/// ENTRYPOINT followed by CMD, as docker joins them.
fn command_line(
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
) -> Result<Vec<String>, RunError> {
    let args: Vec<String> =
        entrypoint.into_iter().flatten().chain(cmd.into_iter().flatten()).collect();
    if args.is_empty() {
        Err(RunError::NoCommand)
    } else {
        Ok(args)
    }
}

/// The image's environment with the caller's entries added; a caller's KEY replaces the
/// image's, and a bare KEY (no `=`) takes the caller's own value, as docker's `-e KEY` does.
pub fn merge_env(image: &[String], requested: &[String]) -> Vec<String> {
    let key = |entry: &str| entry.split('=').next().unwrap_or_default().to_string();
    let mut env: Vec<String> = image.to_vec();
    for entry in requested {
        let entry = if entry.contains('=') {
            entry.clone()
        } else {
            match std::env::var(entry) {
                Ok(value) => format!("{entry}={value}"),
                Err(_) => continue,
            }
        };
        let name = key(&entry);
        env.retain(|existing| key(existing) != name);
        env.push(entry);
    }
    env
}

/// 64 hex digits, as docker's container ids.
fn container_id() -> String {
    use sha2::Digest;
    let random = std::fs::read("/proc/sys/kernel/random/uuid").unwrap_or_default();
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let digest = sha2::Sha256::new()
        .chain_update(random)
        .chain_update(now.as_nanos().to_le_bytes())
        .chain_update(std::process::id().to_le_bytes())
        .finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entrypoint_then_cmd() {
        let v = |items: &[&str]| Some(items.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(command_line(v(&["/init"]), v(&["a", "b"])).unwrap(), ["/init", "a", "b"]);
        assert_eq!(command_line(None, v(&["sh"])).unwrap(), ["sh"]);
        assert!(matches!(command_line(None, None), Err(RunError::NoCommand)));
    }

    #[test]
    fn caller_env_overrides_the_image() {
        let image = vec!["PATH=/bin".to_string(), "A=1".to_string()];
        let env = merge_env(&image, &["A=2".to_string(), "B=3".to_string()]);
        assert_eq!(env, ["PATH=/bin", "A=2", "B=3"]);
    }

    #[test]
    fn ids_are_64_hex_and_differ() {
        let (a, b) = (container_id(), container_id());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
