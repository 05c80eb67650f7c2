//! The connections of one VM: the hybrid listener, the host streams (polled with a
//! level-triggered epoll whose interest always mirrors what each connection can do next),
//! packets from the guest, and the packets owed to it.

use crate::conn::{Conn, ForwardError, State};
use crate::packet::{
    Header, HEADER_LEN, HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE,
    OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use std::collections::{HashMap, VecDeque};
use std::io::{self, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

const LISTENER_TOKEN: u64 = 0;
/// Host ports of host-initiated connections count up from here: far from the ports guests
/// connect to (1024, 1025, ...).
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Largest payload of one packet to the guest (the most vessel-init takes).
const MAX_RX_PAYLOAD: usize = 64 * 1024;
const EVENTS_PER_WAIT: usize = 64;

/// What making the next packet for the guest produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Fill {
    /// A packet of this many bytes was written out.
    Packet(u32),
    /// Nothing is owed to the guest.
    Nothing,
    /// There is no room for a header, or the writing failed.
    Unusable,
}

#[derive(Debug)]
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    conns: HashMap<u64, Conn>,
    /// (host port, guest port) → token, for connections the guest knows.
    by_ports: HashMap<(u32, u32), u64>,
    next_token: u64,
    next_local_port: u32,
    /// Connections with something for the guest, in turn.
    work: VecDeque<u64>,
    /// RSTs answering guest packets that match no connection.
    resets: VecDeque<Header>,
    /// Warnings about what the guest sent: a guest must not fill the host's log.
    guest_warnings: WarningBudget,
    scratch: Vec<u8>,
}

