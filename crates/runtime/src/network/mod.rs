//! Networks: a Linux bridge holding the gateway address, one nftables table for its DNS
//! redirect and its egress, and the addresses leased to containers.
//! `<root>/networks/<name>/` holds `network.json` (never rewritten), a `lock` file and
//! `leases/<ip>`; the bridge and the table are kernel state that `create` makes and every
//! container start makes again if missing (a reboot clears them). No process runs for a
//! network: each container's supervisor owns its TAP, its DNS responder and its published
//! ports.

mod attach;
mod kernel;
mod leases;

pub use attach::{container_files, tap_name, Attachment, ContainerNetwork, NetworkNames};
pub use leases::Lease;

use crate::container::{valid_name, write_json_atomically};
use crate::records::ReadError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use vessel_net::link::Netlink;
use vessel_net::subnet::{carve, Subnet, DEFAULT_POOL};

/// The network containers join when none is named.
pub const DEFAULT_NETWORK: &str = "default";
/// `--network none`: only a loopback interface.
pub const NO_NETWORK: &str = "none";
/// The size of the subnets picked from the pool.
const DEFAULT_PREFIX_LEN: u8 = 24;
/// docker's name for its default network, taken as ours.
const DOCKER_DEFAULT: &str = "bridge";
/// Where each network's DNS responder listens on its gateway address. The guests ask port
/// 53, which the network's rules redirect here: port 53 of the gateway stays free for the
/// host's own DNS service and for containers publishing port 53, and the rules can keep
/// the responder to the bridge.
pub const DNS_PORT: u16 = 10053;

const CONFIG_FILE: &str = "network.json";
const LOCK_FILE: &str = "lock";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Network {
    pub name: String,
    /// 64 hex digits; names the bridge and the nftables table.
    pub id: String,
    pub subnet: Subnet,
    pub gateway: Ipv4Addr,
    /// No route out: no masquerade, and forwarding off the bridge is dropped.
    pub internal: bool,
    pub created: u64,
    pub labels: BTreeMap<String, String>,
    #[serde(skip)]
    pub dir: PathBuf,
}

impl Network {
    /// The bridge's name: `vs-` and 8 hex digits of the id (fits IFNAMSIZ).
    pub fn bridge(&self) -> String {
        format!("vs-{}", &self.id[..8])
    }

    /// The nftables table holding this network's rules.
    pub fn table(&self) -> String {
        format!("vessel_{}", &self.id[..8])
    }

    fn leases_dir(&self) -> PathBuf {
        self.dir.join("leases")
    }

