//! docker's mount flags, parsed: `-v SRC:DST[:ro]`, `-v DST` (an anonymous volume),
//! `--mount type=…,source=…,target=…[,readonly]` and `--tmpfs DST[:OPTIONS]`.

use super::{MountSource, MountSpec};
use std::path::{Path, PathBuf};

/// What the user asked for, before volumes exist and host paths are checked.
#[derive(Debug, Clone, PartialEq)]
pub enum MountRequest {
    /// A named volume; None: an anonymous one, made for the container.
    Volume {
        name: Option<String>,
        target: String,
        read_only: bool,
    },
    Bind {
        path: PathBuf,
        target: String,
        read_only: bool,
        /// `:U`: ownership to the invoking user.
        map_owner: bool,
    },
    Tmpfs {
        target: String,
        options: String,
    },
}

/// `-v`/`--volume`: `NAME:/dst`, `/host:/dst`, `./rel:/dst`, `/dst`, each with `:ro`/`:rw`.
pub fn parse_volume_flag(text: &str) -> Result<MountRequest, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, options) = match parts.as_slice() {
        [target] => (None, *target, ""),
        [source, target] => (Some(*source), *target, ""),
        [source, target, options] => (Some(*source), *target, *options),
        _ => return Err(format!("invalid volume {text:?} (SOURCE:DEST[:ro], or DEST)")),
    };
    let (mut read_only, mut map_owner) = (false, false);
    for option in options.split(',').filter(|o| !o.is_empty()) {
        match option {
            "ro" | "readonly" => read_only = true,
            "rw" => read_only = false,
            // Ownership to the invoking user (bind mounts).
            "U" => map_owner = true,
            // SELinux relabelling and propagation: nothing to do in a VM of its own.
            "z" | "Z" | "rprivate" | "private" | "shared" | "slave" => {}
            other => {
                return Err(format!("unknown volume option {other:?} in {text:?} (ro, rw or U)"))
            }
        }
    }
    let target = absolute_target(target, text)?;
    Ok(match source {
        None => MountRequest::Volume { name: None, target, read_only },
        Some(path) if path.starts_with('/') || path.starts_with('.') || path.starts_with('~') => {
            MountRequest::Bind { path: PathBuf::from(path), target, read_only, map_owner }
        }
        Some(_) if map_owner => {
            return Err(format!("{text:?}: U (ownership to the invoking user) is for bind mounts"))
        }
        Some(name) => MountRequest::Volume { name: Some(name.to_string()), target, read_only },
    })
}

/// `--mount type=bind|volume|tmpfs,source=…,target=…[,readonly][,tmpfs-size=…][,tmpfs-mode=…]`.
pub fn parse_mount_flag(text: &str) -> Result<MountRequest, String> {
    let (mut kind, mut source, mut target, mut read_only) = ("volume", None, None, false);
    let mut tmpfs = Vec::new();
    for field in text.split(',') {
        let (key, value) = field.split_once('=').unwrap_or((field, "true"));
        match key {
            "type" => kind = value,
            "source" | "src" => source = Some(value),
            "target" | "destination" | "dst" => target = Some(value),
            "readonly" | "ro" => read_only = value != "false" && value != "0",
            "tmpfs-size" => tmpfs.push(format!("size={value}")),
            "tmpfs-mode" => tmpfs.push(format!("mode={value}")),
            other => return Err(format!("unknown --mount field {other:?} in {text:?}")),
        }
    }
    let target =
        absolute_target(target.ok_or_else(|| format!("--mount {text:?} has no target"))?, text)?;
    match kind {
        "volume" => Ok(MountRequest::Volume { name: source.map(String::from), target, read_only }),
        "bind" => {
            let path =
                source.ok_or_else(|| format!("--mount {text:?}: a bind mount needs a source"))?;
            Ok(MountRequest::Bind {
                path: PathBuf::from(path),
                target,
                read_only,
                map_owner: false,
            })
        }
        "tmpfs" => Ok(MountRequest::Tmpfs { target, options: tmpfs.join(",") }),
        other => Err(format!("unknown mount type {other:?} (bind, volume or tmpfs)")),
    }
}

/// `--tmpfs /dst[:size=64m,mode=1777]`.
pub fn parse_tmpfs_flag(text: &str) -> Result<MountRequest, String> {
    let (target, options) = text.split_once(':').unwrap_or((text, ""));
    Ok(MountRequest::Tmpfs { target: absolute_target(target, text)?, options: options.to_string() })
}

/// The host user a `:U` bind mount maps to: the one who ran `sudo vessel …`, else the
/// owner of the shared path.
fn invoking_user(path: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let from_env = |name| std::env::var(name).ok().and_then(|v| v.parse::<u32>().ok());
    let metadata = std::fs::metadata(path).ok();
    let uid = from_env("SUDO_UID").or(metadata.as_ref().map(|m| m.uid())).unwrap_or(0);
    let gid = from_env("SUDO_GID").or(metadata.as_ref().map(|m| m.gid())).unwrap_or(0);
    (uid, gid)
}