impl Muxer {
    /// Listens on the hybrid socket `uds_path` (replacing a stale one).
    pub fn new(guest_cid: u64, uds_path: &Path) -> io::Result<Muxer> {
        let _ = std::fs::remove_file(uds_path);
        let listener = UnixListener::bind(uds_path)?;
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
        )?;
        Ok(Muxer {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            epoll,
            conns: HashMap::new(),
            by_ports: HashMap::new(),
            next_token: LISTENER_TOKEN + 1,
            next_local_port: FIRST_LOCAL_PORT,
            work: VecDeque::new(),
            resets: VecDeque::new(),
            guest_warnings: WarningBudget::default(),
            scratch: vec![0u8; MAX_RX_PAYLOAD],
        })
    }

    /// The epoll fd to watch: readable when a host stream or the listener needs us.
    pub fn epoll_fd(&self) -> i32 {
        self.epoll.as_raw_fd()
    }

    #[cfg(test)]
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// RSTs owed to the guest for packets that matched no connection.
    pub fn resets_pending(&self) -> usize {
        self.resets.len()
    }

    /// Whether something is owed to the guest.
    pub fn has_work(&self) -> bool {
        !self.resets.is_empty() || !self.work.is_empty()
    }

    // ---- host side ----

    /// Handles every ready host stream and the listener, without blocking.
    pub fn process_host_events(&mut self) {
        let mut events = [EpollEvent::default(); EVENTS_PER_WAIT];
        // Until nothing is ready (a stream accepted now may already hold its handshake),
        // within bounds: the channel's epoll calls us again while ours is readable.
        for _ in 0..16 {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(error = %e, "epoll_wait on host streams");
                    return;
                }
            };
            for event in &events[..n] {
                let token = event.data();
                if token == LISTENER_TOKEN {
                    self.accept_all();
                } else {
                    self.host_event(token, event.event_set());
                }
            }
            if n == 0 {
                return;
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = stream.set_nonblocking(true) {
                        tracing::warn!(error = %e, "host stream: set_nonblocking");
                        continue;
                    }
                    let token = self.new_token();
                    self.conns.insert(token, Conn::handshake(stream));
                    self.sync_interest(token);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: the listener stays readable, so we come back.
                    tracing::warn!(error = %e, "accept on the hybrid socket");
                    return;
                }
            }
        }
    }

    fn host_event(&mut self, token: u64, events: EventSet) {
        let Some(conn) = self.conns.get_mut(&token) else { return };
        if conn.state == State::Handshake {
            self.handshake_input(token);
            return;
        }
        // Output first and independently of input: a stream that is both readable and
        // writable must get its buffered guest bytes (the defect this backend exists for).
        let broken = EventSet::HANG_UP | EventSet::ERROR;
        if conn.interest & EventSet::OUT.bits() != 0 && events.intersects(EventSet::OUT | broken) {
            if let Err(e) = conn.flush() {
                tracing::debug!(error = %e, port = conn.guest_port, "host stream closed under buffered data");
                self.abort(token);
                return;
            }
            self.after_flush(token);
        }
        let Some(conn) = self.conns.get_mut(&token) else { return };
        if conn.interest & EventSet::IN.bits() != 0
            && events.intersects(EventSet::IN | EventSet::READ_HANG_UP | broken)
        {
            conn.readable = true;
            self.want_data(token);
        }
        self.sync_interest(token);
    }

    fn handshake_input(&mut self, token: u64) {
        let Some(conn) = self.conns.get_mut(&token) else { return };
        // A byte at a time: whatever follows the line belongs to the guest.
        let mut byte = [0u8; 1];
        let port = loop {
            match conn.stream.read(&mut byte) {
                Ok(0) => {
                    self.remove(token);
                    return;
                }
                Ok(_) => match conn.handshake_bytes(&byte) {
                    Ok(Some(port)) => break port,
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "host handshake");
                        self.remove(token);
                        return;
                    }
                },
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.remove(token);
                    return;
                }
            }
        };
        let local = self.local_port(port);
        let Some(conn) = self.conns.get_mut(&token) else { return };
        conn.host_port = local;
        conn.guest_port = port;
        conn.state = State::Connecting;
        conn.owed.request = true;
        self.by_ports.insert((local, port), token);
        self.enqueue(token);
        self.sync_interest(token);
    }

    fn local_port(&mut self, guest_port: u32) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.by_ports.contains_key(&(port, guest_port)) {
                return port;
            }
        }
    }

    /// After buffered guest bytes went to the host: pass on the guest's shutdown, finish
    /// draining connections, owe credit.
    fn after_flush(&mut self, token: u64) {
        let Some(conn) = self.conns.get_mut(&token) else { return };
        if conn.pending_len() > 0 {
            if conn.owed.credit_update {
                self.enqueue(token);
            }
            return;
        }
        if conn.state == State::Draining {
            self.remove(token);
            return;
        }
        if conn.guest_done_sending() && !conn.host_write_closed {
            let _ = conn.stream.shutdown(Shutdown::Write);
            conn.host_write_closed = true;
        }
        if conn.guest_shutdown & (SHUTDOWN_RCV | SHUTDOWN_SEND) == SHUTDOWN_RCV | SHUTDOWN_SEND {
            // The guest closed and everything it sent is delivered: it waits for our RST.
            conn.owed.rst = true;
        }
        if conn.owed.any() {
            self.enqueue(token);
        }
    }

    /// The host stream has bytes (or EOF) for the guest: queue it, or ask for credit.
    fn want_data(&mut self, token: u64) {
        let Some(conn) = self.conns.get_mut(&token) else { return };
        if !conn.can_send_data() {
            return;
        }
        if conn.peer_credit() > 0 {
            self.enqueue(token);
        } else if !conn.credit_requested {
            conn.owed.credit_request = true;
            conn.credit_requested = true;
            self.enqueue(token);
        }
    }

    fn sync_interest(&mut self, token: u64) {
        let Some(conn) = self.conns.get_mut(&token) else { return };
        let mut want = EventSet::empty();
        if conn.wants_host_input() && (conn.state == State::Handshake || !conn.readable) {
            want |= EventSet::IN;
        }
        if conn.pending_len() > 0 {
            want |= EventSet::OUT;
        }
        let want = want.bits();
        if want == conn.interest {
            return;
        }
        // No interest means no registration: epoll reports hang-ups even with an empty
        // mask, which would spin a stream we are not reading.
        let op = if conn.interest == 0 {
            ControlOperation::Add
        } else if want == 0 {
            ControlOperation::Delete
        } else {
            ControlOperation::Modify
        };
        let event = EpollEvent::new(EventSet::from_bits_truncate(want), token);
        match self.epoll.ctl(op, conn.stream.as_raw_fd(), event) {
            Ok(()) => conn.interest = want,
            Err(e) => {
                tracing::error!(error = %e, want, "epoll_ctl on a host stream");
                self.abort(token);
            }
        }
    }

    // ---- guest side ----

    /// Handles one packet from the guest.
    pub fn guest_packet(&mut self, header: &Header, payload: &[u8]) {
        if header.src_cid != self.guest_cid || header.dst_cid != HOST_CID {
            if self.guest_warnings.allow() {
                tracing::warn!(
                    src_cid = header.src_cid,
                    dst_cid = header.dst_cid,
                    "dropping a guest packet with foreign addresses"
                );
            }
            return;
        }
        if header.kind != TYPE_STREAM {
            tracing::debug!(kind = header.kind, "refusing a non-stream guest packet");
            self.reply_reset(header);
            return;
        }
        let Some(&token) = self.by_ports.get(&(header.dst_port, header.src_port)) else {
            match header.op {
                OP_REQUEST => self.connect_to_host(header),
                OP_RST => {}
                _ => self.reply_reset(header),
            }
            return;
        };
        let Some(conn) = self.conns.get_mut(&token) else {
            self.by_ports.remove(&(header.dst_port, header.src_port));
            return;
        };
        conn.update_peer_credit(header);
        if conn.owed.rst {
            return; // on its way out
        }
        match header.op {
            OP_RESPONSE if conn.state == State::Connecting => {
                let ok = format!("OK {}\n", conn.host_port);
                // The stream is fresh and its buffer empty: a short line goes in whole.
                match conn.stream.write(ok.as_bytes()) {
                    Ok(n) if n == ok.len() => {
                        conn.state = State::Established;
                    }
                    _ => {
                        tracing::debug!(port = conn.guest_port, "host stream gone before OK");
                        self.abort(token);
                        return;
                    }
                }
            }
            OP_RW if conn.state == State::Established => match conn.forward(payload) {
                Ok(()) => {
                    if conn.owed.credit_update {
                        self.enqueue(token);
                    }
                }
                Err(ForwardError::Write(e)) => {
                    tracing::debug!(error = %e, port = conn.guest_port, "host stream closed");
                    self.abort(token);
                    return;
                }
                Err(e) => {
                    if self.guest_warnings.allow() {
                        tracing::warn!(error = %e, port = conn.guest_port, "resetting connection");
                    }
                    self.abort(token);
                    return;
                }
            },
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => {
                conn.owed.credit_update = true;
                self.enqueue(token);
            }
            OP_SHUTDOWN => {
                conn.guest_shutdown |= header.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                self.after_flush(token);
            }
            OP_RST => {
                // The guest is gone. Deliver what it sent, then close.
                self.by_ports.remove(&(conn.host_port, conn.guest_port));
                if conn.pending_len() == 0 || conn.state != State::Established {
                    self.remove(token);
                    return;
                }
                conn.state = State::Draining;
                conn.owed = Default::default();
            }
            op => {
                if self.guest_warnings.allow() {
                    tracing::warn!(op, state = ?conn.state, port = conn.guest_port, "unexpected guest packet, resetting");
                }
                self.abort(token);
                return;
            }
        }
        // Fresh credit may unblock host input.
        if let Some(conn) = self.conns.get(&token) {
            if conn.readable && conn.peer_credit() > 0 {
                self.want_data(token);
            }
        }
        self.sync_interest(token);
    }

    fn connect_to_host(&mut self, request: &Header) {
        let path = format!("{}_{}", self.uds_path.display(), request.dst_port);
        match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => {
                let token = self.new_token();
                self.conns.insert(token, Conn::from_guest(stream, request));
                self.by_ports.insert((request.dst_port, request.src_port), token);
                self.enqueue(token);
                self.sync_interest(token);
            }
            Err(e) => {
                tracing::debug!(error = %e, %path, "guest connect refused");
                self.reply_reset(request);
            }
        }
    }

    fn reply_reset(&mut self, header: &Header) {
        if header.op != OP_RST {
            self.resets.push_back(header.reset_reply());
        }
    }

    /// Resets a connection: RST to the guest if it knows it, and the host stream closes.
    fn abort(&mut self, token: u64) {
        let Some(conn) = self.conns.get_mut(&token) else { return };
        match conn.state {
            State::Handshake | State::Draining => self.remove(token),
            State::Connecting | State::Established => {
                conn.owed = Default::default();
                conn.owed.rst = true;
                self.enqueue(token);
                self.sync_interest(token);
            }
        }
    }

    fn remove(&mut self, token: u64) {
        let Some(conn) = self.conns.remove(&token) else { return };
        if self.by_ports.get(&(conn.host_port, conn.guest_port)) == Some(&token) {
            self.by_ports.remove(&(conn.host_port, conn.guest_port));
        }
        if conn.interest != 0 {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                conn.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
    }

    fn enqueue(&mut self, token: u64) {
        if let Some(conn) = self.conns.get_mut(&token) {
            if !conn.queued {
                conn.queued = true;
                self.work.push_back(token);
            }
        }
    }

    fn new_token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        token
    }

    // ---- packets to the guest ----

    /// Writes the next packet owed to the guest into `out`, in at most `room` bytes.
    pub fn fill_rx<W: Write>(&mut self, out: &mut W, room: usize) -> Fill {
        if room < HEADER_LEN {
            return Fill::Unusable;
        }
        if let Some(reset) = self.resets.pop_front() {
            return match out.write_all(&reset.encode()) {
                Ok(()) => Fill::Packet(HEADER_LEN as u32),
                Err(_) => Fill::Unusable,
            };
        }
        while let Some(token) = self.work.pop_front() {
            let Some(conn) = self.conns.get_mut(&token) else { continue };
            conn.queued = false;
            let (fill, gone) = packet_for(conn, self.guest_cid, out, room, &mut self.scratch);
            if gone {
                self.remove(token);
            } else {
                self.requeue_if_owed(token);
                self.sync_interest(token);
            }
            if fill != Fill::Nothing {
                return fill;
            }
        }
        Fill::Nothing
    }

    fn requeue_if_owed(&mut self, token: u64) {
        let Some(conn) = self.conns.get(&token) else { return };
        if conn.owed.any() || (conn.can_send_data() && conn.peer_credit() > 0) {
            self.enqueue(token);
        } else if conn.can_send_data() {
            self.want_data(token); // out of credit: maybe ask
        }
    }
}

