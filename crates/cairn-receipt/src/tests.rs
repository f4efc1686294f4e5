use super::*;

fn sample() -> SignedReceipt {
    let key = PrivateKeySigner::from_bytes(&B256::repeat_byte(7)).unwrap();
    Claims {
        request_id: B256::repeat_byte(1),
        model: BlobId::of(b"model bytes"),
        input_hash: B256::repeat_byte(2),
        output_hash: B256::repeat_byte(3),
        profile: ExecutionProfile {
            engine: "tract".into(),
            engine_version: "0.23.9".into(),
            isa: "x86_64".into(),
            threads: 1,
        },
        timestamp: 1_763_700_000,
        price: U256::from(1000u64),
        payment_ref: B256::ZERO,
        llm: None,
    }
    .sign(
        ReceiptDomain {
            chain_id: 31337,
            verifying_contract: Address::repeat_byte(0x42),
        },
        &key,
    )
    .unwrap()
}

#[test]
fn round_trips_and_verifies() {
    let r = sample();
    let json = r.to_json();
    let back = SignedReceipt::verify_json(&json).unwrap();
    assert_eq!(back, r);
    assert_eq!(json["typedData"]["primaryType"], "Receipt");
    assert_eq!(json["typedData"]["message"]["price"], "1000");
}

/// A key given twice is refused when a receipt is read from text, at the top level and inside
/// the typed data: a JSON value would keep one silently, and readers differ in which.
#[test]
fn a_key_given_twice_is_refused() {
    let r = sample();
    let text = serde_json::to_string(&r).unwrap();
    assert_eq!(serde_json::from_str::<SignedReceipt>(&text).unwrap(), r);
    let signer = format!("\"signer\":\"{}\"", r.signer);
    for (what, twice) in [
        (
            "signer",
            text.replacen(&signer, &format!("{signer},{signer}"), 1),
        ),
        (
            "primaryType",
            text.replacen(
                "\"primaryType\":\"Receipt\"",
                "\"primaryType\":\"Receipt\",\"primaryType\":\"Receipt\"",
                1,
            ),
        ),
    ] {
        assert_ne!(twice, text, "{what} was not doubled");
        let e = serde_json::from_str::<SignedReceipt>(&twice).unwrap_err();
        assert!(e.to_string().contains("duplicate field"), "{what}: {e}");
        assert!(ReceiptJson::from_text(twice).unwrap().verify().is_err());
    }
}

/// Flips every bit of `r`'s pretty JSON in turn: no flipped text may verify.
fn assert_every_flipped_bit_is_refused(r: &SignedReceipt) {
    let text = serde_json::to_string_pretty(&r.to_json()).unwrap();
    let bytes = text.as_bytes();
    let mut accepted = Vec::new();
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.to_vec();
            b[i] ^= 1 << bit;
            let ok = serde_json::from_slice::<Value>(&b)
                .ok()
                .is_some_and(|v| SignedReceipt::verify_json(&v).is_ok());
            if ok {
                accepted.push((i, bit));
            }
        }
    }
    assert!(accepted.is_empty(), "flips accepted at {accepted:?}");
}

#[test]
fn every_flipped_bit_is_refused() {
    assert_every_flipped_bit_is_refused(&sample());
}

#[test]
fn refuses_a_signature_by_another_key() {
    let r = sample();
    let other = PrivateKeySigner::from_bytes(&B256::repeat_byte(8)).unwrap();
    let forged = r.claims.clone().sign(r.domain, &other).unwrap();
    let mut json = forged.to_json();
    json["signer"] = r.signer.to_checksum(None).into();
    let err = SignedReceipt::verify_json(&json).unwrap_err();
    assert!(matches!(err, ReceiptError::Signature(_)), "{err}");
}

