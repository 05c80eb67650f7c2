//! The netlink and nftables helpers against the real kernel. Each test runs in a fresh
//! network namespace of its own thread (children it spawns, nft and ip, inherit it), so
//! nothing touches the host's links, tables or sysctls; no test sends any traffic. The
//! namespace, and everything in it, goes with the thread.

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use vessel_net::link::{LinkError, Netlink};
use vessel_net::nft::{self, NetworkRules};
use vessel_net::subnet::Subnet;
use vessel_net::tap::Tap;

/// Runs `body` on a current-thread runtime in a thread of its own, in a new network
/// namespace. Fails (never skips) without root or /dev/net/tun.
fn in_namespace<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests need root (CAP_NET_ADMIN, to make network namespaces): run them as root"
    );
    assert!(
        Path::new("/dev/net/tun").exists(),
        "these tests need /dev/net/tun: load the tun module (modprobe tun)"
    );
    let thread = std::thread::spawn(move || {
        let host = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        let own = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        assert_ne!(host, own, "still in the host's network namespace");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(body());
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// Runs a command (in the calling thread's namespace) and returns its stdout.
fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{program} {args:?} failed: {stderr}");
    String::from_utf8(output.stdout).unwrap()
}

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);

#[test]
fn ensure_bridge_creates_the_bridge_with_its_address_and_is_idempotent() {
    in_namespace(|| async {
        let netlink = Netlink::connect().await.unwrap();
        assert!(!netlink.link_exists("vs-test").await.unwrap());
        netlink.ensure_bridge("vs-test", GATEWAY, 24).await.unwrap();
        netlink.ensure_bridge("vs-test", GATEWAY, 24).await.unwrap();
        // Two processes racing: each has its own socket.
        let other = Netlink::connect().await.unwrap();
        let (a, b) = tokio::join!(
            netlink.ensure_bridge("vs-race", GATEWAY, 24),
            other.ensure_bridge("vs-race", GATEWAY, 24)
        );
        a.unwrap();
        b.unwrap();

        for bridge in ["vs-test", "vs-race"] {
            assert!(netlink.link_exists(bridge).await.unwrap());
            let link = run("ip", &["-d", "-o", "link", "show", bridge]);
            assert!(link.contains(" bridge "), "not a bridge: {link}");
            assert!(link.contains(",UP"), "not up: {link}");
            assert!(link.contains("link/ether 02:76:0a:d5:00:01 "), "MAC not set: {link}");
            let addresses = run("ip", &["-o", "-4", "addr", "show", "dev", bridge]);
            assert_eq!(addresses.matches("inet ").count(), 1, "{addresses}");
            assert!(addresses.contains("inet 10.213.0.1/24 "), "{addresses}");
        }

        // A bridge that was left down is brought up again.
        run("ip", &["link", "set", "vs-test", "down"]);
        netlink.ensure_bridge("vs-test", GATEWAY, 24).await.unwrap();
        assert!(run("ip", &["-o", "link", "show", "vs-test"]).contains(",UP"));

        let _tap = Tap::create("vt-not-bridge").unwrap();
        let err = netlink.ensure_bridge("vt-not-bridge", GATEWAY, 24).await.unwrap_err();
        assert!(matches!(err, LinkError::NotABridge(_)), "{err}");
        assert_eq!(err.to_string(), "vt-not-bridge exists and is not a bridge");
    });
}

