//! The DNS responder every supervisor runs on its network's gateway address. All of them
//! bind the same address with SO_REUSEPORT: the kernel spreads queries among the live
//! sockets and a dead supervisor's socket simply goes, so there is no election and no
//! daemon. Container names are answered here; every other query is relayed unchanged to
//! the host's resolvers (none on an internal network: there, other names do not exist).
//!
//! Queries come from inside guests, so the parser trusts nothing: every read is bounded,
//! compression pointers are followed a limited number of times, and a malformed packet
//! gets FORMERR or is dropped, never a panic.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{self, sockopt, AddressFamily, Backlog, SockFlag, SockType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;
use tokio::time::timeout;

/// Each upstream gets this long to answer before the next is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// A TCP client silent this long is disconnected.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Largest message relayed over UDP, either way; a bigger answer comes back truncated.
const MAX_UDP_MESSAGE: usize = 4096;
/// Relays in flight and TCP clients at once; beyond them, queries are dropped (clients
/// retry), so a guest cannot make the supervisor hold unbounded tasks and sockets.
const MAX_RELAYS: usize = 256;
const MAX_TCP_CLIENTS: usize = 64;
/// Binding port 0 asks the kernel for a UDP port, then takes the same TCP port; this many
/// tries in case that TCP port is taken.
const PORT_ZERO_TRIES: usize = 8;
/// Containers come and go: answers are not to be cached.
const TTL: u32 = 0;

const HEADER_LEN: usize = 12;
const MAX_NAME_LEN: usize = 255;
const MAX_POINTER_HOPS: usize = 16;
/// Header flags.
const QR: u16 = 0x8000;
const OPCODE: u16 = 0x7800;
const AA: u16 = 0x0400;
const TC: u16 = 0x0200;
const RD: u16 = 0x0100;
const RA: u16 = 0x0080;
/// Response codes.
const FORMERR: u16 = 1;
const SERVFAIL: u16 = 2;
const NXDOMAIN: u16 = 3;
const NOTIMP: u16 = 4;
const TYPE_A: u16 = 1;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;

/// Looks up a container name on this network (lowercase, no trailing dot).
pub trait Names: Send + Sync + 'static {
    fn lookup(&self, name: &str) -> Option<Ipv4Addr>;
}

