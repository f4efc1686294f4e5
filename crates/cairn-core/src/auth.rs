//! Signed write requests: who may write is decided by an Ethereum key, not an account.
//!
//! A signed request carries five headers. The signature is an EIP-191 `personal_sign` over a
//! canonical text that binds the host the request was sent to, the method, the request target
//! (path and query as sent), the SHA-256 of the body, a timestamp and a random nonce, so any
//! Ethereum wallet can produce it and a request signed for one service is refused by every other.
//! The server checks the signature (low-s only) and the clock here; replay (the same nonce twice)
//! is checked by the caller against shared state ([`ReplayGuard`] in memory, or a database).

use std::collections::HashMap;
use std::sync::Mutex;

use alloy_primitives::{Address, Signature};
use alloy_signer::SignerSync;
use alloy_signer_local::PrivateKeySigner;

use crate::sig::{SigError, recover_message};

/// Header carrying the signer's address (`0x…`, 20 bytes).
pub const HEADER_ADDRESS: &str = "cairn-address";
/// Header carrying the Unix time of signing, in seconds.
pub const HEADER_TIMESTAMP: &str = "cairn-timestamp";
/// Header carrying a random 16-byte nonce, hex.
pub const HEADER_NONCE: &str = "cairn-nonce";
/// Header carrying the 65-byte signature, `0x…` hex.
pub const HEADER_SIGNATURE: &str = "cairn-signature";
/// Header carrying the SHA-256 of the body, 64 hex digits. For a file upload it is the CID's digest.
pub const HEADER_CONTENT_SHA256: &str = "cairn-content-sha256";

/// How far a request's timestamp may be from the server's clock.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;

/// Why a request's signature headers were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A write without its signature headers.
    #[error("missing header `{0}`: write requests must be signed (see the API docs)")]
    Missing(&'static str),
    /// A header that does not parse.
    #[error("malformed header `{0}`: {1}")]
    Malformed(&'static str, &'static str),
    /// The signature does not recover to the claimed address (forged, or over other data).
    #[error("signature does not match the request: it recovers to {recovered}, not {claimed}")]
    WrongSigner {
        /// The address in the request.
        claimed: Address,
        /// The address the signature belongs to.
        recovered: Address,
    },
    /// The signature bytes are not a valid secp256k1 signature.
    #[error("signature is not a valid secp256k1 signature")]
    InvalidSignature,
    /// The signature is the high-s twin of a valid one.
    #[error("{0}")]
    NotCanonical(SigError),
    /// The body does not hash to the signed `cairn-content-sha256`.
    #[error("the body does not match the signed cairn-content-sha256")]
    BodyMismatch,
    /// The same signed request was presented before.
    #[error("this signed request was already used; sign each request with a fresh nonce")]
    Replayed,
    /// The timestamp is too far from the server's clock.
    #[error(
        "stale signature: signed at {timestamp}, server time {now}; requests are valid for {MAX_CLOCK_SKEW_SECS} s (check the clock and sign again)"
    )]
    Stale {
        /// Signing time.
        timestamp: u64,
        /// Server time.
        now: u64,
    },
}

/// The parts of a request that a signature covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestToSign<'a> {
    /// The `Host` the request is sent to (`host[:port]`, as in the URL).
    pub host: &'a str,
    /// HTTP method, upper case.
    pub method: &'a str,
    /// Path and query exactly as sent on the request line.
    pub target: &'a str,
    /// SHA-256 of the body.
    pub body_sha256: [u8; 32],
    /// Unix seconds.
    pub timestamp: u64,
    /// Random, never reused by a signer.
    pub nonce: [u8; 16],
}

impl RequestToSign<'_> {
    /// The text that is signed with EIP-191 `personal_sign`.
    pub fn message(&self) -> String {
        format!(
            "Cairn signed request v2\nhost: {}\nmethod: {}\ntarget: {}\nbody-sha256: {}\ntimestamp: {}\nnonce: {}",
            self.host.to_ascii_lowercase(),
            self.method.to_ascii_uppercase(),
            self.target,
            hex(&self.body_sha256),
            self.timestamp,
            hex(&self.nonce),
        )
    }

    /// Signs and returns the headers to send.
    pub fn sign(&self, signer: &PrivateKeySigner) -> SignedHeaders {
        let signature = signer
            .sign_message_sync(self.message().as_bytes())
            .expect("local secp256k1 signing does not fail");
        SignedHeaders {
            address: signer.address(),
            timestamp: self.timestamp,
            nonce: self.nonce,
            signature,
            body_sha256: self.body_sha256,
        }
    }
}

