//! The content store: an OCI image layout (`oci-layout`, `index.json`, `blobs/<alg>/<hex>`)
//! that skopeo and other OCI tools can read.
//!
//! Safety rules, so that several processes may pull, tag and remove at once and a process
//! killed at any moment leaves the layout consistent:
//! - a blob is written to `ingest/`, verified against its digest (and size) while written,
//!   synced, and only then renamed into `blobs/`;
//! - `index.json` is rewritten whole (temporary file, sync, rename) under `.index.lock`;
//! - writers hold `.gc.lock` shared while their blobs are not yet named in `index.json`;
//!   garbage collection takes it exclusively and then also clears `ingest/`.

use crate::digest::{Digest, Hasher};
use crate::media;
use crate::reference::Reference;
use oci_spec::image::{Descriptor, ImageIndex, ImageIndexBuilder, MediaType};
use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// The annotation naming an image in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Manifests and configs larger than this are refused (registries use 4 MiB).
pub const MAX_METADATA: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("digest mismatch for {expected}: the content has {actual} (the blob is corrupt; nothing was stored)")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual} (truncated or oversized blob; nothing was stored)")]
    SizeMismatch { digest: Digest, expected: u64, actual: u64 },
    #[error("blob {0} is missing from the store (pull the image again)")]
    MissingBlob(Digest),
    #[error("{what} {digest} is larger than {MAX_METADATA} bytes")]
    TooLarge { what: &'static str, digest: Digest },
    #[error("the store's index.json does not parse: {path}")]
    Index {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { action, path: path.to_path_buf(), source }
}

/// One named image: the name and the descriptor of its manifest (or index).
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: Reference,
    pub descriptor: Descriptor,
}

impl Entry {
    pub fn digest(&self) -> Digest {
        descriptor_digest(&self.descriptor)
    }
}

/// The digest of a descriptor, in our own type (oci-spec validated it already).
pub fn descriptor_digest(d: &Descriptor) -> Digest {
    d.digest()
        .to_string()
        .parse()
        .unwrap_or_else(|_| Digest::sha256(d.digest().as_ref().as_bytes()))
}

/// The OCI image layout of one state root.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// A held `flock`; released when dropped.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

fn lock_file(path: &Path, op: rustix::fs::FlockOperation) -> Result<Option<Lock>, StoreError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err("open", path))?;
    match rustix::fs::flock(&file, op) {
        Ok(()) => Ok(Some(Lock { _file: file })),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(io_err("lock", path)(e.into())),
    }
}

impl Store {
    /// Opens (creating if needed) the layout in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let dir = dir.into();
        let store = Store { dir };
        for sub in ["blobs/sha256", "blobs/sha512", "ingest"] {
            let path = store.dir.join(sub);
            fs::create_dir_all(&path).map_err(io_err("create", &path))?;
        }
        let layout = store.dir.join("oci-layout");
        if !layout.exists() {
            store.write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let index = store.index_path();
        if !index.exists() {
            let _lock = store.index_lock()?;
            if !index.exists() {
                store.write_index(&[])?;
            }
        }
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("index.json")
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs").join(digest.algorithm().as_str()).join(digest.hex())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    fn index_lock(&self) -> Result<Lock, StoreError> {
        let path = self.dir.join(".index.lock");
        Ok(lock_file(&path, rustix::fs::FlockOperation::LockExclusive)?.expect("blocking lock"))
    }

    /// Held while writing blobs that `index.json` does not name yet, so that garbage
    /// collection waits.
    pub fn lease(&self) -> Result<Lock, StoreError> {
        let path = self.dir.join(".gc.lock");
        Ok(lock_file(&path, rustix::fs::FlockOperation::LockShared)?.expect("blocking lock"))
    }

