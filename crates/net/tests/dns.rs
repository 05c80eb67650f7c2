//! The DNS responder against a fake upstream, all on 127.0.0.1.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use vessel_net::dns::{DnsServer, Names};

const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;
const WAIT: Duration = Duration::from_secs(10);
const WEB: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 5);
/// What the fake upstream answers for every name (TEST-NET-1: data only, never contacted).
const UPSTREAM_ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const NOERROR: u16 = 0;
const SERVFAIL: u16 = 2;
const NXDOMAIN: u16 = 3;

fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut packet = Vec::new();
    // Recursion desired, one question.
    for word in [id, 0x0100, 1, 0, 0, 0] {
        packet.extend_from_slice(&word.to_be_bytes());
    }
    for label in name.split('.').filter(|label| !label.is_empty()) {
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.push(0);
    packet.extend_from_slice(&qtype.to_be_bytes());
    packet.extend_from_slice(&1u16.to_be_bytes());
    packet
}

/// The parts of a response the tests look at.
#[derive(Debug)]
struct Response {
    id: u16,
    flags: u16,
    question: Vec<u8>,
    addresses: Vec<Ipv4Addr>,
}

impl Response {
    fn rcode(&self) -> u16 {
        self.flags & 0xF
    }
}

/// Reads a response with one question (no compression in it) and A records whose names
/// are pointers; enough for what the responder and the fake upstream send.
fn parse(message: &[u8]) -> Response {
    let word = |at: usize| u16::from_be_bytes([message[at], message[at + 1]]);
    let (id, flags, questions, answers) = (word(0), word(2), word(4), word(6));
    assert_eq!(questions, 1, "one question in {message:?}");
    let mut at = 12;
    while message[at] != 0 {
        at += 1 + usize::from(message[at]);
    }
    at += 5;
    let question = message[12..at].to_vec();
    let mut addresses = Vec::new();
    for _ in 0..answers {
        assert_eq!(message[at] & 0xC0, 0xC0, "answer names point at the question");
        let (rtype, rdlength) = (word(at + 2), usize::from(word(at + 10)));
        let rdata = &message[at + 12..at + 12 + rdlength];
        if rtype == TYPE_A {
            addresses.push(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]));
        }
        at += 12 + rdlength;
    }
    assert_eq!(at, message.len(), "nothing after the answers");
    Response { id, flags, question, addresses }
}

/// A response to `query` with one A record for [`UPSTREAM_ANSWER`], TC set if `truncated`
/// (and then no record).
fn upstream_answer(query: &[u8], truncated: bool) -> Vec<u8> {
    let mut answer = query.to_vec();
    let flags = 0x8180 | if truncated { 0x0200 } else { 0 };
    answer[2..4].copy_from_slice(&u16::to_be_bytes(flags));
    if !truncated {
        answer[6..8].copy_from_slice(&1u16.to_be_bytes());
        answer.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        answer.extend_from_slice(&UPSTREAM_ANSWER.octets());
    }
    answer
}

/// A fake upstream on UDP and TCP at one port. Over UDP it answers every query, except
/// names starting with "big", answered truncated; over TCP it answers in full.
async fn fake_upstream() -> SocketAddr {
    let udp = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    let addr = udp.local_addr().unwrap();
    let tcp = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        let mut buffer = [0u8; 4096];
        loop {
            let (len, from) = udp.recv_from(&mut buffer).await.unwrap();
            let query = &buffer[..len];
            let truncated = query[13..].starts_with(b"big");
            udp.send_to(&upstream_answer(query, truncated), from).await.unwrap();
        }
    });
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = tcp.accept().await.unwrap();
            tokio::spawn(async move {
                let len = stream.read_u16().await.unwrap();
                let mut query = vec![0u8; usize::from(len)];
                stream.read_exact(&mut query).await.unwrap();
                let answer = upstream_answer(&query, false);
                stream.write_u16(answer.len() as u16).await.unwrap();
                stream.write_all(&answer).await.unwrap();
            });
        }
    });
    addr
}

fn names() -> Arc<dyn Names> {
    Arc::new(HashMap::from([("web".to_string(), WEB)]))
}

/// A responder on 127.0.0.1:`port` (0: any) relaying to `upstreams`.
fn start(port: u16, upstreams: Vec<SocketAddr>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let server = DnsServer::bind((LOOPBACK, port).into()).unwrap();
    let addr = server.local_addr();
    assert_eq!(addr.ip(), LOOPBACK);
    assert_ne!(addr.port(), 0);
    (addr, tokio::spawn(server.serve(names(), upstreams)))
}

async fn ask(server: SocketAddr, packet: &[u8]) -> Response {
    let socket = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    socket.send_to(packet, server).await.unwrap();
    let mut buffer = [0u8; 4096];
    let (len, _) =
        tokio::time::timeout(WAIT, socket.recv_from(&mut buffer)).await.expect("answer").unwrap();
    parse(&buffer[..len])
}

async fn ask_tcp(stream: &mut TcpStream, packet: &[u8]) -> Response {
    stream.write_u16(packet.len() as u16).await.unwrap();
    stream.write_all(packet).await.unwrap();
    let len = tokio::time::timeout(WAIT, stream.read_u16()).await.expect("answer").unwrap();
    let mut answer = vec![0u8; usize::from(len)];
    stream.read_exact(&mut answer).await.unwrap();
    parse(&answer)
}

