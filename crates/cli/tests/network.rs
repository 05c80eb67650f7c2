//! Container networking through the CLI, end to end, each test in a network namespace of
//! its own (`ip netns add`): vessel, its supervisors, their VMs, bridges, TAPs and nftables
//! rules all live there, and every packet stays there. Images are pulled in the host's
//! namespace first (the registry listens on the host's loopback).

mod common;

use common::images::{busybox_root, TestImage, BUSYBOX as IMAGE};
use common::registry::Registry;
use common::TestRoot;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A network namespace, deleted when dropped.
struct Namespace {
    name: String,
}

impl Namespace {
    fn new() -> Namespace {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "network tests need root (they create network namespaces)"
        );
        assert!(std::path::Path::new("/dev/net/tun").exists(), "network tests need /dev/net/tun");
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("vessel-t-{}-{n}", std::process::id());
        ip(&["netns", "add", &name]);
        let namespace = Namespace { name };
        ip(&["-n", &namespace.name, "link", "set", "lo", "up"]);
        namespace
    }

    /// `vessel --root R ARGS` inside the namespace.
    fn vessel(&self, root: &TestRoot, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(common::vessel_bin())
            .arg("--root")
            .arg(root.path())
            .args(args)
            .output()
            .expect("cannot run ip netns exec")
    }

    fn ok(&self, root: &TestRoot, args: &[&str]) -> String {
        common::succeeded(self.vessel(root, args), args)
    }

    /// `ip ARGS` in the namespace.
    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs `work` on a thread that has entered the namespace: the sockets it opens are
    /// the namespace's.
    fn enter<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = std::fs::File::open(&path).expect("open the namespace");
                    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .expect("enter the namespace");
                    work()
                })
                .join()
                .expect("the namespace's thread panicked")
        })
    }

    fn nft_ruleset(&self) -> String {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "list", "ruleset"])
            .output()
            .expect("cannot run nft");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

