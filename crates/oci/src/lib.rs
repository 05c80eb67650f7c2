#![forbid(unsafe_code)]
//! OCI images: references, digests, manifests, the content store (an OCI image layout)
//! and the registry client. Knows nothing of ext4 or VMs.

pub mod archive;
pub mod auth;
pub mod digest;
pub mod image;
pub mod media;
pub mod reference;
pub mod registry;
pub mod store;
pub mod transport;

pub use digest::{Digest, DigestError};
pub use reference::{Reference, ReferenceError};
pub use store::{Store, StoreError};