impl Names for HashMap<String, Ipv4Addr> {
    fn lookup(&self, name: &str) -> Option<Ipv4Addr> {
        self.get(name).copied()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot bind the DNS responder to {addr}/{protocol}")]
    Bind {
        addr: SocketAddr,
        protocol: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The responder's sockets, bound and not yet serving. They are plain std sockets until
/// [`DnsServer::serve`], so binding needs no runtime.
#[derive(Debug)]
pub struct DnsServer {
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
    addr: SocketAddr,
}

impl DnsServer {
    /// Binds UDP and TCP at `addr` (the network's gateway) with SO_REUSEADDR and
    /// SO_REUSEPORT, so the supervisors of every container on the network can all bind it;
    /// the kernel spreads queries among them and a dead one's socket simply goes.
    pub fn bind(addr: SocketAddr) -> Result<DnsServer, DnsError> {
        let error = |addr, protocol| move |source| DnsError::Bind { addr, protocol, source };
        let tries = if addr.port() == 0 { PORT_ZERO_TRIES } else { 1 };
        let mut attempt = 1;
        loop {
            let udp = bind_shared(addr, SockType::Datagram).map_err(error(addr, "udp"))?;
            let udp = std::net::UdpSocket::from(udp);
            let local = udp.local_addr().map_err(error(addr, "udp"))?;
            match bind_shared(local, SockType::Stream) {
                Ok(tcp) => return Ok(DnsServer { udp, tcp: tcp.into(), addr: local }),
                Err(source) if source.kind() == io::ErrorKind::AddrInUse && attempt < tries => {
                    attempt += 1;
                }
                Err(source) => return Err(error(local, "tcp")(source)),
            }
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers until dropped: A queries for names `names` knows are answered directly
    /// (AAAA or other types for a known name get NOERROR with no answers); every other
    /// query is relayed unchanged to the first upstream that answers, SERVFAIL if none
    /// does. With no upstreams at all (an internal network), such a name does not exist:
    /// NXDOMAIN, so that resolvers go on down their search list (musl stops at SERVFAIL). TCP queries are handled the same way, and a truncated upstream answer to one
    /// is asked again over TCP.
    pub async fn serve(self, names: Arc<dyn Names>, upstreams: Vec<SocketAddr>) {
        let udp = UdpSocket::from_std(self.udp);
        let tcp = TcpListener::from_std(self.tcp);
        let (udp, tcp) = match (udp, tcp) {
            (Ok(udp), Ok(tcp)) => (udp, tcp),
            (Err(error), _) | (_, Err(error)) => {
                tracing::warn!(addr = %self.addr, %error, "cannot serve DNS");
                return;
            }
        };
        let upstreams: Arc<[SocketAddr]> = upstreams.into();
        tokio::join!(
            serve_udp(udp, names.clone(), upstreams.clone()),
            serve_tcp(tcp, names, upstreams)
        );
    }
}

/// The nameservers of a resolv.conf text, as port-53 socket addresses (IPv4 and IPv6
/// entries; comments ignored). An IPv6 zone must be numeric (`fe80::1%2`); a named zone
/// would need the interface table and is skipped.
pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut upstreams = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        if let Some(addr) = words.next().and_then(parse_nameserver) {
            if !upstreams.contains(&addr) {
                upstreams.push(addr);
            }
        }
    }
    upstreams
}

fn parse_nameserver(text: &str) -> Option<SocketAddr> {
    let (ip, zone) = match text.split_once('%') {
        Some((ip, zone)) => (ip, Some(zone)),
        None => (text, None),
    };
    match (ip.parse::<IpAddr>().ok()?, zone) {
        (IpAddr::V4(ip), None) => Some(SocketAddr::from((ip, 53))),
        (IpAddr::V6(ip), None) => Some(SocketAddr::from((ip, 53))),
        (IpAddr::V6(ip), Some(zone)) => {
            Some(SocketAddr::V6(SocketAddrV6::new(ip, 53, 0, zone.parse().ok()?)))
        }
        (IpAddr::V4(_), Some(_)) => None,
    }
}

/// A socket bound to `addr` that other processes of the same user can bind as well.
fn bind_shared(addr: SocketAddr, kind: SockType) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
    let fd = socket::socket(family, kind, flags, None)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
    bind_ip(&fd, addr)?;
    if kind == SockType::Stream {
        socket::listen(&fd, Backlog::new(128)?)?;
    }
    Ok(fd)
}

fn bind_ip(fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    let addr = socket::SockaddrStorage::from(addr);
    Ok(socket::bind(fd.as_raw_fd(), &addr)?)
}

async fn serve_udp(socket: UdpSocket, names: Arc<dyn Names>, upstreams: Arc<[SocketAddr]>) {
    let socket = Arc::new(socket);
    let mut relays = JoinSet::new();
    // One byte more than the largest query taken, to see that one is too big.
    let mut buffer = vec![0u8; MAX_UDP_MESSAGE + 1];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buffer) => {
                let (len, client) = match received {
                    Ok(received) => received,
                    Err(error) => {
                        tracing::debug!(%error, "dns receive failed");
                        continue;
                    }
                };
                if len > MAX_UDP_MESSAGE {
                    continue;
                }
                let query = &buffer[..len];
                match decide(query, &*names) {
                    Action::Reply(reply) => {
                        if let Err(error) = socket.send_to(&reply, client).await {
                            tracing::debug!(%client, %error, "dns reply failed");
                        }
                    }
                    Action::Drop => {}
                    Action::Relay if relays.len() >= MAX_RELAYS => {
                        tracing::debug!(%client, "too many dns relays in flight; query dropped");
                    }
                    Action::Relay => {
                        let (query, socket, upstreams) =
                            (query.to_vec(), socket.clone(), upstreams.clone());
                        relays.spawn(async move {
                            let reply = relay(&query, &upstreams, false).await;
                            if let Err(error) = socket.send_to(&reply, client).await {
                                tracing::debug!(%client, %error, "dns reply failed");
                            }
                        });
                    }
                }
            }
            Some(_) = relays.join_next(), if !relays.is_empty() => {}
        }
    }
}

