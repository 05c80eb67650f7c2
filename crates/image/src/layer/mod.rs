//! Applying OCI layer tarballs onto an ext4 image being built.
//!
//! Semantics follow the OCI image spec's changeset rules as umoci implements them:
//! entries are applied in order and the last one for a path wins (metadata too);
//! `.wh.NAME` removes NAME; `.wh..wh..opq` empties its directory of everything not
//! written by the current layer; a file replaces a directory and vice versa; hard
//! links may name files of earlier layers.

mod apply;
pub mod compression;
pub mod path;
mod pax;

use std::io;

pub use apply::{apply_layer, LayerStats};
pub use compression::Compression;

/// Errors from applying one layer. `layer` is the layer's file name or digest.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("cannot open layer {layer}")]
    Open {
        layer: String,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer} is corrupt or truncated{} (download it again)", at(.entry))]
    Corrupt {
        layer: String,
        entry: Option<String>,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: entry {entry:?} cannot be stored: {reason}")]
    Invalid { layer: String, entry: String, reason: String },
    #[error("layer {layer}: entry {entry:?} cannot be stored")]
    Ext4 {
        layer: String,
        entry: String,
        #[source]
        source: vessel_ext4::Ext4Error,
    },
}

fn at(entry: &Option<String>) -> String {
    match entry {
        Some(e) => format!(" at entry {e:?}"),
        None => String::new(),
    }
}
