//! Receipt batches as Merkle trees, laid out exactly like OpenZeppelin's `StandardMerkleTree`
//! over one `bytes32` value per leaf (the receipt's EIP-712 signing hash), so the root and the
//! proofs verify with OpenZeppelin's `MerkleProof` on chain and `@openzeppelin/merkle-tree` off it.
//!
//! Leaf = keccak256(keccak256(abi.encode(digest))); pairs hash sorted; leaves sorted by hash and
//! stored at the end of a complete binary tree in an array (node i has children 2i+1, 2i+2).

use std::collections::HashMap;

use alloy_primitives::{B256, keccak256};
use cairn_core::keccak4::{keccak256_many, keccak256_x4};

/// OpenZeppelin's standard leaf of a `bytes32` value.
pub fn leaf(digest: B256) -> B256 {
    keccak256(keccak256(digest))
}

/// [`leaf`] of each of `digests`, hashed four abreast where the CPU allows.
pub fn leaves(digests: &[B256]) -> Vec<B256> {
    let mut once = vec![B256::ZERO; digests.len()];
    let inputs: Vec<&[u8]> = digests.iter().map(|d| d.as_slice()).collect();
    keccak256_many(&inputs, &mut once);
    let mut twice = vec![B256::ZERO; digests.len()];
    let inputs: Vec<&[u8]> = once.iter().map(|d| d.as_slice()).collect();
    keccak256_many(&inputs, &mut twice);
    twice
}

/// What an inner node hashes: its children, the smaller first (OpenZeppelin's sorted pairs).
fn pair(a: B256, b: B256) -> [u8; 64] {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut buf = [0u8; 64];
    buf[..32].copy_from_slice(lo.as_slice());
    buf[32..].copy_from_slice(hi.as_slice());
    buf
}

fn hash_pair(a: B256, b: B256) -> B256 {
    keccak256(pair(a, b))
}

/// A built tree over receipt digests.
#[derive(Clone, Debug)]
pub struct ReceiptTree {
    nodes: Vec<B256>,
    /// digest → position of its leaf in `nodes`.
    index: HashMap<B256, usize>,
}

/// Why a tree cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    /// No receipts.
    #[error("a batch needs at least one receipt")]
    Empty,
    /// The same receipt twice.
    #[error("receipt {0} appears twice in the batch")]
    Duplicate(B256),
    /// More receipts than a batch counts (2^32).
    #[error("a batch holds at most 2^32 - 1 receipts")]
    TooLarge,
}

impl ReceiptTree {
    /// Builds the tree over `digests` (any order; duplicates refused).
    pub fn new(digests: &[B256]) -> Result<Self, TreeError> {
        Self::from_leaves(
            leaves(digests)
                .into_iter()
                .zip(digests.iter().copied())
                .collect(),
        )
    }

    /// [`ReceiptTree::new`] from (leaf, digest) pairs whose leaves were computed already; each
    /// leaf must be [`leaf`] of its digest.
    pub fn from_leaves(mut leaves: Vec<(B256, B256)>) -> Result<Self, TreeError> {
        if leaves.is_empty() {
            return Err(TreeError::Empty);
        }
        debug_assert!(leaves.iter().all(|(l, d)| *l == leaf(*d)));
        // Equal leaves are equal digests (refused below), so order among them is moot.
        leaves.sort_unstable_by_key(|a| a.0);
        let n = leaves.len();
        let mut nodes = vec![B256::ZERO; 2 * n - 1];
        let mut index = HashMap::with_capacity(n);
        for (i, (l, d)) in leaves.iter().enumerate() {
            let pos = nodes.len() - 1 - i;
            nodes[pos] = *l;
            if index.insert(*d, pos).is_some() {
                return Err(TreeError::Duplicate(*d));
            }
        }
        // Inner nodes from the last to the root, four at a time while the four's children
        // (at 2j + 1 and 2j + 2, past the four) are all built; the top few one by one.
        let mut end = nodes.len() - n;
        while end >= 7 {
            let j = end - 4;
            let bufs: [[u8; 64]; 4] =
                std::array::from_fn(|k| pair(nodes[2 * (j + k) + 1], nodes[2 * (j + k) + 2]));
            let h = keccak256_x4([&bufs[0], &bufs[1], &bufs[2], &bufs[3]]);
            nodes[j..end].copy_from_slice(&h);
            end = j;
        }
        for i in (0..end).rev() {
            nodes[i] = hash_pair(nodes[2 * i + 1], nodes[2 * i + 2]);
        }
        Ok(Self { nodes, index })
    }

    /// The root submitted on chain.
    pub fn root(&self) -> B256 {
        self.nodes[0]
    }

    /// Number of receipts.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Never true: a tree has at least one leaf.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The sibling path from `digest`'s leaf to the root, or `None` if it is not in the tree.
    pub fn proof(&self, digest: B256) -> Option<Vec<B256>> {
        let i = *self.index.get(&digest)?;
        Some(self.path(i).collect())
    }

    /// Whether `proof` is exactly `digest`'s path in this tree (so it verifies against the
    /// root), without hashing.
    pub fn has_proof(&self, digest: B256, proof: &[B256]) -> bool {
        self.index
            .get(&digest)
            .is_some_and(|&i| self.path(i).eq(proof.iter().copied()))
    }

