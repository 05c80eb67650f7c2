//! Docker's `-p` syntax for published ports, and the `ExposedPorts` keys of an image.
//! IPv4 only: networks have no IPv6 yet, so an IPv6 host address is refused plainly rather
//! than bound to something that cannot reach the container.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

const PUBLISH_FORM: &str =
    "[ip:][hostPort[-hostEnd]:]containerPort[-containerEnd][/tcp|/udp], e.g. 127.0.0.1:8080:80/tcp";
const EXPOSE_FORM: &str = "port[-end][/tcp|/udp], e.g. 80/tcp";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

impl FromStr for Protocol {
    type Err = Problem;

    fn from_str(text: &str) -> Result<Protocol, Problem> {
        if text.eq_ignore_ascii_case("tcp") {
            Ok(Protocol::Tcp)
        } else if text.eq_ignore_ascii_case("udp") {
            Ok(Protocol::Udp)
        } else {
            Err(Problem::Protocol(text.to_string()))
        }
    }
}

/// One published port: what the supervisor binds on the host and where it relays to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// `0.0.0.0` means every address of the host.
    pub host_ip: Ipv4Addr,
    /// `0` means any free port, chosen by the kernel at bind time.
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("invalid port mapping {spec:?}: {problem} (the form is {PUBLISH_FORM})")]
    Publish { spec: String, problem: Problem },
    #[error("invalid exposed port {spec:?}: {problem} (the form is {EXPOSE_FORM})")]
    Expose { spec: String, problem: Problem },
}

/// What is wrong with a port spec; [`PortError`] adds the spec and the accepted form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("it is empty")]
    Empty,
    #[error("IPv6 is not supported, publish on an IPv4 address")]
    Ipv6,
    #[error("too many ':'")]
    TooManyParts,
    #[error("{0:?} is not an IPv4 address")]
    Address(String),
    #[error("{0:?} is not a port number (1-65535)")]
    Port(String),
    #[error("the container port cannot be 0")]
    ContainerPortZero,
    #[error("port 0 cannot be part of a range")]
    ZeroInRange,
    #[error("range {0:?} ends before it starts")]
    Reversed(String),
    #[error("{host} host ports for {container} container ports (ranges must be the same length)")]
    RangeLengths { host: u32, container: u32 },
    #[error("unknown protocol {0:?} (tcp or udp)")]
    Protocol(String),
}

/// Parses one `-p` value into the mappings it stands for (one per port of a range).
pub fn parse_publish(spec: &str) -> Result<Vec<PortMapping>, PortError> {
    parse_publish_parts(spec)
        .map_err(|problem| PortError::Publish { spec: spec.to_string(), problem })
}

/// Parses an image's `ExposedPorts` key, like `80/tcp` or `8000-8002/udp`, into its first
/// and last port and protocol (tcp when none is given).
pub fn parse_expose(spec: &str) -> Result<(u16, u16, Protocol), PortError> {
    let parse = || {
        let (ports, protocol) = split_protocol(spec)?;
        let (first, last) = parse_range(ports)?;
        if first == 0 {
            return Err(Problem::ContainerPortZero);
        }
        Ok((first, last, protocol))
    };
    parse().map_err(|problem| PortError::Expose { spec: spec.to_string(), problem })
}

