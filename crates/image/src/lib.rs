#![forbid(unsafe_code)]
//! Turning OCI images into ext4 root filesystems.
//!
//! [`layer`] applies layer tarballs (whiteouts, opaque directories, hard links,
//! compression) onto an ext4 [`vessel_ext4::Builder`]; [`rootfs`] writes a complete
//! image file atomically from a list of layers, or an empty journaled filesystem.

pub mod layer;
pub mod rootfs;
pub mod snapshot;

pub use layer::LayerError;
pub use rootfs::{
    create_empty, create_rootfs, create_with_dirs, Progress, RootfsError, RootfsOptions,
    NESTED_ROOT,
};
