//! Fuzz targets: every parser that takes bytes from outside (a client, a node, a peer, a
//! file), each a plain function that must never panic, hang or allocate without bound,
//! whatever it is given.
//!
//! `fuzz/` (cargo-fuzz, libFuzzer) calls them with coverage guidance (`scripts/fuzz.sh`); the
//! committed seed corpus in `fuzz/corpus/<target>/` is replayed through them by `cargo test`,
//! so every input a fuzzer ever found interesting stays a regression test.

use alloy_primitives::{B256, Signature};

/// A target: its name (the corpus directory) and the function.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: &[Target] = &[
    ("receipt_json", receipt_json),
    ("receipt_listing", receipt_listing),
    ("x402_v2", x402_v2),
    ("x402_v1", x402_v1),
    ("x402_required", x402_required),
    ("prepaid_voucher", prepaid_voucher),
    ("kserve_json", kserve_json),
    ("kserve_binary", kserve_binary),
    ("safetensors", safetensors),
    ("onnx", onnx),
    ("gguf", gguf),
    ("signed_request", signed_request),
    ("attestation", attestation),
];

/// A receipt as nodes serve it and clients, verifiers and settlement read it.
pub fn receipt_json(data: &[u8]) {
    // The text path (batch listings, answers): whatever it accepts, the JSON-value path accepts
    // as the same receipt with the same digest.
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(raw) = cairn_receipt::ReceiptJson::from_text(text.to_owned())
        && let Ok((r, digest)) = raw.verify_with_digest()
    {
        assert_eq!(digest, r.signing_hash());
        let v: serde_json::Value = serde_json::from_str(text).expect("verified text is JSON");
        assert_eq!(
            cairn_receipt::SignedReceipt::verify_json(&v).expect("value path"),
            r
        );
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data)
        && let Ok(r) = cairn_receipt::SignedReceipt::verify_json(&v)
    {
        // Whatever verifies must round-trip to itself.
        let again = cairn_receipt::SignedReceipt::verify_json(&r.to_json()).expect("round trip");
        assert_eq!(again, r);
        let _ = r.signing_hash();
    }
}

/// A binary batch listing as verifiers read it (`cairn_receipt::compact`): whatever verifies in
/// binary form verifies as the same receipt, with the same digest, from the JSON it renders to,
/// and encodes back to the very bytes it was read from (one spelling).
pub fn receipt_listing(data: &[u8]) {
    let Ok(entries) = cairn_receipt::compact::listing_entries(data) else {
        return;
    };
    // The listing check and the one-by-one check agree.
    let whole = cairn_receipt::compact::verify_entries(&entries, &mut Default::default());
    let mut cache = cairn_receipt::SealCache::default();
    let one_by_one: Vec<_> = entries
        .iter()
        .map(|b| cairn_receipt::compact::verify_compact(b, &mut cache))
        .collect();
    match &whole {
        Ok(v) => {
            assert!(one_by_one.iter().all(Result::is_ok));
            for (v, (r, d)) in v.iter().zip(one_by_one.iter().flatten()) {
                assert_eq!(
                    (&v.receipt, v.digest, v.leaf),
                    (r, *d, cairn_receipt::merkle::leaf(*d))
                );
            }
        }
        Err((i, _)) => assert!(
            one_by_one[*i].is_err(),
            "receipt {i}: only the listing check refused it"
        ),
    }
    // A settlement verifier's reading (no seal checked) refuses nothing the whole check accepts
    // and reads the same receipts, digests and leaves.
    let read = cairn_receipt::compact::read_entries(&entries);
    // Read as a listing (four abreast) or entry by entry: the same receipts, or the same first
    // refusal at the same index.
    let alone: Result<Vec<_>, _> = entries
        .iter()
        .enumerate()
        .map(|(i, b)| cairn_receipt::compact::read_entry(b).map_err(|e| (i, e)))
        .collect();
    match (&read, &alone) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.len(), b.len());
            for (a, b) in a.iter().zip(b) {
                assert_eq!(
                    (&a.receipt, a.digest, a.leaf),
                    (&b.receipt, b.digest, b.leaf)
                );
            }
        }
        (Err((i, e)), Err((j, f))) => assert_eq!((i, e.to_string()), (j, f.to_string())),
        _ => panic!("the listing read and the entry-by-entry read disagree"),
    }
    if let Ok(v) = &whole {
        let r = read.expect("reading accepts what the whole check does");
        for (a, b) in v.iter().zip(&r) {
            assert_eq!(
                (&a.receipt, a.digest, a.leaf),
                (&b.receipt, b.digest, b.leaf)
            );
        }
    }
    for (b, checked) in entries.iter().zip(one_by_one) {
        let Ok((r, digest)) = checked else {
            continue;
        };
        assert_eq!(digest, r.signing_hash());
        let compact = cairn_receipt::CompactReceipt::try_from(&r).unwrap();
        assert_eq!(compact.as_bytes(), *b, "one binary spelling");
        let json = compact.to_json().expect("renders");
        assert_eq!(json.verify().expect("the JSON verifies"), r);
    }
}

/// `PAYMENT-SIGNATURE` (x402 v2) with its `exact` and `prepaid` payloads.
pub fn x402_v2(data: &[u8]) {
    use cairn_x402::wire::{PaymentPayload, decode_header};
    if let Ok(p) = decode_header::<PaymentPayload>("PAYMENT-SIGNATURE", data) {
        payloads(&p.payload);
    }
}