fn parse_publish_parts(spec: &str) -> Result<Vec<PortMapping>, Problem> {
    if spec.trim().is_empty() {
        return Err(Problem::Empty);
    }
    if spec.contains('[') {
        return Err(Problem::Ipv6);
    }
    let (ports, protocol) = split_protocol(spec)?;
    // From the right: the address itself may hold ':' (IPv6).
    let mut fields = ports.rsplitn(3, ':');
    let container = fields.next().unwrap_or_default();
    let host = fields.next().unwrap_or_default();
    let ip = fields.next().unwrap_or_default();
    if ip.contains(':') {
        return Err(if ip.parse::<Ipv6Addr>().is_ok() {
            Problem::Ipv6
        } else {
            Problem::TooManyParts
        });
    }
    let host_ip = match ip {
        "" => Ipv4Addr::UNSPECIFIED,
        ip => ip.parse().map_err(|_| Problem::Address(ip.to_string()))?,
    };
    let (container_first, container_last) = parse_range(container)?;
    if container_first == 0 {
        return Err(Problem::ContainerPortZero);
    }
    let count = u32::from(container_last) - u32::from(container_first) + 1;
    let host_first = match host {
        "" | "0" => 0,
        host => {
            let (first, last) = parse_range(host)?;
            if first == 0 {
                return Err(Problem::ZeroInRange);
            }
            let host_count = u32::from(last) - u32::from(first) + 1;
            if host_count != count {
                return Err(Problem::RangeLengths { host: host_count, container: count });
            }
            first
        }
    };
    Ok((0..count)
        .map(|offset| {
            // In range: both ranges have `count` ports and fit in u16.
            let step = offset as u16;
            PortMapping {
                host_ip,
                host_port: if host_first == 0 { 0 } else { host_first + step },
                container_port: container_first + step,
                protocol,
            }
        })
        .collect())
}

fn split_protocol(spec: &str) -> Result<(&str, Protocol), Problem> {
    match spec.split_once('/') {
        Some((ports, protocol)) => Ok((ports, protocol.parse()?)),
        None => Ok((spec, Protocol::Tcp)),
    }
}

/// `port` or `first-last`; a port may be 0 here, callers decide whether that is allowed.
fn parse_range(text: &str) -> Result<(u16, u16), Problem> {
    let (first, last) = match text.split_once('-') {
        Some((first, last)) => (parse_port(first)?, parse_port(last)?),
        None => {
            let port = parse_port(text)?;
            (port, port)
        }
    };
    if last < first {
        return Err(Problem::Reversed(text.to_string()));
    }
    if first == 0 && last != 0 {
        return Err(Problem::ZeroInRange);
    }
    Ok((first, last))
}