fn ip(args: &[&str]) -> String {
    let output = Command::new("ip").args(args).output().expect("cannot run ip (install iproute2)");
    assert!(
        output.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn address(namespace: &Namespace, root: &TestRoot, container: &str) -> Ipv4Addr {
    let text = namespace.ok(root, &["inspect", "-f", "{{.NetworkSettings.IPAddress}}", container]);
    text.trim().parse().unwrap_or_else(|_| panic!("{container} has no address: {text:?}"))
}

/// An HTTP GET of `/` at `addr`, retried while the server comes up.
fn http_get(addr: SocketAddr) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        })();
        match attempt {
            Ok(response) if response.starts_with("HTTP/1.") => return response,
            other if Instant::now() > deadline => panic!("GET http://{addr}/ failed: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// A busybox httpd serving `body` at `/`.
const WEB: &str =
    "mkdir -p /www && echo \"$BODY\" > /www/index.html && exec httpd -f -p 80 -h /www";

#[test]
fn containers_reach_each_other_and_the_host_reaches_them_by_address_and_published_port() {
    let root = busybox_root();
    let namespace = Namespace::new();
    namespace.ok(
        &root,
        &[
            "run",
            "-d",
            "--name",
            "web",
            "-e",
            "BODY=hello from web",
            "-p",
            "127.0.0.1:8080:80",
            IMAGE,
            "sh",
            "-c",
            WEB,
        ],
    );
    let web = address(&namespace, &root, "web");
    assert!(web.octets()[..2] == [10, 213], "default network from 10.213.0.0/16: {web}");
    assert_eq!(namespace.ok(&root, &["port", "web"]).trim(), "80/tcp -> 127.0.0.1:8080");
    assert!(namespace.ok(&root, &["ps"]).contains("127.0.0.1:8080->80/tcp"));

    // From the namespace's host side: by the container's own address, and through -p on
    // the loopback.
    let (direct, published) = namespace.enter(|| {
        (http_get(SocketAddr::from((web, 80))), http_get("127.0.0.1:8080".parse().unwrap()))
    });
    assert!(direct.contains("hello from web"), "{direct}");
    assert!(published.contains("hello from web"), "{published}");

    // Another container: ping by address and by name, fetch by name; its own files.
    let script = format!(
        "ping -c 1 -W 5 {web} >/dev/null && echo ping-ip-ok; \
         ping -c 1 -W 5 web >/dev/null && echo ping-name-ok; \
         wget -q -O - http://web/; cat /etc/hostname /etc/resolv.conf; grep client /etc/hosts"
    );
    let output = namespace.ok(
        &root,
        &["run", "--rm", "--name", "client", "--hostname", "client", IMAGE, "sh", "-c", &script],
    );
    assert!(output.contains("ping-ip-ok"), "{output}");
    assert!(output.contains("ping-name-ok"), "{output}");
    assert!(output.contains("hello from web"), "{output}");
    let gateway = Ipv4Addr::from(u32::from(web) & 0xffff_ff00 | 1);
    assert!(output.contains(&format!("nameserver {gateway}")), "{output}");
    assert!(output.lines().any(|l| l == "client"), "{output}");

    // The DNS responder answers the bridge only: asked from the host's side (here, the
    // namespace), at port 53 or at its own port, it is silent.
    let query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03web\x00\x00\x01\x00\x01";
    let answered = namespace.enter(|| {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        [53, 10053].map(|port| {
            socket.send_to(query, SocketAddr::from((gateway, port))).unwrap();
            socket.recv(&mut [0u8; 512]).is_ok()
        })
    });
    assert_eq!(answered, [false, false], "the DNS responder answered the host's side");

    // Stopped and started again: the same address, a new TAP, the same published port.
    namespace.ok(&root, &["stop", "-t", "0", "web"]);
    assert!(!namespace.ip(&["-o", "link"]).contains("vt-"), "a stopped container's TAP stayed");
    namespace.ok(&root, &["start", "web"]);
    assert_eq!(address(&namespace, &root, "web"), web);
    let again = namespace.enter(|| http_get("127.0.0.1:8080".parse().unwrap()));
    assert!(again.contains("hello from web"), "{again}");

    namespace.ok(&root, &["rm", "-f", "web"]);
    let links = namespace.ip(&["-o", "link"]);
    assert!(!links.contains("vt-"), "a TAP outlived its container: {links}");
}

#[test]
fn published_udp_port_reaches_the_container() {
    let root = TestRoot::new();
    let registry = Registry::start();
    let reference = TestImage::Debian.push(&registry);
    root.ok(&["pull", "--quiet", &reference]);
    drop(registry);
    let namespace = Namespace::new();
    // A UDP echo in perl (Debian's minbase has perl-base, busybox's nc has no UDP).
    let echo = "use IO::Socket::INET; \
        my $s = IO::Socket::INET->new(LocalPort => 5353, Proto => 'udp') or die $!; \
        print \"listening\\n\"; $| = 1; \
        while (1) { my $peer = $s->recv(my $data, 1500); $s->send(\"echo:$data\", 0, $peer); }";
    namespace.ok(
        &root,
        &[
            "run",
            "-d",
            "--name",
            "echo",
            "-p",
            "127.0.0.1:5353:5353/udp",
            &reference,
            "perl",
            "-e",
            echo,
        ],
    );
    let replies = namespace.enter(|| {
        let mut replies = Vec::new();
        for client in ["first", "second"] {
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut buffer = [0u8; 1500];
            loop {
                socket.send_to(client.as_bytes(), "127.0.0.1:5353").unwrap();
                if let Ok(n) = socket.recv(&mut buffer) {
                    replies.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
                    break;
                }
                assert!(Instant::now() < deadline, "no UDP reply through the published port");
            }
        }
        replies
    });
    assert_eq!(replies, ["echo:first", "echo:second"]);
    namespace.ok(&root, &["rm", "-f", "echo"]);
}

#[test]
fn no_network_has_only_loopback_and_internal_has_no_way_out() {
    let root = busybox_root();
    let namespace = Namespace::new();
    let interfaces = namespace.ok(
        &root,
        &[
            "run",
            "--rm",
            "--network",
            "none",
            IMAGE,
            "sh",
            "-c",
            "tail -n +3 /proc/net/dev | cut -d: -f1",
        ],
    );
    let names: Vec<&str> = interfaces.split_whitespace().collect();
    assert_eq!(names, ["lo"], "{interfaces}");

    // "Outside": a second namespace behind a veth pair, with a server that says who
    // called, and a route back to every container subnet. The default network reaches it
    // through the host, masqueraded; an internal one does not, even with a default route
    // of its own.
    let outside = Namespace::new();
    namespace.ip(&["link", "add", "out0", "type", "veth", "peer", "name", "out1"]);
    namespace.ip(&["link", "set", "out1", "netns", &outside.name]);
    namespace.ip(&["addr", "add", "198.18.0.1/24", "dev", "out0"]);
    namespace.ip(&["link", "set", "out0", "up"]);
    outside.ip(&["addr", "add", "198.18.0.2/24", "dev", "out1"]);
    outside.ip(&["link", "set", "out1", "up"]);
    outside.ip(&["route", "add", "10.213.0.0/16", "via", "198.18.0.1"]);
    let listener = outside.enter(|| std::net::TcpListener::bind("198.18.0.2:8000").unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let peer = stream.peer_addr().map(|p| p.ip().to_string()).unwrap_or_default();
            let _ = stream.write_all(format!("outside sees {peer}\n").as_bytes());
        }
    });
    let reached = namespace.ok(&root, &["run", "--rm", IMAGE, "nc", "198.18.0.2", "8000"]);
    assert_eq!(reached.trim(), "outside sees 198.18.0.1", "masqueraded as the host");
    assert!(namespace.nft_ruleset().contains("masquerade"));

    namespace
        .ok(&root, &["network", "create", "--internal", "--subnet", "10.213.99.0/24", "isolated"]);
    let output = namespace.vessel(
        &root,
        &[
            "run",
            "--rm",
            "--network",
            "isolated",
            "--cap-add",
            "NET_ADMIN",
            IMAGE,
            "sh",
            "-c",
            "cat /proc/net/route; ip route add default via 10.213.99.1; \
             nc -w 3 198.18.0.2 8000 && echo REACHED",
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("outside sees"), "an internal network reached out: {stdout}");
    let default_routes = stdout.lines().filter(|l| l.split_whitespace().nth(1) == Some("00000000"));
    assert_eq!(default_routes.count(), 0, "an internal network has no default route: {stdout}");

    // The host still reaches an internal network's containers, by address and by -p.
    namespace.ok(
        &root,
        &[
            "run",
            "-d",
            "--name",
            "inside",
            "--network",
            "isolated",
            "-e",
            "BODY=inside",
            "-p",
            "127.0.0.1:8081:80",
            IMAGE,
            "sh",
            "-c",
            WEB,
        ],
    );
    let inside = address(&namespace, &root, "inside");
    let (direct, published) = namespace.enter(|| {
        (http_get(SocketAddr::from((inside, 80))), http_get("127.0.0.1:8081".parse().unwrap()))
    });
    assert!(direct.contains("inside") && published.contains("inside"), "{direct}\n{published}");
    namespace.ok(&root, &["rm", "-f", "inside"]);

    // The network goes with its rules and bridge.
    let network: serde_json::Value =
        serde_json::from_str(&namespace.ok(&root, &["network", "inspect", "isolated"])).unwrap();
    let bridge = network[0]["Options"]["bridge"].as_str().unwrap().to_string();
    let table = network[0]["Options"]["nftables.table"].as_str().unwrap().to_string();
    assert!(namespace.ip(&["-o", "link"]).contains(&bridge));
    namespace.ok(&root, &["network", "rm", "isolated"]);
    assert!(!namespace.ip(&["-o", "link"]).contains(&bridge), "the bridge outlived its network");
    assert!(!namespace.nft_ruleset().contains(&table), "the rules outlived their network");
}

#[test]
fn addresses_are_leased_while_containers_exist() {
    let root = busybox_root();
    let namespace = Namespace::new();
    namespace.ok(&root, &["network", "create", "--subnet", "10.213.77.0/24", "leases"]);
    let create = |name: &str, extra: &[&str]| {
        let mut args = vec!["create", "--network", "leases", "--name", name];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[IMAGE, "true"]);
        namespace.vessel(&root, &args)
    };
    assert!(create("a", &[]).status.success());
    assert!(create("b", &[]).status.success());
    let (a, b) = (address(&namespace, &root, "a"), address(&namespace, &root, "b"));
    assert_eq!((a, b), ("10.213.77.2".parse().unwrap(), "10.213.77.3".parse().unwrap()));

    // An address in use is refused, one outside the subnet too; the free one is taken.
    let taken = create("c", &["--ip", "10.213.77.3"]);
    assert_eq!(taken.status.code(), Some(125));
    let message = String::from_utf8_lossy(&taken.stderr);
    assert!(
        message.contains("10.213.77.3 is already in use") && message.contains(" b"),
        "{message}"
    );
    let outside = create("c", &["--ip", "10.1.2.3"]);
    assert!(String::from_utf8_lossy(&outside.stderr).contains("not a container address"));
    assert!(create("c", &["--ip", "10.213.77.50"]).status.success());
    assert_eq!(address(&namespace, &root, "c"), "10.213.77.50".parse::<Ipv4Addr>().unwrap());

    // rm frees the address for the next container; the network is in use until then.
    let in_use = namespace.vessel(&root, &["network", "rm", "leases"]);
    assert!(String::from_utf8_lossy(&in_use.stderr).contains("in use"));
    namespace.ok(&root, &["rm", "a"]);
    assert!(create("d", &[]).status.success());
    assert_eq!(address(&namespace, &root, "d"), a);
    namespace.ok(&root, &["rm", "b", "c", "d"]);
    namespace.ok(&root, &["network", "rm", "leases"]);
}

