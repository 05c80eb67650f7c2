//! Host directories shared with the guest over virtio-fs, each served by its own `virtiofsd`
//! (the Rust one from crates.io; the C one QEMU used to ship is deprecated).
//!
//! One daemon per share keeps each one's view to its own directory: `--sandbox namespace`
//! pivots the daemon's root into the shared directory (in new mount, PID and network
//! namespaces) and seccomp kills it on any unexpected syscall, so a symlink or `..` from the
//! guest can only ever resolve inside the share. A read-only share is read-only in
//! virtiofsd itself (`--readonly`), whatever the guest's mount says.
//!
//! `--tag` is never passed: QEMU 7.1–8.0 crash on the vhost-user config feature it turns on.
//! The tag goes on QEMU's `vhost-user-fs-device` instead.

use crate::{Share, VmError};
use std::path::{Path, PathBuf};

/// The virtiofsd that `scripts/deps` installs; keep the two in step (a unit test checks).
pub const VIRTIOFSD_VERSION: &str = "1.14.0";

/// Names a virtiofsd to use instead of the one in the cache or in `PATH`.
pub const VIRTIOFSD_ENV: &str = "VESSEL_VIRTIOFSD";

/// How to get virtiofsd when it is missing.
pub const VIRTIOFSD_HINT: &str = "run scripts/deps, which builds it from crates.io with \
     libseccomp-dev and libcap-ng-dev; or set VESSEL_VIRTIOFSD";

/// The longest tag virtio-fs carries (the device's config field is 36 bytes).
pub const MAX_TAG_LEN: usize = 36;

/// Where `scripts/deps` installs virtiofsd under the cache (`$VESSEL_CACHE`, by default
/// `/var/cache/vessel`): a directory per version, so an upgrade never reuses an old build.
pub fn cached_virtiofsd(cache: &Path) -> PathBuf {
    cache.join("tools").join(format!("virtiofsd-{VIRTIOFSD_VERSION}")).join("bin/virtiofsd")
}

/// Finds virtiofsd: `VESSEL_VIRTIOFSD` when set, else the one `scripts/deps` put in `cache`,
/// else `virtiofsd` in `PATH`. Never QEMU's deprecated C daemon in /usr/lib/qemu.
pub fn find_virtiofsd(cache: &Path) -> Result<PathBuf, VmError> {
    if let Some(path) = std::env::var_os(VIRTIOFSD_ENV) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(VmError::Missing {
                what: "virtiofsd (VESSEL_VIRTIOFSD)",
                path,
                hint: VIRTIOFSD_HINT,
            })
        };
    }
    let cached = cached_virtiofsd(cache);
    if cached.is_file() {
        return Ok(cached);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("virtiofsd"))
        .find(|candidate| candidate.is_file())
        .ok_or(VmError::VirtiofsdNotFound { cached })
}

/// The socket on which the virtiofsd of share `index` serves QEMU.
pub fn socket_path(run_dir: &Path, index: usize) -> PathBuf {
    run_dir.join(format!("virtiofs-{index}.sock"))
}

/// Checks every share before anything starts: a usable tag, unique within the VM, and a host
/// directory that exists.
pub fn validate(shares: &[Share]) -> Result<(), VmError> {
    for (index, share) in shares.iter().enumerate() {
        let invalid = |reason: String| VmError::InvalidShare {
            tag: share.tag.clone(),
            path: share.host_path.clone(),
            reason,
        };
        if share.tag.is_empty() || share.tag.len() > MAX_TAG_LEN {
            return Err(invalid(format!("a tag has 1 to {MAX_TAG_LEN} bytes")));
        }
        // Tags go into QEMU option strings and the guest's mount source: keep them plain.
        if !share.tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
            return Err(invalid("a tag has only letters, digits, '.', '_' and '-'".into()));
        }
        if shares[..index].iter().any(|earlier| earlier.tag == share.tag) {
            return Err(invalid("another share of this VM has the same tag".into()));
        }
        match std::fs::metadata(&share.host_path) {
            Ok(metadata) if metadata.is_dir() => {}
            Ok(_) => return Err(invalid("not a directory".into())),
            Err(err) => return Err(invalid(format!("{err}"))),
        }
    }
    Ok(())
}

