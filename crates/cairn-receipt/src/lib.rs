//! EIP-712 inference receipts.
//!
//! A receipt is the typed-data message below, signed by the node's secp256k1 key under the domain
//! `{name: "Cairn", version: "1", chainId, verifyingContract}`. Its JSON form carries the full
//! typed data (`types`, `primaryType`, `domain`, `message`), the 65-byte signature and the signer,
//! so `eth_account`, viem or alloy verify it with no Cairn code. Beside the signed part it names
//! the model's CID, the full execution profile and the output names, each of which must match
//! the signed hashes for [`SignedReceipt::verify`] to pass.
//!
//! A receipt is sealed one of two ways ([`Seal`]): its own signature over its EIP-712 digest, or
//! (batch-signed) one signature over the EIP-712 [`ReceiptRoot`] of a micro-batch of receipts,
//! with the receipt's OpenZeppelin Merkle proof to that root. The leaves are the receipts'
//! EIP-712 digests under the same OpenZeppelin `StandardMerkleTree` layout the settlement
//! batches use ([`merkle`]), so a batch-signed receipt carries the same leaf a settlement
//! challenge proves; `eth_account` recovers the root's signer and any OpenZeppelin
//! `MerkleProof` implementation checks the proof.

use alloy_primitives::{Address, B256, Signature, U256, keccak256};
use alloy_signer_local::PrivateKeySigner;
use alloy_sol_types::{Eip712Domain, SolStruct, sol};
use cairn_core::sig::SigningKey;
use cairn_core::sig::eip712_digest;

use cairn_core::{BlobId, ExecutionProfile, Reproducibility};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::borrow::Cow;
use std::sync::LazyLock;

pub mod compact;
pub mod merkle;

pub use compact::CompactReceipt;

sol! {
    /// The signed message.
    #[derive(Debug, PartialEq, Eq)]
    struct Receipt {
        bytes32 requestId;
        bytes32 model;
        bytes32 inputHash;
        bytes32 outputHash;
        bytes32 profileHash;
        address node;
        uint64 timestamp;
        uint256 price;
        bytes32 paymentRef;
    }

    /// The signed message of a language-model call: the exact request and response bytes
    /// (SHA-256; for a stream, the whole event-stream transcript), the tokens counted, and
    /// whether the answer was delivered whole.
    #[derive(Debug, PartialEq, Eq)]
    struct LlmReceipt {
        bytes32 requestId;
        bytes32 model;
        bytes32 requestHash;
        bytes32 responseHash;
        uint32 promptTokens;
        uint32 completionTokens;
        bool complete;
        bytes32 profileHash;
        address node;
        uint64 timestamp;
        uint256 price;
        bytes32 paymentRef;
    }

    /// What a node signs for a micro-batch of receipts: the OpenZeppelin `StandardMerkleTree`
    /// root over their EIP-712 digests, and how many there are.
    #[derive(Debug, PartialEq, Eq)]
    struct ReceiptRoot {
        bytes32 root;
        uint32 count;
    }
}

/// The chain half of the EIP-712 domain (from configuration; the settlement contract later).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReceiptDomain {
    /// EIP-155 chain id.
    pub chain_id: u64,
    /// The contract receipts are addressed to.
    pub verifying_contract: Address,
}

impl ReceiptDomain {
    /// The EIP-712 domain separator. Every receipt a verifier checks has one of very few
    /// domains, so the last one computed on each thread is kept.
    pub fn separator(&self) -> B256 {
        thread_local! {
            static LAST: std::cell::Cell<Option<(ReceiptDomain, B256)>> =
                const { std::cell::Cell::new(None) };
        }
        LAST.with(|last| match last.get() {
            Some((d, sep)) if d == *self => sep,
            _ => {
                let sep = self.eip712().separator();
                last.set(Some((*self, sep)));
                sep
            }
        })
    }

    fn eip712(&self) -> Eip712Domain {
        Eip712Domain::new(
            Some("Cairn".into()),
            Some("1".into()),
            Some(U256::from(self.chain_id)),
            Some(self.verifying_contract),
            None,
        )
    }
}

/// What a node claims about one inference, before signing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// Unique per inference; the receipt's id.
    pub request_id: B256,
    /// The exact model file.
    pub model: BlobId,
    /// [`cairn_core::tensor::tensors_hash`] of the inputs.
    pub input_hash: B256,
    /// [`cairn_core::tensor::tensors_hash`] of every output the model produced (also when the
    /// caller asked for fewer), so re-execution needs nothing but the input.
    pub output_hash: B256,
    /// How the model ran.
    pub profile: ExecutionProfile,
    /// Seconds since the Unix epoch.
    pub timestamp: u64,
    /// Price charged, in the payment token's smallest unit.
    pub price: U256,
    /// The payment this inference was paid with (zero when unpaid).
    pub payment_ref: B256,
    /// A language-model call's usage: the receipt is then an [`LlmReceipt`], `input_hash` the
    /// SHA-256 of the exact request body and `output_hash` that of the exact response bytes.
    pub llm: Option<LlmUsage>,
}

/// What a language-model receipt counts beside its hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LlmUsage {
    /// Tokens of the prompt as the model saw it (chat template applied).
    pub prompt_tokens: u32,
    /// Tokens generated and delivered.
    pub completion_tokens: u32,
    /// Whether the answer was delivered whole (false: the stream broke off, and the response
    /// bytes are what was sent before it did).
    pub complete: bool,
}

/// A signed receipt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedReceipt {
    /// The claims.
    pub claims: Claims,
    /// The domain it was signed under.
    pub domain: ReceiptDomain,
    /// The node that signed it.
    pub signer: Address,
    /// How the node signed it.
    pub seal: Seal,
}

