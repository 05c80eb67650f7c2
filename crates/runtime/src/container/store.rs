//! The containers of one state root: create, find (by id, unique id prefix or name), list,
//! update state, remove.
//!
//! A container directory is written whole under a dot-name and renamed into place, then
//! its name is claimed with an exclusive create in `<root>/container-names/`; a crash at
//! any step leaves either nothing visible or a complete container.

use super::{
    is_id, valid_name, write_json_atomically, Container, ContainerConfig, ContainerState, Status,
    CONFIG_FILE, STATE_FILE,
};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no such container: {0}")]
    NotFound(String),
    #[error("container {0} is running (stop it first, or use rm -f)")]
    Running(String),
    #[error("{query:?} matches several containers ({}); give more of the id", matches.join(", "))]
    Ambiguous { query: String, matches: Vec<String> },
    #[error("the container name {name:?} is already in use by container {id} (remove it, or pick another name)")]
    NameInUse { name: String, id: String },
    #[error("invalid container name {0:?}: use letters, digits and _ . - (starting with a letter or digit)")]
    InvalidName(String),
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("container state at {path} is unreadable (remove the directory to discard it)")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { action, path, source }
}

#[derive(Debug, Clone)]
pub struct ContainerStore {
    dir: PathBuf,
    names: PathBuf,
}

impl ContainerStore {
    pub fn new(root: &Path) -> ContainerStore {
        ContainerStore { dir: root.join("containers"), names: root.join("container-names") }
    }

