//! HPKE contexts for the two AEADs a key configuration may offer, behind one type each way.

use crate::{Aead, OhttpError};
use hpke::{
    Deserializable, OpModeR, OpModeS, Serializable,
    aead::{AeadCtxR, AeadCtxS, AesGcm128, ChaCha20Poly1305},
    danger::streaming_enc::{
        AeadKey, AeadNonce, ExporterSecret, create_receiver_context, create_sender_context,
    },
    kdf::HkdfSha256,
    kem::X25519HkdfSha256,
};

pub(crate) type Kem = X25519HkdfSha256;
pub(crate) type PrivateKey = <Kem as hpke::Kem>::PrivateKey;
type Kdf = HkdfSha256;

/// A sealing context: a request's HPKE context, or a response's AEAD. (AES's expanded key
/// makes one variant larger; one context lives per request, so it is not boxed.)
#[allow(clippy::large_enum_variant)]
pub(crate) enum Sender {
    Aes(AeadCtxS<AesGcm128, Kdf, Kem>),
    ChaCha(AeadCtxS<ChaCha20Poly1305, Kdf, Kem>),
}

/// An opening context.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Receiver {
    Aes(AeadCtxR<AesGcm128, Kdf, Kem>),
    ChaCha(AeadCtxR<ChaCha20Poly1305, Kdf, Kem>),
}

fn public_key(pk: &[u8]) -> Result<<Kem as hpke::Kem>::PublicKey, OhttpError> {
    Deserializable::from_bytes(pk).map_err(|_| OhttpError::Config("not an X25519 public key"))
}

impl Sender {
    /// HPKE base-mode SetupS to `pk` with `info`: the encapsulated key and the context.
    pub(crate) fn setup(aead: Aead, pk: &[u8], info: &[u8]) -> Result<(Vec<u8>, Self), OhttpError> {
        let pk = public_key(pk)?;
        let fail = |_| OhttpError::Config("the public key is a low-order point");
        Ok(match aead {
            Aead::Aes128Gcm => {
                let (enc, ctx) =
                    hpke::setup_sender::<AesGcm128, Kdf, Kem>(&OpModeS::Base, &pk, info)
                        .map_err(fail)?;
                (enc.to_bytes().to_vec(), Self::Aes(ctx))
            }
            Aead::ChaCha20Poly1305 => {
                let (enc, ctx) =
                    hpke::setup_sender::<ChaCha20Poly1305, Kdf, Kem>(&OpModeS::Base, &pk, info)
                        .map_err(fail)?;
                (enc.to_bytes().to_vec(), Self::ChaCha(ctx))
            }
        })
    }

    /// An AEAD context from a key and base nonce OHTTP derived (the response's); its
    /// sequence number makes chunk nonces (`nonce XOR counter`).
    pub(crate) fn from_secrets(aead: Aead, key: &[u8], nonce: &[u8]) -> Self {
        match aead {
            Aead::Aes128Gcm => Self::Aes(from_parts(key, nonce, create_sender_context)),
            Aead::ChaCha20Poly1305 => Self::ChaCha(from_parts(key, nonce, create_sender_context)),
        }
    }

    pub(crate) fn seal(&mut self, pt: &[u8], aad: &[u8]) -> Vec<u8> {
        match self {
            Self::Aes(c) => c.seal(pt, aad),
            Self::ChaCha(c) => c.seal(pt, aad),
        }
        .expect("a context seals fewer than 2^96 messages")
    }

    pub(crate) fn export(&self, label: &[u8], len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        match self {
            Self::Aes(c) => c.export(label, &mut out),
            Self::ChaCha(c) => c.export(label, &mut out),
        }
        .expect("an export of at most 32 bytes");
        out
    }
}

impl Receiver {
    /// HPKE base-mode SetupR with the gateway's secret key.
    pub(crate) fn setup(
        aead: Aead,
        sk: &PrivateKey,
        enc: &[u8],
        info: &[u8],
    ) -> Result<Self, OhttpError> {
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(enc)
            .map_err(|_| OhttpError::Truncated("encapsulated key"))?;
        Ok(match aead {
            Aead::Aes128Gcm => Self::Aes(
                hpke::setup_receiver(&OpModeR::Base, sk, &enc, info)
                    .map_err(|_| OhttpError::Open)?,
            ),
            Aead::ChaCha20Poly1305 => Self::ChaCha(
                hpke::setup_receiver(&OpModeR::Base, sk, &enc, info)
                    .map_err(|_| OhttpError::Open)?,
            ),
        })
    }

    /// See [`Sender::from_secrets`].
    pub(crate) fn from_secrets(aead: Aead, key: &[u8], nonce: &[u8]) -> Self {
        match aead {
            Aead::Aes128Gcm => Self::Aes(from_parts(key, nonce, create_receiver_context)),
            Aead::ChaCha20Poly1305 => Self::ChaCha(from_parts(key, nonce, create_receiver_context)),
        }
    }

    pub(crate) fn open(&mut self, ct: &[u8], aad: &[u8]) -> Result<Vec<u8>, OhttpError> {
        match self {
            Self::Aes(c) => c.open(ct, aad),
            Self::ChaCha(c) => c.open(ct, aad),
        }
        .map_err(|_| OhttpError::Open)
    }

    pub(crate) fn export(&self, label: &[u8], len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        match self {
            Self::Aes(c) => c.export(label, &mut out),
            Self::ChaCha(c) => c.export(label, &mut out),
        }
        .expect("an export of at most 32 bytes");
        out
    }
}

/// A context of either direction from OHTTP's own key and base nonce (no exporter: OHTTP
/// exports from the request's context only).
fn from_parts<A: hpke::aead::Aead, C>(
    key: &[u8],
    nonce: &[u8],
    make: fn(&AeadKey<A>, AeadNonce<A>, ExporterSecret<Kdf>) -> C,
) -> C {
    make(&aead_key(key), aead_nonce(nonce), ExporterSecret::default())
}

fn aead_key<A: hpke::aead::Aead>(key: &[u8]) -> AeadKey<A> {
    let mut k = AeadKey::<A>::default();
    k.0.copy_from_slice(key);
    k
}

fn aead_nonce<A: hpke::aead::Aead>(nonce: &[u8]) -> AeadNonce<A> {
    let mut n = AeadNonce::<A>::default();
    n.0.copy_from_slice(nonce);
    n
}

/// The response's AEAD key and nonce (RFC 9458 §4.4): `prk = Extract(enc ‖ nonce, secret)`,
/// `key = Expand(prk, "key", Nk)`, `nonce = Expand(prk, "nonce", Nn)`.
pub(crate) fn response_keys(
    aead: Aead,
    secret: &[u8],
    enc: &[u8],
    response_nonce: &[u8],
) -> (Vec<u8>, Vec<u8>) {
    let mut salt = enc.to_vec();
    salt.extend_from_slice(response_nonce);
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(&salt), secret);
    let mut key = vec![0; aead.nk()];
    let mut nonce = vec![0; aead.nn()];
    hk.expand(b"key", &mut key).expect("short output");
    hk.expand(b"nonce", &mut nonce).expect("short output");
    (key, nonce)
}