/// How a receipt is signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seal {
    /// The node signed this receipt's EIP-712 digest: 65 bytes `r ‖ s ‖ v`, `v` in {27, 28}.
    Own([u8; 65]),
    /// The node signed the root of a micro-batch that holds this receipt.
    Batch(BatchSeal),
}

/// A batch-signed receipt's evidence: the signed [`ReceiptRoot`] and the receipt's path to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchSeal {
    /// The micro-batch's Merkle root (OpenZeppelin `StandardMerkleTree` over receipt digests).
    pub root: B256,
    /// How many receipts the micro-batch holds.
    pub count: u32,
    /// The node's 65-byte signature over the root's EIP-712 digest.
    pub signature: [u8; 65],
    /// The receipt's sibling path to `root` (OpenZeppelin `MerkleProof`).
    pub proof: Vec<B256>,
}

/// Root signatures already recovered: receipts checked through one cache cost one signature
/// recovery per micro-batch, not per receipt.
#[derive(Debug, Default)]
pub struct SealCache {
    /// (the domain, root and count signed, the signature) → the address it recovers to.
    recovered: std::collections::HashMap<(ReceiptDomain, B256, u32, [u8; 65]), Address>,
}

impl SealCache {
    /// How many distinct root signatures were recovered.
    pub fn roots(&self) -> usize {
        self.recovered.len()
    }

    /// Who signed `seal`'s root under `domain`, recovered once per distinct root signature.
    fn recover_root(
        &mut self,
        domain: &ReceiptDomain,
        seal: &BatchSeal,
    ) -> Result<Address, ReceiptError> {
        let key = (*domain, seal.root, seal.count, seal.signature);
        if let Some(a) = self.recovered.get(&key) {
            return Ok(*a);
        }
        let sig = parse_sig("batchSignature.signature", &seal.signature)?;
        let a = recover(&sig, &root_digest(domain, seal.root, seal.count))?;
        self.recovered.insert(key, a);
        Ok(a)
    }
}

/// How deep a tree of `count` leaves is: ceil(log2 count), the longest proof it has.
fn tree_depth(count: u32) -> usize {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros() as usize
    }
}

/// A 65-byte `r ‖ s ‖ v` signature with v 27 or 28 and s in the lower half order (the malleable
/// high-s twin is refused so one signature has one form).
fn parse_sig(field: &str, signature: &[u8; 65]) -> Result<Signature, ReceiptError> {
    if !(27..=28).contains(&signature[64]) {
        return Err(ReceiptError::Signature(format!(
            "`{field}`: v must be 27 or 28"
        )));
    }
    let sig = Signature::from_raw(signature).map_err(|e| ReceiptError::Signature(e.to_string()))?;
    if sig.normalize_s().is_some() {
        return Err(ReceiptError::Signature(format!(
            "`{field}`: s is not in the lower half order"
        )));
    }
    Ok(sig)
}

fn recover(sig: &Signature, hash: &B256) -> Result<Address, ReceiptError> {
    cairn_core::sig::recover_prehash(sig, hash).map_err(|e| ReceiptError::Signature(e.to_string()))
}

/// Why a receipt is refused.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    /// Not the receipt JSON shape, or a field is not in canonical form.
    #[error("malformed receipt: {0}")]
    Malformed(String),
    /// The signature does not recover to the stated signer.
    #[error("bad signature: {0}")]
    Signature(String),
    /// A stated field does not match what the signed message binds.
    #[error("inconsistent receipt: {0}")]
    Inconsistent(String),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(String),
}

impl Claims {
    /// The EIP-712 `hashStruct` of the message these claims sign as `node`.
    fn struct_hash(&self, node: Address) -> B256 {
        keccak256(self.struct_encoding(node).as_slice())
    }

    /// What [`Claims::struct_hash`] hashes: the message's type hash and its static words.
    pub(crate) fn struct_encoding(&self, node: Address) -> StructEncoding {
        match &self.llm {
            None => StructEncoding::Tensor(encode_struct(&self.message(node))),
            Some(u) => StructEncoding::Llm(encode_llm_struct(&self.llm_message(node, u))),
        }
    }

    /// The EIP-712 digest these claims are signed under as `node`.
    fn digest(&self, separator: &B256, node: Address) -> B256 {
        eip712_digest(separator, &self.struct_hash(node))
    }

    fn llm_message(&self, node: Address, u: &LlmUsage) -> LlmReceipt {
        LlmReceipt {
            requestId: self.request_id,
            model: B256::from(*self.model.digest()),
            requestHash: self.input_hash,
            responseHash: self.output_hash,
            promptTokens: u.prompt_tokens,
            completionTokens: u.completion_tokens,
            complete: u.complete,
            profileHash: profile_hash(&self.profile),
            node,
            timestamp: self.timestamp,
            price: self.price,
            paymentRef: self.payment_ref,
        }
    }

    fn message(&self, node: Address) -> Receipt {
        Receipt {
            requestId: self.request_id,
            model: B256::from(*self.model.digest()),
            inputHash: self.input_hash,
            outputHash: self.output_hash,
            profileHash: profile_hash(&self.profile),
            node,
            timestamp: self.timestamp,
            price: self.price,
            paymentRef: self.payment_ref,
        }
    }

    /// Signs the claims as `signer` (a node signing many receipts keeps a [`ReceiptSigner`]).
    pub fn sign(
        self,
        domain: ReceiptDomain,
        signer: &PrivateKeySigner,
    ) -> Result<SignedReceipt, ReceiptError> {
        Ok(ReceiptSigner::new(SigningKey::from_signer(signer), domain).sign(self))
    }
}

