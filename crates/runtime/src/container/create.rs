//! Creating a container: the image resolved (and its snapshot written), docker's `create`
//! flags turned into the container's config, and the container recorded in the store.

use super::{Container, ContainerConfig, ContainerStore, StoreError};
use crate::network::{Attachment, NetworkError, NetworkStore, DEFAULT_NETWORK, NO_NETWORK};
use crate::Host;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use vessel_net::ports::{parse_expose, PortMapping};

/// docker's `create`/`run` flags that shape the container.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// An image name or id in the local store.
    pub image: String,
    pub name: Option<String>,
    /// Replaces the image's CMD (its ENTRYPOINT stays, unless `entrypoint` is given).
    pub command: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    /// KEY=VALUE entries, added to (and overriding) the image's.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// CPUs for the container (fractions allowed): the VM gets the next whole number, the
    /// container's cgroup the exact share.
    pub cpus: f64,
    /// The container's memory limit; its VM gets `VM_MEMORY_OVERHEAD_MIB` more.
    pub memory_mib: u32,
    pub read_only: bool,
    pub tty: bool,
    pub open_stdin: bool,
    pub stop_signal: Option<String>,
    pub stop_timeout: Option<u32>,
    pub init: bool,
    pub auto_remove: bool,
    pub accel: String,
    /// `--ulimit`: name, soft, hard.
    pub ulimits: Vec<(String, u64, u64)>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub no_new_privileges: bool,
    /// `-v`, `--mount`, `--tmpfs`.
    pub mounts: Vec<super::mounts::MountRequest>,
    pub shm_size: Option<u64>,
    /// `--network`: a network's name, `none`, or None for the default network.
    pub network: Option<String>,
    /// `--ip`: the address to lease instead of the next free one.
    pub ip: Option<Ipv4Addr>,
    pub mac: Option<[u8; 6]>,
    /// `--network-alias`.
    pub aliases: Vec<String>,
    pub dns: Vec<Ipv4Addr>,
    /// `--add-host NAME:IP`; None for `host-gateway` (the network's gateway).
    pub extra_hosts: Vec<(String, Option<Ipv4Addr>)>,
    /// `-p`.
    pub publish: Vec<PortMapping>,
    /// `-P`: every port the image exposes, each on a free host port.
    pub publish_all: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Image(#[from] vessel_image::snapshot::SnapshotError),
    #[error(
        "no command: the image has neither ENTRYPOINT nor CMD (give one after the image name)"
    )]
    NoCommand,
    #[error("invalid stop signal {0:?} (give a name such as SIGTERM, or a number)")]
    StopSignal(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Mount(#[from] super::mounts::MountError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error("--network host is not possible: the container has a kernel of its own (publish ports with -p instead)")]
    HostNetwork,
    #[error("host port {0} is where the network's DNS responder listens on its gateway; publish another port, or on one address (e.g. 127.0.0.1:{0}:…)")]
    ReservedPort(u16),
    #[error("invalid host name {0:?}: use letters, digits, '-' and '.', at most 63 bytes")]
    HostName(String),
    #[error("{0} needs a network (it cannot go with --network none)")]
    NeedsNetwork(&'static str),
    #[error("the image exposes an unreadable port {spec:?}")]
    Expose {
        spec: String,
        #[source]
        source: vessel_net::ports::PortError,
    },
}

/// Records a new container (state `created`): nothing runs until it is started.
pub fn create(host: &Host, options: CreateOptions) -> Result<Container, CreateError> {
    let prepared = vessel_image::snapshot::prepare(&host.root, &options.image)?;
    let config = &prepared.config;
    // As docker: a given ENTRYPOINT replaces the image's CMD too (only the command given
    // after the image follows it).
    let cmd = if !options.command.is_empty() {
        Some(options.command)
    } else if options.entrypoint.is_some() {
        None
    } else {
        config.cmd().clone()
    };
    let args =
        command_line(options.entrypoint.clone().or_else(|| config.entrypoint().clone()), cmd)?;
    let stop_signal = options
        .stop_signal
        .or_else(|| config.stop_signal().clone())
        .unwrap_or_else(|| "SIGTERM".to_string());
    if crate::supervisor::parse_signal(&stop_signal).is_none() {
        return Err(CreateError::StopSignal(stop_signal));
    }
    let mut publish = options.publish;
    if options.publish_all {
        for spec in config.exposed_ports().iter().flatten() {
            let (first, last, protocol) = parse_expose(spec)
                .map_err(|source| CreateError::Expose { spec: spec.clone(), source })?;
            for container_port in first..=last {
                publish.push(PortMapping {
                    host_ip: Ipv4Addr::UNSPECIFIED,
                    host_port: 0,
                    container_port,
                    protocol,
                });
            }
        }
    }
    let id = super::new_id();
    let network_name = options.network.unwrap_or_else(|| DEFAULT_NETWORK.to_string());
    if network_name == "host" {
        return Err(CreateError::HostNetwork);
    }
    if let Some(bad) = std::iter::once(&options.hostname)
        .flatten()
        .chain(&options.aliases)
        .find(|name| !valid_hostname(name))
    {
        return Err(CreateError::HostName(bad.clone()));
    }
    let (network, gateway) = if network_name == NO_NETWORK {
        let needs = [
            (!publish.is_empty(), "publishing ports"),
            (options.ip.is_some(), "--ip"),
            (!options.aliases.is_empty(), "--network-alias"),
            (options.extra_hosts.iter().any(|(_, ip)| ip.is_none()), "host-gateway"),
        ];
        if let Some((_, what)) = needs.iter().find(|(given, _)| *given) {
            return Err(CreateError::NeedsNetwork(what));
        }
        (None, None)
    } else {
        let (network, ip) = lease(host, &network_name, &id, options.ip)?;
        let attachment = Attachment {
            network: network.name,
            ip,
            mac: options.mac.unwrap_or_else(|| Attachment::default_mac(ip)),
            aliases: options.aliases,
        };
        (Some(attachment), Some(network.gateway))
    };
    // `host-gateway` is the host as the container reaches it: its network's gateway.
    let extra_hosts = options
        .extra_hosts
        .into_iter()
        .filter_map(|(name, ip)| Some((name, ip.or(gateway)?)))
        .collect();
    // What was taken for this container alone goes again if it is not created.
    let release = |network: &Option<Attachment>| {
        if let Some(attachment) = network {
            let store = NetworkStore::new(&host.root);
            let _ = store.release(&attachment.network, attachment.ip, &id);
        }
    };
    // The network's DNS responder holds this port on the gateway address, which a
    // wildcard bind would take too.
    if let Some(gateway) = gateway {
        let clash = |p: &&PortMapping| {
            p.host_port == crate::network::DNS_PORT
                && (p.host_ip.is_unspecified() || p.host_ip == gateway)
        };
        if let Some(port) = publish.iter().find(clash) {
            release(&network);
            return Err(CreateError::ReservedPort(port.host_port));
        }
    }
    let mounts = match super::mounts::resolve(&host.root, options.mounts) {
        Ok(mounts) => mounts,
        Err(err) => {
            release(&network);
            return Err(err.into());
        }
    };
    let mut labels: BTreeMap<String, String> =
        config.labels().clone().unwrap_or_default().into_iter().collect();
    labels.extend(options.labels);
    let config = ContainerConfig {
        hostname: options.hostname.unwrap_or_else(|| super::short_id(&id).to_string()),
        id: id.clone(),
        name: options.name.unwrap_or_default(),
        created: crate::time::now_nanos(),
        image: options.image,
        image_id: prepared.id.to_string(),
        args,
        env: merge_env(config.env().as_deref().unwrap_or_default(), &options.env),
        workdir: options.workdir.or_else(|| config.working_dir().clone()).unwrap_or_default(),
        user: options.user.or_else(|| config.user().clone()).unwrap_or_default(),
        labels,
        cpus: options.cpus,
        memory_mib: options.memory_mib,
        read_only: options.read_only,
        tty: options.tty,
        open_stdin: options.open_stdin,
        stop_signal,
        stop_timeout: options.stop_timeout.unwrap_or(10),
        init: options.init,
        auto_remove: options.auto_remove,
        accel: options.accel,
        ulimits: options.ulimits,
        capabilities: capabilities(&options.cap_add, &options.cap_drop),
        no_new_privileges: options.no_new_privileges,
        mounts,
        shm_size: options.shm_size,
        network,
        dns: options.dns,
        extra_hosts,
        publish,
    };
    let anonymous: Vec<String> = config
        .mounts
        .iter()
        .filter_map(|m| match &m.source {
            super::MountSource::Volume { name, anonymous: true } => Some(name.clone()),
            _ => None,
        })
        .collect();
    let network = config.network.clone();
    ContainerStore::new(&host.root).create(config).map_err(|err| {
        release(&network);
        let volumes = crate::volume::VolumeStore::new(&host.root);
        for name in &anonymous {
            let _ = volumes.remove(name);
        }
        CreateError::Store(err)
    })
}

/// An address on the network `query` (a name, an id prefix, or docker's `bridge` for the
/// default one, made on first use). The default network may be pruned between finding it
/// and leasing from it: then it is made again, once.
fn lease(
    host: &Host,
    query: &str,
    container: &str,
    ip: Option<Ipv4Addr>,
) -> Result<(crate::network::Network, Ipv4Addr), NetworkError> {
    let store = NetworkStore::new(&host.root);
    let default = crate::network::is_default(query);
    let mut attempts = 0;
    loop {
        let network =
            if default { store.get_or_default(DEFAULT_NETWORK)? } else { store.find(query)? };
        match store.allocate(&network, container, ip) {
            Err(NetworkError::NotFound(_)) if default && attempts == 0 => attempts += 1,
            other => return other.map(|ip| (network, ip)),
        }
    }
}

/// RFC 1123 host names, within `sethostname`'s limit: they go into /etc/hosts and DNS.
fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The capabilities `--cap-add` and `--cap-drop` leave of docker's default set (None: the
/// default set itself). `ALL` works on either side, as with docker.
fn capabilities(add: &[String], drop: &[String]) -> Option<Vec<String>> {
    if add.is_empty() && drop.is_empty() {
        return None;
    }
    let canonical = |name: &String| {
        let upper = name.to_ascii_uppercase();
        if upper == "ALL" || upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        }
    };
    let add: Vec<String> = add.iter().map(canonical).collect();
    let drop: Vec<String> = drop.iter().map(canonical).collect();
    if add.iter().any(|name| name == "ALL") {
        return Some(vec!["ALL".to_string()]);
    }
    let mut kept: Vec<String> = if drop.iter().any(|name| name == "ALL") {
        Vec::new()
    } else {
        let default = vessel_proto::DEFAULT_CAPABILITIES.iter().map(|name| name.to_string());
        default.filter(|name| !drop.contains(name)).collect()
    };
    for name in add {
        if !kept.contains(&name) {
            kept.push(name);
        }
    }
    Some(kept)
}

/// ENTRYPOINT followed by CMD, as docker joins them.
fn command_line(
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
) -> Result<Vec<String>, CreateError> {
    let args: Vec<String> =
        entrypoint.into_iter().flatten().chain(cmd.into_iter().flatten()).collect();
    if args.is_empty() {
        Err(CreateError::NoCommand)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entrypoint_then_cmd() {
        let v = |items: &[&str]| Some(items.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(command_line(v(&["/init"]), v(&["a", "b"])).unwrap(), ["/init", "a", "b"]);
        assert_eq!(command_line(None, v(&["sh"])).unwrap(), ["sh"]);
        assert!(matches!(command_line(None, None), Err(CreateError::NoCommand)));
    }

    #[test]
    fn capabilities_start_from_dockers_default() {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(capabilities(&[], &[]), None);
        let kept = capabilities(&names(&["net_admin"]), &names(&["CAP_CHOWN", "kill"])).unwrap();
        assert!(kept.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(
            !kept.contains(&"CAP_CHOWN".to_string()) && !kept.contains(&"CAP_KILL".to_string())
        );
        assert_eq!(kept.len(), 13);
        assert_eq!(
            capabilities(&names(&["NET_ADMIN"]), &names(&["ALL"])).unwrap(),
            ["CAP_NET_ADMIN"]
        );
        assert_eq!(capabilities(&names(&["all"]), &[]).unwrap(), ["ALL"]);
    }

    #[test]
    fn caller_env_overrides_the_image() {
        let image = vec!["PATH=/bin".to_string(), "A=1".to_string()];
        let env = merge_env(&image, &["A=2".to_string(), "B=3".to_string()]);
        assert_eq!(env, ["PATH=/bin", "A=2", "B=3"]);
    }
}
