//! Key configurations (RFC 9458 §3): what a client needs to seal a request to a gateway.

use crate::OhttpError;
use sha2::Digest;

/// DHKEM(X25519, HKDF-SHA256): the only KEM offered and accepted.
pub(crate) const KEM_X25519: u16 = 0x0020;
/// HKDF-SHA256: the only KDF offered and accepted.
pub(crate) const KDF_SHA256: u16 = 0x0001;
/// X25519 public keys are 32 bytes.
pub(crate) const NPK: usize = 32;

/// The AEADs a key configuration may offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aead {
    /// AES-128-GCM (0x0001).
    Aes128Gcm,
    /// ChaCha20-Poly1305 (0x0003).
    ChaCha20Poly1305,
}

impl Aead {
    /// Its HPKE identifier.
    pub fn id(self) -> u16 {
        match self {
            Self::Aes128Gcm => 0x0001,
            Self::ChaCha20Poly1305 => 0x0003,
        }
    }

    /// The AEAD an identifier names, if supported.
    pub fn from_id(id: u16) -> Option<Self> {
        match id {
            0x0001 => Some(Self::Aes128Gcm),
            0x0003 => Some(Self::ChaCha20Poly1305),
            _ => None,
        }
    }

    /// Nk, the key length.
    pub(crate) fn nk(self) -> usize {
        match self {
            Self::Aes128Gcm => 16,
            Self::ChaCha20Poly1305 => 32,
        }
    }

    /// Nn, the nonce length.
    pub(crate) fn nn(self) -> usize {
        12
    }
}

/// SHA-256 of a key configuration's encoding: what a node's attestation report data and
/// registry entry bind.
pub type KeyConfigHash = [u8; 32];

/// One key configuration: key id, X25519 public key, and the AEADs (with HKDF-SHA256) it
/// accepts. Kept with its exact encoding, which is what is hashed and served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyConfig {
    key_id: u8,
    public_key: [u8; NPK],
    aeads: Vec<Aead>,
    encoded: Vec<u8>,
}

impl KeyConfig {
    /// A configuration offering `aeads` (in order of preference) for `public_key`.
    pub fn new(key_id: u8, public_key: [u8; NPK], aeads: &[Aead]) -> Self {
        assert!(!aeads.is_empty(), "a key configuration offers a suite");
        let mut encoded = vec![key_id];
        encoded.extend_from_slice(&KEM_X25519.to_be_bytes());
        encoded.extend_from_slice(&public_key);
        encoded.extend_from_slice(&((aeads.len() * 4) as u16).to_be_bytes());
        for a in aeads {
            encoded.extend_from_slice(&KDF_SHA256.to_be_bytes());
            encoded.extend_from_slice(&a.id().to_be_bytes());
        }
        Self {
            key_id,
            public_key,
            aeads: aeads.to_vec(),
            encoded,
        }
    }

    /// Reads one configuration. Suites this crate does not speak are skipped (RFC 9458 §3);
    /// a configuration left with none, or with another KEM, is refused.
    pub fn decode(b: &[u8]) -> Result<Self, OhttpError> {
        let bad = OhttpError::Config;
        if b.len() < 3 + NPK + 2 {
            return Err(bad(
                "shorter than a key id, a KEM, an X25519 key and a suite list",
            ));
        }
        let kem = u16::from_be_bytes([b[1], b[2]]);
        if kem != KEM_X25519 {
            return Err(OhttpError::Suite(format!(
                "KEM {kem:#06x} is not supported: Cairn gateways use DHKEM(X25519, HKDF-SHA256) (0x0020)"
            )));
        }
        let public_key: [u8; NPK] = b[3..3 + NPK].try_into().expect("length checked");
        let rest = &b[3 + NPK..];
        let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let suites = &rest[2..];
        if n == 0 || n % 4 != 0 || suites.len() != n {
            return Err(bad("its suite list's length is not what follows it"));
        }
        let aeads: Vec<Aead> = suites
            .chunks_exact(4)
            .filter(|s| u16::from_be_bytes([s[0], s[1]]) == KDF_SHA256)
            .filter_map(|s| Aead::from_id(u16::from_be_bytes([s[2], s[3]])))
            .collect();
        if aeads.is_empty() {
            return Err(OhttpError::Suite(
                "the configuration offers no suite Cairn speaks (HKDF-SHA256 with AES-128-GCM or ChaCha20-Poly1305)"
                    .into(),
            ));
        }
        Ok(Self {
            key_id: b[0],
            public_key,
            aeads,
            encoded: b.to_vec(),
        })
    }

    /// `application/ohttp-keys`: each configuration after its 2-byte length.
    pub fn encode_list(configs: &[&KeyConfig]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in configs {
            out.extend_from_slice(&(c.encoded.len() as u16).to_be_bytes());
            out.extend_from_slice(&c.encoded);
        }
        out
    }

    /// Reads `application/ohttp-keys`, keeping the configurations this crate speaks.
    pub fn decode_list(mut b: &[u8]) -> Result<Vec<Self>, OhttpError> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let [hi, lo, rest @ ..] = b else {
                return Err(OhttpError::Config("a length is cut short"));
            };
            let len = usize::from(u16::from_be_bytes([*hi, *lo]));
            let (one, rest) = rest.split_at_checked(len).ok_or(OhttpError::Config(
                "a configuration is longer than the list",
            ))?;
            match Self::decode(one) {
                Ok(c) => out.push(c),
                Err(OhttpError::Suite(_)) => {}
                Err(e) => return Err(e),
            }
            b = rest;
        }
        Ok(out)
    }

    /// The key id requests name.
    pub fn key_id(&self) -> u8 {
        self.key_id
    }

    /// The gateway's X25519 public key.
    pub fn public_key(&self) -> &[u8; NPK] {
        &self.public_key
    }

    /// The AEADs offered, the preferred first.
    pub fn aeads(&self) -> &[Aead] {
        &self.aeads
    }

    /// The exact encoding (as served and hashed).
    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    /// SHA-256 of [`Self::encoded`].
    pub fn hash(&self) -> KeyConfigHash {
        sha2::Sha256::digest(&self.encoded).into()
    }
}
