//! Property test: random trees written with `Builder` read back identically with the
//! crate's own `Reader`, and pass `e2fsck -fn`.

use std::collections::BTreeMap;
use std::process::Command;

use proptest::prelude::*;
use vessel_ext4::reader::{Kind, Reader};
use vessel_ext4::*;

#[derive(Debug, Clone)]
enum K {
    Dir,
    File(Vec<u8>),
    Link(Vec<u8>),
    Chr(u32, u32),
    Fifo,
    Hard(usize),
}

#[derive(Debug, Clone)]
struct Spec {
    parent: usize,
    name: Vec<u8>,
    kind: K,
    mode: u16,
    uid: u32,
    mtime: (i64, u32),
    xattrs: Vec<(String, Vec<u8>)>,
}

fn spec() -> impl Strategy<Value = Spec> {
    let kind = prop_oneof![
        2 => Just(K::Dir),
        4 => prop::collection::vec(any::<u8>(), 0..9000).prop_map(K::File),
        1 => prop::collection::vec(1u8..=255, 1..300).prop_map(|v| K::Link(v.into_iter().map(|b| if b == b'/' { b'x' } else { b }).collect())),
        1 => (0u32..4096, 0u32..1_000_000).prop_map(|(a, b)| K::Chr(a, b)),
        1 => Just(K::Fifo),
        1 => (0usize..1000).prop_map(K::Hard),
    ];
    let name = prop::collection::vec(1u8..=255, 1..=255)
        .prop_map(|v| v.into_iter().map(|b| if b == b'/' { b'_' } else { b }).collect::<Vec<u8>>())
        .prop_filter("not . or ..", |n| n != b"." && n != b"..");
    let xattrs = prop::collection::vec(
        (
            prop::sample::select(vec!["user.a", "user.bb", "trusted.t", "security.s"]),
            prop::collection::vec(any::<u8>(), 0..700),
        ),
        0..3,
    )
    .prop_map(|v| {
        let mut m = BTreeMap::new();
        for (k, val) in v {
            m.insert(k.to_string(), val);
        }
        m.into_iter().collect::<Vec<_>>()
    });
    (
        0usize..1000,
        name,
        kind,
        0u16..0o10000,
        any::<u32>(),
        (i32::MIN as i64..i32::MAX as i64 + (3 << 32), 0u32..1_000_000_000),
        xattrs,
    )
        .prop_map(|(parent, name, kind, mode, uid, (s, ns), xattrs)| Spec {
            parent,
            name,
            kind,
            mode,
            uid,
            mtime: (s, ns),
            xattrs,
        })
}