    /// Writes a whole file atomically: temporary file in `ingest/`, sync, rename.
    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let ingest = self.dir.join("ingest");
        let mut tmp = tempfile::Builder::new()
            .suffix(".partial")
            .tempfile_in(&ingest)
            .map_err(io_err("create a file in", &ingest))?;
        tmp.write_all(bytes).map_err(io_err("write", tmp.path()))?;
        tmp.as_file().sync_all().map_err(io_err("sync", path))?;
        set_mode(tmp.as_file(), 0o644);
        tmp.persist(path).map_err(|e| io_err("write", path)(e.error))?;
        Ok(())
    }

    /// A writer for one blob; `expected` is checked by [`BlobWriter::commit`].
    pub fn writer(&self, expected: Option<(Digest, u64)>) -> Result<BlobWriter, StoreError> {
        let ingest = self.dir.join("ingest");
        let file = tempfile::Builder::new()
            .suffix(".partial")
            .tempfile_in(&ingest)
            .map_err(io_err("create a file in", &ingest))?;
        let hasher = match &expected {
            Some((digest, _)) => digest.hasher(),
            None => Hasher::new(crate::digest::Algorithm::Sha256),
        };
        Ok(BlobWriter { store: self.clone(), file, hasher, written: 0, expected })
    }

    /// Stores `bytes` (verified against `expected` when given) and returns their digest.
    pub fn put(&self, bytes: &[u8], expected: Option<&Digest>) -> Result<Digest, StoreError> {
        let digest = Digest::sha256(bytes);
        if let Some(expected) = expected {
            let actual = {
                let mut h = expected.hasher();
                h.update(bytes);
                h.finish()
            };
            if &actual != expected {
                return Err(StoreError::DigestMismatch { expected: expected.clone(), actual });
            }
            if self.has_blob(expected) {
                return Ok(expected.clone());
            }
            let mut w = self.writer(Some((expected.clone(), bytes.len() as u64)))?;
            w.write_all(bytes).map_err(io_err("write", &self.dir))?;
            return w.commit();
        }
        if !self.has_blob(&digest) {
            let mut w = self.writer(Some((digest.clone(), bytes.len() as u64)))?;
            w.write_all(bytes).map_err(io_err("write", &self.dir))?;
            w.commit()?;
        }
        Ok(digest)
    }

    /// Reads a small blob (manifest, config), verifying its digest again.
    pub fn read_metadata(
        &self,
        digest: &Digest,
        what: &'static str,
    ) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        let file = File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::MissingBlob(digest.clone()),
            _ => io_err("open", &path)(e),
        })?;
        let mut bytes = Vec::new();
        file.take(MAX_METADATA + 1).read_to_end(&mut bytes).map_err(io_err("read", &path))?;
        if bytes.len() as u64 > MAX_METADATA {
            return Err(StoreError::TooLarge { what, digest: digest.clone() });
        }
        let mut h = digest.hasher();
        h.update(&bytes);
        let actual = h.finish();
        if &actual != digest {
            return Err(StoreError::DigestMismatch { expected: digest.clone(), actual });
        }
        Ok(bytes)
    }

    /// The named images, in `index.json` order.
    pub fn entries(&self) -> Result<Vec<Entry>, StoreError> {
        let path = self.index_path();
        let bytes = fs::read(&path).map_err(io_err("read", &path))?;
        let index: ImageIndex = serde_json::from_slice(&bytes)
            .map_err(|source| StoreError::Index { path: path.clone(), source })?;
        Ok(index
            .manifests()
            .iter()
            .filter_map(|d| {
                let name = d.annotations().as_ref()?.get(REF_NAME)?.parse().ok()?;
                Some(Entry { name, descriptor: d.clone() })
            })
            .collect())
    }

    fn write_index(&self, entries: &[Entry]) -> Result<(), StoreError> {
        let manifests = entries
            .iter()
            .map(|e| {
                let mut d = e.descriptor.clone();
                let mut annotations = d.annotations().clone().unwrap_or_default();
                annotations.insert(REF_NAME.to_string(), e.name.to_string());
                d.set_annotations(Some(annotations));
                d
            })
            .collect::<Vec<_>>();
        let index = ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageIndex)
            .manifests(manifests)
            .build()
            .expect("all index fields set");
        let bytes = serde_json::to_vec_pretty(&index).expect("an index serializes");
        self.write_atomic(&self.index_path(), &bytes)
    }

    /// Changes `index.json` under its lock; `f` returns what to hand back.
    pub fn update<T>(
        &self,
        f: impl FnOnce(&mut Vec<Entry>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let _lock = self.index_lock()?;
        let mut entries = self.entries()?;
        let out = f(&mut entries)?;
        self.write_index(&entries)?;
        Ok(out)
    }

    /// Names `descriptor` `name`, replacing what had that name. Returns the replaced entry.
    pub fn set(
        &self,
        name: &Reference,
        descriptor: Descriptor,
    ) -> Result<Option<Entry>, StoreError> {
        self.update(|entries| {
            let old = entries.iter().position(|e| &e.name == name).map(|i| entries.remove(i));
            entries.push(Entry { name: name.clone(), descriptor });
            Ok(old)
        })
    }

    /// Removes the name; returns the removed entry.
    pub fn remove(&self, name: &Reference) -> Result<Option<Entry>, StoreError> {
        self.update(|entries| {
            Ok(entries.iter().position(|e| &e.name == name).map(|i| entries.remove(i)))
        })
    }

    /// The blobs that named images need: manifests, indexes, their configs and layers.
    pub fn reachable(&self) -> Result<BTreeSet<Digest>, StoreError> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<(Digest, String)> = self
            .entries()?
            .iter()
            .map(|e| (e.digest(), e.descriptor.media_type().to_string()))
            .collect();
        while let Some((digest, media_type)) = todo.pop() {
            if !seen.insert(digest.clone()) {
                continue;
            }
            if !(media::is_manifest(&media_type) || media::is_index(&media_type)) {
                continue;
            }
            let Ok(bytes) = self.read_metadata(&digest, "manifest") else { continue };
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) else { continue };
            let children = value
                .get("config")
                .into_iter()
                .chain(value.get("layers").and_then(|l| l.as_array()).into_iter().flatten())
                .chain(value.get("manifests").and_then(|l| l.as_array()).into_iter().flatten());
            for child in children {
                let digest =
                    child.get("digest").and_then(|d| d.as_str()).and_then(|d| d.parse().ok());
                let media_type = child.get("mediaType").and_then(|m| m.as_str()).unwrap_or("");
                if let Some(digest) = digest {
                    todo.push((digest, media_type.to_string()));
                }
            }
        }
        Ok(seen)
    }

    /// Removes blobs no named image needs, and leftover temporary files. With `wait`
    /// false, returns `None` at once when a writer holds the store.
    pub fn gc(&self, wait: bool) -> Result<Option<GcReport>, StoreError> {
        let path = self.dir.join(".gc.lock");
        let op = if wait {
            rustix::fs::FlockOperation::LockExclusive
        } else {
            rustix::fs::FlockOperation::NonBlockingLockExclusive
        };
        let Some(_lock) = lock_file(&path, op)? else { return Ok(None) };
        let mut report = GcReport::default();
        let ingest = self.dir.join("ingest");
        for entry in fs::read_dir(&ingest).map_err(io_err("read", &ingest))?.flatten() {
            let _ = fs::remove_file(entry.path());
        }
        let keep = self.reachable()?;
        for algorithm in ["sha256", "sha512"] {
            let dir = self.dir.join("blobs").join(algorithm);
            let Ok(read) = fs::read_dir(&dir) else { continue };
            for entry in read.flatten() {
                let name = format!("{algorithm}:{}", entry.file_name().to_string_lossy());
                let keep_it = name.parse::<Digest>().map(|d| keep.contains(&d)).unwrap_or(false);
                if !keep_it {
                    let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                    if fs::remove_file(entry.path()).is_ok() {
                        report.blobs += 1;
                        report.bytes += size;
                    }
                }
            }
        }
        Ok(Some(report))
    }

    /// Sizes of the store's blobs, by digest (for `ls` and `inspect`).
    pub fn blob_size(&self, digest: &Digest) -> Option<u64> {
        fs::metadata(self.blob_path(digest)).ok().map(|m| m.len())
    }
}

