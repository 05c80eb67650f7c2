//! One container's place on its network, as its supervisor sets it up: a TAP on the
//! network's bridge for the VM, the container's `/etc/hosts`, `/etc/resolv.conf` and
//! `/etc/hostname`, a DNS responder on the gateway address, and its published ports.

use super::{Network, NetworkError, NetworkStore};
use crate::container::{ContainerConfig, ContainerStore};
use crate::Host;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vessel_net::dns::{DnsServer, Names};
use vessel_net::link::Netlink;
use vessel_net::ports::PortMapping;
use vessel_net::proxy::PublishedPorts;
use vessel_net::tap::Tap;
use vessel_proto::agent::NetworkConfig;

/// Where a container sits on its network; fixed at create, kept while it exists.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Attachment {
    pub network: String,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    /// Further names the container answers to on the network (`--network-alias`).
    #[serde(default)]
    pub aliases: Vec<String>,
}

impl Attachment {
    /// `02:76` (locally administered, unicast) and the four bytes of the address: unique on
    /// the network, and the same on every start.
    pub fn default_mac(ip: Ipv4Addr) -> [u8; 6] {
        let [a, b, c, d] = ip.octets();
        [0x02, 0x76, a, b, c, d]
    }

    pub fn mac_string(&self) -> String {
        vessel_vm::format_mac(&self.mac)
    }
}

/// The host end of a container's NIC: `vt-` and the container's short id.
pub fn tap_name(container_id: &str) -> String {
    format!("vt-{}", crate::container::short_id(container_id))
}

/// The contents of the container's `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname`,
/// generated as docker does. `host_resolv_conf` is the host's own file.
pub fn container_files(
    config: &ContainerConfig,
    network: Option<&Network>,
    host_resolv_conf: &str,
) -> (String, String, String) {
    let mut hosts =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let Some(attachment) = &config.network {
        let mut names = vec![config.hostname.as_str()];
        if !config.name.is_empty() && config.name != config.hostname {
            names.push(&config.name);
        }
        hosts.push_str(&format!("{}\t{}\n", attachment.ip, names.join(" ")));
    }
    for (name, ip) in &config.extra_hosts {
        hosts.push_str(&format!("{ip}\t{name}\n"));
    }
    // The host's search domains and options always; its nameservers only when the
    // container has no resolver of ours and they are reachable from a VM (not loopback).
    let mut resolv = String::new();
    let nameservers: Vec<String> = if !config.dns.is_empty() {
        config.dns.iter().map(|ip| ip.to_string()).collect()
    } else if let Some(network) = network {
        vec![network.gateway.to_string()]
    } else {
        vessel_net::dns::upstreams_from_resolv_conf(host_resolv_conf)
            .into_iter()
            .map(|server| server.ip())
            .filter(|ip| !ip.is_loopback())
            .map(|ip| ip.to_string())
            .collect()
    };
    for server in nameservers {
        resolv.push_str(&format!("nameserver {server}\n"));
    }
    for line in host_resolv_conf.lines() {
        let line = line.trim();
        if line.starts_with("search ") || line.starts_with("options ") {
            resolv.push_str(line);
            resolv.push('\n');
        }
    }
    (hosts, resolv, format!("{}\n", config.hostname))
}

/// What a supervisor holds for its container's network while the container runs.
#[derive(Debug)]
pub struct ContainerNetwork {
    network: Option<Network>,
    /// The container's address there.
    ip: Option<Ipv4Addr>,
    /// Where names the network does not know are asked (none on an internal network: a
    /// relay out would be a way out).
    upstreams: Vec<SocketAddr>,
    tap: Option<Tap>,
    dns: Option<DnsServer>,
    ports: Option<PublishedPorts>,
    agent_config: NetworkConfig,
}

const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";

