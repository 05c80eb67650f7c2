//! Hashed directory indexes (htree): the half-MD4 name hash and the index blocks.

use crate::le::*;

/// `dx_root_info.hash_version` for half-MD4 (made "unsigned" by the superblock flag).
pub const HASH_HALF_MD4: u8 = 1;
/// Index entries in the root block: (4096 - 32 header - 8 checksum tail) / 8.
pub const ROOT_LIMIT: usize = (4096 - 32 - 8) / 8;
/// Index entries in an interior node: (4096 - 8 fake dirent - 8 checksum tail) / 8.
pub const NODE_LIMIT: usize = (4096 - 8 - 8) / 8;

const K2: u32 = 0o13240474631;
const K3: u32 = 0o15666365641;

fn f(x: u32, y: u32, z: u32) -> u32 {
    z ^ (x & (y ^ z))
}
fn g(x: u32, y: u32, z: u32) -> u32 {
    (x & y).wrapping_add((x ^ y) & z)
}
fn h(x: u32, y: u32, z: u32) -> u32 {
    x ^ y ^ z
}

fn half_md4_transform(buf: &mut [u32; 4], inp: &[u32; 8]) {
    let (mut a, mut b, mut c, mut d) = (buf[0], buf[1], buf[2], buf[3]);
    macro_rules! round {
        ($f:ident, $a:ident, $b:ident, $c:ident, $d:ident, $x:expr, $s:expr) => {
            $a = $a.wrapping_add($f($b, $c, $d)).wrapping_add($x).rotate_left($s);
        };
    }
    round!(f, a, b, c, d, inp[0], 3);
    round!(f, d, a, b, c, inp[1], 7);
    round!(f, c, d, a, b, inp[2], 11);
    round!(f, b, c, d, a, inp[3], 19);
    round!(f, a, b, c, d, inp[4], 3);
    round!(f, d, a, b, c, inp[5], 7);
    round!(f, c, d, a, b, inp[6], 11);
    round!(f, b, c, d, a, inp[7], 19);

    round!(g, a, b, c, d, inp[1].wrapping_add(K2), 3);
    round!(g, d, a, b, c, inp[3].wrapping_add(K2), 5);
    round!(g, c, d, a, b, inp[5].wrapping_add(K2), 9);
    round!(g, b, c, d, a, inp[7].wrapping_add(K2), 13);
    round!(g, a, b, c, d, inp[0].wrapping_add(K2), 3);
    round!(g, d, a, b, c, inp[2].wrapping_add(K2), 5);
    round!(g, c, d, a, b, inp[4].wrapping_add(K2), 9);
    round!(g, b, c, d, a, inp[6].wrapping_add(K2), 13);

    round!(h, a, b, c, d, inp[3].wrapping_add(K3), 3);
    round!(h, d, a, b, c, inp[7].wrapping_add(K3), 9);
    round!(h, c, d, a, b, inp[2].wrapping_add(K3), 11);
    round!(h, b, c, d, a, inp[6].wrapping_add(K3), 15);
    round!(h, a, b, c, d, inp[1].wrapping_add(K3), 3);
    round!(h, d, a, b, c, inp[5].wrapping_add(K3), 9);
    round!(h, c, d, a, b, inp[0].wrapping_add(K3), 11);
    round!(h, b, c, d, a, inp[4].wrapping_add(K3), 15);

    buf[0] = buf[0].wrapping_add(a);
    buf[1] = buf[1].wrapping_add(b);
    buf[2] = buf[2].wrapping_add(c);
    buf[3] = buf[3].wrapping_add(d);
}

/// Packs up to 32 name bytes into eight words, padding with the length (kernel
/// `str2hashbuf_unsigned`).
fn str2hashbuf(msg: &[u8], out: &mut [u32; 8]) {
    let len = msg.len() as u32;
    let mut pad = len | (len << 8);
    pad |= pad << 16;
    let mut val = pad;
    let mut num = 8usize;
    let mut idx = 0;
    for (i, &c) in msg.iter().take(32).enumerate() {
        val = (c as u32).wrapping_add(val << 8);
        if i % 4 == 3 {
            out[idx] = val;
            idx += 1;
            val = pad;
            num -= 1;
        }
    }
    if num > 0 {
        out[idx] = val;
        idx += 1;
        num -= 1;
    }
    while num > 0 {
        out[idx] = pad;
        idx += 1;
        num -= 1;
    }
}