/// The EIP-712 digest of a micro-batch root under `domain`.
pub fn root_digest(domain: &ReceiptDomain, root: B256, count: u32) -> B256 {
    static TYPE_HASH: LazyLock<B256> =
        LazyLock::new(|| keccak256(ReceiptRoot::eip712_encode_type().as_bytes()));
    let mut buf = [0u8; 96];
    buf[..32].copy_from_slice(TYPE_HASH.as_slice());
    buf[32..64].copy_from_slice(root.as_slice());
    buf[92..96].copy_from_slice(&count.to_be_bytes());
    eip712_digest(&domain.separator(), &keccak256(buf))
}

/// The EIP-712 signing hash of each of `claims` (signed as its node, under its domain's
/// separator), in order: [`Claims::digest`] of each, hashed four abreast where the CPU allows
/// ([`cairn_core::keccak4`]).
pub(crate) fn digests<'a>(
    claims: impl IntoIterator<Item = (&'a Claims, Address, B256)>,
) -> Vec<B256> {
    let parts: Vec<(StructEncoding, B256)> = claims
        .into_iter()
        .map(|(c, node, separator)| (c.struct_encoding(node), separator))
        .collect();
    let mut hashes = vec![B256::ZERO; parts.len()];
    let inputs: Vec<&[u8]> = parts.iter().map(|(e, _)| e.as_slice()).collect();
    cairn_core::keccak4::keccak256_many(&inputs, &mut hashes);
    let signing: Vec<[u8; 66]> = parts
        .iter()
        .zip(&hashes)
        .map(|((_, separator), h)| cairn_core::sig::eip712_encoding(separator, h))
        .collect();
    let inputs: Vec<&[u8]> = signing.iter().map(|b| &b[..]).collect();
    cairn_core::keccak4::keccak256_many(&inputs, &mut hashes);
    hashes
}

/// A receipt message's EIP-712 encoding (type hash, then every field as a word), by kind.
pub(crate) enum StructEncoding {
    Tensor([u8; 320]),
    Llm([u8; 416]),
}

impl StructEncoding {
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Self::Tensor(b) => b,
            Self::Llm(b) => b,
        }
    }
}

/// EIP-712 `hashStruct` of a receipt.
#[cfg(test)]
fn struct_hash(m: &Receipt) -> B256 {
    keccak256(encode_struct(m))
}

/// What a receipt's `hashStruct` hashes: every field is one static 32-byte word, so its
/// encoding is ten words under a type hash computed once (the value alloy's
/// `eip712_hash_struct` gives, without re-deriving the type string per receipt).
fn encode_struct(m: &Receipt) -> [u8; 320] {
    static TYPE_HASH: LazyLock<B256> =
        LazyLock::new(|| keccak256(Receipt::eip712_encode_type().as_bytes()));
    let mut buf = [0u8; 320];
    buf[..32].copy_from_slice(TYPE_HASH.as_slice());
    buf[32..64].copy_from_slice(m.requestId.as_slice());
    buf[64..96].copy_from_slice(m.model.as_slice());
    buf[96..128].copy_from_slice(m.inputHash.as_slice());
    buf[128..160].copy_from_slice(m.outputHash.as_slice());
    buf[160..192].copy_from_slice(m.profileHash.as_slice());
    buf[204..224].copy_from_slice(m.node.as_slice());
    buf[248..256].copy_from_slice(&m.timestamp.to_be_bytes());
    buf[256..288].copy_from_slice(&m.price.to_be_bytes::<32>());
    buf[288..320].copy_from_slice(m.paymentRef.as_slice());
    buf
}

/// EIP-712 `hashStruct` of a language-model receipt.
#[cfg(test)]
fn llm_struct_hash(m: &LlmReceipt) -> B256 {
    keccak256(encode_llm_struct(m))
}

/// What a language-model receipt's `hashStruct` hashes: twelve static words under its type
/// hash.
fn encode_llm_struct(m: &LlmReceipt) -> [u8; 416] {
    static TYPE_HASH: LazyLock<B256> =
        LazyLock::new(|| keccak256(LlmReceipt::eip712_encode_type().as_bytes()));
    let mut buf = [0u8; 416];
    buf[..32].copy_from_slice(TYPE_HASH.as_slice());
    buf[32..64].copy_from_slice(m.requestId.as_slice());
    buf[64..96].copy_from_slice(m.model.as_slice());
    buf[96..128].copy_from_slice(m.requestHash.as_slice());
    buf[128..160].copy_from_slice(m.responseHash.as_slice());
    buf[188..192].copy_from_slice(&m.promptTokens.to_be_bytes());
    buf[220..224].copy_from_slice(&m.completionTokens.to_be_bytes());
    buf[255] = u8::from(m.complete);
    buf[256..288].copy_from_slice(m.profileHash.as_slice());
    buf[300..320].copy_from_slice(m.node.as_slice());
    buf[344..352].copy_from_slice(&m.timestamp.to_be_bytes());
    buf[352..384].copy_from_slice(&m.price.to_be_bytes::<32>());
    buf[384..416].copy_from_slice(m.paymentRef.as_slice());
    buf
}

/// A node's receipt signer: its key (libsecp256k1) and the domain. Signing a receipt costs one
/// struct hash and one ECDSA signature (the domain separator is kept, see
/// [`ReceiptDomain::separator`]); with [`Self::presigned`], the signature's nonce is made ahead
/// of time.
#[derive(Clone, Debug)]
pub struct ReceiptSigner {
    key: SigningKey,
    domain: ReceiptDomain,
    presigner: Option<cairn_core::presign::Presigner>,
}

