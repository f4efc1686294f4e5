//! Identities the registry keeps for TEE evidence.

use alloy_primitives::{B256, b256};

/// The measurement every `dev` (software-key) attestation reports: it proves nothing about the
/// code that runs, so only deployments whose governance approves it (the devnet) accept it.
/// SHA-256 of `cairn.attestation.dev.v1`.
pub const DEV_MEASUREMENT: B256 =
    b256!("c1c0dcf6f07269c615c7ad80a7a2832a802f836f2efeb4c1f085a9fbb051ae3a");

#[cfg(test)]
mod tests {
    use sha2::Digest;

    #[test]
    fn dev_measurement_is_the_hash_of_its_label() {
        let h = sha2::Sha256::digest(b"cairn.attestation.dev.v1");
        assert_eq!(super::DEV_MEASUREMENT.as_slice(), h.as_slice());
    }
}
