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
                    assert_eq!(*b, pattern(i, *received + k), "conn {i} byte {}", *received + k);
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

#[test]
fn warnings_about_the_guest_are_capped() {
    let mut budget = super::WarningBudget::default();
    let allowed = (0..100_000).filter(|_| budget.allow()).count();
    assert_eq!(allowed, super::WarningBudget::LIMIT as usize);
}