    fn path(&self, mut i: usize) -> impl Iterator<Item = B256> + '_ {
        std::iter::from_fn(move || {
            (i > 0).then(|| {
                let sibling = if i % 2 == 1 { i + 1 } else { i - 1 };
                i = (i - 1) / 2;
                self.nodes[sibling]
            })
        })
    }
}

/// Checks `proof` for `digest` against `root` (what `MerkleProof.verify` does on chain).
pub fn verify(root: B256, digest: B256, proof: &[B256]) -> bool {
    verify_leaf(root, leaf(digest), proof)
}

/// [`verify`] from the digest's leaf, computed already.
pub fn verify_leaf(root: B256, leaf: B256, proof: &[B256]) -> bool {
    proof.iter().fold(leaf, |acc, p| hash_pair(acc, *p)) == root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digests(n: usize) -> Vec<B256> {
        (0..n).map(|i| keccak256(format!("receipt {i}"))).collect()
    }

    #[test]
    fn every_proof_verifies_and_nothing_else_does() {
        for n in [1, 2, 3, 4, 5, 7, 8, 33, 100] {
            let ds = digests(n);
            let tree = ReceiptTree::new(&ds).unwrap();
            assert_eq!(tree.len(), n);
            for d in &ds {
                let p = tree.proof(*d).unwrap();
                assert!(verify(tree.root(), *d, &p), "n={n}");
                assert!(!verify(tree.root(), keccak256(d), &p));
                if let Some(first) = p.first() {
                    let mut bad = p.clone();
                    bad[0] = keccak256(first);
                    assert!(!verify(tree.root(), *d, &bad));
                }
            }
            assert!(tree.proof(keccak256("not in the batch")).is_none());
        }
    }

    /// The tree built one inner node at a time, as it was before nodes were hashed four
    /// abreast.
    fn root_one_by_one(ds: &[B256]) -> B256 {
        let mut leaves: Vec<B256> = ds.iter().map(|d| leaf(*d)).collect();
        leaves.sort();
        let n = leaves.len();
        let mut nodes = vec![B256::ZERO; 2 * n - 1];
        for (i, l) in leaves.iter().enumerate() {
            nodes[2 * n - 2 - i] = *l;
        }
        for i in (0..n - 1).rev() {
            nodes[i] = keccak256(pair(nodes[2 * i + 1], nodes[2 * i + 2]));
        }
        nodes[0]
    }

    #[test]
    fn four_abreast_builds_the_same_tree_at_every_size() {
        for n in 1..=70 {
            let ds = digests(n);
            let tree = ReceiptTree::new(&ds).unwrap();
            assert_eq!(tree.root(), root_one_by_one(&ds), "n={n}");
            assert_eq!(
                leaves(&ds),
                ds.iter().map(|d| leaf(*d)).collect::<Vec<_>>(),
                "n={n}"
            );
            for d in &ds {
                assert!(verify(tree.root(), *d, &tree.proof(*d).unwrap()), "n={n}");
            }
        }
    }

    #[test]
    fn order_of_input_does_not_matter_and_duplicates_are_refused() {
        let mut ds = digests(9);
        let a = ReceiptTree::new(&ds).unwrap().root();
        ds.reverse();
        assert_eq!(ReceiptTree::new(&ds).unwrap().root(), a);
        ds.push(ds[0]);
        assert_eq!(
            ReceiptTree::new(&ds).unwrap_err(),
            TreeError::Duplicate(ds[0])
        );
        assert_eq!(ReceiptTree::new(&[]).unwrap_err(), TreeError::Empty);
    }

    #[test]
    fn single_leaf_root_is_the_leaf() {
        let d = digests(1)[0];
        let t = ReceiptTree::new(&[d]).unwrap();
        assert_eq!(t.root(), leaf(d));
        assert!(t.proof(d).unwrap().is_empty());
    }

    /// Cross-checks against `@openzeppelin/merkle-tree` when the npm tools are installed
    /// (scripts/npm-deps.sh exports CAIRN_NODE_MODULES; required in CI).
    #[test]
    fn matches_openzeppelin_merkle_tree() {
        let Ok(modules) = std::env::var("CAIRN_NODE_MODULES") else {
            assert!(
                std::env::var_os("CAIRN_TEST_REQUIRE_SERVICES").is_none(),
                "CAIRN_NODE_MODULES is required"
            );
            eprintln!("skipped: CAIRN_NODE_MODULES not set");
            return;
        };
        let ds = digests(13);
        let values: Vec<String> = ds.iter().map(|d| format!("[\"{d}\"]")).collect();
        let script = format!(
            "const {{StandardMerkleTree}} = require('{modules}/@openzeppelin/merkle-tree');
             const t = StandardMerkleTree.of([{}], ['bytes32']);
             console.log(JSON.stringify({{root: t.root, proof: t.getProof(0)}}));",
            values.join(",")
        );
        let out = std::process::Command::new("node")
            .arg("-e")
            .arg(script)
            .output()
            .expect("node runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let tree = ReceiptTree::new(&ds).unwrap();
        assert_eq!(v["root"].as_str().unwrap(), tree.root().to_string());
        let proof: Vec<String> = tree
            .proof(ds[0])
            .unwrap()
            .iter()
            .map(|p| p.to_string())
            .collect();
        let theirs: Vec<String> = serde_json::from_value(v["proof"].clone()).unwrap();
        assert_eq!(theirs, proof);
    }
}
