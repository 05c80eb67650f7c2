//! The agent channel: vsock streams over a virtio-serial port. vessel-init plays the part
//! the guest kernel's vsock driver would play: connection requests and responses, data
//! within the peer's credit, shutdown and reset, on the packets vessel-vsock expects
//! (`vessel_proto::vsock_packet`). A serial port, unlike a vhost-user vsock device, lets
//! QEMU save the VM and restore copies of it (docs/warm-start.md).
//!
//! One task reads the port and hands each packet to the connection it names; every
//! packet the guest sends goes through one queue to one writer task, so packets never
//! interleave on the byte stream.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use vessel_proto::serial;
use vessel_proto::vsock_packet::{
    take_packets, Header, GUEST_CID, HEADER_LEN, HOST_CID, MAX_PAYLOAD, OP_CREDIT_REQUEST,
    OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV,
    SHUTDOWN_SEND, TYPE_STREAM,
};

/// What each connection may hold of the host's data that the agent has not read yet.
const BUF_ALLOC: u32 = 256 * 1024;
/// Read this much since the last report and the host hears of it: below `BUF_ALLOC`, so a
/// host that ran out of credit always hears once the agent has read everything.
const CREDIT_REPORT: u32 = BUF_ALLOC / 4;
/// Ports for connections the guest opens (Linux's ephemeral range starts here as well).
const FIRST_LOCAL_PORT: u32 = 49_152;
/// While the host end is not connected the port reads as closed: look again this often.
const UNCONNECTED_POLL: Duration = Duration::from_millis(2);

/// The open channel; cheap to clone.
#[derive(Clone, Debug)]
pub struct Channel {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Whole packets, in the order they must reach the host.
    out: mpsc::UnboundedSender<Vec<u8>>,
}

#[derive(Debug, Default)]
struct State {
    conns: HashMap<u64, Conn>,
    /// (guest port, host port) → connection: how packets find theirs.
    by_ports: HashMap<(u32, u32), u64>,
    listeners: HashMap<u32, mpsc::UnboundedSender<Stream>>,
    next_id: u64,
    next_local_port: u32,
}

#[derive(Debug)]
struct Conn {
    local_port: u32,
    peer_port: u32,
    connected: bool,
    /// The host reset it (or refused it): reads and writes fail.
    reset: bool,
    /// The host sends no more: reads end once `rx` is empty.
    peer_done_sending: bool,
    /// The host takes no more, or we shut our sending down: writes fail.
    send_closed: bool,
    rx: VecDeque<u8>,
    read_waker: Option<Waker>,
    /// A writer out of credit, or a connect in progress.
    write_waker: Option<Waker>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    tx_cnt: u32,
    fwd_cnt: u32,
    fwd_cnt_reported: u32,
}

impl Conn {
    fn new(local_port: u32, peer_port: u32) -> Conn {
        Conn {
            local_port,
            peer_port,
            connected: false,
            reset: false,
            peer_done_sending: false,
            send_closed: false,
            rx: VecDeque::new(),
            read_waker: None,
            write_waker: None,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_reported: 0,
        }
    }