    /// Holds the network's lock until dropped: leases and removal take it.
    fn lock(&self) -> Result<File, NetworkError> {
        let path = self.dir.join(LOCK_FILE);
        let file = File::options().create(true).truncate(false).write(true).open(&path).map_err(
            |source| match source.kind() {
                std::io::ErrorKind::NotFound => NetworkError::NotFound(self.name.clone()),
                _ => NetworkError::Io { action: "open", path: path.clone(), source },
            },
        )?;
        file.lock().map_err(io("lock", &path))?;
        Ok(file)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("no such network: {0} (create it with `vessel network create {0}`)")]
    NotFound(String),
    #[error("network {0} already exists")]
    Exists(String),
    #[error("invalid network name {0:?}: use letters, digits and _ . - (starting with a letter or digit)")]
    InvalidName(String),
    #[error("{0:?} is a reserved network name")]
    Reserved(String),
    #[error("network {name} is in use by container(s) {} (remove them first)", containers.join(", "))]
    InUse { name: String, containers: Vec<String> },
    #[error("subnet {subnet} overlaps {other} ({owner}); choose another --subnet")]
    Overlap { subnet: Subnet, other: String, owner: String },
    #[error("no free /{DEFAULT_PREFIX_LEN} left in {DEFAULT_POOL} (remove unused networks, or give --subnet)")]
    PoolExhausted,
    #[error("{ip} is not a container address of network {network} ({subnet}, gateway {gateway})")]
    AddressOutside { ip: Ipv4Addr, network: String, subnet: Subnet, gateway: Ipv4Addr },
    #[error("address {ip} is already in use on network {network} by container {container}")]
    AddressInUse { ip: Ipv4Addr, network: String, container: String },
    #[error("network {0} has no free address left")]
    Full(String),
    #[error(transparent)]
    Link(#[from] vessel_net::link::LinkError),
    #[error(transparent)]
    Nft(#[from] vessel_net::nft::NftError),
    #[error(transparent)]
    Tap(#[from] vessel_net::tap::TapError),
    #[error(transparent)]
    Publish(#[from] vessel_net::proxy::ProxyError),
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("network metadata at {path} has a bad id {id:?}")]
    BadId { path: PathBuf, id: String },
    #[error("{0} is not a private unicast range (use one of 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10)")]
    NotPrivate(Subnet),
    #[error("network metadata at {path} is unreadable")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> NetworkError {
    let path = path.to_path_buf();
    move |source| NetworkError::Io { action, path, source }
}

#[derive(Debug, Clone)]
pub struct NetworkStore {
    root: PathBuf,
    dir: PathBuf,
}

impl NetworkStore {
    pub fn new(root: &Path) -> NetworkStore {
        NetworkStore { root: root.to_path_buf(), dir: root.join("networks") }
    }

    /// Creates a network and brings up its bridge and rules. Without `subnet`, the first
    /// /24 of the pool that no network and no host address or route uses.
    pub fn create(
        &self,
        name: &str,
        subnet: Option<Subnet>,
        internal: bool,
        labels: BTreeMap<String, String>,
    ) -> Result<Network, NetworkError> {
        if name == NO_NETWORK || name == "host" || name == DOCKER_DEFAULT {
            return Err(NetworkError::Reserved(name.to_string()));
        }
        if let Some(subnet) = subnet {
            check_private(subnet)?;
        }
        if !valid_name(name) {
            return Err(NetworkError::InvalidName(name.to_string()));
        }
        std::fs::create_dir_all(&self.dir).map_err(io("create", &self.dir))?;
        crate::container::remove_leftovers(&self.dir);
        // One creation at a time, so two never pick the same subnet.
        let _pool = self.pool_lock()?;
        let dir = self.dir.join(name);
        if dir.join(CONFIG_FILE).exists() {
            return Err(NetworkError::Exists(name.to_string()));
        }
        // A directory without its config is no network (a crash mid-removal left it).
        let _ = std::fs::remove_dir_all(&dir);
        let subnet = self.choose_subnet(subnet)?;
        let network = Network {
            name: name.to_string(),
            id: crate::container::new_id(),
            subnet,
            gateway: subnet.gateway(),
            internal,
            created: crate::time::now_nanos(),
            labels,
            dir: dir.clone(),
        };
        let partial = self.dir.join(format!(".creating-{name}-{}", std::process::id()));
        let write = || -> Result<(), NetworkError> {
            std::fs::create_dir_all(partial.join("leases")).map_err(io("create", &partial))?;
            let config = partial.join(CONFIG_FILE);
            write_json_atomically(&config, &network).map_err(io("write", &config))?;
            std::fs::rename(&partial, &dir).map_err(io("create", &dir))
        };
        if let Err(err) = write() {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(err);
        }
        let made = &network;
        let created = kernel::with_netlink(|netlink| async move {
            let existed = netlink.link_exists(&made.bridge()).await?;
            kernel::ensure_kernel_state(&netlink, made, existed).await
        });
        if let Err(err) = created {
            let _ = kernel::tear_down(&network);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(err);
        }
        Ok(network)
    }

    /// The network `name`; `default` is created on first use.
    pub fn get_or_default(&self, name: &str) -> Result<Network, NetworkError> {
        match self.get(name) {
            Err(NetworkError::NotFound(_)) if name == DEFAULT_NETWORK => {
                match self.create(name, None, false, BTreeMap::new()) {
                    Err(NetworkError::Exists(_)) => self.get(name),
                    other => other,
                }
            }
            other => other,
        }
    }

    /// The network named `query`, or whose id starts with it (`bridge` is `default`, as
    /// docker's default network is called).
    pub fn find(&self, query: &str) -> Result<Network, NetworkError> {
        let name = if is_default(query) { DEFAULT_NETWORK } else { query };
        match self.get(name) {
            Err(NetworkError::NotFound(_)) if query.len() >= 3 => {
                let matches: Vec<Network> = self
                    .list()?
                    .into_iter()
                    .filter(|network| network.id.starts_with(query))
                    .collect();
                match <[Network; 1]>::try_from(matches) {
                    Ok([network]) => Ok(network),
                    Err(_) => Err(NetworkError::NotFound(query.to_string())),
                }
            }
            other => other,
        }
    }

    pub fn get(&self, name: &str) -> Result<Network, NetworkError> {
        if !valid_name(name) {
            return Err(NetworkError::NotFound(name.to_string()));
        }
        let dir = self.dir.join(name);
        let path = dir.join(CONFIG_FILE);
        let mut network: Network = match crate::records::read(&path) {
            Ok(Some(network)) => network,
            Ok(None) => return Err(NetworkError::NotFound(name.to_string())),
            Err(ReadError::Io(source)) => {
                return Err(NetworkError::Io { action: "read", path, source })
            }
            Err(ReadError::Corrupt(source)) => return Err(NetworkError::Corrupt { path, source }),
        };
        if !crate::container::is_id(&network.id) {
            return Err(NetworkError::BadId { path, id: network.id });
        }
        network.dir = dir;
        Ok(network)
    }

    /// Every network, by name.
    pub fn list(&self) -> Result<Vec<Network>, NetworkError> {
        let names = crate::records::names(&self.dir).map_err(io("read", &self.dir))?;
        let mut networks = Vec::new();
        for name in names {
            match self.get(&name) {
                Ok(network) => networks.push(network),
                Err(NetworkError::NotFound(_)) => {} // removed meanwhile
                Err(err) => return Err(err),
            }
        }
        Ok(networks)
    }

    /// Removes a network no container is attached to, with its bridge and rules.
    pub fn remove(&self, name: &str) -> Result<(), NetworkError> {
        let network = self.get(name)?;
        let _lock = network.lock()?;
        // Removed (and maybe made again) by someone else while we waited for the lock?
        match self.get(name) {
            Ok(current) if current.id == network.id => {}
            _ => return Err(NetworkError::NotFound(name.to_string())),
        }
        self.reclaim_stale_leases(&network)?;
        let containers: Vec<String> =
            self.leases(&network)?.into_iter().map(|lease| lease.container).collect();
        if !containers.is_empty() {
            let names = containers.iter().map(|id| self.container_name(id)).collect();
            return Err(NetworkError::InUse { name: name.to_string(), containers: names });
        }
        kernel::tear_down(&network)?;
        let doomed = self.dir.join(format!(".removing-{name}-{}", std::process::id()));
        std::fs::rename(&network.dir, &doomed).map_err(io("remove", &network.dir))?;
        match std::fs::remove_dir_all(&doomed) {
            // Another process's sweep of leftovers took it first.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other.map_err(io("remove", &doomed)),
        }
    }

    /// Makes the network's bridge and rules exist (after a reboot they are gone), over the
    /// caller's netlink connection. A bridge made again is checked first against what the
    /// host uses by now (another state root, a VPN), under the pool lock, as at creation.
    pub(super) async fn bring_up(
        &self,
        netlink: &Netlink,
        network: &Network,
    ) -> Result<(), NetworkError> {
        let bridge = network.bridge();
        if netlink.link_exists(&bridge).await? {
            return kernel::ensure_kernel_state(netlink, network, true).await;
        }
        let _pool = self.pool_lock()?;
        let existed = netlink.link_exists(&bridge).await?;
        if !existed {
            let used = netlink.host_subnets().await?;
            if let Some(other) = used.iter().find(|used| used.overlaps(&network.subnet)) {
                return Err(NetworkError::Overlap {
                    subnet: network.subnet,
                    other: other.to_string(),
                    owner: "an address or route this host has taken since the network was made"
                        .to_string(),
                });
            }
        }
        kernel::ensure_kernel_state(netlink, network, existed).await
    }

    /// Subnets are picked under a host-wide lock when there is one (/run/lock): two state
    /// roots (tests run several) then never pick the same free subnet at once.
    fn pool_lock(&self) -> Result<File, NetworkError> {
        let host_wide = Path::new("/run/lock");
        let path = if host_wide.is_dir() {
            host_wide.join("vessel-subnets.lock")
        } else {
            self.dir.join(".lock")
        };
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("open", &path))?;
        file.lock().map_err(io("lock", &path))?;
        Ok(file)
    }

    /// `requested` if nothing uses it, else the pool's first free /24.
    fn choose_subnet(&self, requested: Option<Subnet>) -> Result<Subnet, NetworkError> {
        let mut taken: Vec<(Subnet, String)> = self
            .list()?
            .into_iter()
            .map(|network| (network.subnet, format!("network {}", network.name)))
            .collect();
        for subnet in kernel::host_subnets()? {
            taken.push((subnet, "an address or route of this host".to_string()));
        }
        let clash = |candidate: &Subnet| taken.iter().find(|(used, _)| used.overlaps(candidate));
        match requested {
            Some(subnet) => match clash(&subnet) {
                Some((other, owner)) => Err(NetworkError::Overlap {
                    subnet,
                    other: other.to_string(),
                    owner: owner.clone(),
                }),
                None => Ok(subnet),
            },
            None => carve(DEFAULT_POOL, DEFAULT_PREFIX_LEN)
                .find(|candidate| clash(candidate).is_none())
                .ok_or(NetworkError::PoolExhausted),
        }
    }

    /// A container's name for messages (its short id if it is gone).
    fn container_name(&self, id: &str) -> String {
        crate::container::ContainerStore::new(&self.root)
            .load(id)
            .map(|c| c.config.name)
            .unwrap_or_else(|_| crate::container::short_id(id).to_string())
    }
}

/// True for the default network's names: ours, and docker's (`bridge`).
pub fn is_default(query: &str) -> bool {
    query == DEFAULT_NETWORK || query == DOCKER_DEFAULT
}

/// Refuses what no container network should use: public, loopback, link-local,
/// multicast and reserved ranges.
fn check_private(subnet: Subnet) -> Result<(), NetworkError> {
    let private = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"];
    let inside = private.iter().any(|range| {
        let range: Subnet = range.parse().expect("a valid range");
        range.contains(subnet.network()) && range.contains(subnet.broadcast())
    });
    if inside {
        Ok(())
    } else {
        Err(NetworkError::NotPrivate(subnet))
    }
}
