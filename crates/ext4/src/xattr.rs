//! Extended attributes: in the inode body when they fit, otherwise in one xattr block.
//! POSIX ACLs are converted between the xattr wire format and ext4's compact format.

use crate::checksum::crc32c;
use crate::inode::{INODE_SIZE, XATTR_IBODY_OFFSET};
use crate::le::*;
use crate::tree::Xattr;
use crate::{Ext4Error, Result};

pub const MAGIC: u32 = 0xEA02_0000;
const BS: usize = 4096;
const BLOCK_HEADER: usize = 32;
/// Space after the in-inode magic word.
const IBODY_SPACE: usize = INODE_SIZE - XATTR_IBODY_OFFSET - 4;

const PREFIXES: &[(&[u8], u8)] =
    &[(b"user.", 1), (b"trusted.", 4), (b"security.", 6), (b"system.", 7)];
const ACL_ACCESS: &[u8] = b"system.posix_acl_access";
const ACL_DEFAULT: &[u8] = b"system.posix_acl_default";

/// Splits a full attribute name into (name index, suffix).
fn split_name(name: &[u8]) -> Option<(u8, &[u8])> {
    if name == ACL_ACCESS {
        return Some((2, b""));
    }
    if name == ACL_DEFAULT {
        return Some((3, b""));
    }
    for (p, idx) in PREFIXES {
        if let Some(rest) = name.strip_prefix(*p) {
            if !rest.is_empty() && rest.len() <= 255 {
                return Some((*idx, rest));
            }
        }
    }
    None
}

fn join_name(index: u8, suffix: &[u8]) -> Option<Vec<u8>> {
    match index {
        2 => Some(ACL_ACCESS.to_vec()),
        3 => Some(ACL_DEFAULT.to_vec()),
        _ => {
            let (p, _) = PREFIXES.iter().find(|(_, i)| *i == index)?;
            let mut v = p.to_vec();
            v.extend_from_slice(suffix);
            Some(v)
        }
    }
}

/// One attribute ready to encode: on-disk index, suffix and value.
struct Disk {
    index: u8,
    name: Vec<u8>,
    value: Vec<u8>,
}

fn entry_size(name_len: usize) -> usize {
    (16 + name_len + 3) & !3
}
fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

fn to_disk(attrs: &[Xattr]) -> Result<Vec<Disk>> {
    let mut v = Vec::with_capacity(attrs.len());
    for a in attrs {
        let show = || String::from_utf8_lossy(&a.name).into_owned();
        let (index, suffix) =
            split_name(&a.name).ok_or_else(|| Ext4Error::XattrName { name: show() })?;
        let value = if index == 2 || index == 3 {
            acl_to_disk(&a.value).ok_or_else(|| Ext4Error::BadAcl { name: show() })?
        } else {
            a.value.clone()
        };
        v.push(Disk { index, name: suffix.to_vec(), value });
    }
    // Blocks must be sorted: the kernel stops its lookup at the first larger entry.
    v.sort_by(|a, b| (a.index, a.name.len(), &a.name).cmp(&(b.index, b.name.len(), &b.name)));
    Ok(v)
}

/// Checks that a set of attributes can be stored (names supported, fits in one block).
pub fn validate_xattrs(attrs: &[Xattr]) -> Result<()> {
    let d = to_disk(attrs)?;
    let need = BLOCK_HEADER
        + 4
        + d.iter().map(|a| entry_size(a.name.len()) + pad4(a.value.len())).sum::<usize>();
    if need > BS {
        return Err(Ext4Error::XattrTooLarge {
            reason: format!("{need} bytes needed, {BS} available"),
        });
    }
    Ok(())
}

fn entry_hash(name: &[u8], value: &[u8]) -> u32 {
    let mut hash: u32 = 0;
    for &c in name {
        hash = (hash << 5) ^ (hash >> 27) ^ c as u32;
    }
    let mut padded = value.to_vec();
    padded.resize(pad4(value.len()), 0);
    for w in padded.chunks_exact(4) {
        hash = (hash << 16) ^ (hash >> 16) ^ get32(w, 0);
    }
    hash
}

