//! The test images, made from Debian packages by `scripts/test-images` with buildah and
//! cached as OCI archives under `$VESSEL_CACHE/test-images` (keyed by the script and its
//! inputs), pushed into a test's own registry; and podman, the peer that runs the same images,
//! with state of its own (`scripts/test-podman`). Missing tools fail the test.

use super::registry::{need, repo, sh, Registry};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestImage {
    /// busybox-static with every applet as a symlink in /bin; users root, `tester` (uid 1000,
    /// groups tester, users and extra) and nobody. CMD /bin/sh; EXPOSE 80/tcp.
    Busybox,
    /// `debootstrap --variant=minbase bookworm` from the Debian mirror apt uses. CMD bash.
    Debian,
}

impl TestImage {
    pub fn name(self) -> &'static str {
        match self {
            TestImage::Busybox => "busybox",
            TestImage::Debian => "debian",
        }
    }

    /// The image's OCI archive, built by `scripts/test-images` unless cached. The script
    /// holds a file lock while it builds, so test binaries running at once build each image
    /// once; within one binary, the first test to ask runs it.
    pub fn archive(self) -> PathBuf {
        static BUSYBOX: OnceLock<PathBuf> = OnceLock::new();
        static DEBIAN: OnceLock<PathBuf> = OnceLock::new();
        let cell = match self {
            TestImage::Busybox => &BUSYBOX,
            TestImage::Debian => &DEBIAN,
        };
        cell.get_or_init(|| {
            need("buildah", "buildah");
            need("debootstrap", "debootstrap");
            need("busybox", "busybox-static");
            let out = sh(Command::new(repo().join("scripts/test-images")).arg(self.name()));
            let path = PathBuf::from(out.trim());
            assert!(path.is_file(), "scripts/test-images printed {out:?}, not an archive");
            path
        })
        .clone()
    }

    /// Pushes the image into `registry` as `vessel-test/<name>:latest` with skopeo (layers as
    /// built: gzip) and returns the reference to pull.
    pub fn push(self, registry: &Registry) -> String {
        let name = format!("vessel-test/{}:latest", self.name());
        registry.push(&format!("oci-archive:{}", self.archive().display()), &name, &[]);
        format!("{}/{name}", registry.addr)
    }
}

/// Pushes each image and returns the references to pull, in the same order.
pub fn push(registry: &Registry, images: &[TestImage]) -> Vec<String> {
    images.iter().map(|image| image.push(registry)).collect()
}

/// Debian's podman with runc as root, its storage, configuration and locks in a directory of
/// its own, removed at the end; `scripts/test-podman` says why each setting is there.
pub struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    pub fn new() -> Podman {
        need("podman", "podman");
        need("runc", "runc");
        Podman { dir: tempfile::Builder::new().prefix("vessel-podman-").tempdir().unwrap() }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `podman ARGS…` with this podman's state.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(repo().join("scripts/test-podman"));
        command.arg(self.dir.path()).args(args);
        command
    }

    /// Pulls `reference` from a test registry (plain HTTP on 127.0.0.1).
    pub fn pull(&self, reference: &str) {
        sh(&mut self.command(&["pull", "--quiet", "--tls-verify=false", reference]));
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Containers run with --rm; this catches any a failed test left, so no overlay stays
        // mounted under the directory being removed.
        let _ = self.command(&["rm", "--all", "--force", "--time", "0"]).output();
    }
}

/// What the lifecycle and volume tests name the busybox test image.
pub const BUSYBOX: &str = "test/busybox";

/// A state root holding the busybox test image as `BUSYBOX`, pulled from a real registry
/// of its own (stopped once the pull is done).
pub fn busybox_root() -> super::TestRoot {
    let root = super::TestRoot::new();
    let registry = Registry::start();
    let reference = TestImage::Busybox.push(&registry);
    root.ok(&["pull", "--quiet", &reference]);
    root.ok(&["tag", &reference, BUSYBOX]);
    root
}
