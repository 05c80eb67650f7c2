//! The port proxy against echo servers, all on 127.0.0.1.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use vessel_net::ports::{PortMapping, Protocol};
use vessel_net::proxy::{ProxyError, PublishedPorts};

const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;
const WAIT: Duration = Duration::from_secs(10);

fn mapping(host_port: u16, container_port: u16, protocol: Protocol) -> PortMapping {
    PortMapping { host_ip: LOOPBACK, host_port, container_port, protocol }
}

/// Echoes each connection: reads to EOF, then writes back everything it read, prefixed by
/// "got:" — so a reply arrives only after the client's half-close reached it.
async fn tcp_echo_after_eof() -> u16 {
    let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut received = Vec::new();
                stream.read_to_end(&mut received).await.unwrap();
                stream.write_all(b"got:").await.unwrap();
                stream.write_all(&received).await.unwrap();
                stream.shutdown().await.unwrap();
            });
        }
    });
    port
}

/// Echoes each connection as the data comes.
async fn tcp_echo() -> u16 {
    let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                tokio::io::copy(&mut read, &mut write).await.unwrap();
            });
        }
    });
    port
}

/// Echoes each datagram to its sender, prefixed by "echo:".
async fn udp_echo() -> u16 {
    let socket = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    let port = socket.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut buffer = [0u8; 2048];
        loop {
            let (len, from) = socket.recv_from(&mut buffer).await.unwrap();
            let reply = [b"echo:", &buffer[..len]].concat();
            socket.send_to(&reply, from).await.unwrap();
        }
    });
    port
}

async fn publish(mappings: &[PortMapping]) -> (Vec<PortMapping>, tokio::task::JoinHandle<()>) {
    let ports = PublishedPorts::bind(mappings).await.unwrap();
    let bound = ports.bound().to_vec();
    (bound, tokio::spawn(ports.serve(LOOPBACK)))
}

#[tokio::test]
async fn tcp_round_trips_both_ways() {
    let echo = tcp_echo().await;
    let (bound, proxy) = publish(&[mapping(0, echo, Protocol::Tcp)]).await;
    assert_ne!(bound[0].host_port, 0, "the kernel's port is reported");
    assert_eq!(bound[0].container_port, echo);

    let mut client = TcpStream::connect((LOOPBACK, bound[0].host_port)).await.unwrap();
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let (mut read, mut write) = client.split();
    let send = async {
        write.write_all(&big).await.unwrap();
        write.shutdown().await.unwrap();
    };
    let mut echoed = Vec::new();
    let receive = read.read_to_end(&mut echoed);
    let ((), received) = tokio::time::timeout(WAIT, async { tokio::join!(send, receive) })
        .await
        .expect("echo through the proxy");
    received.unwrap();
    assert!(echoed == big, "{} bytes echoed of {}", echoed.len(), big.len());
    proxy.abort();
}

#[tokio::test]
async fn tcp_half_close_reaches_the_server_and_the_reply_still_arrives() {
    let echo = tcp_echo_after_eof().await;
    let (bound, proxy) = publish(&[mapping(0, echo, Protocol::Tcp)]).await;

    let mut client = TcpStream::connect((LOOPBACK, bound[0].host_port)).await.unwrap();
    client.write_all(b"hello").await.unwrap();
    client.shutdown().await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(WAIT, client.read_to_end(&mut reply))
        .await
        .expect("the server saw EOF and replied")
        .unwrap();
    assert_eq!(reply, b"got:hello");
    proxy.abort();
}

#[tokio::test]
async fn tcp_to_a_closed_port_just_closes_the_client() {
    // A port that was free a moment ago: nothing listens there now.
    let closed = TcpListener::bind((LOOPBACK, 0)).await.unwrap().local_addr().unwrap().port();
    let (bound, proxy) = publish(&[mapping(0, closed, Protocol::Tcp)]).await;

    let mut client = TcpStream::connect((LOOPBACK, bound[0].host_port)).await.unwrap();
    let mut reply = Vec::new();
    let read = tokio::time::timeout(WAIT, client.read_to_end(&mut reply)).await.unwrap();
    assert!(read.is_err() || reply.is_empty(), "closed without data");
    proxy.abort();
}

