//! Shared helpers for vessel-image tests: building layer tarballs, OCI layouts for
//! umoci, checking images with e2fsck, mounting them, and walking and comparing trees.
//! Everything here fails loudly when a tool or privilege is missing.
#![allow(dead_code)]

pub mod layer;
pub mod walk;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Panics unless running as root: tests that mount must never pass silently.
pub fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("uid in /proc/self/status");
    assert_eq!(uid, "0", "this test mounts images and must run as root (it does in CI)");
}

fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed: this test needs it (apt-get install e2fsprogs umoci)");
}

/// Runs `e2fsck -fn` and panics with its output unless it found no problem at all.
pub fn e2fsck(image: &Path) {
    let out = Command::new(tool("e2fsck")).arg("-fn").arg(image).output().expect("run e2fsck");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "e2fsck -fn {} failed ({}):\n{text}",
        image.display(),
        out.status
    );
    let problems: Vec<&str> = text
        .lines()
        .filter(|l| {
            !(l.is_empty()
                || l.starts_with("Pass ")
                || l.starts_with("e2fsck ")
                || l.contains(" files ("))
        })
        .collect();
    assert!(problems.is_empty(), "e2fsck reported problems on {}:\n{text}", image.display());
}

/// A read-only loop mount, unmounted on drop.
pub struct Mount {
    pub dir: tempfile::TempDir,
}

impl Mount {
    pub fn ro(image: &Path) -> Mount {
        require_root();
        let dir = tempfile::tempdir().expect("mount point");
        let st = Command::new(tool("mount"))
            .args(["-o", "loop,ro", "-t", "ext4"])
            .arg(image)
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(st.success(), "mount -o loop,ro {} failed", image.display());
        Mount { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new(tool("umount")).arg(self.dir.path()).status();
    }
}

/// Writes an OCI image layout holding `layers` (already compressed as they should be,
/// with their media types) and unpacks it with `umoci unpack`; returns the rootfs path.
pub fn umoci_unpack(work: &Path, layers: &[(Vec<u8>, &str)]) -> PathBuf {
    use sha2::{Digest, Sha256};
    let hex = |b: &[u8]| Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect::<String>();
    let layout = work.join("oci");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let d = hex(data);
        std::fs::write(blobs.join(&d), data).unwrap();
        d
    };
    let mut diff_ids = Vec::new();
    let mut descs = Vec::new();
    for (data, media) in layers {
        let raw = decompress(data);
        diff_ids.push(format!("\"sha256:{}\"", hex(&raw)));
        let d = put(data);
        descs.push(format!(
            "{{\"mediaType\":\"{media}\",\"digest\":\"sha256:{d}\",\"size\":{}}}",
            data.len()
        ));
    }
    let config = format!(
        "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{{}},\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[{}]}}}}",
        diff_ids.join(",")
    );
    let cd = put(config.as_bytes());
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:{cd}\",\"size\":{}}},\"layers\":[{}]}}",
        config.len(),
        descs.join(",")
    );
    let md = put(manifest.as_bytes());
    let index = format!(
        "{{\"schemaVersion\":2,\"manifests\":[{{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:{md}\",\"size\":{},\"annotations\":{{\"org.opencontainers.image.ref.name\":\"test\"}}}}]}}",
        manifest.len()
    );
    std::fs::write(layout.join("index.json"), index).unwrap();
    std::fs::write(layout.join("oci-layout"), "{\"imageLayoutVersion\":\"1.0.0\"}").unwrap();
    let bundle = work.join("bundle");
    let out = Command::new(tool("umoci"))
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:test", layout.display()))
        .arg(&bundle)
        .output()
        .expect("run umoci");
    assert!(
        out.status.success(),
        "umoci unpack failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    bundle.join("rootfs")
}

/// Decompresses by magic bytes (gzip, zstd or none), for diff_ids.
pub fn decompress(data: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let (_, mut r) = vessel_image::layer::compression::decoder(data).unwrap();
    let mut v = Vec::new();
    r.read_to_end(&mut v).unwrap();
    v
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}
