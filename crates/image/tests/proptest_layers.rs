//! Property test: random layer stacks, applied by vessel-image and read back with the
//! ext4 crate's own reader, match a small model of what the layers mean.

mod common;

use std::collections::BTreeMap;

use common::layer::{tar, Flavour, E};
use proptest::prelude::*;
use vessel_ext4::reader::{Kind, Reader};
use vessel_image::{create_rootfs, RootfsOptions};

const NAMES: [&str; 3] = ["a", "b", "c"];

#[derive(Debug, Clone)]
enum Op {
    Dir(Vec<usize>, u16),
    File(Vec<usize>, Vec<u8>, u16, u32),
    Symlink(Vec<usize>, String),
    Hardlink(Vec<usize>, Vec<usize>),
    Whiteout(Vec<usize>),
    Opaque(Vec<usize>),
    Fifo(Vec<usize>),
}

fn path() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0..NAMES.len(), 1..=3)
}

fn content() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        (0..3usize, any::<u8>()).prop_map(|(n, b)| {
            // Zero blocks (holes) around a little data.
            let mut v = vec![0u8; n * 4096 + 10];
            v.push(b | 1);
            v.extend(vec![0u8; 4096]);
            v
        }),
        prop::collection::vec(any::<u8>(), 4000..9000),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (path(), prop::sample::select(vec![0o755u16, 0o700, 0o1777, 0o2755])).prop_map(|(p, m)| Op::Dir(p, m)),
        4 => (path(), content(), prop::sample::select(vec![0o644u16, 0o4755, 0o600]), 0..70000u32)
            .prop_map(|(p, c, m, u)| Op::File(p, c, m, u)),
        1 => (path(), "[a-z./]{1,70}").prop_map(|(p, t)| Op::Symlink(p, t)),
        2 => (path(), path()).prop_map(|(p, t)| Op::Hardlink(p, t)),
        2 => path().prop_map(Op::Whiteout),
        1 => path().prop_map(Op::Opaque),
        1 => path().prop_map(Op::Fifo),
    ]
}

/// One inode of the model.
#[derive(Debug, Clone, PartialEq)]
struct Ino {
    kind: Kind,
    data: Vec<u8>,
    perm: u16,
    uid: u32,
    mtime: (i64, u32),
    layer: usize,
}

/// Paths (components) to inode ids, and the inodes.
#[derive(Debug, Default)]
struct Model {
    paths: BTreeMap<Vec<String>, usize>,
    inodes: Vec<Ino>,
}

impl Model {
    fn is_dir(&self, p: &[String]) -> Option<bool> {
        self.paths.get(p).map(|&i| self.inodes[i].kind == Kind::Dir)
    }

    fn remove_tree(&mut self, p: &[String]) {
        self.paths.retain(|k, _| !k.starts_with(p));
    }

    /// Makes the parents of `p` exist; false if one is not a directory.
    fn parents(&mut self, p: &[String], layer: usize) -> bool {
        for n in 1..p.len() {
            match self.is_dir(&p[..n]) {
                Some(true) => {}
                Some(false) => return false,
                None => {
                    self.inodes.push(Ino {
                        kind: Kind::Dir,
                        data: vec![],
                        perm: 0o755,
                        uid: 0,
                        mtime: (0, 0),
                        layer,
                    });
                    self.paths.insert(p[..n].to_vec(), self.inodes.len() - 1);
                }
            }
        }
        true
    }