async fn serve_tcp(listener: TcpListener, names: Arc<dyn Names>, upstreams: Arc<[SocketAddr]>) {
    let mut clients = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((_, client)) if clients.len() >= MAX_TCP_CLIENTS => {
                    tracing::debug!(%client, "too many dns clients over tcp; connection closed");
                }
                Ok((stream, _)) => {
                    clients.spawn(serve_tcp_client(stream, names.clone(), upstreams.clone()));
                }
                Err(error) => {
                    tracing::debug!(%error, "dns accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = clients.join_next(), if !clients.is_empty() => {}
        }
    }
}

/// Queries over one TCP connection, each with its 2-byte length, answered in turn.
async fn serve_tcp_client(
    mut stream: TcpStream,
    names: Arc<dyn Names>,
    upstreams: Arc<[SocketAddr]>,
) {
    loop {
        let Ok(Ok(len)) = timeout(TCP_IDLE, stream.read_u16()).await else { return };
        let mut query = vec![0u8; usize::from(len)];
        let Ok(Ok(_)) = timeout(TCP_IDLE, stream.read_exact(&mut query)).await else { return };
        let reply = match decide(&query, &*names) {
            Action::Reply(reply) => reply,
            Action::Drop => return,
            Action::Relay => relay(&query, &upstreams, true).await,
        };
        let Ok(len) = u16::try_from(reply.len()) else { return };
        let framed = [&len.to_be_bytes()[..], &reply].concat();
        let Ok(Ok(())) = timeout(TCP_IDLE, stream.write_all(&framed)).await else { return };
    }
}

/// Relays `query` to each upstream in turn until one answers; SERVFAIL if none does, and
/// NXDOMAIN if there are none to ask. Over
/// TCP, a truncated UDP answer is asked again over TCP, which is why the client came.
async fn relay(query: &[u8], upstreams: &[SocketAddr], over_tcp: bool) -> Vec<u8> {
    if upstreams.is_empty() {
        return error_reply(query, NXDOMAIN);
    }
    for &upstream in upstreams {
        let answer = match timeout(UPSTREAM_TIMEOUT, ask_udp(query, upstream)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => {
                tracing::debug!(%upstream, %error, "dns upstream failed");
                continue;
            }
            Err(_) => {
                tracing::debug!(%upstream, "dns upstream timed out");
                continue;
            }
        };
        if over_tcp && flags(&answer) & TC != 0 {
            match timeout(UPSTREAM_TIMEOUT, ask_tcp(query, upstream)).await {
                Ok(Ok(full)) => return full,
                Ok(Err(error)) => {
                    tracing::debug!(%upstream, %error, "dns upstream over tcp failed")
                }
                Err(_) => tracing::debug!(%upstream, "dns upstream over tcp timed out"),
            }
        }
        return answer;
    }
    error_reply(query, SERVFAIL)
}

async fn ask_udp(query: &[u8], upstream: SocketAddr) -> io::Result<Vec<u8>> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buffer = vec![0u8; MAX_UDP_MESSAGE + 1];
    loop {
        let len = socket.recv(&mut buffer).await?;
        let answer = &buffer[..len];
        if !answers(answer, query) {
            continue;
        }
        if len > MAX_UDP_MESSAGE {
            // Too big to relay: tell the client to ask over TCP.
            return Ok(parse_query(query)
                .map(|query| reply(&query, TC, None))
                .unwrap_or_else(|_| error_reply(query, SERVFAIL)));
        }
        return Ok(answer.to_vec());
    }
}

