//! Published ports as a userspace proxy in the container's supervisor. The sockets die with
//! the supervisor, so a killed one leaves nothing to clean; a port in use fails the bind
//! with a plain error instead of silently shadowing a host service (as DNAT would).

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::task::{AbortHandle, JoinSet};

use crate::ports::{PortMapping, Protocol};

/// A UDP flow with no datagram either way for this long is forgotten.
const UDP_IDLE: Duration = Duration::from_secs(30);
/// Most UDP clients relayed at once per port; more are dropped, so a flood of source
/// addresses cannot use up the supervisor's file descriptors.
const UDP_MAX_FLOWS: usize = 1024;
/// Largest UDP payload over IPv4.
const UDP_MAX_DATAGRAM: usize = 65507;
/// A failing accept (out of file descriptors) is retried after this pause, not in a spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

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
        Ok(PublishedPorts { bound, sockets })
    }

    /// The mappings as bound: each host port is the real one, never 0.
    pub fn bound(&self) -> &[PortMapping] {
        &self.bound
    }

    /// Relays each mapping to `target:container_port` until the returned future is dropped
    /// (which ends every relay and connection with it).
    pub async fn serve(self, target: Ipv4Addr) {
        let mut relays = JoinSet::new();
        for (mapping, socket) in self.bound.iter().zip(self.sockets) {
            let to = SocketAddrV4::new(target, mapping.container_port);
            match socket {
                Bound::Tcp(listener) => relays.spawn(relay_tcp(listener, to)),
                Bound::Udp(socket) => relays.spawn(relay_udp(socket, to, UDP_IDLE)),
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

async fn relay_tcp(listener: TcpListener, target: SocketAddrV4) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    connections.spawn(relay_connection(client, peer, target));
                }
                Err(error) => {
                    tracing::warn!(%target, %error, "cannot accept a connection to relay");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                }
            },
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One client connection. `copy_bidirectional` shuts down the write side of one stream
/// when the other reaches EOF and keeps copying the other way, so half-closes pass through.
async fn relay_connection(mut client: TcpStream, peer: SocketAddr, target: SocketAddrV4) {
    let mut upstream = match TcpStream::connect(target).await {
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
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.replies.abort();
    }
}

async fn relay_udp(socket: UdpSocket, target: SocketAddrV4, idle: Duration) {
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
                if !flows.contains_key(&client) {
                    if flows.len() >= UDP_MAX_FLOWS {
                        tracing::debug!(%client, %target, "too many udp flows; datagram dropped");
                        continue;
                    }
                    match open_flow(&socket, client, target, &mut replies, millis).await {
                        Ok(flow) => flows.insert(client, flow),
                        Err(error) => {
                            tracing::debug!(%client, %target, %error, "cannot open a udp flow");
                            continue;
                        }
                    };
                }
                if let Some(flow) = flows.get(&client) {
                    flow.last_active.store(millis(), Ordering::Relaxed);
                    if let Err(error) = flow.upstream.send(&buffer[..len]).await {
                        tracing::debug!(%client, %target, %error, "udp send to the container failed");
                    }
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
    Ok(Flow { upstream, last_active, replies: task })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flow idle past the timeout is dropped: the next datagram of the same client
    /// reaches the target from a new socket.
    #[tokio::test]
    async fn idle_udp_flows_are_dropped() {
        let target = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let target_addr = match target.local_addr().unwrap() {
            SocketAddr::V4(addr) => addr,
            SocketAddr::V6(_) => unreachable!(),
        };
        let proxy = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = proxy.local_addr().unwrap();
        let idle = Duration::from_millis(200);
        let relay = tokio::spawn(relay_udp(proxy, target_addr, idle));
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
}