impl ReceiptSigner {
    /// Signs with `key` under `domain`.
    pub fn new(key: SigningKey, domain: ReceiptDomain) -> Self {
        Self {
            key,
            domain,
            presigner: None,
        }
    }

    /// The same signer, its nonces made ahead of time on a thread of its own (a receipt's
    /// signature then costs about a microsecond on the answer's path instead of ~20; see
    /// [`cairn_core::presign`]). A digest signed twice gets two different valid signatures.
    pub fn presigned(self) -> std::io::Result<Self> {
        let presigner = cairn_core::presign::Presigner::new(self.key.clone())?;
        Ok(Self {
            presigner: Some(presigner),
            ..self
        })
    }

    /// Whether the presigned nonces are locked in memory, out of swap (`None`: not
    /// [`Self::presigned`]).
    pub fn presign_locked(&self) -> Option<bool> {
        self.presigner.as_ref().map(|p| p.locked())
    }

    /// Signatures made with a presigned nonce and with RFC 6979 instead (`None`: not
    /// [`Self::presigned`]).
    pub fn presign_counts(&self) -> Option<(u64, u64)> {
        self.presigner.as_ref().map(|p| p.counts())
    }

    /// Signs a digest with the pool's nonce, or the key's own RFC 6979 one.
    fn sign_prehash(&self, hash: &B256) -> Signature {
        match &self.presigner {
            Some(p) => p.sign_prehash(hash),
            None => self.key.sign_prehash(hash),
        }
    }

    /// The signing node's address.
    pub fn address(&self) -> Address {
        self.key.address()
    }

    /// The domain receipts are signed under.
    pub fn domain(&self) -> ReceiptDomain {
        self.domain
    }

    /// Signs `claims`.
    pub fn sign(&self, claims: Claims) -> SignedReceipt {
        self.sign_with_digest(claims).0
    }

    /// Signs `claims`, returning the signed digest too ([`SignedReceipt::signing_hash`], the
    /// receipt's Merkle leaf) so the caller need not hash it again.
    pub fn sign_with_digest(&self, claims: Claims) -> (SignedReceipt, B256) {
        let node = self.key.address();
        let hash = claims.digest(&self.domain.separator(), node);
        let sig = self.sign_prehash(&hash);
        let receipt = SignedReceipt {
            claims,
            domain: self.domain,
            signer: node,
            seal: Seal::Own(sig.as_bytes()),
        };
        (receipt, hash)
    }

    /// The EIP-712 digest `claims` will be signed under (a batch's Merkle leaf value).
    pub fn digest(&self, claims: &Claims) -> B256 {
        claims.digest(&self.domain.separator(), self.key.address())
    }

    /// Signs a micro-batch with one signature: the [`ReceiptRoot`] of the tree over the
    /// receipts' digests (computed here: the key commits only to receipts it has seen), every
    /// receipt sealed with the signed root and its proof. Receipts come back in the order given.
    pub fn sign_batch(&self, batch: Vec<Claims>) -> Result<Vec<SignedReceipt>, merkle::TreeError> {
        let (node, separator) = (self.key.address(), self.domain.separator());
        let digests = digests(batch.iter().map(|c| (c, node, separator)));
        let tree = merkle::ReceiptTree::new(&digests)?;
        let count = u32::try_from(batch.len()).map_err(|_| merkle::TreeError::TooLarge)?;
        let root = tree.root();
        let signature = self
            .sign_prehash(&root_digest(&self.domain, root, count))
            .as_bytes();
        let node = self.key.address();
        Ok(batch
            .into_iter()
            .zip(digests)
            .map(|(claims, digest)| SignedReceipt {
                claims,
                domain: self.domain,
                signer: node,
                seal: Seal::Batch(BatchSeal {
                    root,
                    count,
                    signature,
                    proof: tree.proof(digest).expect("a leaf of the tree"),
                }),
            })
            .collect())
    }
}

/// The receipt JSON, field for field (what is served and written to files).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Wire {
    typed_data: TypedData<WireMessage>,
    /// The receipt's own signature (absent when batch-signed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signature: Option<String>,
    /// The signed micro-batch root and the receipt's proof (absent when signed on its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    batch_signature: Option<WireBatchSeal>,
    signer: String,
    model_cid: String,
    profile: ExecutionProfile,
    reproducibility: Reproducibility,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TypedData<M> {
    /// Compared as text first (what every Cairn node writes), as JSON only when the text differs.
    types: Cow<'static, RawValue>,
    primary_type: String,
    domain: WireDomain,
    message: M,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WireBatchSeal {
    typed_data: TypedData<WireRoot>,
    signature: String,
    proof: Vec<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WireRoot {
    root: String,
    count: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WireDomain {
    name: String,
    version: String,
    chain_id: u64,
    verifying_contract: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WireMessage {
    request_id: String,
    model: String,
    /// A tensor receipt's (`Receipt`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    input_hash: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    output_hash: Option<String>,
    /// A language-model receipt's (`LlmReceipt`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    request_hash: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    response_hash: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    prompt_tokens: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    completion_tokens: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    complete: Option<bool>,
    profile_hash: String,
    node: String,
    timestamp: u64,
    price: String,
    payment_ref: String,
}

/// An optional field that, when present, holds a value: `null` is not a second spelling of
/// "absent".
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// The receipt's EIP-712 `types`, built once.
fn types() -> &'static Value {
    static TYPES: LazyLock<Value> = LazyLock::new(build_types);
    &TYPES
}

/// The same, as the compact JSON text nodes write.
fn types_raw() -> &'static RawValue {
    static RAW: LazyLock<Box<RawValue>> =
        LazyLock::new(|| serde_json::value::to_raw_value(types()).expect("types serialize"));
    &RAW
}

/// The language-model receipt's EIP-712 `types`, built once.
fn llm_types() -> &'static Value {
    static TYPES: LazyLock<Value> = LazyLock::new(|| {
        let field = |name: &str, ty: &str| json!({"name": name, "type": ty});
        json!({
            "EIP712Domain": domain_fields(),
            "LlmReceipt": [
                field("requestId", "bytes32"),
                field("model", "bytes32"),
                field("requestHash", "bytes32"),
                field("responseHash", "bytes32"),
                field("promptTokens", "uint32"),
                field("completionTokens", "uint32"),
                field("complete", "bool"),
                field("profileHash", "bytes32"),
                field("node", "address"),
                field("timestamp", "uint64"),
                field("price", "uint256"),
                field("paymentRef", "bytes32"),
            ],
        })
    });
    &TYPES
}

/// The same, as the compact JSON text nodes write.
fn llm_types_raw() -> &'static RawValue {
    static RAW: LazyLock<Box<RawValue>> =
        LazyLock::new(|| serde_json::value::to_raw_value(llm_types()).expect("types serialize"));
    &RAW
}

