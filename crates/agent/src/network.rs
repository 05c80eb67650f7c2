//! The guest's network, which its containers share (their first process does not unshare
//! the network namespace): `lo` always, and `eth0` with its address and default route when
//! the host gave the VM a NIC. IPv4 only.
//!
//! Set over netlink (issue #6), the kernel's own interface for links, addresses and routes:
//! an address goes in with its prefix in one request, every request is acknowledged with
//! its own error code, and no ioctl structs (nor `unsafe`) are needed. The messages are
//! `netlink-packet-route`'s, on a plain blocking `NETLINK_ROUTE` socket from `netlink-sys`:
//! a handful of requests from PID 1 needs no async netlink stack.

use netlink_packet_core::{
    Emitable, ErrorBuffer, NetlinkBuffer, NetlinkHeader, NLMSG_ERROR, NLM_F_ACK, NLM_F_CREATE,
    NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressHeader, AddressMessage};
use netlink_packet_route::link::{
    LinkAttribute, LinkExtentMask, LinkFlags, LinkHeader, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::AddressFamily;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use vessel_proto::agent::NetworkConfig;

/// The guest's only NIC: without udev the kernel's first name for it.
const ETH0: &str = "eth0";
const LO: &str = "lo";
/// Room for any answer to our requests: a link without its statistics is about 1 KiB.
const RECEIVE_BUFFER: usize = 16 * 1024;
/// `struct nlmsghdr`: length, type, flags, sequence number, port.
const NETLINK_HEADER_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("invalid network configuration: {0}")]
    Invalid(String),
    #[error("cannot open a netlink socket to configure the network")]
    Socket(#[source] io::Error),
    /// `step` names the interface and what was being set: "set eth0's address 10.0.0.2/24".
    #[error("cannot {step}")]
    Interface {
        step: String,
        #[source]
        source: io::Error,
    },
}

impl From<NetworkError> for tonic::Status {
    fn from(err: NetworkError) -> Self {
        let message = crate::log::error_chain(&err);
        match err {
            NetworkError::Invalid(_) => tonic::Status::invalid_argument(message),
            _ => tonic::Status::internal(message),
        }
    }
}

/// Brings `lo` up, then configures `eth0` as `config` says (nothing more without one, or
/// with no address). Safe to repeat for a second container of the same guest.
pub fn configure(config: Option<&NetworkConfig>) -> Result<(), NetworkError> {
    let plan = config.map(Plan::parse).transpose()?.flatten();
    let mut netlink = Netlink::open()?;
    let lo = netlink.index(LO)?;
    netlink.bring_up(LO, lo)?;
    let Some(plan) = plan else { return Ok(()) };
    let eth0 = netlink.index(ETH0)?;
    let cidr = format!("{}/{}", plan.address, plan.prefix_len);
    // REPLACE: a second container's identical request updates the address in place.
    netlink
        .request(libc::RTM_NEWADDR, &address(eth0, &plan), NLM_F_CREATE | NLM_F_REPLACE)
        .map_err(step(format!("set {ETH0}'s address {cidr}")))?;
    if let Some(mac) = plan.mac {
        // Before eth0 is up: a restored VM's NIC starts with its template's address.
        let mut link = link(eth0);
        link.attributes.push(LinkAttribute::Address(mac.to_vec()));
        netlink
            .request(libc::RTM_SETLINK, &link, 0)
            .map_err(step(format!("set {ETH0}'s MAC address")))?;
    }
    if let Some(mtu) = plan.mtu {
        let mut link = link(eth0);
        link.attributes.push(LinkAttribute::Mtu(mtu));
        netlink
            .request(libc::RTM_SETLINK, &link, 0)
            .map_err(step(format!("set {ETH0}'s MTU to {mtu}")))?;
    }
    netlink.bring_up(ETH0, eth0)?;
    if let Some(gateway) = plan.gateway {
        let route = default_route(eth0, gateway);
        match netlink.request(libc::RTM_NEWROUTE, &route, NLM_F_CREATE | NLM_F_EXCL) {
            // Already there: a second container of this guest.
            Ok(_) => {}
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {}
            Err(source) => {
                let step = format!("add the default route via {gateway} on {ETH0}");
                return Err(NetworkError::Interface { step, source });
            }
        }
    }
    Ok(())
}

