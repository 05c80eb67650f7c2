//! IPv4 subnets for container networks, and the pool the default ones are carved from.
//! Parsing is strict (no host bits, a prefix from /8 to /30) because a subnet comes from
//! the user once and is then recorded: a typo should be refused, not silently masked.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// The pool default networks come from: clear of docker, podman, kubernetes, libvirt and
/// the usual home-router ranges (docs/networking.md §4).
pub const DEFAULT_POOL: Subnet = Subnet { network: u32::from_be_bytes([10, 213, 0, 0]), len: 16 };

/// Smallest prefix length accepted: a /8 is already 16 million addresses.
pub const MIN_PREFIX_LEN: u8 = 8;
/// Largest prefix length accepted: a /30 is the smallest network with a gateway and one
/// container.
pub const MAX_PREFIX_LEN: u8 = 30;

/// An IPv4 network, e.g. `10.213.0.0/24`: the network address has no host bits set and the
/// prefix is from /8 to /30.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subnet {
    network: u32,
    len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubnetError {
    #[error("invalid subnet {0:?} (expected an IPv4 network such as 10.213.0.0/24)")]
    Syntax(String),
    #[error("prefix length /{len} of {text} is out of range (use /8 to /30)")]
    PrefixLen { text: String, len: u8 },
    #[error("{given} has host bits set; did you mean {suggested}?")]
    HostBits { given: String, suggested: Subnet },
}

impl Subnet {
    /// The network `network/prefix_len`, under the same rules as parsing.
    pub fn new(network: Ipv4Addr, prefix_len: u8) -> Result<Subnet, SubnetError> {
        if !(MIN_PREFIX_LEN..=MAX_PREFIX_LEN).contains(&prefix_len) {
            return Err(SubnetError::PrefixLen {
                text: format!("{network}/{prefix_len}"),
                len: prefix_len,
            });
        }
        let bits = u32::from(network);
        let masked = Subnet { network: bits & mask(prefix_len), len: prefix_len };
        if masked.network != bits {
            return Err(SubnetError::HostBits {
                given: format!("{network}/{prefix_len}"),
                suggested: masked,
            });
        }
        Ok(masked)
    }

    /// The subnets that together cover exactly `address/prefix_len` (any length 1 to 32),
    /// for overlap checks against what the host already routes: a longer prefix widens to
    /// its /30, which overlaps the same subnets since aligned networks either nest or are
    /// disjoint; a shorter one splits into its /8s.
    pub(crate) fn covering(address: Ipv4Addr, prefix_len: u8) -> Vec<Subnet> {
        let len = prefix_len.clamp(1, 32);
        let network = u32::from(address) & mask(len);
        if len >= MIN_PREFIX_LEN {
            let len = len.min(MAX_PREFIX_LEN);
            return vec![Subnet { network: network & mask(len), len }];
        }
        let count = 1u32 << (MIN_PREFIX_LEN - len);
        (0..count).map(|i| Subnet { network: network + (i << 24), len: MIN_PREFIX_LEN }).collect()
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network)
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask(self.len))
    }

    pub fn contains(&self, address: Ipv4Addr) -> bool {
        u32::from(address) & mask(self.len) == self.network
    }

    /// Whether the two share any address (one then contains the other).
    pub fn overlaps(&self, other: &Subnet) -> bool {
        let len = self.len.min(other.len);
        self.network & mask(len) == other.network & mask(len)
    }

    /// The first host address, which the bridge holds.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 1)
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network | !mask(self.len))
    }

    /// The `n`th address of the network if it is a usable host (not the network or
    /// broadcast address): `host(1)` is the gateway, containers start at `host(2)`.
    pub fn host(&self, n: u32) -> Option<Ipv4Addr> {
        (n >= 1 && n <= self.host_count()).then(|| Ipv4Addr::from(self.network + n))
    }

    /// Usable host addresses, the gateway included.
    pub fn host_count(&self) -> u32 {
        (!mask(self.len)) - 1
    }
}