/// The signature headers of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    /// Claimed signer.
    pub address: Address,
    /// Unix seconds.
    pub timestamp: u64,
    /// Random nonce.
    pub nonce: [u8; 16],
    /// EIP-191 signature.
    pub signature: Signature,
    /// Declared SHA-256 of the body.
    pub body_sha256: [u8; 32],
}

impl SignedHeaders {
    /// Header name/value pairs.
    pub fn to_pairs(&self) -> [(&'static str, String); 5] {
        [
            (HEADER_ADDRESS, self.address.to_checksum(None)),
            (HEADER_TIMESTAMP, self.timestamp.to_string()),
            (HEADER_NONCE, hex(&self.nonce)),
            (
                HEADER_SIGNATURE,
                format!("0x{}", hex(&self.signature.as_bytes())),
            ),
            (HEADER_CONTENT_SHA256, hex(&self.body_sha256)),
        ]
    }

    /// Parses the headers through `get` (a lookup by lower-case name).
    pub fn from_lookup<'h>(
        get: impl Fn(&'static str) -> Option<&'h str>,
    ) -> Result<Self, AuthError> {
        let need = |name| get(name).ok_or(AuthError::Missing(name));
        let address = need(HEADER_ADDRESS)?
            .parse::<Address>()
            .map_err(|_| AuthError::Malformed(HEADER_ADDRESS, "not a 20-byte hex address"))?;
        let timestamp = need(HEADER_TIMESTAMP)?
            .parse::<u64>()
            .map_err(|_| AuthError::Malformed(HEADER_TIMESTAMP, "not Unix seconds"))?;
        let nonce = unhex::<16>(need(HEADER_NONCE)?)
            .ok_or(AuthError::Malformed(HEADER_NONCE, "not 32 hex digits"))?;
        let sig_hex = need(HEADER_SIGNATURE)?;
        let sig = unhex::<65>(sig_hex.strip_prefix("0x").unwrap_or(sig_hex)).ok_or(
            AuthError::Malformed(HEADER_SIGNATURE, "not 65 bytes of hex"),
        )?;
        let signature = Signature::from_raw(&sig).map_err(|_| AuthError::InvalidSignature)?;
        let body_sha256 = unhex::<32>(need(HEADER_CONTENT_SHA256)?).ok_or(AuthError::Malformed(
            HEADER_CONTENT_SHA256,
            "not 64 hex digits",
        ))?;
        Ok(Self {
            address,
            timestamp,
            nonce,
            signature,
            body_sha256,
        })
    }

    /// Checks the signature over `host`, `method` and `target` and the clock; returns the
    /// signer. The body digest is checked by the caller once the body has been read.
    pub fn verify(
        &self,
        host: &str,
        method: &str,
        target: &str,
        now: u64,
    ) -> Result<Address, AuthError> {
        if self.timestamp.abs_diff(now) > MAX_CLOCK_SKEW_SECS {
            return Err(AuthError::Stale {
                timestamp: self.timestamp,
                now,
            });
        }
        let message = RequestToSign {
            host,
            method,
            target,
            body_sha256: self.body_sha256,
            timestamp: self.timestamp,
            nonce: self.nonce,
        }
        .message();
        let recovered =
            recover_message(&self.signature, message.as_bytes()).map_err(|e| match e {
                SigError::HighS => AuthError::NotCanonical(e),
                SigError::Unrecoverable | SigError::Encoding => AuthError::InvalidSignature,
            })?;
        if recovered != self.address {
            return Err(AuthError::WrongSigner {
                claimed: self.address,
                recovered,
            });
        }
        Ok(recovered)
    }
}

/// Checks a whole signed request whose body is in hand: headers (through `lookup`), signature
/// over `host`/`method`/`target`, clock and body digest. Returns the headers (the caller checks
/// the signer is authorized, then replay with [`ReplayGuard::check`]) and the signer.
pub fn verify_request<'h>(
    lookup: impl Fn(&'static str) -> Option<&'h str>,
    host: &str,
    method: &str,
    target: &str,
    body: &[u8],
) -> Result<(SignedHeaders, Address), AuthError> {
    use sha2::Digest;
    let h = SignedHeaders::from_lookup(lookup)?;
    let signer = h.verify(host, method, target, unix_now())?;
    if <[u8; 32]>::from(sha2::Sha256::digest(body)) != h.body_sha256 {
        return Err(AuthError::BodyMismatch);
    }
    Ok((h, signer))
}

/// Signs a request to `host` (`host[:port]`) with a fresh nonce at the current time.
pub fn sign_request(
    signer: &PrivateKeySigner,
    host: &str,
    method: &str,
    target: &str,
    body_sha256: [u8; 32],
) -> SignedHeaders {
    let nonce: [u8; 16] = alloy_primitives::B128::random().0;
    RequestToSign {
        host,
        method,
        target,
        body_sha256,
        timestamp: unix_now(),
        nonce,
    }
    .sign(signer)
}

/// Signs a request to the absolute `url` carrying `body`; `None` when the URL is not plain
/// `http(s)://host[:port]/path`.
pub fn sign_url(
    signer: &PrivateKeySigner,
    method: &str,
    url: &str,
    body: &[u8],
) -> Option<SignedHeaders> {
    use sha2::Digest;
    let (host, target) = host_and_target(url)?;
    Some(sign_request(
        signer,
        &host,
        method,
        &target,
        sha2::Sha256::digest(body).into(),
    ))
}

/// The `host[:port]` and the target (path and query) of an absolute `http(s)://` URL, as a
/// signature covers them. `None` for anything else (user info, fragments, other schemes).
pub fn host_and_target(url: &str) -> Option<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .map(|r| (r, ":80"))
        .or_else(|| url.strip_prefix("https://").map(|r| (r, ":443")));
    let (rest, default_port) = rest?;
    if rest.contains('#') {
        return None;
    }
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, target) = rest.split_at(split);
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    // A default port is not part of the Host header clients send.
    let host = authority
        .strip_suffix(default_port)
        .unwrap_or(authority)
        .to_ascii_lowercase();
    let target = match target {
        "" => "/".to_string(),
        t if t.starts_with('?') => format!("/{t}"),
        t => t.to_string(),
    };
    Some((host, target))
}

