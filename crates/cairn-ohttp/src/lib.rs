//! Oblivious HTTP (RFC 9458) with Binary HTTP (RFC 9292) inside, and its chunked form
//! (draft-ietf-ohai-chunked-ohttp) for answers that stream.
//!
//! Only the suites gateways use: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, and AES-128-GCM or
//! ChaCha20-Poly1305. HPKE itself is the `hpke` crate's; this crate adds OHTTP's framing (the
//! request header and its `info`, the response key schedule, chunks) and nothing that does I/O.
//! - [`KeyConfig`]: a gateway's public key configuration (`application/ohttp-keys`), hashed
//!   into the node's attestation and registry entry.
//! - [`GatewayKey`]: the gateway's half: open a request, seal its answer (whole or chunked).
//! - [`encapsulate`] / [`encapsulate_chunked`]: the client's half.
//! - [`message`]: HTTP requests and responses as Binary HTTP.
//! - [`sealed`]: payloads sealed to several recipients (a private call's payloads, to the
//!   verifiers).

mod client;
mod config;
mod ctx;
mod gateway;
pub mod message;
pub mod sealed;
#[cfg(test)]
mod tests;

pub use client::{ChunkedOpener, ResponseOpener, encapsulate, encapsulate_chunked};
pub use config::{Aead, KeyConfig, KeyConfigHash};
pub use gateway::{ChunkedSealer, GatewayKey, ResponseSealer};

/// `message/ohttp-req`: an encapsulated request.
pub const REQUEST_TYPE: &str = "message/ohttp-req";
/// `message/ohttp-res`: an encapsulated response.
pub const RESPONSE_TYPE: &str = "message/ohttp-res";
/// `message/ohttp-chunked-req`: an encapsulated request in chunks.
pub const CHUNKED_REQUEST_TYPE: &str = "message/ohttp-chunked-req";
/// `message/ohttp-chunked-res`: an encapsulated response in chunks.
pub const CHUNKED_RESPONSE_TYPE: &str = "message/ohttp-chunked-res";
/// `application/ohttp-keys`: a list of key configurations, each after its 2-byte length.
pub const KEYS_TYPE: &str = "application/ohttp-keys";
/// Where a gateway serves its key configurations (GET) and takes requests (POST), RFC 9540.
pub const GATEWAY_PATH: &str = "/.well-known/ohttp-gateway";
/// The largest chunk a receiver must take (the chunked draft); ours seal at most this much.
pub const MAX_CHUNK: usize = 16_384;

/// What went wrong with an encapsulated message or a key configuration.
#[derive(Debug, thiserror::Error)]
pub enum OhttpError {
    /// The message ends before one of its parts does.
    #[error("the encapsulated message is truncated ({0})")]
    Truncated(&'static str),
    /// The request names a key this gateway does not hold.
    #[error(
        "the request is sealed to key id {got}, this gateway's key id is {want}: fetch its key configuration again"
    )]
    KeyId { got: u8, want: u8 },
    /// The KEM, KDF or AEAD is not one this key configuration offers.
    #[error("{0}")]
    Suite(String),
    /// Authentication failed: tampered, cut, or sealed to another key.
    #[error(
        "the message does not open under this key: it was changed on the way or sealed to another key"
    )]
    Open,
    /// A key configuration that is not one.
    #[error("malformed key configuration: {0}")]
    Config(&'static str),
    /// The Binary HTTP message inside is not one.
    #[error("malformed Binary HTTP message: {0}")]
    Bhttp(String),
    /// A chunked message that breaks the chunk rules.
    #[error("malformed chunked message: {0}")]
    Chunk(&'static str),
}

impl OhttpError {
    /// A stable machine code for the error body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Truncated(_) => "ohttp_truncated",
            Self::KeyId { .. } => "ohttp_key_id",
            Self::Suite(_) => "ohttp_unsupported_suite",
            Self::Open => "ohttp_decrypt",
            Self::Config(_) => "ohttp_bad_key_config",
            Self::Bhttp(_) => "ohttp_bad_bhttp",
            Self::Chunk(_) => "ohttp_bad_chunk",
        }
    }
}

/// A QUIC variable-length integer (RFC 9000 §16), the chunk lengths' encoding.
pub(crate) fn put_varint(v: usize, out: &mut Vec<u8>) {
    let v = v as u64;
    match v {
        _ if v < 1 << 6 => out.push(v as u8),
        _ if v < 1 << 14 => out.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes()),
        _ if v < 1 << 30 => out.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes()),
        _ => out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes()),
    }
}

/// Reads a varint from the front of `b`: its value and length, `None` when `b` ends first.
pub(crate) fn get_varint(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    let len = 1usize << (first >> 6);
    let bytes = b.get(..len)?;
    let mut v = u64::from(first & 0x3f);
    for &x in &bytes[1..] {
        v = (v << 8) | u64::from(x);
    }
    Some((v, len))
}
