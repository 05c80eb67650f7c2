//! Images built from layers must pass `e2fsck -fn` and, mounted read-only, show exactly
//! what `umoci unpack` extracts from the same layers. Runs as root (CI does); fails
//! loudly otherwise.

mod common;

use common::layer::{tar, Flavour, E};
use common::walk::{assert_same, snapshot};
use std::path::PathBuf;
use vessel_image::{create_rootfs, RootfsOptions};

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

fn pseudo_random(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A v2 file capability granting cap_net_raw (bit 13), as `setcap cap_net_raw+ep` writes.
fn capability() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&0x0200_0001u32.to_le_bytes());
    v.extend_from_slice(&(1u32 << 13).to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v
}

fn base_layer() -> Vec<E> {
    let mut sparse = vec![0u8; 1 << 20];
    sparse.extend_from_slice(b"x");
    sparse.extend(vec![0u8; 1 << 20]);
    let long_target = format!("../{}", "t".repeat(200));
    let deep = format!("deep/{}", "d".repeat(60));
    let mut v = vec![
        E::dir("."),
        E::dir("etc"),
        E::file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
        E::file("etc/shadow", b"root:*:19000:0:99999:7:::\n").mode(0o600),
        E::dir("bin"),
        E::file("bin/sh", &pseudo_random(1 << 20, 1)).mode(0o755),
        E::file("bin/su", &pseudo_random(5000, 2)).mode(0o4755),
        E::file("bin/ping", &pseudo_random(3000, 3))
            .mode(0o755)
            .xattr("security.capability", &capability()),
        E::dir("tmp").mode(0o1777),
        E::dir("var").mode(0o2775).owner(0, 50),
        E::dir("var/log"),
        E::file("var/log/old", b"old log"),
        E::dir("usr"),
        E::dir("usr/lib"),
        E::file("usr/lib/sparse", &sparse),
        E::dir("data"),
        E::file("data/empty", b""),
        E::file("data/4096", &pseudo_random(4096, 4)),
        E::file("data/4097", &pseudo_random(4097, 5)),
        E::file("data/owned", b"o").owner(1000, 1000),
        E::file("data/bigids", b"b").owner(70000, 80000),
        E::file("data/nanos", b"n").mtime(1_700_000_000, 123_456_789),
        E::file("data/y2100", b"y").mtime(4_102_444_800, 5),
        E::file("data/xattrs", b"x").xattr("user.small", b"1").xattr("trusted.t", b"trusted value"),
        E::file("data/bigxattr", b"x").xattr("user.big", &[7u8; 300]).xattr("user.other", b"v"),
        E::dir("lnk"),
        E::symlink("lnk/short", "../etc/passwd"),
        E::symlink("lnk/long", &long_target),
        E::symlink("lnk/abs", "/etc/passwd"),
        E::dir("hard"),
        E::file("hard/a", b"shared content"),
        E::hardlink("hard/b", "hard/a"),
        E::hardlink("hard/c", "hard/a"),
        E::dir("dev"),
        E::chr("dev/null", 1, 3),
        E::blk("dev/sda", 8, 0),
        E::chr("dev/big", 300, 70000),
        E::fifo("dev/fifo"),
        E::dir("deep"),
        E::dir(&deep),
        E::file(&format!("{deep}/{}", "f".repeat(80)), b"deep file"),
        E::dir("repl1"),
        E::file("repl1/child", b"c"),
        E::file("repl2", b"file that becomes a dir"),
        E::dir("bigdir"),
    ];
    for i in 0..3000 {
        v.push(E::file(
            &format!("bigdir/entry-with-a-long-name-{i:05}"),
            format!("{i}").as_bytes(),
        ));
    }
    v
}

fn second_layer() -> Vec<E> {
    vec![
        E::whiteout("etc/shadow"),
        E::file("etc/passwd", b"root:x:0:0::/root:/bin/bash\n").mode(0o640).owner(0, 42),
        E::dir("bin").mode(0o700),
        E::opaque("var"),
        E::file("var/new", b"new"),
        E::file("repl1", b"now a file"),
        E::dir("repl2"),
        E::file("repl2/child", b"inside"),
        E::hardlink("hard/d", "hard/a"),
        E::whiteout("tmp"),
        E::file("bigdir/entry-with-a-long-name-00007", b"replaced"),
        E::whiteout("bigdir/entry-with-a-long-name-00008"),
    ]
}