    /// Applies `op`; returns the tar entry for it, or `None` if the op is one the model
    /// does not cover (then it is left out of the layer).
    fn apply(&mut self, op: &Op, layer: usize, mtime: (i64, u32)) -> Option<E> {
        let s = |p: &[usize]| p.iter().map(|&i| NAMES[i].to_string()).collect::<Vec<_>>();
        match op {
            Op::Whiteout(p) | Op::Opaque(p) => {
                let p = s(p);
                let parent_ok = (1..p.len()).all(|n| self.is_dir(&p[..n]) == Some(true));
                if !parent_ok {
                    return None;
                }
                if let Op::Opaque(_) = op {
                    if self.is_dir(&p) != Some(true) {
                        return None;
                    }
                    // Remove what this layer did not write, descending into what it did.
                    let mut keep_dirs = vec![p.clone()];
                    let mut doomed = Vec::new();
                    while let Some(d) = keep_dirs.pop() {
                        for (k, &i) in self.paths.range(d.clone()..) {
                            if !k.starts_with(&d) {
                                break;
                            }
                            if k.len() != d.len() + 1 {
                                continue;
                            }
                            if self.inodes[i].layer != layer {
                                doomed.push(k.clone());
                            } else if self.inodes[i].kind == Kind::Dir {
                                keep_dirs.push(k.clone());
                            }
                        }
                    }
                    for d in doomed {
                        self.remove_tree(&d);
                    }
                    return Some(E::opaque(&p.join("/")));
                }
                self.remove_tree(&p);
                Some(E::whiteout(&p.join("/")))
            }
            Op::Hardlink(p, t) => {
                let (p, t) = (s(p), s(t));
                let &ti = self.paths.get(&t)?;
                if self.inodes[ti].kind == Kind::Dir
                    || p == t
                    || p.starts_with(&t)
                    || t.starts_with(&p)
                {
                    return None;
                }
                if !self.parents(&p, layer) {
                    return None;
                }
                self.remove_tree(&p);
                self.paths.insert(p.clone(), ti);
                self.inodes[ti].layer = layer;
                Some(E::hardlink(&p.join("/"), &t.join("/")))
            }
            _ => {
                let (p, ino, e) = match op {
                    Op::Dir(p, m) => {
                        let ps = s(p);
                        let e = E::dir(&ps.join("/")).mode(*m as u32).mtime(mtime.0, mtime.1);
                        (
                            ps,
                            Ino { kind: Kind::Dir, data: vec![], perm: *m, uid: 0, mtime, layer },
                            e,
                        )
                    }
                    Op::File(p, c, m, u) => {
                        let ps = s(p);
                        let e = E::file(&ps.join("/"), c)
                            .mode(*m as u32)
                            .owner(*u as u64, 0)
                            .mtime(mtime.0, mtime.1);
                        (
                            ps,
                            Ino {
                                kind: Kind::File,
                                data: c.clone(),
                                perm: *m,
                                uid: *u,
                                mtime,
                                layer,
                            },
                            e,
                        )
                    }
                    Op::Symlink(p, t) => {
                        let ps = s(p);
                        let e = E::symlink(&ps.join("/"), t).mtime(mtime.0, mtime.1);
                        let k = Kind::Symlink(t.as_bytes().to_vec());
                        (ps, Ino { kind: k, data: vec![], perm: 0o777, uid: 0, mtime, layer }, e)
                    }
                    Op::Fifo(p) => {
                        let ps = s(p);
                        let e = E::fifo(&ps.join("/")).mtime(mtime.0, mtime.1);
                        (
                            ps,
                            Ino {
                                kind: Kind::Fifo,
                                data: vec![],
                                perm: 0o644,
                                uid: 0,
                                mtime,
                                layer,
                            },
                            e,
                        )
                    }
                    _ => unreachable!(),
                };
                if !self.parents(&p, layer) {
                    return None;
                }
                if ino.kind == Kind::Dir && self.is_dir(&p) == Some(true) {
                    let i = self.paths[&p];
                    self.inodes[i] = ino;
                } else {
                    self.remove_tree(&p);
                    self.inodes.push(ino);
                    self.paths.insert(p, self.inodes.len() - 1);
                }
                Some(e)
            }
        }
    }
}

fn check(layers: Vec<Vec<Op>>) {
    let mut model = Model::default();
    let work = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (li, ops) in layers.iter().enumerate() {
        let layer = li + 1;
        let entries: Vec<E> = ops
            .iter()
            .enumerate()
            .filter_map(|(oi, op)| {
                model.apply(op, layer, (1_000_000 + (li * 100 + oi) as i64, oi as u32 * 7))
            })
            .collect();
        let f = work.path().join(format!("l{li}.tar"));
        std::fs::write(&f, tar(&entries, Flavour::Pax)).unwrap();
        files.push(f);
    }
    let image = work.path().join("img");
    create_rootfs(&image, &files, &RootfsOptions::default(), &mut |_| {}).unwrap();
    let r = Reader::open(&image).unwrap();
    let got: BTreeMap<Vec<u8>, _> =
        r.walk().unwrap().into_iter().filter(|(p, _)| p != b"lost+found").collect();
    let want: BTreeMap<Vec<u8>, usize> =
        model.paths.iter().map(|(k, &i)| (k.join("/").into_bytes(), i)).collect();
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    let mut ino_map: BTreeMap<usize, u32> = BTreeMap::new();
    for (p, &i) in &want {
        let st = &got[p];
        let m = &model.inodes[i];
        let show = String::from_utf8_lossy(p);
        assert_eq!(st.kind, m.kind, "{show}");
        assert_eq!(st.perm, m.perm, "{show}");
        assert_eq!(st.uid, m.uid, "{show}");
        assert_eq!((st.mtime.secs, st.mtime.nsec), m.mtime, "{show}");
        if m.kind == Kind::File {
            assert_eq!(r.read_file(st.ino).unwrap(), m.data, "{show}");
        }
        // Same model inode <=> same ext4 inode.
        assert_eq!(*ino_map.entry(i).or_insert(st.ino), st.ino, "{show}");
        if m.kind != Kind::Dir {
            let names = want.values().filter(|&&j| j == i).count();
            assert_eq!(st.links as usize, names, "{show}");
        }
    }
    let distinct: std::collections::BTreeSet<u32> = ino_map.values().copied().collect();
    assert_eq!(distinct.len(), ino_map.len());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn layers_match_model(layers in prop::collection::vec(prop::collection::vec(op(), 1..14), 1..4)) {
        check(layers);
    }
}
