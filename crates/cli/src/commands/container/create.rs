//! `vessel create`: a container recorded, not started; and the flags `run` shares.

use crate::Context;
use std::collections::BTreeMap;
use std::process::ExitCode;
use vessel_runtime::container::create::CreateOptions;
use vessel_runtime::container::mounts;
use vessel_runtime::container::Container;

/// The flags that shape a container, shared by `create` and `run`.
#[derive(Debug, clap::Args)]
pub struct CreateFlags {
    /// Keep stdin open and pass it to the container
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the container a terminal (with -i, this terminal is put in raw mode)
    #[arg(short, long)]
    pub tty: bool,
    /// Remove the container when it exits
    #[arg(long)]
    pub rm: bool,
    /// A name for the container (default: a generated one)
    #[arg(long)]
    pub name: Option<String>,
    /// Set an environment variable (KEY=VALUE, or KEY to pass this shell's value)
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read environment variables from a file (KEY=VALUE lines, # comments)
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<std::path::PathBuf>,
    /// Working directory inside the container
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// User: name, uid, name:group or uid:gid
    #[arg(short, long)]
    pub user: Option<String>,
    /// Override the image's ENTRYPOINT
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// The container's hostname (default: its short id)
    #[arg(long)]
    pub hostname: Option<String>,
    /// Set a label (KEY=VALUE)
    #[arg(short, long = "label", value_name = "KEY=VALUE", value_parser = crate::commands::parse_label)]
    pub labels: Vec<(String, String)>,
    /// CPUs for the container, fractions allowed (its VM gets the next whole number)
    #[arg(long, default_value_t = 1.0, value_parser = parse_cpus)]
    pub cpus: f64,
    /// Memory limit of the container (e.g. 512m, 1g); its VM gets 64 MiB more
    #[arg(short, long, default_value = "256m", value_parser = crate::commands::rootfs::parse_size)]
    pub memory: u64,
    /// Mount the container's root filesystem read-only
    #[arg(long)]
    pub read_only: bool,
    /// The signal that stops the container (default: the image's, else SIGTERM)
    #[arg(long)]
    pub stop_signal: Option<String>,
    /// Seconds `stop` waits before it kills the container (default 10)
    #[arg(long)]
    pub stop_timeout: Option<u32>,
    /// Run a minimal init as PID 1 that forwards signals and reaps zombies
    #[arg(long)]
    pub init: bool,
    /// A resource limit: NAME=SOFT[:HARD] (e.g. nofile=1024:2048; -1 for unlimited)
    #[arg(long = "ulimit", value_name = "NAME=SOFT[:HARD]", value_parser = parse_ulimit)]
    pub ulimits: Vec<(String, u64, u64)>,
    /// Add a capability to docker's default set (NET_ADMIN, or ALL)
    #[arg(long, value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a capability from docker's default set (CHOWN, or ALL)
    #[arg(long, value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// Mount a volume or host directory: NAME:/path, /host/dir:/path or /path (an anonymous
    /// volume), with :ro for read-only
    #[arg(short, long = "volume", value_name = "SRC:DST[:ro]", value_parser = mounts::parse_volume_flag)]
    pub volumes: Vec<mounts::MountRequest>,
    /// Mount with docker's long syntax: type=bind|volume|tmpfs,source=…,target=…[,readonly]
    #[arg(long = "mount", value_name = "SPEC", value_parser = mounts::parse_mount_flag)]
    pub mounts: Vec<mounts::MountRequest>,
    /// Size of /dev/shm (default 64m)
    #[arg(long, value_parser = crate::commands::rootfs::parse_size)]
    pub shm_size: Option<u64>,
    /// Mount a tmpfs: /path[:size=64m,mode=1777]
    #[arg(long = "tmpfs", value_name = "DST[:OPTIONS]", value_parser = mounts::parse_tmpfs_flag)]
    pub tmpfs: Vec<mounts::MountRequest>,
    /// Security options: no-new-privileges[=true|false]
    #[arg(long, value_name = "OPTION", value_parser = parse_security_opt)]
    pub security_opt: Vec<bool>,
    /// Connect to a network: a network's name, or none (default: the network "default")
    #[arg(long, visible_alias = "net", value_name = "NETWORK")]
    pub network: Option<String>,
    /// The container's IPv4 address on its network (default: the next free one)
    #[arg(long)]
    pub ip: Option<std::net::Ipv4Addr>,
    /// The container's MAC address (default: 02:76 and its IPv4 address)
    #[arg(long, value_parser = parse_mac)]
    pub mac_address: Option<[u8; 6]>,
    /// Another name the container answers to on its network
    #[arg(long = "network-alias", visible_alias = "net-alias", value_name = "NAME")]
    pub aliases: Vec<String>,
    /// A nameserver for the container (default: the network's, which also knows containers)
    #[arg(long, value_name = "IP")]
    pub dns: Vec<std::net::Ipv4Addr>,
    /// Add a line to /etc/hosts: NAME:IP, or NAME:host-gateway for the host
    #[arg(long = "add-host", value_name = "NAME:IP", value_parser = parse_add_host)]
    pub extra_hosts: Vec<(String, Option<std::net::Ipv4Addr>)>,
    /// Publish a container's port on the host: [IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp], ranges allowed
    #[arg(short = 'p', long = "publish", value_name = "SPEC", value_parser = parse_publish)]
    pub publish: Vec<Vec<vessel_net::ports::PortMapping>>,
    /// Publish every port the image exposes, each on a free host port
    #[arg(short = 'P', long)]
    pub publish_all: bool,
    /// Accelerator: auto, kvm or tcg
    #[arg(long, default_value = "auto")]
    pub accel: vessel_vm::Accel,
    /// Pull the image: missing (default), always or never
    #[arg(long, default_value = "missing", value_parser = ["missing", "always", "never"])]
    pub pull: String,
    #[command(flatten)]
    pub registry: crate::commands::image::RegistryArgs,
    /// The image (name or id)
    pub image: String,
    /// The command and its arguments (default: the image's)
    pub command: Vec<String>,
}

#[derive(Debug, clap::Args)]
#[command(trailing_var_arg = true)]
pub struct CreateArgs {
    #[command(flatten)]
    pub flags: CreateFlags,
}

pub fn run(args: CreateArgs, context: &Context) -> anyhow::Result<ExitCode> {
    let container = create(args.flags, context)?;
    outln!("{}", container.id());
    Ok(ExitCode::SUCCESS)
}

/// Pulls the image if needed and records the container.
pub fn create(flags: CreateFlags, context: &Context) -> anyhow::Result<Container> {
    pull_if_needed(&flags, context)?;
    let mut env = Vec::new();
    for file in &flags.env_file {
        let text = std::fs::read_to_string(file)
            .map_err(|err| anyhow::anyhow!("cannot read env file {}: {err}", file.display()))?;
        env.extend(
            text.lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with('#'))
                .map(String::from),
        );
    }
    env.extend(flags.env);
    let labels: BTreeMap<String, String> = flags.labels.into_iter().collect();
    let options = CreateOptions {
        image: flags.image,
        name: flags.name,
        command: flags.command,
        // `--entrypoint ""` clears the image's.
        entrypoint: flags.entrypoint.map(|entrypoint| {
            if entrypoint.is_empty() {
                Vec::new()
            } else {
                vec![entrypoint]
            }
        }),
        env,
        workdir: flags.workdir,
        user: flags.user,
        hostname: flags.hostname,
        labels,
        cpus: flags.cpus,
        memory_mib: u32::try_from(flags.memory >> 20).unwrap_or(u32::MAX),
        read_only: flags.read_only,
        tty: flags.tty,
        open_stdin: flags.interactive,
        stop_signal: flags.stop_signal,
        stop_timeout: flags.stop_timeout,
        init: flags.init,
        auto_remove: flags.rm,
        accel: flags.accel.to_string(),
        ulimits: flags.ulimits,
        cap_add: flags.cap_add,
        cap_drop: flags.cap_drop,
        no_new_privileges: flags.security_opt.last().copied().unwrap_or(false),
        mounts: flags.volumes.into_iter().chain(flags.mounts).chain(flags.tmpfs).collect(),
        shm_size: flags.shm_size,
        network: flags.network,
        ip: flags.ip,
        mac: flags.mac_address,
        aliases: flags.aliases,
        dns: flags.dns,
        extra_hosts: flags.extra_hosts,
        publish: flags.publish.into_iter().flatten().collect(),
        publish_all: flags.publish_all,
    };
    Ok(vessel_runtime::container::create::create(&context.host, options)?)
}