/// `X-PAYMENT` (x402 v1).
pub fn x402_v1(data: &[u8]) {
    use cairn_x402::wire::{PaymentPayloadV1, decode_header};
    if let Ok(p) = decode_header::<PaymentPayloadV1>("X-PAYMENT", data) {
        payloads(&p.payload);
    }
}

/// `PAYMENT-REQUIRED`, as a paying client reads a node's 402.
pub fn x402_required(data: &[u8]) {
    use cairn_x402::wire::{PaymentRequired, decode_header};
    if let Ok(r) = decode_header::<PaymentRequired>("PAYMENT-REQUIRED", data) {
        for o in &r.accepts {
            let _ = cairn_x402::prepaid::domain_from_offer(o);
            let _ = cairn_x402::wire::chain_id_of(&o.network);
        }
    }
}

fn payloads(v: &serde_json::Value) {
    if let Ok(e) = cairn_x402::exact::parse(v) {
        let _ = e.authorization.message();
        if let Ok(sig) = Signature::try_from(e.signature.as_ref()) {
            let _ = cairn_core::sig::recover_prehash(&sig, &B256::ZERO);
        }
    }
    prepaid_value(v);
}

/// A `prepaid` voucher payload (JSON).
pub fn prepaid_voucher(data: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        prepaid_value(&v);
    }
}

fn prepaid_value(v: &serde_json::Value) {
    if let Ok(p) = serde_json::from_value::<cairn_x402::prepaid::PrepaidPayload>(v.clone())
        && let Ok(sig) = Signature::try_from(p.signature.as_ref())
    {
        let _ = cairn_core::sig::recover_prehash(&sig, &B256::repeat_byte(1));
    }
}

const LIMITS: cairn_node_api::kserve::DecodeLimits = cairn_node_api::kserve::DecodeLimits {
    max_elements: 1 << 16,
};

/// A KServe v2 JSON request body.
pub fn kserve_json(data: &[u8]) {
    let _ = cairn_node_api::kserve::decode(data, None, LIMITS);
}

/// A KServe v2 binary-extension body: the first two bytes give the JSON part's length.
pub fn kserve_binary(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let n = u16::from_le_bytes([data[0], data[1]]) as usize;
    let _ = cairn_node_api::kserve::decode(&data[2..], Some(n), LIMITS);
}

/// A safetensors payload (inputs and outputs a node hands to verifiers).
pub fn safetensors(data: &[u8]) {
    if let Ok(t) = cairn_node_api::safetensors_io::decode(data) {
        let again =
            cairn_node_api::safetensors_io::decode(&cairn_node_api::safetensors_io::encode(&t))
                .expect("round trip");
        assert_eq!(again, t);
    }
}

/// An uploaded model file.
pub fn onnx(data: &[u8]) {
    let _ = cairn_onnx::read_signature(data, cairn_onnx::Limits::default());
    let _ = cairn_onnx::ensure_self_contained(data);
}

/// An uploaded language model file: whatever the reader accepts describes itself consistently
/// and survives the catalog's JSON round trip; the engine loads it or refuses it (never panics),
/// and a model it loads runs a token.
pub fn gguf(data: &[u8]) {
    if let Ok(mut model) = cairn_llm::Model::load(data)
        && model.weights.config.context > 0
    {
        let _ = model.set_threads(1);
        let _ = model.session().feed(&[0]);
    }
    if let Ok(m) = cairn_gguf::read_metadata(data, cairn_gguf::Limits::default()) {
        assert_eq!(m.data_offset + m.data_bytes, data.len() as u64);
        assert_eq!(m.tensor_types.values().sum::<u64>(), m.tensor_count);
        let json = serde_json::to_string(&m).expect("serializes");
        let again: cairn_gguf::GgufMetadata = serde_json::from_str(&json).expect("parses");
        assert_eq!(again, m);
    }
}

/// A signed request's headers: five lines (address, timestamp, nonce, signature, body digest)
/// and a sixth with the target.
pub fn signed_request(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<&str> = text.splitn(6, '\n').collect();
    let get = |name: &str| {
        let i = [
            cairn_core::auth::HEADER_ADDRESS,
            cairn_core::auth::HEADER_TIMESTAMP,
            cairn_core::auth::HEADER_NONCE,
            cairn_core::auth::HEADER_SIGNATURE,
            cairn_core::auth::HEADER_CONTENT_SHA256,
        ]
        .iter()
        .position(|h| *h == name)?;
        lines.get(i).copied()
    };
    let target = lines.get(5).copied().unwrap_or("/");
    let _ = cairn_core::auth::verify_request(get, "node.example", "GET", target, b"");
    let _ = cairn_core::auth::host_and_target(target);
}

/// TEE evidence as a registering node presents it (JSON), and each kind's raw document.
pub fn attestation(data: &[u8]) {
    use cairn_attest::{Evidence, EvidenceKind, Policy};
    const NOW: u64 = 1_700_000_000;
    let policy = Policy { allow_dev: true };
    if let Ok(e) = serde_json::from_slice::<Evidence>(data) {
        let _ = cairn_attest::verify(&e, NOW, policy);
    }
    for kind in [
        EvidenceKind::Nitro,
        EvidenceKind::SevSnp,
        EvidenceKind::Tdx,
        EvidenceKind::Dev,
    ] {
        let e = Evidence {
            kind,
            document: data.to_vec(),
            endorsements: Vec::new(),
        };
        let _ = cairn_attest::verify(&e, NOW, policy);
    }
}