/// The micro-batch root's EIP-712 `types`, built once.
fn root_types() -> &'static Value {
    static TYPES: LazyLock<Value> = LazyLock::new(|| {
        json!({
            "EIP712Domain": domain_fields(),
            "ReceiptRoot": [
                {"name": "root", "type": "bytes32"},
                {"name": "count", "type": "uint32"},
            ],
        })
    });
    &TYPES
}

/// The same, as the compact JSON text nodes write.
fn root_types_raw() -> &'static RawValue {
    static RAW: LazyLock<Box<RawValue>> =
        LazyLock::new(|| serde_json::value::to_raw_value(root_types()).expect("types serialize"));
    &RAW
}

fn domain_fields() -> Value {
    let field = |name: &str, ty: &str| json!({"name": name, "type": ty});
    json!([
        field("name", "string"),
        field("version", "string"),
        field("chainId", "uint256"),
        field("verifyingContract", "address"),
    ])
}

fn build_types() -> Value {
    let field = |name: &str, ty: &str| json!({"name": name, "type": ty});
    json!({
        "EIP712Domain": domain_fields(),
        "Receipt": [
            field("requestId", "bytes32"),
            field("model", "bytes32"),
            field("inputHash", "bytes32"),
            field("outputHash", "bytes32"),
            field("profileHash", "bytes32"),
            field("node", "address"),
            field("timestamp", "uint64"),
            field("price", "uint256"),
            field("paymentRef", "bytes32"),
        ],
    })
}

/// Lower-case `0x` hex, exactly 32 bytes; any other spelling is refused so that a receipt has one
/// textual form.
fn parse_b256(field: &str, s: &str) -> Result<B256, ReceiptError> {
    let ok = s.len() == 66
        && s.starts_with("0x")
        && s[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !ok {
        return Err(ReceiptError::Malformed(format!(
            "`{field}` must be 0x and 64 lower-case hex digits"
        )));
    }
    s.parse()
        .map_err(|e| ReceiptError::Malformed(format!("`{field}`: {e}")))
}

/// An EIP-55 checksummed address, nothing else. A receipt names a few addresses (node,
/// contract) that repeat across every receipt a verifier reads, so the last spellings that
/// passed on this thread are remembered (checking a checksum costs a Keccak).
fn parse_address(field: &str, s: &str) -> Result<Address, ReceiptError> {
    const KEPT: usize = 4;
    thread_local! {
        static PASSED: std::cell::RefCell<[Option<(String, Address)>; KEPT]> =
            const { std::cell::RefCell::new([const { None }; KEPT]) };
    }
    let hit = PASSED.with_borrow(|kept| {
        kept.iter()
            .flatten()
            .find(|(text, _)| text == s)
            .map(|(_, a)| *a)
    });
    if let Some(a) = hit {
        return Ok(a);
    }
    let a = Address::parse_checksummed(s, None).map_err(|e| {
        ReceiptError::Malformed(format!(
            "`{field}` must be an EIP-55 checksummed address: {e}"
        ))
    })?;
    PASSED.with_borrow_mut(|kept| {
        kept.rotate_right(1);
        kept[0] = Some((s.to_owned(), a));
    });
    Ok(a)
}

/// [`ExecutionProfile::hash`], remembering the last profile hashed on this thread (a node's
/// receipts all name the same one).
fn profile_hash(profile: &ExecutionProfile) -> B256 {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(ExecutionProfile, B256)>> =
            const { std::cell::RefCell::new(None) };
    }
    // A profile of real size only: a hostile one is hashed, not kept.
    let small = profile.engine.len() + profile.engine_version.len() + profile.isa.len() <= 1024;
    LAST.with_borrow_mut(|last| match last {
        Some((p, h)) if p == profile => *h,
        _ => {
            let h = profile.hash();
            if small {
                *last = Some((profile.clone(), h));
            }
            h
        }
    })
}

/// A receipt's signed message, by kind.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    /// An inference on tensors.
    Tensor(Receipt),
    /// A language-model call.
    Llm(LlmReceipt),
}

/// A receipt's JSON form as a node stored or sent it, not checked yet: what crosses a trust
/// boundary before [`ReceiptJson::verify`] makes it a [`SignedReceipt`]. Serving one costs no
/// signature recovery.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReceiptJson(Box<serde_json::value::RawValue>);

