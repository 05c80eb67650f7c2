//! The virtio-vsock packet header (virtio spec 1.2, 5.10.6): 44 bytes, little-endian. The
//! guest's agent channel carries these packets back to back on a virtio-serial port (see
//! [`crate::serial`]); the host's vessel-vsock and the guest's vessel-init both speak it.

/// Size of `struct virtio_vsock_hdr` on the wire.
pub const HEADER_LEN: usize = 44;

/// The host's CID in the hybrid model.
pub const HOST_CID: u64 = 2;
/// The guest's CID: every VM has a channel of its own, so all guests share one.
pub const GUEST_CID: u64 = 3;

/// `type`: a stream socket, the only type we serve.
pub const TYPE_STREAM: u16 = 1;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// `flags` of OP_SHUTDOWN: the sender will receive no more.
pub const SHUTDOWN_RCV: u32 = 1;
/// `flags` of OP_SHUTDOWN: the sender will send no more.
pub const SHUTDOWN_SEND: u32 = 2;

/// Largest payload we accept in one guest packet. Linux sends at most 64 KiB
/// (VIRTIO_VSOCK_MAX_PKT_BUF_SIZE); anything above is a broken or hostile driver.
pub const MAX_PAYLOAD: u32 = 64 * 1024;

/// One packet header, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub kind: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Header {
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let u32_at = |at: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&bytes[at..at + 4]);
            u32::from_le_bytes(b)
        };
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            kind: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        out[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        out[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        out[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        out[24..28].copy_from_slice(&self.len.to_le_bytes());
        out[28..30].copy_from_slice(&self.kind.to_le_bytes());
        out[30..32].copy_from_slice(&self.op.to_le_bytes());
        out[32..36].copy_from_slice(&self.flags.to_le_bytes());
        out[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        out[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        out
    }

    /// The header of a packet from the host to the guest.
    pub fn to_guest(guest_cid: u64, host_port: u32, guest_port: u32, op: u16) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: host_port,
            dst_port: guest_port,
            kind: TYPE_STREAM,
            op,
            ..Header::default()
        }
    }

    /// The RST that answers `self` (a packet from the guest).
    pub fn reset_reply(&self) -> Header {
        Header {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            kind: TYPE_STREAM,
            op: OP_RST,
            ..Header::default()
        }
    }
}

/// Hands each whole packet at the start of `bytes` to `handle` (header, payload) and
/// returns how many bytes they took; a packet cut short at the end waits for more bytes.
/// Fails with the length of a payload above [`MAX_PAYLOAD`]: past it, a byte stream of
/// packets cannot be followed.
pub fn take_packets(bytes: &[u8], mut handle: impl FnMut(&Header, &[u8])) -> Result<usize, u32> {
    let mut at = 0;
    while let Some(raw) = bytes.get(at..at + HEADER_LEN) {
        let header = Header::decode(raw.try_into().expect("HEADER_LEN bytes"));
        if header.len > MAX_PAYLOAD {
            return Err(header.len);
        }
        let end = at + HEADER_LEN + header.len as usize;
        let Some(payload) = bytes.get(at + HEADER_LEN..end) else { break };
        handle(&header, payload);
        at = end;
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 0x1234_5678,
            dst_port: 1024,
            len: 5,
            kind: TYPE_STREAM,
            op: OP_RW,
            flags: 0xdead_beef,
            buf_alloc: 262_144,
            fwd_cnt: 0xffff_fff0,
        }
    }

    #[test]
    fn header_round_trips() {
        let h = sample();
        assert_eq!(Header::decode(&h.encode()), h);
    }

    #[test]
    fn header_layout_is_the_spec_one() {
        let raw = sample().encode();
        assert_eq!(&raw[0..8], &3u64.to_le_bytes());
        assert_eq!(&raw[16..20], &0x1234_5678u32.to_le_bytes());
        assert_eq!(&raw[28..30], &1u16.to_le_bytes());
        assert_eq!(&raw[30..32], &5u16.to_le_bytes());
        assert_eq!(&raw[40..44], &0xffff_fff0u32.to_le_bytes());
    }

    #[test]
    fn packets_are_taken_whole_from_a_byte_stream() {
        let mut bytes = Vec::new();
        for payload in [&b"one"[..], b"", b"three"] {
            let header = Header { len: payload.len() as u32, ..sample() };
            bytes.extend_from_slice(&header.encode());
            bytes.extend_from_slice(payload);
        }
        let whole = bytes.len();
        // Every cut: the packets before it are taken, the rest waits.
        for cut in 0..=whole {
            let mut seen = Vec::new();
            let used =
                take_packets(&bytes[..cut], |_, payload| seen.push(payload.to_vec())).unwrap();
            let expected: Vec<&[u8]> = [&b"one"[..], b"", b"three"]
                .into_iter()
                .scan(0, |end, payload| {
                    *end += HEADER_LEN + payload.len();
                    Some((*end, payload))
                })
                .take_while(|(end, _)| *end <= cut)
                .map(|(_, payload)| payload)
                .collect();
            assert_eq!(seen, expected, "cut at {cut}");
            assert_eq!(used, expected.iter().map(|p| HEADER_LEN + p.len()).sum::<usize>());
        }
        let liar = Header { len: MAX_PAYLOAD + 1, ..sample() };
        assert_eq!(take_packets(&liar.encode(), |_, _| panic!("taken")), Err(MAX_PAYLOAD + 1));
    }
}
