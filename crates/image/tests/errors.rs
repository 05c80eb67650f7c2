//! Bad input gives clear errors naming the layer and entry, and never leaves OUTPUT
//! behind; untrusted names never reach outside the image root.

mod common;

use std::path::{Path, PathBuf};

use common::layer::{tar, Flavour, E};
use vessel_ext4::reader::{Kind, Reader};
use vessel_image::{create_rootfs, RootfsOptions};

fn layer_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

/// Runs create_rootfs expecting failure; returns the full error chain as one string and
/// checks that neither OUTPUT nor a temporary file is left.
fn fails(layers: &[PathBuf], size: Option<u64>) -> String {
    let dir = layers[0].parent().unwrap();
    let out = dir.join("out.img");
    let opts = RootfsOptions { size, ..Default::default() };
    let err = create_rootfs(&out, layers, &opts, &mut |_| {}).expect_err("must fail");
    let mut msg = err.to_string();
    let mut src = std::error::Error::source(&err);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    assert!(!out.exists(), "a failed run left {}", out.display());
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    for part in msg.split(": ") {
        let first = part.chars().next().unwrap();
        assert!(!first.is_uppercase(), "messages start lowercase: {msg}");
    }
    msg
}

fn sample() -> Vec<E> {
    let mut v = vec![E::dir("etc")];
    for i in 0..50 {
        v.push(E::file(&format!("etc/file{i}"), &vec![b'x'; 3000]));
    }
    v
}

#[test]
fn truncated_layer_names_layer_and_entry() {
    let dir = tempfile::tempdir().unwrap();
    let t = tar(&sample(), Flavour::Pax);
    let l = layer_file(dir.path(), "short.tar", &t[..t.len() / 2 + 100]);
    let msg = fails(&[l], None);
    assert!(
        msg.contains("short.tar")
            && msg.contains("corrupt or truncated")
            && msg.contains("etc/file"),
        "{msg}"
    );
}

#[test]
fn corrupt_gzip_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut gz = common::gzip(&tar(&sample(), Flavour::Pax));
    let n = gz.len();
    for b in &mut gz[n / 3..n / 3 + 64] {
        *b ^= 0x55;
    }
    let ok = layer_file(dir.path(), "ok.tar", &tar(&[E::file("a", b"a")], Flavour::Pax));
    let bad = layer_file(dir.path(), "bad.tar.gz", &gz);
    let msg = fails(&[ok, bad], None);
    assert!(msg.contains("bad.tar.gz") && msg.contains("corrupt"), "{msg}");
}

#[test]
fn full_filesystem_names_entry_and_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let l = layer_file(
        dir.path(),
        "big.tar",
        &tar(&[E::file("huge", &vec![1u8; 12 << 20])], Flavour::Pax),
    );
    let msg = fails(&[l], Some(8 << 20));
    assert!(
        msg.contains("\"huge\"") && msg.contains("filesystem full") && msg.contains("--size"),
        "{msg}"
    );
}

#[test]
fn unrepresentable_entries_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let long = "n".repeat(256);
    let l = layer_file(dir.path(), "l.tar", &tar(&[E::file(&long, b"x")], Flavour::Pax));
    let msg = fails(&[l], None);
    assert!(msg.contains("longer than 255 bytes"), "{msg}");

    let l = layer_file(
        dir.path(),
        "x.tar",
        &tar(&[E::file("f", b"x").xattr("user.big", &[0; 5000])], Flavour::Pax),
    );
    let msg = fails(&[l], None);
    assert!(msg.contains("\"f\"") && msg.contains("attributes"), "{msg}");

    let l = layer_file(dir.path(), "h.tar", &tar(&[E::hardlink("h", "missing")], Flavour::Pax));
    let msg = fails(&[l], None);
    assert!(msg.contains("\"h\"") && msg.contains("does not exist"), "{msg}");
}

#[test]
fn names_never_escape_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let mut evil = tar(
        &[E::dir("etc"), E::symlink("escape", "../../../../.."), E::symlink("abs", "/etc")],
        Flavour::Gnu,
    );
    // tar-rs refuses to write ".." names, so patch them in: same length as "aa/aa/etc/evil".
    let mut second = tar(
        &[
            E::file("aa/aa/etc/evil", b"1"),
            E::file("escape/inside", b"2"),
            E::file("abs/passwd", b"3"),
        ],
        Flavour::Gnu,
    );
    let pos = second.windows(14).position(|w| w == b"aa/aa/etc/evil").unwrap();
    second[pos..pos + 14].copy_from_slice(b"../../etc/evil");
    // Recompute the header checksum after the patch.
    let hdr = pos / 512 * 512;
    second[hdr + 148..hdr + 156].fill(b' ');
    let sum: u32 = second[hdr..hdr + 512].iter().map(|&b| b as u32).sum();
    second[hdr + 148..hdr + 156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let l1 = layer_file(dir.path(), "1.tar", &std::mem::take(&mut evil));
    let l2 = layer_file(dir.path(), "2.tar", &second);
    let out = dir.path().join("img");
    create_rootfs(&out, &[l1, l2], &RootfsOptions::default(), &mut |_| {}).unwrap();
    let r = Reader::open(&out).unwrap();
    let paths: Vec<(String, Kind)> = r
        .walk()
        .unwrap()
        .into_iter()
        .map(|(p, s)| (String::from_utf8(p).unwrap(), s.kind))
        .collect();
    let has = |p: &str| paths.iter().any(|(q, k)| q == p && *k == Kind::File);
    assert!(has("etc/evil") && has("inside") && has("etc/passwd"), "{paths:?}");
}
