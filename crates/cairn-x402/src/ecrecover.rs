//! Signer recovery with libsecp256k1 (the `secp256k1` crate): every payment check recovers one
//! signer, and this is most of its cost (k256 is ~5x slower here).

use std::sync::LazyLock;

use alloy_primitives::{Address, B256, Signature, keccak256};
use secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
use secp256k1::{Message, Secp256k1, VerifyOnly};

static CTX: LazyLock<Secp256k1<VerifyOnly>> = LazyLock::new(Secp256k1::verification_only);

/// The address whose key signed `hash`, or `None` for a signature that recovers nothing.
/// High-s signatures are refused (EIP-2), as the token contract's ECDSA library does.
pub fn recover(hash: &B256, sig: &Signature) -> Option<Address> {
    if sig.normalize_s().is_some() {
        return None;
    }
    let id = RecoveryId::try_from(sig.v() as i32).ok()?;
    let mut compact = [0u8; 64];
    compact[..32].copy_from_slice(&sig.r().to_be_bytes::<32>());
    compact[32..].copy_from_slice(&sig.s().to_be_bytes::<32>());
    let rs = RecoverableSignature::from_compact(&compact, id).ok()?;
    let key = CTX.recover_ecdsa(Message::from_digest(hash.0), &rs).ok()?;
    let uncompressed = key.serialize_uncompressed();
    Some(Address::from_slice(&keccak256(&uncompressed[1..])[12..]))
}

#[cfg(test)]
mod tests {
    use alloy_signer::SignerSync;

    use super::*;

    #[test]
    fn agrees_with_k256_and_refuses_high_s() {
        for i in 0..32u8 {
            let key = alloy_signer_local::PrivateKeySigner::random();
            let hash = keccak256([i]);
            let sig = key.sign_hash_sync(&hash).unwrap();
            assert_eq!(recover(&hash, &sig), Some(key.address()));
            assert_eq!(
                sig.recover_address_from_prehash(&hash).ok(),
                Some(key.address())
            );
            // The same signature with s' = n - s (malleable twin) is refused.
            let n = alloy_primitives::U256::from_str_radix(
                "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141",
                16,
            )
            .unwrap();
            let twin = Signature::new(sig.r(), n - sig.s(), !sig.v());
            assert_eq!(recover(&hash, &twin), None);
        }
    }
}
