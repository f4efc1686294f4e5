//! The gateway's half: open an encapsulated request, seal its answer.

use crate::{
    Aead, KeyConfig, OhttpError,
    config::{KDF_SHA256, KEM_X25519, NPK},
    ctx::{Kem, PrivateKey, Receiver, Sender, response_keys},
    get_varint, put_varint,
};
use hpke::{Deserializable, Kem as _, Serializable};

pub(crate) const INFO_REQUEST: &[u8] = b"message/bhttp request";
pub(crate) const LABEL_RESPONSE: &[u8] = b"message/bhttp response";
pub(crate) const INFO_CHUNKED_REQUEST: &[u8] = b"message/bhttp chunked request";
pub(crate) const LABEL_CHUNKED_RESPONSE: &[u8] = b"message/bhttp chunked response";
/// `key_id(1) kem(2) kdf(2) aead(2)`.
pub(crate) const HEADER_LEN: usize = 7;
const TAG_LEN: usize = 16;

/// `info = label ‖ 0x00 ‖ header`.
pub(crate) fn info(label: &[u8], header: &[u8]) -> Vec<u8> {
    let mut info = label.to_vec();
    info.push(0);
    info.extend_from_slice(header);
    info
}

/// The response nonce's length, `max(Nn, Nk)`.
pub(crate) fn response_nonce_len(aead: Aead) -> usize {
    aead.nn().max(aead.nk())
}

/// A request's suite, HPKE context, encapsulated key and what follows it.
type Opened<'a> = (Aead, Receiver, &'a [u8], &'a [u8]);

/// A gateway's key pair and the configuration it publishes.
#[derive(Clone)]
pub struct GatewayKey {
    config: KeyConfig,
    sk: PrivateKey,
}

impl std::fmt::Debug for GatewayKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayKey")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl GatewayKey {
    /// The key pair HPKE's DeriveKeyPair makes of `ikm` (at least 32 secret bytes), offering
    /// AES-128-GCM then ChaCha20-Poly1305.
    pub fn derive(key_id: u8, ikm: &[u8]) -> Self {
        let (sk, pk) = Kem::derive_keypair(ikm);
        Self::from_pair(key_id, sk, pk.to_bytes().into())
    }

    /// The key pair of an X25519 secret key.
    pub fn from_secret(key_id: u8, sk: &[u8]) -> Result<Self, OhttpError> {
        let sk = PrivateKey::from_bytes(sk)
            .map_err(|_| OhttpError::Config("not an X25519 secret key"))?;
        let pk = Kem::sk_to_pk(&sk).to_bytes().into();
        Ok(Self::from_pair(key_id, sk, pk))
    }

    fn from_pair(key_id: u8, sk: PrivateKey, pk: [u8; NPK]) -> Self {
        let config = KeyConfig::new(key_id, pk, &[Aead::Aes128Gcm, Aead::ChaCha20Poly1305]);
        Self { config, sk }
    }

    /// The configuration clients seal to.
    pub fn config(&self) -> &KeyConfig {
        &self.config
    }

    pub(crate) fn secret(&self) -> &PrivateKey {
        &self.sk
    }

    /// Reads the header and the encapsulated key: the suite, the HPKE context, the rest.
    fn open_header<'a>(&self, msg: &'a [u8], label: &[u8]) -> Result<Opened<'a>, OhttpError> {
        let header = msg
            .get(..HEADER_LEN)
            .ok_or(OhttpError::Truncated("request header"))?;
        let (key_id, kem, kdf, aead) = (
            header[0],
            u16::from_be_bytes([header[1], header[2]]),
            u16::from_be_bytes([header[3], header[4]]),
            u16::from_be_bytes([header[5], header[6]]),
        );
        if key_id != self.config.key_id() {
            return Err(OhttpError::KeyId {
                got: key_id,
                want: self.config.key_id(),
            });
        }
        let aead_ok = Aead::from_id(aead).filter(|a| self.config.aeads().contains(a));
        let Some(aead) = aead_ok.filter(|_| kem == KEM_X25519 && kdf == KDF_SHA256) else {
            return Err(OhttpError::Suite(format!(
                "KEM {kem:#06x}, KDF {kdf:#06x}, AEAD {aead:#06x} is not a suite this key configuration offers"
            )));
        };
        let enc = msg
            .get(HEADER_LEN..HEADER_LEN + NPK)
            .ok_or(OhttpError::Truncated("encapsulated key"))?;
        let ctx = Receiver::setup(aead, &self.sk, enc, &info(label, header))?;
        Ok((aead, ctx, enc, &msg[HEADER_LEN + NPK..]))
    }

    /// Opens a `message/ohttp-req`: the Binary HTTP request inside and the sealer of its
    /// answer.
    pub fn decapsulate(&self, msg: &[u8]) -> Result<(Vec<u8>, ResponseSealer), OhttpError> {
        self.decapsulate_with_nonce(msg, None)
    }

    pub(crate) fn decapsulate_with_nonce(
        &self,
        msg: &[u8],
        nonce: Option<Vec<u8>>,
    ) -> Result<(Vec<u8>, ResponseSealer), OhttpError> {
        let (aead, mut ctx, enc, ct) = self.open_header(msg, INFO_REQUEST)?;
        if ct.len() < TAG_LEN {
            return Err(OhttpError::Truncated("ciphertext"));
        }
        let request = ctx.open(ct, b"")?;
        let secret = ctx.export(LABEL_RESPONSE, aead.nk());
        let nonce = nonce.unwrap_or_else(|| random(response_nonce_len(aead)));
        let (key, iv) = response_keys(aead, &secret, enc, &nonce);
        let sealer = ResponseSealer {
            nonce,
            ctx: Sender::from_secrets(aead, &key, &iv),
        };
        Ok((request, sealer))
    }

    /// Opens a whole `message/ohttp-chunked-req`: the request's bytes (all chunks, in order,
    /// the last one checked as final) and the sealer of its chunked answer.
    pub fn decapsulate_chunked(&self, msg: &[u8]) -> Result<(Vec<u8>, ChunkedSealer), OhttpError> {
        let (aead, mut ctx, enc, mut rest) = self.open_header(msg, INFO_CHUNKED_REQUEST)?;
        let mut request = Vec::new();
        loop {
            let (len, n) = get_varint(rest).ok_or(OhttpError::Truncated("chunk length"))?;
            rest = &rest[n..];
            if len == 0 {
                request.extend(ctx.open(rest, b"final")?);
                break;
            }
            let len = usize::try_from(len).map_err(|_| OhttpError::Chunk("chunk too long"))?;
            let (chunk, tail) = rest
                .split_at_checked(len)
                .ok_or(OhttpError::Truncated("chunk"))?;
            request.extend(ctx.open(chunk, b"")?);
            rest = tail;
        }
        let secret = ctx.export(LABEL_CHUNKED_RESPONSE, aead.nk());
        let nonce = random(response_nonce_len(aead));
        let (key, iv) = response_keys(aead, &secret, enc, &nonce);
        Ok((
            request,
            ChunkedSealer {
                nonce: Some(nonce),
                ctx: Sender::from_secrets(aead, &key, &iv),
            },
        ))
    }
}