fn e2fsck(path: &std::path::Path) {
    let out = Command::new("/usr/sbin/e2fsck")
        .arg("-fn")
        .arg(path)
        .output()
        .expect("e2fsck must be installed");
    assert!(
        out.status.success(),
        "e2fsck failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn check(specs: Vec<Spec>, bulk: usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("img");
    let mut b =
        Builder::new(std::fs::File::create(&path).unwrap(), BuildOptions::default()).unwrap();
    // Directories created so far, and every path -> (node, spec) for checking.
    let mut dirs: Vec<(NodeId, Vec<u8>)> = vec![(Tree::ROOT, Vec::new())];
    let mut files: Vec<NodeId> = Vec::new();
    let mut want: BTreeMap<Vec<u8>, NodeId> = BTreeMap::new();
    let add_spec = |b: &mut Builder,
                    s: &Spec,
                    dirs: &mut Vec<(NodeId, Vec<u8>)>,
                    files: &mut Vec<NodeId>,
                    want: &mut BTreeMap<Vec<u8>, NodeId>| {
        let (parent, ppath) = dirs[s.parent % dirs.len()].clone();
        if b.tree().lookup(parent, &s.name).is_some()
            || (parent == Tree::ROOT && s.name == b"lost+found")
        {
            return;
        }
        let t = |(s, n): (i64, u32)| Timestamp { secs: s, nsec: n };
        let meta = Metadata {
            mode: s.mode,
            uid: s.uid,
            gid: s.uid / 3,
            mtime: t(s.mtime),
            atime: t(s.mtime),
            xattrs: s
                .xattrs
                .iter()
                .map(|(k, v)| Xattr { name: k.as_bytes().to_vec(), value: v.clone() })
                .collect(),
        };
        let id = match &s.kind {
            K::Hard(i) if !files.is_empty() => files[i % files.len()],
            K::Hard(_) => return,
            k => {
                let kind = match k {
                    K::Dir => NodeKind::Dir(Default::default()),
                    K::File(d) => {
                        NodeKind::File(b.write_file(&mut &d[..], d.len() as u64).unwrap())
                    }
                    K::Link(t) => NodeKind::Symlink(t.clone()),
                    K::Chr(a, m) => NodeKind::CharDev(DevNumbers { major: *a, minor: *m }),
                    K::Fifo => NodeKind::Fifo,
                    K::Hard(_) => unreachable!(),
                };
                b.tree_mut().add(Node { meta, kind, tag: 0 })
            }
        };
        b.tree_mut().insert(parent, &s.name, id).unwrap();
        let mut p = ppath.clone();
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(&s.name);
        match b.tree().get(id).kind {
            NodeKind::Dir(_) => dirs.push((id, p.clone())),
            NodeKind::File(_) => files.push(id),
            _ => {}
        }
        want.insert(p, id);
    };
    for s in &specs {
        add_spec(&mut b, s, &mut dirs, &mut files, &mut want);
    }
    // A big directory, to exercise the htree index.
    for i in 0..bulk {
        let s = Spec {
            parent: dirs.len() - 1,
            name: format!("bulk-entry-{i}").into_bytes(),
            kind: K::Fifo,
            mode: 0o644,
            uid: 0,
            mtime: (0, 0),
            xattrs: vec![],
        };
        add_spec(&mut b, &s, &mut dirs, &mut files, &mut want);
    }
    let tree = b.tree().clone();
    b.finish().unwrap();
    e2fsck(&path);

    let r = Reader::open(&path).unwrap();
    let got: BTreeMap<Vec<u8>, _> =
        r.walk().unwrap().into_iter().filter(|(p, _)| p != b"lost+found").collect();
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    let mut inos: BTreeMap<NodeId, u32> = BTreeMap::new();
    for (p, &id) in &want {
        let st = &got[p];
        let node = tree.get(id);
        assert_eq!(*inos.entry(id).or_insert(st.ino), st.ino);
        assert_eq!(st.perm, node.meta.mode & 0o7777);
        assert_eq!((st.uid, st.gid), (node.meta.uid, node.meta.gid));
        assert_eq!(st.mtime, node.meta.mtime);
        let mut xa: Vec<Xattr> = node.meta.xattrs.clone();
        xa.sort();
        assert_eq!(st.xattrs, xa);
        match &node.kind {
            NodeKind::Dir(_) => assert_eq!(st.kind, Kind::Dir),
            NodeKind::File(f) => {
                assert_eq!(st.kind, Kind::File);
                assert_eq!(st.size, f.size);
            }
            NodeKind::Symlink(t) => assert_eq!(st.kind, Kind::Symlink(t.clone())),
            NodeKind::CharDev(d) => assert_eq!(st.kind, Kind::CharDev(*d)),
            NodeKind::Fifo => assert_eq!(st.kind, Kind::Fifo),
            _ => unreachable!(),
        }
    }
    // File contents: the spec that created each file node holds its bytes.
    let mut contents: BTreeMap<Vec<u8>, &Vec<u8>> = BTreeMap::new();
    for s in &specs {
        if let K::File(d) = &s.kind {
            contents.entry(s.name.clone()).or_insert(d);
        }
    }
    for (p, &id) in &want {
        if let NodeKind::File(f) = &tree.get(id).kind {
            let data = r.read_file(got[p].ino).unwrap();
            assert_eq!(data.len() as u64, f.size);
            let name = p.rsplit(|&b| b == b'/').next().unwrap().to_vec();
            if let Some(d) = contents.get(&name) {
                if d.len() as u64 == f.size && specs.iter().filter(|s| s.name == name).count() == 1
                {
                    assert_eq!(&data, *d);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_trees_round_trip(specs in prop::collection::vec(spec(), 0..60), bulk in prop::sample::select(vec![0usize, 200, 1500])) {
        check(specs, bulk);
    }
}
