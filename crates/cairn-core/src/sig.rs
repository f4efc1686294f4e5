//! secp256k1 signatures as Cairn accepts them: only in canonical (low-s) form.
//!
//! For every valid signature `(r, s, v)` the twin `(r, n − s, v ^ 1)` recovers to the same
//! signer. OpenZeppelin's `ECDSA.recover` (and so every contract here) reverts on the high-s twin,
//! so a service that stored or forwarded one would be handing the chain a signature it refuses,
//! and anyone could swap a good signature for its twin. Every place that accepts a signature goes
//! through [`recover_prehash`] or [`recover_message`], which refuse the high-s form.

use alloy_primitives::{Address, B256, Signature};

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
}

/// Whether `sig` is in canonical low-s form.
pub fn is_low_s(sig: &Signature) -> bool {
    sig.normalize_s().is_none()
}

/// The signer of a 32-byte digest, refusing high-s signatures.
pub fn recover_prehash(sig: &Signature, hash: &B256) -> Result<Address, SigError> {
    if !is_low_s(sig) {
        return Err(SigError::HighS);
    }
    sig.recover_address_from_prehash(hash)
        .map_err(|_| SigError::Unrecoverable)
}

/// The signer of an EIP-191 `personal_sign` message, refusing high-s signatures.
pub fn recover_message(sig: &Signature, message: &[u8]) -> Result<Address, SigError> {
    if !is_low_s(sig) {
        return Err(SigError::HighS);
    }
    sig.recover_address_from_msg(message)
        .map_err(|_| SigError::Unrecoverable)
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
}
