//! Writes the seed corpus (`fuzz/corpus/<target>/`): one or two real inputs per target, made
//! with the project's own writers, so fuzzing starts from valid shapes.
//! Usage: cargo run -p cairn-fuzz --example seeds

use std::path::Path;

use alloy_primitives::{Address, B256, U256, keccak256};
use alloy_signer_local::PrivateKeySigner;
use cairn_core::{BlobId, DataType, ExecutionProfile, Tensor};
use cairn_receipt::{Claims, ReceiptDomain};
use cairn_x402::wire::{
    PaymentPayloadV1, PaymentRequired, PaymentRequirements, ResourceInfo, encode_header,
};
use sha2::Digest;

fn write(root: &Path, target: &str, name: &str, data: &[u8]) {
    let dir = root.join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), data).unwrap();
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let key = PrivateKeySigner::from_bytes(&keccak256("cairn fuzz seeds")).unwrap();

    let receipt = Claims {
        request_id: keccak256("request"),
        model: BlobId::of(b"model"),
        input_hash: keccak256("in"),
        output_hash: keccak256("out"),
        profile: ExecutionProfile {
            engine: "tract".into(),
            engine_version: "0.23.9".into(),
            isa: "x86_64".into(),
            threads: 1,
        },
        timestamp: 1_700_000_000,
        price: U256::from(1000u64),
        payment_ref: B256::ZERO,
        llm: None,
    }
    .sign(
        ReceiptDomain {
            chain_id: 31337,
            verifying_contract: Address::repeat_byte(7),
        },
        &key,
    )
    .unwrap();
    write(
        &root,
        "receipt_json",
        "signed.json",
        receipt.to_json().to_string().as_bytes(),
    );

    let signer = cairn_receipt::ReceiptSigner::new(
        cairn_core::sig::SigningKey::from_signer(&key),
        receipt.domain,
    );
    let batch = signer
        .sign_batch(
            (0..3u8)
                .map(|i| Claims {
                    request_id: keccak256([i]),
                    ..receipt.claims.clone()
                })
                .collect(),
        )
        .unwrap();
    let listed: Vec<_> = std::iter::once(receipt.clone()).chain(batch).collect();
    write(
        &root,
        "receipt_listing",
        "own-and-batch-signed",
        &cairn_receipt::compact::encode_receipts(&listed).unwrap(),
    );

    let offer = |scheme: &str| PaymentRequirements {
        scheme: scheme.into(),
        network: "eip155:31337".into(),
        amount: U256::from(1000u64),
        asset: Address::repeat_byte(1),
        pay_to: Address::repeat_byte(2),
        max_timeout_seconds: 300,
        extra: serde_json::json!({"name": "Cairn USD", "version": "1", "escrow": Address::repeat_byte(3)}),
    };
    let required = PaymentRequired {
        x402_version: 2,
        error: None,
        resource: ResourceInfo {
            url: "http://node/v2/models/m/infer".into(),
            description: "one inference".into(),
            mime_type: "application/json".into(),
        },
        accepts: vec![offer("prepaid"), offer("exact")],
        extensions: None,
    };
    write(
        &root,
        "x402_required",
        "offers",
        encode_header(&required).as_bytes(),
    );
    let exact = cairn_x402::client::pay_exact(&key, &required, &required.accepts[1]).unwrap();
    write(&root, "x402_v2", "exact", exact.as_bytes());
    let prepaid = cairn_x402::client::pay_prepaid(
        &key,
        &required,
        &required.accepts[0],
        B256::ZERO,
        U256::from(5000u64),
    )
    .unwrap();
    write(&root, "x402_v2", "prepaid", prepaid.as_bytes());
    let decoded: serde_json::Value =
        cairn_x402::wire::decode_header("PAYMENT-SIGNATURE", exact.as_bytes()).unwrap();
    let v1 = PaymentPayloadV1 {
        x402_version: 1,
        scheme: "exact".into(),
        network: "base-sepolia".into(),
        payload: decoded["payload"].clone(),
    };
    write(&root, "x402_v1", "exact", encode_header(&v1).as_bytes());
    let voucher: serde_json::Value =
        cairn_x402::wire::decode_header("PAYMENT-SIGNATURE", prepaid.as_bytes()).unwrap();
    write(
        &root,
        "prepaid_voucher",
        "voucher.json",
        voucher["payload"].to_string().as_bytes(),
    );

    write(
        &root,
        "kserve_json",
        "digit.json",
        &std::fs::read(repo.join("examples/digit.json")).unwrap(),
    );
    write(
        &root,
        "kserve_json",
        "nested.json",
        br#"{"id":"a","inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2.5],[-3,4e3]]},{"name":"b","shape":[2],"datatype":"BOOL","data":[true,0]}],"outputs":[{"name":"y","parameters":{"binary_data":true}}],"parameters":{"binary_data_output":false}}"#,
    );
    let tensors = vec![
        Tensor::new(
            "x",
            DataType::Fp32,
            vec![2, 2],
            [1f32, 2.0, 3.0, 4.0]
                .iter()
                .flat_map(|f| f.to_le_bytes())
                .collect(),
        )
        .unwrap(),
        Tensor::new("ids", DataType::Int64, vec![3], vec![0; 24]).unwrap(),
    ];
    let (body, n) = cairn_node_api::client::binary_request(&tensors);
    let mut framed = (n as u16).to_le_bytes().to_vec();
    framed.extend_from_slice(&body);
    write(&root, "kserve_binary", "two_inputs", &framed);
    write(
        &root,
        "safetensors",
        "two_tensors",
        &cairn_node_api::safetensors_io::encode(&tensors),
    );

    write(
        &root,
        "onnx",
        "digits_mlp.onnx",
        &std::fs::read(repo.join("crates/cairn-cli/assets/digits_mlp.onnx")).unwrap(),
    );

    write(&root, "gguf", "tiny_llama.gguf", &tiny_gguf());

    let body_digest: [u8; 32] = sha2::Sha256::digest(b"").into();
    let h = cairn_core::auth::sign_request(
        &key,
        "node.example",
        "GET",
        "/v1/receipts/0x1/input",
        body_digest,
    );
    let lines: Vec<String> = h.to_pairs().iter().map(|(_, v)| v.clone()).collect();
    write(
        &root,
        "signed_request",
        "get_payload",
        format!("{}\n/v1/receipts/0x1/input", lines.join("\n")).as_bytes(),
    );

    let testdata = repo.join("crates/cairn-attest/testdata");
    let nitro = std::fs::read(testdata.join("nitro_attestation.cose")).unwrap();
    write(&root, "attestation", "nitro.cose", &nitro);
    let evidence = cairn_attest::Evidence {
        kind: cairn_attest::EvidenceKind::Nitro,
        document: nitro,
        endorsements: Vec::new(),
    };
    write(
        &root,
        "attestation",
        "nitro.json",
        serde_json::to_string(&evidence).unwrap().as_bytes(),
    );
    let dev = cairn_attest::DevAttester::new(key.clone());
    let dev_evidence =
        cairn_attest::Attester::evidence(&dev, &cairn_attest::report_data(key.address(), None))
            .unwrap();
    write(
        &root,
        "attestation",
        "dev.json",
        serde_json::to_string(&dev_evidence).unwrap().as_bytes(),
    );
    println!("seeds written to {}", root.display());
}

