//! Published ports as a userspace proxy in the container's supervisor. The sockets die with
//! the supervisor, so a killed one leaves nothing to clean; a port in use fails the bind
//! with a plain error instead of silently shadowing a host service (as DNAT would).

use std::collections::hash_map::{Entry, HashMap};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{AbortHandle, JoinSet};

use crate::ports::{PortMapping, Protocol};

/// Most TCP connections relayed at once by one supervisor, over all its published ports;
/// more are accepted and closed at once. Each holds two descriptors (client and container
/// side), so 4096 take 8192: well under the supervisor's limit once raised to the usual
/// hard limit (20000 and more), leaving room for its DNS relays, control socket and VM.
/// Busy HTTP clients open tens of connections, not thousands. Lowered to a quarter of the
/// descriptor limit where that is smaller (a hard limit of 1024).
const TCP_MAX_CONNECTIONS: usize = 4096;
/// Most UDP clients relayed at once by one supervisor, over all its published ports: one
/// socket each, so a flood of source addresses cannot use up the descriptors. 1024 clients
/// seen within [`UDP_IDLE`] is plenty for a DNS or game server in a container. Lowered to a
/// sixteenth of the descriptor limit where that is smaller.
const UDP_MAX_FLOWS: usize = 1024;
/// A connection to the container not made by then is given up and its client closed: a
/// container that never answers (hung VM, SYNs dropped) would otherwise hold a connection
/// slot for the kernel's two minutes of SYN retries. A running VM on this host answers in
/// milliseconds, even under TCG.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A UDP flow with no datagram either way for this long is forgotten.
const UDP_IDLE: Duration = Duration::from_secs(30);
/// Largest UDP payload over IPv4.
const UDP_MAX_DATAGRAM: usize = 65507;
/// A failing accept (out of descriptors: EMFILE, ENFILE) is retried after this pause: the
/// connection stays queued, so retrying at once would fail again in a spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);
/// Refused connections, dropped flows and failing accepts come in floods: each kind is
/// logged at most once per this long, with how many were not.
const LOG_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(
        "cannot publish {addr}/{protocol}: address already in use (another program or container holds the port; choose another host port)"
    )]
    InUse { addr: SocketAddrV4, protocol: Protocol },
    #[error(
        "cannot publish {addr}/{protocol}: permission denied (host ports below 1024 need root, or a lower net.ipv4.ip_unprivileged_port_start)"
    )]
    Denied { addr: SocketAddrV4, protocol: Protocol },
    #[error("cannot publish {addr}/{protocol}: {ip} is not an address of this host", ip = addr.ip())]
    NotLocal { addr: SocketAddrV4, protocol: Protocol },
    #[error("cannot publish {addr}/{protocol}")]
    Bind {
        addr: SocketAddrV4,
        protocol: Protocol,
        #[source]
        source: io::Error,
    },
}

/// The host sockets of a container's published ports, bound and waiting to relay.
#[derive(Debug)]
pub struct PublishedPorts {
    bound: Vec<PortMapping>,
    sockets: Vec<Bound>,
    limits: Limits,
}

/// What the relays of one [`PublishedPorts`] (one supervisor) may hold at once, together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Limits {
    tcp_connections: usize,
    udp_flows: usize,
    connect_timeout: Duration,
}

impl Limits {
    /// The limits for a process that may open `open_files` descriptors: half of them at
    /// most for TCP (two per connection), a sixteenth for UDP, and never above the caps.
    fn for_open_files(open_files: u64) -> Limits {
        let share = |divisor: u64, cap: usize| {
            usize::try_from(open_files / divisor).unwrap_or(usize::MAX).clamp(1, cap)
        };
        Limits {
            tcp_connections: share(4, TCP_MAX_CONNECTIONS),
            udp_flows: share(16, UDP_MAX_FLOWS),
            connect_timeout: CONNECT_TIMEOUT,
        }
    }
}

