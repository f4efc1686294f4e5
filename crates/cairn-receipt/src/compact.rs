//! A receipt's binary form, and batch listings made of them.
//!
//! The JSON form carries the full EIP-712 typed data so standard tools verify it; a verifier that
//! reads every receipt of every batch pays for parsing ~2.5 KB of it per receipt. The binary form
//! holds the same evidence in fixed-width fields (~340 bytes for a receipt signed on its own):
//! what the message signs is derived, not restated (`node` is the signer, `model` the CID's
//! digest, `profileHash` the profile's hash), so there is one spelling and nothing to compare.
//! It is how the node keeps receipts and how verifiers read batch listings; clients get JSON.
//!
//! Layout (version 1; integers big-endian):
//!
//! ```text
//! u8 version = 1 ‖ u8 seal: 0 own, 1 batch
//! u64 chainId ‖ address verifyingContract ‖ address signer
//! bytes32 requestId ‖ bytes32 model (SHA-256) ‖ bytes32 inputHash ‖ bytes32 outputHash
//! u64 timestamp ‖ uint256 price ‖ bytes32 paymentRef
//! profile: u32 threads ‖ (u16 length ‖ UTF-8) × engine, engineVersion, isa
//! seal 0: 65-byte signature r ‖ s ‖ v
//! seal 1: bytes32 root ‖ u32 count ‖ 65-byte signature ‖ u8 n ‖ n × bytes32 proof
//! ```
//!
//! Version 2 is a language-model receipt: the same layout with `inputHash`/`outputHash` the
//! request's and response's SHA-256 and, after `paymentRef`, `u32 promptTokens ‖
//! u32 completionTokens ‖ u8 complete (0 or 1)`.
//!
//! A listing is `"CRNL" ‖ u8 version = 1 ‖ u32 n ‖ n × (u32 length ‖ receipt)`.

use super::*;

const VERSION: u8 = 1;
/// The binary form of a language-model receipt.
const VERSION_LLM: u8 = 2;
const OWN: u8 = 0;
const BATCH: u8 = 1;
const LISTING_MAGIC: &[u8; 4] = b"CRNL";
/// The most receipts a listing may announce (a settlement batch holds far fewer): a hostile
/// count must not size an allocation.
const MAX_LISTED: u32 = 1 << 20;

/// A receipt's binary form as a node stored or sent it, not checked yet: what crosses a trust
/// boundary before [`CompactReceipt::verify`] makes it a [`SignedReceipt`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactReceipt(Vec<u8>);

impl CompactReceipt {
    /// Wraps stored bytes (not checked).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Parses and checks it as [`ReceiptJson::verify`] checks the JSON form.
    pub fn verify(&self) -> Result<SignedReceipt, ReceiptError> {
        Ok(verify_compact(&self.0, &mut SealCache::default())?.0)
    }

    /// The JSON form of the same receipt, not checked (a node serving its own log renders
    /// what it stored; whoever reads it verifies it). Fails only on bytes that do not parse.
    pub fn to_json(&self) -> Result<ReceiptJson, ReceiptError> {
        Ok(ReceiptJson::from(&parse(&self.0)?))
    }
}

/// The binary form of a receipt. Fails for a field longer than the form's length prefix holds (a
/// profile name over 65,535 bytes; no engine names itself so, and no proof is over 32 hashes).
/// Such a receipt is kept as JSON.
impl TryFrom<&SignedReceipt> for CompactReceipt {
    type Error = ReceiptError;

