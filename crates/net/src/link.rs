//! Bridges, addresses and link state over netlink (rtnetlink, on tokio). Every call acts on
//! the network namespace the [`Netlink`] was opened in, which is how tests keep off the
//! host's links. Operations are idempotent, so two commands racing on one network (or a
//! command repeating a half-done one) end in the same state.

use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use nix::errno::Errno;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteType};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, RouteMessageBuilder};

use crate::subnet::Subnet;
use crate::tap::MAX_NAME_LEN;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot open a netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("netlink needs a tokio runtime to run its connection on")]
    NoRuntime,
    #[error("interface name {0:?} is empty, longer than 15 bytes or not plain ASCII")]
    BadName(String),
    /// The kernel refused: `action` names the step and the link.
    #[error("cannot {action}: {}{}", errno.desc(), permission_hint(*errno))]
    Kernel { action: String, errno: Errno },
    /// The request never got a kernel answer (the connection task is gone, or the reply
    /// did not parse).
    #[error("cannot {action}")]
    Netlink {
        action: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("no link named {0}")]
    NoSuchLink(String),
    #[error("{0} exists and is not a bridge")]
    NotABridge(String),
}

fn permission_hint(errno: Errno) -> &'static str {
    match errno {
        Errno::EPERM | Errno::EACCES => " (vessel needs root, CAP_NET_ADMIN)",
        _ => "",
    }
}

/// A netlink socket bound to one network namespace.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a netlink socket in the calling thread's network namespace; spawns the
    /// connection task on the current tokio runtime.
    pub async fn connect() -> Result<Netlink, LinkError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| LinkError::NoRuntime)?;
        let (connection, handle, _) = rtnetlink::new_connection().map_err(LinkError::Socket)?;
        runtime.spawn(connection);
        Ok(Netlink { handle })
    }

    /// Creates the bridge `name` if missing, gives it `gateway/prefix_len` if it lacks it,
    /// sets it up. Idempotent; safe when two processes race (EEXIST is fine).
    ///
    /// A new bridge gets a fixed MAC, `02:76` and the gateway's four bytes (containers get
    /// `02:76` and their own address, so it never clashes): without one, the bridge takes
    /// the lowest MAC of its ports, and the gateway's MAC would change under the guests'
    /// ARP caches as containers come and go.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        gateway: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), LinkError> {
        check_name(name)?;
        let [a, b, c, d] = gateway.octets();
        let bridge = LinkBridge::new(name).address(vec![0x02, 0x76, a, b, c, d]).build();
        if let Err(err) = self.handle.link().add(bridge).execute().await {
            if errno(&err) != Some(Errno::EEXIST) {
                return Err(error(format!("create bridge {name}"), err));
            }
        }
        let link = self.find(name).await?.ok_or_else(|| LinkError::NoSuchLink(name.into()))?;
        if !is_bridge(&link) {
            return Err(LinkError::NotABridge(name.into()));
        }
        let index = link.header.index;
        if !self.has_address(index, gateway, prefix_len).await? {
            let add = self.handle.address().add(index, IpAddr::V4(gateway), prefix_len);
            if let Err(err) = add.execute().await {
                if errno(&err) != Some(Errno::EEXIST) {
                    let action = format!("add address {gateway}/{prefix_len} to bridge {name}");
                    return Err(error(action, err));
                }
            }
        }
        if !link.header.flags.contains(LinkFlags::Up) {
            let up = LinkUnspec::new_with_index(index).up().build();
            let set = self.handle.link().set(up).execute().await;
            set.map_err(|err| error(format!("bring up bridge {name}"), err))?;
        }
        Ok(())
    }

    /// Deletes a link; Ok(false) if it did not exist.
    pub async fn delete_link(&self, name: &str) -> Result<bool, LinkError> {
        check_name(name)?;
        let Some(link) = self.find(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.header.index).execute().await {
            Ok(()) => Ok(true),
            Err(err) if errno(&err) == Some(Errno::ENODEV) => Ok(false),
            Err(err) => Err(error(format!("delete link {name}"), err)),
        }
    }

    /// Puts `link` on `bridge` and sets it up.
    pub async fn attach_to_bridge(&self, link: &str, bridge: &str) -> Result<(), LinkError> {
        check_name(link)?;
        check_name(bridge)?;
        let port = self.find(link).await?.ok_or_else(|| LinkError::NoSuchLink(link.into()))?;
        let master =
            self.find(bridge).await?.ok_or_else(|| LinkError::NoSuchLink(bridge.into()))?;
        if !is_bridge(&master) {
            return Err(LinkError::NotABridge(bridge.into()));
        }
        let message =
            LinkUnspec::new_with_index(port.header.index).controller(master.header.index).up();
        let set = self.handle.link().set(message.build()).execute().await;
        set.map_err(|err| error(format!("attach {link} to bridge {bridge}"), err))
    }

    /// Names of the links whose master is `bridge` (empty if the bridge is absent).
    pub async fn bridge_ports(&self, bridge: &str) -> Result<Vec<String>, LinkError> {
        check_name(bridge)?;
        let Some(master) = self.find(bridge).await? else {
            return Ok(Vec::new());
        };
        let master = LinkAttribute::Controller(master.header.index);
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|err| error(format!("list the ports of bridge {bridge}"), err))?;
        Ok(links
            .iter()
            .filter(|link| link.attributes.contains(&master))
            .filter_map(|link| {
                link.attributes.iter().find_map(|attribute| match attribute {
                    LinkAttribute::IfName(name) => Some(name.clone()),
                    _ => None,
                })
            })
            .collect())
    }

    pub async fn link_exists(&self, name: &str) -> Result<bool, LinkError> {
        check_name(name)?;
        Ok(self.find(name).await?.is_some())
    }

    /// The IPv4 networks the host already uses: the subnet of every IPv4 address and the
    /// destination of every IPv4 route except the default route, for overlap checks when
    /// picking a subnet. Prefixes a [`Subnet`] cannot hold come back as subnets that
    /// overlap exactly the same networks (a /32 as its /30, a /4 as its sixteen /8s).
    pub async fn host_subnets(&self) -> Result<Vec<Subnet>, LinkError> {
        let mut used = Vec::new();
        let mut addresses = self.handle.address().get();
        addresses.message_mut().header.family = AddressFamily::Inet;
        let addresses: Vec<_> = addresses
            .execute()
            .try_collect()
            .await
            .map_err(|err| error("list the host's addresses".into(), err))?;
        for message in &addresses {
            for attribute in &message.attributes {
                if let AddressAttribute::Address(IpAddr::V4(address)) = attribute {
                    used.extend(Subnet::covering(*address, message.header.prefix_len));
                }
            }
        }
        let routes: Vec<_> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|err| error("list the host's routes".into(), err))?;
        for route in &routes {
            let len = route.header.destination_prefix_length;
            // Local and broadcast routes repeat the addresses above, one /32 at a time.
            let routed = matches!(
                route.header.kind,
                RouteType::Unicast
                    | RouteType::BlackHole
                    | RouteType::Unreachable
                    | RouteType::Prohibit
            );
            if !routed || len == 0 {
                continue;
            }
            for attribute in &route.attributes {
                if let RouteAttribute::Destination(RouteAddress::Inet(destination)) = attribute {
                    used.extend(Subnet::covering(*destination, len));
                }
            }
        }
        used.sort();
        used.dedup();
        Ok(used)
    }

    /// The link called `name`, or None.
    async fn find(&self, name: &str) -> Result<Option<LinkMessage>, LinkError> {
        let mut reply = self.handle.link().get().match_name(name).execute();
        match reply.try_next().await {
            Ok(link) => Ok(link),
            Err(err) if errno(&err) == Some(Errno::ENODEV) => Ok(None),
            Err(err) => Err(error(format!("look up link {name}"), err)),
        }
    }

    async fn has_address(
        &self,
        index: u32,
        address: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<bool, LinkError> {
        let mut request = self.handle.address().get().set_link_index_filter(index);
        request.message_mut().header.family = AddressFamily::Inet;
        let addresses: Vec<_> = request
            .execute()
            .try_collect()
            .await
            .map_err(|err| error(format!("list the addresses of link {index}"), err))?;
        let wanted = AddressAttribute::Local(IpAddr::V4(address));
        Ok(addresses.iter().any(|message| {
            message.header.prefix_len == prefix_len && message.attributes.contains(&wanted)
        }))
    }
}