/// RLIMIT_NOFILE's soft limit (what the supervisor raised it to); unknown counts as plenty.
fn open_files_limit() -> u64 {
    use nix::sys::resource::{getrlimit, Resource, RLIM_INFINITY};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) if soft != RLIM_INFINITY => soft,
        _ => u64::MAX,
    }
}

#[derive(Debug)]
enum Bound {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl PublishedPorts {
    /// Binds every mapping now (before the VM boots), so a port in use fails the start with
    /// a clear error. Port 0 gets a free port from the kernel; [`PublishedPorts::bound`] then
    /// reports the real one.
    pub async fn bind(mappings: &[PortMapping]) -> Result<PublishedPorts, ProxyError> {
        let mut bound = Vec::with_capacity(mappings.len());
        let mut sockets = Vec::with_capacity(mappings.len());
        for mapping in mappings {
            let addr = SocketAddrV4::new(mapping.host_ip, mapping.host_port);
            let error = |source: io::Error| bind_error(addr, mapping.protocol, source);
            let (socket, local) = match mapping.protocol {
                Protocol::Tcp => {
                    let listener = listen_tcp(addr).map_err(error)?;
                    let local = listener.local_addr().map_err(error)?;
                    (Bound::Tcp(listener), local)
                }
                Protocol::Udp => {
                    let socket = UdpSocket::bind(addr).await.map_err(error)?;
                    let local = socket.local_addr().map_err(error)?;
                    (Bound::Udp(socket), local)
                }
            };
            bound.push(PortMapping { host_port: local.port(), ..*mapping });
            sockets.push(socket);
        }
        let limits = Limits::for_open_files(open_files_limit());
        Ok(PublishedPorts { bound, sockets, limits })
    }

    /// For tests: other limits than the supervisor's (a few connections and flows, a short
    /// connect timeout), shared by all the mappings as the real ones are.
    #[doc(hidden)]
    pub fn with_limits(
        self,
        tcp_connections: usize,
        udp_flows: usize,
        connect_timeout: Duration,
    ) -> PublishedPorts {
        PublishedPorts { limits: Limits { tcp_connections, udp_flows, connect_timeout }, ..self }
    }

    /// The mappings as bound: each host port is the real one, never 0.
    pub fn bound(&self) -> &[PortMapping] {
        &self.bound
    }

    /// Relays each mapping to `target:container_port` until the returned future is dropped
    /// (which ends every relay and connection with it). The mappings share one budget of
    /// connections and flows, so a flood on one port cannot use up the supervisor's
    /// descriptors.
    pub async fn serve(self, target: Ipv4Addr) {
        let budget = Arc::new(Budget::new(self.limits));
        let mut relays = JoinSet::new();
        for (mapping, socket) in self.bound.iter().zip(self.sockets) {
            let to = SocketAddrV4::new(target, mapping.container_port);
            let budget = budget.clone();
            match socket {
                Bound::Tcp(listener) => relays.spawn(relay_tcp(listener, to, budget)),
                Bound::Udp(socket) => relays.spawn(relay_udp(socket, to, UDP_IDLE, budget)),
            };
        }
        while relays.join_next().await.is_some() {}
        // Nothing left to relay (no mappings): stay pending like a server with no work.
        std::future::pending::<()>().await
    }
}

/// SO_REUSEADDR lets a just-stopped container's port (its connections in TIME_WAIT) be
/// taken again at once; no SO_REUSEPORT, which would let two binds share a port silently.
fn listen_tcp(addr: SocketAddrV4) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr.into())?;
    socket.listen(1024)
}

fn bind_error(addr: SocketAddrV4, protocol: Protocol, source: io::Error) -> ProxyError {
    match source.kind() {
        io::ErrorKind::AddrInUse => ProxyError::InUse { addr, protocol },
        io::ErrorKind::PermissionDenied => ProxyError::Denied { addr, protocol },
        io::ErrorKind::AddrNotAvailable => ProxyError::NotLocal { addr, protocol },
        _ => ProxyError::Bind { addr, protocol, source },
    }
}

