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
/// Largest payload of one packet to the guest (Linux RX buffers hold 4 KiB anyway).
const MAX_RX_PAYLOAD: usize = 64 * 1024;
const EVENTS_PER_WAIT: usize = 64;

/// What filling one RX buffer produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Fill {
    /// A packet of this many bytes went into the buffer.
    Packet(u32),
    /// Nothing is owed to the guest: the buffer stays unused.
    Nothing,
    /// The buffer cannot hold a header: give it back empty.
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

    /// Whether something is owed to the guest.
    pub fn has_work(&self) -> bool {
        !self.resets.is_empty() || !self.work.is_empty()
    }

    /// Drops every connection (device reset): host streams see EOF.
    pub fn reset_all(&mut self) {
        let tokens: Vec<u64> = self.conns.keys().copied().collect();
        for token in tokens {
            self.remove(token);
        }
        self.work.clear();
        self.resets.clear();
    }

    // ---- host side ----

    /// Handles every ready host stream and the listener, without blocking.
    pub fn process_host_events(&mut self) {
        let mut events = [EpollEvent::default(); EVENTS_PER_WAIT];
        // Until nothing is ready (a stream accepted now may already hold its handshake),
        // within bounds: the daemon's epoll calls us again while ours is readable.
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

    /// Handles one packet from the guest's TX queue.
    pub fn guest_packet(&mut self, header: &Header, payload: &[u8]) {
        if header.src_cid != self.guest_cid || header.dst_cid != HOST_CID {
            tracing::warn!(
                src_cid = header.src_cid,
                dst_cid = header.dst_cid,
                "dropping a guest packet with foreign addresses"
            );
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
                    tracing::warn!(error = %e, port = conn.guest_port, "resetting connection");
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
                tracing::warn!(op, state = ?conn.state, port = conn.guest_port, "unexpected guest packet, resetting");
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

    /// Fills one guest RX buffer of `room` bytes with the next packet owed.
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
            tracing::warn!(error = %e, "writing a packet into a guest RX buffer");
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

#[cfg(test)]
mod tests {
    //! The muxer between a fake guest (packets in, RX buffers out) and real Unix streams.
    use super::*;
    use crate::conn::BUF_ALLOC;
    use std::time::Duration;

    const CID: u64 = 3;

    struct Fixture {
        _dir: tempfile::TempDir,
        uds: PathBuf,
        muxer: Muxer,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let uds = dir.path().join("vsock.sock");
            let muxer = Muxer::new(CID, &uds).unwrap();
            Fixture { _dir: dir, uds, muxer }
        }

        /// Next packet owed to the guest, with a 4 KiB RX buffer like Linux's.
        fn rx(&mut self) -> Option<(Header, Vec<u8>)> {
            self.muxer.process_host_events();
            let mut buf = Vec::new();
            match self.muxer.fill_rx(&mut buf, HEADER_LEN + 4096) {
                Fill::Packet(len) => {
                    assert_eq!(len as usize, buf.len());
                    let raw: [u8; HEADER_LEN] = buf[..HEADER_LEN].try_into().unwrap();
                    Some((Header::decode(&raw), buf[HEADER_LEN..].to_vec()))
                }
                Fill::Nothing => None,
                Fill::Unusable => panic!("unusable"),
            }
        }

        fn guest(
            &mut self,
            op: u16,
            host_port: u32,
            guest_port: u32,
            f: impl FnOnce(&mut Header),
            payload: &[u8],
        ) {
            let mut h = Header {
                src_cid: CID,
                dst_cid: HOST_CID,
                src_port: guest_port,
                dst_port: host_port,
                len: payload.len() as u32,
                kind: TYPE_STREAM,
                op,
                buf_alloc: BUF_ALLOC,
                ..Header::default()
            };
            f(&mut h);
            self.muxer.guest_packet(&h, payload);
        }

        /// Host connects to guest `port`; returns the stream and the host port the guest sees.
        fn host_connect(&mut self, port: u32) -> (UnixStream, u32) {
            let mut s = UnixStream::connect(&self.uds).unwrap();
            s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
            let (req, _) = self.rx().expect("REQUEST");
            assert_eq!(
                (req.op, req.dst_port, req.dst_cid, req.src_cid),
                (OP_REQUEST, port, CID, HOST_CID)
            );
            self.guest(OP_RESPONSE, req.src_port, port, |_| {}, &[]);
            let line = read_line(&mut s);
            assert_eq!(line, format!("OK {}", req.src_port));
            (s, req.src_port)
        }
    }

    fn read_line(s: &mut UnixStream) -> String {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut line = Vec::new();
        let mut b = [0u8];
        while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        String::from_utf8(line).unwrap()
    }

    #[test]
    fn host_connects_and_data_flows_both_ways() {
        let mut f = Fixture::new();
        let (mut s, hp) = f.host_connect(1024);
        s.write_all(b"ping").unwrap();
        let (rw, data) = f.rx().expect("RW");
        assert_eq!((rw.op, rw.len, rw.buf_alloc), (OP_RW, 4, BUF_ALLOC));
        assert_eq!(data, b"ping");
        f.guest(OP_RW, hp, 1024, |_| {}, b"pong");
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"pong");
        assert!(f.rx().is_none());
    }

    #[test]
    fn nothing_listening_in_the_guest_closes_the_host_stream_without_ok() {
        let mut f = Fixture::new();
        let mut s = UnixStream::connect(&f.uds).unwrap();
        s.write_all(b"CONNECT 9999\n").unwrap();
        let (req, _) = f.rx().unwrap();
        f.guest(OP_RST, req.src_port, 9999, |_| {}, &[]);
        assert_eq!(read_line(&mut s), "");
        assert_eq!(f.muxer.connection_count(), 0);
    }

    #[test]
    fn host_data_waits_for_guest_credit() {
        let mut f = Fixture::new();
        let mut s = UnixStream::connect(&f.uds).unwrap();
        s.write_all(b"CONNECT 1024\n").unwrap();
        let (req, _) = f.rx().unwrap();
        let hp = req.src_port;
        f.guest(OP_RESPONSE, hp, 1024, |h| h.buf_alloc = 10, &[]);
        read_line(&mut s);
        s.write_all(&[1u8; 25]).unwrap();
        let (rw, data) = f.rx().unwrap();
        assert_eq!((rw.op, data.len()), (OP_RW, 10));
        let (cr, _) = f.rx().unwrap();
        assert_eq!(cr.op, OP_CREDIT_REQUEST);
        assert!(f.rx().is_none(), "no more data, no repeated credit requests");
        f.guest(OP_CREDIT_UPDATE, hp, 1024, |h| (h.buf_alloc, h.fwd_cnt) = (10, 10), &[]);
        let (rw, data) = f.rx().unwrap();
        assert_eq!((rw.op, data.len()), (OP_RW, 10));
        f.guest(OP_CREDIT_UPDATE, hp, 1024, |h| (h.buf_alloc, h.fwd_cnt) = (10, 20), &[]);
        let (rw, data) = f.rx().unwrap();
        assert_eq!((rw.op, data.len()), (OP_RW, 5));
    }

    #[test]
    fn guest_bytes_the_host_cannot_take_yet_are_kept_and_flushed_with_credit_updates() {
        let mut f = Fixture::new();
        let (mut s, hp) = f.host_connect(1024);
        // The guest sends a full window while the host reads nothing.
        let chunk = vec![9u8; 4096];
        for _ in 0..(BUF_ALLOC as usize / chunk.len()) {
            f.guest(OP_RW, hp, 1024, |_| {}, &chunk);
        }
        // Drain the host side while the muxer flushes: every byte arrives.
        s.set_nonblocking(true).unwrap();
        let mut got = 0usize;
        let mut fwd = 0u32;
        let mut buf = vec![0u8; 65536];
        for _ in 0..10_000 {
            match s.read(&mut buf) {
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            while let Some((h, _)) = f.rx() {
                fwd = h.fwd_cnt;
            }
            if got == BUF_ALLOC as usize && fwd == BUF_ALLOC {
                break;
            }
        }
        assert_eq!(got, BUF_ALLOC as usize);
        assert_eq!(fwd, BUF_ALLOC, "the guest learns everything was forwarded");
        // One byte past the window is a guest bug: reset.
        for _ in 0..(BUF_ALLOC as usize / chunk.len()) {
            f.guest(OP_RW, hp, 1024, |_| {}, &chunk);
        }
        s.set_nonblocking(false).unwrap();
        let before = f.muxer.connection_count();
        f.guest(OP_RW, hp, 1024, |_| {}, &vec![0u8; BUF_ALLOC as usize]);
        let (rst, _) = f.rx().unwrap();
        assert_eq!(rst.op, OP_RST);
        assert_eq!(f.muxer.connection_count(), before - 1);
    }

    #[test]
    fn guest_connects_to_a_host_listener_and_closes_cleanly() {
        let mut f = Fixture::new();
        let listener = UnixListener::bind(format!("{}_1025", f.uds.display())).unwrap();
        f.guest(OP_REQUEST, 1025, 5000, |_| {}, &[]);
        let (resp, _) = f.rx().unwrap();
        assert_eq!((resp.op, resp.src_port, resp.dst_port), (OP_RESPONSE, 1025, 5000));
        let (mut s, _) = listener.accept().unwrap();
        f.guest(OP_RW, 1025, 5000, |_| {}, b"ready\n");
        f.guest(OP_SHUTDOWN, 1025, 5000, |h| h.flags = SHUTDOWN_SEND, &[]);
        let mut all = String::new();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.read_to_string(&mut all).unwrap();
        assert_eq!(all, "ready\n", "data, then EOF");
        f.guest(OP_SHUTDOWN, 1025, 5000, |h| h.flags = SHUTDOWN_SEND | SHUTDOWN_RCV, &[]);
        let (rst, _) = f.rx().unwrap();
        assert_eq!(rst.op, OP_RST);
        assert_eq!(f.muxer.connection_count(), 0);
    }

    #[test]
    fn host_eof_becomes_a_guest_shutdown() {
        let mut f = Fixture::new();
        let (s, _) = f.host_connect(1024);
        s.shutdown(Shutdown::Write).unwrap();
        let (sd, _) = f.rx().unwrap();
        assert_eq!((sd.op, sd.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
    }

    #[test]
    fn no_listener_on_the_host_means_rst() {
        let mut f = Fixture::new();
        f.guest(OP_REQUEST, 7777, 5000, |_| {}, &[]);
        let (rst, _) = f.rx().unwrap();
        assert_eq!((rst.op, rst.src_port, rst.dst_port, rst.dst_cid), (OP_RST, 7777, 5000, CID));
    }

    #[test]
    fn garbage_from_the_guest_is_dropped_or_reset_never_a_panic() {
        let mut f = Fixture::new();
        let (_s, hp) = f.host_connect(1024);
        // Foreign CIDs: dropped silently.
        f.guest(OP_RW, hp, 1024, |h| h.src_cid = 99, b"x");
        f.guest(OP_RW, hp, 1024, |h| h.dst_cid = 7, b"x");
        assert!(f.rx().is_none());
        // Seqpacket, unknown ops, data for unknown connections: RST.
        f.guest(OP_RW, 1, 2, |h| h.kind = 2, b"x");
        assert_eq!(f.rx().unwrap().0.op, OP_RST);
        f.guest(OP_RW, 1, 2, |_| {}, b"x");
        assert_eq!(f.rx().unwrap().0.op, OP_RST);
        f.guest(99, hp, 1024, |_| {}, &[]);
        assert_eq!(f.rx().unwrap().0.op, OP_RST);
        assert_eq!(f.muxer.connection_count(), 0);
        // A tiny RX buffer is refused without losing the packet.
        f.guest(OP_REQUEST, 7777, 1, |_| {}, &[]);
        assert_eq!(f.muxer.fill_rx(&mut Vec::new(), 10), Fill::Unusable);
        assert_eq!(f.rx().unwrap().0.op, OP_RST);
    }

    #[test]
    fn a_bad_handshake_closes_the_host_stream() {
        let mut f = Fixture::new();
        let mut s = UnixStream::connect(&f.uds).unwrap();
        s.write_all(b"HELLO\n").unwrap();
        assert!(f.rx().is_none());
        assert_eq!(read_line(&mut s), "");
        assert_eq!(f.muxer.connection_count(), 0);
    }

    /// A fake guest that echoes every stream, honouring credit both ways, against many
    /// host connections at once: every byte comes back, in order.
    #[test]
    fn many_connections_echo_through_a_credit_honouring_guest() {
        const CONNS: usize = 40;
        const BYTES: usize = 300 * 1024;
        const GUEST_BUF: u32 = 64 * 1024;

        #[derive(Default)]
        struct GuestConn {
            echo: VecDeque<u8>,
            fwd_cnt: u32,
            tx_cnt: u32,
            peer_buf_alloc: u32,
            peer_fwd_cnt: u32,
        }

        let mut f = Fixture::new();
        let mut hosts = Vec::new();
        for _ in 0..CONNS {
            let mut s = UnixStream::connect(&f.uds).unwrap();
            s.write_all(b"CONNECT 1024\n").unwrap();
            s.set_nonblocking(true).unwrap();
            // (stream, sent, received, got OK line)
            hosts.push((s, 0usize, 0usize, false));
        }
        let mut guest: HashMap<(u32, u32), GuestConn> = HashMap::new();
        let pattern = |i: usize, at: usize| ((at * 31 + i * 7) % 251) as u8;
        let mut done = false;
        for _ in 0..200_000 {
            // Host side: write what the socket takes, read and check what came back.
            done = true;
            for (i, (s, sent, received, ok)) in hosts.iter_mut().enumerate() {
                if !*ok {
                    let mut line = [0u8; 1];
                    while let Ok(1) = s.read(&mut line) {
                        if line[0] == b'\n' {
                            *ok = true;
                            break;
                        }
                    }
                    done = false;
                    continue;
                }
                if *sent < BYTES {
                    let chunk: Vec<u8> =
                        (*sent..BYTES.min(*sent + 8192)).map(|at| pattern(i, at)).collect();
                    if let Ok(n) = s.write(&chunk) {
                        *sent += n;
                    }
                }
                let mut buf = [0u8; 8192];
                if let Ok(n) = s.read(&mut buf) {
                    for (k, b) in buf[..n].iter().enumerate() {
                        assert_eq!(
                            *b,
                            pattern(i, *received + k),
                            "conn {i} byte {}",
                            *received + k
                        );
                    }
                    *received += n;
                }
                done &= *received == BYTES;
            }
            if done {
                break;
            }
            // Guest side: take what the device owes, answer, echo within credit.
            f.muxer.process_host_events();
            let mut outgoing = Vec::new();
            while let Some((h, data)) = f.rx() {
                let g = guest.entry((h.src_port, h.dst_port)).or_default();
                g.peer_buf_alloc = h.buf_alloc;
                g.peer_fwd_cnt = h.fwd_cnt;
                match h.op {
                    OP_REQUEST => outgoing.push((OP_RESPONSE, h.src_port, h.dst_port, Vec::new())),
                    OP_RW => {
                        g.echo.extend(&data);
                        assert!(g.echo.len() <= GUEST_BUF as usize, "device ignored guest credit");
                    }
                    OP_CREDIT_REQUEST => {
                        outgoing.push((OP_CREDIT_UPDATE, h.src_port, h.dst_port, Vec::new()))
                    }
                    OP_CREDIT_UPDATE => {}
                    op => panic!("unexpected op {op}"),
                }
            }
            for (&(hp, gp), g) in guest.iter_mut() {
                let credit =
                    g.peer_buf_alloc.saturating_sub(g.tx_cnt.wrapping_sub(g.peer_fwd_cnt)) as usize;
                let n = g.echo.len().min(credit).min(4000);
                if n > 0 {
                    let data: Vec<u8> = g.echo.drain(..n).collect();
                    g.tx_cnt = g.tx_cnt.wrapping_add(n as u32);
                    g.fwd_cnt = g.fwd_cnt.wrapping_add(n as u32);
                    outgoing.push((OP_RW, hp, gp, data));
                }
            }
            for (op, hp, gp, data) in outgoing {
                let fwd = guest.get(&(hp, gp)).map(|g| g.fwd_cnt).unwrap_or(0);
                f.guest(op, hp, gp, |h| (h.buf_alloc, h.fwd_cnt) = (GUEST_BUF, fwd), &data);
            }
        }
        assert!(done, "stalled: {:?}", hosts.iter().map(|h| (h.1, h.2)).collect::<Vec<_>>());
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Step {
            Guest {
                op: u16,
                host_port: u32,
                guest_port: u32,
                flags: u32,
                buf_alloc: u32,
                fwd_cnt: u32,
                len: usize,
            },
            HostWrite(usize),
            HostConnect(u32),
            Rx(usize),
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                (
                    0u16..10,
                    prop_oneof![
                        Just(1025u32),
                        Just(FIRST_LOCAL_PORT),
                        Just(FIRST_LOCAL_PORT + 1),
                        any::<u32>()
                    ],
                    0u32..3,
                    0u32..4,
                    any::<u32>(),
                    any::<u32>(),
                    0usize..5000
                )
                    .prop_map(
                        |(op, host_port, guest_port, flags, buf_alloc, fwd_cnt, len)| Step::Guest {
                            op,
                            host_port,
                            guest_port: guest_port + 1024,
                            flags,
                            buf_alloc,
                            fwd_cnt,
                            len,
                        }
                    ),
                (0usize..20_000).prop_map(Step::HostWrite),
                (1024u32..1027).prop_map(Step::HostConnect),
                (0usize..5000).prop_map(Step::Rx),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            /// Whatever the guest sends, in any order: no panic, buffers within credit.
            #[test]
            fn any_guest_behaviour_is_survived(steps in proptest::collection::vec(step(), 1..60)) {
                let mut f = Fixture::new();
                let _listener = UnixListener::bind(format!("{}_1025", f.uds.display())).unwrap();
                let mut hosts = Vec::new();
                for step in steps {
                    match step {
                        Step::Guest { op, host_port, guest_port, flags, buf_alloc, fwd_cnt, len } => {
                            let payload = vec![0x5a; len];
                            f.guest(op, host_port, guest_port, |h| {
                                h.flags = flags;
                                h.buf_alloc = buf_alloc;
                                h.fwd_cnt = fwd_cnt;
                            }, &payload);
                        }
                        Step::HostWrite(n) => {
                            if let Some(s) = hosts.last_mut() {
                                let s: &mut UnixStream = s;
                                let _ = s.set_nonblocking(true);
                                let _ = s.write(&vec![1u8; n]);
                            }
                        }
                        Step::HostConnect(port) => {
                            let mut s = UnixStream::connect(&f.uds).unwrap();
                            s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
                            hosts.push(s);
                        }
                        Step::Rx(room) => {
                            f.muxer.process_host_events();
                            let mut buf = Vec::new();
                            let _ = f.muxer.fill_rx(&mut buf, room);
                            prop_assert!(buf.len() <= room.max(HEADER_LEN));
                        }
                    }
                    for conn in f.muxer.conns.values() {
                        prop_assert!(conn.pending_len() <= BUF_ALLOC as usize);
                    }
                }
            }
        }
    }
}