    fn credit(&self) -> u32 {
        self.peer_buf_alloc.saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    /// A packet of this connection, with our credit in it.
    fn packet(&mut self, op: u16, flags: u32, payload: &[u8]) -> Vec<u8> {
        let header = Header {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: payload.len() as u32,
            kind: TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        };
        self.fwd_cnt_reported = self.fwd_cnt;
        let mut packet = Vec::with_capacity(HEADER_LEN + payload.len());
        packet.extend_from_slice(&header.encode());
        packet.extend_from_slice(payload);
        packet
    }

    fn wake_all(&mut self) {
        for waker in [self.read_waker.take(), self.write_waker.take()].into_iter().flatten() {
            waker.wake();
        }
    }
}

impl Channel {
    /// Opens the agent's serial port and waits for the host's hello; its random bytes go
    /// to the kernel's generator before this returns.
    pub async fn open() -> io::Result<Channel> {
        let path = find_port().await?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|err| io::Error::new(err.kind(), format!("open {}: {err}", path.display())))?;
        // SAFETY: the AsyncFd owns the file, so it stays open while it is registered.
        let port =
            unsafe { AsyncFd::register(file) }.map_err(|err| io::Error::other(err.to_string()))?;
        let port = Arc::new(port);
        let mut hello = [0u8; serial::HELLO_LEN];
        let mut got = 0;
        while got < hello.len() {
            got += read_port(&port, &mut hello[got..]).await?;
        }
        let entropy = serial::parse_hello(&hello).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "the host's first bytes are no hello")
        })?;
        crate::entropy::add_and_reseed(&entropy)?;
        let (out, queue) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(State { next_local_port: FIRST_LOCAL_PORT, ..State::default() }),
            out,
        });
        tokio::spawn(write_packets(port.clone(), queue));
        tokio::spawn(read_packets(port, shared.clone()));
        Ok(Channel { shared })
    }

    /// Accepts connections the host opens to `port`.
    pub fn listen(&self, port: u32) -> io::Result<Listener> {
        let mut state = self.shared.lock();
        if state.listeners.contains_key(&port) {
            return Err(io::Error::new(io::ErrorKind::AddrInUse, format!("port {port}")));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        state.listeners.insert(port, tx);
        Ok(Listener { accepted: tokio::sync::Mutex::new(rx) })
    }

    /// Connects to the host's `port`.
    pub async fn connect(&self, port: u32) -> io::Result<Stream> {
        let id = {
            let mut state = self.shared.lock();
            let local_port = state.free_local_port(port)?;
            let id = state.insert(Conn::new(local_port, port));
            let conn = state.conns.get_mut(&id).expect("just inserted");
            let request = conn.packet(OP_REQUEST, 0, &[]);
            self.shared.send(request);
            id
        };
        let stream = Stream { shared: self.shared.clone(), id };
        std::future::poll_fn(|cx| {
            let mut state = self.shared.lock();
            let Some(conn) = state.conns.get_mut(&id) else {
                return Poll::Ready(Err(refused(port)));
            };
            if conn.reset {
                Poll::Ready(Err(refused(port)))
            } else if conn.connected {
                Poll::Ready(Ok(()))
            } else {
                conn.write_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await?;
        Ok(stream)
    }
}

fn refused(port: u32) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionRefused, format!("nothing listens on host port {port}"))
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding it leaves the state as consistent as any single step.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn send(&self, packet: Vec<u8>) {
        // Fails only once the writer is gone, which is when the VM ends.
        let _ = self.out.send(packet);
    }

    /// Handles one packet from the host.
    fn packet(self: &Arc<Self>, header: &Header, payload: &[u8]) {
        if header.src_cid != HOST_CID || header.dst_cid != GUEST_CID || header.kind != TYPE_STREAM {
            return;
        }
        let mut state = self.lock();
        let key = (header.dst_port, header.src_port);
        let Some(&id) = state.by_ports.get(&key) else {
            match header.op {
                OP_REQUEST => {
                    if let Some((listener, stream)) = self.accept(&mut state, header) {
                        // A stream is dropped without the lock held: its drop takes it.
                        drop(state);
                        // Dropped at once when the listener is gone, which resets it.
                        let _ = listener.send(stream);
                    }
                }
                OP_RST => {}
                _ => self.send(header.reset_reply().encode().to_vec()),
            }
            return;
        };
        let Some(conn) = state.conns.get_mut(&id) else { return };
        conn.peer_buf_alloc = header.buf_alloc;
        conn.peer_fwd_cnt = header.fwd_cnt;
        match header.op {
            OP_RESPONSE => conn.connected = true,
            OP_RW => {
                if conn.rx.len() + payload.len() > BUF_ALLOC as usize {
                    // The host sent past the credit we gave it.
                    crate::log::error(format_args!(
                        "host port {} overran its credit: resetting",
                        conn.peer_port
                    ));
                    self.reset(&mut state, id);
                    return;
                }
                conn.rx.extend(payload);
            }
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => {
                let update = conn.packet(OP_CREDIT_UPDATE, 0, &[]);
                self.send(update);
            }
            OP_SHUTDOWN => {
                conn.peer_done_sending |= header.flags & SHUTDOWN_SEND != 0;
                conn.send_closed |= header.flags & SHUTDOWN_RCV != 0;
            }
            OP_RST => {
                conn.reset = true;
                state.by_ports.remove(&key);
            }
            _ => {
                self.reset(&mut state, id);
                return;
            }
        }
        if let Some(conn) = state.conns.get_mut(&id) {
            conn.wake_all();
        }
    }

    /// A host connection to one of our ports: answered, and returned with its listener.
    fn accept(
        self: &Arc<Self>,
        state: &mut State,
        request: &Header,
    ) -> Option<(mpsc::UnboundedSender<Stream>, Stream)> {
        let Some(listener) = state.listeners.get(&request.dst_port).cloned() else {
            self.send(request.reset_reply().encode().to_vec());
            return None;
        };
        let mut conn = Conn::new(request.dst_port, request.src_port);
        conn.connected = true;
        conn.peer_buf_alloc = request.buf_alloc;
        conn.peer_fwd_cnt = request.fwd_cnt;
        let response = conn.packet(OP_RESPONSE, 0, &[]);
        let id = state.insert(conn);
        self.send(response);
        Some((listener, Stream { shared: self.clone(), id }))
    }

    /// Ends a connection with an RST; its stream sees the reset.
    fn reset(&self, state: &mut State, id: u64) {
        let Some(conn) = state.conns.get_mut(&id) else { return };
        if !conn.reset {
            conn.reset = true;
            let rst = conn.packet(OP_RST, 0, &[]);
            self.send(rst);
        }
        let key = (conn.local_port, conn.peer_port);
        conn.wake_all();
        state.by_ports.remove(&key);
    }
}

impl State {
    fn insert(&mut self, conn: Conn) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.by_ports.insert((conn.local_port, conn.peer_port), id);
        self.conns.insert(id, conn);
        id
    }

    fn free_local_port(&mut self, peer_port: u32) -> io::Result<u32> {
        for _ in 0..=u16::MAX {
            let port = self.next_local_port;
            self.next_local_port = match port.checked_add(1) {
                Some(next) => next,
                None => FIRST_LOCAL_PORT,
            };
            if !self.by_ports.contains_key(&(port, peer_port)) {
                return Ok(port);
            }
        }
        Err(io::Error::new(io::ErrorKind::AddrInUse, "no free local port"))
    }
}