/// The slots all relays of one [`PublishedPorts`] take from: a connection or flow holds
/// one until it ends.
#[derive(Debug)]
struct Budget {
    limits: Limits,
    connections: Arc<Semaphore>,
    flows: Arc<Semaphore>,
    refused_connections: Throttle,
    dropped_flows: Throttle,
}

impl Budget {
    fn new(limits: Limits) -> Budget {
        Budget {
            limits,
            connections: Arc::new(Semaphore::new(limits.tcp_connections)),
            flows: Arc::new(Semaphore::new(limits.udp_flows)),
            refused_connections: Throttle::default(),
            dropped_flows: Throttle::default(),
        }
    }
}

/// Lets a line that comes in floods be logged at most once per [`LOG_EVERY`].
#[derive(Debug, Default)]
struct Throttle(Mutex<ThrottleState>);

#[derive(Debug, Default)]
struct ThrottleState {
    last: Option<Instant>,
    held_back: u64,
}

impl Throttle {
    /// `Some(held_back)` when this occurrence is to be logged, `held_back` being how many
    /// were not since the last line; `None` when it is to be counted only.
    fn pass(&self) -> Option<u64> {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if state.last.is_some_and(|last| now.duration_since(last) < LOG_EVERY) {
            state.held_back += 1;
            return None;
        }
        state.last = Some(now);
        Some(std::mem::take(&mut state.held_back))
    }
}

async fn relay_tcp(listener: TcpListener, target: SocketAddrV4, budget: Arc<Budget>) {
    let mut connections = JoinSet::new();
    let failures = Throttle::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => match budget.connections.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let timeout = budget.limits.connect_timeout;
                        connections.spawn(relay_connection(client, peer, target, timeout, slot));
                    }
                    // Closed at once rather than left queued: the backlog would fill and
                    // the listener stop answering even when slots free up.
                    Err(_) => {
                        drop(client);
                        if let Some(unlogged) = budget.refused_connections.pass() {
                            let limit = budget.limits.tcp_connections;
                            tracing::debug!(%peer, %target, limit, unlogged, "too many connections relayed; closing this one");
                        }
                    }
                },
                Err(error) => {
                    if let Some(unlogged) = failures.pass() {
                        tracing::warn!(%target, %error, unlogged, "cannot accept a connection to relay");
                    }
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                }
            },
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One client connection, holding its `_slot` of the budget until it ends.
/// `copy_bidirectional` shuts down the write side of one stream when the other reaches EOF
/// and keeps copying the other way, so half-closes pass through.
async fn relay_connection(
    mut client: TcpStream,
    peer: SocketAddr,
    target: SocketAddrV4,
    connect_timeout: Duration,
    _slot: OwnedSemaphorePermit,
) {
    let connect = tokio::time::timeout(connect_timeout, TcpStream::connect(target));
    let connected = connect.await.unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()));
    let mut upstream = match connected {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::debug!(%peer, %target, %error, "cannot reach the container; closing the client");
            return;
        }
    };
    // Each side is relayed as it arrives: Nagle on the proxy would only add delay.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((sent, received)) => {
            tracing::debug!(%peer, %target, sent, received, "connection relayed")
        }
        Err(error) => tracing::debug!(%peer, %target, %error, "connection relay ended"),
    }
}

/// A UDP client's flow: a socket connected to the target, so its replies come back on it
/// alone and go back to that client.
struct Flow {
    upstream: Arc<UdpSocket>,
    /// Milliseconds since the relay started, at the last datagram either way.
    last_active: Arc<AtomicU64>,
    replies: AbortHandle,
    /// The flow's place in the budget, given back when the flow is forgotten.
    _slot: OwnedSemaphorePermit,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.replies.abort();
    }
}