impl ReceiptJson {
    /// Wraps stored JSON text (it must be JSON; it is not verified).
    pub fn from_text(text: String) -> Result<Self, ReceiptError> {
        serde_json::value::RawValue::from_string(text)
            .map(Self)
            .map_err(|e| ReceiptError::Malformed(e.to_string()))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// Parses and checks it ([`SignedReceipt::verify_json`]).
    pub fn verify(&self) -> Result<SignedReceipt, ReceiptError> {
        Ok(self.verify_with_digest()?.0)
    }

    /// [`ReceiptJson::verify`], also returning the EIP-712 digest the signature covers (the
    /// receipt's Merkle leaf), which the check computed anyway.
    pub fn verify_with_digest(&self) -> Result<(SignedReceipt, B256), ReceiptError> {
        self.verify_cached(&mut SealCache::default())
    }

    /// [`ReceiptJson::verify_with_digest`] for one of many receipts: a micro-batch root whose
    /// signature `cache` has already recovered is not recovered again.
    pub fn verify_cached(
        &self,
        cache: &mut SealCache,
    ) -> Result<(SignedReceipt, B256), ReceiptError> {
        SignedReceipt::read_wire(self.wire()?, Some(cache))
    }

    /// Parsed strictly and hashed as [`ReceiptJson::verify`] does, its seal held to its
    /// canonical form but not checked ([`compact::read_entries`] says when that is enough).
    pub fn read(&self) -> Result<compact::Verified, ReceiptError> {
        let (receipt, digest) = SignedReceipt::read_wire(self.wire()?, None)?;
        Ok(compact::Verified {
            receipt,
            digest,
            leaf: merkle::leaf(digest),
        })
    }

    fn wire(&self) -> Result<Wire, ReceiptError> {
        serde_json::from_str(self.0.get()).map_err(|e| ReceiptError::Malformed(e.to_string()))
    }
}

impl PartialEq for ReceiptJson {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for ReceiptJson {}

impl From<&SignedReceipt> for ReceiptJson {
    fn from(r: &SignedReceipt) -> Self {
        Self(serde_json::value::to_raw_value(&r.wire()).expect("receipt serializes"))
    }
}

/// The JSON form ([`SignedReceipt::to_json`]).
impl Serialize for SignedReceipt {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.wire().serialize(s)
    }
}

/// Reads only receipts that verify ([`ReceiptJson::verify`]): a typed receipt is one whose
/// signature and stated fields were checked. From the JSON text as written, so a key given
/// twice is refused (a JSON value would keep one of them silently, and readers differ in which).
impl<'de> Deserialize<'de> for SignedReceipt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        ReceiptJson(raw).verify().map_err(serde::de::Error::custom)
    }
}

impl SignedReceipt {
    /// The receipt's id (its request id).
    pub fn id(&self) -> B256 {
        self.claims.request_id
    }

    /// The signed EIP-712 message (what a settlement challenge carries): a tensor receipt's
    /// [`Receipt`] or a language-model call's [`LlmReceipt`].
    pub fn message(&self) -> Message {
        match &self.claims.llm {
            None => Message::Tensor(self.claims.message(self.signer)),
            Some(u) => Message::Llm(self.claims.llm_message(self.signer, u)),
        }
    }

    /// The EIP-712 signing hash (what the signature covers; its batch's Merkle leaf).
    pub fn signing_hash(&self) -> B256 {
        self.claims.digest(&self.domain.separator(), self.signer)
    }