/// `nofile=1024:2048`, `nproc=512` (soft = hard), `-1` for unlimited.
fn parse_ulimit(value: &str) -> Result<(String, u64, u64), String> {
    let invalid =
        || format!("invalid --ulimit {value:?} (NAME=SOFT[:HARD], e.g. nofile=1024:2048)");
    let (name, limits) = value.split_once('=').ok_or_else(invalid)?;
    let number = |text: &str| match text {
        "-1" | "unlimited" => Ok(u64::MAX),
        text => text.parse::<u64>().map_err(|_| invalid()),
    };
    let (soft, hard) = match limits.split_once(':') {
        Some((soft, hard)) => (number(soft)?, number(hard)?),
        None => (number(limits)?, number(limits)?),
    };
    if name.is_empty() || soft > hard {
        return Err(invalid());
    }
    Ok((name.to_string(), soft, hard))
}

/// The security options vessel knows: only `no-new-privileges` so far.
fn parse_security_opt(value: &str) -> Result<bool, String> {
    match value.replace(':', "=").as_str() {
        "no-new-privileges" | "no-new-privileges=true" => Ok(true),
        "no-new-privileges=false" => Ok(false),
        _ => Err(format!(
            "unsupported --security-opt {value:?} (vessel knows no-new-privileges[=true|false])"
        )),
    }
}