async fn relay_udp(socket: UdpSocket, target: SocketAddrV4, idle: Duration, budget: Arc<Budget>) {
    let socket = Arc::new(socket);
    let start = Instant::now();
    let millis = move || start.elapsed().as_millis() as u64;
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut replies = JoinSet::new();
    let mut sweep = tokio::time::interval((idle / 4).max(Duration::from_millis(10)));
    let mut buffer = vec![0u8; UDP_MAX_DATAGRAM];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buffer) => {
                let (len, client) = match received {
                    Ok(received) => received,
                    Err(error) => {
                        tracing::debug!(%target, %error, "udp receive failed");
                        continue;
                    }
                };
                let flow = match flows.entry(client) {
                    Entry::Occupied(entry) => entry.into_mut(),
                    Entry::Vacant(entry) => {
                        let Ok(slot) = budget.flows.clone().try_acquire_owned() else {
                            if let Some(unlogged) = budget.dropped_flows.pass() {
                                let limit = budget.limits.udp_flows;
                                tracing::debug!(%client, %target, limit, unlogged, "too many udp flows; datagram dropped");
                            }
                            continue;
                        };
                        match open_flow(&socket, client, target, &mut replies, millis, slot).await {
                            Ok(flow) => entry.insert(flow),
                            Err(error) => {
                                tracing::debug!(%client, %target, %error, "cannot open a udp flow");
                                continue;
                            }
                        }
                    }
                };
                flow.last_active.store(millis(), Ordering::Relaxed);
                if let Err(error) = flow.upstream.send(&buffer[..len]).await {
                    tracing::debug!(%client, %target, %error, "udp send to the container failed");
                }
            }
            _ = sweep.tick() => {
                let now = millis();
                let idle = idle.as_millis() as u64;
                flows.retain(|_, flow| {
                    now.saturating_sub(flow.last_active.load(Ordering::Relaxed)) < idle
                });
            }
            Some(_) = replies.join_next(), if !replies.is_empty() => {}
        }
    }
}

