//! The port proxy against echo servers, all on 127.0.0.1.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use vessel_net::ports::{PortMapping, Protocol};
use vessel_net::proxy::{ProxyError, PublishedPorts};

const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;
const WAIT: Duration = Duration::from_secs(10);
/// How long a datagram that is not coming is waited for.
const SILENCE: Duration = Duration::from_millis(500);

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

/// Publishes `mappings` with small limits shared by all of them.
async fn publish_with_limits(
    mappings: &[PortMapping],
    tcp_connections: usize,
    udp_flows: usize,
    connect_timeout: Duration,
) -> (Vec<PortMapping>, tokio::task::JoinHandle<()>) {
    let ports = PublishedPorts::bind(mappings).await.unwrap().with_limits(
        tcp_connections,
        udp_flows,
        connect_timeout,
    );
    let bound = ports.bound().to_vec();
    (bound, tokio::spawn(ports.serve(LOOPBACK)))
}

/// Whether `client` still relays: "ping" comes back from the echo server.
async fn echoes(client: &mut TcpStream) -> bool {
    let round_trip = async {
        client.write_all(b"ping").await?;
        let mut reply = [0u8; 4];
        client.read_exact(&mut reply).await?;
        Ok::<_, std::io::Error>(reply == *b"ping")
    };
    tokio::time::timeout(WAIT, round_trip).await.expect("an answer or a close").unwrap_or(false)
}

/// Whether the proxy closed `client` without a byte (EOF or a reset).
async fn closed(client: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(WAIT, client.read(&mut byte)).await.expect("closed in time");
    matches!(read, Ok(0) | Err(_))
}

#[tokio::test]
async fn tcp_connections_beyond_the_limit_are_closed_and_the_others_keep_working() {
    let echo = tcp_echo().await;
    // Two ports sharing a limit of two connections: it is the supervisor's, not a port's.
    let mappings = [mapping(0, echo, Protocol::Tcp), mapping(0, echo, Protocol::Tcp)];
    let (bound, proxy) = publish_with_limits(&mappings, 2, 8, WAIT).await;
    let (first_port, second_port) = (bound[0].host_port, bound[1].host_port);

    let mut first = TcpStream::connect((LOOPBACK, first_port)).await.unwrap();
    assert!(echoes(&mut first).await);
    let mut second = TcpStream::connect((LOOPBACK, second_port)).await.unwrap();
    assert!(echoes(&mut second).await);

    for port in [first_port, second_port, first_port] {
        let mut over = TcpStream::connect((LOOPBACK, port)).await.unwrap();
        assert!(closed(&mut over).await, "a connection over the limit on port {port} is closed");
    }
    assert!(echoes(&mut first).await, "the connections within the limit keep working");
    assert!(echoes(&mut second).await);

    // A connection that ends gives its slot back (once its relay has seen the close).
    drop(first);
    let deadline = Instant::now() + WAIT;
    loop {
        let mut again = TcpStream::connect((LOOPBACK, second_port)).await.unwrap();
        if echoes(&mut again).await {
            break;
        }
        assert!(Instant::now() < deadline, "the closed connection's slot is never given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(echoes(&mut second).await);
    proxy.abort();
}

/// A listener on 127.0.0.1 whose accept queue is full: the kernel drops further SYNs, so a
/// connect to it neither succeeds nor fails, like one to a container whose VM hangs. The
/// queued connections are returned to be held.
async fn never_answering_port() -> (TcpListener, Vec<TcpStream>, u16) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind((LOOPBACK, 0).into()).unwrap();
    // Never accepted from: a backlog of 0 queues one connection, then drops SYNs.
    let listener = socket.listen(0).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut queued = Vec::new();
    for _ in 0..8 {
        let connect = TcpStream::connect((LOOPBACK, port));
        match tokio::time::timeout(Duration::from_millis(300), connect).await {
            Ok(stream) => queued.push(stream.unwrap()),
            Err(_) => return (listener, queued, port),
        }
    }
    panic!("the accept queue of a listener with a backlog of 0 never filled");
}

#[tokio::test]
async fn a_connect_to_a_container_that_never_answers_times_out() {
    let (_listener, _queued, silent) = never_answering_port().await;
    let timeout = Duration::from_millis(300);
    let (bound, proxy) =
        publish_with_limits(&[mapping(0, silent, Protocol::Tcp)], 2, 8, timeout).await;

    // Both slots taken by clients whose connects to the container hang: a third is closed
    // at once, the two when their connects time out.
    let started = Instant::now();
    let port = bound[0].host_port;
    let mut waiting = Vec::new();
    for _ in 0..2 {
        waiting.push(TcpStream::connect((LOOPBACK, port)).await.unwrap());
    }
    let mut over = TcpStream::connect((LOOPBACK, port)).await.unwrap();
    assert!(closed(&mut over).await, "a client over the limit is closed");
    for mut client in waiting {
        assert!(closed(&mut client).await, "a client waiting on the container is closed");
        assert!(started.elapsed() >= timeout, "closed only once the connect timed out");
    }

    // The slots are free again: the next client waits on the container, then is closed.
    let started = Instant::now();
    let mut client = TcpStream::connect((LOOPBACK, port)).await.unwrap();
    assert!(closed(&mut client).await);
    assert!(started.elapsed() >= timeout, "this client got a slot and its connect timed out");
    proxy.abort();
}

/// Sends "ping" from `socket` to the proxy's `port`; the reply, if one comes within `wait`.
async fn ask(socket: &UdpSocket, port: u16, wait: Duration) -> Option<Vec<u8>> {
    socket.send_to(b"ping", (LOOPBACK, port)).await.unwrap();
    let mut buffer = [0u8; 64];
    let received = tokio::time::timeout(wait, socket.recv_from(&mut buffer)).await.ok()?;
    Some(buffer[..received.unwrap().0].to_vec())
}

#[tokio::test]
async fn udp_flows_beyond_the_budget_are_dropped() {
    let echo = udp_echo().await;
    // Two ports sharing a budget of two flows: it is the supervisor's, not a port's.
    let mappings = [mapping(0, echo, Protocol::Udp), mapping(0, echo, Protocol::Udp)];
    let (bound, proxy) = publish_with_limits(&mappings, 8, 2, WAIT).await;
    let ports = [bound[0].host_port, bound[1].host_port];
    let mut buffer = [0u8; 64];

    let first = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    let second = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    let third = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    assert_eq!(ask(&first, ports[0], WAIT).await.as_deref(), Some(&b"echo:ping"[..]));
    assert_eq!(ask(&second, ports[1], WAIT).await.as_deref(), Some(&b"echo:ping"[..]));
    for port in ports {
        assert_eq!(
            ask(&third, port, SILENCE).await,
            None,
            "a third client on port {port} is dropped"
        );
    }
    assert_eq!(ask(&first, ports[0], WAIT).await.as_deref(), Some(&b"echo:ping"[..]));
    assert_eq!(ask(&second, ports[1], WAIT).await.as_deref(), Some(&b"echo:ping"[..]));
    // Nothing for the third client arrived late.
    let late = tokio::time::timeout(SILENCE, third.recv_from(&mut buffer)).await;
    assert!(late.is_err(), "no reply to a dropped datagram");
    proxy.abort();
}