#[tokio::test]
async fn a_port_already_held_fails_with_a_clear_error() {
    let holder = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let port = holder.local_addr().unwrap().port();
    let error = PublishedPorts::bind(&[mapping(port, 80, Protocol::Tcp)]).await.unwrap_err();
    assert!(matches!(error, ProxyError::InUse { protocol: Protocol::Tcp, .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message
            .starts_with(&format!("cannot publish 127.0.0.1:{port}/tcp: address already in use")),
        "{message}"
    );
    assert!(message.contains("choose another host port"), "{message}");

    let holder = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    let port = holder.local_addr().unwrap().port();
    let error = PublishedPorts::bind(&[mapping(port, 53, Protocol::Udp)]).await.unwrap_err();
    assert!(error.to_string().contains(&format!("127.0.0.1:{port}/udp: address already in use")));

    // The same port twice in one list fails too, on the second bind.
    let free = TcpListener::bind((LOOPBACK, 0)).await.unwrap().local_addr().unwrap().port();
    let twice = [mapping(free, 80, Protocol::Tcp), mapping(free, 81, Protocol::Tcp)];
    let error = PublishedPorts::bind(&twice).await.unwrap_err();
    assert!(matches!(error, ProxyError::InUse { .. }), "{error:?}");
}

#[tokio::test]
async fn a_port_freed_by_a_stopped_proxy_can_be_bound_again() {
    let echo = tcp_echo().await;
    let (bound, proxy) = publish(&[mapping(0, echo, Protocol::Tcp)]).await;
    let port = bound[0].host_port;
    // Leave a connection behind, so the port has TIME_WAIT or established state.
    let mut client = TcpStream::connect((LOOPBACK, port)).await.unwrap();
    client.write_all(b"x").await.unwrap();
    let mut byte = [0u8; 1];
    client.read_exact(&mut byte).await.unwrap();
    proxy.abort();
    let _ = proxy.await;
    drop(client);
    // The relay tasks are cancelled when the runtime next runs them.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let again = PublishedPorts::bind(&[mapping(port, echo, Protocol::Tcp)]).await.unwrap();
    assert_eq!(again.bound()[0].host_port, port);
}

#[tokio::test]
async fn udp_replies_go_back_to_the_right_client() {
    let echo = udp_echo().await;
    let (bound, proxy) = publish(&[mapping(0, echo, Protocol::Udp)]).await;
    let proxy_addr = SocketAddr::from((LOOPBACK, bound[0].host_port));

    let first = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    let second = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    let mut buffer = [0u8; 2048];
    for round in 0..3 {
        first.send_to(format!("first {round}").as_bytes(), proxy_addr).await.unwrap();
        second.send_to(format!("second {round}").as_bytes(), proxy_addr).await.unwrap();
        for (socket, name) in [(&first, "first"), (&second, "second")] {
            let (len, from) =
                tokio::time::timeout(WAIT, socket.recv_from(&mut buffer)).await.unwrap().unwrap();
            assert_eq!(from, proxy_addr, "replies come from the published port");
            assert_eq!(&buffer[..len], format!("echo:{name} {round}").as_bytes());
        }
    }
    proxy.abort();
}

#[tokio::test]
async fn tcp_and_udp_ranges_bind_every_port() {
    let tcp = tcp_echo().await;
    let udp = udp_echo().await;
    let mappings = [mapping(0, tcp, Protocol::Tcp), mapping(0, udp, Protocol::Udp)];
    let (bound, proxy) = publish(&mappings).await;
    assert_eq!(bound.len(), 2);
    assert!(bound.iter().all(|m| m.host_port != 0 && m.host_ip == LOOPBACK));

    let mut client = TcpStream::connect((LOOPBACK, bound[0].host_port)).await.unwrap();
    client.write_all(b"ping").await.unwrap();
    let mut reply = [0u8; 4];
    tokio::time::timeout(WAIT, client.read_exact(&mut reply)).await.unwrap().unwrap();
    assert_eq!(&reply, b"ping");

    let socket = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    socket.send_to(b"ping", (LOOPBACK, bound[1].host_port)).await.unwrap();
    let mut buffer = [0u8; 64];
    let (len, _) =
        tokio::time::timeout(WAIT, socket.recv_from(&mut buffer)).await.unwrap().unwrap();
    assert_eq!(&buffer[..len], b"echo:ping");
    proxy.abort();
}
