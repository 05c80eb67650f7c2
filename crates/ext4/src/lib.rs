#![forbid(unsafe_code)]
//! Writing ext4 filesystem images into regular (sparse) files, and reading them back.
//!
//! The writer never needs root, a loop device or mkfs: [`Builder`] streams file data
//! straight to its final blocks, keeps only metadata in memory, and lays out inode
//! tables, directories and bitmaps when [`Builder::finish`] is called. [`format_empty`]
//! makes an empty journaled filesystem for writable disks. [`reader::Reader`] reads an
//! image back (used by tests and property tests).
//!
//! Layout decisions are documented in `docs/ext4.md`.

mod alloc;
pub mod checksum;
mod dir;
mod extent;
mod finish;
mod group;
mod htree;
mod inode;
mod journal;
mod le;
pub mod reader;
mod superblock;
mod tree;
mod writer;
mod xattr;

use std::io;

pub use tree::{DevNumbers, FileData, Metadata, Node, NodeId, NodeKind, Timestamp, Tree, Xattr};
pub use writer::{format_empty, BuildOptions, Builder, Summary};
pub use xattr::validate_xattrs;

/// Filesystem block size: always 4 KiB.
pub const BLOCK_SIZE: u64 = 4096;
/// Longest file name ext4 can hold.
pub const MAX_NAME_LEN: usize = 255;
/// Inode number of the root directory.
pub const ROOT_INO: u32 = 2;

/// Errors from writing an ext4 image.
#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    #[error("cannot {op} the image file")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("filesystem full: {what} needs more space than the {size_mib} MiB image holds (use a larger --size, or omit it to size automatically)")]
    NoSpace { what: String, size_mib: u64 },
    #[error("too many files: {needed} inodes needed but an image of {size_mib} MiB holds at most {max} (use a larger --size)")]
    TooManyInodes { needed: u64, max: u64, size_mib: u64 },
    #[error("image size {size} bytes is too small (the minimum is {min} bytes)")]
    SizeTooSmall { size: u64, min: u64 },
    #[error("image size {size} bytes is too large (the maximum is {max} bytes)")]
    SizeTooLarge { size: u64, max: u64 },
    #[error("invalid file name: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("file is too large for ext4: {size} bytes (the maximum is {max} bytes)")]
    FileTooLarge { size: u64, max: u64 },
    #[error("file data ended early: expected {expected} bytes, got {got}")]
    ShortData { expected: u64, got: u64 },
    #[error("cannot read file data")]
    ReadData {
        #[source]
        source: io::Error,
    },
    #[error("extended attributes do not fit in one block: {reason}")]
    XattrTooLarge { reason: String },
    #[error("unsupported extended attribute {name:?} (only user., trusted., security. and system. are kept)")]
    XattrName { name: String },
    #[error("malformed POSIX ACL in extended attribute {name:?}")]
    BadAcl { name: String },
    #[error("invalid symlink target: {reason}")]
    InvalidSymlink { reason: &'static str },
    #[error("inode {ino} has more than 65000 hard links")]
    TooManyLinks { ino: u32 },
    #[error("directory {path:?} has too many entries for ext4 ({entries})")]
    DirTooLarge { path: String, entries: usize },
}

pub type Result<T, E = Ext4Error> = std::result::Result<T, E>;

pub(crate) fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> Ext4Error {
    move |source| Ext4Error::Io { op, source }
}