fn third_layer() -> Vec<E> {
    vec![
        E::dir("gnu"),
        E::file(&format!("gnu/{}", "x".repeat(150)), b"gnu long name"),
        E::symlink("gnu/longlink", &format!("/{}", "y".repeat(180))),
        E::whiteout("hard/b"),
        E::hardlink("gnu/hard", "hard/c"),
    ]
}

/// Builds the image from `layers`, checks it with e2fsck and compares it with umoci.
fn check_against_umoci(layers: Vec<(Vec<u8>, &str)>) {
    check_against_umoci_of(layers.clone(), layers)
}

/// As above, with umoci given its own encoding of the same layers (umoci 0.4.7 cannot
/// read zstd).
fn check_against_umoci_of(layers: Vec<(Vec<u8>, &str)>, for_umoci: Vec<(Vec<u8>, &str)>) {
    check_sized(layers, for_umoci, None)
}

fn check_sized(layers: Vec<(Vec<u8>, &str)>, for_umoci: Vec<(Vec<u8>, &str)>, size: Option<u64>) {
    common::require_root();
    let work = tempfile::tempdir().unwrap();
    let mut files: Vec<PathBuf> = Vec::new();
    for (i, (data, _)) in layers.iter().enumerate() {
        let p = work.path().join(format!("layer{i}"));
        std::fs::write(&p, data).unwrap();
        files.push(p);
    }
    let image = work.path().join("rootfs.ext4");
    let opts = RootfsOptions { size, ..Default::default() };
    create_rootfs(&image, &files, &opts, &mut |_| {}).unwrap();
    if let Some(size) = size {
        assert_eq!(std::fs::metadata(&image).unwrap().len(), size);
    }
    common::e2fsck(&image);
    let rootfs = common::umoci_unpack(work.path(), &for_umoci);
    let want = snapshot(&rootfs, &[]);
    // Guard against a vacuous comparison: the reference must hold what the layers say.
    assert!(want.entries.len() > 3000 && !want.hardlinks.is_empty());
    assert!(want.entries["bin/ping"].xattrs.contains_key("security.capability"));
    assert_eq!(want.entries["data/nanos"].mtime, (1_700_000_000, 123_456_789));
    let mount = common::Mount::ro(&image);
    let got = snapshot(mount.path(), &["lost+found"]);
    assert_same(&want, &got);
}

#[test]
fn single_layer_of_every_kind() {
    check_against_umoci(vec![(tar(&base_layer(), Flavour::Pax), TAR)]);
}

#[test]
fn layer_stack_uncompressed() {
    check_against_umoci(vec![
        (tar(&base_layer(), Flavour::Pax), TAR),
        (tar(&second_layer(), Flavour::Pax), TAR),
        (tar(&third_layer(), Flavour::Gnu), TAR),
    ]);
}

#[test]
fn layer_stack_gzip_and_zstd() {
    let (l1, l2, l3) = (
        tar(&base_layer(), Flavour::Pax),
        tar(&second_layer(), Flavour::Pax),
        tar(&third_layer(), Flavour::Gnu),
    );
    check_against_umoci_of(
        vec![(common::gzip(&l1), GZIP), (common::zstd(&l2), ZSTD), (common::zstd(&l3), ZSTD)],
        vec![(common::gzip(&l1), GZIP), (common::gzip(&l2), GZIP), (l3, TAR)],
    );
}

#[test]
fn fixed_size_image() {
    let l =
        vec![(tar(&base_layer(), Flavour::Pax), TAR), (tar(&second_layer(), Flavour::Pax), TAR)];
    check_sized(l.clone(), l, Some(300 << 20));
}

