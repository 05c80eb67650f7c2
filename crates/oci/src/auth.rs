//! Registry credentials: vessel's own `auth.json` (written by `vessel registry login`,
//! mode 0600) first, then docker's `config.json` (`auths`, `credHelpers`, `credsStore`).

use base64::Engine as _;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} does not parse (fix or remove it)")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Where credentials come from.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// vessel's own file (`<root>/auth.json`).
    pub file: PathBuf,
    /// docker's `config.json` (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`).
    pub docker: Option<PathBuf>,
}

/// The keys docker uses for Docker Hub.
fn keys(registry: &str) -> Vec<String> {
    if registry == crate::reference::DEFAULT_REGISTRY {
        vec![
            "https://index.docker.io/v1/".into(),
            "docker.io".into(),
            "index.docker.io".into(),
            "registry-1.docker.io".into(),
        ]
    } else {
        vec![registry.into(), format!("https://{registry}"), format!("http://{registry}")]
    }
}

fn decode(auth: &str) -> Option<(String, String)> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(auth.trim()).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

fn from_auths(config: &Value, registry: &str) -> Option<(String, String)> {
    let auths = config.get("auths")?;
    for key in keys(registry) {
        let Some(entry) = auths.get(&key) else { continue };
        if let Some(pair) = entry.get("auth").and_then(Value::as_str).and_then(decode) {
            return Some(pair);
        }
        if let (Some(u), Some(p)) = (
            entry.get("username").and_then(Value::as_str),
            entry.get("password").and_then(Value::as_str),
        ) {
            return Some((u.into(), p.into()));
        }
    }
    None
}

/// Runs `docker-credential-<helper> get`, as docker does.
fn from_helper(helper: &str, registry: &str) -> Option<(String, String)> {
    if helper.is_empty()
        || !helper.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    for key in keys(registry) {
        let mut child = Command::new(format!("docker-credential-{helper}"))
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let _ = child.stdin.take()?.write_all(key.as_bytes());
        let output = child.wait_with_output().ok()?;
        if !output.status.success() {
            continue;
        }
        let value: Value = serde_json::from_slice(&output.stdout).ok()?;
        let user = value.get("Username")?.as_str()?.to_string();
        let secret = value.get("Secret")?.as_str()?.to_string();
        return Some((user, secret));
    }
    None
}

fn read_json(path: &Path) -> Result<Option<Value>, AuthError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| AuthError::Parse { path: path.into(), source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(AuthError::Io { action: "read", path: path.into(), source }),
    }
}

impl Credentials {
    /// vessel's file under `root`, and docker's where docker looks.
    pub fn new(root: &Path) -> Credentials {
        let docker = std::env::var_os("DOCKER_CONFIG")
            .map(|d| PathBuf::from(d).join("config.json"))
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
            });
        Credentials { file: root.join("auth.json"), docker }
    }

    /// `(user, password)` for `registry`, if any source has them.
    pub fn get(&self, registry: &str) -> Option<(String, String)> {
        if let Ok(Some(own)) = read_json(&self.file) {
            if let Some(pair) = from_auths(&own, registry) {
                return Some(pair);
            }
        }
        let docker = read_json(self.docker.as_ref()?).ok()??;
        if let Some(helpers) = docker.get("credHelpers") {
            for key in keys(registry) {
                if let Some(helper) = helpers.get(&key).and_then(Value::as_str) {
                    return from_helper(helper, registry);
                }
            }
        }
        if let Some(pair) = from_auths(&docker, registry) {
            return Some(pair);
        }
        let store = docker.get("credsStore").and_then(Value::as_str)?;
        from_helper(store, registry)
    }

    /// Saves credentials for `registry` in vessel's file (mode 0600, replaced atomically).
    pub fn store(&self, registry: &str, user: &str, password: &str) -> Result<(), AuthError> {
        let mut config = read_json(&self.file)?.unwrap_or_else(|| json!({}));
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut auths: BTreeMap<String, Value> = config
            .get("auths")
            .and_then(|a| serde_json::from_value(a.clone()).ok())
            .unwrap_or_default();
        auths.insert(keys(registry).remove(0), json!({ "auth": auth }));
        config["auths"] = json!(auths);
        self.write(&config)
    }

    /// Forgets `registry`; true if there was something to forget.
    pub fn remove(&self, registry: &str) -> Result<bool, AuthError> {
        let Some(mut config) = read_json(&self.file)? else { return Ok(false) };
        let mut removed = false;
        if let Some(auths) = config.get_mut("auths").and_then(Value::as_object_mut) {
            for key in keys(registry) {
                removed |= auths.remove(&key).is_some();
            }
        }
        if removed {
            self.write(&config)?;
        }
        Ok(removed)
    }

    fn write(&self, config: &Value) -> Result<(), AuthError> {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.file.parent().unwrap_or(Path::new("."));
        let io = |action, source| AuthError::Io { action, path: self.file.clone(), source };
        std::fs::create_dir_all(dir).map_err(|e| io("create the directory of", e))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".auth.")
            .permissions(std::fs::Permissions::from_mode(0o600))
            .tempfile_in(dir)
            .map_err(|e| io("write", e))?;
        let bytes = serde_json::to_vec_pretty(config).expect("json serializes");
        tmp.write_all(&bytes).map_err(|e| io("write", e))?;
        tmp.as_file().sync_all().map_err(|e| io("sync", e))?;
        tmp.persist(&self.file).map_err(|e| io("write", e.error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn login_logout_and_docker_config() {
        let dir = tempfile::tempdir().unwrap();
        let docker = dir.path().join("docker.json");
        let creds =
            Credentials { file: dir.path().join("auth.json"), docker: Some(docker.clone()) };
        assert_eq!(creds.get("localhost:5000"), None);
        creds.store("localhost:5000", "u", "p:w").unwrap();
        assert_eq!(creds.get("localhost:5000"), Some(("u".into(), "p:w".into())));
        let mode = std::fs::metadata(&creds.file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(creds.remove("localhost:5000").unwrap());
        assert_eq!(creds.get("localhost:5000"), None);
        let auth = base64::engine::general_purpose::STANDARD.encode("d:s");
        std::fs::write(
            &docker,
            json!({"auths": {"https://index.docker.io/v1/": {"auth": auth}}}).to_string(),
        )
        .unwrap();
        assert_eq!(creds.get("docker.io"), Some(("d".into(), "s".into())));
    }
}