/// The subnets of length `prefix_len` inside `pool`, in address order; none if
/// `prefix_len` is shorter than the pool's or beyond /30.
pub fn carve(pool: Subnet, prefix_len: u8) -> impl Iterator<Item = Subnet> {
    let (count, step) = if (pool.len..=MAX_PREFIX_LEN).contains(&prefix_len) {
        (1u32 << (prefix_len - pool.len), 1u32 << (32 - prefix_len))
    } else {
        (0, 0)
    };
    (0..count).map(move |i| Subnet { network: pool.network + i * step, len: prefix_len })
}

fn mask(prefix_len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix_len.min(32))).unwrap_or(0)
}

impl FromStr for Subnet {
    type Err = SubnetError;

    fn from_str(s: &str) -> Result<Subnet, SubnetError> {
        let syntax = || SubnetError::Syntax(s.to_string());
        let (address, len) = s.split_once('/').ok_or_else(syntax)?;
        if len.is_empty() || len.len() > 2 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let address: Ipv4Addr = address.parse().map_err(|_| syntax())?;
        Subnet::new(address, len.parse().map_err(|_| syntax())?)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.len)
    }
}

impl fmt::Debug for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl serde::Serialize for Subnet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Subnet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Subnet, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::IntoDeserializer;
    use serde::Deserialize;

    fn net(s: &str) -> Subnet {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_displays() {
        let s = net("10.213.0.0/24");
        assert_eq!(s.network(), Ipv4Addr::new(10, 213, 0, 0));
        assert_eq!(s.prefix_len(), 24);
        assert_eq!(s.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(s.to_string(), "10.213.0.0/24");
        assert_eq!(format!("{s:?}"), "10.213.0.0/24");
        assert_eq!(net("10.0.0.0/8").netmask(), Ipv4Addr::new(255, 0, 0, 0));
        assert_eq!(net("192.168.7.4/30").netmask(), Ipv4Addr::new(255, 255, 255, 252));
    }

    #[test]
    fn host_bits_are_refused_with_the_network_meant() {
        let err = "10.213.0.5/24".parse::<Subnet>().unwrap_err();
        assert_eq!(err.to_string(), "10.213.0.5/24 has host bits set; did you mean 10.213.0.0/24?");
    }

    #[test]
    fn prefixes_outside_8_to_30_are_refused() {
        for text in ["10.0.0.0/31", "10.0.0.0/32", "10.0.0.0/7", "0.0.0.0/0"] {
            let err = text.parse::<Subnet>().unwrap_err();
            assert!(matches!(err, SubnetError::PrefixLen { .. }), "{text}: {err}");
            assert!(err.to_string().contains("use /8 to /30"), "{err}");
        }
    }

    #[test]
    fn malformed_text_is_refused() {
        for text in [
            "",
            "10.213.0.0",
            "10.213.0.0/",
            "10.213.0/24",
            "10.213.0.0/+24",
            "10.213.0.0/024",
            "10.213.0.0/24/",
            " 10.213.0.0/24",
            "fd00::/64",
            "010.213.0.0/24",
            "10.213.0.0/999",
        ] {
            let err = text.parse::<Subnet>().unwrap_err();
            assert!(matches!(err, SubnetError::Syntax(_)), "{text:?}: {err}");
        }
    }

    #[test]
    fn addresses_of_a_24() {
        let s = net("10.213.3.0/24");
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 213, 3, 1));
        assert_eq!(s.broadcast(), Ipv4Addr::new(10, 213, 3, 255));
        assert_eq!(s.host_count(), 254);
        assert_eq!(s.host(0), None);
        assert_eq!(s.host(1), Some(s.gateway()));
        assert_eq!(s.host(2), Some(Ipv4Addr::new(10, 213, 3, 2)));
        assert_eq!(s.host(254), Some(Ipv4Addr::new(10, 213, 3, 254)));
        assert_eq!(s.host(255), None);
        assert_eq!(s.host(u32::MAX), None);
    }

    #[test]
    fn addresses_of_the_extremes() {
        let small = net("10.0.0.4/30");
        assert_eq!(small.host_count(), 2);
        assert_eq!(small.host(2), Some(Ipv4Addr::new(10, 0, 0, 6)));
        assert_eq!(small.host(3), None);
        assert_eq!(small.broadcast(), Ipv4Addr::new(10, 0, 0, 7));
        let big = net("10.0.0.0/8");
        assert_eq!(big.host_count(), (1 << 24) - 2);
        assert_eq!(big.broadcast(), Ipv4Addr::new(10, 255, 255, 255));
        let top = net("255.255.255.252/30");
        assert_eq!(top.broadcast(), Ipv4Addr::BROADCAST);
        assert_eq!(top.host(2), Some(Ipv4Addr::new(255, 255, 255, 254)));
    }

    #[test]
    fn contains_and_overlaps() {
        let s = net("10.213.0.0/24");
        assert!(s.contains(Ipv4Addr::new(10, 213, 0, 0)));
        assert!(s.contains(Ipv4Addr::new(10, 213, 0, 255)));
        assert!(!s.contains(Ipv4Addr::new(10, 213, 1, 0)));
        assert!(s.overlaps(&s));
        assert!(s.overlaps(&DEFAULT_POOL) && DEFAULT_POOL.overlaps(&s));
        assert!(!s.overlaps(&net("10.213.1.0/24")));
        assert!(net("10.0.0.0/8").overlaps(&net("10.255.255.252/30")));
        assert!(!net("10.0.0.0/8").overlaps(&net("11.0.0.0/30")));
    }

    #[test]
    fn carves_the_pool_in_order() {
        assert_eq!(DEFAULT_POOL.to_string(), "10.213.0.0/16");
        let all: Vec<Subnet> = carve(DEFAULT_POOL, 24).collect();
        assert_eq!(all.len(), 256);
        assert_eq!(all[0], net("10.213.0.0/24"));
        assert_eq!(all[1], net("10.213.1.0/24"));
        assert_eq!(all[255], net("10.213.255.0/24"));
        assert_eq!(carve(DEFAULT_POOL, 16).collect::<Vec<_>>(), vec![DEFAULT_POOL]);
        assert_eq!(carve(net("10.0.0.0/29"), 30).count(), 2);
        assert_eq!(carve(DEFAULT_POOL, 8).count(), 0);
        assert_eq!(carve(DEFAULT_POOL, 31).count(), 0);
        assert_eq!(carve(net("255.255.255.248/29"), 30).last(), Some(net("255.255.255.252/30")));
    }

    #[test]
    fn covering_keeps_overlaps_exact() {
        let host = Subnet::covering(Ipv4Addr::new(10, 213, 0, 7), 32);
        assert_eq!(host, vec![net("10.213.0.4/30")]);
        assert!(host[0].overlaps(&net("10.213.0.0/24")));
        assert!(!host[0].overlaps(&net("10.213.0.0/30")));
        assert_eq!(Subnet::covering(Ipv4Addr::new(10, 213, 0, 9), 24), vec![net("10.213.0.0/24")]);
        let wide = Subnet::covering(Ipv4Addr::new(128, 0, 0, 0), 1);
        assert_eq!(wide.len(), 128);
        assert_eq!(wide[0], net("128.0.0.0/8"));
        assert_eq!(wide[127], net("255.0.0.0/8"));
        assert_eq!(Subnet::covering(Ipv4Addr::new(10, 0, 0, 0), 7).len(), 2);
    }

    #[test]
    fn serde_uses_the_text_form() {
        let text: serde::de::value::StrDeserializer<serde::de::value::Error> =
            "10.213.0.0/24".into_deserializer();
        assert_eq!(Subnet::deserialize(text).unwrap(), net("10.213.0.0/24"));
        let bad: serde::de::value::StrDeserializer<serde::de::value::Error> =
            "10.213.0.1/24".into_deserializer();
        assert!(Subnet::deserialize(bad).unwrap_err().to_string().contains("host bits"));
    }
}