#[test]
fn a_killed_supervisor_leaves_no_tap_and_a_busy_port_is_a_clear_error() {
    let root = busybox_root();
    let namespace = Namespace::new();
    namespace.ok(
        &root,
        &["run", "-d", "--name", "doomed", "-p", "127.0.0.1:9000:80", IMAGE, "sleep", "600"],
    );
    assert!(namespace.ip(&["-o", "link"]).contains("vt-"));

    // The port is held: a second container asking for it fails, saying why.
    let busy = namespace.vessel(&root, &["run", "--rm", "-p", "127.0.0.1:9000:80", IMAGE, "true"]);
    assert_eq!(busy.status.code(), Some(125));
    let message = String::from_utf8_lossy(&busy.stderr);
    assert!(message.contains("127.0.0.1:9000") && message.contains("in use"), "{message}");

    // The port of the network's DNS responder is not for publishing on every address.
    let reserved = namespace.vessel(&root, &["run", "--rm", "-p", "10053:80", IMAGE, "true"]);
    assert_eq!(reserved.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&reserved.stderr).contains("DNS responder"));

    let pid: i32 =
        namespace.ok(&root, &["inspect", "-f", "{{.State.Pid}}", "doomed"]).trim().parse().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let listed = namespace.ok(&root, &["ps", "-a"]);
    assert!(listed.contains("Exited (255)"), "{listed}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let links = namespace.ip(&["-o", "link"]);
        if !links.contains("vt-") {
            break;
        }
        assert!(Instant::now() < deadline, "the TAP outlived its supervisor: {links}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its port is free again.
    namespace.ok(&root, &["run", "--rm", "-p", "127.0.0.1:9000:80", IMAGE, "true"]);
}

/// A stand-in for the host's resolver, inside the namespace: knows only `outside.test`,
/// whose A record is `answer`; every other name does not exist.
fn fake_resolver(namespace: &Namespace, answer: Ipv4Addr) {
    let socket = namespace.enter(|| UdpSocket::bind("127.0.0.1:53").unwrap());
    std::thread::spawn(move || {
        let mut buffer = [0u8; 512];
        while let Ok((n, peer)) = socket.recv_from(&mut buffer) {
            // Header, then the question: name labels, a zero, type and class.
            let Some(end) = buffer[12..n].iter().position(|&b| b == 0).map(|p| 12 + p + 5) else {
                continue;
            };
            let known = &buffer[12..end - 4] == b"\x07outside\x04test\x00";
            let is_a = known && buffer.get(end - 4..end - 2) == Some(&[0, 1]);
            let mut reply = buffer[..end].to_vec();
            reply[2] = 0x81; // response, recursion desired
            reply[3] = if known { 0x80 } else { 0x83 }; // recursion available; NXDOMAIN
            reply[6..8].copy_from_slice(&[0, u8::from(is_a)]);
            reply[8..12].fill(0);
            if is_a {
                reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                reply.extend_from_slice(&answer.octets());
            }
            let _ = socket.send_to(&reply, peer);
        }
    });
}

#[test]
fn aliases_the_hosts_resolvers_and_docker_s_network_flags() {
    let root = busybox_root();
    let namespace = Namespace::new();
    // `ip netns exec` puts /etc/netns/<ns>/resolv.conf over the host's /etc/resolv.conf.
    let etc = std::path::PathBuf::from("/etc/netns").join(&namespace.name);
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("resolv.conf"), "nameserver 127.0.0.1\nsearch example.test\n").unwrap();
    let _etc = RemoveOnDrop(etc);
    fake_resolver(&namespace, Ipv4Addr::new(192, 0, 2, 7));

    namespace.ok(
        &root,
        &[
            "run",
            "-d",
            "--name",
            "web",
            "--network-alias",
            "www",
            "-e",
            "BODY=aliased",
            "-P",
            IMAGE,
            "sh",
            "-c",
            WEB,
        ],
    );
    // -P: the image's EXPOSE 80/tcp, on a port the kernel picked, on every address.
    let port = namespace.ok(&root, &["port", "web", "80"]);
    let published: SocketAddr = port.trim().parse().unwrap();
    assert_eq!(published.ip().to_string(), "0.0.0.0", "{port}");
    let page = namespace.enter(|| http_get(SocketAddr::from(([127, 0, 0, 1], published.port()))));
    assert!(page.contains("aliased"), "{page}");

    let script = "wget -q -O - http://www/; nslookup outside.test; grep local /etc/hosts; \
                  cat /sys/class/net/eth0/address /etc/resolv.conf";
    let output = namespace.ok(
        &root,
        &[
            "run",
            "--rm",
            "--network",
            "bridge",
            "--add-host",
            "gw.local:host-gateway",
            "--add-host",
            "db.local:10.9.9.9",
            "--mac-address",
            "02:42:ac:11:00:99",
            IMAGE,
            "sh",
            "-c",
            script,
        ],
    );
    assert!(output.contains("aliased"), "the alias resolves: {output}");
    assert!(output.contains("192.0.2.7"), "other names go to the host's resolver: {output}");
    assert!(output.contains("10.9.9.9\tdb.local"), "{output}");
    let web = address(&namespace, &root, "web");
    let gateway = Ipv4Addr::from(u32::from(web) & 0xffff_ff00 | 1);
    assert!(output.contains(&format!("{gateway}\tgw.local")), "host-gateway: {output}");
    assert!(output.contains("02:42:ac:11:00:99"), "{output}");
    assert!(output.contains("search example.test"), "the host's search domains: {output}");

    let own_dns = namespace
        .ok(&root, &["run", "--rm", "--dns", "10.1.1.1", IMAGE, "cat", "/etc/resolv.conf"]);
    assert!(own_dns.starts_with("nameserver 10.1.1.1\n"), "{own_dns}");
    let injected =
        namespace.vessel(&root, &["run", "--rm", "--hostname", "a\n1.2.3.4 b", IMAGE, "true"]);
    assert_eq!(injected.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&injected.stderr).contains("invalid host name"));
    let bad = namespace
        .vessel(&root, &["run", "--rm", "--mac-address", "01:00:5e:00:00:01", IMAGE, "true"]);
    assert_eq!(bad.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("multicast"));
    namespace.ok(&root, &["rm", "-f", "web"]);
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
