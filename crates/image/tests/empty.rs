//! Empty writable filesystems: the directories asked for, and nothing e2fsck objects to.

mod common;

use vessel_ext4::reader::{Kind, Reader};
use vessel_image::{create_with_dirs, RootfsOptions};

#[test]
fn an_empty_filesystem_holds_the_directories_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("writable.ext4");
    create_with_dirs(&out, 64 << 20, &RootfsOptions::default(), &["upper", "work"]).unwrap();
    common::e2fsck(&out);
    let reader = Reader::open(&out).unwrap();
    let mut entries: Vec<(String, Kind, u16)> = reader
        .walk()
        .unwrap()
        .into_iter()
        .map(|(path, stat)| (String::from_utf8(path).unwrap(), stat.kind, stat.perm))
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let expected = [("lost+found", 0o700), ("upper", 0o755), ("work", 0o755)];
    let found: Vec<(&str, u16)> = entries
        .iter()
        .map(|(path, kind, mode)| {
            assert_eq!(*kind, Kind::Dir, "{path}");
            (path.as_str(), *mode)
        })
        .collect();
    assert_eq!(found, expected);
}

#[test]
fn a_directory_name_that_cannot_be_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("writable.ext4");
    for bad in [&["a/b"][..], &[""], &["."], &[".."], &["upper", "upper"]] {
        assert!(
            create_with_dirs(&out, 64 << 20, &RootfsOptions::default(), bad).is_err(),
            "{bad:?}"
        );
        assert!(!out.exists(), "a refused name left {}", out.display());
    }
}
