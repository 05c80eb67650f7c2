#![forbid(unsafe_code)]
//! Writing ext4 filesystem images.
