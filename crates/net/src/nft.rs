//! Egress for a network: one nftables table per network, written as text and fed to
//! `nft -f -`, which applies a file as one atomic transaction. Owning a whole table means
//! creating it again replaces our rules wholesale, and removing the network is one
//! `delete table`; the host's own tables are never touched.
//!
//! A drop in any other table (docker sets iptables' FORWARD policy to DROP) still drops
//! our traffic: nftables has no way to overrule another table's verdict.

use std::io::{ErrorKind, Write};
use std::process::{Command, Output, Stdio};

use crate::subnet::Subnet;

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// The rules of one network.
#[derive(Debug, Clone, Copy)]
pub struct NetworkRules<'a> {
    /// `vessel_<8 hex>`.
    pub table: &'a str,
    pub bridge: &'a str,
    pub subnet: Subnet,
    /// No way out: no masquerade, and the containers reach only each other and the
    /// gateway's DNS.
    pub internal: bool,
    /// Where the network's DNS responder listens on the gateway address; the guests ask
    /// port 53, which these rules redirect there.
    pub dns_port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nft not found: install nftables (apt-get install nftables)")]
    NotInstalled,
    #[error("cannot run nft")]
    Spawn(#[source] std::io::Error),
    #[error("nft could not {action}: {stderr}{}", permission_hint(stderr))]
    Failed { action: String, stderr: String },
    #[error("{0:?} is not a name vessel gives tables or bridges (letters, digits, '_', '-', '.')")]
    BadName(String),
    #[error("cannot enable IPv4 forwarding in {IP_FORWARD}")]
    IpForward(#[source] std::io::Error),
}

fn permission_hint(stderr: &str) -> &'static str {
    if stderr.contains("Operation not permitted") {
        " (vessel needs root, CAP_NET_ADMIN)"
    } else {
        ""
    }
}

/// The text fed to `nft -f -`. Adding then flushing the table before defining it makes
/// the file idempotent: applying it again replaces the rules instead of doubling them. The
/// table is `inet`, so its filter chains hold IPv6 too (the guests have link-local IPv6).
///
/// - DNS: the guests' port 53 on the gateway goes to the responder's port, which answers
///   the bridge only (no open resolver for the host's other neighbours), and leaves port
///   53 free for the host's own services and published ports.
/// - Forwarding from the bridge is accepted for the subnet's own source addresses (no
///   spoofing), and traffic to it only as replies: published ports reach containers
///   through the supervisor's proxy, a local socket, so nothing needs to be forwarded in
///   unasked. That also keeps networks apart from each other.
/// - Internal: nothing forwarded off the bridge, and of the host only the DNS responder
///   (and replies to what the host opened: it reaches its containers, `-p` works).
pub fn ruleset(rules: &NetworkRules) -> String {
    let NetworkRules { table, bridge, subnet, internal, dns_port } = *rules;
    let gateway = subnet.gateway();
    let dns = format!("ip daddr {gateway} meta l4proto {{ tcp, udp }} th dport");
    let mut text =
        format!("add table inet {table}\nflush table inet {table}\ntable inet {table} {{\n");
    text.push_str(&format!(
        "\tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         \t\tiifname \"{bridge}\" {dns} 53 redirect to :{dns_port}\n\
         \t}}\n"
    ));
    // Between two containers of the network: seen here only when the host has
    // br_netfilter loaded (docker loads it), and always allowed, IPv6 included.
    let within = format!("\t\tiifname \"{bridge}\" oifname \"{bridge}\" accept\n");
    let (input, forward) = if internal {
        (
            // Replies to what the host opened (its own connections, the port proxy) come
            // back; of the rest, only DNS.
            format!(
                "\t\tiifname \"{bridge}\" ct state established,related accept\n\
                 \t\tiifname \"{bridge}\" {dns} {dns_port} accept\n\
                 \t\tiifname \"{bridge}\" drop\n"
            ),
            within,
        )
    } else {
        (
            String::new(),
            format!(
                "{within}\
                 \t\tiifname \"{bridge}\" ip saddr {subnet} accept\n\
                 \t\toifname \"{bridge}\" ct state established,related accept\n"
            ),
        )
    };
    text.push_str(&format!(
        "\tchain input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tiifname != \"{bridge}\" {dns} {dns_port} drop\n\
         {input}\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         {forward}\
         \t\tiifname \"{bridge}\" drop\n\
         \t\toifname \"{bridge}\" drop\n\
         \t}}\n"
    ));
    if !internal {
        text.push_str(&format!(
            "\tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr {subnet} ip daddr != {subnet} masquerade\n\
             \t}}\n"
        ));
    }
    text.push_str("}\n");
    text
}

/// Creates or replaces the network's table, in one atomic transaction.
pub fn apply(rules: &NetworkRules) -> Result<(), NftError> {
    check_name(rules.table)?;
    check_name(rules.bridge)?;
    let action = format!("apply the rules of table inet {}", rules.table);
    nft(&["-f", "-"], Some(&ruleset(rules)), action)?;
    Ok(())
}

/// Deletes the table and every rule in it; false if it was absent.
pub fn delete_table(table: &str) -> Result<bool, NftError> {
    check_name(table)?;
    match nft(&["delete", "table", "inet", table], None, format!("delete table inet {table}")) {
        Ok(_) => Ok(true),
        // nft 1.0.6 has no `destroy`: an absent table is an error, told apart afterwards.
        Err(err @ NftError::Failed { .. }) => match table_exists(table)? {
            false => Ok(false),
            true => Err(err),
        },
        Err(err) => Err(err),
    }
}

pub fn table_exists(table: &str) -> Result<bool, NftError> {
    check_name(table)?;
    let listing = nft(&["list", "tables", "inet"], None, "list the inet tables".into())?;
    let wanted = format!("table inet {table}");
    Ok(String::from_utf8_lossy(&listing.stdout).lines().any(|line| line.trim() == wanted))
}

