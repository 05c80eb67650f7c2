//! The PAX extended header records we honour: uid, gid, mtime and atime with
//! nanoseconds, and `SCHILY.xattr.*` extended attributes.

use vessel_ext4::{Timestamp, Xattr};

#[derive(Debug, Default)]
pub struct Pax {
    pub uid: Option<u64>,
    pub gid: Option<u64>,
    pub mtime: Option<Timestamp>,
    pub atime: Option<Timestamp>,
    pub xattrs: Vec<Xattr>,
}

/// Parses a PAX time: `[-]SECONDS[.FRACTION]`.
pub fn parse_time(v: &[u8]) -> Option<Timestamp> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    let mut nsec: u32 = 0;
    for (i, d) in frac.bytes().take(9).enumerate() {
        nsec += (d - b'0') as u32 * 10u32.pow(8 - i as u32);
    }
    if !neg {
        return Some(Timestamp { secs, nsec });
    }
    if nsec == 0 {
        Some(Timestamp { secs: -secs, nsec: 0 })
    } else {
        Some(Timestamp { secs: -secs - 1, nsec: 1_000_000_000 - nsec })
    }
}

fn parse_id(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

pub fn parse<'a>(records: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Pax {
    let mut p = Pax::default();
    for (k, v) in records {
        match k {
            b"uid" => p.uid = parse_id(v),
            b"gid" => p.gid = parse_id(v),
            b"mtime" => p.mtime = parse_time(v),
            b"atime" => p.atime = parse_time(v),
            _ => {
                if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
                    p.xattrs.retain(|x| x.name != name);
                    p.xattrs.push(Xattr { name: name.to_vec(), value: v.to_vec() });
                }
            }
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(
            parse_time(b"1700000000.123456789"),
            Some(Timestamp { secs: 1_700_000_000, nsec: 123_456_789 })
        );
        assert_eq!(parse_time(b"5.5"), Some(Timestamp { secs: 5, nsec: 500_000_000 }));
        assert_eq!(parse_time(b"-1.25"), Some(Timestamp { secs: -2, nsec: 750_000_000 }));
        assert_eq!(parse_time(b"12"), Some(Timestamp { secs: 12, nsec: 0 }));
        assert_eq!(parse_time(b"x"), None);
        assert_eq!(parse_time(b"99999999999999999999999"), None);
    }

    #[test]
    fn records() {
        let recs: Vec<(&[u8], &[u8])> =
            vec![(b"uid", b"70000"), (b"SCHILY.xattr.user.a", b"v"), (b"mtime", b"1.000000001")];
        let p = parse(recs.into_iter());
        assert_eq!(p.uid, Some(70000));
        assert_eq!(p.xattrs.len(), 1);
        assert_eq!(p.mtime, Some(Timestamp { secs: 1, nsec: 1 }));
    }
}