/// Seals the one answer to a request ([`GatewayKey::decapsulate`]).
pub struct ResponseSealer {
    nonce: Vec<u8>,
    ctx: Sender,
}

impl ResponseSealer {
    /// The `message/ohttp-res`: `response_nonce ‖ sealed response`.
    pub fn seal(mut self, response: &[u8]) -> Vec<u8> {
        let mut out = self.nonce;
        out.extend(self.ctx.seal(response, b""));
        out
    }
}

/// Seals a chunked answer piece by piece ([`GatewayKey::decapsulate_chunked`]); the first
/// piece out carries the response nonce.
pub struct ChunkedSealer {
    nonce: Option<Vec<u8>>,
    ctx: Sender,
}

impl ChunkedSealer {
    /// A non-final chunk of at most [`crate::MAX_CHUNK`] bytes, as it goes on the wire.
    pub fn chunk(&mut self, data: &[u8]) -> Vec<u8> {
        debug_assert!(data.len() <= crate::MAX_CHUNK);
        let mut out = self.nonce.take().unwrap_or_default();
        let ct = self.ctx.seal(data, b"");
        put_varint(ct.len(), &mut out);
        out.extend(ct);
        out
    }

    /// The final chunk (AAD `"final"`); nothing may follow it.
    pub fn finish(mut self, data: &[u8]) -> Vec<u8> {
        let mut out = self.nonce.take().unwrap_or_default();
        put_varint(0, &mut out);
        out.extend(self.ctx.seal(data, b"final"));
        out
    }
}

pub(crate) fn random(n: usize) -> Vec<u8> {
    let mut b = vec![0; n];
    getrandom::fill(&mut b).expect("the OS random source");
    b
}

impl std::fmt::Debug for ResponseSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseSealer")
    }
}

impl std::fmt::Debug for ChunkedSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChunkedSealer")
    }
}