/// What a [`NetworkConfig`] asks of eth0, checked before anything is changed.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    address: Ipv4Addr,
    prefix_len: u8,
    gateway: Option<Ipv4Addr>,
    /// None: the kernel's default.
    mtu: Option<u32>,
    /// None: the NIC's own.
    mac: Option<[u8; 6]>,
}

impl Plan {
    /// None: no address, so no eth0 to configure (`--network none`).
    fn parse(config: &NetworkConfig) -> Result<Option<Plan>, NetworkError> {
        if config.address.is_empty() {
            return Ok(None);
        }
        let parse = |what: &str, text: &str| {
            text.parse::<Ipv4Addr>()
                .map_err(|_| NetworkError::Invalid(format!("{what} {text:?} is no IPv4 address")))
        };
        let address = parse("address", &config.address)?;
        let prefix_len = u8::try_from(config.prefix_len)
            .ok()
            .filter(|len| (1..=32).contains(len))
            .ok_or_else(|| {
                NetworkError::Invalid(format!("prefix length {} is not 1 to 32", config.prefix_len))
            })?;
        let gateway = match config.gateway.as_str() {
            "" => None,
            text => Some(parse("gateway", text)?),
        };
        // The kernel keeps a device's MTU in an int.
        let mtu = match config.mtu {
            0 => None,
            mtu if i32::try_from(mtu).is_err() => {
                return Err(NetworkError::Invalid(format!("MTU {mtu} is too large")))
            }
            mtu => Some(mtu),
        };
        let mac = match config.mac.len() {
            0 => None,
            _ => Some(<[u8; 6]>::try_from(config.mac.as_slice()).map_err(|_| {
                NetworkError::Invalid(format!("MAC address of {} bytes", config.mac.len()))
            })?),
        };
        Ok(Some(Plan { address, prefix_len, gateway, mtu, mac }))
    }
}

/// A blocking `NETLINK_ROUTE` socket that sends one request at a time and waits for its
/// acknowledgement.
struct Netlink {
    socket: Socket,
    sequence: u32,
}

impl Netlink {
    fn open() -> Result<Netlink, NetworkError> {
        let socket = Socket::new(NETLINK_ROUTE).map_err(NetworkError::Socket)?;
        Ok(Netlink { socket, sequence: 0 })
    }