/// Turns on IPv4 forwarding in the caller's network namespace (it is off in a fresh
/// one). Never turned off again: other software may rely on it by then, as with docker.
pub fn enable_ip_forward() -> Result<(), NftError> {
    if std::fs::read_to_string(IP_FORWARD).is_ok_and(|value| value.trim() == "1") {
        return Ok(());
    }
    std::fs::write(IP_FORWARD, "1\n").map_err(NftError::IpForward)
}

/// Names go into nft's input unquoted (tables) or quoted (interfaces): allow only what
/// needs no escaping either way.
fn check_name(name: &str) -> Result<(), NftError> {
    let plain = name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    let starts_with_letter = name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic());
    if !plain || !starts_with_letter || name.len() > 64 {
        return Err(NftError::BadName(name.into()));
    }
    Ok(())
}

/// Runs nft with `args`, feeding it `input`; a failure carries nft's stderr.
fn nft(args: &[&str], input: Option<&str>, action: String) -> Result<Output, NftError> {
    let mut child = None;
    // root's PATH has /usr/sbin, but a service manager's or sudo's may not.
    for program in ["nft", "/usr/sbin/nft"] {
        let spawned = Command::new(program)
            .args(args)
            .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        match spawned {
            Ok(spawned) => {
                child = Some(spawned);
                break;
            }
            Err(err) if err.kind() == ErrorKind::NotFound => continue,
            Err(err) => return Err(NftError::Spawn(err)),
        }
    }
    let mut child = child.ok_or(NftError::NotInstalled)?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // A ruleset is far smaller than a pipe's buffer, so this cannot block on nft.
        stdin.write_all(input.as_bytes()).map_err(NftError::Spawn)?;
    }
    let output = child.wait_with_output().map_err(NftError::Spawn)?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        let stderr = if stderr.is_empty() { output.status.to_string() } else { stderr };
        return Err(NftError::Failed { action, stderr });
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(internal: bool) -> NetworkRules<'static> {
        NetworkRules {
            table: "vessel_1234abcd",
            bridge: "vs-1234abcd",
            subnet: "10.213.0.0/24".parse().unwrap(),
            internal,
            dns_port: 10053,
        }
    }

    #[test]
    fn a_network_masquerades_and_forwards_from_its_bridge() {
        let expected = "\
add table inet vessel_1234abcd
flush table inet vessel_1234abcd
table inet vessel_1234abcd {
\tchain prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tiifname \"vs-1234abcd\" ip daddr 10.213.0.1 meta l4proto { tcp, udp } th dport 53 redirect to :10053
\t}
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname != \"vs-1234abcd\" ip daddr 10.213.0.1 meta l4proto { tcp, udp } th dport 10053 drop
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tiifname \"vs-1234abcd\" oifname \"vs-1234abcd\" accept
\t\tiifname \"vs-1234abcd\" ip saddr 10.213.0.0/24 accept
\t\toifname \"vs-1234abcd\" ct state established,related accept
\t\tiifname \"vs-1234abcd\" drop
\t\toifname \"vs-1234abcd\" drop
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr 10.213.0.0/24 ip daddr != 10.213.0.0/24 masquerade
\t}
}
";
        assert_eq!(ruleset(&rules(false)), expected);
    }

    #[test]
    fn an_internal_network_reaches_only_itself_and_its_gateway_s_dns() {
        let text = ruleset(&rules(true));
        assert!(!text.contains("masquerade"), "{text}");
        assert!(!text.contains("postrouting"), "{text}");
        assert!(
            text.starts_with("add table inet vessel_1234abcd\nflush table inet vessel_1234abcd\n")
        );
        for rule in [
            "iifname \"vs-1234abcd\" oifname \"vs-1234abcd\" accept\n",
            "iifname \"vs-1234abcd\" drop\n",
            "oifname \"vs-1234abcd\" drop\n",
            "iifname \"vs-1234abcd\" ip daddr 10.213.0.1 meta l4proto { tcp, udp } th dport 10053 accept\n",
            "iifname \"vs-1234abcd\" ct state established,related accept\n",
        ] {
            assert!(text.contains(rule), "missing {rule:?} in\n{text}");
        }
        // In each chain, the accepts come before the drops.
        let chain = |name: &str| {
            let start = text.find(&format!("chain {name} {{")).unwrap();
            text[start..].split("\t}").next().unwrap().to_string()
        };
        let (input, forward) = (chain("input"), chain("forward"));
        let drop = "iifname \"vs-1234abcd\" drop";
        assert!(forward.find("oifname \"vs-1234abcd\" accept") < forward.find(drop));
        assert!(input.find("10053 accept").unwrap() < input.find(drop).unwrap());
    }

    #[test]
    fn names_that_would_need_escaping_are_refused() {
        for name in ["", "vessel 1", "x\"; flush ruleset", "vessel_1\n", "_x", "1abc"] {
            assert!(matches!(check_name(name), Err(NftError::BadName(_))), "{name:?}");
        }
        assert!(check_name("vessel_1234abcd").is_ok() && check_name("vs-1234abcd").is_ok());
        let bad = NetworkRules { bridge: "vs\"x", ..rules(false) };
        assert!(matches!(apply(&bad), Err(NftError::BadName(_))));
    }

    #[test]
    fn a_permission_failure_says_what_is_missing() {
        let err = NftError::Failed {
            action: "list the ip tables".into(),
            stderr: "Error: Operation not permitted".into(),
        };
        assert_eq!(
            err.to_string(),
            "nft could not list the ip tables: Error: Operation not permitted \
             (vessel needs root, CAP_NET_ADMIN)"
        );
    }
}