#[test]
fn the_hand_rolled_digest_is_alloys_eip712_signing_hash() {
    // Every field non-zero and distinct, the wide ones (price, timestamp) over their low bytes,
    // so a field dropped, swapped or padded on the wrong side changes the digest.
    for i in 1..=8u8 {
        let mut r = sample();
        r.claims.request_id = B256::repeat_byte(i);
        r.claims.input_hash = B256::repeat_byte(i ^ 0x20);
        r.claims.output_hash = B256::repeat_byte(i ^ 0x40);
        r.claims.payment_ref = B256::repeat_byte(i ^ 0x80);
        r.claims.timestamp = u64::MAX - u64::from(i);
        r.claims.price = U256::MAX - U256::from(i);
        r.domain.chain_id = u64::from(i) << 40;
        let Message::Tensor(m) = r.message() else {
            panic!("a tensor receipt")
        };
        assert_eq!(struct_hash(&m), m.eip712_hash_struct());
        assert_eq!(r.signing_hash(), m.eip712_signing_hash(&r.domain.eip712()));
    }
    let r = sample();
    let Message::Tensor(m) = r.message() else {
        panic!("a tensor receipt")
    };
    let alloy = m.eip712_signing_hash(&r.domain.eip712());
    assert_eq!(r.signing_hash(), alloy);
    // The separator cache follows the domain.
    let other = ReceiptDomain {
        chain_id: 1,
        verifying_contract: Address::repeat_byte(1),
    };
    assert_eq!(other.separator(), other.eip712().separator());
    assert_eq!(r.domain.separator(), r.domain.eip712().separator());
    let (checked, digest) = ReceiptJson::from(&r).verify_with_digest().unwrap();
    assert_eq!((checked, digest), (r.clone(), alloy));
}

#[test]
fn types_in_another_spelling_still_verify_and_other_types_do_not() {
    let r = sample();
    let text = ReceiptJson::from(&r).as_str().to_string();
    // Another tool's whitespace around the same `types` is the same typed data.
    let spaced = text.replacen("{\"EIP712Domain\":", "{ \"EIP712Domain\" : ", 1);
    assert_ne!(spaced, text);
    assert_eq!(ReceiptJson::from_text(spaced).unwrap().verify().unwrap(), r);
    let renamed = text.replacen(
        "\"paymentRef\",\"type\":\"bytes32\"",
        "\"paymentRef\",\"type\":\"bytes31\"",
        1,
    );
    assert_ne!(renamed, text);
    let err = ReceiptJson::from_text(renamed)
        .unwrap()
        .verify()
        .unwrap_err();
    assert!(err.to_string().contains("`types`"), "{err}");
}

fn signer() -> ReceiptSigner {
    let key = PrivateKeySigner::from_bytes(&B256::repeat_byte(7)).unwrap();
    ReceiptSigner::new(SigningKey::from_signer(&key), sample().domain)
}

/// `n` batch-signed receipts, one signature over their root.
fn batch(n: u8) -> Vec<SignedReceipt> {
    batch_from(10, n)
}

/// `n` batch-signed receipts whose request ids start at byte `first`.
fn batch_from(first: u8, n: u8) -> Vec<SignedReceipt> {
    let s = signer();
    let claims: Vec<Claims> = (0..n)
        .map(|i| {
            let mut c = sample().claims;
            c.request_id = B256::repeat_byte(i + first);
            c
        })
        .collect();
    s.sign_batch(claims).unwrap()
}

#[test]
fn batch_signed_receipts_verify_with_one_recovery_per_root() {
    for n in [1u8, 2, 3, 5, 16] {
        let receipts = batch(n);
        let mut cache = SealCache::default();
        for r in &receipts {
            let json = ReceiptJson::from(r);
            let (back, digest) = json.verify_cached(&mut cache).unwrap();
            assert_eq!(&back, r);
            assert_eq!(digest, r.signing_hash());
            // The same check without a cache, and through the Value path.
            assert_eq!(json.verify().unwrap(), *r);
            assert_eq!(SignedReceipt::verify_json(&r.to_json()).unwrap(), *r);
            let Seal::Batch(seal) = &r.seal else {
                panic!("batch-signed")
            };
            assert_eq!(seal.count, u32::from(n));
            assert!(merkle::verify(seal.root, digest, &seal.proof));
        }
        assert_eq!(cache.roots(), 1, "n={n}");
    }
}

#[test]
fn the_root_digest_is_alloys_eip712_signing_hash() {
    let d = sample().domain;
    for (root, count) in [
        (B256::repeat_byte(9), 1u32),
        (B256::repeat_byte(0xfe), u32::MAX),
    ] {
        let m = ReceiptRoot { root, count };
        assert_eq!(
            root_digest(&d, root, count),
            m.eip712_signing_hash(&d.eip712())
        );
    }
}