    /// The index of the link called `name` (`RTM_GETLINK` by name).
    fn index(&mut self, name: &str) -> Result<u32, NetworkError> {
        let mut link = LinkMessage::default();
        link.attributes = vec![
            LinkAttribute::IfName(name.to_string()),
            LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]),
        ];
        let found = self.request(libc::RTM_GETLINK, &link, 0).and_then(|replies| {
            let (_, payload) = replies
                .iter()
                .find(|(kind, _)| *kind == libc::RTM_NEWLINK)
                .ok_or_else(|| invalid("no link in the kernel's answer"))?;
            Ok(LinkHeader::parse(payload).map_err(invalid)?.index)
        });
        found.map_err(step(format!("find {name}")))
    }

    /// Sets IFF_UP, keeping the link's other flags (only those in the change mask change).
    fn bring_up(&mut self, name: &str, index: u32) -> Result<(), NetworkError> {
        let mut link = link(index);
        link.header.flags = LinkFlags::Up;
        link.header.change_mask = LinkFlags::Up;
        self.request(libc::RTM_SETLINK, &link, 0)
            .map(drop)
            .map_err(step(format!("bring {name} up")))
    }

    /// Sends `message` with `flags`, asking for an acknowledgement, and returns the
    /// kernel's answers before it (type and payload): the error code of the
    /// acknowledgement is the result. Only headers are parsed, which keeps the parsers of
    /// every rtnetlink message out of the binary.
    fn request(
        &mut self,
        kind: u16,
        message: &dyn Emitable,
        flags: u16,
    ) -> io::Result<Vec<(u16, Vec<u8>)>> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.sequence;
        let mut bytes = vec![0; NETLINK_HEADER_LEN + message.buffer_len()];
        header.length = u32::try_from(bytes.len()).map_err(|_| invalid("request too long"))?;
        header.message_type = kind;
        header.emit(&mut bytes[..NETLINK_HEADER_LEN]);
        message.emit(&mut bytes[NETLINK_HEADER_LEN..]);
        self.socket.send_to(&bytes, &SocketAddr::new(0, 0), 0)?;

        let mut replies = Vec::new();
        let mut buffer = Vec::with_capacity(RECEIVE_BUFFER);
        loop {
            buffer.clear();
            // MSG_TRUNC: the datagram's whole length, to tell a truncated one.
            let len = self.socket.recv(&mut buffer, libc::MSG_TRUNC)?;
            if len > buffer.len() {
                return Err(invalid(format!("netlink answer of {len} bytes is too long")));
            }
            // One datagram may hold several messages, each aligned to 4 bytes.
            let mut rest = buffer.as_slice();
            while !rest.is_empty() {
                let reply = NetlinkBuffer::new_checked(rest).map_err(invalid)?;
                let (kind, payload) = (reply.message_type(), reply.payload());
                let ours = reply.sequence_number() == self.sequence;
                rest =
                    rest.get((reply.length() as usize).next_multiple_of(4)..).unwrap_or_default();
                if !ours {
                    continue;
                }
                if kind == NLMSG_ERROR {
                    let ack = ErrorBuffer::new_checked(payload).map_err(invalid)?;
                    return match ack.code() {
                        None => Ok(replies),
                        // A negative errno.
                        Some(code) => {
                            Err(io::Error::from_raw_os_error(code.get().saturating_neg()))
                        }
                    };
                }
                replies.push((kind, payload.to_vec()));
            }
        }
    }
}

/// `RTM_NEWADDR`: the plan's address and prefix on `index`, with the broadcast address the
/// kernel would derive for it (none on /31 and /32 links).
fn address(index: u32, plan: &Plan) -> AddressMessage {
    let mut message = AddressMessage::default();
    message.header = AddressHeader {
        family: AddressFamily::Inet,
        prefix_len: plan.prefix_len,
        index,
        ..Default::default()
    };
    let ip = IpAddr::V4(plan.address);
    message.attributes = vec![AddressAttribute::Local(ip), AddressAttribute::Address(ip)];
    if plan.prefix_len < 31 {
        let broadcast = plan.address | !netmask(plan.prefix_len);
        message.attributes.push(AddressAttribute::Broadcast(broadcast));
    }
    message
}

/// `RTM_NEWROUTE`: `default via gateway dev <index>` in the main table.
fn default_route(index: u32, gateway: Ipv4Addr) -> RouteMessage {
    let mut message = RouteMessage::default();
    message.header = RouteHeader {
        address_family: AddressFamily::Inet,
        table: RouteHeader::RT_TABLE_MAIN,
        protocol: RouteProtocol::Boot,
        scope: RouteScope::Universe,
        kind: RouteType::Unicast,
        ..Default::default()
    };
    message.attributes =
        vec![RouteAttribute::Gateway(RouteAddress::Inet(gateway)), RouteAttribute::Oif(index)];
    message
}

/// A link message for `RTM_SETLINK` on `index`, changing nothing yet.
fn link(index: u32) -> LinkMessage {
    let mut message = LinkMessage::default();
    message.header.index = index;
    message
}

fn netmask(prefix_len: u8) -> Ipv4Addr {
    let bits = u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0);
    Ipv4Addr::from(bits)
}