    /// The JSON form.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.wire()).expect("receipt serializes")
    }

    fn wire_domain(&self) -> WireDomain {
        WireDomain {
            name: "Cairn".into(),
            version: "1".into(),
            chain_id: self.domain.chain_id,
            verifying_contract: self.domain.verifying_contract.to_checksum(None),
        }
    }

    fn wire(&self) -> Wire {
        let c = &self.claims;
        let hash = |h: &B256| Some(h.to_string());
        let (types, primary_type, input_hash, output_hash, request_hash, response_hash) =
            match &c.llm {
                None => (
                    types_raw(),
                    "Receipt",
                    hash(&c.input_hash),
                    hash(&c.output_hash),
                    None,
                    None,
                ),
                Some(_) => (
                    llm_types_raw(),
                    "LlmReceipt",
                    None,
                    None,
                    hash(&c.input_hash),
                    hash(&c.output_hash),
                ),
            };
        Wire {
            typed_data: TypedData {
                types: Cow::Borrowed(types),
                primary_type: primary_type.into(),
                domain: self.wire_domain(),
                message: WireMessage {
                    request_id: c.request_id.to_string(),
                    model: B256::from(*c.model.digest()).to_string(),
                    input_hash,
                    output_hash,
                    request_hash,
                    response_hash,
                    prompt_tokens: c.llm.map(|u| u.prompt_tokens),
                    completion_tokens: c.llm.map(|u| u.completion_tokens),
                    complete: c.llm.map(|u| u.complete),
                    profile_hash: profile_hash(&c.profile).to_string(),
                    node: self.signer.to_checksum(None),
                    timestamp: c.timestamp,
                    price: c.price.to_string(),
                    payment_ref: c.payment_ref.to_string(),
                },
            },
            signature: match &self.seal {
                Seal::Own(sig) => Some(sig_hex(sig)),
                Seal::Batch(_) => None,
            },
            batch_signature: match &self.seal {
                Seal::Own(_) => None,
                Seal::Batch(b) => Some(WireBatchSeal {
                    typed_data: TypedData {
                        types: Cow::Borrowed(root_types_raw()),
                        primary_type: "ReceiptRoot".into(),
                        domain: self.wire_domain(),
                        message: WireRoot {
                            root: b.root.to_string(),
                            count: b.count,
                        },
                    },
                    signature: sig_hex(&b.signature),
                    proof: b.proof.iter().map(|p| p.to_string()).collect(),
                }),
            },
            signer: self.signer.to_checksum(None),
            model_cid: self.claims.model.to_string(),
            profile: self.claims.profile.clone(),
            reproducibility: self.claims.profile.reproducibility(),
        }
    }

    /// Parses the JSON form and checks everything a receipt alone can prove: canonical
    /// spelling, the signature recovering to the signer, the signer being the message's node,
    /// and the stated CID and profile matching the signed hashes. A `Value` has already kept
    /// one copy of any key given twice: read untrusted text with [`ReceiptJson`] (or serde
    /// into [`SignedReceipt`]), which refuses it.
    pub fn verify_json(value: &Value) -> Result<SignedReceipt, ReceiptError> {
        ReceiptJson::from_text(value.to_string())?.verify()
    }

    /// The receipt `wire` spells and its digest; its seal checked with `seals` when given.
    fn read_wire(
        wire: Wire,
        seals: Option<&mut SealCache>,
    ) -> Result<(SignedReceipt, B256), ReceiptError> {
        let (message, domain) = parse_typed_data(&wire.typed_data)?;
        let signer = parse_address("signer", &wire.signer)?;
        let model = check_unsigned_fields(&wire, &message)?;
        let claims = Claims {
            request_id: message.request_id,
            model,
            input_hash: message.input_hash,
            output_hash: message.output_hash,
            profile: wire.profile,
            timestamp: message.timestamp,
            price: message.price,
            payment_ref: message.payment_ref,
            llm: message.llm,
        };
        let node = message.node;
        let hash = claims.digest(&domain.separator(), node);
        let (seal, recovered) = match (&wire.signature, &wire.batch_signature) {
            (Some(text), None) => {
                let (signature, sig) = parse_signature("signature", text)?;
                let recovered = match seals {
                    Some(_) => Some(recover(&sig, &hash)?),
                    None => None,
                };
                (Seal::Own(signature), recovered)
            }
            (None, Some(b)) => {
                let seal = parse_batch_seal(b, &domain)?;
                let recovered = match seals {
                    Some(cache) => {
                        if !merkle::verify(seal.root, hash, &seal.proof) {
                            return Err(ReceiptError::Inconsistent(
                                "the receipt is not in the signed batch root under its proof"
                                    .into(),
                            ));
                        }
                        Some(cache.recover_root(&domain, &seal)?)
                    }
                    None => None,
                };
                (Seal::Batch(seal), recovered)
            }
            _ => {
                return Err(ReceiptError::Malformed(
                    "a receipt carries exactly one of `signature` and `batchSignature`".into(),
                ));
            }
        };
        if let Some(recovered) = recovered
            && recovered != signer
        {
            return Err(ReceiptError::Signature(format!(
                "signed by {recovered}, not by the stated signer {signer}"
            )));
        }
        if node != signer {
            return Err(ReceiptError::Inconsistent(format!(
                "the message names node {node} but {signer} signed it"
            )));
        }
        let receipt = SignedReceipt {
            claims,
            domain,
            signer,
            seal,
        };
        Ok((receipt, hash))
    }
}

/// A receipt's signed message as its `typedData` spells it (either kind).
struct Parsed {
    request_id: B256,
    model: B256,
    input_hash: B256,
    output_hash: B256,
    profile_hash: B256,
    node: Address,
    timestamp: u64,
    price: U256,
    payment_ref: B256,
    llm: Option<LlmUsage>,
}

/// The signed message and domain of a receipt's `typedData`, in their one canonical spelling.
fn parse_typed_data(td: &TypedData<WireMessage>) -> Result<(Parsed, ReceiptDomain), ReceiptError> {
    let m = &td.message;
    let llm = td.primary_type == "LlmReceipt";
    if llm {
        check_types(
            td,
            llm_types_raw(),
            llm_types(),
            "LlmReceipt",
            "the Cairn language-model receipt type",
        )?;
    } else {
        check_types(
            td,
            types_raw(),
            types(),
            "Receipt",
            "the Cairn receipt type",
        )?;
    }
    // Each kind spells exactly its own fields.
    let fields = |name: &str, v: &Option<String>| {
        v.as_deref()
            .ok_or_else(|| ReceiptError::Malformed(format!("`{name}` is missing")))
            .and_then(|s| parse_b256(name, s))
    };
    let stray = |name: &str, present: bool| {
        if present {
            Err(ReceiptError::Malformed(format!(
                "`{name}` is not a field of a {}",
                td.primary_type
            )))
        } else {
            Ok(())
        }
    };
    let (input_hash, output_hash, usage) = if llm {
        stray("inputHash", m.input_hash.is_some())?;
        stray("outputHash", m.output_hash.is_some())?;
        let (Some(prompt_tokens), Some(completion_tokens), Some(complete)) =
            (m.prompt_tokens, m.completion_tokens, m.complete)
        else {
            return Err(ReceiptError::Malformed(
                "an LlmReceipt names promptTokens, completionTokens and complete".into(),
            ));
        };
        (
            fields("requestHash", &m.request_hash)?,
            fields("responseHash", &m.response_hash)?,
            Some(LlmUsage {
                prompt_tokens,
                completion_tokens,
                complete,
            }),
        )
    } else {
        stray("requestHash", m.request_hash.is_some())?;
        stray("responseHash", m.response_hash.is_some())?;
        stray(
            "promptTokens/completionTokens/complete",
            m.prompt_tokens.is_some() || m.completion_tokens.is_some() || m.complete.is_some(),
        )?;
        (
            fields("inputHash", &m.input_hash)?,
            fields("outputHash", &m.output_hash)?,
            None,
        )
    };
    if m.price.starts_with('0') && m.price != "0" || !m.price.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ReceiptError::Malformed(
            "`price` must be a decimal integer without leading zeros".into(),
        ));
    }
    let price = U256::from_str_radix(&m.price, 10)
        .map_err(|e| ReceiptError::Malformed(format!("`price`: {e}")))?;
    let message = Parsed {
        request_id: parse_b256("requestId", &m.request_id)?,
        model: parse_b256("model", &m.model)?,
        input_hash,
        output_hash,
        profile_hash: parse_b256("profileHash", &m.profile_hash)?,
        node: parse_address("node", &m.node)?,
        timestamp: m.timestamp,
        price,
        payment_ref: parse_b256("paymentRef", &m.payment_ref)?,
        llm: usage,
    };
    Ok((message, parse_domain(&td.domain)?))
}

