//! The agent channel's host end: QEMU connects a virtio-serial port's chardev to our
//! socket, and the port's byte stream carries vsock packets back to back, each a header
//! that gives its payload's length, then the payload. The guest's vessel-init speaks the
//! other end (crates/agent/src/channel.rs). We open the stream with a hello carrying fresh
//! random bytes, which the guest mixes into its random generator.

use crate::muxer::{Fill, Muxer};
use crate::packet::{take_packets, HEADER_LEN, MAX_PAYLOAD};
use anyhow::Context;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use vessel_proto::serial;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

const PORT_TOKEN: u64 = 1;
const MUXER_TOKEN: u64 = 2;
/// Packets for the guest are made while fewer bytes than this wait for QEMU to take them;
/// beyond, host streams wait (their data stays in their sockets).
const OUT_HIGH_WATER: usize = 256 * 1024;
/// Past this many answers owed to the guest, or `OUT_HIGH_WATER` bytes, we stop reading
/// what it sends until it reads its own: a guest that writes without reading cannot make
/// us buffer without bound.
const MAX_RESETS_PENDING: usize = 1024;
const READ_CHUNK: usize = 64 * 1024;

/// Listens on `socket`, takes QEMU's connection, and moves packets until QEMU hangs up.
pub fn serve(socket: &Path, mut muxer: Muxer) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(socket);
    let listener =
        UnixListener::bind(socket).with_context(|| format!("listening on {}", socket.display()))?;
    let (port, _) = listener.accept().context("accepting QEMU's connection")?;
    drop(listener);
    let _ = std::fs::remove_file(socket);
    Channel::new(port)?.run(&mut muxer)
}

struct Channel {
    port: UnixStream,
    epoll: Epoll,
    /// Bytes from the guest not yet a whole packet.
    input: Vec<u8>,
    /// Bytes for the guest QEMU has not taken yet.
    output: Vec<u8>,
    /// What the port is watched for.
    watching: EventSet,
}