/// What garbage collection removed.
#[derive(Debug, Default, Clone, Copy)]
pub struct GcReport {
    pub blobs: u64,
    pub bytes: u64,
}

/// Writes one blob into `ingest/`, hashing as it goes.
#[derive(Debug)]
pub struct BlobWriter {
    store: Store,
    file: tempfile::NamedTempFile,
    hasher: Hasher,
    written: u64,
    expected: Option<(Digest, u64)>,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some((digest, size)) = &self.expected {
            if self.written.saturating_add(buf.len() as u64) > *size {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{digest} is larger than its declared {size} bytes"),
                ));
            }
        }
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl BlobWriter {
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Verifies the content and moves it into place; on any mismatch the temporary file
    /// is removed and nothing is stored.
    pub fn commit(self) -> Result<Digest, StoreError> {
        self.verify()?.commit()
    }

    /// Verifies the content and syncs it, leaving it in `ingest/` until
    /// [`Staged::commit`]; dropping the result removes it.
    pub fn verify(self) -> Result<Staged, StoreError> {
        let actual = self.hasher.finish();
        if let Some((digest, size)) = &self.expected {
            if self.written != *size {
                return Err(StoreError::SizeMismatch {
                    digest: digest.clone(),
                    expected: *size,
                    actual: self.written,
                });
            }
            if &actual != digest {
                return Err(StoreError::DigestMismatch { expected: digest.clone(), actual });
            }
        }
        let path = self.store.blob_path(&actual);
        self.file.as_file().sync_all().map_err(io_err("sync", &path))?;
        set_mode(self.file.as_file(), 0o644);
        Ok(Staged { file: self.file, path, digest: actual })
    }
}