/// virtiofsd's arguments for `share`, served on `socket`. `nofile` is the open-files limit
/// to run with (virtiofsd otherwise tries a million and warns when the host refuses).
pub fn virtiofsd_args(share: &Share, socket: &Path, nofile: u64) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--shared-dir".into(),
        share.host_path.display().to_string(),
        "--socket-path".into(),
        socket.display().to_string(),
        // Its root becomes the shared directory, in namespaces of its own.
        "--sandbox".into(),
        "namespace".into(),
        "--seccomp".into(),
        "kill".into(),
        // Attributes cached for a second, files re-read on open: edits on the host show up
        // in the guest.
        "--cache".into(),
        "auto".into(),
        "--rlimit-nofile".into(),
        nofile.to_string(),
        "--log-level".into(),
        "warn".into(),
    ];
    if share.read_only {
        args.push("--readonly".into());
    }
    if let Some((uid, gid)) = share.owner {
        // Every guest id becomes the owner on the host; the owner is root in the guest.
        for (flag, id) in [("--translate-uid", uid), ("--translate-gid", gid)] {
            args.push(flag.into());
            args.push(format!("squash-guest:0:{id}:4294967295"));
            args.push(flag.into());
            args.push(format!("host:{id}:0:1"));
        }
    }
    args
}

/// The hard limit on open files of this process, to give virtiofsd all of it.
pub fn nofile_hard_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes only into the struct we pass, which lives for the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if rc != 0 {
        // 0 tells virtiofsd to leave the limit as it is.
        return 0;
    }
    limit.rlim_max
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(tag: &str, host_path: &Path, read_only: bool) -> Share {
        Share { tag: tag.into(), host_path: host_path.to_path_buf(), read_only, owner: None }
    }

    #[test]
    fn read_only_shares_are_read_only_in_virtiofsd_and_no_tag_is_passed() {
        let dir = Path::new("/srv/data");
        let rw = virtiofsd_args(&share("data", dir, false), Path::new("/run/v/fs.sock"), 4096);
        assert!(!rw.contains(&"--readonly".to_string()), "{rw:?}");
        let ro = virtiofsd_args(&share("data", dir, true), Path::new("/run/v/fs.sock"), 4096);
        assert!(ro.contains(&"--readonly".to_string()), "{ro:?}");
        for args in [&rw, &ro] {
            assert!(!args.iter().any(|a| a.starts_with("--tag")), "{args:?}");
            assert!(args.windows(2).any(|w| w[0] == "--sandbox" && w[1] == "namespace"));
            assert!(args.windows(2).any(|w| w[0] == "--shared-dir" && w[1] == "/srv/data"));
            assert!(args.windows(2).any(|w| w[0] == "--rlimit-nofile" && w[1] == "4096"));
        }
    }

    #[test]
    fn tags_and_paths_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let ok = share("src_1.a-b", dir.path(), false);
        assert!(validate(std::slice::from_ref(&ok)).is_ok());
        let long = "t".repeat(MAX_TAG_LEN + 1);
        for (bad, why) in [
            (share("", dir.path(), false), "1 to 36 bytes"),
            (share(&long, dir.path(), false), "1 to 36 bytes"),
            (share("a,b", dir.path(), false), "only letters"),
            (share("src_1.a-b", dir.path(), true), "same tag"),
            (share("missing", &dir.path().join("nope"), false), "No such file"),
            (share("file", &file, false), "not a directory"),
        ] {
            let err = validate(&[ok.clone(), bad]).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn the_cache_holds_the_version_scripts_deps_installs() {
        let deps = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/deps");
        let deps = std::fs::read_to_string(&deps).unwrap();
        assert!(
            deps.contains(&format!("virtiofsd_version={VIRTIOFSD_VERSION}")),
            "scripts/deps must install virtiofsd {VIRTIOFSD_VERSION}"
        );
        assert_eq!(
            cached_virtiofsd(Path::new("/var/cache/vessel")),
            Path::new("/var/cache/vessel/tools/virtiofsd-1.14.0/bin/virtiofsd")
        );
    }
}
