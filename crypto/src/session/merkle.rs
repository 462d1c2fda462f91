//! The Merkle tree that lets one signature cover a batch of announcements
//! (protocol.md 14.2): the shape of RFC 9162 section 2.1 (a tree of `n`
//! leaves splits at the largest power of two below `n`), with sotto's own
//! domain-separated hashes, so each recipient checks its own leaf with
//! about log2(n) hashes instead of receiving the whole batch.

use sha2::{Digest, Sha256};

pub(crate) const LEAF_LABEL: &[u8] = b"sotto/v2/announce-leaf\0";
pub(crate) const NODE_LABEL: &[u8] = b"sotto/v2/announce-node\0";

pub(crate) type Hash = [u8; 32];

/// `SHA256("sotto/v2/announce-leaf\0" || bytes)`.
pub(crate) fn leaf(bytes: &[u8]) -> Hash {
    Sha256::new_with_prefix(LEAF_LABEL)
        .chain_update(bytes)
        .finalize()
        .into()
}

fn node(left: &Hash, right: &Hash) -> Hash {
    Sha256::new_with_prefix(NODE_LABEL)
        .chain_update(left)
        .chain_update(right)
        .finalize()
        .into()
}

/// The largest power of two strictly below `n` (`n >= 2`).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// The root over `leaves` and, for each leaf, its audit path (the sibling
/// hashes from the leaf up). `leaves` must not be empty.
pub(crate) fn root_and_paths(leaves: &[Hash]) -> (Hash, Vec<Vec<Hash>>) {
    match leaves {
        [] => ([0; 32], Vec::new()),
        [only] => (*only, vec![Vec::new()]),
        _ => {
            let (left, right) = leaves.split_at(split(leaves.len()));
            let (left_root, mut left_paths) = root_and_paths(left);
            let (right_root, right_paths) = root_and_paths(right);
            for path in &mut left_paths {
                path.push(right_root);
            }
            left_paths.extend(right_paths.into_iter().map(|mut path| {
                path.push(left_root);
                path
            }));
            (node(&left_root, &right_root), left_paths)
        }
    }
}

/// The root that `leaf`, at `index` of a tree of `size` leaves, with
/// audit path `path`, leads to; `None` if the path cannot belong to such a
/// leaf (wrong length, index out of range). The verification algorithm of
/// RFC 9162 section 2.1.3.2.
pub(crate) fn root_from_path(leaf: Hash, index: u64, size: u64, path: &[Hash]) -> Option<Hash> {
    if index >= size {
        return None;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut root = leaf;
    for sibling in path {
        if s == 0 {
            return None;
        }
        if f & 1 == 1 || f == s {
            root = node(sibling, &root);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            root = node(&root, sibling);
        }
        f >>= 1;
        s >>= 1;
    }
    (s == 0).then_some(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf(&i.to_be_bytes())).collect()
    }

    #[test]
    fn every_leaf_of_every_size_leads_to_the_root_and_nothing_else_does() {
        for n in 1..=70 {
            let leaves = leaves(n);
            let (root, paths) = root_and_paths(&leaves);
            assert_eq!(paths.len(), n);
            for (index, path) in paths.iter().enumerate() {
                let (i, size) = (index as u64, n as u64);
                assert_eq!(root_from_path(leaves[index], i, size, path), Some(root));
                // Another index, another leaf, a shorter or longer path: not
                // this root. (Another size may lead to the same root: the
                // signature covers the size, protocol.md 14.2.)
                for j in [i + 1, i.wrapping_sub(1)] {
                    assert_ne!(root_from_path(leaves[index], j, size, path), Some(root));
                }
                assert_ne!(root_from_path(leaf(b"other"), i, size, path), Some(root));
                if let Some((_, shorter)) = path.split_last() {
                    assert_ne!(root_from_path(leaves[index], i, size, shorter), Some(root));
                }
                let mut longer = path.clone();
                longer.push(root);
                assert_eq!(root_from_path(leaves[index], i, size, &longer), None);
            }
        }
    }

    /// RFC 9162's shape: for 3 leaves the root is node(node(a, b), c), and
    /// a leaf is never taken for a node (the labels differ).
    #[test]
    fn the_tree_has_the_documented_shape() {
        let l = leaves(3);
        let (root, paths) = root_and_paths(&l);
        assert_eq!(root, node(&node(&l[0], &l[1]), &l[2]));
        assert_eq!(paths[2], vec![node(&l[0], &l[1])]);
        assert_ne!(leaf(&[l[0], l[1]].concat()), node(&l[0], &l[1]));
    }
}