#[test]
fn batch_seals_that_do_not_hold_are_refused() {
    let receipts = batch(4);
    let good = receipts[1].to_json();
    let refused = |mut f: Box<dyn FnMut(&mut Value)>| {
        let mut v = good.clone();
        f(&mut v);
        SignedReceipt::verify_json(&v).unwrap_err().to_string()
    };
    // Another receipt's proof.
    let other = receipts[2].to_json()["batchSignature"]["proof"].clone();
    let e = refused(Box::new(move |v| {
        v["batchSignature"]["proof"] = other.clone()
    }));
    assert!(e.contains("not in the signed batch"), "{e}");
    // A changed claim no longer reaches the root.
    let e = refused(Box::new(|v| {
        v["typedData"]["message"]["price"] = "1001".into()
    }));
    assert!(e.contains("not in the signed batch"), "{e}");
    // A count the root was not signed with.
    let e = refused(Box::new(|v| {
        v["batchSignature"]["typedData"]["message"]["count"] = 5.into()
    }));
    assert!(e.contains("signed by"), "{e}");
    // A proof too long for the count.
    let e = refused(Box::new(|v| {
        v["batchSignature"]["typedData"]["message"]["count"] = 1.into()
    }));
    assert!(e.contains("cannot belong"), "{e}");
    // Both seals, or neither.
    let own = sample().to_json()["signature"].clone();
    let e = refused(Box::new(move |v| v["signature"] = own.clone()));
    assert!(e.contains("exactly one"), "{e}");
    let e = refused(Box::new(|v| {
        v.as_object_mut().unwrap().remove("batchSignature");
    }));
    assert!(e.contains("exactly one"), "{e}");
    // The root signed under another contract's domain.
    let e = refused(Box::new(|v| {
        v["batchSignature"]["typedData"]["domain"]["chainId"] = 1.into()
    }));
    assert!(e.contains("another domain"), "{e}");
    // The high-s twin of the root's signature.
    let sig = good["batchSignature"]["signature"].as_str().unwrap();
    let parsed: Signature = sig.parse().unwrap();
    let twin = sig_hex(&cairn_core::sig::malleate(&parsed).as_bytes());
    let e = refused(Box::new(move |v| {
        v["batchSignature"]["signature"] = twin.clone().into()
    }));
    assert!(e.contains("lower half"), "{e}");
    // A root signed by another key.
    let other_key = PrivateKeySigner::from_bytes(&B256::repeat_byte(8)).unwrap();
    let Seal::Batch(seal) = &receipts[1].seal else {
        panic!("batch-signed")
    };
    let forged = SigningKey::from_signer(&other_key).sign_prehash(&root_digest(
        &receipts[1].domain,
        seal.root,
        seal.count,
    ));
    let forged = sig_hex(&forged.as_bytes());
    let e = refused(Box::new(move |v| {
        v["batchSignature"]["signature"] = forged.clone().into()
    }));
    assert!(e.contains("signed by"), "{e}");
}

#[test]
fn every_flipped_bit_of_a_batch_signed_receipt_is_refused() {
    assert_every_flipped_bit_is_refused(&batch(3)[2]);
}

/// A root already recovered in a cache does not carry a receipt whose seal names another count
/// or whose root is signed under another domain.
#[test]
fn a_cache_hit_does_not_carry_a_tampered_seal() {
    let receipts = batch(4);
    let mut cache = SealCache::default();
    for r in &receipts {
        ReceiptJson::from(r).verify_cached(&mut cache).unwrap();
    }
    assert_eq!(cache.roots(), 1);
    let mut v = receipts[0].to_json();
    v["batchSignature"]["typedData"]["message"]["count"] = 3.into();
    let tampered = ReceiptJson::from_text(v.to_string()).unwrap();
    let e = tampered.verify_cached(&mut cache).unwrap_err().to_string();
    assert!(e.contains("signed by"), "{e}");
    let mut v = receipts[0].to_json();
    v["batchSignature"]["typedData"]["domain"]["chainId"] = 1.into();
    v["typedData"]["domain"]["chainId"] = 1.into();
    let e = ReceiptJson::from_text(v.to_string())
        .unwrap()
        .verify_cached(&mut cache)
        .unwrap_err()
        .to_string();
    // Another domain changes the receipt's digest: it no longer reaches the root.
    assert!(e.contains("not in the signed batch"), "{e}");
    assert_eq!(
        cache.roots(),
        2,
        "the tampered count was recovered, not taken from the cache"
    );
}

