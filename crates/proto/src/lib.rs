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