async fn ask_tcp(query: &[u8], upstream: SocketAddr) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    let len = u16::try_from(query.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
    stream.write_all(&[&len.to_be_bytes()[..], query].concat()).await?;
    let mut answer = vec![0u8; usize::from(stream.read_u16().await?)];
    stream.read_exact(&mut answer).await?;
    if !answers(&answer, query) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "answer to another query"));
    }
    Ok(answer)
}

/// Whether `answer` is a response to `query`: a header, the same id, and QR set.
fn answers(answer: &[u8], query: &[u8]) -> bool {
    answer.len() >= HEADER_LEN && answer.get(..2) == query.get(..2) && flags(answer) & QR != 0
}

fn flags(message: &[u8]) -> u16 {
    message.get(2..4).map_or(0, |bytes| u16::from_be_bytes([bytes[0], bytes[1]]))
}

#[derive(Debug, PartialEq, Eq)]
enum Action {
    Reply(Vec<u8>),
    Relay,
    Drop,
}

/// What to do with a query: answer it here (a container name, or an error), relay it, or
/// drop it (no header to answer, or not a query at all).
fn decide(packet: &[u8], names: &dyn Names) -> Action {
    let query = match parse_query(packet) {
        Ok(query) => query,
        Err(Malformed::Ignore) => return Action::Drop,
        Err(Malformed::Format) => return Action::Reply(header_reply(packet, FORMERR)),
        Err(Malformed::Opcode) => return Action::Reply(header_reply(packet, NOTIMP)),
    };
    if query.qclass != CLASS_IN {
        return Action::Relay;
    }
    match lookup_key(&query.name).and_then(|name| names.lookup(&name)) {
        Some(ip) => {
            let ip = matches!(query.qtype, TYPE_A | TYPE_ANY).then_some(ip);
            Action::Reply(reply(&query, AA, ip))
        }
        None => Action::Relay,
    }
}

/// A query's one question. The name is kept in wire form without compression, in the
/// case the client sent (some resolvers check it), so it can be echoed at offset 12.
#[derive(Debug, PartialEq, Eq)]
struct Query {
    id: u16,
    flags: u16,
    name: Vec<u8>,
    qtype: u16,
    qclass: u16,
}

#[derive(Debug, PartialEq, Eq)]
enum Malformed {
    /// Shorter than a header, or a response: nothing to answer.
    Ignore,
    /// Answered with FORMERR.
    Format,
    /// Not a standard query: answered with NOTIMP.
    Opcode,
}

fn parse_query(packet: &[u8]) -> Result<Query, Malformed> {
    if packet.len() < HEADER_LEN {
        return Err(Malformed::Ignore);
    }
    let word = |at: usize| u16::from_be_bytes([packet[at], packet[at + 1]]);
    let (id, flags, questions) = (word(0), word(2), word(4));
    if flags & QR != 0 {
        return Err(Malformed::Ignore);
    }
    if flags & OPCODE != 0 {
        return Err(Malformed::Opcode);
    }
    if questions != 1 {
        return Err(Malformed::Format);
    }
    let (name, end) = read_name(packet, HEADER_LEN).ok_or(Malformed::Format)?;
    let fixed = packet.get(end..end + 4).ok_or(Malformed::Format)?;
    Ok(Query {
        id,
        flags,
        name,
        qtype: u16::from_be_bytes([fixed[0], fixed[1]]),
        qclass: u16::from_be_bytes([fixed[2], fixed[3]]),
    })
}