#[test]
fn a_tap_on_the_bridge_is_a_port_until_its_fd_closes() {
    in_namespace(|| async {
        let netlink = Netlink::connect().await.unwrap();
        netlink.ensure_bridge("vs-test", GATEWAY, 24).await.unwrap();
        let mac = run("ip", &["-o", "link", "show", "vs-test"]);
        assert!(netlink.bridge_ports("vs-test").await.unwrap().is_empty());
        assert!(netlink.bridge_ports("vs-absent").await.unwrap().is_empty());

        let tap = Tap::create("vt-test0").unwrap();
        netlink.attach_to_bridge("vt-test0", "vs-test").await.unwrap();
        assert_eq!(netlink.bridge_ports("vs-test").await.unwrap(), ["vt-test0"]);
        let port = run("ip", &["-o", "link", "show", "vt-test0"]);
        assert!(port.contains("master vs-test") && port.contains(",UP"), "{port}");
        // The bridge keeps its own MAC with a port on it: the guests' ARP caches stay right.
        let link_ether = |text: &str| text.split("link/ether ").nth(1).unwrap()[..17].to_string();
        assert_eq!(link_ether(&run("ip", &["-o", "link", "show", "vs-test"])), link_ether(&mac));

        drop(tap);
        let start = Instant::now();
        while netlink.link_exists("vt-test0").await.unwrap() {
            assert!(start.elapsed() < Duration::from_secs(1), "the TAP outlived its fd by 1 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(netlink.bridge_ports("vs-test").await.unwrap().is_empty());

        let err = netlink.attach_to_bridge("vt-none", "vs-test").await.unwrap_err();
        assert_eq!(err.to_string(), "no link named vt-none");
    });
}

#[test]
fn delete_link_says_whether_there_was_one() {
    in_namespace(|| async {
        let netlink = Netlink::connect().await.unwrap();
        netlink.ensure_bridge("vs-test", GATEWAY, 24).await.unwrap();
        assert!(netlink.delete_link("vs-test").await.unwrap());
        assert!(!netlink.link_exists("vs-test").await.unwrap());
        assert!(!netlink.delete_link("vs-test").await.unwrap());
        let err = netlink.delete_link("vs-name-too-long").await.unwrap_err();
        assert!(matches!(err, LinkError::BadName(_)), "{err}");
    });
}

#[test]
fn host_subnets_sees_addresses_and_routes_but_not_the_default_route() {
    in_namespace(|| async {
        let netlink = Netlink::connect().await.unwrap();
        assert!(netlink.host_subnets().await.unwrap().is_empty(), "a fresh namespace uses none");
        netlink.ensure_bridge("vs-test", Ipv4Addr::new(10, 213, 5, 1), 24).await.unwrap();
        run("ip", &["route", "add", "192.0.2.7/32", "dev", "vs-test"]);
        run("ip", &["route", "add", "blackhole", "240.0.0.0/4"]);
        run("ip", &["route", "add", "default", "dev", "vs-test"]);

        let mut expected: Vec<Subnet> =
            ["10.213.5.0/24", "192.0.2.4/30"].iter().map(|s| s.parse().unwrap()).collect();
        expected.extend((240..=255).map(|a| format!("{a}.0.0.0/8").parse::<Subnet>().unwrap()));
        assert_eq!(netlink.host_subnets().await.unwrap(), expected);
    });
}

#[test]
fn nft_tables_are_applied_idempotently_and_deleted() {
    in_namespace(|| async {
        let subnet: Subnet = "10.213.0.0/24".parse().unwrap();
        let open = NetworkRules {
            table: "vessel_0000test",
            bridge: "vs-test",
            subnet,
            internal: false,
            dns_port: 10053,
        };
        let internal =
            NetworkRules { table: "vessel_1111test", bridge: "vs-int", internal: true, ..open };
        assert!(!nft::table_exists(open.table).unwrap());

        nft::apply(&open).unwrap();
        nft::apply(&open).unwrap();
        assert!(nft::table_exists(open.table).unwrap());
        let listing = run("nft", &["list", "table", "inet", open.table]);
        assert_eq!(listing.matches("masquerade").count(), 1, "{listing}");
        assert!(listing.contains("ip saddr 10.213.0.0/24 ip daddr != 10.213.0.0/24 masquerade"));

        nft::apply(&internal).unwrap();
        let listing = run("nft", &["list", "table", "inet", internal.table]);
        assert!(!listing.contains("masquerade"), "{listing}");
        assert!(listing.contains("th dport 10053 accept"), "{listing}");
        assert!(listing.contains("redirect to :10053"), "{listing}");

        for table in [open.table, internal.table] {
            assert!(nft::delete_table(table).unwrap());
            assert!(!nft::table_exists(table).unwrap());
            assert!(!nft::delete_table(table).unwrap());
        }
        assert_eq!(run("nft", &["list", "ruleset"]).trim(), "", "tables left behind");
    });
}

#[test]
fn enable_ip_forward_turns_it_on_in_the_namespace_only() {
    let read = || std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let host_before = read();
    in_namespace(move || async move {
        // A new namespace copies the host's value, so turn it off here first.
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "0").unwrap();
        assert_eq!(read().trim(), "0");
        nft::enable_ip_forward().unwrap();
        assert_eq!(read().trim(), "1");
        nft::enable_ip_forward().unwrap();
    });
    assert_eq!(read(), host_before, "the host's ip_forward changed");
}