impl Channel {
    fn new(port: UnixStream) -> anyhow::Result<Channel> {
        let mut entropy = [0u8; serial::ENTROPY_LEN];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut urandom| urandom.read_exact(&mut entropy))
            .context("reading /dev/urandom for the guest's hello")?;
        let output = serial::hello(&entropy).to_vec();
        port.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            port.as_raw_fd(),
            EpollEvent::new(EventSet::IN | EventSet::OUT, PORT_TOKEN),
        )?;
        let watching = EventSet::IN | EventSet::OUT;
        Ok(Channel { port, epoll, input: Vec::new(), output, watching })
    }

    fn run(&mut self, muxer: &mut Muxer) -> anyhow::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            muxer.epoll_fd(),
            EpollEvent::new(EventSet::IN, MUXER_TOKEN),
        )?;
        let mut events = [EpollEvent::default(); 4];
        loop {
            // The packets owed to the guest, while there is room for them.
            while self.output.len() < OUT_HIGH_WATER
                && muxer.has_work()
                && muxer.fill_rx(&mut self.output, HEADER_LEN + MAX_PAYLOAD as usize)
                    != Fill::Nothing
            {}
            if !self.flush()? {
                return Ok(());
            }
            let backlogged =
                self.output.len() >= OUT_HIGH_WATER || muxer.resets_pending() >= MAX_RESETS_PENDING;
            self.watch(!backlogged, !self.output.is_empty())?;
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("epoll_wait"),
            };
            for event in &events[..n] {
                match event.data() {
                    // A hang-up is read too, paused or not: the read sees the end.
                    PORT_TOKEN
                        if event.event_set().intersects(EventSet::IN | EventSet::HANG_UP)
                            && !self.read_guest(muxer)? =>
                    {
                        return Ok(());
                    }
                    MUXER_TOKEN => muxer.process_host_events(),
                    _ => {}
                }
            }
        }
    }

    /// Reads what the guest sent and hands whole packets to the muxer. False once QEMU
    /// hung up.
    fn read_guest(&mut self, muxer: &mut Muxer) -> anyhow::Result<bool> {
        let start = self.input.len();
        self.input.resize(start + READ_CHUNK, 0);
        let read = self.port.read(&mut self.input[start..]);
        let n = match read {
            Ok(0) => return Ok(false),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(false),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => 0,
            Err(e) => return Err(e).context("reading the agent channel"),
        };
        self.input.truncate(start + n);
        let taken =
            take_packets(&self.input, |header, payload| muxer.guest_packet(header, payload));
        // The guest is untrusted: past a bad length the stream cannot be followed.
        let at = taken.map_err(|len| {
            anyhow::anyhow!(
                "the guest sent a packet of {len} bytes, more than {MAX_PAYLOAD}: \
                 closing the agent channel"
            )
        })?;
        self.input.drain(..at);
        Ok(true)
    }

    /// Writes what QEMU takes now. False once QEMU hung up.
    fn flush(&mut self) -> anyhow::Result<bool> {
        while !self.output.is_empty() {
            match self.port.write(&self.output) {
                Ok(n) => {
                    self.output.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) =>
                {
                    return Ok(false)
                }
                Err(e) => return Err(e).context("writing the agent channel"),
            }
        }
        Ok(true)
    }

    /// Watches the port for input (unless paused) and, while anything is left to write,
    /// for room.
    fn watch(&mut self, input: bool, output: bool) -> anyhow::Result<()> {
        let mut events = EventSet::empty();
        if input {
            events |= EventSet::IN;
        }
        if output {
            events |= EventSet::OUT;
        }
        if events != self.watching {
            let event = EpollEvent::new(events, PORT_TOKEN);
            self.epoll.ctl(ControlOperation::Modify, self.port.as_raw_fd(), event)?;
            self.watching = events;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{Header, GUEST_CID, OP_REQUEST, OP_RESPONSE, OP_RW, TYPE_STREAM};
    use std::io::BufRead;

    /// vessel-vsock's channel in a thread, with QEMU's end connected: the guest's side,
    /// played by hand. Returns the hybrid socket's path too.
    struct Served {
        _dir: tempfile::TempDir,
        guest: UnixStream,
        hybrid: std::path::PathBuf,
        thread: std::thread::JoinHandle<anyhow::Result<()>>,
    }

    fn serve_in_thread() -> Served {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("serial.sock");
        let hybrid = dir.path().join("vsock.sock");
        let muxer = Muxer::new(GUEST_CID, &hybrid).unwrap();
        let thread = {
            let socket = socket.clone();
            std::thread::spawn(move || serve(&socket, muxer))
        };
        while !socket.exists() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let guest = UnixStream::connect(&socket).unwrap();
        Served { _dir: dir, guest, hybrid, thread }
    }

    fn read_packet(stream: &mut UnixStream) -> (Header, Vec<u8>) {
        let mut raw = [0u8; HEADER_LEN];
        stream.read_exact(&mut raw).unwrap();
        let header = Header::decode(&raw);
        let mut payload = vec![0u8; header.len as usize];
        stream.read_exact(&mut payload).unwrap();
        (header, payload)
    }

    fn guest_packet(op: u16, src_port: u32, dst_port: u32, payload: &[u8]) -> Vec<u8> {
        let header = Header {
            src_cid: GUEST_CID,
            dst_cid: crate::packet::HOST_CID,
            src_port,
            dst_port,
            len: payload.len() as u32,
            kind: TYPE_STREAM,
            op,
            buf_alloc: 256 * 1024,
            ..Header::default()
        };
        let mut bytes = header.encode().to_vec();
        bytes.extend_from_slice(payload);
        bytes
    }

    /// The guest's side played by hand: the hello arrives first, a host `CONNECT` becomes
    /// a REQUEST, and data flows both ways, split over writes anywhere.
    #[test]
    fn packets_travel_a_byte_stream_both_ways() {
        let Served { _dir, mut guest, hybrid, thread: served } = serve_in_thread();
        let mut hello = [0u8; serial::HELLO_LEN];
        guest.read_exact(&mut hello).unwrap();
        assert!(serial::parse_hello(&hello).is_some());

        let mut host = UnixStream::connect(&hybrid).unwrap();
        host.write_all(b"CONNECT 1024\n").unwrap();
        let (request, _) = read_packet(&mut guest);
        assert_eq!((request.op, request.dst_port), (OP_REQUEST, 1024));
        // The answer and the data, cut in the middle of a header.
        let mut bytes = guest_packet(OP_RESPONSE, 1024, request.src_port, &[]);
        bytes.extend(guest_packet(OP_RW, 1024, request.src_port, b"from the guest"));
        let (first, second) = bytes.split_at(HEADER_LEN + 10);
        guest.write_all(first).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        guest.write_all(second).unwrap();
        let mut reader = std::io::BufReader::new(host.try_clone().unwrap());
        let mut ok = String::new();
        reader.read_line(&mut ok).unwrap();
        assert!(ok.starts_with("OK "), "{ok}");
        let mut got = [0u8; 14];
        reader.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"from the guest");

        host.write_all(b"from the host").unwrap();
        let (data, payload) = read_packet(&mut guest);
        assert_eq!((data.op, payload.as_slice()), (OP_RW, &b"from the host"[..]));

        // QEMU hanging up ends the channel.
        drop(guest);
        served.join().unwrap().unwrap();
    }

    #[test]
    fn a_lying_length_closes_the_channel() {
        let Served { _dir, mut guest, thread: served, .. } = serve_in_thread();
        let mut bad = Header { len: u32::MAX, ..Header::default() };
        bad.src_cid = GUEST_CID;
        guest.write_all(&bad.encode()).unwrap();
        let err = served.join().unwrap().unwrap_err();
        assert!(err.to_string().contains("closing the agent channel"), "{err}");
    }

    /// A guest that sends packets needing answers and never reads its port: we stop
    /// reading it once the answers pile up, so its writes block instead of our memory
    /// growing.
    #[test]
    fn a_guest_that_never_reads_is_not_read_either() {
        let Served { _dir, mut guest, thread: served, .. } = serve_in_thread();
        guest.set_write_timeout(Some(std::time::Duration::from_millis(500))).unwrap();
        // Data for no connection: each is answered with an RST.
        let junk: Vec<u8> =
            (0..1000u32).flat_map(|port| guest_packet(OP_RW, port, 9, b"x")).collect();
        let mut written = 0usize;
        let blocked = loop {
            match guest.write(&junk) {
                Ok(n) => written += n,
                Err(e) => break e,
            }
            assert!(written < 256 << 20, "the host read {written} bytes without being read");
        };
        assert_eq!(blocked.kind(), ErrorKind::WouldBlock, "{blocked}");
        drop(guest);
        served.join().unwrap().unwrap();
    }
}