/// Reads the name at `at`, following compression pointers. Returns it in wire form without
/// pointers, and the offset just past the name where it sits.
fn read_name(packet: &[u8], mut at: usize) -> Option<(Vec<u8>, usize)> {
    let mut name = Vec::new();
    let mut end = None;
    let mut hops = 0;
    loop {
        let len = *packet.get(at)?;
        match len & 0xC0 {
            0x00 if len == 0 => {
                name.push(0);
                return Some((name, end.unwrap_or(at + 1)));
            }
            0x00 => {
                let label = packet.get(at + 1..at + 1 + usize::from(len))?;
                // The label, its length byte, and the root label still to come.
                if name.len() + 1 + label.len() + 1 > MAX_NAME_LEN {
                    return None;
                }
                name.push(len);
                name.extend_from_slice(label);
                at += 1 + usize::from(len);
            }
            0xC0 => {
                let low = *packet.get(at + 1)?;
                hops += 1;
                if hops > MAX_POINTER_HOPS {
                    return None;
                }
                end.get_or_insert(at + 2);
                at = (usize::from(len & 0x3F) << 8) | usize::from(low);
            }
            // 0x40 and 0x80: extended and reserved label types.
            _ => return None,
        }
    }
}

/// The name as [`Names`] takes it: lowercase labels joined by dots. None for the root and
/// for a name with bytes no container name has (a dot inside a label, say), which then
/// cannot be mistaken for one.
fn lookup_key(wire: &[u8]) -> Option<String> {
    let mut key = String::new();
    let mut at = 0;
    while let Some(&len) = wire.get(at) {
        if len == 0 {
            break;
        }
        let label = wire.get(at + 1..at + 1 + usize::from(len))?;
        if !label.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_') {
            return None;
        }
        if !key.is_empty() {
            key.push('.');
        }
        key.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
        at += 1 + usize::from(len);
    }
    (!key.is_empty()).then_some(key)
}