/// Snapshots keep the image one level down: the filesystem root holds only its own empty
/// `lost+found` and `rootfs`, which carries the image root's metadata and exactly what umoci
/// extracts, an image's own `lost+found` included; e2fsck finds nothing to fix.
#[test]
fn nested_layout_for_snapshots() {
    use std::os::unix::fs::MetadataExt;
    common::require_root();
    let mut base = base_layer();
    assert_eq!(base[0].path, ".");
    base[0] = E::dir(".").mode(0o750).owner(1, 2).mtime(1_600_000_000, 7).xattr("user.root", b"r");
    base.push(E::dir("lost+found").mode(0o755));
    base.push(E::file("lost+found/kept", b"a file of the image"));
    let layers = vec![
        (tar(&base, Flavour::Pax), TAR),
        (common::gzip(&tar(&second_layer(), Flavour::Pax)), GZIP),
    ];
    let work = tempfile::tempdir().unwrap();
    let mut files: Vec<PathBuf> = Vec::new();
    for (i, (data, _)) in layers.iter().enumerate() {
        let p = work.path().join(format!("layer{i}"));
        std::fs::write(&p, data).unwrap();
        files.push(p);
    }
    let image = work.path().join("image.ext4");
    let opts = RootfsOptions { nested: true, ..Default::default() };
    create_rootfs(&image, &files, &opts, &mut |_| {}).unwrap();
    common::e2fsck(&image);

    let mount = common::Mount::ro(&image);
    let mut top: Vec<String> = std::fs::read_dir(mount.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["lost+found", "rootfs"]);
    assert_eq!(std::fs::read_dir(mount.path().join("lost+found")).unwrap().count(), 0);
    let tree = mount.path().join("rootfs");
    let root = std::fs::symlink_metadata(&tree).unwrap();
    assert_eq!((root.mode() & 0o7777, root.uid(), root.gid()), (0o750, 1, 2));
    assert_eq!((root.mtime(), root.mtime_nsec()), (1_600_000_000, 7));
    assert_eq!(common::walk::xattrs(&tree).get("user.root").map(Vec::as_slice), Some(&b"r"[..]));

    let want = snapshot(&common::umoci_unpack(work.path(), &layers), &[]);
    assert!(want.entries.contains_key("lost+found/kept") && want.entries.len() > 3000);
    assert_same(&want, &snapshot(&tree, &[]));
}

/// GNU tar's sparse entries (type 'S'), as `tar --sparse` writes them.
#[test]
fn gnu_sparse_files() {
    use std::os::unix::fs::FileExt;
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("t");
    std::fs::create_dir(&tree).unwrap();
    let f = std::fs::File::create(tree.join("sparse")).unwrap();
    f.set_len(50 << 20).unwrap();
    f.write_all_at(b"middle", 20 << 20).unwrap();
    f.write_all_at(&[9u8; 10000], (50 << 20) - 10000).unwrap();
    drop(f);
    let out = std::process::Command::new("tar")
        .args(["--sparse", "--format=gnu", "--owner=0", "--group=0", "-cf", "-", "-C"])
        .arg(&tree)
        .arg("sparse")
        .output()
        .expect("GNU tar");
    assert!(out.status.success());
    assert_eq!(out.stdout[156], b'S', "tar did not write a sparse entry");
    // umoci cannot read GNU sparse entries: GNU tar's own extraction is the reference.
    common::require_root();
    let work = tempfile::tempdir().unwrap();
    let layer = work.path().join("layer.tar");
    std::fs::write(&layer, &out.stdout).unwrap();
    let want_dir = work.path().join("want");
    std::fs::create_dir(&want_dir).unwrap();
    let st = std::process::Command::new("tar")
        .arg("-xpf")
        .arg(&layer)
        .arg("-C")
        .arg(&want_dir)
        .status()
        .unwrap();
    assert!(st.success());
    let image = work.path().join("img");
    create_rootfs(&image, &[layer], &RootfsOptions::default(), &mut |_| {}).unwrap();
    common::e2fsck(&image);
    let mount = common::Mount::ro(&image);
    assert_same(&snapshot(&want_dir, &[]), &snapshot(mount.path(), &["lost+found"]));
    use std::os::unix::fs::MetadataExt;
    let blocks = std::fs::metadata(mount.path().join("sparse")).unwrap().blocks();
    assert!(blocks * 512 < 1 << 20, "the file is not sparse in the image: {blocks} sectors");
}
