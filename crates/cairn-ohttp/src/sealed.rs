//! Payloads sealed to several recipients: what a node keeps of a private call, so that only
//! the verifiers it was sealed to can open it (to re-execute), and the node's disk, its payload
//! routes and anyone who copies them hold ciphertext only.
//!
//! A fresh AES-128-GCM data key seals the payload once; HPKE (base mode, each recipient's key
//! configuration) wraps the data key for each recipient. The header (recipients and their
//! wrapped keys) and a caller's context (the receipt and which payload) are the payload's
//! associated data, so neither can be changed or moved to another receipt.
//!
//! `"CRNS" ‖ version 1 ‖ n ‖ n × (id 20 ‖ key id 1 ‖ enc 32 ‖ wrapped key 32) ‖ ciphertext`

use crate::{
    Aead, GatewayKey, KeyConfig, OhttpError,
    config::NPK,
    ctx::{Receiver, Sender},
    gateway::random,
};

const MAGIC: &[u8; 4] = b"CRNS";
const VERSION: u8 = 1;
const DEK_LEN: usize = 16;
const WRAPPED_LEN: usize = DEK_LEN + 16;
const ENTRY_LEN: usize = 20 + 1 + NPK + WRAPPED_LEN;
const INFO: &[u8] = b"cairn sealed payload v1\0";

/// Who a payload is sealed to: an id (a verifier's address) and its key configuration.
#[derive(Debug, Clone, Copy)]
pub struct Recipient<'a> {
    /// The recipient's id: its registered address.
    pub id: [u8; 20],
    /// The key configuration its key is sealed to.
    pub key: &'a KeyConfig,
}

fn info(context: &[u8]) -> Vec<u8> {
    [INFO, context].concat()
}

/// Whether `b` is a sealed payload (by its magic).
pub fn is_sealed_payload(b: &[u8]) -> bool {
    b.len() > 6 && &b[..4] == MAGIC
}

/// Seals `payload` so each of `recipients` (at most 255) can open it, bound to `context`.
pub fn seal_payload(
    recipients: &[Recipient<'_>],
    context: &[u8],
    payload: &[u8],
) -> Result<Vec<u8>, OhttpError> {
    let n = u8::try_from(recipients.len())
        .map_err(|_| OhttpError::Config("a payload is sealed to at most 255 recipients"))?;
    let dek = random(DEK_LEN);
    let mut out = MAGIC.to_vec();
    out.push(VERSION);
    out.push(n);
    for r in recipients {
        // HKDF-SHA256 with AES-128-GCM is what every configuration offers first.
        let (enc, mut ctx) = Sender::setup(Aead::Aes128Gcm, r.key.public_key(), &info(context))?;
        out.extend_from_slice(&r.id);
        out.push(r.key.key_id());
        out.extend_from_slice(&enc);
        out.extend(ctx.seal(&dek, b""));
    }
    let aad = [context, &out].concat();
    out.extend(Sender::from_secrets(Aead::Aes128Gcm, &dek, &[0; 12]).seal(payload, &aad));
    Ok(out)
}

/// The header: the recipients' ids, each with its entry, and where the ciphertext starts.
fn entries(sealed: &[u8]) -> Result<(Vec<&[u8]>, usize), OhttpError> {
    if !is_sealed_payload(sealed) || sealed[4] != VERSION {
        return Err(OhttpError::Config("not a sealed payload of version 1"));
    }
    let n = usize::from(sealed[5]);
    let end = 6 + n * ENTRY_LEN;
    if sealed.len() < end + 16 {
        return Err(OhttpError::Truncated("sealed payload"));
    }
    Ok((sealed[6..end].chunks_exact(ENTRY_LEN).collect(), end))
}

/// The ids a payload is sealed to.
pub fn sealed_recipients(sealed: &[u8]) -> Result<Vec<[u8; 20]>, OhttpError> {
    Ok(entries(sealed)?
        .0
        .iter()
        .map(|e| e[..20].try_into().expect("20 bytes"))
        .collect())
}

/// Opens a payload sealed to `me` under `key`, bound to `context`. A payload not sealed to
/// `me` is [`OhttpError::KeyId`]; a changed one does not open.
pub fn open_payload(
    key: &GatewayKey,
    me: [u8; 20],
    context: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, OhttpError> {
    let (list, end) = entries(sealed)?;
    let entry = list
        .iter()
        .find(|e| e[..20] == me)
        .ok_or(OhttpError::KeyId {
            got: 0,
            want: key.config().key_id(),
        })?;
    if entry[20] != key.config().key_id() {
        return Err(OhttpError::KeyId {
            got: entry[20],
            want: key.config().key_id(),
        });
    }
    let enc = &entry[21..21 + NPK];
    let mut ctx = Receiver::setup(Aead::Aes128Gcm, key.secret(), enc, &info(context))?;
    let dek = ctx.open(&entry[21 + NPK..], b"")?;
    let aad = [context, &sealed[..end]].concat();
    Receiver::from_secrets(Aead::Aes128Gcm, &dek, &[0; 12]).open(&sealed[end..], &aad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_recipient_opens_it_no_one_else_and_nothing_changed() {
        let keys: Vec<GatewayKey> = (0..3u8).map(|i| GatewayKey::derive(1, &[i; 32])).collect();
        let ids: Vec<[u8; 20]> = (0..3u8).map(|i| [i + 1; 20]).collect();
        let recipients: Vec<Recipient> = keys
            .iter()
            .zip(&ids)
            .map(|(k, id)| Recipient {
                id: *id,
                key: k.config(),
            })
            .collect();
        let payload = b"the prompt nobody else may read".repeat(100);
        let sealed = seal_payload(&recipients, b"receipt 1 input", &payload).unwrap();
        assert!(is_sealed_payload(&sealed));
        assert_eq!(sealed_recipients(&sealed).unwrap(), ids);
        assert!(!sealed.windows(10).any(|w| w == &payload[..10]));
        for (k, id) in keys.iter().zip(&ids) {
            assert_eq!(
                open_payload(k, *id, b"receipt 1 input", &sealed).unwrap(),
                payload
            );
            // Another receipt's context: does not open.
            assert!(open_payload(k, *id, b"receipt 2 input", &sealed).is_err());
        }
        // Not a recipient, or a recipient's id with another key: refused.
        let stranger = GatewayKey::derive(1, &[9; 32]);
        assert!(matches!(
            open_payload(&stranger, [9; 20], b"receipt 1 input", &sealed),
            Err(OhttpError::KeyId { .. })
        ));
        assert!(open_payload(&stranger, ids[0], b"receipt 1 input", &sealed).is_err());
        // Every flipped byte and every cut is refused by every recipient.
        for i in 0..sealed.len() {
            let mut s = sealed.clone();
            s[i] ^= 1;
            assert!(
                open_payload(&keys[1], ids[1], b"receipt 1 input", &s).is_err(),
                "byte {i}"
            );
        }
        for cut in [0, 5, 6, 100, sealed.len() - 1] {
            assert!(open_payload(&keys[1], ids[1], b"receipt 1 input", &sealed[..cut]).is_err());
        }
    }
}