fn check_name(name: &str) -> Result<(), LinkError> {
    let plain = name.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
    if name.is_empty() || name.len() > MAX_NAME_LEN || !plain {
        return Err(LinkError::BadName(name.into()));
    }
    Ok(())
}

fn is_bridge(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|attribute| match attribute {
        LinkAttribute::LinkInfo(infos) => infos.contains(&LinkInfo::Kind(InfoKind::Bridge)),
        _ => false,
    })
}

/// The errno of a kernel refusal.
fn errno(err: &rtnetlink::Error) -> Option<Errno> {
    match err {
        rtnetlink::Error::NetlinkError(message) => {
            Some(Errno::from_raw(message.raw_code().saturating_abs()))
        }
        _ => None,
    }
}

fn error(action: String, err: rtnetlink::Error) -> LinkError {
    match errno(&err) {
        Some(errno) => LinkError::Kernel { action, errno },
        None => LinkError::Netlink { action, source: err },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_errors_name_the_step_and_the_fix() {
        let err =
            LinkError::Kernel { action: "create bridge vs-1234abcd".into(), errno: Errno::EPERM };
        assert_eq!(
            err.to_string(),
            "cannot create bridge vs-1234abcd: Operation not permitted (vessel needs root, CAP_NET_ADMIN)"
        );
        let err = LinkError::Kernel { action: "delete link vt-0".into(), errno: Errno::EBUSY };
        assert_eq!(err.to_string(), "cannot delete link vt-0: Device or resource busy");
    }

    #[test]
    fn names_the_kernel_would_refuse_are_refused_first() {
        for name in ["", "vs-much-too-long-name", "a/b", "a b"] {
            assert!(matches!(check_name(name), Err(LinkError::BadName(_))), "{name:?}");
        }
        assert!(check_name("vs-1234abcd").is_ok());
    }
}
