//! secp256k1 signatures as Cairn accepts them: only in canonical (low-s) form, signed and
//! recovered with libsecp256k1 (the `secp256k1` crate; several times faster than k256 here, and
//! every receipt, payment and signed request goes through it).
//!
//! For every valid signature `(r, s, v)` the twin `(r, n − s, v ^ 1)` recovers to the same
//! signer. OpenZeppelin's `ECDSA.recover` (and so every contract here) reverts on the high-s twin,
//! so a service that stored or forwarded one would be handing the chain a signature it refuses,
//! and anyone could swap a good signature for its twin. Every place that accepts a signature goes
//! through [`recover_prehash`] or [`recover_message`], which refuse the high-s form.

use std::sync::LazyLock;

use alloy_primitives::{Address, B256, Signature, eip191_hash_message, keccak256};
use secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
use secp256k1::{All, Message, PublicKey, Secp256k1, SecretKey};

static CTX: LazyLock<Secp256k1<All>> = LazyLock::new(Secp256k1::new);

/// The libsecp256k1 context every signature here uses.
pub(crate) fn ctx() -> &'static Secp256k1<All> {
    &CTX
}

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    /// `s` is in the upper half of the curve order (the malleable twin of a valid signature).
    #[error(
        "the signature is not canonical: its s is in the upper half of the curve order (send the low-s form)"
    )]
    HighS,
    /// No public key recovers from it.
    #[error("the signature does not recover to any signer")]
    Unrecoverable,
    /// Not 65 bytes `r ‖ s ‖ v` with `v` 27 or 28.
    #[error("the signature is not 65 bytes r, s, v with v 27 or 28")]
    Encoding,
}

/// The EIP-712 signing hash `keccak256(0x19 ‖ 0x01 ‖ separator ‖ hashStruct)`, for a caller
/// that keeps its domain's separator instead of hashing the domain again per message.
pub fn eip712_digest(separator: &B256, struct_hash: &B256) -> B256 {
    keccak256(eip712_encoding(separator, struct_hash))
}

/// What [`eip712_digest`] hashes, for a caller hashing many at once.
pub fn eip712_encoding(separator: &B256, struct_hash: &B256) -> [u8; 66] {
    let mut buf = [0u8; 66];
    buf[..2].copy_from_slice(&[0x19, 0x01]);
    buf[2..34].copy_from_slice(separator.as_slice());
    buf[34..].copy_from_slice(struct_hash.as_slice());
    buf
}

/// A 65-byte `r ‖ s ‖ v` signature as a contract's `ecrecover` reads it, which takes `v` as sent:
/// only 27 or 28 recovers. alloy's parser also accepts 0, 1 and EIP-155 values; a service that
/// took one and kept its bytes would hold a signature the chain refuses.
pub fn parse_rsv(bytes: &[u8]) -> Result<Signature, SigError> {
    if bytes.len() != 65 || !matches!(bytes[64], 27 | 28) {
        return Err(SigError::Encoding);
    }
    Signature::try_from(bytes).map_err(|_| SigError::Encoding)
}

/// Whether `sig` is in canonical low-s form.
pub fn is_low_s(sig: &Signature) -> bool {
    sig.normalize_s().is_none()
}

/// The address of a public key: the last 20 bytes of the Keccak-256 of its uncompressed form.
fn address_of(key: &PublicKey) -> Address {
    let uncompressed = key.serialize_uncompressed();
    Address::from_slice(&keccak256(&uncompressed[1..])[12..])
}

/// The signer of a 32-byte digest, refusing high-s signatures.
pub fn recover_prehash(sig: &Signature, hash: &B256) -> Result<Address, SigError> {
    if !is_low_s(sig) {
        return Err(SigError::HighS);
    }
    let id = RecoveryId::try_from(i32::from(sig.v())).map_err(|_| SigError::Unrecoverable)?;
    let mut compact = [0u8; 64];
    compact[..32].copy_from_slice(&sig.r().to_be_bytes::<32>());
    compact[32..].copy_from_slice(&sig.s().to_be_bytes::<32>());
    let rs =
        RecoverableSignature::from_compact(&compact, id).map_err(|_| SigError::Unrecoverable)?;
    let key = CTX
        .recover_ecdsa(Message::from_digest(hash.0), &rs)
        .map_err(|_| SigError::Unrecoverable)?;
    Ok(address_of(&key))
}

