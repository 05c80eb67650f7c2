//! Building layer tarballs entry by entry, in PAX or GNU flavour.

use tar::{EntryType, Header};

#[derive(Debug, Clone)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    Hardlink(String),
    Fifo,
    Char(u32, u32),
    Block(u32, u32),
}

#[derive(Debug, Clone)]
pub struct E {
    pub path: String,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: (i64, u32),
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl E {
    fn new(path: &str, kind: Kind, mode: u32) -> E {
        E {
            path: path.into(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: (1_600_000_000, 0),
            xattrs: vec![],
        }
    }
    pub fn dir(path: &str) -> E {
        E::new(path, Kind::Dir, 0o755)
    }
    pub fn file(path: &str, data: &[u8]) -> E {
        E::new(path, Kind::File(data.to_vec()), 0o644)
    }
    pub fn symlink(path: &str, target: &str) -> E {
        E::new(path, Kind::Symlink(target.into()), 0o777)
    }
    pub fn hardlink(path: &str, target: &str) -> E {
        E::new(path, Kind::Hardlink(target.into()), 0o644)
    }
    pub fn fifo(path: &str) -> E {
        E::new(path, Kind::Fifo, 0o644)
    }
    pub fn chr(path: &str, major: u32, minor: u32) -> E {
        E::new(path, Kind::Char(major, minor), 0o666)
    }
    pub fn blk(path: &str, major: u32, minor: u32) -> E {
        E::new(path, Kind::Block(major, minor), 0o660)
    }
    /// `.wh.NAME` beside `path`.
    pub fn whiteout(path: &str) -> E {
        let (dir, name) = path.rsplit_once('/').map_or(("", path), |(d, n)| (d, n));
        let p = if dir.is_empty() { format!(".wh.{name}") } else { format!("{dir}/.wh.{name}") };
        E::file(&p, b"")
    }
    pub fn opaque(dir: &str) -> E {
        E::file(&format!("{dir}/.wh..wh..opq"), b"")
    }
    pub fn mode(mut self, m: u32) -> E {
        self.mode = m;
        self
    }
    pub fn owner(mut self, uid: u64, gid: u64) -> E {
        self.uid = uid;
        self.gid = gid;
        self
    }
    pub fn mtime(mut self, s: i64, ns: u32) -> E {
        self.mtime = (s, ns);
        self
    }
    pub fn xattr(mut self, k: &str, v: &[u8]) -> E {
        self.xattrs.push((k.into(), v.to_vec()));
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// PAX records for long names, nanosecond mtimes, big ids and xattrs.
    Pax,
    /// GNU long name / long link entries.
    Gnu,
}

pub fn tar(entries: &[E], flavour: Flavour) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let (etype, data, link): (EntryType, &[u8], Option<&str>) = match &e.kind {
            Kind::Dir => (EntryType::Directory, &[], None),
            Kind::File(d) => (EntryType::Regular, d, None),
            Kind::Symlink(t) => (EntryType::Symlink, &[], Some(t)),
            Kind::Hardlink(t) => (EntryType::Link, &[], Some(t)),
            Kind::Fifo => (EntryType::Fifo, &[], None),
            Kind::Char(..) => (EntryType::Char, &[], None),
            Kind::Block(..) => (EntryType::Block, &[], None),
        };
        let mut h = match flavour {
            Flavour::Pax => Header::new_ustar(),
            Flavour::Gnu => Header::new_gnu(),
        };
        h.set_entry_type(etype);
        h.set_mode(e.mode);
        h.set_size(data.len() as u64);
        h.set_mtime(e.mtime.0.max(0) as u64);
        if let Kind::Char(ma, mi) | Kind::Block(ma, mi) = e.kind {
            h.set_device_major(ma).unwrap();
            h.set_device_minor(mi).unwrap();
        }
        let mut path = e.path.clone();
        if matches!(e.kind, Kind::Dir) && !path.ends_with('/') {
            path.push('/');
        }
        match flavour {
            Flavour::Pax => {
                let mut recs: Vec<(String, Vec<u8>)> = Vec::new();
                recs.push(("mtime".into(), format!("{}.{:09}", e.mtime.0, e.mtime.1).into_bytes()));
                if e.uid > 0o7777777 || e.gid > 0o7777777 {
                    recs.push(("uid".into(), e.uid.to_string().into_bytes()));
                    recs.push(("gid".into(), e.gid.to_string().into_bytes()));
                } else {
                    h.set_uid(e.uid);
                    h.set_gid(e.gid);
                }
                for (k, v) in &e.xattrs {
                    recs.push((format!("SCHILY.xattr.{k}"), v.clone()));
                }
                if path.len() > 99 {
                    recs.push(("path".into(), path.clone().into_bytes()));
                }
                if let Some(l) = link {
                    if l.len() > 99 {
                        recs.push(("linkpath".into(), l.as_bytes().to_vec()));
                    }
                }
                b.append_pax_extensions(recs.iter().map(|(k, v)| (k.as_str(), &v[..]))).unwrap();
                let short: String = path.chars().take(99).collect();
                let name = &mut h.as_old_mut().name;
                name.fill(0);
                name[..short.len()].copy_from_slice(short.as_bytes());
                if let Some(l) = link {
                    let short: String = l.chars().take(99).collect();
                    let ln = &mut h.as_old_mut().linkname;
                    ln.fill(0);
                    ln[..short.len()].copy_from_slice(short.as_bytes());
                }
                h.set_cksum();
                b.append(&h, data).unwrap();
            }
            Flavour::Gnu => {
                assert!(e.xattrs.is_empty() && e.mtime.1 == 0, "GNU tars carry no xattrs or ns");
                h.set_uid(e.uid);
                h.set_gid(e.gid);
                match link {
                    Some(l) => b.append_link(&mut h, &path, l).unwrap(),
                    None => b.append_data(&mut h, &path, data).unwrap(),
                }
            }
        }
    }
    b.into_inner().unwrap()
}
