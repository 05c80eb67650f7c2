//! One connection between a guest port and a host Unix stream: its state, its credit in
//! both directions, and the bounded buffer of guest bytes the host has not taken yet.
//!
//! Credit (virtio spec 5.10.6.3): each side advertises `buf_alloc` (its receive buffer) and
//! `fwd_cnt` (bytes it has consumed so far); a sender may have at most
//! `peer_buf_alloc - (sent - peer_fwd_cnt)` bytes in flight. Here "consumed" means written
//! to the host stream, so the bytes in flight from the guest are exactly the bytes in
//! `pending`, and that buffer can never exceed `BUF_ALLOC` unless the guest ignores credit.

use crate::packet::{Header, SHUTDOWN_RCV, SHUTDOWN_SEND};
use std::collections::VecDeque;
use std::io::{self, ErrorKind, Write};
use std::os::unix::net::UnixStream;

/// The receive buffer we advertise to the guest, per connection; also the bound of the
/// per-connection buffer of guest bytes waiting for the host.
pub const BUF_ALLOC: u32 = 256 * 1024;

/// Send the guest a credit update once this many bytes were forwarded since the last one
/// it saw. Any value up to BUF_ALLOC cannot stall: a guest out of credit has BUF_ALLOC bytes
/// in flight, and once they are forwarded the difference is BUF_ALLOC.
pub const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;

/// Longest `CONNECT <port>\n` line we wait for.
const MAX_HANDSHAKE: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: reading the `CONNECT <port>\n` line.
    Handshake,
    /// Host-initiated: REQUEST queued or sent, waiting for the guest's RESPONSE.
    Connecting,
    Established,
    /// The guest reset the connection; its last bytes still go to the host, then it closes.
    Draining,
}

/// Packets owed to the guest for this connection, sent in turn with the others'.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Owed {
    pub request: bool,
    pub response: bool,
    pub credit_update: bool,
    pub credit_request: bool,
    /// OP_RST, after which the connection is gone.
    pub rst: bool,
}

impl Owed {
    pub fn any(&self) -> bool {
        self.request || self.response || self.credit_update || self.credit_request || self.rst
    }
}

#[derive(Debug)]
pub struct Conn {
    pub stream: UnixStream,
    pub state: State,
    pub host_port: u32,
    pub guest_port: u32,
    handshake: Vec<u8>,

    // Guest -> host.
    /// Guest bytes not yet written to the host stream.
    pending: VecDeque<u8>,
    /// Bytes written to the host stream (our fwd_cnt).
    fwd_cnt: u32,
    /// fwd_cnt as last told to the guest.
    fwd_cnt_sent: u32,
    /// SHUTDOWN flags the guest sent.
    pub guest_shutdown: u32,
    /// We have shut the host stream's write half.
    pub host_write_closed: bool,

    // Host -> guest.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Payload bytes sent to the guest.
    tx_cnt: u32,
    /// A CREDIT_REQUEST was sent and no packet came back since.
    pub credit_requested: bool,
    /// The host stream is known readable (or at EOF): we stopped polling it for input.
    pub readable: bool,
    /// The host stream reached EOF; SHUTDOWN is owed or sent.
    pub host_eof: bool,

    pub owed: Owed,
    /// In the muxer's queue of connections with something for the guest.
    pub queued: bool,
    /// Epoll interest currently registered (0: not registered).
    pub interest: u32,
}

impl Conn {
    /// A host stream that has just connected to the hybrid socket.
    pub fn handshake(stream: UnixStream) -> Conn {
        Conn::new(stream, State::Handshake, 0, 0)
    }

    /// A guest-initiated connection, connected to the host listener.
    pub fn from_guest(stream: UnixStream, request: &Header) -> Conn {
        let mut conn = Conn::new(stream, State::Established, request.dst_port, request.src_port);
        conn.update_peer_credit(request);
        conn.owed.response = true;
        conn
    }

    fn new(stream: UnixStream, state: State, host_port: u32, guest_port: u32) -> Conn {
        Conn {
            stream,
            state,
            host_port,
            guest_port,
            handshake: Vec::new(),
            pending: VecDeque::new(),
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            guest_shutdown: 0,
            host_write_closed: false,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            credit_requested: false,
            readable: false,
            host_eof: false,
            owed: Owed::default(),
            queued: false,
            interest: 0,
        }
    }

