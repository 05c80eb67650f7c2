//! Image → ext4 snapshot: an image's layers are written once into an ext4 file shared by
//! every container of that image, keyed by the layers' chain id so that images with the
//! same layers share it: `<root>/snapshots/<chain id>/image.ext4`.
//!
//! The image's tree is the directory `/rootfs` of the snapshot's filesystem (see
//! [`RootfsOptions::nested`]), so the filesystem's own `lost+found` is no file of the
//! image; vessel-init uses that directory as the container's lower layer. Snapshots of the
//! older layout, the tree at the filesystem root, were named `rootfs.ext4`: they are never
//! used, and `gc` removes them.
//!
//! Creation takes `<key>.lock` so two processes never write the same snapshot twice, and
//! the writer renames the finished file into place, so a killed run leaves nothing.

use crate::rootfs::{self, Progress, RootfsError, RootfsOptions};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use vessel_oci::image::{Image, ImageError};
use vessel_oci::Store;

/// The snapshot's file in its key's directory. A new layout gets a new name, so that a
/// snapshot is never read by a vessel-init expecting another layout.
pub const SNAPSHOT_FILE: &str = "image.ext4";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("cannot write the root filesystem snapshot of {image}")]
    Rootfs {
        image: String,
        #[source]
        source: RootfsError,
    },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image {image} has {layers} layers but its config lists {diff_ids} diff ids (the image is corrupt)")]
    LayerCount { image: String, layers: usize, diff_ids: usize },
}

/// The OCI chain id of the layer stack: `ChainID(L0) = DiffID(L0)`,
/// `ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))`. The hex part names the snapshot;
/// an image with no layers gets the digest of the empty string.
pub fn chain_id(diff_ids: &[String]) -> String {
    let mut chain: Option<String> = None;
    for diff in diff_ids {
        chain = Some(match chain {
            None => diff.clone(),
            Some(prev) => format!("sha256:{}", hex(&Sha256::digest(format!("{prev} {diff}")))),
        });
    }
    chain.unwrap_or_else(|| format!("sha256:{}", hex(&Sha256::digest(b""))))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The snapshots of one state root.
#[derive(Debug, Clone)]
pub struct Snapshots {
    dir: PathBuf,
}

/// What the container runtime needs from an image.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The image's name in the store.
    pub reference: vessel_oci::Reference,
    /// The image id (config digest).
    pub id: vessel_oci::Digest,
    /// Entrypoint, cmd, env, working directory, user, …
    pub config: oci_spec::image::Config,
    pub platform: String,
    /// The read-only root filesystem.
    pub snapshot: PathBuf,
}

impl Snapshots {
    pub fn new(root: &Path) -> Snapshots {
        Snapshots { dir: root.join("snapshots") }
    }

    pub fn key(image: &Image) -> String {
        let chain = chain_id(&image.diff_ids());
        chain.split_once(':').map(|(_, h)| h.to_string()).unwrap_or(chain)
    }

    /// Where `image`'s snapshot lives (whether or not it exists yet).
    pub fn path(&self, image: &Image) -> PathBuf {
        self.dir.join(Snapshots::key(image)).join(SNAPSHOT_FILE)
    }

    fn lock(&self, key: &str, wait: bool) -> Result<Option<File>, SnapshotError> {
        let path = self.dir.join(format!("{key}.lock"));
        let io = |action, source| SnapshotError::Io { action, path: path.clone(), source };
        fs::create_dir_all(&self.dir).map_err(|e| io("create", e))?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io("open", e))?;
        let op = if wait {
            rustix::fs::FlockOperation::LockExclusive
        } else {
            rustix::fs::FlockOperation::NonBlockingLockExclusive
        };
        match rustix::fs::flock(&file, op) {
            Ok(()) => Ok(Some(file)),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(io("lock", e.into())),
        }
    }

    /// The snapshot of `image`, written now if missing. Returns its path and whether it
    /// was written by this call.
    pub fn ensure(
        &self,
        store: &Store,
        image: &Image,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<(PathBuf, bool), SnapshotError> {
        let path = self.path(image);
        if path.is_file() {
            return Ok((path, false));
        }
        let layers = image.manifest.layers.len();
        let diff_ids = image.diff_ids().len();
        if layers != diff_ids {
            return Err(SnapshotError::LayerCount {
                image: image.entry.name.familiar(),
                layers,
                diff_ids,
            });
        }
        let key = Snapshots::key(image);
        let _lock = self.lock(&key, true)?;
        if path.is_file() {
            return Ok((path, false));
        }
        let dir = self.dir.join(&key);
        fs::create_dir_all(&dir).map_err(|source| SnapshotError::Io {
            action: "create",
            path: dir.clone(),
            source,
        })?;
        let blobs: Vec<PathBuf> =
            image.manifest.layers.iter().map(|l| store.blob_path(&l.digest)).collect();
        for (blob, layer) in blobs.iter().zip(&image.manifest.layers) {
            if !blob.is_file() {
                return Err(ImageError::Store(vessel_oci::StoreError::MissingBlob(
                    layer.digest.clone(),
                ))
                .into());
            }
        }
        let options = RootfsOptions { nested: true, ..Default::default() };
        if let Err(source) = rootfs::create_rootfs(&path, &blobs, &options, progress) {
            let _ = fs::remove_dir(&dir);
            return Err(SnapshotError::Rootfs { image: image.entry.name.familiar(), source });
        }
        remove_stale(&dir);
        Ok((path, true))
    }

    /// Removes snapshots no image in `store` needs, and those of an older layout beside
    /// (or instead of) one still needed, skipping any being written. Returns how many
    /// directories or old-layout snapshots were removed.
    pub fn gc(&self, store: &Store) -> Result<usize, SnapshotError> {
        let needed: BTreeSet<String> = store.images()?.iter().map(Snapshots::key).collect();
        let Ok(read) = fs::read_dir(&self.dir) else { return Ok(0) };
        let mut removed = 0;
        for entry in read.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !entry.path().is_dir() {
                continue;
            }
            let Some(_lock) = self.lock(&name, false)? else { continue };
            if needed.contains(&name) {
                if remove_stale(&entry.path()) > 0 {
                    removed += 1;
                }
                // Left empty (it held only an old-layout snapshot): the next use writes one.
                let _ = fs::remove_dir(entry.path());
                continue;
            }
            if fs::remove_dir_all(entry.path()).is_ok() {
                removed += 1;
            }
            let _ = fs::remove_file(self.dir.join(format!("{name}.lock")));
        }
        Ok(removed)
    }
}