/// Writes the next packet of `conn` into `out`. Returns what was written and whether the
/// connection is finished (an RST went out).
fn packet_for<W: Write>(
    conn: &mut Conn,
    guest_cid: u64,
    out: &mut W,
    room: usize,
    scratch: &mut [u8],
) -> (Fill, bool) {
    let mut header = Header::to_guest(guest_cid, conn.host_port, conn.guest_port, 0);
    if conn.owed.rst {
        header.op = OP_RST;
        return (write_packet(out, &header, &[]), true);
    }
    if conn.owed.request {
        conn.owed.request = false;
        header.op = OP_REQUEST;
    } else if conn.owed.response {
        conn.owed.response = false;
        header.op = OP_RESPONSE;
    } else if conn.can_send_data() && conn.peer_credit() > 0 {
        let len = (room - HEADER_LEN).min(conn.peer_credit() as usize).min(scratch.len());
        match read_some(&mut conn.stream, &mut scratch[..len]) {
            Ok(Some(0)) => {
                conn.host_eof = true;
                conn.readable = false;
                header.op = OP_SHUTDOWN;
                header.flags = SHUTDOWN_SEND;
            }
            Ok(Some(n)) => {
                header.op = OP_RW;
                header.len = n as u32;
                conn.stamp(&mut header);
                conn.note_sent_to_guest(n as u32);
                return (write_packet(out, &header, &scratch[..n]), false);
            }
            Ok(None) => {
                conn.readable = false;
                return control_packet(conn, header, out);
            }
            Err(e) => {
                tracing::debug!(error = %e, port = conn.guest_port, "host stream read failed");
                header.op = OP_RST;
                return (write_packet(out, &header, &[]), true);
            }
        }
    } else {
        return control_packet(conn, header, out);
    }
    conn.stamp(&mut header);
    (write_packet(out, &header, &[]), false)
}

