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

/// The id of the caller's entry ([`seal_payload_for`]): no registered address is zero.
pub const CALLER: [u8; 20] = [0; 20];

/// Seals `payload` so each of `recipients` (at most 255) can open it, bound to `context`.
pub fn seal_payload(
    recipients: &[Recipient<'_>],
    context: &[u8],
    payload: &[u8],
) -> Result<Vec<u8>, OhttpError> {
    seal_payload_for(recipients, None, context, payload)
}

/// As [`seal_payload`], and also for whoever holds `caller_key` (a key derived from what only
/// the caller has, the request it sent: it reopens its own answer when it asks again).
pub fn seal_payload_for(
    recipients: &[Recipient<'_>],
    caller_key: Option<&DataKey>,
    context: &[u8],
    payload: &[u8],
) -> Result<Vec<u8>, OhttpError> {
    let total = recipients.len() + usize::from(caller_key.is_some());
    let n = u8::try_from(total)
        .map_err(|_| OhttpError::Config("a payload is sealed to at most 255 recipients"))?;
    if recipients.iter().any(|r| r.id == CALLER) {
        return Err(OhttpError::Config("a recipient's id is the caller's"));
    }
    let mut ids: Vec<&[u8; 20]> = recipients.iter().map(|r| &r.id).collect();
    ids.sort();
    ids.dedup();
    if ids.len() != recipients.len() {
        return Err(OhttpError::Config("a recipient is named twice"));
    }
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
    if let Some(k) = caller_key {
        out.extend_from_slice(&CALLER);
        out.push(0);
        out.extend_from_slice(&[0; NPK]);
        out.extend(Sender::from_secrets(Aead::Aes128Gcm, k, &[0; 12]).seal(&dek, context));
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

/// The most sealing adds to a payload (255 recipients).
pub const MAX_OVERHEAD: usize = 6 + 255 * ENTRY_LEN + 16;

/// A payload's data key: whoever holds it (and the sealed bytes) can open that one payload.
/// A recipient hands it to a peer who must check the payload too (a fraud confirmation).
pub type DataKey = [u8; DEK_LEN];

/// Opens a payload sealed to `me` under `key`, bound to `context`. A payload not sealed to
/// `me` is [`OhttpError::KeyId`]; a changed one does not open.
pub fn open_payload(
    key: &GatewayKey,
    me: [u8; 20],
    context: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, OhttpError> {
    let dek = unwrap_key(key, me, context, sealed)?;
    open_with_key(&dek, context, sealed)
}

/// Opens a payload with its data key (see [`DataKey`]).
pub fn open_with_key(dek: &DataKey, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OhttpError> {
    let (_, end) = entries(sealed)?;
    let aad = [context, &sealed[..end]].concat();
    Receiver::from_secrets(Aead::Aes128Gcm, dek, &[0; 12]).open(&sealed[end..], &aad)
}

/// Opens a payload with the caller's key ([`seal_payload_for`]).
pub fn open_as_caller(
    caller_key: &DataKey,
    context: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, OhttpError> {
    let (list, _) = entries(sealed)?;
    let entry = list
        .iter()
        .find(|e| e[..20] == CALLER)
        .ok_or(OhttpError::Config("the payload is not kept for its caller"))?;
    let dek: DataKey = Receiver::from_secrets(Aead::Aes128Gcm, caller_key, &[0; 12])
        .open(&entry[21 + NPK..], context)?
        .try_into()
        .map_err(|_| OhttpError::Open)?;
    open_with_key(&dek, context, sealed)
}

/// The data key of a payload sealed to `me` (checked by opening the payload with it).
pub fn unwrap_key(
    key: &GatewayKey,
    me: [u8; 20],
    context: &[u8],
    sealed: &[u8],
) -> Result<DataKey, OhttpError> {
    let (list, _) = entries(sealed)?;
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
    let dek: DataKey = ctx
        .open(&entry[21 + NPK..], b"")?
        .try_into()
        .map_err(|_| OhttpError::Open)?;
    open_with_key(&dek, context, sealed)?;
    Ok(dek)
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
        // A recipient's data key opens it for a peer; no other key does.
        let dek = unwrap_key(&keys[2], ids[2], b"receipt 1 input", &sealed).unwrap();
        assert_eq!(
            open_with_key(&dek, b"receipt 1 input", &sealed).unwrap(),
            payload
        );
        assert!(open_with_key(&[0; 16], b"receipt 1 input", &sealed).is_err());
        assert!(open_with_key(&dek, b"receipt 2 input", &sealed).is_err());
        // Kept for its caller too: the caller's key opens it, another does not, and the
        // caller's entry names no verifier.
        let k = [7u8; 16];
        let kept = seal_payload_for(&recipients, Some(&k), b"receipt 1 output", &payload).unwrap();
        assert_eq!(
            open_as_caller(&k, b"receipt 1 output", &kept).unwrap(),
            payload
        );
        assert!(open_as_caller(&[8; 16], b"receipt 1 output", &kept).is_err());
        assert!(open_as_caller(&k, b"receipt 1 output", &sealed).is_err());
        assert_eq!(
            open_payload(&keys[0], ids[0], b"receipt 1 output", &kept).unwrap(),
            payload
        );
        assert_eq!(sealed_recipients(&kept).unwrap()[3], CALLER);
        // No recipient twice.
        let twice = [recipients[0], recipients[0]];
        assert!(seal_payload(&twice, b"c", b"p").is_err());
        for cut in [0, 5, 6, 100, sealed.len() - 1] {
            assert!(open_payload(&keys[1], ids[1], b"receipt 1 input", &sealed[..cut]).is_err());
        }
    }
}