/// A verified blob waiting in `ingest/` to be moved into place.
#[derive(Debug)]
pub struct Staged {
    file: tempfile::NamedTempFile,
    path: PathBuf,
    digest: Digest,
}

impl Staged {
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The verified content, still in `ingest/`.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    pub fn commit(self) -> Result<Digest, StoreError> {
        let path = self.path;
        self.file.persist(&path).map_err(|e| io_err("store", &path)(e.error))?;
        Ok(self.digest)
    }
}

fn set_mode(file: &File, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = file.set_permissions(fs::Permissions::from_mode(mode));
}

/// Entries keyed by name, for quick lookups.
pub fn by_name(entries: &[Entry]) -> HashMap<&Reference, &Entry> {
    entries.iter().map(|e| (&e.name, e)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(digest: &Digest, size: u64) -> Descriptor {
        Descriptor::new(
            MediaType::ImageManifest,
            size,
            oci_spec::image::Digest::try_from(digest.to_string()).unwrap(),
        )
    }

    #[test]
    fn blobs_are_verified_before_they_land() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let good = Digest::sha256(b"hello");
        assert_eq!(store.put(b"hello", Some(&good)).unwrap(), good);
        assert!(store.has_blob(&good));
        let wrong = Digest::sha256(b"other");
        assert!(matches!(
            store.put(b"hello", Some(&wrong)),
            Err(StoreError::DigestMismatch { .. })
        ));
        assert!(!store.has_blob(&wrong));
        let mut w = store.writer(Some((wrong.clone(), 5))).unwrap();
        w.write_all(b"hel").unwrap();
        assert!(matches!(w.commit(), Err(StoreError::SizeMismatch { .. })));
        let mut w = store.writer(Some((wrong.clone(), 2))).unwrap();
        assert!(w.write_all(b"hel").is_err());
        drop(w);
        assert!(!store.has_blob(&wrong));
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
    }

    #[test]
    fn index_names_images_and_gc_keeps_what_they_need() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let layer = store.put(b"layer", None).unwrap();
        let config = store.put(b"{}", None).unwrap();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": {"mediaType": media::OCI_CONFIG, "digest": config.to_string(), "size": 2},
            "layers": [{"mediaType": media::OCI_LAYER, "digest": layer.to_string(), "size": 5}],
        });
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let m = store.put(&bytes, None).unwrap();
        let orphan = store.put(b"orphan", None).unwrap();
        fs::write(dir.path().join("ingest/x.partial"), b"left by a killed pull").unwrap();
        let name: Reference = "localhost/a:1".parse().unwrap();
        store.set(&name, descriptor(&m, bytes.len() as u64)).unwrap();
        let other: Reference = "localhost/b:1".parse().unwrap();
        store.set(&other, descriptor(&m, bytes.len() as u64)).unwrap();
        assert_eq!(store.entries().unwrap().len(), 2);
        let report = store.gc(true).unwrap().unwrap();
        assert_eq!(report.blobs, 1);
        assert!(!store.has_blob(&orphan));
        assert!(store.has_blob(&layer) && store.has_blob(&config) && store.has_blob(&m));
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
        store.remove(&name).unwrap();
        store.gc(true).unwrap();
        assert!(store.has_blob(&layer));
        store.remove(&other).unwrap();
        store.gc(true).unwrap();
        assert!(!store.has_blob(&layer) && !store.has_blob(&m));
        // A writer's lease makes a non-waiting gc give up.
        let _lease = store.lease().unwrap();
        assert!(store.gc(false).unwrap().is_none());
    }

    #[test]
    fn concurrent_updates_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let m = store.put(b"m", None).unwrap();
        std::thread::scope(|s| {
            for i in 0..8 {
                let store = Store::open(dir.path()).unwrap();
                let m = m.clone();
                s.spawn(move || {
                    let name: Reference = format!("localhost/x:{i}").parse().unwrap();
                    store.set(&name, descriptor(&m, 1)).unwrap();
                });
            }
        });
        assert_eq!(store.entries().unwrap().len(), 8);
    }
}