fn invalid(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn step(step: String) -> impl FnOnce(io::Error) -> NetworkError {
    move |source| NetworkError::Interface { step, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(address: &str, prefix_len: u32, gateway: &str) -> NetworkConfig {
        NetworkConfig {
            address: address.into(),
            prefix_len,
            gateway: gateway.into(),
            ..Default::default()
        }
    }

    #[test]
    fn netmasks_follow_the_prefix() {
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(32), Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(netmask(1), Ipv4Addr::new(128, 0, 0, 0));
        assert_eq!(netmask(20), Ipv4Addr::new(255, 255, 240, 0));
    }

    #[test]
    fn addresses_carry_their_prefix_and_broadcast() {
        let plan = Plan::parse(&config("10.213.0.2", 24, "")).unwrap().unwrap();
        let message = address(7, &plan);
        assert_eq!((message.header.index, message.header.prefix_len), (7, 24));
        assert!(message
            .attributes
            .contains(&AddressAttribute::Broadcast(Ipv4Addr::new(10, 213, 0, 255))));
        let point_to_point = Plan::parse(&config("10.213.0.2", 31, "")).unwrap().unwrap();
        let message = address(7, &point_to_point);
        assert!(!message.attributes.iter().any(|a| matches!(a, AddressAttribute::Broadcast(_))));
    }

    #[test]
    fn the_default_route_is_in_the_main_table() {
        let route = default_route(2, Ipv4Addr::new(10, 213, 0, 1));
        assert_eq!(route.header.destination_prefix_length, 0);
        assert_eq!(route.header.table, 254);
        // The wire form: rtmsg, then RTA_GATEWAY (5) and RTA_OIF (4).
        let mut bytes = vec![0; route.buffer_len()];
        route.emit(&mut bytes);
        assert_eq!(bytes[..12], [2, 0, 0, 0, 254, 3, 0, 1, 0, 0, 0, 0]);
        assert_eq!(bytes[12..20], [8, 0, 5, 0, 10, 213, 0, 1]);
        assert_eq!(bytes[20..28], [8, 0, 4, 0, 2, 0, 0, 0]);
    }

    #[test]
    fn links_are_found_by_name() {
        let mut netlink = Netlink::open().unwrap();
        // Any unprivileged process may look up lo.
        assert_eq!(netlink.index(LO).unwrap(), 1);
        let err = netlink.index("no-such-link0").unwrap_err();
        assert_eq!(
            crate::log::error_chain(&err),
            format!("cannot find no-such-link0: {}", io::Error::from_raw_os_error(libc::ENODEV))
        );
    }

    #[test]
    fn plans_are_checked_before_anything_changes() {
        assert_eq!(Plan::parse(&NetworkConfig::default()).unwrap(), None);
        let plan = Plan::parse(&config("10.213.0.2", 24, "10.213.0.1")).unwrap().unwrap();
        assert_eq!(plan.gateway, Some(Ipv4Addr::new(10, 213, 0, 1)));
        let internal = Plan::parse(&config("10.213.0.2", 24, "")).unwrap().unwrap();
        assert_eq!(internal.gateway, None);
        assert_eq!(internal.mac, None);
        let mac = vec![0x02, 0x76, 0x0a, 0xd5, 0, 2];
        let with_mac = NetworkConfig { mac: mac.clone(), ..config("10.0.0.2", 8, "") };
        assert_eq!(Plan::parse(&with_mac).unwrap().unwrap().mac.map(Vec::from), Some(mac));
        for (bad, message) in [
            (config("10.213.0", 24, ""), "address \"10.213.0\" is no IPv4 address"),
            (config("::1", 24, ""), "address \"::1\" is no IPv4 address"),
            (config("10.0.0.2", 0, ""), "prefix length 0 is not 1 to 32"),
            (config("10.0.0.2", 33, ""), "prefix length 33 is not 1 to 32"),
            (config("10.0.0.2", 8, "x"), "gateway \"x\" is no IPv4 address"),
            (
                NetworkConfig { mtu: u32::MAX, ..config("10.0.0.2", 8, "") },
                "MTU 4294967295 is too large",
            ),
            (
                NetworkConfig { mac: vec![2, 0, 0], ..config("10.0.0.2", 8, "") },
                "MAC address of 3 bytes",
            ),
        ] {
            let err = Plan::parse(&bad).unwrap_err().to_string();
            assert_eq!(err, format!("invalid network configuration: {message}"));
        }
    }
}