#[tokio::test]
async fn answers_container_names() {
    let (server, task) = start(0, vec![fake_upstream().await]);

    let response = ask(server, &query(0x1111, "web", TYPE_A)).await;
    assert_eq!((response.id, response.rcode()), (0x1111, NOERROR));
    assert_eq!(response.addresses, [WEB]);
    assert_ne!(response.flags & 0x0400, 0, "authoritative");

    // Case-insensitive, trailing dot or not; the question comes back as asked.
    let asked = query(0x2222, "WEB.", TYPE_A);
    let response = ask(server, &asked).await;
    assert_eq!(response.addresses, [WEB]);
    assert_eq!(response.question, asked[12..]);

    let response = ask(server, &query(0x3333, "web", TYPE_AAAA)).await;
    assert_eq!((response.id, response.rcode()), (0x3333, NOERROR));
    assert!(response.addresses.is_empty(), "no AAAA for a container");
    task.abort();
}

#[tokio::test]
async fn relays_other_names_with_the_clients_id() {
    let (server, task) = start(0, vec![fake_upstream().await]);
    let asked = query(0xABCD, "example.test", TYPE_A);
    let response = ask(server, &asked).await;
    assert_eq!((response.id, response.rcode()), (0xABCD, NOERROR));
    assert_eq!(response.addresses, [UPSTREAM_ANSWER]);
    assert_eq!(response.question, asked[12..]);
    task.abort();
}

#[tokio::test]
async fn survives_junk_and_keeps_answering() {
    let (server, task) = start(0, vec![fake_upstream().await]);
    let socket = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    let long_label = [&query(1, "", TYPE_A)[..12], &[63], &[b'a'; 20][..]].concat();
    let pointer_loop = [&query(2, "", TYPE_A)[..12], &[0xC0, 12, 0, 1, 0, 1][..]].concat();
    let junk: [&[u8]; 6] =
        [b"", b"\x00", b"not dns at all", &[0xFF; 600], &long_label, &pointer_loop];
    for packet in junk {
        socket.send_to(packet, server).await.unwrap();
    }
    // Whatever came back for the junk (FORMERR or nothing), the next query is answered.
    let response = ask(server, &query(0x4444, "web", TYPE_A)).await;
    assert_eq!((response.id, response.addresses.as_slice()), (0x4444, &[WEB][..]));

    let mut stream = TcpStream::connect(server).await.unwrap();
    stream.write_all(&[0, 3, 1, 2, 3]).await.unwrap();
    let mut buffer = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut buffer)).await.unwrap();
    let response = ask(server, &query(0x4545, "web", TYPE_A)).await;
    assert_eq!(response.addresses, [WEB]);
    task.abort();
}

#[tokio::test]
async fn answers_over_tcp_and_asks_again_over_tcp_when_truncated() {
    let (server, task) = start(0, vec![fake_upstream().await]);
    let mut stream = TcpStream::connect(server).await.unwrap();

    let response = ask_tcp(&mut stream, &query(0x5555, "web", TYPE_A)).await;
    assert_eq!((response.id, response.addresses.as_slice()), (0x5555, &[WEB][..]));

    // Several queries on one connection, one of them relayed.
    let response = ask_tcp(&mut stream, &query(0x5656, "example.test", TYPE_A)).await;
    assert_eq!((response.id, response.addresses.as_slice()), (0x5656, &[UPSTREAM_ANSWER][..]));

    // Over UDP a client gets the truncated answer, and over TCP the full one.
    let response = ask(server, &query(0x5757, "big.test", TYPE_A)).await;
    assert_ne!(response.flags & 0x0200, 0, "truncated over udp");
    assert!(response.addresses.is_empty());
    let response = ask_tcp(&mut stream, &query(0x5858, "big.test", TYPE_A)).await;
    assert_eq!(response.flags & 0x0200, 0, "in full over tcp");
    assert_eq!((response.id, response.addresses.as_slice()), (0x5858, &[UPSTREAM_ANSWER][..]));
    task.abort();
}

#[tokio::test]
async fn asks_the_next_upstream_and_fails_with_servfail() {
    // A port nobody listens on (refused at once), and one that never answers.
    let closed = UdpSocket::bind((LOOPBACK, 0)).await.unwrap().local_addr().unwrap();
    let silent = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();

    let (server, task) = start(0, vec![closed, fake_upstream().await]);
    let response = ask(server, &query(0x6666, "example.test", TYPE_A)).await;
    assert_eq!(response.addresses, [UPSTREAM_ANSWER], "the second upstream answered");
    task.abort();

    let (server, task) = start(0, vec![closed, silent.local_addr().unwrap()]);
    let asked = query(0x6767, "example.test", TYPE_A);
    let response = ask(server, &asked).await;
    assert_eq!((response.id, response.rcode()), (0x6767, SERVFAIL));
    assert_eq!(response.question, asked[12..]);
    task.abort();

    let (server, task) = start(0, Vec::new());
    let response = ask(server, &query(0x6868, "example.test", TYPE_A)).await;
    assert_eq!(response.rcode(), NXDOMAIN, "no upstreams at all: the name does not exist");
    task.abort();
}

#[tokio::test]
async fn responders_share_one_address() {
    let (first, first_task) = start(0, Vec::new());
    let (second, second_task) = start(first.port(), Vec::new());
    assert_eq!(first, second);
    for id in 0..20 {
        let response = ask(first, &query(id, "web", TYPE_A)).await;
        assert_eq!((response.id, response.addresses.as_slice()), (id, &[WEB][..]));
    }

    // One responder gone: the other answers everything.
    first_task.abort();
    let _ = first_task.await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    for id in 0..20 {
        let response = ask(first, &query(id, "web", TYPE_A)).await;
        assert_eq!(response.addresses, [WEB]);
    }
    second_task.abort();
}