/// The unsigned half-MD4 hash of a name: (major hash with the low bit clear, minor hash).
pub fn name_hash(name: &[u8], seed: &[u32; 4]) -> (u32, u32) {
    let mut buf = if seed.iter().all(|&w| w == 0) {
        [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476]
    } else {
        *seed
    };
    let mut inp = [0u32; 8];
    let mut p = name;
    loop {
        str2hashbuf(p, &mut inp);
        half_md4_transform(&mut buf, &inp);
        if p.len() <= 32 {
            break;
        }
        p = &p[32..];
    }
    let mut hash = buf[1] & !1;
    if hash == 0x7fff_ffff << 1 {
        hash = (0x7fff_ffff - 1) << 1;
    }
    (hash, buf[2])
}

/// Writes the dx_root block header: "." and ".." entries, root info and count/limit.
pub fn root_block(ino: u32, parent: u32, levels: u8, entries: &[(u32, u32)]) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    put32(&mut b, 0, ino);
    put16(&mut b, 4, 12);
    b[6] = 1;
    b[7] = 2;
    b[8] = b'.';
    put32(&mut b, 12, parent);
    put16(&mut b, 16, 4096 - 12);
    b[18] = 2;
    b[19] = 2;
    b[20] = b'.';
    b[21] = b'.';
    // dx_root_info at 24: reserved_zero, hash_version, info_length, indirect_levels, flags.
    b[28] = HASH_HALF_MD4;
    b[29] = 8;
    b[30] = levels;
    write_entries(&mut b, 32, ROOT_LIMIT, entries);
    b
}

/// Writes an interior index node: a fake empty dirent spanning the block, then entries.
pub fn node_block(entries: &[(u32, u32)]) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    put16(&mut b, 4, 4096);
    write_entries(&mut b, 8, NODE_LIMIT, entries);
    b
}

/// Entries are (hash, logical block); the first entry's hash slot holds count/limit.
fn write_entries(b: &mut [u8], off: usize, limit: usize, entries: &[(u32, u32)]) {
    put16(b, off, limit as u16);
    put16(b, off + 2, entries.len() as u16);
    for (i, &(hash, block)) in entries.iter().enumerate() {
        if i > 0 {
            put32(b, off + 8 * i, hash);
        }
        put32(b, off + 8 * i + 4, block);
    }
}

/// Sets the dx_tail checksum of an index block whose count/limit is at `off`.
pub fn set_index_csum(b: &mut [u8], off: usize, seed: u32) {
    use crate::checksum::crc32c;
    let limit = get16(b, off) as usize;
    let count = get16(b, off + 2) as usize;
    let tail = off + 8 * limit;
    let mut c = crc32c(seed, &b[..off + 8 * count]);
    c = crc32c(c, &b[tail..tail + 4]);
    c = crc32c(c, &[0; 4]);
    put32(b, tail + 4, c);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_e2fsprogs() {
        // From `debugfs -R "dx_hash -h half_md4 [-s SEED] NAME"` (e2fsprogs 1.47.0).
        let seed = [0x0403_0201, 0x0807_0605, 0x0c0b_0a09, 0x100f_0e0d];
        let long = b"a-much-longer-name-that-spans-more-than-thirty-two-bytes.txt";
        assert_eq!(name_hash(b"hello", &seed), (0xe2dd_f968, 0xc8bc_0924));
        assert_eq!(name_hash(b"hello", &[0; 4]), (0x1746_da32, 0x4200_13b5));
        assert_eq!(name_hash(long, &seed), (0x0139_19c6, 0x1d32_3623));
        assert_eq!(name_hash(long, &[0; 4]), (0xde53_22a6, 0xbd36_d6d1));
    }

    #[test]
    fn hash_is_even_and_seeded() {
        let seed = [1, 2, 3, 4];
        let (h1, _) = name_hash(b"hello", &seed);
        let (h2, _) = name_hash(b"hello", &[0; 4]);
        assert_eq!(h1 & 1, 0);
        assert_ne!(h1, h2);
        let long = vec![b'x'; 200];
        assert_eq!(name_hash(&long, &seed), name_hash(&long, &seed));
        assert_ne!(name_hash(&long, &seed), name_hash(&long[..199], &seed));
    }
}
