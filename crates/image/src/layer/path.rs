//! Resolving untrusted entry names inside the image root. Names are cleaned
//! lexically (`..` never climbs above the root, absolute names are relative to it) and
//! symlinks met in parent directories are followed as if the root were `/`, the way
//! umoci's securejoin does, so no name can reach outside the image.

use vessel_ext4::{NodeId, NodeKind, Tree};

/// Most symlinks followed while resolving one name (Linux's limit).
const MAX_SYMLINKS: u32 = 40;

/// Splits a name into clean components: no empty, `.` or `..` parts.
pub fn clean(name: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    for c in name.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    TooManySymlinks,
    NotADirectory(Vec<u8>),
}

impl std::fmt::Display for ResolveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResolveError::TooManySymlinks => write!(f, "too many levels of symbolic links"),
            ResolveError::NotADirectory(c) => {
                write!(f, "path component {:?} is not a directory", String::from_utf8_lossy(c))
            }
        }
    }
}

/// Resolves `comps` as a directory, following symlinks inside the root. Missing
/// directories are created with `mkdir` when given (else resolution stops with `None`).
pub fn resolve_dir(
    tree: &mut Tree,
    comps: &[&[u8]],
    mut mkdir: Option<&mut dyn FnMut(&mut Tree) -> NodeId>,
) -> Result<Option<NodeId>, ResolveError> {
    let mut stack: Vec<NodeId> = vec![Tree::ROOT];
    // Components still to walk, last first.
    let mut pending: Vec<Vec<u8>> = comps.iter().rev().map(|c| c.to_vec()).collect();
    let mut links = 0u32;
    while let Some(c) = pending.pop() {
        let cur = *stack.last().unwrap_or(&Tree::ROOT);
        match &c[..] {
            b"" | b"." => continue,
            b".." => {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            _ => {}
        }
        match tree.lookup(cur, &c) {
            None => match mkdir.as_mut() {
                Some(f) => {
                    let id = f(tree);
                    // `c` came from a cleaned name or a symlink target: it is a valid name
                    // unless it is too long, which the caller reports on insert.
                    if tree.insert(cur, &c, id).is_err() {
                        return Err(ResolveError::NotADirectory(c));
                    }
                    stack.push(id);
                }
                None => return Ok(None),
            },
            Some(id) => match &tree.get(id).kind {
                NodeKind::Dir(_) => stack.push(id),
                NodeKind::Symlink(target) => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(ResolveError::TooManySymlinks);
                    }
                    if target.first() == Some(&b'/') {
                        stack.truncate(1);
                    }
                    let target = target.clone();
                    for part in target.split(|&b| b == b'/').rev() {
                        pending.push(part.to_vec());
                    }
                }
                _ => return Err(ResolveError::NotADirectory(c)),
            },
        }
    }
    Ok(Some(*stack.last().unwrap_or(&Tree::ROOT)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vessel_ext4::{Metadata, Node};

    fn add(tree: &mut Tree, parent: NodeId, name: &[u8], kind: NodeKind) -> NodeId {
        let id = tree.add(Node { meta: Metadata::default(), kind, tag: 0 });
        tree.insert(parent, name, id).unwrap();
        id
    }

    #[test]
    fn cleaning() {
        assert_eq!(clean(b"./a//b/../c/"), vec![&b"a"[..], b"c"]);
        assert_eq!(clean(b"/../../etc/passwd"), vec![&b"etc"[..], b"passwd"]);
        assert!(clean(b"../..").is_empty());
    }

    #[test]
    fn symlinks_stay_inside() {
        let mut t = Tree::new(Metadata::default());
        let etc = add(&mut t, Tree::ROOT, b"etc", NodeKind::Dir(Default::default()));
        add(&mut t, Tree::ROOT, b"abs", NodeKind::Symlink(b"/../../etc".to_vec()));
        add(&mut t, Tree::ROOT, b"rel", NodeKind::Symlink(b"../../../etc".to_vec()));
        add(&mut t, Tree::ROOT, b"loop", NodeKind::Symlink(b"loop".to_vec()));
        add(&mut t, Tree::ROOT, b"file", NodeKind::Fifo);
        assert_eq!(resolve_dir(&mut t, &[b"abs"], None), Ok(Some(etc)));
        assert_eq!(resolve_dir(&mut t, &[b"rel"], None), Ok(Some(etc)));
        assert_eq!(resolve_dir(&mut t, &[b"loop"], None), Err(ResolveError::TooManySymlinks));
        assert!(resolve_dir(&mut t, &[b"file"], None).is_err());
        assert_eq!(resolve_dir(&mut t, &[b"nope"], None), Ok(None));
    }
}
