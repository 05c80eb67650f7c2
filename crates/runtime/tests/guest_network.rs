//! The guest's network, end to end: a real TAP handed to a real VM, inside a network
//! namespace of the test's own, so no packet can leave it. The agent sets the guest's eth0
//! address, MTU and default route with ioctls, binds the host's generated /etc files into
//! the container, and a TCP server in the container answers the namespace's side. Without
//! an address the guest has `lo` alone, and up.
//!
//! The TAP test needs root and /dev/net/tun: it fails, never skips, without them.

mod common;

use nix::sched::CloneFlags;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vessel_proto::agent::{ContainerMount, NetworkConfig};
use vessel_runtime::process::ProcessIo;
use vessel_vm::Share;

const TAP: &str = "vt-test";
const HOST_SIDE: &str = "10.213.250.1";
const GUEST: Ipv4Addr = Ipv4Addr::new(10, 213, 250, 2);
const MAC: [u8; 6] = [0x02, 0x76, 0x0a, 0xd5, 0xfa, 0x02];
/// How long the guest's server may take to listen: a TCG boot on a busy host is slow.
const SERVER_DEADLINE: Duration = Duration::from_secs(60);

#[test]
fn the_guest_s_eth0_is_configured_and_reachable_from_the_host() {
    in_private_network_namespace(guest_on_a_tap);
}

async fn guest_on_a_tap() {
    // The TAP is the namespace's end of the link: no bridge needed.
    let tap = vessel_net::tap::Tap::create(TAP).expect("cannot create the test's TAP");
    ip(&["addr", "add", &format!("{HOST_SIDE}/24"), "dev", TAP]);
    ip(&["link", "set", TAP, "up"]);
    let fd = tap.fd().try_clone_to_owned().unwrap();
    let common::Booted { state: _state, mut sandbox, rootfs, writable } =
        common::boot_with("network", |options| {
            options.nic = Some(vessel_vm::Nic::new(fd, MAC));
        })
        .await;

    let hosts = format!("127.0.0.1\tlocalhost\n{GUEST}\tweb webhost\n");
    let resolv = format!("nameserver {HOST_SIDE}\nsearch test.internal\n");
    let mut request = common::container("web", true);
    request.network = Some(NetworkConfig {
        address: GUEST.to_string(),
        prefix_len: 24,
        gateway: HOST_SIDE.into(),
        mtu: 1400,
        hosts: hosts.clone().into_bytes(),
        resolv_conf: resolv.clone().into_bytes(),
        hostname_file: b"webhost\n".to_vec(),
        mac: MAC.to_vec(),
    });
    sandbox.agent().create_container(request).await.unwrap();
    let serve = "mkdir -p /tmp/www && echo hello-from-the-guest > /tmp/www/index.html \
                 && exec busybox httpd -f -p 8080 -h /tmp/www";
    let first = sandbox
        .start_process(common::spec("web", "first", &["sh", "-c", serve]), ProcessIo::default())
        .await
        .unwrap();

    // The /etc files are the host's, byte for byte (the image had none of them).
    for (path, expected) in [
        ("/etc/hosts", hosts.as_str()),
        ("/etc/resolv.conf", &resolv),
        ("/etc/hostname", "webhost\n"),
    ] {
        let (exit, stdout, stderr) = common::run(
            &mut sandbox,
            common::spec("web", &format!("cat{path}"), &["cat", path]),
            None,
        )
        .await;
        assert_eq!(exit.code, 0, "{path}: {stderr}");
        assert_eq!(stdout, expected, "{path}");
    }

    // eth0: the address, netmask, MTU and MAC asked for, up.
    let (exit, ifconfig, stderr) = common::run(
        &mut sandbox,
        common::spec("web", "ifconfig", &["busybox", "ifconfig", "eth0"]),
        None,
    )
    .await;
    assert_eq!(exit.code, 0, "{stderr}");
    for expected in [
        "HWaddr 02:76:0A:D5:FA:02",
        "inet addr:10.213.250.2",
        "Mask:255.255.255.0",
        "UP",
        "MTU:1400",
    ] {
        assert!(ifconfig.contains(expected), "no {expected:?} in:\n{ifconfig}");
    }
    // The default route, via the namespace's side of the link (/proc/net/route prints
    // addresses as little-endian hex).
    let (exit, routes, stderr) =
        common::run(&mut sandbox, common::spec("web", "routes", &["cat", "/proc/net/route"]), None)
            .await;
    assert_eq!(exit.code, 0, "{stderr}");
    let default = routes
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.get(1) == Some(&"00000000"))
        .unwrap_or_else(|| panic!("no default route in:\n{routes}"));
    assert_eq!(&default[..4], ["eth0", "00000000", "01FAD50A", "0003"], "{routes}");

    // TCP from the namespace to the container's server, both ways.
    let response = fetch(SocketAddr::from((GUEST, 8080)), "/index.html").await;
    assert!(
        response.lines().next().is_some_and(|status| status.ends_with(" 200 OK")),
        "{response}"
    );
    assert!(response.ends_with("\r\n\r\nhello-from-the-guest\n"), "{response}");

    common::end_cleanly(sandbox, first, [&rootfs, &writable]).await;
    // QEMU held the last copy of the TAP's fd beside ours.
    drop(tap);
}