fn parse_port(text: &str) -> Result<u16, Problem> {
    // Digits only: `str::parse` would take a leading '+'.
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Problem::Port(text.to_string()));
    }
    text.parse().map_err(|_| Problem::Port(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(ip: [u8; 4], host: u16, container: u16, protocol: Protocol) -> PortMapping {
        PortMapping {
            host_ip: Ipv4Addr::from(ip),
            host_port: host,
            container_port: container,
            protocol,
        }
    }

    #[test]
    fn parses_the_forms_docker_takes() {
        use Protocol::{Tcp, Udp};
        let cases: &[(&str, Vec<PortMapping>)] = &[
            ("80", vec![mapping([0; 4], 0, 80, Tcp)]),
            ("8080:80", vec![mapping([0; 4], 8080, 80, Tcp)]),
            ("8080:80/udp", vec![mapping([0; 4], 8080, 80, Udp)]),
            ("8080:80/TCP", vec![mapping([0; 4], 8080, 80, Tcp)]),
            ("127.0.0.1:8080:80/udp", vec![mapping([127, 0, 0, 1], 8080, 80, Udp)]),
            ("127.0.0.1::80", vec![mapping([127, 0, 0, 1], 0, 80, Tcp)]),
            ("0:80", vec![mapping([0; 4], 0, 80, Tcp)]),
            (":80", vec![mapping([0; 4], 0, 80, Tcp)]),
            ("65535:65535", vec![mapping([0; 4], 65535, 65535, Tcp)]),
            (
                "8000-8002:80-82",
                vec![
                    mapping([0; 4], 8000, 80, Tcp),
                    mapping([0; 4], 8001, 81, Tcp),
                    mapping([0; 4], 8002, 82, Tcp),
                ],
            ),
            (
                "10.0.0.1:8000-8001:80-81/udp",
                vec![mapping([10, 0, 0, 1], 8000, 80, Udp), mapping([10, 0, 0, 1], 8001, 81, Udp)],
            ),
            ("80-81", vec![mapping([0; 4], 0, 80, Tcp), mapping([0; 4], 0, 81, Tcp)]),
            ("80-80", vec![mapping([0; 4], 0, 80, Tcp)]),
        ];
        for (spec, expected) in cases {
            assert_eq!(parse_publish(spec).as_ref(), Ok(expected), "{spec}");
        }
    }

    #[test]
    fn refuses_bad_specs_saying_why() {
        let cases: &[(&str, Problem)] = &[
            ("", Problem::Empty),
            ("8080:0", Problem::ContainerPortZero),
            ("0", Problem::ContainerPortZero),
            ("70000", Problem::Port("70000".into())),
            ("8080:70000", Problem::Port("70000".into())),
            ("123456:80", Problem::Port("123456".into())),
            ("+80", Problem::Port("+80".into())),
            ("http", Problem::Port("http".into())),
            ("8080:", Problem::Port("".into())),
            ("82-80", Problem::Reversed("82-80".into())),
            ("8002-8000:80-82", Problem::Reversed("8002-8000".into())),
            ("8000-8001:80-82", Problem::RangeLengths { host: 2, container: 3 }),
            ("8080:80-82", Problem::RangeLengths { host: 1, container: 3 }),
            ("8000-8002:80", Problem::RangeLengths { host: 3, container: 1 }),
            ("0-2:80-82", Problem::ZeroInRange),
            ("80-", Problem::Port("".into())),
            ("80-81-82", Problem::Port("81-82".into())),
            ("80/sctp", Problem::Protocol("sctp".into())),
            ("80/", Problem::Protocol("".into())),
            ("80/tcp/udp", Problem::Protocol("tcp/udp".into())),
            ("localhost:8080:80", Problem::Address("localhost".into())),
            ("300.0.0.1:8080:80", Problem::Address("300.0.0.1".into())),
            ("1:2:3:4", Problem::TooManyParts),
            ("[::1]:8080:80", Problem::Ipv6),
            ("::1:8080:80", Problem::Ipv6),
            ("::8080:80", Problem::TooManyParts),
            ("fe80::1:8080:80/udp", Problem::Ipv6),
        ];
        for (spec, problem) in cases {
            let expected = PortError::Publish { spec: spec.to_string(), problem: problem.clone() };
            assert_eq!(parse_publish(spec), Err(expected), "{spec}");
        }
    }

    #[test]
    fn errors_show_the_accepted_form() {
        let message = parse_publish("[::1]:80:80").unwrap_err().to_string();
        assert!(message.contains("IPv6 is not supported"), "{message}");
        assert!(message.contains("[ip:][hostPort[-hostEnd]:]containerPort"), "{message}");
        let message = parse_expose("80/sctp").unwrap_err().to_string();
        assert!(message.contains("port[-end][/tcp|/udp]"), "{message}");
    }

    #[test]
    fn parses_exposed_ports() {
        assert_eq!(parse_expose("80/tcp"), Ok((80, 80, Protocol::Tcp)));
        assert_eq!(parse_expose("53/udp"), Ok((53, 53, Protocol::Udp)));
        assert_eq!(parse_expose("8000-8002/udp"), Ok((8000, 8002, Protocol::Udp)));
        assert_eq!(parse_expose("8080"), Ok((8080, 8080, Protocol::Tcp)));
        for bad in ["0/tcp", "", "/tcp", "70000/tcp", "82-80/tcp", "80/icmp", "1.2.3.4:80", "80:80"]
        {
            assert!(matches!(parse_expose(bad), Err(PortError::Expose { .. })), "{bad}");
        }
    }

    #[test]
    fn protocol_text_round_trips() {
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            assert_eq!(protocol.to_string().parse::<Protocol>(), Ok(protocol));
        }
    }
}