/// `types`, `primaryType` and the domain's name and version are the ones Cairn signs under.
fn check_types<M>(
    td: &TypedData<M>,
    raw: &RawValue,
    parsed: &Value,
    primary: &str,
    what: &str,
) -> Result<(), ReceiptError> {
    if td.types.get() != raw.get()
        && serde_json::from_str::<Value>(td.types.get()).ok().as_ref() != Some(parsed)
    {
        return Err(ReceiptError::Malformed(format!("`types` is not {what}")));
    }
    if td.primary_type != primary || td.domain.name != "Cairn" || td.domain.version != "1" {
        return Err(ReceiptError::Malformed(format!(
            "not a Cairn v1 {primary} (primaryType/domain)"
        )));
    }
    Ok(())
}

fn parse_domain(d: &WireDomain) -> Result<ReceiptDomain, ReceiptError> {
    Ok(ReceiptDomain {
        chain_id: d.chain_id,
        verifying_contract: parse_address("verifyingContract", &d.verifying_contract)?,
    })
}

/// A batch seal in its one canonical spelling, its signature in canonical form. The root must be
/// signed under the receipt's own domain, and the proof can be no longer than a tree of
/// `count` leaves is deep.
fn parse_batch_seal(
    b: &WireBatchSeal,
    receipt_domain: &ReceiptDomain,
) -> Result<BatchSeal, ReceiptError> {
    let td = &b.typed_data;
    check_types(
        td,
        root_types_raw(),
        root_types(),
        "ReceiptRoot",
        "the Cairn receipt root type",
    )
    .map_err(|e| ReceiptError::Malformed(format!("`batchSignature`: {e}")))?;
    if parse_domain(&td.domain)? != *receipt_domain {
        return Err(ReceiptError::Inconsistent(
            "the batch root is signed under another domain than the receipt".into(),
        ));
    }
    let root = parse_b256("batchSignature.root", &td.message.root)?;
    let count = td.message.count;
    if count == 0 || b.proof.len() > tree_depth(count) {
        return Err(ReceiptError::Malformed(format!(
            "a proof of {} hashes cannot belong to a batch of {count} receipts",
            b.proof.len()
        )));
    }
    let proof = b
        .proof
        .iter()
        .map(|p| parse_b256("batchSignature.proof", p))
        .collect::<Result<Vec<_>, _>>()?;
    let (signature, _) = parse_signature("batchSignature.signature", &b.signature)?;
    Ok(BatchSeal {
        root,
        count,
        signature,
        proof,
    })
}

fn sig_hex(sig: &[u8; 65]) -> String {
    format!("0x{}", alloy_primitives::hex::encode(sig))
}

/// A 65-byte `r ‖ s ‖ v` signature in lower-case hex, v 27 or 28, s in the lower half order
/// (the malleable high-s twin is refused so one signature has one form).
fn parse_signature(field: &str, text: &str) -> Result<([u8; 65], Signature), ReceiptError> {
    let sig_hex = text.strip_prefix("0x").unwrap_or("");
    if sig_hex.len() != 130 || sig_hex.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ReceiptError::Malformed(format!(
            "`{field}` must be 0x and 130 lower-case hex digits"
        )));
    }
    let mut signature = [0u8; 65];
    alloy_primitives::hex::decode_to_slice(sig_hex, &mut signature)
        .map_err(|e| ReceiptError::Malformed(format!("`{field}`: {e}")))?;
    let sig = parse_sig(field, &signature)?;
    Ok((signature, sig))
}

/// The fields beside the signed message (`modelCid`, `profile`, `reproducibility`) must say
/// what the message signs; returns the model's CID.
fn check_unsigned_fields(wire: &Wire, message: &Parsed) -> Result<BlobId, ReceiptError> {
    let model: BlobId = wire
        .model_cid
        .parse()
        .map_err(|e| ReceiptError::Malformed(format!("`modelCid`: {e}")))?;
    if model.to_string() != wire.model_cid {
        return Err(ReceiptError::Malformed(
            "`modelCid` must be the bafkrei… spelling".into(),
        ));
    }
    if B256::from(*model.digest()) != message.model {
        return Err(ReceiptError::Inconsistent(
            "`modelCid` is not the signed model digest".into(),
        ));
    }
    if profile_hash(&wire.profile) != message.profile_hash {
        return Err(ReceiptError::Inconsistent(
            "`profile` does not hash to the signed profileHash".into(),
        ));
    }
    if wire.reproducibility != wire.profile.reproducibility() {
        return Err(ReceiptError::Inconsistent(
            "`reproducibility` does not follow from the profile's engine".into(),
        ));
    }
    Ok(model)
}

#[cfg(test)]
mod tests;