/// No NIC, so nothing can leave the guest: no namespace of its own needed.
#[tokio::test(flavor = "current_thread")]
async fn without_an_address_the_guest_has_lo_alone_and_up() {
    // The user's own /etc/hosts, a single file bind-mounted from the host.
    let user_dir = tempfile::tempdir().unwrap();
    let user_hosts = "10.0.0.9\tmine\n";
    std::fs::write(user_dir.path().join("hosts"), user_hosts).unwrap();
    let share = Share {
        tag: "user-hosts".into(),
        host_path: user_dir.path().to_path_buf(),
        read_only: true,
        owner: None,
    };
    let common::Booted { state: _state, mut sandbox, rootfs, writable } =
        common::boot_with("no-network", |options| options.shares = vec![share]).await;
    // No address: lo only. The user's /etc/hosts wins over ours; /etc/resolv.conf is not
    // sent, so it stays the image's (which has none); the root is read-only, and so is the
    // bound /etc/hostname.
    let mut request = common::container("alone", false);
    request.mounts = vec![ContainerMount {
        kind: "bind".into(),
        source: "user-hosts".into(),
        target: "/etc/hosts".into(),
        read_only: true,
        file: "hosts".into(),
        ..Default::default()
    }];
    request.network = Some(NetworkConfig {
        hosts: b"127.0.0.1\tlocalhost\n".to_vec(),
        hostname_file: b"alonehost\n".to_vec(),
        ..Default::default()
    });
    sandbox.agent().create_container(request).await.unwrap();
    let first = sandbox
        .start_process(common::spec("alone", "first", &["sleep", "600"]), ProcessIo::default())
        .await
        .unwrap();

    let (exit, dev, stderr) =
        common::run(&mut sandbox, common::spec("alone", "dev", &["cat", "/proc/net/dev"]), None)
            .await;
    assert_eq!(exit.code, 0, "{stderr}");
    let interfaces: Vec<&str> =
        dev.lines().skip(2).filter_map(|line| line.split(':').next()).map(str::trim).collect();
    assert_eq!(interfaces, ["lo"], "{dev}");
    let (exit, flags, stderr) = common::run(
        &mut sandbox,
        common::spec("alone", "flags", &["cat", "/sys/class/net/lo/flags"]),
        None,
    )
    .await;
    assert_eq!(exit.code, 0, "{stderr}");
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & 1, 1, "lo is not up: flags {flags:#x}");
    // And it carries traffic: a server on 127.0.0.1 answers (a down lo gives "Network is
    // unreachable"). The root is read-only; /dev/shm is not.
    let loopback = "mkdir -p /dev/shm/www && echo over-lo > /dev/shm/www/index.html; \
                    busybox httpd -f -p 127.0.0.1:8080 -h /dev/shm/www & \
                    for i in $(seq 50); do \
                      busybox wget -q -O - http://127.0.0.1:8080/ && break; sleep 0.2; \
                    done; kill $!";
    let (_, stdout, stderr) =
        common::run(&mut sandbox, common::spec("alone", "loopback", &["sh", "-c", loopback]), None)
            .await;
    assert_eq!(stdout, "over-lo\n", "{stderr}");

    let (exit, stdout, stderr) = common::run(
        &mut sandbox,
        common::spec(
            "alone",
            "etc",
            &[
                "sh",
                "-c",
                "cat /etc/hosts /etc/hostname; cat /etc/resolv.conf; echo >> /etc/hostname",
            ],
        ),
        None,
    )
    .await;
    assert_eq!(stdout, format!("{user_hosts}alonehost\n"));
    assert!(stderr.contains("/etc/resolv.conf"), "{stderr}");
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    assert_ne!(exit.code, 0);

    common::end_cleanly(sandbox, first, [&rootfs, &writable]).await;
}

/// Runs `body` on a thread of its own in a new, empty network namespace with `lo` up; the
/// VM's processes, started from that thread, live there too. Panics in `body` come back.
fn in_private_network_namespace<F>(body: fn() -> F)
where
    F: std::future::Future<Output = ()> + 'static,
{
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates a network namespace and a TAP: run it as root"
    );
    assert!(
        std::path::Path::new("/dev/net/tun").exists(),
        "this test needs /dev/net/tun (modprobe tun)"
    );
    let thread = std::thread::spawn(move || {
        // Only this thread moves; the test harness's other threads stay where they are.
        nix::sched::unshare(CloneFlags::CLONE_NEWNET)
            .expect("cannot unshare the network namespace");
        let links = ip(&["-o", "link", "show"]);
        assert_eq!(links.lines().count(), 1, "not a fresh namespace:\n{links}");
        ip(&["link", "set", "lo", "up"]);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(body());
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// Runs `ip ARGS` (iproute2) in the calling thread's namespace; its output.
fn ip(args: &[&str]) -> String {
    let output = Command::new("ip")
        .args(args)
        .output()
        .expect("iproute2 is needed (apt-get install iproute2)");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// An HTTP/1.0 GET of `path` from `server`, retried while it does not listen yet; the whole
/// response.
async fn fetch(server: SocketAddr, path: &str) -> String {
    let started = Instant::now();
    let mut stream = loop {
        match tokio::net::TcpStream::connect(server).await {
            Ok(stream) => break stream,
            Err(_) if started.elapsed() < SERVER_DEADLINE => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("cannot connect to {server} within {SERVER_DEADLINE:?}: {err}"),
        }
    };
    stream.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}
