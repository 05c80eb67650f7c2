//! The plumbing that the container, volume and network stores share: each keeps one
//! directory per record, `<dir>/<name>/<file>.json`, written whole under a dot-name and
//! renamed into place, so dot-names are never records.

use serde::de::DeserializeOwned;
use std::path::Path;

#[derive(Debug)]
pub(crate) enum ReadError {
    Io(std::io::Error),
    Corrupt(serde_json::Error),
}

/// The record at `path`; None when there is none.
pub(crate) fn read<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, ReadError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(ReadError::Io(err)),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(ReadError::Corrupt)
}

/// The names of the records in `dir`, sorted (none when `dir` does not exist yet).
pub(crate) fn names(dir: &Path) -> std::io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .collect();
    names.sort();
    Ok(names)
}