/// Finds the agent's port by name: `/dev/vportNpM` for the one /sys names `vessel.agent`.
/// The driver adds ports and names them from a work queue, after the device probed: look
/// again for a while.
async fn find_port() -> io::Result<std::path::PathBuf> {
    let class = std::path::Path::new("/sys/class/virtio-ports");
    let deadline = tokio::time::Instant::now() + FIND_PORT_TIMEOUT;
    loop {
        for entry in std::fs::read_dir(class).into_iter().flatten().flatten() {
            let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
            let device = std::path::Path::new("/dev").join(entry.file_name());
            if name.trim_end() == serial::PORT_NAME && device.exists() {
                return Ok(device);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no virtio-serial port named {} in {}", serial::PORT_NAME, class.display()),
            ));
        }
        tokio::time::sleep(UNCONNECTED_POLL).await;
    }
}

/// How long the agent's port may take to appear at boot.
const FIND_PORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads what the port has; waits while the host end is not connected (it reads as closed).
async fn read_port(port: &AsyncFd<File>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = port.readable().await?;
        match guard.try_io(|file| file.get_ref().read(buf)) {
            Ok(Ok(0)) => tokio::time::sleep(UNCONNECTED_POLL).await,
            Ok(Ok(n)) => return Ok(n),
            Ok(Err(err)) if err.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(err)) => return Err(err),
            Err(_would_block) => {}
        }
    }
}

/// Splits the port's bytes into packets and dispatches them, until the port fails.
async fn read_packets(port: Arc<AsyncFd<File>>, shared: Arc<Shared>) {
    let mut buffer: Vec<u8> = Vec::with_capacity(2 * (HEADER_LEN + MAX_PAYLOAD as usize));
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match read_port(&port, &mut chunk).await {
            Ok(n) => n,
            Err(err) => lost(format_args!("reading it failed: {err}")),
        };
        buffer.extend_from_slice(&chunk[..n]);
        let taken = take_packets(&buffer, |header, payload| shared.packet(header, payload));
        // Past a length that large the stream is out of step: nothing after can be trusted.
        let at =
            taken.unwrap_or_else(|len| lost(format_args!("the host sent a {len}-byte packet")));
        buffer.drain(..at);
    }
}