    /// Creates a container from `config` (its id and name set; an empty name gets a
    /// generated one). Returns it in the `created` state.
    pub fn create(&self, mut config: ContainerConfig) -> Result<Container, StoreError> {
        for dir in [&self.dir, &self.names] {
            std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        }
        if config.name.is_empty() {
            config.name = self.unused_name();
        } else if !valid_name(&config.name) {
            return Err(StoreError::InvalidName(config.name));
        }
        if let Some(owner) = self.name_owner(&config.name) {
            return Err(StoreError::NameInUse { name: config.name, id: owner });
        }
        let partial = self.dir.join(format!(".creating-{}", config.id));
        let dir = self.dir.join(&config.id);
        let state = ContainerState::default();
        let write = || -> Result<(), StoreError> {
            std::fs::create_dir(&partial).map_err(io("create", &partial))?;
            let path = partial.join(CONFIG_FILE);
            write_json_atomically(&path, &config).map_err(io("write", &path))?;
            let path = partial.join(STATE_FILE);
            write_json_atomically(&path, &state).map_err(io("write", &path))?;
            std::fs::rename(&partial, &dir).map_err(io("create", &dir))
        };
        if let Err(err) = write() {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(err);
        }
        if let Err(err) = self.claim_name(&config.name, &config.id) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(err);
        }
        Ok(Container { dir, config, state })
    }

    /// The container `query` names: a full id, a name, or an id prefix matching just one.
    pub fn find(&self, query: &str) -> Result<Container, StoreError> {
        if is_id(query) && self.dir.join(query).is_dir() {
            return self.load(query);
        }
        if let Some(id) = self.name_owner(query) {
            return self.load(&id);
        }
        let matches: Vec<String> = if !query.is_empty() && query.len() < 64 {
            self.ids()?.into_iter().filter(|id| id.starts_with(query)).collect()
        } else {
            Vec::new()
        };
        match matches.as_slice() {
            [] => Err(StoreError::NotFound(query.to_string())),
            [id] => self.load(id),
            _ => Err(StoreError::Ambiguous {
                query: query.to_string(),
                matches: matches.iter().map(|id| super::short_id(id).to_string()).collect(),
            }),
        }
    }

    /// Every container, newest first.
    pub fn list(&self) -> Result<Vec<Container>, StoreError> {
        let mut containers = Vec::new();
        for id in self.ids()? {
            match self.load(&id) {
                Ok(container) => containers.push(container),
                // Removed by someone else meanwhile.
                Err(StoreError::Io { ref source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        containers.sort_by_key(|c| std::cmp::Reverse(c.config.created));
        Ok(containers)
    }

    /// Loads a container, first recording the end of a running one whose supervisor died.
    pub fn load(&self, id: &str) -> Result<Container, StoreError> {
        let dir = self.dir.join(id);
        let config: ContainerConfig = read_json(&dir.join(CONFIG_FILE))?;
        let state: ContainerState = read_json(&dir.join(STATE_FILE))?;
        let mut container = Container { dir, config, state };
        if container.is_running()
            && !container.state.supervisor.is_some_and(|supervisor| supervisor.is_alive())
        {
            // It may have recorded the end and exited between our read and the check: a
            // dead process writes no more, so this second read settles it.
            let again: ContainerState = read_json(&container.dir.join(STATE_FILE))?;
            if again != container.state {
                container.state = again;
                return Ok(container);
            }
            let pid = container.state.supervisor.map_or(0, |s| s.pid);
            container.state = ContainerState {
                status: Status::Exited,
                supervisor: None,
                finished_at: Some(crate::time::now_nanos()),
                exit_code: Some(EXIT_LOST),
                error: Some(format!(
                    "vessel's supervisor (pid {pid}) ended without recording the container's \
                     exit (was it killed?); its VM ended with it"
                )),
                ..container.state
            };
            tracing::warn!(container = %container.short_id(), "supervisor gone: marking exited");
            self.save_state(&container)?;
        }
        Ok(container)
    }

    pub fn save_state(&self, container: &Container) -> Result<(), StoreError> {
        let path = container.dir.join(STATE_FILE);
        write_json_atomically(&path, &container.state).map_err(io("write", &path))
    }

    /// Removes a container's directory and frees its name. The caller makes sure it is
    /// not running.
    pub fn remove(&self, container: &Container) -> Result<(), StoreError> {
        // A supervisor holds this lock for its whole life (even before it records
        // `running`): never pull a container from under one.
        let lock_path = container.dir.join(crate::supervisor::SUPERVISOR_LOCK);
        if let Ok(lock) = std::fs::File::open(&lock_path) {
            if lock.try_lock().is_err() {
                return Err(StoreError::Running(container.config.name.clone()));
            }
        }
        self.remove_held(container)
    }

    /// Removes a container whose supervisor lock the caller holds (its own supervisor, for
    /// `--rm`).
    pub(crate) fn remove_held(&self, container: &Container) -> Result<(), StoreError> {
        // Renamed first so that a crash midway never leaves a half-removed container in
        // `ls`; the leftover dot-directory is cleaned by the next removal.
        let doomed = self.dir.join(format!(".removing-{}", container.id()));
        match std::fs::rename(&container.dir, &doomed) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(container.id().to_string()))
            }
            Err(err) => return Err(StoreError::Io { action: "remove", path: doomed, source: err }),
        }
        let name = self.names.join(&container.config.name);
        if std::fs::read_to_string(&name).is_ok_and(|owner| owner.trim() == container.id()) {
            let _ = std::fs::remove_file(&name);
        }
        std::fs::remove_dir_all(&doomed).map_err(io("remove", &doomed))?;
        super::remove_leftovers(&self.dir);
        Ok(())
    }

    /// The ids of the containers (sorted).
    pub(crate) fn ids(&self) -> Result<Vec<String>, StoreError> {
        let names = crate::records::names(&self.dir).map_err(io("read", &self.dir))?;
        Ok(names.into_iter().filter(|name| is_id(name)).collect())
    }

    /// The id of the container holding `name`, if that container exists.
    fn name_owner(&self, name: &str) -> Option<String> {
        if !valid_name(name) {
            return None;
        }
        let owner = std::fs::read_to_string(self.names.join(name)).ok()?;
        let owner = owner.trim();
        (is_id(owner) && self.dir.join(owner).is_dir()).then(|| owner.to_string())
    }

    /// Claims `name` for `id`: the claim is written whole under a temporary name, then
    /// hard-linked into place (which fails if the name exists), so no reader ever sees an
    /// empty claim and two creators never both win.
    fn claim_name(&self, name: &str, id: &str) -> Result<(), StoreError> {
        let path = self.names.join(name);
        let temporary = self.names.join(format!(".claim-{id}"));
        std::fs::write(&temporary, id).map_err(io("write", &temporary))?;
        let result = (|| {
            for _ in 0..2 {
                match std::fs::hard_link(&temporary, &path) {
                    Ok(()) => return Ok(()),
                    Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                        if let Some(owner) = self.name_owner(name) {
                            return Err(StoreError::NameInUse {
                                name: name.to_string(),
                                id: owner,
                            });
                        }
                        // Left by a container that no longer exists.
                        let _ = std::fs::remove_file(&path);
                    }
                    Err(err) => {
                        return Err(StoreError::Io {
                            action: "create",
                            path: path.clone(),
                            source: err,
                        })
                    }
                }
            }
            Err(StoreError::NameInUse {
                name: name.to_string(),
                id: String::from("(being created)"),
            })
        })();
        let _ = std::fs::remove_file(&temporary);
        result
    }

    fn unused_name(&self) -> String {
        loop {
            let name = super::names::generate();
            if self.name_owner(&name).is_none() {
                return name;
            }
        }
    }
}

