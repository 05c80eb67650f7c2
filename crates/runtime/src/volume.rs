//! Named volumes: sparse ext4 images formatted by our writer, attached to a container's VM
//! as disks, that outlive containers. `<root>/volumes/<name>/{volume.json,volume.ext4}`,
//! written under a dot-name and renamed into place, as containers are.

use crate::container::{is_id, write_json_atomically, ContainerStore};
use crate::records::ReadError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A volume's size when none is given: sparse, so only what is written takes space.
pub const DEFAULT_VOLUME_SIZE: u64 = 16 << 30;

const CONFIG_FILE: &str = "volume.json";
const DISK_FILE: &str = "volume.ext4";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Volume {
    pub name: String,
    pub created: u64,
    /// The disk's size in bytes.
    pub size: u64,
    pub labels: BTreeMap<String, String>,
    /// Made for one container (`-v /path`): removed with it by `rm -v` and `--rm`.
    pub anonymous: bool,
    #[serde(skip)]
    pub dir: PathBuf,
}

impl Volume {
    pub fn disk(&self) -> PathBuf {
        self.dir.join(DISK_FILE)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("no such volume: {0}")]
    NotFound(String),
    #[error("volume {0} already exists")]
    Exists(String),
    #[error("invalid volume name {0:?}: use letters, digits and _ . - (starting with a letter or digit)")]
    InvalidName(String),
    #[error("volume {name} is in use by container {container} (remove the container first)")]
    InUse { name: String, container: String },
    #[error("cannot format the volume's disk")]
    Format(#[from] vessel_image::RootfsError),
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("volume metadata at {path} is unreadable")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Containers(#[from] crate::container::StoreError),
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError {
    let path = path.to_path_buf();
    move |source| VolumeError::Io { action, path, source }
}

#[derive(Debug, Clone)]
pub struct VolumeStore {
    root: PathBuf,
    dir: PathBuf,
}

impl VolumeStore {
    pub fn new(root: &Path) -> VolumeStore {
        VolumeStore { root: root.to_path_buf(), dir: root.join("volumes") }
    }

    /// Creates a volume: its metadata and a freshly formatted, sparse disk.
    pub fn create(
        &self,
        name: &str,
        size: u64,
        labels: BTreeMap<String, String>,
        anonymous: bool,
    ) -> Result<Volume, VolumeError> {
        if !valid_name(name) {
            return Err(VolumeError::InvalidName(name.to_string()));
        }
        std::fs::create_dir_all(&self.dir).map_err(io("create", &self.dir))?;
        let dir = self.dir.join(name);
        if dir.exists() {
            return Err(VolumeError::Exists(name.to_string()));
        }
        let partial = self.dir.join(format!(".creating-{name}-{}", std::process::id()));
        let volume = Volume {
            name: name.to_string(),
            created: crate::time::now_nanos(),
            size,
            labels,
            anonymous,
            dir: dir.clone(),
        };
        let write = || -> Result<(), VolumeError> {
            std::fs::create_dir(&partial).map_err(io("create", &partial))?;
            vessel_image::create_empty(&partial.join(DISK_FILE), size, &Default::default())?;
            let config = partial.join(CONFIG_FILE);
            write_json_atomically(&config, &volume).map_err(io("write", &config))?;
            match std::fs::rename(&partial, &dir) {
                // Someone else created it meanwhile.
                Err(err) if dir.exists() => {
                    let _ = err;
                    Err(VolumeError::Exists(name.to_string()))
                }
                other => other.map_err(io("create", &dir)),
            }
        };
        if let Err(err) = write() {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(err);
        }
        Ok(volume)
    }

    /// The volume `name`, creating it (default size) when missing, as `-v name:/path` does.
    pub fn get_or_create(&self, name: &str) -> Result<Volume, VolumeError> {
        match self.get(name) {
            Err(VolumeError::NotFound(_)) => {
                match self.create(name, DEFAULT_VOLUME_SIZE, BTreeMap::new(), false) {
                    Err(VolumeError::Exists(_)) => self.get(name),
                    other => other,
                }
            }
            other => other,
        }
    }

    pub fn get(&self, name: &str) -> Result<Volume, VolumeError> {
        if !valid_name(name) {
            return Err(VolumeError::NotFound(name.to_string()));
        }
        let dir = self.dir.join(name);
        let path = dir.join(CONFIG_FILE);
        let mut volume: Volume = match crate::records::read(&path) {
            Ok(Some(volume)) => volume,
            Ok(None) => return Err(VolumeError::NotFound(name.to_string())),
            Err(ReadError::Io(source)) => {
                return Err(VolumeError::Io { action: "read", path, source })
            }
            Err(ReadError::Corrupt(source)) => return Err(VolumeError::Corrupt { path, source }),
        };
        volume.dir = dir;
        Ok(volume)
    }

    /// Every volume, by name.
    pub fn list(&self) -> Result<Vec<Volume>, VolumeError> {
        let names = crate::records::names(&self.dir).map_err(io("read", &self.dir))?;
        let mut volumes = Vec::new();
        for name in names {
            match self.get(&name) {
                Ok(volume) => volumes.push(volume),
                Err(VolumeError::NotFound(_)) => {} // removed meanwhile
                Err(err) => return Err(err),
            }
        }
        Ok(volumes)
    }

    /// The containers (names) whose config uses the volume.
    pub fn users(&self, name: &str) -> Result<Vec<crate::container::Container>, VolumeError> {
        let containers = ContainerStore::new(&self.root).list()?;
        Ok(containers
            .into_iter()
            .filter(|c| c.config.mounts.iter().any(|m| m.volume_name() == Some(name)))
            .collect())
    }

    /// Removes a volume no container uses.
    pub fn remove(&self, name: &str) -> Result<(), VolumeError> {
        let volume = self.get(name)?;
        if let Some(user) = self.users(name)?.first() {
            return Err(VolumeError::InUse {
                name: name.to_string(),
                container: user.config.name.clone(),
            });
        }
        let doomed = self.dir.join(format!(".removing-{name}-{}", crate::time::now_nanos()));
        std::fs::rename(&volume.dir, &doomed).map_err(io("remove", &volume.dir))?;
        std::fs::remove_dir_all(&doomed).map_err(io("remove", &doomed))?;
        crate::container::remove_leftovers(&self.dir);
        Ok(())
    }
}

/// Removes the anonymous volumes made for a container that is gone (`--rm`, `rm -v`);
/// one that another container also uses stays.
pub fn remove_anonymous(root: &Path, container: &crate::container::Container) {
    let volumes = VolumeStore::new(root);
    for mount in &container.config.mounts {
        if let crate::container::MountSource::Volume { name, anonymous: true } = &mount.source {
            if let Err(err) = volumes.remove(name) {
                tracing::warn!(volume = %name, error = %err, "cannot remove an anonymous volume");
            }
        }
    }
}

/// A volume's name: docker's rule for names, or 64 hex digits (anonymous volumes).
pub fn valid_name(name: &str) -> bool {
    crate::container::valid_name(name) || is_id(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_are_created_listed_and_removed() {
        let root = tempfile::tempdir().unwrap();
        let store = VolumeStore::new(root.path());
        let volume = store.create("data", 64 << 20, BTreeMap::new(), false).unwrap();
        assert!(volume.disk().is_file());
        assert!(matches!(
            store.create("data", 64 << 20, BTreeMap::new(), false),
            Err(VolumeError::Exists(_))
        ));
        assert!(matches!(
            store.create("../x", 1 << 20, BTreeMap::new(), false),
            Err(VolumeError::InvalidName(_))
        ));
        assert_eq!(store.get_or_create("data").unwrap().size, 64 << 20);
        assert_eq!(store.list().unwrap().len(), 1);
        store.remove("data").unwrap();
        assert!(matches!(store.get("data"), Err(VolumeError::NotFound(_))));
        assert!(store.list().unwrap().is_empty());
    }
}