fn parse_cpus(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(cpus) if cpus > 0.0 && cpus <= 64.0 => Ok(cpus),
        _ => Err(format!("invalid --cpus {value:?} (a number from 0.01 to 64)")),
    }
}

/// Pulls the image when `--pull` asks for it, or when it is missing (as docker run does).
fn pull_if_needed(flags: &CreateFlags, context: &Context) -> anyhow::Result<()> {
    let missing = match crate::commands::image::store(context)?.find(&flags.image) {
        Ok(_) => false,
        Err(vessel_oci::image::ImageError::NotFound(_)) => true,
        Err(err) => return Err(err.into()),
    };
    let pull = match flags.pull.as_str() {
        "always" => true,
        "never" => false,
        _ => missing,
    };
    if !pull {
        return Ok(());
    }
    if missing {
        eprintln!("Unable to find image '{}' locally", flags.image);
    }
    let pull_args = crate::commands::image::PullArgs {
        name: flags.image.clone(),
        platform: None,
        max_concurrent_downloads: 3,
        quiet: false,
        no_snapshot: false,
        registry: flags.registry.clone(),
    };
    crate::commands::image::pull::pull(pull_args, context).map(drop)
}

fn parse_publish(spec: &str) -> Result<Vec<vessel_net::ports::PortMapping>, String> {
    vessel_net::ports::parse_publish(spec).map_err(|err| err.to_string())
}

/// `NAME:IP`, as docker's `--add-host` (IPv4 only); `NAME:host-gateway` is the host as
/// the container reaches it (None here: the network's gateway, known at create).
fn parse_add_host(text: &str) -> Result<(String, Option<std::net::Ipv4Addr>), String> {
    let (name, ip) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not NAME:IP (e.g. db.local:10.0.0.5)"))?;
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '#') {
        return Err(format!("{name:?} in --add-host {text} is not a host name"));
    }
    if ip == "host-gateway" {
        return Ok((name.to_string(), None));
    }
    let ip = ip.parse().map_err(|_| {
        format!("{ip:?} in --add-host {text} is not an IPv4 address (or host-gateway)")
    })?;
    Ok((name.to_string(), Some(ip)))
}

/// `aa:bb:cc:dd:ee:ff`, a unicast address.
fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bad = || format!("{text:?} is not a MAC address (give six hex bytes: 02:42:ac:11:00:02)");
    let bytes: Vec<u8> = text
        .split(':')
        .map(|part| if part.len() == 2 { u8::from_str_radix(part, 16).ok() } else { None })
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    let mac: [u8; 6] = bytes.try_into().map_err(|_| bad())?;
    if mac[0] & 1 == 1 {
        return Err(format!("{text} is a multicast MAC address; a NIC needs a unicast one"));
    }
    Ok(mac)
}