/// A response to `query` with its question, `extra` flags (AA, TC, an rcode) and at most
/// one A record, whose name points back at the question. At most 12 + 259 + 16 bytes.
fn reply(query: &Query, extra: u16, answer: Option<Ipv4Addr>) -> Vec<u8> {
    let flags = QR | RA | (query.flags & (OPCODE | RD)) | extra;
    let mut out = Vec::with_capacity(HEADER_LEN + query.name.len() + 4 + 16);
    for word in [query.id, flags, 1, u16::from(answer.is_some()), 0, 0] {
        out.extend_from_slice(&word.to_be_bytes());
    }
    out.extend_from_slice(&query.name);
    out.extend_from_slice(&query.qtype.to_be_bytes());
    out.extend_from_slice(&query.qclass.to_be_bytes());
    if let Some(ip) = answer {
        out.extend_from_slice(&[0xC0, HEADER_LEN as u8]);
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&TTL.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    out
}

/// An error response echoing the question when there is one, else the bare header.
fn error_reply(packet: &[u8], rcode: u16) -> Vec<u8> {
    match parse_query(packet) {
        Ok(query) => reply(&query, rcode, None),
        Err(_) => header_reply(packet, rcode),
    }
}

/// A bare header with `packet`'s id; `packet` may be anything at least a header long.
fn header_reply(packet: &[u8], rcode: u16) -> Vec<u8> {
    let flags = QR | RA | (flags(packet) & (OPCODE | RD)) | rcode;
    let mut out = packet.get(..2).unwrap_or(&[0, 0]).to_vec();
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut packet = Vec::new();
        for word in [id, RD, 1, 0, 0, 0] {
            packet.extend_from_slice(&word.to_be_bytes());
        }
        for label in name.split('.').filter(|label| !label.is_empty()) {
            packet.push(label.len() as u8);
            packet.extend_from_slice(label.as_bytes());
        }
        packet.push(0);
        packet.extend_from_slice(&qtype.to_be_bytes());
        packet.extend_from_slice(&CLASS_IN.to_be_bytes());
        packet
    }

    fn names() -> HashMap<String, Ipv4Addr> {
        HashMap::from([("web".to_string(), Ipv4Addr::new(10, 213, 0, 5))])
    }

    #[test]
    fn answers_a_known_name_keeping_the_clients_case() {
        let packet = query(0x1234, "WeB", TYPE_A);
        let Action::Reply(reply) = decide(&packet, &names()) else { panic!("not answered") };
        let question_end = packet.len();
        assert_eq!(reply[..2], [0x12, 0x34]);
        assert_eq!(flags(&reply), QR | AA | RD | RA);
        assert_eq!(reply[4..12], [0, 1, 0, 1, 0, 0, 0, 0]);
        assert_eq!(reply[12..question_end], packet[12..], "question echoed as sent");
        assert_eq!(
            reply[question_end..],
            [0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 10, 213, 0, 5],
            "A record pointing at the question"
        );
    }

    #[test]
    fn other_types_of_a_known_name_get_no_data() {
        let Action::Reply(reply) = decide(&query(7, "web", 28), &names()) else { panic!() };
        assert_eq!(flags(&reply) & 0xF, 0, "NOERROR");
        assert_eq!(reply[6..8], [0, 0], "no answers");
        let Action::Reply(reply) = decide(&query(7, "web", TYPE_ANY), &names()) else { panic!() };
        assert_eq!(reply[6..8], [0, 1], "ANY gets the address");
    }

    #[test]
    fn relays_what_it_does_not_know() {
        for packet in [
            query(1, "example.test", TYPE_A),
            query(1, "web.example", TYPE_A),
            query(1, "", TYPE_A),
            // CHAOS class, for a known name.
            [&query(1, "web", TYPE_A)[..19], &[0u8, 3][..]].concat(),
            // One label "w.eb", which is not the name "w.eb".
            [&query(1, "", TYPE_A)[..12], &b"\x04w.eb\x00\x00\x01\x00\x01"[..]].concat(),
        ] {
            let names = HashMap::from([("w.eb".to_string(), Ipv4Addr::LOCALHOST)]);
            assert_eq!(decide(&packet, &names), Action::Relay, "{packet:?}");
            assert_eq!(decide(&packet, &self::names()), Action::Relay, "{packet:?}");
        }
    }

    #[test]
    fn follows_compression_pointers_within_limits() {
        // "web" at 12, then a name at 17 that is "www" + pointer to 12.
        let mut packet = vec![0; 12];
        packet.extend_from_slice(b"\x03web\x00\x03www\xC0\x0C");
        assert_eq!(read_name(&packet, 12), Some((b"\x03web\x00".to_vec(), 17)));
        assert_eq!(read_name(&packet, 17), Some((b"\x03www\x03web\x00".to_vec(), 23)));

        let cases: &[(&str, Vec<u8>)] = &[
            ("pointer to itself", b"\xC0\x0C".to_vec()),
            ("two pointers in a loop", b"\xC0\x0E\xC0\x0C".to_vec()),
            ("label then loop", b"\x01a\xC0\x0C".to_vec()),
            ("pointer past the end", b"\xC0\xFF".to_vec()),
            ("half a pointer", b"\xC0".to_vec()),
            ("truncated label", b"\x05ab".to_vec()),
            ("no root label", b"\x03web".to_vec()),
            ("extended label type", b"\x41abc\x00".to_vec()),
            ("reserved label type", b"\x81abc\x00".to_vec()),
            ("nothing", Vec::new()),
        ];
        for (what, name) in cases {
            let packet = [&[0u8; 12][..], name].concat();
            assert_eq!(read_name(&packet, 12), None, "{what}");
        }
    }

    #[test]
    fn names_longer_than_255_bytes_are_refused() {
        let label = [&[63u8][..], &[b'a'; 63]].concat();
        // Four 63-byte labels: 256 bytes with the root label.
        let long = [&[0u8; 12][..], &label.repeat(4), &[0]].concat();
        assert_eq!(read_name(&long, 12), None);
        // Three of them and one of 61: exactly 255.
        let fits = [&[0u8; 12][..], &label.repeat(3), &[61], &[b'a'; 61], &[0]].concat();
        assert_eq!(read_name(&fits, 12).map(|(name, _)| name.len()), Some(255));
        // A 64-byte label is an extended label type.
        let oversize = [&[0u8; 12][..], &[64], &[b'a'; 64], &[0]].concat();
        assert_eq!(read_name(&oversize, 12), None);
    }

    #[test]
    fn malformed_queries_get_formerr_or_nothing() {
        let good = query(0xBEEF, "web", TYPE_A);
        assert_eq!(decide(&good[..11], &names()), Action::Drop, "no header");
        let mut response = good.clone();
        response[2] |= 0x80;
        assert_eq!(decide(&response, &names()), Action::Drop, "a response, not a query");

        let formerr = |packet: &[u8]| match decide(packet, &names()) {
            Action::Reply(reply) => reply[..2] == [0xBE, 0xEF] && flags(&reply) & 0xF == FORMERR,
            _ => false,
        };
        assert!(formerr(&good[..12]), "header only");
        assert!(formerr(&good[..good.len() - 1]), "type and class cut");
        let mut two = good.clone();
        two[5] = 2;
        assert!(formerr(&two), "two questions");
        let mut none = good.clone();
        none[5] = 0;
        assert!(formerr(&none), "no question");
        let looped = [&good[..12], b"\xC0\x0C\x00\x01\x00\x01"].concat();
        assert!(formerr(&looped), "pointer loop");

        let mut update = good.clone();
        update[2] |= 5 << 3;
        let Action::Reply(reply) = decide(&update, &names()) else { panic!() };
        assert_eq!(flags(&reply) & 0xF, NOTIMP);
    }

    #[test]
    fn never_panics_on_mangled_packets() {
        let seeds = [
            query(1, "web", TYPE_A),
            query(2, "a.very.long.name.example.test", 28),
            [&query(3, "", TYPE_A)[..12], b"\x01a\xC0\x0E\x01b\xC0\x0C\x00\x01\x00\x01"].concat(),
        ];
        // xorshift: deterministic, no dependency.
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let names = names();
        for seed in &seeds {
            for len in 0..=seed.len() {
                let _ = decide(&seed[..len], &names);
            }
            for _ in 0..20_000 {
                let mut packet = seed.clone();
                for _ in 0..(random() % 4 + 1) {
                    let at = (random() % packet.len() as u64) as usize;
                    packet[at] = random() as u8;
                }
                packet.truncate((random() % (packet.len() as u64 + 1)) as usize);
                if let Action::Reply(reply) = decide(&packet, &names) {
                    assert!(reply.len() <= 512, "{packet:?}");
                }
            }
        }
    }

    #[test]
    fn servfail_echoes_the_question() {
        let packet = query(9, "example.test", TYPE_A);
        let reply = error_reply(&packet, SERVFAIL);
        assert_eq!(flags(&reply), QR | RD | RA | SERVFAIL);
        assert_eq!(reply[4..6], [0, 1]);
        assert_eq!(reply[12..], packet[12..]);
    }

    #[test]
    fn reads_nameservers_from_resolv_conf() {
        let text = "\
# Generated\n\
nameserver 127.0.0.53\n\
nameserver 127.0.0.53\n\
; nameserver 10.0.0.1\n\
nameserver 192.0.2.1 # office\n\
nameserver   2001:db8::1\n\
nameserver fe80::1%2\n\
nameserver fe80::1%eth0\n\
nameserver 192.0.2.2%3\n\
nameserver not-an-address\n\
nameserver\n\
search example.test\n\
options edns0 trust-ad\n";
        let expected: Vec<SocketAddr> = vec![
            "127.0.0.53:53".parse().unwrap(),
            "192.0.2.1:53".parse().unwrap(),
            "[2001:db8::1]:53".parse().unwrap(),
            "[fe80::1%2]:53".parse().unwrap(),
        ];
        assert_eq!(upstreams_from_resolv_conf(text), expected);
    }
}