impl ContainerNetwork {
    /// What the VM needs at launch: the container's TAP (not yet on its bridge) and the
    /// guest's configuration. Quick, so the boot starts at once; [`Self::connect`] does the
    /// rest while the VM boots.
    pub fn open(host: &Host, config: &ContainerConfig) -> Result<Self, NetworkError> {
        let host_resolv = std::fs::read_to_string(HOST_RESOLV_CONF).unwrap_or_default();
        let Some(attachment) = &config.network else {
            let (hosts, resolv, hostname) = container_files(config, None, &host_resolv);
            return Ok(ContainerNetwork {
                network: None,
                ip: None,
                upstreams: Vec::new(),
                tap: None,
                dns: None,
                ports: None,
                agent_config: NetworkConfig {
                    hosts: hosts.into_bytes(),
                    resolv_conf: resolv.into_bytes(),
                    hostname_file: hostname.into_bytes(),
                    ..Default::default()
                },
            });
        };
        let network = NetworkStore::new(&host.root).get(&attachment.network)?;
        let tap = open_tap(&tap_name(&config.id))?;
        let (hosts, resolv, hostname) = container_files(config, Some(&network), &host_resolv);
        let agent_config = NetworkConfig {
            address: attachment.ip.to_string(),
            prefix_len: u32::from(network.subnet.prefix_len()),
            gateway: if network.internal { String::new() } else { network.gateway.to_string() },
            mtu: 0,
            mac: attachment.mac.to_vec(),
            hosts: hosts.into_bytes(),
            resolv_conf: resolv.into_bytes(),
            hostname_file: hostname.into_bytes(),
        };
        let upstreams = if network.internal {
            Vec::new()
        } else {
            vessel_net::dns::upstreams_from_resolv_conf(&host_resolv)
        };
        Ok(ContainerNetwork {
            network: Some(network),
            ip: Some(attachment.ip),
            upstreams,
            tap: Some(tap),
            dns: None,
            ports: None,
            agent_config,
        })
    }

    /// Brings the network up if it is not (a reboot clears it), puts the TAP on its bridge,
    /// and binds the DNS responder and the published ports; a port in use fails the start
    /// with a clear error. Runs while the VM boots: the guest sends nothing before it is
    /// configured, after boot.
    pub async fn connect(
        &mut self,
        host: &Host,
        publish: &[PortMapping],
    ) -> Result<(), NetworkError> {
        let (Some(network), Some(tap)) = (&self.network, &self.tap) else { return Ok(()) };
        let (host_owned, network_owned, tap_name) =
            (host.clone(), network.clone(), tap.name().to_string());
        // Netlink and nft block: off the runtime's thread, which is booting the VM.
        // All of it over one netlink connection.
        tokio::task::spawn_blocking(move || {
            super::kernel::with_netlink(|netlink| async move {
                let store = NetworkStore::new(&host_owned.root);
                store.bring_up(&netlink, &network_owned).await?;
                remove_stale_taps(&netlink, &host_owned, &network_owned).await?;
                Ok(netlink.attach_to_bridge(&tap_name, &network_owned.bridge()).await?)
            })
        })
        .await
        .expect("the network's set-up panicked")?;
        self.dns = match DnsServer::bind(SocketAddr::from((network.gateway, super::DNS_PORT))) {
            Ok(dns) => Some(dns),
            Err(err) => {
                // Addresses still work; only names will not resolve.
                tracing::warn!(error = %err, "no DNS responder for the container's network");
                None
            }
        };
        self.ports = Some(PublishedPorts::bind(publish).await?);
        Ok(())
    }

    /// The VM's NIC (None: `--network none`).
    pub fn nic(&self, mac: [u8; 6]) -> Result<Option<vessel_vm::Nic>, NetworkError> {
        let Some(tap) = &self.tap else { return Ok(None) };
        let fd = tap.fd().try_clone_to_owned().map_err(|source| NetworkError::Io {
            action: "duplicate the fd of",
            path: PathBuf::from(tap.name()),
            source,
        })?;
        Ok(Some(vessel_vm::Nic::new(fd, mac)))
    }

    pub fn agent_config(&self) -> NetworkConfig {
        self.agent_config.clone()
    }

    /// The published ports as bound (a host port of 0 asked for is the one the kernel gave).
    pub fn ports(&self) -> Vec<PortMapping> {
        self.ports.as_ref().map(|ports| ports.bound().to_vec()).unwrap_or_default()
    }

