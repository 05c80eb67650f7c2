//! Block allocation: a cursor that only moves forward, skipping the superblock and
//! group descriptor copies at the start of sparse groups. Freed blocks are not reused
//! during a build; the final bitmap marks only blocks that live inodes reference.

use crate::group::{has_super, BLOCKS_PER_GROUP};

#[derive(Debug, Clone)]
pub struct Alloc {
    next: u64,
    /// Blocks reserved at the start of each backup group: superblock + descriptor table.
    reserve: u64,
    limit: u64,
}

impl Alloc {
    pub fn new(reserve: u64, limit: u64) -> Self {
        Alloc { next: reserve, reserve, limit }
    }

    /// The first never-allocated block.
    pub fn next(&self) -> u64 {
        self.next
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }

    fn skip_reserved(&mut self) {
        let g = self.next / BLOCKS_PER_GROUP;
        let off = self.next % BLOCKS_PER_GROUP;
        if has_super(g) && off < self.reserve {
            self.next = g * BLOCKS_PER_GROUP + self.reserve;
        }
    }

    pub fn block(&mut self) -> Option<u64> {
        self.skip_reserved();
        if self.next >= self.limit {
            return None;
        }
        self.next += 1;
        Some(self.next - 1)
    }

    /// `n` contiguous blocks.
    pub fn contiguous(&mut self, n: u64) -> Option<u64> {
        loop {
            self.skip_reserved();
            let start = self.next;
            if start >= self.limit {
                return None;
            }
            let end = start.checked_add(n)?;
            // Would the run cross into a reserved region of a later group?
            let g_end = (end - 1) / BLOCKS_PER_GROUP;
            let mut clash = None;
            for g in start / BLOCKS_PER_GROUP + 1..=g_end {
                if has_super(g) {
                    clash = Some(g);
                    break;
                }
            }
            match clash {
                Some(g) => self.next = g * BLOCKS_PER_GROUP,
                None => {
                    if end > self.limit {
                        return None;
                    }
                    self.next = end;
                    return Some(start);
                }
            }
        }
    }

    /// `n` blocks in as few runs as possible: (start, len) pairs.
    pub fn runs(&mut self, n: u64) -> Option<Vec<(u64, u64)>> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for _ in 0..n {
            let b = self.block()?;
            match out.last_mut() {
                Some((s, l)) if *s + *l == b => *l += 1,
                _ => out.push((b, 1)),
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_backup_groups() {
        let mut a = Alloc::new(3, 1 << 20);
        assert_eq!(a.block(), Some(3));
        let s = a.contiguous(BLOCKS_PER_GROUP).unwrap();
        // Cannot cross group 1's backup: starts after it.
        assert_eq!(s, BLOCKS_PER_GROUP + 3);
        let r = a.runs(BLOCKS_PER_GROUP * 2).unwrap();
        assert!(r.iter().all(|(s, l)| {
            (*s..s + l).all(|b| !(has_super(b / BLOCKS_PER_GROUP) && b % BLOCKS_PER_GROUP < 3))
        }));
    }
}
