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

#[test]
fn every_flipped_bit_is_refused() {
    let text = serde_json::to_string_pretty(&sample().to_json()).unwrap();
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
        let m = r.message();
        assert_eq!(struct_hash(&m), m.eip712_hash_struct());
        assert_eq!(r.signing_hash(), m.eip712_signing_hash(&r.domain.eip712()));
    }
    let r = sample();
    let alloy = r.message().eip712_signing_hash(&r.domain.eip712());
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