    /// Answers names and relays published ports until the returned task is aborted. The
    /// TAP stays open as long as the task: it holds this.
    pub fn serve(self, host: &Host) -> tokio::task::JoinHandle<()> {
        let root = host.root.clone();
        tokio::spawn(async move {
            let ContainerNetwork { network, ip, upstreams, tap, dns, ports, .. } = self;
            let _tap = tap;
            let dns = async {
                if let (Some(dns), Some(network)) = (dns, network) {
                    let names = Arc::new(NetworkNames::new(&root, network));
                    dns.serve(names, upstreams).await;
                }
            };
            let proxy = async {
                if let (Some(ports), Some(ip)) = (ports, ip) {
                    ports.serve(ip).await;
                }
            };
            tokio::join!(dns, proxy);
            std::future::pending::<()>().await;
        })
    }
}

/// Creates the TAP `name`. One of that name still there (its VM killed a moment ago, the
/// kernel not yet done with it, or someone else's) is deleted first.
fn open_tap(name: &str) -> Result<Tap, NetworkError> {
    match Tap::create(name) {
        Ok(tap) => Ok(tap),
        Err(first) => {
            let owned = name.to_string();
            let existed = super::kernel::with_netlink(|netlink| async move {
                Ok(netlink.delete_link(&owned).await?)
            })?;
            if !existed {
                return Err(first.into());
            }
            Ok(Tap::create(name)?)
        }
    }
}

/// Deletes the TAPs on the network's bridge whose container is not running (the kernel
/// deletes a TAP with its last holder, so this only meets what nothing expected).
async fn remove_stale_taps(
    netlink: &Netlink,
    host: &Host,
    network: &Network,
) -> Result<(), NetworkError> {
    let containers = ContainerStore::new(&host.root);
    // Matched by id only (a container may be named like another's short id), and a TAP
    // goes only on a clear answer: its container is gone or stopped.
    let ids = match containers.ids() {
        Ok(ids) => ids,
        Err(err) => {
            tracing::warn!(error = %err, "cannot list containers; stale TAPs stay for now");
            return Ok(());
        }
    };
    for port in netlink.bridge_ports(&network.bridge()).await? {
        let Some(short_id) = port.strip_prefix("vt-") else { continue };
        let running = ids
            .iter()
            .filter(|id| id.starts_with(short_id))
            .any(|id| containers.load(id).is_ok_and(|c| c.is_running()));
        if !running {
            tracing::info!(tap = port, "removing a TAP its container left");
            netlink.delete_link(&port).await?;
        }
    }
    Ok(())
}

/// The names of a network's running containers, read from the store and cached for a
/// second (the DNS responder asks for every query).
#[derive(Debug)]
pub struct NetworkNames {
    root: PathBuf,
    network: Network,
    cache: Mutex<(Option<Instant>, HashMap<String, Ipv4Addr>)>,
}

const NAMES_TTL: Duration = Duration::from_secs(1);

impl NetworkNames {
    pub fn new(root: &std::path::Path, network: Network) -> Self {
        NetworkNames {
            root: root.to_path_buf(),
            network,
            cache: Mutex::new((None, HashMap::new())),
        }
    }

    fn read(&self) -> HashMap<String, Ipv4Addr> {
        let mut names = HashMap::new();
        let store = NetworkStore::new(&self.root);
        let containers = ContainerStore::new(&self.root);
        for lease in store.leases(&self.network).unwrap_or_default() {
            let Ok(container) = containers.load(&lease.container) else { continue };
            if !container.is_running() {
                continue;
            }
            let aliases = container.config.network.iter().flat_map(|a| a.aliases.iter());
            for name in [&container.config.name, &container.short_id().to_string()]
                .into_iter()
                .chain(aliases)
            {
                names.insert(name.to_ascii_lowercase(), lease.ip);
            }
        }
        names
    }
}

impl Names for NetworkNames {
    fn lookup(&self, name: &str) -> Option<Ipv4Addr> {
        let mut cache = self.cache.lock().expect("not poisoned");
        if cache.0.is_none_or(|read| read.elapsed() > NAMES_TTL) {
            *cache = (Some(Instant::now()), self.read());
        }
        cache.1.get(name).copied()
    }
}