    /// Feeds bytes of the handshake line. Returns the guest port once the line is complete.
    pub fn handshake_bytes(&mut self, bytes: &[u8]) -> Result<Option<u32>, HandshakeError> {
        for &b in bytes {
            if b == b'\n' {
                return parse_connect(&self.handshake).map(Some);
            }
            if self.handshake.len() >= MAX_HANDSHAKE {
                return Err(HandshakeError::TooLong);
            }
            self.handshake.push(b);
        }
        Ok(None)
    }

    /// Records the credit fields of any packet from the guest.
    pub fn update_peer_credit(&mut self, header: &Header) {
        self.peer_buf_alloc = header.buf_alloc;
        self.peer_fwd_cnt = header.fwd_cnt;
        self.credit_requested = false;
    }

    /// Bytes we may send the guest now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        // A guest that shrinks its buffer below what is in flight gets nothing more.
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    pub fn note_sent_to_guest(&mut self, bytes: u32) {
        self.tx_cnt = self.tx_cnt.wrapping_add(bytes);
    }

    /// Fills the credit fields of a packet to the guest.
    pub fn stamp(&mut self, header: &mut Header) {
        header.buf_alloc = BUF_ALLOC;
        header.fwd_cnt = self.fwd_cnt;
        self.fwd_cnt_sent = self.fwd_cnt;
        self.owed.credit_update = false;
    }

    /// Whether the host may read more from its stream for the guest.
    pub fn wants_host_input(&self) -> bool {
        match self.state {
            State::Handshake => true,
            State::Connecting | State::Draining => false,
            State::Established => {
                !self.host_eof && self.guest_shutdown & SHUTDOWN_RCV == 0 && !self.owed.rst
            }
        }
    }

    /// Whether a data packet could go to the guest now.
    pub fn can_send_data(&self) -> bool {
        self.readable && self.wants_host_input() && self.state == State::Established
    }

    /// Guest bytes waiting for the host stream.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Takes a payload from the guest: writes what the host stream accepts now, keeps the
    /// rest. Fails with `CreditExceeded` if the guest sent more than its credit allowed.
    pub fn forward(&mut self, payload: &[u8]) -> Result<(), ForwardError> {
        if self.guest_shutdown & SHUTDOWN_SEND != 0 || self.host_write_closed {
            return Err(ForwardError::AfterShutdown);
        }
        if self.pending.len() + payload.len() > BUF_ALLOC as usize {
            return Err(ForwardError::CreditExceeded {
                pending: self.pending.len(),
                len: payload.len(),
            });
        }
        let mut written = 0;
        if self.pending.is_empty() {
            written = write_some(&mut self.stream, payload).map_err(ForwardError::Write)?;
            self.add_forwarded(written);
        }
        self.pending.extend(&payload[written..]);
        Ok(())
    }

    /// Writes buffered guest bytes to the host stream until it would block.
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.pending.is_empty() {
            let (front, _) = self.pending.as_slices();
            let n = write_some(&mut self.stream, front)?;
            if n == 0 {
                break;
            }
            self.pending.drain(..n);
            self.add_forwarded(n);
        }
        Ok(())
    }

    fn add_forwarded(&mut self, bytes: usize) {
        // Bytes are bounded by BUF_ALLOC, so they fit; fwd_cnt wraps by design.
        self.fwd_cnt = self.fwd_cnt.wrapping_add(bytes as u32);
        if self.fwd_cnt.wrapping_sub(self.fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD {
            self.owed.credit_update = true;
        }
    }

    /// Whether the guest has said it will send no more and all it sent is with the host.
    pub fn guest_done_sending(&self) -> bool {
        self.guest_shutdown & SHUTDOWN_SEND != 0 && self.pending.is_empty()
    }
}

