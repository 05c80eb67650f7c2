//! Where vessel keeps things on this host, and the guest assets it boots.

use crate::RuntimeError;
use std::path::{Path, PathBuf};

/// The default state directory for root.
pub const DEFAULT_ROOT: &str = "/var/lib/vessel";
/// The default directory for sockets and other things that die with the host.
pub const DEFAULT_RUN: &str = "/run/vessel";
/// The default cache (guest kernel, tools), shared by every state root on the host.
pub const DEFAULT_CACHE: &str = "/var/cache/vessel";

/// The host directories and guest assets of one vessel installation.
#[derive(Debug, Clone)]
pub struct Host {
    /// Persistent state (images, containers).
    pub root: PathBuf,
    /// Runtime state (sockets, VM directories); gone after a host reboot.
    pub run: PathBuf,
    /// Build caches, keyed by what produced them.
    pub cache: PathBuf,
}

impl Host {
    /// With `root` given (`--root`, `VESSEL_ROOT`), everything but the cache lives under it,
    /// so tests never touch the real state.
    pub fn new(root: Option<PathBuf>) -> Host {
        let cache = std::env::var_os("VESSEL_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE));
        match root {
            Some(root) => Host { run: root.join("run"), root, cache },
            None => Host { root: DEFAULT_ROOT.into(), run: DEFAULT_RUN.into(), cache },
        }
    }

    /// The guest kernel: `VESSEL_KERNEL`, else the one `kernel/build` installed in the cache.
    pub fn kernel(&self) -> Result<PathBuf, RuntimeError> {
        let path = match std::env::var_os("VESSEL_KERNEL") {
            Some(path) => PathBuf::from(path),
            None => self.cache.join("kernel").join("vmlinux"),
        };
        existing(path, "guest kernel", "build it with `kernel/build` (about 7 minutes, cached)")
    }

    /// vessel-init, statically linked: `VESSEL_INIT`, else the installed one, else the one
    /// a cargo build of this workspace made (`--profile guest --target x86_64-unknown-linux-gnu`; the plain
    /// target dir holds a dynamically linked build that cannot run as the guest's PID 1).
    pub fn init(&self) -> Result<PathBuf, RuntimeError> {
        if let Some(path) = std::env::var_os("VESSEL_INIT") {
            let path = existing(path.into(), "vessel-init", "VESSEL_INIT names a missing file")?;
            return match is_static_elf(&path) {
                Ok(true) => Ok(path),
                _ => Err(RuntimeError::Missing {
                    what: "a statically linked vessel-init",
                    path: Some(path),
                    hint: "VESSEL_INIT must name the static build (scripts/build)".to_string(),
                }),
            };
        }
        use vessel_vm::qemu::beside_running_binary;
        let mut candidates = vec![PathBuf::from(INSTALLED_INIT)];
        candidates.extend(beside_running_binary("vessel-init"));
        candidates.extend(beside_running_binary("x86_64-unknown-linux-gnu/guest/vessel-init"));
        candidates.sort_by_key(|path| std::cmp::Reverse(modified(path)));
        for candidate in candidates {
            if candidate.is_file() && is_static_elf(&candidate).unwrap_or(false) {
                return Ok(candidate);
            }
        }
        Err(RuntimeError::Missing {
            what: "a statically linked vessel-init",
            path: None,
            hint: format!("build it with `scripts/build` (it installs {INSTALLED_INIT})"),
        })
    }

    /// The directory of one VM's sockets and logs.
    pub fn vm_run_dir(&self, name: &str) -> PathBuf {
        self.run.join("vm").join(name)
    }

    /// The control socket of a running container's supervisor. Named by a prefix of the
    /// id: a socket path must fit in 108 bytes.
    pub fn control_socket(&self, container_id: &str) -> PathBuf {
        self.run.join("ctl").join(format!("{}.sock", &container_id[..container_id.len().min(16)]))
    }

    /// Where saved VMs to restore are kept (`VESSEL_VM_TEMPLATES`, else in the cache): each
    /// is keyed by what made it, so a changed kernel, init or QEMU makes new ones.
    pub fn vm_templates(&self) -> PathBuf {
        match std::env::var_os("VESSEL_VM_TEMPLATES") {
            Some(path) => PathBuf::from(path),
            None => self.cache.join("vm-templates"),
        }
    }

    pub fn tsc_cache(&self) -> PathBuf {
        self.run.join("tsc-khz")
    }

    pub fn ensure_dirs(&self) -> Result<(), RuntimeError> {
        for dir in [&self.root, &self.run] {
            std::fs::create_dir_all(dir).map_err(|source| RuntimeError::Io {
                action: "create",
                path: dir.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

pub const INSTALLED_INIT: &str = "/usr/local/lib/vessel/vessel-init";

/// The newest candidate wins, so a fresh build is used over a stale installed one.
fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn existing(path: PathBuf, what: &'static str, hint: &str) -> Result<PathBuf, RuntimeError> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(RuntimeError::Missing { what, path: Some(path), hint: hint.to_string() })
    }
}

/// True when `path` is a statically linked ELF executable (no `PT_INTERP` program header).
/// Reads only the headers, not the whole binary.
pub fn is_static_elf(path: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not a 64-bit ELF file");
    let mut file = std::fs::File::open(path)?;
    let mut header = [0u8; 64];
    file.read_exact(&mut header).map_err(|_| bad())?;
    if &header[..4] != b"\x7fELF" || header[4] != 2 {
        return Err(bad());
    }
    let u16_at = |at: usize| usize::from(u16::from_le_bytes([header[at], header[at + 1]]));
    let phoff = u64::from_le_bytes(header[32..40].try_into().map_err(|_| bad())?);
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    let table_len = phentsize.checked_mul(phnum).filter(|len| *len <= 64 * 1024).ok_or_else(bad)?;
    let mut table = vec![0u8; table_len];
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(phoff))?;
    file.read_exact(&mut table).map_err(|_| bad())?;
    const PT_INTERP: u32 = 3;
    Ok(!table.chunks_exact(phentsize.max(4)).any(|entry| {
        entry.len() >= 4
            && u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]) == PT_INTERP
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_keeps_everything_under_it() {
        let host = Host::new(Some("/tmp/x".into()));
        assert_eq!(host.run, Path::new("/tmp/x/run"));
        assert_eq!(host.vm_run_dir("a"), Path::new("/tmp/x/run/vm/a"));
    }

    #[test]
    fn dynamic_binaries_are_not_static() {
        assert!(!is_static_elf(Path::new("/bin/sh")).unwrap());
        assert!(is_static_elf(Path::new("/etc/hostname")).is_err());
    }
}