    fn try_from(r: &SignedReceipt) -> Result<Self, ReceiptError> {
        let c = &r.claims;
        let p = &c.profile;
        let mut out =
            Vec::with_capacity(256 + p.engine.len() + p.engine_version.len() + p.isa.len() + 200);
        out.push(if c.llm.is_some() {
            VERSION_LLM
        } else {
            VERSION
        });
        out.push(match r.seal {
            Seal::Own(_) => OWN,
            Seal::Batch(_) => BATCH,
        });
        out.extend_from_slice(&r.domain.chain_id.to_be_bytes());
        out.extend_from_slice(r.domain.verifying_contract.as_slice());
        out.extend_from_slice(r.signer.as_slice());
        out.extend_from_slice(c.request_id.as_slice());
        out.extend_from_slice(c.model.digest());
        out.extend_from_slice(c.input_hash.as_slice());
        out.extend_from_slice(c.output_hash.as_slice());
        out.extend_from_slice(&c.timestamp.to_be_bytes());
        out.extend_from_slice(&c.price.to_be_bytes::<32>());
        out.extend_from_slice(c.payment_ref.as_slice());
        if let Some(u) = &c.llm {
            out.extend_from_slice(&u.prompt_tokens.to_be_bytes());
            out.extend_from_slice(&u.completion_tokens.to_be_bytes());
            out.push(u8::from(u.complete));
        }
        out.extend_from_slice(&p.threads.to_be_bytes());
        for s in [&p.engine, &p.engine_version, &p.isa] {
            let n = u16::try_from(s.len()).map_err(|_| {
                ReceiptError::Malformed(format!(
                    "a profile field of {} bytes has no binary form (at most 65,535)",
                    s.len()
                ))
            })?;
            out.extend_from_slice(&n.to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        match &r.seal {
            Seal::Own(sig) => out.extend_from_slice(sig),
            Seal::Batch(b) => {
                let n = u8::try_from(b.proof.len()).map_err(|_| {
                    ReceiptError::Malformed(format!(
                        "a proof of {} hashes has no binary form",
                        b.proof.len()
                    ))
                })?;
                out.extend_from_slice(b.root.as_slice());
                out.extend_from_slice(&b.count.to_be_bytes());
                out.extend_from_slice(&b.signature);
                out.push(n);
                for h in &b.proof {
                    out.extend_from_slice(h.as_slice());
                }
            }
        }
        Ok(Self(out))
    }
}

/// A listing of receipts in binary form: what a verifier reads for a settlement batch.
pub fn encode_listing<'a>(receipts: impl ExactSizeIterator<Item = &'a [u8]>) -> Vec<u8> {
    let n = receipts.len();
    let mut out = Vec::with_capacity(9 + n * 300);
    out.extend_from_slice(LISTING_MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&(n as u32).to_be_bytes());
    for r in receipts {
        out.extend_from_slice(&(r.len() as u32).to_be_bytes());
        out.extend_from_slice(r);
    }
    out
}

/// The binary listing of signed receipts (what a node serves from what it signed).
pub fn encode_receipts(receipts: &[SignedReceipt]) -> Result<Vec<u8>, ReceiptError> {
    let compact = receipts
        .iter()
        .map(CompactReceipt::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(encode_listing(compact.iter().map(|c| c.as_bytes())))
}

/// The receipts of a binary listing, each still to be verified ([`verify_compact`]).
pub fn listing_entries(bytes: &[u8]) -> Result<Vec<&[u8]>, ReceiptError> {
    let mut r = Reader::new(bytes);
    if r.take(4)? != LISTING_MAGIC {
        return Err(ReceiptError::Malformed(
            "not a binary receipt listing (no CRNL magic)".into(),
        ));
    }
    let v = r.u8()?;
    if v != VERSION {
        return Err(ReceiptError::Malformed(format!(
            "receipt listing version {v}; this reader knows {VERSION}"
        )));
    }
    let n = r.u32()?;
    if n > MAX_LISTED {
        return Err(ReceiptError::Malformed(format!(
            "a listing of {n} receipts is more than any batch holds ({MAX_LISTED})"
        )));
    }
    // Every entry takes at least its 4-byte length: a count the bytes cannot hold sizes nothing.
    let mut out = Vec::with_capacity((n as usize).min(r.0.len() / 4));
    for _ in 0..n {
        let len = r.u32()? as usize;
        out.push(r.take(len)?);
    }
    r.end("the listing")?;
    Ok(out)
}

/// Parses and checks one receipt's binary form; the digest returned is its EIP-712 signing hash
/// (its Merkle leaf). A micro-batch root whose signature `cache` has recovered is not recovered
/// again.
pub fn verify_compact(
    bytes: &[u8],
    cache: &mut SealCache,
) -> Result<(SignedReceipt, B256), ReceiptError> {
    let (r, hash) = parse_with_digest(bytes)?;
    let recovered = match &r.seal {
        Seal::Own(sig) => recover(&parse_sig("signature", sig)?, &hash)?,
        Seal::Batch(b) => {
            if !merkle::verify(b.root, hash, &b.proof) {
                return Err(not_in_root());
            }
            cache.recover_root(&r.domain, b)?
        }
    };
    same_signer(&r, recovered)?;
    Ok((r, hash))
}

/// One receipt of a listing, checked ([`verify_entries`]) or read ([`read_entries`]).
#[derive(Debug)]
pub struct Verified {
    /// The receipt.
    pub receipt: SignedReceipt,
    /// Its EIP-712 signing hash.
    pub digest: B256,
    /// Its OpenZeppelin leaf ([`merkle::leaf`] of the digest): what a settlement tree over the
    /// listing needs ([`merkle::ReceiptTree::from_leaves`]), computed once.
    pub leaf: B256,
}

/// Checks every receipt of a listing ([`listing_entries`]) as [`verify_compact`] does, for less:
/// a micro-batch whose receipts are all listed is rebuilt once and each receipt's proof compared
/// with its path there (instead of hashing every proof), and each leaf is kept for the caller's
/// tree. Fails with the index of a receipt that does not verify.
pub fn verify_entries(
    entries: &[&[u8]],
    cache: &mut SealCache,
) -> Result<Vec<Verified>, (usize, ReceiptError)> {
    entries_checked(entries, cache)
}

/// Every receipt of a listing parsed as strictly and hashed as [`verify_entries`] does, its
/// seal (signature, or micro-batch proof and root signature) held to its canonical form but
/// not checked: `receipt.signer` is then the node the signed message names, which the digest
/// (the leaf) binds. What a settlement verifier needs: the node's own `submitBatch` commits it
/// to every leaf, so a seal only ever spoke for the client who was handed it (and checked it
/// then).
pub fn read_entries(entries: &[&[u8]]) -> Result<Vec<Verified>, (usize, ReceiptError)> {
    // Grown as entries are read: a hostile listing of many empty entries reserves nothing.
    let mut out = Vec::new();
    read_each(entries, |i, v| -> Result<(), (usize, ReceiptError)> {
        out.push(v.map_err(|e| (i, e))?);
        Ok(())
    })?;
    Ok(out)
}

/// [`read_entry`] of every entry, handed to `take` in listing order with its index (`take`'s
/// first error ends the reading): for a caller that keeps each receipt's parts where it wants
/// them. The receipts' hashes (struct hash, digest, leaf) are computed four abreast where the
/// CPU allows ([`cairn_core::keccak4`]); the results are [`read_entry`]'s, entry for entry.
pub fn read_each<E>(
    entries: &[&[u8]],
    mut take: impl FnMut(usize, Result<Verified, ReceiptError>) -> Result<(), E>,
) -> Result<(), E> {
    for (c, chunk) in entries.chunks(READ_AHEAD).enumerate() {
        let parsed: Vec<Result<SignedReceipt, ReceiptError>> =
            chunk.iter().map(|b| parse_held(b)).collect();
        let hashes = crate::digests(
            parsed
                .iter()
                .filter_map(|r| r.as_ref().ok())
                .map(|r| (&r.claims, r.signer, r.domain.separator())),
        );
        let leaves = merkle::leaves(&hashes);
        let mut hashed = hashes.into_iter().zip(leaves);
        for (k, r) in parsed.into_iter().enumerate() {
            let v = r.map(|receipt| {
                let (digest, leaf) = hashed.next().expect("one digest per parsed receipt");
                Verified {
                    receipt,
                    digest,
                    leaf,
                }
            });
            take(READ_AHEAD * c + k, v)?;
        }
    }
    Ok(())
}

/// How many entries [`read_each`] parses before it hashes them: four fours, so each chunk's
/// few small allocations are shared by sixteen receipts.
const READ_AHEAD: usize = 16;

/// The receipt the bytes spell, its seal held to its canonical form but not checked.
fn parse_held(bytes: &[u8]) -> Result<SignedReceipt, ReceiptError> {
    let receipt = parse(bytes)?;
    match &receipt.seal {
        Seal::Own(sig) | Seal::Batch(BatchSeal { signature: sig, .. }) => {
            parse_sig("signature", sig)?;
        }
    }
    Ok(receipt)
}

/// One entry read as [`read_entries`] reads each, hashed alone ([`read_each`] hashes a
/// listing's four at a time).
pub fn read_entry(bytes: &[u8]) -> Result<Verified, ReceiptError> {
    // Unchecked, a seal is still held to its canonical form, as the JSON reader holds it.
    let receipt = parse_held(bytes)?;
    let digest = receipt
        .claims
        .digest(&receipt.domain.separator(), receipt.signer);
    Ok(Verified {
        receipt,
        digest,
        leaf: merkle::leaf(digest),
    })
}

fn entries_checked(
    entries: &[&[u8]],
    cache: &mut SealCache,
) -> Result<Vec<Verified>, (usize, ReceiptError)> {
    type SealKey = (ReceiptDomain, B256, u32, [u8; 65]);
    let mut out = Vec::with_capacity(entries.len());
    // Batch-sealed receipts by seal, the groups in the order their first receipt is listed (so
    // the receipt a failure names does not depend on hashing).
    let mut group_of: std::collections::HashMap<SealKey, usize> = Default::default();
    let mut groups: Vec<(SealKey, Vec<usize>)> = Vec::new();
    for (i, b) in entries.iter().enumerate() {
        let (receipt, digest) = parse_with_digest(b).map_err(|e| (i, e))?;
        match &receipt.seal {
            Seal::Own(sig) => parse_sig("signature", sig)
                .and_then(|s| recover(&s, &digest))
                .and_then(|a| same_signer(&receipt, a))
                .map_err(|e| (i, e))?,
            Seal::Batch(s) => {
                let key = (receipt.domain, s.root, s.count, s.signature);
                let g = *group_of.entry(key).or_insert_with(|| {
                    groups.push((key, Vec::new()));
                    groups.len() - 1
                });
                groups[g].1.push(i);
            }
        }
        out.push(Verified {
            receipt,
            digest,
            leaf: merkle::leaf(digest),
        });
    }
    for ((domain, root, count, _), members) in groups {
        let rebuilt = (members.len() == count as usize)
            .then(|| {
                merkle::ReceiptTree::from_leaves(
                    members
                        .iter()
                        .map(|&i| (out[i].leaf, out[i].digest))
                        .collect(),
                )
            })
            .and_then(Result::ok)
            .filter(|t| t.root() == root);
        for i in members {
            let v = &out[i];
            let Seal::Batch(s) = &v.receipt.seal else {
                unreachable!("grouped by batch seal")
            };
            let held = match &rebuilt {
                Some(t) => t.has_proof(v.digest, &s.proof),
                None => merkle::verify_leaf(root, v.leaf, &s.proof),
            };
            if !held {
                return Err((i, not_in_root()));
            }
            cache
                .recover_root(&domain, s)
                .and_then(|a| same_signer(&v.receipt, a))
                .map_err(|e| (i, e))?;
        }
    }
    Ok(out)
}

fn not_in_root() -> ReceiptError {
    ReceiptError::Inconsistent("the receipt is not in the signed batch root under its proof".into())
}

fn same_signer(r: &SignedReceipt, recovered: Address) -> Result<(), ReceiptError> {
    if recovered == r.signer {
        Ok(())
    } else {
        Err(ReceiptError::Signature(format!(
            "signed by {recovered}, not by the stated signer {}",
            r.signer
        )))
    }
}

/// [`parse`], with the EIP-712 digest the seal must cover.
fn parse_with_digest(bytes: &[u8]) -> Result<(SignedReceipt, B256), ReceiptError> {
    let r = parse(bytes)?;
    let hash = r.claims.digest(&r.domain.separator(), r.signer);
    Ok((r, hash))
}

/// The receipt the bytes spell, not verified: every field in range, nothing left over.
fn parse(bytes: &[u8]) -> Result<SignedReceipt, ReceiptError> {
    let mut r = Reader::new(bytes);
    let v = r.u8()?;
    if v != VERSION && v != VERSION_LLM {
        return Err(ReceiptError::Malformed(format!(
            "binary receipt version {v}; this reader knows {VERSION} and {VERSION_LLM}"
        )));
    }
    let kind = r.u8()?;
    let domain = ReceiptDomain {
        chain_id: r.u64()?,
        verifying_contract: Address::from(r.array::<20>()?),
    };
    let signer = Address::from(r.array::<20>()?);
    let request_id = B256::from(r.array::<32>()?);
    let model = BlobId::from_digest(r.array::<32>()?);
    let input_hash = B256::from(r.array::<32>()?);
    let output_hash = B256::from(r.array::<32>()?);
    let timestamp = r.u64()?;
    let price = U256::from_be_bytes(r.array::<32>()?);
    let payment_ref = B256::from(r.array::<32>()?);
    let llm = if v == VERSION_LLM {
        let prompt_tokens = r.u32()?;
        let completion_tokens = r.u32()?;
        let complete = match r.u8()? {
            0 => false,
            1 => true,
            b => {
                return Err(ReceiptError::Malformed(format!(
                    "`complete` is {b}; it is 0 or 1"
                )));
            }
        };
        Some(LlmUsage {
            prompt_tokens,
            completion_tokens,
            complete,
        })
    } else {
        None
    };
    let threads = r.u32()?;
    let mut text = || -> Result<String, ReceiptError> {
        let n = usize::from(r.u16()?);
        String::from_utf8(r.take(n)?.to_vec())
            .map_err(|_| ReceiptError::Malformed("a profile field is not UTF-8".into()))
    };
    let profile = ExecutionProfile {
        engine: text()?,
        engine_version: text()?,
        isa: text()?,
        threads,
    };
    let seal = match kind {
        OWN => Seal::Own(r.array::<65>()?),
        BATCH => {
            let root = B256::from(r.array::<32>()?);
            let count = r.u32()?;
            let signature = r.array::<65>()?;
            let n = usize::from(r.u8()?);
            if count == 0 || n > tree_depth(count) {
                return Err(ReceiptError::Malformed(format!(
                    "a proof of {n} hashes cannot belong to a batch of {count} receipts"
                )));
            }
            let proof = (0..n)
                .map(|_| r.array::<32>().map(B256::from))
                .collect::<Result<Vec<_>, _>>()?;
            Seal::Batch(BatchSeal {
                root,
                count,
                signature,
                proof,
            })
        }
        k => {
            return Err(ReceiptError::Malformed(format!(
                "unknown seal kind {k} (0 own signature, 1 batch)"
            )));
        }
    };
    r.end("the receipt")?;
    Ok(SignedReceipt {
        claims: Claims {
            request_id,
            model,
            input_hash,
            output_hash,
            profile,
            timestamp,
            price,
            payment_ref,
            llm,
        },
        domain,
        signer,
        seal,
    })
}

/// Reads fixed-width fields off the front of a byte string; running short is a clear error.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self(bytes)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ReceiptError> {
        if self.0.len() < n {
            return Err(ReceiptError::Malformed(format!(
                "truncated: {n} more bytes expected, {} left",
                self.0.len()
            )));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ReceiptError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn u8(&mut self) -> Result<u8, ReceiptError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, ReceiptError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, ReceiptError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, ReceiptError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn end(&self, what: &str) -> Result<(), ReceiptError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ReceiptError::Malformed(format!(
                "{} bytes after the end of {what}",
                self.0.len()
            )))
        }
    }
}