/// The binary form holds the same receipt: it verifies to the same value with the same digest,
/// renders the same JSON, and both seal kinds come back.
#[test]
fn the_binary_form_round_trips_both_seals() {
    let mut all = vec![sample()];
    all.extend(batch(5));
    let mut cache = SealCache::default();
    for r in &all {
        let c = CompactReceipt::try_from(r).unwrap();
        let (back, digest) = compact::verify_compact(c.as_bytes(), &mut cache).unwrap();
        assert_eq!(&back, r);
        assert_eq!(digest, r.signing_hash());
        assert_eq!(c.verify().unwrap(), *r);
        assert_eq!(c.to_json().unwrap(), ReceiptJson::from(r));
    }
    assert_eq!(cache.roots(), 1);
    // A receipt signed on its own is ~340 bytes against the JSON's ~2 KB.
    let own = CompactReceipt::try_from(&all[0]).unwrap().as_bytes().len();
    let json = ReceiptJson::from(&all[0]).as_str().len();
    assert!(own * 4 < json, "{own} bytes against {json}");
}

/// No flipped bit of either binary form verifies: every byte is bound by the signature or
/// checked (lengths, kinds, version).
#[test]
fn every_flipped_bit_of_a_binary_receipt_is_refused() {
    for r in [sample(), batch(3)[2].clone()] {
        assert_every_flipped_binary_bit_is_refused(&r);
    }
}

/// Flips every bit of `r`'s binary form in turn: no flipped form may verify.
fn assert_every_flipped_binary_bit_is_refused(r: &SignedReceipt) {
    let bytes = CompactReceipt::try_from(r).unwrap().as_bytes().to_vec();
    let mut accepted = Vec::new();
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[i] ^= 1 << bit;
            if CompactReceipt::from_bytes(b).verify().is_ok() {
                accepted.push((i, bit));
            }
        }
    }
    assert!(accepted.is_empty(), "flips accepted at {accepted:?}");
}