fn absolute_target(target: &str, text: &str) -> Result<String, String> {
    let path = Path::new(target);
    if !path.is_absolute() || path.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(format!("invalid mount destination {target:?} in {text:?} (an absolute path)"));
    }
    if path == Path::new("/") {
        return Err(format!("{text:?}: a mount cannot replace the container's root"));
    }
    Ok(target.to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("bind source path does not exist: {path} (create it, or fix the path)")]
    MissingSource {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bind source {0} is neither a directory nor a regular file")]
    NotADirectory(PathBuf),
    #[error(transparent)]
    Volume(#[from] crate::volume::VolumeError),
    #[error("volume {0} is mounted twice: a volume is a disk, mount it once")]
    VolumeTwice(String),
}

/// Turns requests into mounts: named volumes made on first use, anonymous ones made now,
/// bind sources resolved to existing host directories.
pub fn resolve(root: &Path, requests: Vec<MountRequest>) -> Result<Vec<MountSpec>, MountError> {
    let volumes = crate::volume::VolumeStore::new(root);
    let mut mounts = Vec::new();
    let result = resolve_into(&volumes, requests, &mut mounts);
    if result.is_err() {
        // Made for this container only, which will not be.
        for mount in &mounts {
            if let MountSource::Volume { name, anonymous: true } = &mount.source {
                let _ = volumes.remove(name);
            }
        }
    }
    result.map(|()| mounts)
}

fn resolve_into(
    volumes: &crate::volume::VolumeStore,
    requests: Vec<MountRequest>,
    mounts: &mut Vec<MountSpec>,
) -> Result<(), MountError> {
    for request in requests {
        mounts.push(match request {
            MountRequest::Volume { name: Some(name), target, read_only } => {
                let volume = volumes.get_or_create(&name)?;
                MountSpec {
                    source: MountSource::Volume { name: volume.name, anonymous: false },
                    target,
                    read_only,
                }
            }
            MountRequest::Volume { name: None, target, read_only } => {
                let name = super::new_id();
                let size = crate::volume::DEFAULT_VOLUME_SIZE;
                volumes.create(&name, size, Default::default(), true)?;
                MountSpec {
                    source: MountSource::Volume { name, anonymous: true },
                    target,
                    read_only,
                }
            }
            MountRequest::Bind { path, target, read_only, map_owner } => {
                let path = std::fs::canonicalize(&path)
                    .map_err(|source| MountError::MissingSource { path: path.clone(), source })?;
                if !path.is_dir() && !path.is_file() {
                    return Err(MountError::NotADirectory(path));
                }
                let owner = map_owner.then(|| invoking_user(&path));
                MountSpec { source: MountSource::Bind { path, owner }, target, read_only }
            }
            MountRequest::Tmpfs { target, options } => {
                MountSpec { source: MountSource::Tmpfs { options }, target, read_only: false }
            }
        });
    }
    let mut names: Vec<&str> = mounts.iter().filter_map(MountSpec::volume_name).collect();
    names.sort_unstable();
    if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(MountError::VolumeTwice(pair[0].to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_flags_as_docker_reads_them() {
        assert_eq!(
            parse_volume_flag("data:/var/lib/db").unwrap(),
            MountRequest::Volume {
                name: Some("data".into()),
                target: "/var/lib/db".into(),
                read_only: false
            }
        );
        assert_eq!(
            parse_volume_flag("/srv/site:/usr/share/www:ro").unwrap(),
            MountRequest::Bind {
                path: "/srv/site".into(),
                target: "/usr/share/www".into(),
                read_only: true,
                map_owner: false,
            }
        );
        assert_eq!(
            parse_volume_flag("/cache").unwrap(),
            MountRequest::Volume { name: None, target: "/cache".into(), read_only: false }
        );
        assert!(parse_volume_flag("data:relative").is_err());
        assert!(parse_volume_flag("data:/x:bogus").is_err());
        assert!(parse_volume_flag("data:/x:U").is_err(), "U is for bind mounts");
        assert!(matches!(
            parse_volume_flag("./src:/src:U"),
            Ok(MountRequest::Bind { map_owner: true, .. })
        ));
        assert!(parse_volume_flag("data:/").is_err());
        assert_eq!(
            parse_mount_flag("type=tmpfs,target=/run,tmpfs-size=1m").unwrap(),
            MountRequest::Tmpfs { target: "/run".into(), options: "size=1m".into() }
        );
        assert_eq!(
            parse_mount_flag("type=bind,src=/a,dst=/b,readonly").unwrap(),
            MountRequest::Bind {
                path: "/a".into(),
                target: "/b".into(),
                read_only: true,
                map_owner: false
            }
        );
        assert_eq!(
            parse_tmpfs_flag("/scratch:size=8m,mode=700").unwrap(),
            MountRequest::Tmpfs { target: "/scratch".into(), options: "size=8m,mode=700".into() }
        );
    }
}