/// A small llama-shaped GGUF: metadata of each kind the reader keeps, a tokenizer, and two
/// tensors (F32 and Q4_1) laid out at 32-byte alignment.
fn tiny_gguf() -> Vec<u8> {
    fn s(b: &mut Vec<u8>, v: &str) {
        b.extend((v.len() as u64).to_le_bytes());
        b.extend(v.as_bytes());
    }
    let mut kv: Vec<u8> = Vec::new();
    let mut n_kv = 0u64;
    let mut text = |kv: &mut Vec<u8>, k: &str, v: &str| {
        s(kv, k);
        kv.extend(8u32.to_le_bytes());
        s(kv, v);
        n_kv += 1;
    };
    text(&mut kv, "general.architecture", "llama");
    text(&mut kv, "tokenizer.ggml.model", "gpt2");
    text(&mut kv, "tokenizer.chat_template", "{{ messages }}");
    s(&mut kv, "llama.context_length");
    kv.extend(4u32.to_le_bytes());
    kv.extend(2048u32.to_le_bytes());
    s(&mut kv, "tokenizer.ggml.tokens");
    kv.extend(9u32.to_le_bytes());
    kv.extend(8u32.to_le_bytes());
    kv.extend(3u64.to_le_bytes());
    for t in ["<|im_start|>", "<|im_end|>", "a"] {
        s(&mut kv, t);
    }
    s(&mut kv, "tokenizer.ggml.eos_token_id");
    kv.extend(4u32.to_le_bytes());
    kv.extend(1u32.to_le_bytes());
    let n_kv = n_kv + 3;
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(2u64.to_le_bytes());
    b.extend(n_kv.to_le_bytes());
    b.extend(kv);
    for (name, dims, ty, offset) in [
        ("token_embd.weight", [8u64, 3], 0u32, 0u64),
        ("blk.0.attn_q.weight", [32, 2], 3, 96),
    ] {
        s(&mut b, name);
        b.extend(2u32.to_le_bytes());
        for d in dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(ty.to_le_bytes());
        b.extend(offset.to_le_bytes());
    }
    b.resize(b.len().next_multiple_of(32), 0);
    b.extend((0..96 + 40).map(|i| i as u8));
    b
}
