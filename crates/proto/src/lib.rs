#![forbid(unsafe_code)]
//! The host-guest contract. Both sides depend on this crate and nothing else of each other.

/// Generated from `proto/agent.proto`.
#[allow(missing_debug_implementations, clippy::all)]
pub mod agent {
    tonic::include_proto!("vessel.agent.v1");
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

/// The vsock CID of the host, as the guest sees it.
pub const HOST_CID: u32 = 2;

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
