//! The guest's network, which its containers share (their first process does not unshare
//! the network namespace): `lo` always, and `eth0` with its address and default route when
//! the host gave the VM a NIC. Set with the classic interface ioctls on an `AF_INET`
//! datagram socket: IPv4 only, no netlink plumbing in PID 1, no dependency beyond nix.

use nix::errno::Errno;
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use vessel_proto::agent::NetworkConfig;

/// The guest's only NIC: without udev the kernel's first name for it.
const ETH0: &str = "eth0";
const LO: &str = "lo";

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("invalid network configuration: {0}")]
    Invalid(String),
    #[error("cannot open a socket to configure the network")]
    Socket(#[source] Errno),
    /// `step` names the interface and what was being set: "set eth0's address 10.0.0.2/24".
    #[error("cannot {step}")]
    Interface {
        step: String,
        #[source]
        source: Errno,
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

nix::ioctl_read_bad!(get_flags, libc::SIOCGIFFLAGS, libc::ifreq);
nix::ioctl_write_ptr_bad!(set_flags, libc::SIOCSIFFLAGS, libc::ifreq);
nix::ioctl_write_ptr_bad!(set_address, libc::SIOCSIFADDR, libc::ifreq);
nix::ioctl_write_ptr_bad!(set_netmask, libc::SIOCSIFNETMASK, libc::ifreq);
nix::ioctl_write_ptr_bad!(set_mtu, libc::SIOCSIFMTU, libc::ifreq);
nix::ioctl_write_ptr_bad!(add_route, libc::SIOCADDRT, libc::rtentry);

/// Brings `lo` up, then configures `eth0` as `config` says (nothing more without one, or
/// with no address). Safe to repeat for a second container of the same guest.
pub fn configure(config: Option<&NetworkConfig>) -> Result<(), NetworkError> {
    let plan = config.map(Plan::parse).transpose()?.flatten();
    let socket = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
        .map_err(NetworkError::Socket)?;
    bring_up(&socket, LO)?;
    let Some(plan) = plan else { return Ok(()) };
    let cidr = format!("{}/{}", plan.address, plan.prefix_len);
    // SIOCSIFADDR guesses a classful netmask; the real one follows at once.
    let mut request = ifreq(ETH0);
    request.ifr_ifru.ifru_addr = sockaddr(plan.address);
    // SAFETY: the socket is open and `request` is a valid ifreq naming eth0 with an
    // AF_INET address, as SIOCSIFADDR reads it; it outlives the call.
    let result = unsafe { set_address(socket.as_raw_fd(), &request) };
    result.map_err(step(format!("set {ETH0}'s address {cidr}")))?;
    request.ifr_ifru.ifru_netmask = sockaddr(netmask(plan.prefix_len));
    // SAFETY: as above, with the netmask SIOCSIFNETMASK reads.
    let result = unsafe { set_netmask(socket.as_raw_fd(), &request) };
    result.map_err(step(format!("set {ETH0}'s netmask for {cidr}")))?;
    if let Some(mtu) = plan.mtu {
        let mut request = ifreq(ETH0);
        request.ifr_ifru.ifru_mtu = mtu;
        // SAFETY: a valid ifreq naming eth0 with the MTU SIOCSIFMTU reads.
        let result = unsafe { set_mtu(socket.as_raw_fd(), &request) };
        result.map_err(step(format!("set {ETH0}'s MTU to {mtu}")))?;
    }
    bring_up(&socket, ETH0)?;
    if let Some(gateway) = plan.gateway {
        default_route(&socket, gateway)?;
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
    mtu: Option<libc::c_int>,
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
        let mtu = match config.mtu {
            0 => None,
            mtu => Some(
                libc::c_int::try_from(mtu)
                    .map_err(|_| NetworkError::Invalid(format!("MTU {mtu} is too large")))?,
            ),
        };
        Ok(Some(Plan { address, prefix_len, gateway, mtu }))
    }
}

/// Sets IFF_UP, keeping the interface's other flags.
fn bring_up(socket: &OwnedFd, name: &str) -> Result<(), NetworkError> {
    let mut request = ifreq(name);
    // SAFETY: a valid ifreq naming the interface; SIOCGIFFLAGS writes its flags into the
    // union, which `request` owns for the call.
    let result = unsafe { get_flags(socket.as_raw_fd(), &mut request) };
    result.map_err(step(format!("read {name}'s flags")))?;
    // SAFETY: SIOCGIFFLAGS just filled the flags member of the union.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    request.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: the same ifreq, with the flags SIOCSIFFLAGS reads.
    let result = unsafe { set_flags(socket.as_raw_fd(), &request) };
    result.map(drop).map_err(step(format!("bring {name} up")))
}

/// `default via gateway dev eth0`; one that is already there (a second container) is fine.
fn default_route(socket: &OwnedFd, gateway: Ipv4Addr) -> Result<(), NetworkError> {
    let mut device = *b"eth0\0";
    // SAFETY: rtentry is plain data (integers, sockaddrs and a pointer), for which all
    // zeroes is valid: the null `rt_dev` is replaced below.
    let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
    route.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
    route.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
    route.rt_gateway = sockaddr(gateway);
    route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    route.rt_dev = device.as_mut_ptr().cast();
    // SAFETY: `route` is a valid rtentry as SIOCADDRT reads it; `rt_dev` points at a
    // NUL-terminated name that outlives the call.
    match unsafe { add_route(socket.as_raw_fd(), &route) } {
        Ok(_) | Err(Errno::EEXIST) => Ok(()),
        Err(source) => Err(NetworkError::Interface {
            step: format!("add the default route via {gateway} on {ETH0}"),
            source,
        }),
    }
}

fn step(step: String) -> impl FnOnce(Errno) -> NetworkError {
    move |source| NetworkError::Interface { step, source }
}

/// An ifreq naming `name` (ASCII, shorter than IFNAMSIZ: only our constants), the rest zero.
fn ifreq(name: &str) -> libc::ifreq {
    debug_assert!(name.len() < libc::IFNAMSIZ);
    // SAFETY: ifreq is a name array and a union of plain data (sockaddrs, integers, a
    // pointer nobody reads here): all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    request
}

/// `address` as the generic sockaddr the ioctls take: a sockaddr_in (family, port 0, the
/// address in network order), written field by field instead of transmuted.
fn sockaddr(address: Ipv4Addr) -> libc::sockaddr {
    let mut generic =
        libc::sockaddr { sa_family: libc::AF_INET as libc::sa_family_t, sa_data: [0; 14] };
    for (slot, byte) in generic.sa_data[2..6].iter_mut().zip(address.octets()) {
        *slot = byte as libc::c_char;
    }
    generic
}

fn netmask(prefix_len: u8) -> Ipv4Addr {
    let bits = u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0);
    Ipv4Addr::from(bits)
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
    fn sockaddrs_are_sockaddr_in() {
        let generic = sockaddr(Ipv4Addr::new(10, 213, 0, 2));
        assert_eq!(generic.sa_family, libc::AF_INET as libc::sa_family_t);
        let bytes: Vec<u8> = generic.sa_data[..6].iter().map(|b| *b as u8).collect();
        assert_eq!(bytes, [0, 0, 10, 213, 0, 2]);
        assert_eq!(std::mem::size_of::<libc::sockaddr>(), std::mem::size_of::<libc::sockaddr_in>());
    }

    #[test]
    fn plans_are_checked_before_anything_changes() {
        assert_eq!(Plan::parse(&NetworkConfig::default()).unwrap(), None);
        let plan = Plan::parse(&config("10.213.0.2", 24, "10.213.0.1")).unwrap().unwrap();
        assert_eq!(plan.gateway, Some(Ipv4Addr::new(10, 213, 0, 1)));
        let internal = Plan::parse(&config("10.213.0.2", 24, "")).unwrap().unwrap();
        assert_eq!(internal.gateway, None);
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
        ] {
            let err = Plan::parse(&bad).unwrap_err().to_string();
            assert_eq!(err, format!("invalid network configuration: {message}"));
        }
    }
}
