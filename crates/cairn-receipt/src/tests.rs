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