/// Truncated, padded or hostile binary receipts and listings are refused with a reason, and a
/// hostile count does not size an allocation.
#[test]
fn hostile_binary_forms_are_refused_with_a_reason() {
    let r = sample();
    let bytes = CompactReceipt::try_from(&r).unwrap().as_bytes().to_vec();
    for n in 0..bytes.len() {
        let e = CompactReceipt::from_bytes(bytes[..n].to_vec())
            .verify()
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated") || e.contains("version"), "{n}: {e}");
    }
    let mut long = bytes.clone();
    long.push(0);
    let e = CompactReceipt::from_bytes(long).verify().unwrap_err();
    assert!(e.to_string().contains("after the end"), "{e}");
    // High-s twin of the same signature: refused, in the binary form as in JSON.
    let Seal::Own(sig) = r.seal else { panic!() };
    let s = Signature::from_raw(&sig).unwrap();
    let n = U256::from_be_slice(&alloy_primitives::hex!(
        "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141"
    ));
    let mut high = sig;
    high[32..64].copy_from_slice(&(n - s.s()).to_be_bytes::<32>());
    high[64] = 55 - high[64];
    let mut b = bytes.clone();
    let at = b.len() - 65;
    b[at..].copy_from_slice(&high);
    let e = CompactReceipt::from_bytes(b)
        .verify()
        .unwrap_err()
        .to_string();
    assert!(e.contains("lower half order"), "{e}");

    let list = compact::encode_listing([bytes.as_slice(), bytes.as_slice()].into_iter());
    assert_eq!(compact::listing_entries(&list).unwrap().len(), 2);
    for n in 0..list.len() {
        assert!(compact::listing_entries(&list[..n]).is_err(), "{n}");
    }
    let mut huge = list[..5].to_vec();
    huge.extend_from_slice(&u32::MAX.to_be_bytes());
    let e = compact::listing_entries(&huge).unwrap_err().to_string();
    assert!(e.contains("more than any batch"), "{e}");
    // The largest count a listing may announce, with nothing behind it: refused as short.
    let mut announced = list[..5].to_vec();
    announced.extend_from_slice(&(1u32 << 20).to_be_bytes());
    let e = compact::listing_entries(&announced)
        .unwrap_err()
        .to_string();
    assert!(e.contains("truncated"), "{e}");
    let e = compact::listing_entries(br#"{"receipts":[]}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("magic"), "{e}");
}

/// `rs` as a binary listing, checked as a whole.
fn verify_listing(
    rs: &[SignedReceipt],
    cache: &mut SealCache,
) -> Result<Vec<compact::Verified>, (usize, ReceiptError)> {
    let bytes = compact::encode_receipts(rs).unwrap();
    compact::verify_entries(&compact::listing_entries(&bytes).unwrap(), cache)
}

/// A listing checked as a whole agrees with its receipts checked one by one: complete
/// micro-batches (rebuilt once), partial ones (proofs hashed), receipts signed alone.
#[test]
fn a_listing_checks_as_its_receipts_do() {
    let whole = batch(5);
    let other = batch_from(100, 4);
    // All of the first micro-batch, half of the second, one receipt signed alone.
    let mut rs: Vec<SignedReceipt> = whole.clone();
    rs.extend(other[..2].iter().cloned());
    rs.push(sample());
    let mut cache = SealCache::default();
    let v = verify_listing(&rs, &mut cache).unwrap();
    assert_eq!(cache.roots(), 2);
    for (v, r) in v.iter().zip(&rs) {
        assert_eq!(&v.receipt, r);
        assert_eq!(v.digest, r.signing_hash());
        assert_eq!(v.leaf, merkle::leaf(v.digest));
    }

    // A complete group with one proof swapped for a sibling's: refused at that receipt.
    let mut bad = rs.clone();
    let Seal::Batch(s1) = bad[1].seal.clone() else {
        panic!()
    };
    let Seal::Batch(s0) = &mut bad[0].seal else {
        panic!()
    };
    s0.proof = s1.proof;
    let (i, e) = verify_listing(&bad, &mut SealCache::default()).unwrap_err();
    assert_eq!(i, 0);
    assert!(e.to_string().contains("not in the signed batch"), "{e}");

    // A forged receipt in place of a real one, under the real seal: the group no longer
    // rebuilds its root, and the forgery is refused on its own proof.
    let mut forged = whole.clone();
    forged[3].claims.price = U256::from(1u64);
    let (i, e) = verify_listing(&forged, &mut SealCache::default()).unwrap_err();
    assert_eq!(i, 3);
    assert!(e.to_string().contains("not in the signed batch"), "{e}");
}

fn llm_sample() -> SignedReceipt {
    let mut c = sample().claims;
    c.profile.engine = "cairn-llm".into();
    c.llm = Some(LlmUsage {
        prompt_tokens: 31,
        completion_tokens: 64,
        complete: true,
    });
    signer().sign(c)
}

/// A language-model receipt is its own EIP-712 type: it round-trips through JSON and the binary
/// form, names its hashes as the request's and response's, and its hand-rolled digest is
/// alloy's for `LlmReceipt` with every field distinct.
#[test]
fn an_llm_receipt_is_its_own_typed_message() {
    let r = llm_sample();
    let json = r.to_json();
    assert_eq!(json["typedData"]["primaryType"], "LlmReceipt");
    let m = &json["typedData"]["message"];
    assert_eq!(m["requestHash"], B256::repeat_byte(2).to_string());
    assert_eq!(m["responseHash"], B256::repeat_byte(3).to_string());
    assert_eq!(
        (m["promptTokens"].clone(), m["completionTokens"].clone()),
        (31.into(), 64.into())
    );
    assert_eq!(m["complete"], true);
    assert!(m.get("inputHash").is_none() && m.get("outputHash").is_none());
    assert_eq!(json["reproducibility"], "exact");
    assert_eq!(SignedReceipt::verify_json(&json).unwrap(), r);
    let c = CompactReceipt::try_from(&r).unwrap();
    assert_eq!(c.as_bytes()[0], 2);
    assert_eq!(c.verify().unwrap(), r);
    assert_eq!(c.to_json().unwrap(), ReceiptJson::from(&r));
    for i in 1..=8u8 {
        let mut r = llm_sample();
        r.claims.request_id = B256::repeat_byte(i);
        r.claims.input_hash = B256::repeat_byte(i ^ 0x20);
        r.claims.output_hash = B256::repeat_byte(i ^ 0x40);
        r.claims.payment_ref = B256::repeat_byte(i ^ 0x80);
        r.claims.timestamp = u64::MAX - u64::from(i);
        r.claims.price = U256::MAX - U256::from(i);
        r.claims.llm = Some(LlmUsage {
            prompt_tokens: u32::MAX - u32::from(i),
            completion_tokens: u32::MAX - 2 * u32::from(i),
            complete: i % 2 == 0,
        });
        let Message::Llm(m) = r.message() else {
            panic!("an LLM receipt")
        };
        assert_eq!(llm_struct_hash(&m), m.eip712_hash_struct());
        assert_eq!(r.signing_hash(), m.eip712_signing_hash(&r.domain.eip712()));
    }
}

#[test]
fn every_flipped_bit_of_an_llm_receipt_is_refused() {
    let r = llm_sample();
    assert_every_flipped_bit_is_refused(&r);
    assert_every_flipped_binary_bit_is_refused(&r);
}

/// One kind's fields cannot be passed off as the other's: a tensor receipt relabelled
/// `LlmReceipt` (or the reverse), or one carrying the other kind's fields, is refused.
#[test]
fn the_two_kinds_do_not_mix() {
    let tensor = ReceiptJson::from(&sample()).as_str().to_string();
    let llm = ReceiptJson::from(&llm_sample()).as_str().to_string();
    let verify = |t: String| {
        ReceiptJson::from_text(t)
            .unwrap()
            .verify()
            .unwrap_err()
            .to_string()
    };
    let relabelled = tensor.replacen(
        "\"primaryType\":\"Receipt\"",
        "\"primaryType\":\"LlmReceipt\"",
        1,
    );
    assert_ne!(relabelled, tensor);
    assert!(verify(relabelled).contains("`types`"));
    let relabelled = llm.replacen(
        "\"primaryType\":\"LlmReceipt\"",
        "\"primaryType\":\"Receipt\"",
        1,
    );
    assert_ne!(relabelled, llm);
    assert!(verify(relabelled).contains("`types`"));
    let extra = llm.replacen(
        "\"requestHash\":\"0x",
        &format!("\"inputHash\":\"{}\",\"requestHash\":\"0x", B256::ZERO),
        1,
    );
    assert_ne!(extra, llm);
    assert!(verify(extra).contains("`inputHash` is not a field of a LlmReceipt"));
    let extra = tensor.replacen(
        "\"profileHash\":\"0x",
        "\"promptTokens\":1,\"profileHash\":\"0x",
        1,
    );
    assert_ne!(extra, tensor);
    assert!(verify(extra).contains("not a field of a Receipt"));
    // `null` is not another spelling of an absent field.
    for (text, field) in [(&tensor, "requestHash"), (&llm, "inputHash")] {
        let spelled = text.replacen(
            "\"profileHash\":\"0x",
            &format!("\"{field}\":null,\"profileHash\":\"0x"),
            1,
        );
        assert_ne!(&spelled, text);
        assert!(ReceiptJson::from_text(spelled).unwrap().verify().is_err());
    }
}

/// `n` claims with distinct request ids from `first`: a language-model call at every index
/// `i` with `i % every == 1`, an inference on tensors at the others.
fn mixed_claims(n: u8, every: u8, first: u8) -> Vec<Claims> {
    (0..n)
        .map(|i| {
            let mut c = if i % every == 1 {
                llm_sample().claims
            } else {
                sample().claims
            };
            c.request_id = B256::repeat_byte(first + i);
            c
        })
        .collect()
}

/// Both kinds share a micro-batch and a listing: one root, each leaf its own typed digest.
#[test]
fn a_batch_holds_both_kinds() {
    let s = signer();
    let batch = s.sign_batch(mixed_claims(4, 2, 0x10)).unwrap();
    let listing = compact::encode_receipts(&batch).unwrap();
    let entries = compact::listing_entries(&listing).unwrap();
    let mut cache = SealCache::default();
    let verified = compact::verify_entries(&entries, &mut cache).unwrap();
    assert_eq!(cache.roots(), 1);
    for (v, r) in verified.iter().zip(&batch) {
        assert_eq!(&v.receipt, r);
        assert_eq!(v.digest, r.signing_hash());
        assert_eq!(ReceiptJson::from(r).verify().unwrap(), *r);
    }
    assert!(verified[1].receipt.claims.llm.is_some() && verified[0].receipt.claims.llm.is_none());
}

/// Reading a listing four receipts abreast gives what reading each alone gives, in order,
/// whatever mix of kinds and seals the listing holds and wherever an unreadable entry sits.
#[test]
fn a_listing_read_four_abreast_is_read_entry_by_entry() {
    let s = signer();
    let mut rs: Vec<SignedReceipt> = Vec::new();
    rs.extend(s.sign_batch(mixed_claims(6, 3, 0x40)).unwrap());
    rs.push(sample());
    rs.push(llm_sample());
    rs.extend(batch_from(60, 3));
    // Past one read-ahead chunk (16), so chunk boundaries fall inside the listing.
    rs.extend(batch_from(80, 9));
    let listing = compact::encode_receipts(&rs).unwrap();
    let entries = compact::listing_entries(&listing).unwrap();
    for n in 0..=entries.len() {
        let mut got = Vec::new();
        compact::read_each(&entries[..n], |i, v| -> Result<(), ()> {
            got.push((i, v.unwrap()));
            Ok(())
        })
        .unwrap();
        assert_eq!(got.len(), n);
        for (k, (i, v)) in got.iter().enumerate() {
            let alone = compact::read_entry(entries[k]).unwrap();
            assert_eq!(*i, k);
            assert_eq!(v.receipt, alone.receipt);
            assert_eq!(v.digest, alone.digest);
            assert_eq!(v.digest, rs[k].signing_hash());
            assert_eq!(v.leaf, merkle::leaf(v.digest));
        }
    }
    // The caller's own refusal of a readable entry (mid-chunk or not) ends the reading there.
    for stop in 0..entries.len() {
        let mut seen = Vec::new();
        let refused = compact::read_each(&entries, |i, _| {
            seen.push(i);
            if i == stop { Err(i) } else { Ok(()) }
        });
        assert_eq!(refused, Err(stop));
        assert_eq!(seen, (0..=stop).collect::<Vec<_>>());
    }
    // An unreadable entry anywhere: every entry before it is handed over first, then its
    // error at its index; reading goes on only if the caller lets it.
    let junk: &[u8] = b"\x01junk";
    for at in 0..=entries.len() {
        let mut with_junk = entries.clone();
        with_junk.insert(at, junk);
        let mut seen = Vec::new();
        let failed = compact::read_each(&with_junk, |i, v| match v {
            Ok(v) => {
                seen.push((i, v.digest));
                Ok(())
            }
            Err(e) => Err((i, e.to_string())),
        })
        .unwrap_err();
        assert_eq!(failed.0, at);
        assert_eq!(
            seen,
            (0..at)
                .map(|k| (k, rs[k].signing_hash()))
                .collect::<Vec<_>>()
        );
        let mut all = Vec::new();
        compact::read_each(&with_junk, |i, v| -> Result<(), ()> {
            all.push((i, v.ok().map(|v| v.digest)));
            Ok(())
        })
        .unwrap();
        assert_eq!(all.len(), with_junk.len());
        for (i, d) in all {
            let want = match i.cmp(&at) {
                std::cmp::Ordering::Less => Some(rs[i].signing_hash()),
                std::cmp::Ordering::Equal => None,
                std::cmp::Ordering::Greater => Some(rs[i - 1].signing_hash()),
            };
            assert_eq!(d, want, "entry {i}, junk at {at}");
        }
    }
}

/// A presigned signer's receipts, alone and batch-signed, are receipts like any other: they
/// verify from JSON and from the binary form as the key's, and a tampered one does not.
#[test]
fn presigned_receipts_verify_as_the_keys_own() {
    let plain = signer();
    let presigned = signer().presigned().unwrap();
    let claims = sample().claims;
    let (own, digest) = presigned.sign_with_digest(claims.clone());
    assert_eq!(digest, own.signing_hash());
    assert_eq!(own.signer, plain.address());
    let mut receipts = vec![own];
    receipts.extend(
        presigned
            .sign_batch(
                (0..5u8)
                    .map(|i| Claims {
                        request_id: B256::repeat_byte(i),
                        ..claims.clone()
                    })
                    .collect(),
            )
            .unwrap(),
    );
    let mut cache = SealCache::default();
    for r in &receipts {
        assert_eq!(SignedReceipt::verify_json(&r.to_json()).unwrap(), *r);
        let c = CompactReceipt::try_from(r).unwrap();
        assert_eq!(
            compact::verify_compact(c.as_bytes(), &mut cache).unwrap().0,
            *r
        );
    }
    assert_every_flipped_bit_is_refused(&receipts[0]);
    assert_every_flipped_bit_is_refused(&receipts[1]);
    // Two signatures (one receipt, one root), whichever nonce each took.
    let (presigned, fell_back) = presigned.presign_counts().unwrap();
    assert_eq!(presigned + fell_back, 2);
    assert_eq!(plain.presign_counts(), None);
}