/// Writes entries and values into `area`; value offsets are relative to `base`
/// within `area` (0 for blocks, where `area` is the whole block).
fn write_entries(area: &mut [u8], entries_start: usize, attrs: &[Disk]) -> Vec<u32> {
    let mut pos = entries_start;
    let mut vend = area.len();
    let mut hashes = Vec::new();
    for a in attrs {
        let voff = if a.value.is_empty() {
            0
        } else {
            vend -= pad4(a.value.len());
            area[vend..vend + a.value.len()].copy_from_slice(&a.value);
            vend
        };
        let h = entry_hash(&a.name, &a.value);
        hashes.push(h);
        let e = &mut area[pos..];
        e[0] = a.name.len() as u8;
        e[1] = a.index;
        put16(e, 2, voff as u16);
        put32(e, 4, 0);
        put32(e, 8, a.value.len() as u32);
        put32(e, 12, h);
        e[16..16 + a.name.len()].copy_from_slice(&a.name);
        pos += entry_size(a.name.len());
    }
    hashes
}

/// Where a set of attributes goes.
#[derive(Debug, Default)]
pub struct Encoded {
    /// The in-inode area (magic + entries + values), empty if unused.
    pub ibody: Vec<u8>,
    /// A whole xattr block, minus its checksum (set with [`finish_block`]).
    pub block: Option<Vec<u8>>,
}

pub fn encode(attrs: &[Xattr]) -> Result<Encoded> {
    if attrs.is_empty() {
        return Ok(Encoded::default());
    }
    let d = to_disk(attrs)?;
    let total: usize = d.iter().map(|a| entry_size(a.name.len()) + pad4(a.value.len())).sum();
    if total + 4 <= IBODY_SPACE {
        let mut ibody = vec![0u8; INODE_SIZE - XATTR_IBODY_OFFSET];
        put32(&mut ibody, 0, MAGIC);
        // In-inode value offsets count from the first entry, just after the magic.
        write_entries(&mut ibody[4..], 0, &d);
        return Ok(Encoded { ibody, block: None });
    }
    if BLOCK_HEADER + total + 4 > BS {
        return Err(Ext4Error::XattrTooLarge {
            reason: format!("{} bytes needed, {BS} available", BLOCK_HEADER + total + 4),
        });
    }
    let mut b = vec![0u8; BS];
    put32(&mut b, 0, MAGIC);
    put32(&mut b, 4, 1); // h_refcount
    put32(&mut b, 8, 1); // h_blocks
    let hashes = write_entries(&mut b, BLOCK_HEADER, &d);
    let mut bh: u32 = 0;
    for h in hashes {
        bh = (bh << 16) ^ (bh >> 16) ^ h;
    }
    put32(&mut b, 12, bh);
    Ok(Encoded { ibody: Vec::new(), block: Some(b) })
}

/// Sets the block checksum, which covers the block's own number.
pub fn finish_block(b: &mut [u8], csum_seed: u32, block_nr: u64) {
    put32(b, 16, 0);
    let mut c = crc32c(csum_seed, &block_nr.to_le_bytes());
    c = crc32c(c, b);
    put32(b, 16, c);
}

fn parse_entries(area: &[u8], start: usize, value_base: usize, out: &mut Vec<Xattr>) -> Option<()> {
    let mut pos = start;
    loop {
        if pos + 4 > area.len() {
            return None;
        }
        if get32(area, pos) == 0 {
            return Some(());
        }
        if pos + 16 > area.len() {
            return None;
        }
        let nl = area[pos] as usize;
        let index = area[pos + 1];
        let voff = get16(area, pos + 2) as usize;
        let vsize = get32(area, pos + 8) as usize;
        let name = area.get(pos + 16..pos + 16 + nl)?;
        let vstart = value_base.checked_add(voff)?;
        let value = area.get(vstart..vstart.checked_add(vsize)?)?;
        let full = join_name(index, name)?;
        let value = if index == 2 || index == 3 { acl_from_disk(value)? } else { value.to_vec() };
        out.push(Xattr { name: full, value });
        pos += entry_size(nl);
    }
}

