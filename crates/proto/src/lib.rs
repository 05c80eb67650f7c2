#![forbid(unsafe_code)]
//! The host-guest contract. Both sides depend on this crate and nothing else of each other.

/// Generated from `proto/agent.proto`.
#[allow(missing_debug_implementations, clippy::all)]
pub mod agent {
    tonic::include_proto!("vessel.agent.v1");
}

pub mod vsock_packet;

/// The agent channel: a virtio-serial port that carries virtio-vsock packets
/// ([`vsock_packet`]) back to back, as a vsock device would, so the host side keeps its
/// hybrid Unix sockets. QEMU cannot save a VM with a vhost-user vsock device; a VM with a
/// serial port can be saved and restored (docs/warm-start.md).
///
/// The host opens the stream with a hello: [`serial::HELLO_MAGIC`] and fresh random bytes,
/// which the guest mixes into its random generator before anything else runs. A VM saved
/// while waiting for it and restored many times must not draw the same numbers twice.
pub mod serial {
    /// The port's name (`virtserialport,name=`), as the guest finds it in
    /// /sys/class/virtio-ports.
    pub const PORT_NAME: &str = "vessel.agent";
    pub const HELLO_MAGIC: &[u8; 8] = b"vessel1\n";
    pub const ENTROPY_LEN: usize = 32;
    pub const HELLO_LEN: usize = HELLO_MAGIC.len() + ENTROPY_LEN;

    /// The host's hello with `entropy`.
    pub fn hello(entropy: &[u8; ENTROPY_LEN]) -> [u8; HELLO_LEN] {
        let mut hello = [0u8; HELLO_LEN];
        hello[..HELLO_MAGIC.len()].copy_from_slice(HELLO_MAGIC);
        hello[HELLO_MAGIC.len()..].copy_from_slice(entropy);
        hello
    }

    /// The entropy in a hello, if `bytes` is one.
    pub fn parse_hello(bytes: &[u8; HELLO_LEN]) -> Option<[u8; ENTROPY_LEN]> {
        let (magic, entropy) = bytes.split_at(HELLO_MAGIC.len());
        (magic == HELLO_MAGIC).then(|| entropy.try_into().ok()).flatten()
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn a_hello_round_trips_and_others_are_refused() {
            let entropy = [7u8; super::ENTROPY_LEN];
            let hello = super::hello(&entropy);
            assert_eq!(super::parse_hello(&hello), Some(entropy));
            let mut other = hello;
            other[0] = b'V';
            assert_eq!(super::parse_hello(&other), None);
        }
    }
}

/// vsock ports, in the guest's port space.
pub mod ports {
    /// The agent's gRPC server (guest listens, host connects).
    pub const AGENT: u32 = 1024;
    /// The agent connects here (host listens) once it serves, so the host need not poll.
    pub const READY: u32 = 1025;
    /// Echoes every byte back on the same connection: proves the stream path (the one
    /// process stdio will take) end to end, and measures it.
    pub const ECHO: u32 = 1026;
}

/// The container's writable disk: the overlay's upper and work directories sit in its root.
/// The host makes them when it formats the disk; the agent makes them if they are missing.
pub mod writable_disk {
    pub const UPPER: &str = "upper";
    pub const WORK: &str = "work";
}

/// The agent's "ready" call on `ports::READY`, and the host's answer: its clock, which the
/// guest's is set from.
pub mod ready {
    use std::time::Duration;

    /// What the agent writes once it serves.
    pub const MESSAGE: &[u8] = b"ready\n";

    /// The host's answer: `time <nanoseconds since the Unix epoch>\n`.
    pub fn time_reply(since_epoch: Duration) -> String {
        format!("time {}\n", since_epoch.as_nanos())
    }

    /// The time in a `time_reply`, if it is one (and fits in a `Duration` of whole
    /// nanoseconds below 2^64).
    pub fn parse_time_reply(reply: &[u8]) -> Option<Duration> {
        let text = std::str::from_utf8(reply).ok()?;
        let digits = text.strip_prefix("time ")?.strip_suffix('\n')?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse::<u64>().ok().map(Duration::from_nanos)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_time_reply_round_trips() {
            let time = Duration::new(1_795_767_090, 842_262_000);
            assert_eq!(parse_time_reply(time_reply(time).as_bytes()), Some(time));
        }

        #[test]
        fn malformed_time_replies_are_refused() {
            for bad in [
                &b""[..],
                b"time \n",
                b"time 12",
                b"time -5\n",
                b"time +5\n",
                b"time 1 2\n",
                b"time 99999999999999999999999\n",
                b"ready\n",
            ] {
                assert_eq!(parse_time_reply(bad), None, "{:?}", String::from_utf8_lossy(bad));
            }
        }
    }
}

/// The capabilities a container's processes keep when the request names none: docker's
/// default set (moby's `oci/caps/defaults.go`). The host starts from it for `--cap-add`
/// and `--cap-drop`.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];