/// The signer of an EIP-191 `personal_sign` message, refusing high-s signatures.
pub fn recover_message(sig: &Signature, message: &[u8]) -> Result<Address, SigError> {
    recover_prehash(sig, &eip191_hash_message(message))
}

/// A secp256k1 key that signs 32-byte digests the way Ethereum tools expect (RFC 6979
/// deterministic nonces, low-s, `v` from the recovery id), with libsecp256k1.
#[derive(Clone)]
pub struct SigningKey {
    secret: SecretKey,
    address: Address,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Drop for SigningKey {
    /// Overwrites the secret scalar (volatile writes), so a freed key does not linger in memory
    /// a later bug or a core dump could show.
    fn drop(&mut self) {
        self.secret.non_secure_erase();
    }
}

impl SigningKey {
    /// The key with secret scalar `bytes`; `None` when it is zero or not below the curve order.
    pub fn from_bytes(bytes: &B256) -> Option<Self> {
        let secret = SecretKey::from_byte_array(bytes.0).ok()?;
        let address = address_of(&secret.public_key(&CTX));
        Some(Self { secret, address })
    }

    /// The same key as an alloy signer's.
    pub fn from_signer(signer: &alloy_signer_local::PrivateKeySigner) -> Self {
        Self::from_bytes(&signer.to_bytes()).expect("an alloy signer holds a valid secret key")
    }

    /// The secret scalar, big-endian.
    pub(crate) fn secret_bytes(&self) -> [u8; 32] {
        self.secret.secret_bytes()
    }

    /// The key's Ethereum address.
    pub fn address(&self) -> Address {
        self.address
    }

    /// Signs `hash`: a low-s signature with `v` as parity (27/28 in [`Signature::as_bytes`]).
    pub fn sign_prehash(&self, hash: &B256) -> Signature {
        let rs = CTX.sign_ecdsa_recoverable(Message::from_digest(hash.0), &self.secret);
        let (id, compact) = rs.serialize_compact();
        let r = alloy_primitives::U256::from_be_slice(&compact[..32]);
        let s = alloy_primitives::U256::from_be_slice(&compact[32..]);
        Signature::new(r, s, i32::from(id) & 1 == 1)
    }
}

/// The high-s twin of a signature (for tests of the refusal: it recovers to the same signer).
pub fn malleate(sig: &Signature) -> Signature {
    const N: alloy_primitives::U256 = alloy_primitives::uint!(
        0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141_U256
    );
    Signature::new(sig.r(), N - sig.s(), !sig.v())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_signer::SignerSync;
    use alloy_signer_local::PrivateKeySigner;

    #[test]
    fn the_high_s_twin_recovers_alike_and_is_refused() {
        let key = PrivateKeySigner::random();
        let hash = B256::repeat_byte(7);
        let sig = key.sign_hash_sync(&hash).unwrap();
        assert_eq!(recover_prehash(&sig, &hash), Ok(key.address()));
        let twin = malleate(&sig);
        // The twin is a valid signature by the same key: exactly what a lax recovery accepts.
        assert_eq!(
            twin.recover_address_from_prehash(&hash).unwrap(),
            key.address()
        );
        assert_eq!(recover_prehash(&twin, &hash), Err(SigError::HighS));
        let msg = b"hello";
        let sig = key.sign_message_sync(msg).unwrap();
        assert_eq!(recover_message(&sig, msg), Ok(key.address()));
        assert_eq!(recover_message(&malleate(&sig), msg), Err(SigError::HighS));
    }

    #[test]
    fn libsecp256k1_agrees_with_k256_both_ways() {
        for i in 0..32u8 {
            let key = PrivateKeySigner::random();
            let fast = SigningKey::from_signer(&key);
            assert_eq!(fast.address(), key.address());
            let hash = alloy_primitives::keccak256([i]);
            // The same deterministic (RFC 6979) signature as k256's, so either may sign.
            let ours = fast.sign_prehash(&hash);
            assert_eq!(ours, key.sign_hash_sync(&hash).unwrap());
            assert!(is_low_s(&ours));
            assert_eq!(
                ours.recover_address_from_prehash(&hash).unwrap(),
                key.address()
            );
            assert_eq!(recover_prehash(&ours, &hash), Ok(key.address()));
        }
        assert!(SigningKey::from_bytes(&B256::ZERO).is_none());
        assert!(SigningKey::from_bytes(&B256::repeat_byte(0xff)).is_none());
    }
}
