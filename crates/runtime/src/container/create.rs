//! Creating a container: the image resolved (and its snapshot written), docker's `create`
//! flags turned into the container's config, and the container recorded in the store.

use super::{Container, ContainerConfig, ContainerStore, StoreError};
use crate::Host;
use std::collections::BTreeMap;

/// docker's `create`/`run` flags that shape the container.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// An image name or id in the local store.
    pub image: String,
    pub name: Option<String>,
    /// Replaces the image's CMD (its ENTRYPOINT stays, unless `entrypoint` is given).
    pub command: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    /// KEY=VALUE entries, added to (and overriding) the image's.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// CPUs for the container (fractions allowed): the VM gets the next whole number, the
    /// container's cgroup the exact share.
    pub cpus: f64,
    /// The container's memory limit; its VM gets `VM_MEMORY_OVERHEAD_MIB` more.
    pub memory_mib: u32,
    pub read_only: bool,
    pub tty: bool,
    pub open_stdin: bool,
    pub stop_signal: Option<String>,
    pub stop_timeout: Option<u32>,
    pub init: bool,
    pub auto_remove: bool,
    pub accel: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Image(#[from] vessel_image::snapshot::SnapshotError),
    #[error(
        "no command: the image has neither ENTRYPOINT nor CMD (give one after the image name)"
    )]
    NoCommand,
    #[error("invalid stop signal {0:?} (give a name such as SIGTERM, or a number)")]
    StopSignal(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Records a new container (state `created`): nothing runs until it is started.
pub fn create(host: &Host, options: CreateOptions) -> Result<Container, CreateError> {
    let prepared = vessel_image::snapshot::prepare(&host.root, &options.image)?;
    let config = &prepared.config;
    let args = command_line(
        options.entrypoint.clone().or_else(|| config.entrypoint().clone()),
        if options.command.is_empty() { config.cmd().clone() } else { Some(options.command) },
    )?;
    let stop_signal = options
        .stop_signal
        .or_else(|| config.stop_signal().clone())
        .unwrap_or_else(|| "SIGTERM".to_string());
    if crate::supervisor::parse_signal(&stop_signal).is_none() {
        return Err(CreateError::StopSignal(stop_signal));
    }
    let id = super::new_id();
    let mut labels: BTreeMap<String, String> =
        config.labels().clone().unwrap_or_default().into_iter().collect();
    labels.extend(options.labels);
    let config = ContainerConfig {
        hostname: options.hostname.unwrap_or_else(|| super::short_id(&id).to_string()),
        id,
        name: options.name.unwrap_or_default(),
        created: crate::time::now_nanos(),
        image: options.image,
        image_id: prepared.id.to_string(),
        args,
        env: merge_env(config.env().as_deref().unwrap_or_default(), &options.env),
        workdir: options.workdir.or_else(|| config.working_dir().clone()).unwrap_or_default(),
        user: options.user.or_else(|| config.user().clone()).unwrap_or_default(),
        labels,
        cpus: options.cpus,
        memory_mib: options.memory_mib,
        read_only: options.read_only,
        tty: options.tty,
        open_stdin: options.open_stdin,
        stop_signal,
        stop_timeout: options.stop_timeout.unwrap_or(10),
        init: options.init,
        auto_remove: options.auto_remove,
        accel: options.accel,
    };
    Ok(ContainerStore::new(&host.root).create(config)?)
}

/// ENTRYPOINT followed by CMD, as docker joins them.
fn command_line(
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
) -> Result<Vec<String>, CreateError> {
    let args: Vec<String> =
        entrypoint.into_iter().flatten().chain(cmd.into_iter().flatten()).collect();
    if args.is_empty() {
        Err(CreateError::NoCommand)
    } else {
        Ok(args)
    }
}

/// The image's environment with the caller's entries added; a caller's KEY replaces the
/// image's, and a bare KEY (no `=`) takes the caller's own value, as docker's `-e KEY` does.
pub fn merge_env(image: &[String], requested: &[String]) -> Vec<String> {
    let key = |entry: &str| entry.split('=').next().unwrap_or_default().to_string();
    let mut env: Vec<String> = image.to_vec();
    for entry in requested {
        let entry = if entry.contains('=') {
            entry.clone()
        } else {
            match std::env::var(entry) {
                Ok(value) => format!("{entry}={value}"),
                Err(_) => continue,
            }
        };
        let name = key(&entry);
        env.retain(|existing| key(existing) != name);
        env.push(entry);
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entrypoint_then_cmd() {
        let v = |items: &[&str]| Some(items.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(command_line(v(&["/init"]), v(&["a", "b"])).unwrap(), ["/init", "a", "b"]);
        assert_eq!(command_line(None, v(&["sh"])).unwrap(), ["sh"]);
        assert!(matches!(command_line(None, None), Err(CreateError::NoCommand)));
    }

    #[test]
    fn caller_env_overrides_the_image() {
        let image = vec!["PATH=/bin".to_string(), "A=1".to_string()];
        let env = merge_env(&image, &["A=2".to_string(), "B=3".to_string()]);
        assert_eq!(env, ["PATH=/bin", "A=2", "B=3"]);
    }
}