/// A credit update or request, if one is owed.
fn control_packet<W: Write>(conn: &mut Conn, mut header: Header, out: &mut W) -> (Fill, bool) {
    if conn.owed.credit_update {
        header.op = OP_CREDIT_UPDATE;
    } else if conn.owed.credit_request {
        conn.owed.credit_request = false;
        header.op = OP_CREDIT_REQUEST;
    } else {
        return (Fill::Nothing, false);
    }
    conn.stamp(&mut header);
    (write_packet(out, &header, &[]), false)
}

fn write_packet<W: Write>(out: &mut W, header: &Header, payload: &[u8]) -> Fill {
    match out.write_all(&header.encode()).and_then(|()| out.write_all(payload)) {
        Ok(()) => Fill::Packet((HEADER_LEN + payload.len()) as u32),
        Err(e) => {
            tracing::warn!(error = %e, "writing a packet for the guest");
            Fill::Unusable
        }
    }
}

/// Reads without blocking: Ok(None) when nothing is there yet.
fn read_some(stream: &mut UnixStream, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        match stream.read(buf) {
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Connects without ever blocking the device: a listener with a full backlog refuses.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    connect(fd.as_raw_fd(), &addr)?;
    Ok(UnixStream::from(fd))
}

/// Logs the first warnings of a kind, then says once that the rest go unsaid.
#[derive(Debug, Default)]
struct WarningBudget {
    spent: u32,
}

impl WarningBudget {
    const LIMIT: u32 = 20;

    fn allow(&mut self) -> bool {
        self.spent = self.spent.saturating_add(1);
        if self.spent == Self::LIMIT + 1 {
            tracing::warn!("the guest keeps sending bad packets; no more of these are logged");
        }
        self.spent <= Self::LIMIT
    }
}

#[cfg(test)]
mod tests;