async fn open_flow(
    socket: &Arc<UdpSocket>,
    client: SocketAddr,
    target: SocketAddrV4,
    replies: &mut JoinSet<()>,
    millis: impl Fn() -> u64 + Send + 'static,
    slot: OwnedSemaphorePermit,
) -> io::Result<Flow> {
    let upstream = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).await?;
    upstream.connect(target).await?;
    let upstream = Arc::new(upstream);
    let last_active = Arc::new(AtomicU64::new(millis()));
    let task = {
        let (upstream, socket, last_active) =
            (upstream.clone(), socket.clone(), last_active.clone());
        replies.spawn(async move {
            loop {
                if upstream.readable().await.is_err() {
                    return;
                }
                // Allocated per datagram: an idle flow holds no buffer.
                let mut datagram = Vec::with_capacity(UDP_MAX_DATAGRAM);
                match upstream.try_recv_buf(&mut datagram) {
                    Ok(_) => {
                        last_active.store(millis(), Ordering::Relaxed);
                        if let Err(error) = socket.send_to(&datagram, client).await {
                            tracing::debug!(%client, %error, "udp reply to the client failed");
                        }
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    // ECONNREFUSED: nothing listens in the container (yet); keep the flow.
                    Err(error) => {
                        tracing::debug!(%client, %error, "udp receive from the container failed")
                    }
                }
            }
        })
    };
    Ok(Flow { upstream, last_active, replies: task, _slot: slot })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(udp_flows: usize) -> Arc<Budget> {
        Arc::new(Budget::new(Limits { udp_flows, ..Limits::for_open_files(u64::MAX) }))
    }

    fn v4(addr: SocketAddr) -> SocketAddrV4 {
        match addr {
            SocketAddr::V4(addr) => addr,
            SocketAddr::V6(_) => unreachable!("bound on 127.0.0.1"),
        }
    }

    #[test]
    fn limits_follow_the_descriptor_limit_up_to_the_caps() {
        let plenty = Limits::for_open_files(20000);
        assert_eq!(plenty.tcp_connections, TCP_MAX_CONNECTIONS);
        assert_eq!(plenty.udp_flows, UDP_MAX_FLOWS);
        assert_eq!(plenty.connect_timeout, CONNECT_TIMEOUT);
        assert_eq!(Limits::for_open_files(u64::MAX), plenty);
        // A soft limit left at 1024: both together take 512 + 64 descriptors at most.
        let scarce = Limits::for_open_files(1024);
        assert_eq!((scarce.tcp_connections, scarce.udp_flows), (256, 64));
        let none = Limits::for_open_files(0);
        assert_eq!((none.tcp_connections, none.udp_flows), (1, 1));
    }

    #[test]
    fn a_throttle_lets_one_line_through_and_counts_the_rest() {
        let throttle = Throttle::default();
        assert_eq!(throttle.pass(), Some(0));
        assert_eq!(throttle.pass(), None);
        assert_eq!(throttle.pass(), None);
        throttle.0.lock().unwrap().last = Some(Instant::now() - LOG_EVERY);
        assert_eq!(throttle.pass(), Some(2), "the lines held back are counted");
        assert_eq!(throttle.pass(), None);
    }

    /// A target socket and a relay to it on 127.0.0.1 with room for `flows` flows: the
    /// target, the relay's address, and its task.
    async fn udp_relay(
        idle: Duration,
        flows: usize,
    ) -> (UdpSocket, SocketAddr, tokio::task::JoinHandle<()>) {
        let target = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let target_addr = v4(target.local_addr().unwrap());
        let proxy = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = proxy.local_addr().unwrap();
        let relay = tokio::spawn(relay_udp(proxy, target_addr, idle, budget(flows)));
        (target, proxy_addr, relay)
    }

    /// A flow idle past the timeout is dropped: the next datagram of the same client
    /// reaches the target from a new socket.
    #[tokio::test]
    async fn idle_udp_flows_are_dropped() {
        let idle = Duration::from_millis(200);
        let (target, proxy_addr, relay) = udp_relay(idle, UDP_MAX_FLOWS).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut buffer = [0u8; 16];

        client.send_to(b"one", proxy_addr).await.unwrap();
        let (_, first) = target.recv_from(&mut buffer).await.unwrap();
        client.send_to(b"two", proxy_addr).await.unwrap();
        let (_, again) = target.recv_from(&mut buffer).await.unwrap();
        assert_eq!(first, again, "a busy flow keeps its socket");

        tokio::time::sleep(idle * 3).await;
        client.send_to(b"three", proxy_addr).await.unwrap();
        let (_, after) = target.recv_from(&mut buffer).await.unwrap();
        assert_ne!(first, after, "an idle flow is dropped");
        relay.abort();
    }

    /// With room for one flow, a second client is dropped until the first one's flow has
    /// gone idle and given its slot back.
    #[tokio::test]
    async fn an_idle_flow_gives_its_slot_back() {
        let idle = Duration::from_millis(200);
        let (target, proxy_addr, relay) = udp_relay(idle, 1).await;
        let first = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let second = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut buffer = [0u8; 16];

        first.send_to(b"first", proxy_addr).await.unwrap();
        let (len, _) = target.recv_from(&mut buffer).await.unwrap();
        assert_eq!(&buffer[..len], b"first");
        second.send_to(b"dropped", proxy_addr).await.unwrap();
        // Sent after the dropped one on the same path: it arrives first only if the other
        // was dropped.
        first.send_to(b"first again", proxy_addr).await.unwrap();
        let (len, _) = target.recv_from(&mut buffer).await.unwrap();
        assert_eq!(&buffer[..len], b"first again", "the second client is over the budget");

        tokio::time::sleep(idle * 3).await;
        second.send_to(b"second", proxy_addr).await.unwrap();
        let (len, _) = target.recv_from(&mut buffer).await.unwrap();
        assert_eq!(&buffer[..len], b"second", "the idle flow's slot is free again");
        relay.abort();
    }
}
