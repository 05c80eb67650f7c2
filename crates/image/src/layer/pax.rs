//! The PAX extended header records we honour: uid, gid, mtime and atime with
//! nanoseconds, and extended attributes as GNU tar / Go (`SCHILY.xattr.NAME`) and
//! bsdtar (`LIBARCHIVE.xattr.URL-ENCODED-NAME` = base64) write them.

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
                } else if let Some(name) = k.strip_prefix(b"LIBARCHIVE.xattr.") {
                    // bsdtar writes both forms; the SCHILY one wins when present.
                    if let (Some(name), Some(value)) = (percent_decode(name), base64_decode(v)) {
                        if !p.xattrs.iter().any(|x| x.name == name) {
                            p.xattrs.push(Xattr { name, value });
                        }
                    }
                }
            }
        }
    }
    p
}

fn percent_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hex = std::str::from_utf8(s.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Standard base64, padding optional.
fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s: Vec<u8> = s.iter().copied().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        match chunk.len() {
            4 => out.extend_from_slice(&[(acc >> 16) as u8, (acc >> 8) as u8, acc as u8]),
            3 => out.extend_from_slice(&[(acc >> 16) as u8, (acc >> 8) as u8]),
            2 => out.push((acc >> 16) as u8),
            _ => return None,
        }
    }
    Some(out)
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
    fn libarchive_xattrs() {
        assert_eq!(base64_decode(b"aGVsbG8="), Some(b"hello".to_vec()));
        assert_eq!(base64_decode(b"aGVsbG8"), Some(b"hello".to_vec()));
        assert_eq!(base64_decode(b"AAEC"), Some(vec![0, 1, 2]));
        assert_eq!(base64_decode(b"a"), None);
        assert_eq!(base64_decode(b"a!=="), None);
        assert_eq!(percent_decode(b"user.a%20b"), Some(b"user.a b".to_vec()));
        assert_eq!(percent_decode(b"user.%zz"), None);
        let recs: Vec<(&[u8], &[u8])> = vec![
            (b"LIBARCHIVE.xattr.user.x", b"dmFs"),
            (b"LIBARCHIVE.xattr.user.both", b"bGli"),
            (b"SCHILY.xattr.user.both", b"schily"),
        ];
        let mut p = parse(recs.into_iter());
        p.xattrs.sort();
        assert_eq!(p.xattrs[0], Xattr { name: b"user.both".to_vec(), value: b"schily".to_vec() });
        assert_eq!(p.xattrs[1], Xattr { name: b"user.x".to_vec(), value: b"val".to_vec() });
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