/// Without its channel the VM can do nothing more for its host: it powers off, which the
/// host sees.
fn lost(why: std::fmt::Arguments<'_>) -> ! {
    crate::log::error(format_args!("the agent channel is lost ({why}): powering off"));
    crate::power::power_off()
}

/// Writes queued packets to the port, as many at once as are waiting.
async fn write_packets(port: Arc<AsyncFd<File>>, mut queue: mpsc::UnboundedReceiver<Vec<u8>>) {
    let mut pending: Vec<u8> = Vec::new();
    let mut failing = false;
    while let Some(packet) = queue.recv().await {
        pending.extend_from_slice(&packet);
        while pending.len() < 256 * 1024 {
            match queue.try_recv() {
                Ok(packet) => pending.extend_from_slice(&packet),
                Err(_) => break,
            }
        }
        let mut at = 0;
        while at < pending.len() {
            let Ok(mut guard) = port.writable().await else { return };
            match guard.try_io(|file| file.get_ref().write(&pending[at..])) {
                Ok(Ok(n)) => {
                    at += n;
                    failing = false;
                }
                Ok(Err(err)) if err.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(err)) => {
                    // EPIPE while the host end is away; said once, not every retry.
                    if !failing {
                        crate::log::error(format_args!("writing to the agent channel: {err}"));
                        failing = true;
                    }
                    tokio::time::sleep(UNCONNECTED_POLL).await;
                }
                Err(_would_block) => {}
            }
        }
        pending.clear();
    }
}

/// Connections the host opens to one port.
#[derive(Debug)]
pub struct Listener {
    accepted: tokio::sync::Mutex<mpsc::UnboundedReceiver<Stream>>,
}

impl Listener {
    pub async fn accept(&self) -> io::Result<Stream> {
        self.accepted
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "the agent channel is gone"))
    }
}

/// One connection: a byte stream each way, as a vsock stream socket is.
#[derive(Debug)]
pub struct Stream {
    shared: Arc<Shared>,
    id: u64,
}

impl Stream {
    /// Tells the host we send no more; reading goes on.
    pub fn shutdown_write(&self) {
        let mut state = self.shared.lock();
        if let Some(conn) = state.conns.get_mut(&self.id) {
            if !conn.send_closed && !conn.reset {
                conn.send_closed = true;
                let shutdown = conn.packet(OP_SHUTDOWN, SHUTDOWN_SEND, &[]);
                self.shared.send(shutdown);
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut state = self.shared.lock();
        let Some(conn) = state.conns.get_mut(&self.id) else {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        };
        if conn.rx.is_empty() {
            if conn.reset {
                return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
            }
            if conn.peer_done_sending {
                return Poll::Ready(Ok(()));
            }
            conn.read_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.remaining().min(conn.rx.len());
        let (front, back) = conn.rx.as_slices();
        let from_front = n.min(front.len());
        buf.put_slice(&front[..from_front]);
        buf.put_slice(&back[..n - from_front]);
        conn.rx.drain(..n);
        conn.fwd_cnt = conn.fwd_cnt.wrapping_add(n as u32);
        if conn.fwd_cnt.wrapping_sub(conn.fwd_cnt_reported) >= CREDIT_REPORT && !conn.reset {
            let update = conn.packet(OP_CREDIT_UPDATE, 0, &[]);
            self.shared.send(update);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut state = self.shared.lock();
        let Some(conn) = state.conns.get_mut(&self.id) else {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        };
        if conn.reset {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        if conn.send_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let credit = conn.credit();
        if credit == 0 {
            conn.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(credit as usize).min(MAX_PAYLOAD as usize);
        conn.tx_cnt = conn.tx_cnt.wrapping_add(n as u32);
        let packet = conn.packet(OP_RW, 0, &buf[..n]);
        self.shared.send(packet);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written packets are queued in order; nothing is held back here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shutdown_write();
        Poll::Ready(Ok(()))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        let Some(mut conn) = state.conns.remove(&self.id) else { return };
        let key = (conn.local_port, conn.peer_port);
        if state.by_ports.get(&key) == Some(&self.id) {
            state.by_ports.remove(&key);
        }
        // The host delivers what it has and closes its end.
        if !conn.reset {
            let rst = conn.packet(OP_RST, 0, &[]);
            self.shared.send(rst);
        }
    }
}
