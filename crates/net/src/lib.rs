//! Host networking for containers: the pieces a supervisor and the network commands put
//! together. A network is a Linux bridge holding the gateway address, with one nftables
//! table for its egress; each container's VM gets a TAP on that bridge. Names resolve
//! through a small DNS responder, and published ports through a userspace proxy. Nothing
//! here knows about containers or VMs.

pub mod dns;
pub mod link;
pub mod nft;
pub mod ports;
pub mod proxy;
pub mod subnet;
pub mod tap;