/// Removes what a snapshot's directory holds besides [`SNAPSHOT_FILE`]: a snapshot of an
/// older layout, or what a killed writer left. The caller holds the key's lock. Returns
/// how many entries were removed.
fn remove_stale(dir: &Path) -> usize {
    let Ok(read) = fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for entry in read.flatten() {
        if entry.file_name() == SNAPSHOT_FILE {
            continue;
        }
        let path = entry.path();
        let gone = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed += usize::from(gone.is_ok());
    }
    removed
}

/// The library call the container runtime uses: the image `query` names (a reference or
/// an image id) → its config and read-only root filesystem, written now if missing.
pub fn prepare(root: &Path, query: &str) -> Result<Prepared, SnapshotError> {
    let store = Store::open(root.join("images")).map_err(ImageError::from)?;
    let image = store.find(query)?;
    let (snapshot, _) = Snapshots::new(root).ensure(&store, &image, &mut |_| {})?;
    Ok(Prepared {
        reference: image.entry.name.clone(),
        id: image.id().clone(),
        config: image.config.config().clone().unwrap_or_default(),
        platform: format!("{}/{}", image.config.os(), image.config.architecture()),
        snapshot,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Imports an image of one layer holding `/etc/hostname` as `name`.
    fn import(store: &Store, name: &str) -> (vessel_oci::Reference, vessel_oci::Digest) {
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(3);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, "etc/hostname", &b"hi\n"[..]).unwrap();
        let name: vessel_oci::Reference = name.parse().unwrap();
        let id = vessel_oci::archive::import(store, tar.into_inner().unwrap().as_slice(), &name)
            .unwrap();
        (name, id)
    }

    #[test]
    fn prepare_writes_the_snapshot_once_and_gc_removes_it() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path().join("images")).unwrap();
        let (name, id) = import(&store, "localhost/p:1");
        let prepared = prepare(root.path(), "localhost/p:1").unwrap();
        assert_eq!(prepared.id, id);
        assert!(prepared.snapshot.is_file());
        assert_eq!(prepared.snapshot.file_name().unwrap(), SNAPSHOT_FILE);
        // The image's tree is one level down, beside the filesystem's lost+found.
        let reader = vessel_ext4::reader::Reader::open(&prepared.snapshot).unwrap();
        let paths: Vec<String> = reader
            .walk()
            .unwrap()
            .into_iter()
            .map(|(path, _)| String::from_utf8(path).unwrap())
            .collect();
        assert_eq!(paths, ["lost+found", "rootfs", "rootfs/etc", "rootfs/etc/hostname"]);
        let again = prepare(root.path(), &id.to_string()).unwrap();
        assert_eq!(again.snapshot, prepared.snapshot);
        assert!(matches!(
            prepare(root.path(), "localhost/nothing:1"),
            Err(SnapshotError::Image(_))
        ));
        store.remove(&name).unwrap();
        assert_eq!(Snapshots::new(root.path()).gc(&store).unwrap(), 1);
        assert!(!prepared.snapshot.exists());
    }

    /// A snapshot of the older layout (`rootfs.ext4`, the image at the filesystem root) is
    /// never used: the image gets a new one, and the old file goes.
    #[test]
    fn snapshots_of_the_old_layout_are_replaced_and_removed() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path().join("images")).unwrap();
        let snapshots = Snapshots::new(root.path());
        let (_, id) = import(&store, "localhost/old:1");
        let image = store.find(&id.to_string()).unwrap();
        let dir = snapshots.path(&image).parent().unwrap().to_path_buf();
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("rootfs.ext4"), b"old layout").unwrap();
        let (path, written) = snapshots.ensure(&store, &image, &mut |_| {}).unwrap();
        assert!(written && path.is_file());
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "the old snapshot is left");

        // Left by an older vessel, needed by an image whose new snapshot is not written yet.
        fs::remove_file(&path).unwrap();
        fs::write(dir.join("rootfs.ext4"), b"old layout").unwrap();
        assert_eq!(snapshots.gc(&store).unwrap(), 1);
        assert!(!dir.exists());
        // Nothing else to remove: a snapshot in use stays.
        let (path, _) = snapshots.ensure(&store, &image, &mut |_| {}).unwrap();
        assert_eq!(snapshots.gc(&store).unwrap(), 0);
        assert!(path.is_file());
    }

    #[test]
    fn chain_ids_follow_the_spec() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        assert_eq!(chain_id(std::slice::from_ref(&a)), a);
        let two = chain_id(&[a.clone(), b.clone()]);
        assert_eq!(two, format!("sha256:{}", hex(&Sha256::digest(format!("{a} {b}")))));
        assert_ne!(chain_id(&[b, a]), two);
    }
}
