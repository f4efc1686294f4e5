//! Content addresses for blobs.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use data_encoding::Encoding;
use sha2::{Digest, Sha256};

/// Multicodec/multihash prefix of a CIDv1, codec raw (0x55), sha2-256 (0x12) of 32 bytes (0x20).
const CID_PREFIX: [u8; 4] = [0x01, 0x55, 0x12, 0x20];

/// RFC 4648 base32, lower case, no padding: multibase prefix `b`.
static BASE32_LOWER: LazyLock<Encoding> = LazyLock::new(|| {
    let mut spec = data_encoding::Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    spec.encoding().expect("valid base32 spec")
});

/// The content address of a blob: the SHA-256 of its bytes, printed as a CIDv1 (raw, sha2-256,
/// base32 lower: `bafkrei…`). The digest equals `sha256sum` of the file, and `sha256:<hex>` parses
/// to the same id. On chain a model is this digest as `bytes32`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId([u8; 32]);

/// Why a string is not a [`BlobId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{reason}; a blob id is a CIDv1 `bafkrei…` (raw codec, sha2-256, base32 lower) or `sha256:<64 hex digits>`"
)]
pub struct ParseBlobIdError {
    reason: String,
}

impl ParseBlobIdError {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

impl BlobId {
    /// The id of a blob whose SHA-256 digest is `digest`.
    pub const fn from_digest(digest: [u8; 32]) -> Self {
        Self(digest)
    }

    /// The id of `bytes`, hashed in one go (use [`BlobHasher`] for streams).
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// The SHA-256 digest (what `sha256sum` prints, and the on-chain `bytes32`).
    pub const fn digest(&self) -> &[u8; 32] {
        &self.0
    }

    /// The OCI-style spelling, `sha256:<hex>`.
    pub fn to_sha256_string(&self) -> String {
        format!("sha256:{}", data_encoding::HEXLOWER.encode(&self.0))
    }

    fn parse_cid(s: &str) -> Result<Self, ParseBlobIdError> {
        if s.starts_with("Qm") {
            return Err(ParseBlobIdError::new(
                "CIDv0 (dag-pb) ids name IPFS UnixFS graphs, not raw file bytes",
            ));
        }
        let Some(body) = s.strip_prefix('b') else {
            return Err(ParseBlobIdError::new(format!(
                "`{}` is not a base32-lower CID (it must start with `b`)",
                truncate(s)
            )));
        };
        let bytes = BASE32_LOWER
            .decode(body.as_bytes())
            .map_err(|e| ParseBlobIdError::new(format!("CID is not valid base32: {e}")))?;
        if bytes.len() >= 2 && bytes[0] == 0x01 && bytes[1] != 0x55 {
            return Err(ParseBlobIdError::new(format!(
                "CID codec 0x{:02x} is not raw (0x55)",
                bytes[1]
            )));
        }
        if bytes.len() != 36 || bytes[..4] != CID_PREFIX {
            return Err(ParseBlobIdError::new(
                "CID is not a CIDv1 with a 32-byte sha2-256 multihash",
            ));
        }
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&bytes[4..]);
        Ok(Self(digest))
    }

    fn parse_sha256(hex: &str) -> Result<Self, ParseBlobIdError> {
        if hex.len() != 64 {
            return Err(ParseBlobIdError::new(format!(
                "sha256 digest has {} hex digits, not 64",
                hex.len()
            )));
        }
        let bytes = data_encoding::HEXLOWER_PERMISSIVE
            .decode(hex.as_bytes())
            .map_err(|_| ParseBlobIdError::new("sha256 digest is not hexadecimal"))?;
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&bytes);
        Ok(Self(digest))
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(80) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

impl FromStr for BlobId {
    type Err = ParseBlobIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("sha256:") {
            Some(hex) => Self::parse_sha256(hex),
            None => Self::parse_cid(s),
        }
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bytes = [0u8; 36];
        bytes[..4].copy_from_slice(&CID_PREFIX);
        bytes[4..].copy_from_slice(&self.0);
        write!(f, "b{}", BASE32_LOWER.encode(&bytes))
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({self})")
    }
}

impl serde::Serialize for BlobId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for BlobId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for BlobId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("CIDv1 (raw, sha2-256, base32 lower), e.g. `bafkrei…`"))
            .examples(["bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"])
            .into()
    }
}

impl utoipa::ToSchema for BlobId {}

/// Streaming hasher producing a [`BlobId`] in constant memory.
#[derive(Default, Clone)]
pub struct BlobHasher {
    sha: Sha256,
    len: u64,
}

impl BlobHasher {
    /// A hasher with nothing fed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes of the blob.
    pub fn update(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was fed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The id of everything fed.
    pub fn finish(self) -> BlobId {
        BlobId(self.sha.finalize().into())
    }

    /// Hashes a whole reader with a fixed buffer, returning the id and the byte count.
    pub fn hash_reader(mut reader: impl std::io::Read) -> std::io::Result<(BlobId, u64)> {
        let mut hasher = Self::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => hasher.update(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        let len = hasher.len;
        Ok((hasher.finish(), len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors computed independently: `sha256sum` for the digests, and the CID as
    // "b" + base32lower(01 55 12 20 || digest) with Python's base64.b32encode.
    const EMPTY_CID: &str = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
    const EMPTY_SHA: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    // printf 'hello world' | sha256sum
    const HELLO_SHA: &str = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9";
    const HELLO_CID: &str = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e";

    #[test]
    fn empty_file_vector() {
        let id = BlobId::of(b"");
        assert_eq!(id.to_string(), EMPTY_CID);
        assert_eq!(id.to_sha256_string(), format!("sha256:{EMPTY_SHA}"));
        assert_eq!(EMPTY_CID.parse::<BlobId>().unwrap(), id);
    }

    #[test]
    fn small_file_vector_and_both_spellings() {
        let id = BlobId::of(b"hello world");
        assert_eq!(id.to_string(), HELLO_CID);
        assert_eq!(format!("sha256:{HELLO_SHA}").parse::<BlobId>().unwrap(), id);
        assert_eq!(
            format!("sha256:{}", HELLO_SHA.to_uppercase())
                .parse::<BlobId>()
                .unwrap(),
            id
        );
    }

    #[test]
    fn streaming_matches_one_shot() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut h = BlobHasher::new();
        for chunk in data.chunks(4093) {
            h.update(chunk);
        }
        assert_eq!(h.len(), data.len() as u64);
        assert_eq!(h.finish(), BlobId::of(&data));
        let (id, n) = BlobHasher::hash_reader(&data[..]).unwrap();
        assert_eq!((id, n), (BlobId::of(&data), data.len() as u64));
    }

    #[test]
    fn rejects_other_forms_with_accepted_forms_named() {
        for bad in [
            "",
            "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG",
            // CIDv1 dag-pb (0x70) of the empty digest
            "bafybeihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
            "BAFKREIHDWDCEFGH4DQKJV67UZCMW7OJEE6XEDZDETOJUZJEVTENXQUVYKU",
            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyk",
            "sha256:abc",
            "sha256:zz0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
        ] {
            let err = bad.parse::<BlobId>().unwrap_err().to_string();
            assert!(
                err.contains("bafkrei") && err.contains("sha256:"),
                "{bad}: {err}"
            );
        }
        let err = "bafybeihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
            .parse::<BlobId>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("0x70"), "{err}");
    }

    #[test]
    fn serde_round_trip() {
        let id = BlobId::of(b"x");
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<BlobId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<BlobId>("\"nope\"").is_err());
    }
}
