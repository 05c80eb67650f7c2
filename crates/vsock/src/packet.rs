//! The virtio-vsock packet header, shared with the guest: `vessel_proto::vsock_packet`.

pub use vessel_proto::vsock_packet::*;