/// Reads attributes back from an inode's xattr area and optional block.
pub fn decode(ibody: &[u8], block: Option<&[u8]>) -> Option<Vec<Xattr>> {
    let mut out = Vec::new();
    if ibody.len() >= 4 && get32(ibody, 0) == MAGIC {
        parse_entries(&ibody[4..], 0, 0, &mut out)?;
    }
    if let Some(b) = block {
        if b.len() < BLOCK_HEADER || get32(b, 0) != MAGIC {
            return None;
        }
        parse_entries(b, BLOCK_HEADER, 0, &mut out)?;
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Some(out)
}

const ACL_XATTR_VERSION: u32 = 2;
const ACL_DISK_VERSION: u32 = 1;
const ACL_USER: u16 = 0x02;
const ACL_GROUP: u16 = 0x08;

/// Converts a POSIX ACL from the xattr wire format (version 2, 8-byte entries) to
/// ext4's on-disk format (version 1, 4-byte entries unless they name a user or group).
fn acl_to_disk(v: &[u8]) -> Option<Vec<u8>> {
    if v.len() < 4 || v.len() % 8 != 4 || get32(v, 0) != ACL_XATTR_VERSION {
        return None;
    }
    let mut out = ACL_DISK_VERSION.to_le_bytes().to_vec();
    for e in v[4..].chunks_exact(8) {
        let tag = get16(e, 0);
        out.extend_from_slice(&e[0..4]);
        if tag == ACL_USER || tag == ACL_GROUP {
            out.extend_from_slice(&e[4..8]);
        }
    }
    Some(out)
}

fn acl_from_disk(v: &[u8]) -> Option<Vec<u8>> {
    if v.len() < 4 || get32(v, 0) != ACL_DISK_VERSION {
        return None;
    }
    let mut out = ACL_XATTR_VERSION.to_le_bytes().to_vec();
    let mut pos = 4;
    while pos < v.len() {
        let e = v.get(pos..pos + 4)?;
        let tag = get16(e, 0);
        out.extend_from_slice(e);
        if tag == ACL_USER || tag == ACL_GROUP {
            out.extend_from_slice(v.get(pos + 4..pos + 8)?);
            pos += 8;
        } else {
            out.extend_from_slice(&u32::MAX.to_le_bytes());
            pos += 4;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(n: &str, v: &[u8]) -> Xattr {
        Xattr { name: n.as_bytes().to_vec(), value: v.to_vec() }
    }

    #[test]
    fn small_set_goes_in_inode() {
        let attrs = vec![x("user.a", b"1"), x("security.capability", &[1, 0, 0, 2, 0, 0, 0, 0])];
        let e = encode(&attrs).unwrap();
        assert!(e.block.is_none());
        let mut back = decode(&e.ibody, None).unwrap();
        back.sort_by(|a, b| a.name.cmp(&b.name));
        let mut want = attrs.clone();
        want.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(back, want);
    }

    #[test]
    fn large_set_goes_in_block() {
        let attrs = vec![x("user.big", &[7u8; 500]), x("trusted.t", b""), x("user.z", b"q")];
        let e = encode(&attrs).unwrap();
        let b = e.block.unwrap();
        let back = decode(&[], Some(&b)).unwrap();
        assert_eq!(back.len(), 3);
        assert!(back.contains(&attrs[0]) && back.contains(&attrs[1]));
    }

    #[test]
    fn too_large_and_bad_names_fail() {
        assert!(encode(&[x("user.big", &[0u8; 5000])]).is_err());
        assert!(encode(&[x("weird.ns", b"v")]).is_err());
    }

    #[test]
    fn acl_round_trip() {
        let mut v = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in
            [(1u16, 7u16, u32::MAX), (2, 5, 1000), (4, 5, u32::MAX), (0x20, 4, u32::MAX)]
        {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        let d = acl_to_disk(&v).unwrap();
        assert_eq!(d.len(), 4 + 4 + 8 + 4 + 4);
        assert_eq!(acl_from_disk(&d).unwrap(), v);
    }
}