/// Seconds since the Unix epoch ([`crate::clock::now_secs`]).
pub use crate::clock::now_secs as unix_now;

/// Remembers the (signer, nonce) pairs seen within the clock window, so each signed request is
/// accepted once. In memory and bounded per signer: a signer that fills its share (or the table
/// of signers when it is full) is refused, never anyone else. Check it only for signers already
/// known to be authorized, so strangers cannot fill it at all.
pub struct ReplayGuard {
    seen: Mutex<HashMap<Address, HashMap<[u8; 16], u64>>>,
    per_signer: usize,
    signers: usize,
}

impl ReplayGuard {
    /// A guard remembering at most `per_signer` requests of each of at most `signers` signers.
    pub fn new(per_signer: usize, signers: usize) -> Self {
        Self {
            seen: Mutex::new(HashMap::new()),
            per_signer,
            signers,
        }
    }

    /// Records `h` as used at `now`; `Err(Replayed)` when it was seen before (or its signer's
    /// share is full of live entries).
    pub fn check(&self, h: &SignedHeaders, now: u64) -> Result<(), AuthError> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if !seen.contains_key(&h.address) && seen.len() >= self.signers {
            seen.retain(|_, nonces| {
                nonces.retain(|_, expires| *expires > now);
                !nonces.is_empty()
            });
            if seen.len() >= self.signers {
                return Err(AuthError::Replayed);
            }
        }
        let nonces = seen.entry(h.address).or_default();
        if nonces.len() >= self.per_signer {
            nonces.retain(|_, expires| *expires > now);
            if nonces.len() >= self.per_signer {
                return Err(AuthError::Replayed);
            }
        }
        let expires = h.timestamp + MAX_CLOCK_SKEW_SECS + 1;
        match nonces.entry(h.nonce) {
            std::collections::hash_map::Entry::Occupied(_) => Err(AuthError::Replayed),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(expires);
                Ok(())
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let bytes = data_encoding::HEXLOWER_PERMISSIVE
        .decode(s.as_bytes())
        .ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests;
