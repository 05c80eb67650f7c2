#![forbid(unsafe_code)]
//! The tar streams of `vessel cp`: a file tree written as an archive whose single top-level
//! entry is named after the copied path, and an archive extracted at a destination with
//! docker cp's rules. The host and the guest agent both use it, in both directions.
//!
//! Extraction treats every archive as hostile: nothing is ever written outside the
//! destination, whatever the entry names, symlinks or hard links say.

mod extract;
mod name;
mod write;

pub use extract::{extract, ExtractOptions};
pub use write::write_path;

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{}: no such file or directory", .path.display())]
    NotFound { path: PathBuf },
    #[error("cannot archive {}", .path.display())]
    Archive {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot finish the archive")]
    Finish(#[source] io::Error),
    #[error("cannot read the archive")]
    Read(#[source] io::Error),
    #[error("destination {} does not exist (nor does its parent directory)", .path.display())]
    DestinationMissing { path: PathBuf },
    #[error("destination {} is not a directory", .path.display())]
    NotADirectory { path: PathBuf },
    #[error("cannot open destination {}", .path.display())]
    Destination {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot copy a directory onto the file {}", .path.display())]
    DirectoryOntoFile { path: PathBuf },
    #[error(
        "the archive holds more than one top-level entry ({first:?}, {other:?}); \
         copy it into an existing directory"
    )]
    SeveralTopLevel { first: String, other: String },
    #[error("refusing archive entry {name:?}: {reason}")]
    Refused { name: String, reason: &'static str },
    #[error("cannot replace directory {name:?} with a non-directory")]
    ReplaceDirectory { name: String },
    #[error("cannot extract {name:?}")]
    Extract {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// What kind of failure an [`ArchiveError`] is, for callers that report a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The source, or the destination's parent, does not exist.
    NotFound,
    /// The request or the archive cannot be honoured as given.
    Invalid,
    /// Reading or writing failed.
    Io,
}

impl ArchiveError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ArchiveError::NotFound { .. } | ArchiveError::DestinationMissing { .. } => {
                ErrorKind::NotFound
            }
            ArchiveError::NotADirectory { .. }
            | ArchiveError::DirectoryOntoFile { .. }
            | ArchiveError::SeveralTopLevel { .. }
            | ArchiveError::Refused { .. }
            | ArchiveError::ReplaceDirectory { .. } => ErrorKind::Invalid,
            ArchiveError::Archive { .. }
            | ArchiveError::Finish(_)
            | ArchiveError::Read(_)
            | ArchiveError::Destination { .. }
            | ArchiveError::Extract { .. } => ErrorKind::Io,
        }
    }
}