/// The exit code recorded for a container whose end vessel could not observe.
pub const EXIT_LOST: i32 = 255;

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, StoreError> {
    let bytes = std::fs::read(path).map_err(io("read", path))?;
    serde_json::from_slice(&bytes)
        .map_err(|source| StoreError::Corrupt { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str) -> ContainerConfig {
        ContainerConfig { id: super::super::new_id(), name: name.into(), ..Default::default() }
    }

    #[test]
    fn names_are_unique_and_prefixes_resolve() {
        let root = tempfile::tempdir().unwrap();
        let store = ContainerStore::new(root.path());
        let web = store.create(config("web")).unwrap();
        assert!(matches!(store.create(config("web")), Err(StoreError::NameInUse { .. })));
        assert!(matches!(store.create(config("-x")), Err(StoreError::InvalidName(_))));
        let other = store.create(config("")).unwrap();
        assert!(!other.config.name.is_empty());
        assert_eq!(store.find("web").unwrap().id(), web.id());
        assert_eq!(store.find(&web.id()[..8]).unwrap().id(), web.id());
        assert_eq!(store.find(web.id()).unwrap().id(), web.id());
        assert!(matches!(store.find("nothing"), Err(StoreError::NotFound(_))));
        assert_eq!(store.list().unwrap().len(), 2);
        store.remove(&web).unwrap();
        assert!(matches!(store.find("web"), Err(StoreError::NotFound(_))));
        // The name is free again.
        store.create(config("web")).unwrap();
    }

    #[test]
    fn a_dead_supervisor_means_exited_with_a_reason() {
        let root = tempfile::tempdir().unwrap();
        let store = ContainerStore::new(root.path());
        let mut container = store.create(config("c")).unwrap();
        let me = super::super::ProcessRef::current().unwrap();
        container.state.status = Status::Running;
        container.state.supervisor =
            Some(super::super::ProcessRef { start_ticks: me.start_ticks + 7, ..me });
        store.save_state(&container).unwrap();
        let loaded = store.find("c").unwrap();
        assert_eq!(loaded.state.status, Status::Exited);
        assert_eq!(loaded.state.exit_code, Some(EXIT_LOST));
        assert!(loaded.state.error.unwrap().contains("supervisor"));
    }

    #[test]
    fn a_crash_midway_leaves_nothing_visible() {
        let root = tempfile::tempdir().unwrap();
        let store = ContainerStore::new(root.path());
        let stray = root.path().join("containers").join(".removing-x");
        std::fs::create_dir_all(&stray).unwrap();
        assert!(store.list().unwrap().is_empty());
        let c = store.create(config("a")).unwrap();
        store.remove(&c).unwrap();
        assert!(!stray.exists());
    }
}
