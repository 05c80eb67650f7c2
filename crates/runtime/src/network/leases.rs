//! Addresses leased to containers: `leases/<ip>` holds the container's id. A lease is
//! written whole and hard-linked into place, so it exists complete or not at all, and is
//! taken under the network's lock, so two containers never get one address. A container
//! keeps its lease while stopped (it restarts with the same address) and frees it when
//! removed; a lease whose container is gone (a crash between the two) is reclaimed.

use super::{io, Network, NetworkError, NetworkStore};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

/// A lease younger than this is never reclaimed: its container may still be being created.
const CREATION_GRACE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    /// The container's id.
    pub container: String,
}

impl NetworkStore {
    /// The leases on the network (a read: a stale one is reclaimed only under the
    /// network's lock, by [`Self::allocate`] and network removal).
    pub fn leases(&self, network: &Network) -> Result<Vec<Lease>, NetworkError> {
        let dir = network.leases_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(NetworkError::Io { action: "read", path: dir, source }),
        };
        let mut leases = Vec::new();
        for entry in entries.flatten() {
            let Some(ip) = entry.file_name().to_str().and_then(|name| name.parse().ok()) else {
                continue; // a temporary file, or not ours
            };
            let Ok(container) = std::fs::read_to_string(entry.path()) else { continue };
            leases.push(Lease { ip, container: container.trim().to_string() });
        }
        leases.sort_by_key(|lease| lease.ip);
        Ok(leases)
    }

    /// Deletes the leases whose container no longer exists. The caller holds the lock.
    pub(super) fn reclaim_stale_leases(&self, network: &Network) -> Result<(), NetworkError> {
        for lease in self.leases(network)? {
            let path = network.leases_dir().join(lease.ip.to_string());
            if self.container_gone(&lease.container) && older_than(&path, CREATION_GRACE) {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(())
    }

    /// Leases an address of `network` to `container`: `requested` (`--ip`) if it is free,
    /// else the lowest free one.
    pub fn allocate(
        &self,
        network: &Network,
        container: &str,
        requested: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, NetworkError> {
        let _lock = network.lock()?;
        // Removed (or removed and made again) while we waited for the lock?
        match self.get(&network.name) {
            Ok(current) if current.id == network.id => {}
            _ => return Err(NetworkError::NotFound(network.name.clone())),
        }
        self.reclaim_stale_leases(network)?;
        let leases = self.leases(network)?;
        let taken = |ip: Ipv4Addr| leases.iter().find(|lease| lease.ip == ip);
        let ip = match requested {
            Some(ip) => {
                if !network.subnet.contains(ip)
                    || ip == network.gateway
                    || ip == network.subnet.network()
                    || ip == network.subnet.broadcast()
                {
                    return Err(NetworkError::AddressOutside {
                        ip,
                        network: network.name.clone(),
                        subnet: network.subnet,
                        gateway: network.gateway,
                    });
                }
                if let Some(lease) = taken(ip) {
                    return Err(NetworkError::AddressInUse {
                        ip,
                        network: network.name.clone(),
                        container: self.container_name(&lease.container),
                    });
                }
                ip
            }
            None => (1..=network.subnet.host_count())
                .filter_map(|n| network.subnet.host(n))
                .find(|&ip| ip != network.gateway && taken(ip).is_none())
                .ok_or_else(|| NetworkError::Full(network.name.clone()))?,
        };
        let dir = network.leases_dir();
        let temporary = dir.join(format!(".{container}"));
        std::fs::write(&temporary, container).map_err(io("write", &temporary))?;
        let lease = dir.join(ip.to_string());
        let linked = std::fs::hard_link(&temporary, &lease).map_err(io("create", &lease));
        let _ = std::fs::remove_file(&temporary);
        linked?;
        Ok(ip)
    }

    /// Frees `container`'s lease of `ip` on the network `name` (a lease someone else holds
    /// by now is left alone).
    pub fn release(&self, name: &str, ip: Ipv4Addr, container: &str) -> Result<(), NetworkError> {
        let network = match self.get(name) {
            Err(NetworkError::NotFound(_)) => return Ok(()),
            other => other?,
        };
        let _lock = network.lock()?;
        let lease = network.leases_dir().join(ip.to_string());
        if std::fs::read_to_string(&lease).is_ok_and(|holder| holder.trim() == container) {
            std::fs::remove_file(&lease).map_err(io("remove", &lease))?;
        }
        Ok(())
    }

    fn container_gone(&self, id: &str) -> bool {
        !crate::container::is_id(id) || !self.root.join("containers").join(id).exists()
    }
}

fn older_than(path: &Path, age: Duration) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().unwrap_or_default() > age)
}