/// Writes what the stream takes without blocking: Ok(0) when it would block.
fn write_some(stream: &mut UnixStream, bytes: &[u8]) -> io::Result<usize> {
    if bytes.is_empty() {
        return Ok(0);
    }
    loop {
        match stream.write(bytes) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

fn parse_connect(line: &[u8]) -> Result<u32, HandshakeError> {
    let line = std::str::from_utf8(line).map_err(|_| HandshakeError::Malformed)?;
    let line = line.trim_end_matches('\r');
    let port = line.strip_prefix("CONNECT ").ok_or(HandshakeError::Malformed)?;
    port.trim().parse::<u32>().map_err(|_| HandshakeError::Malformed)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("handshake line is not `CONNECT <port>`")]
    Malformed,
    #[error("handshake line longer than {MAX_HANDSHAKE} bytes")]
    TooLong,
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(
        "guest sent {len} bytes with {pending} already buffered, past the credit it was given"
    )]
    CreditExceeded { pending: usize, len: usize },
    #[error("guest sent data after shutting down its sending side")]
    AfterShutdown,
    #[error("writing to the host stream")]
    Write(#[source] io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{OP_REQUEST, TYPE_STREAM};
    use std::io::Read;

    fn request(buf_alloc: u32, fwd_cnt: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 5000,
            dst_port: 1025,
            kind: TYPE_STREAM,
            op: OP_REQUEST,
            buf_alloc,
            fwd_cnt,
            ..Header::default()
        }
    }

    fn pair() -> (Conn, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        (Conn::from_guest(ours, &request(1000, 0)), theirs)
    }

    #[test]
    fn handshake_parses_connect_line_in_pieces() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = Conn::handshake(a);
        assert_eq!(c.handshake_bytes(b"CONN"), Ok(None));
        assert_eq!(c.handshake_bytes(b"ECT 1024\n"), Ok(Some(1024)));
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(
            Conn::handshake(a).handshake_bytes(b"CONNECT x\n"),
            Err(HandshakeError::Malformed)
        );
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(Conn::handshake(a).handshake_bytes(&[b'A'; 100]), Err(HandshakeError::TooLong));
    }

    #[test]
    fn peer_credit_follows_guest_counters() {
        let (mut c, _peer) = pair();
        assert_eq!(c.peer_credit(), 1000);
        c.note_sent_to_guest(600);
        assert_eq!(c.peer_credit(), 400);
        c.note_sent_to_guest(400);
        assert_eq!(c.peer_credit(), 0);
        c.update_peer_credit(&request(1000, 500));
        assert_eq!(c.peer_credit(), 500);
        // The guest shrank its buffer below what is in flight: no credit, no underflow.
        c.update_peer_credit(&request(100, 500));
        assert_eq!(c.peer_credit(), 0);
    }

    #[test]
    fn peer_credit_survives_counter_wrap() {
        let (mut c, _peer) = pair();
        c.tx_cnt = u32::MAX - 10;
        c.update_peer_credit(&request(1000, u32::MAX - 100));
        assert_eq!(c.peer_credit(), 910);
        c.note_sent_to_guest(50); // wraps
        assert_eq!(c.peer_credit(), 860);
    }

    #[test]
    fn forward_buffers_what_the_host_does_not_take_and_flushes_later() {
        let (mut c, mut peer) = pair();
        let chunk = vec![7u8; 64 * 1024];
        // Fill the socket buffer and then some; nothing is lost.
        let mut sent = 0usize;
        while c.pending_len() == 0 {
            c.forward(&chunk).unwrap();
            sent += chunk.len();
        }
        assert!(c.pending_len() <= BUF_ALLOC as usize);
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 20];
        peer.set_nonblocking(true).unwrap();
        loop {
            match peer.read(&mut buf) {
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if c.pending_len() == 0 {
                        break;
                    }
                    c.flush().unwrap();
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, sent);
        assert_eq!(c.fwd_cnt as usize, sent);
    }

    #[test]
    fn forward_refuses_bytes_past_credit() {
        let (mut c, _peer) = pair();
        let chunk = vec![1u8; 64 * 1024];
        let mut result = Ok(());
        for _ in 0..1000 {
            result = c.forward(&chunk);
            if result.is_err() {
                break;
            }
        }
        assert!(matches!(result, Err(ForwardError::CreditExceeded { .. })));
        assert!(c.pending_len() <= BUF_ALLOC as usize);
    }

    #[test]
    fn credit_update_owed_after_threshold_and_cleared_by_stamp() {
        let (mut c, _peer) = pair();
        c.forward(&vec![0u8; CREDIT_UPDATE_THRESHOLD as usize - 1]).unwrap();
        assert!(!c.owed.credit_update);
        c.forward(&[0u8]).unwrap();
        assert!(c.owed.credit_update);
        let mut h = Header::default();
        c.stamp(&mut h);
        assert_eq!(h.fwd_cnt, CREDIT_UPDATE_THRESHOLD);
        assert_eq!(h.buf_alloc, BUF_ALLOC);
        assert!(!c.owed.credit_update);
    }

    #[test]
    fn no_data_after_guest_shutdown() {
        let (mut c, _peer) = pair();
        c.guest_shutdown = SHUTDOWN_SEND;
        assert!(matches!(c.forward(b"x"), Err(ForwardError::AfterShutdown)));
        assert!(c.guest_done_sending());
    }
}
