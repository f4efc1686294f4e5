//! Local verification cost of one payment, as the paywall does it before anything runs
//! (scripts/bench-payments.sh). Prints JSON with median and p99 in microseconds for:
//! - `ecrecover`: recovering one secp256k1 signer from a prehash with libsecp256k1 (the floor:
//!   every scheme does one), and `ecrecover_k256` the same with the pure-Rust k256;
//! - `exact`: base64 header → JSON → offer match → EIP-712 hash → recover → compare;
//! - `prepaid`: the same for a voucher, minus the store step;
//! - `prepaid_store`: the store step of one prepaid call (take the voucher, then count it), with
//!   counts surviving the process (`process`, the default) and power loss (`power`).
//!
//! Usage: verify_bench [ITERATIONS]

use std::time::Instant;

use alloy_primitives::{B256, U256};
use alloy_signer::SignerSync;
use alloy_sol_types::{Eip712Domain, SolStruct};
use cairn_ledger::chain::Voucher;
use cairn_x402::wire::{
    PaymentPayload, PaymentRequired, PaymentRequirements, ResourceInfo, decode_header,
};
use cairn_x402::{client, exact, prepaid};
use serde_json::json;

fn time(n: usize, mut f: impl FnMut()) -> (f64, f64) {
    let mut v: Vec<u128> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos()
        })
        .collect();
    v.sort_unstable();
    (v[n / 2] as f64 / 1e3, v[n * 99 / 100] as f64 / 1e3)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(20_000, |s| s.parse().unwrap());
    let payer = alloy_signer_local::PrivateKeySigner::random();
    let token = alloy_primitives::Address::repeat_byte(0x11);
    let escrow = alloy_primitives::Address::repeat_byte(0x22);
    let pay_to = alloy_primitives::Address::repeat_byte(0x33);
    let offer = PaymentRequirements {
        scheme: "exact".into(),
        network: "eip155:31337".into(),
        amount: U256::from(1000),
        asset: token,
        pay_to,
        max_timeout_seconds: 300,
        extra: json!({"name": "Cairn USD", "version": "1"}),
    };
    let required = PaymentRequired {
        x402_version: 2,
        error: None,
        resource: ResourceInfo::default(),
        accepts: vec![offer.clone()],
        extensions: None,
    };
    let domain = exact::domain_from_offer(&offer, 31337);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();

    let hash = B256::repeat_byte(7);
    let sig = payer.sign_hash_sync(&hash).unwrap();
    let k256 = time(n, || {
        std::hint::black_box(sig.recover_address_from_prehash(&hash).unwrap());
    });
    let floor = time(n, || {
        std::hint::black_box(cairn_core::sig::recover_prehash(&sig, &hash).unwrap());
    });

    let header = client::pay_exact(&payer, &required, &offer).unwrap();
    let exact_t = time(n, || {
        let p: PaymentPayload = decode_header("PAYMENT-SIGNATURE", header.as_bytes()).unwrap();
        assert!(p.accepted.same_offer(&offer));
        let parsed = exact::parse(&p.payload).unwrap();
        std::hint::black_box(exact::verify_local(&parsed, &offer, &domain, now).unwrap());
    });

    let pre_offer = PaymentRequirements {
        scheme: "prepaid".into(),
        extra: json!({"escrow": escrow, "name": "Cairn Escrow", "version": "1"}),
        ..offer.clone()
    };
    let pre_domain: Eip712Domain = prepaid::domain_from_offer(&pre_offer).unwrap();
    let header =
        client::pay_prepaid(&payer, &required, &pre_offer, B256::ZERO, U256::from(5000)).unwrap();
    let prepaid_t = time(n, || {
        let p: PaymentPayload = decode_header("PAYMENT-SIGNATURE", header.as_bytes()).unwrap();
        let v: prepaid::PrepaidPayload = serde_json::from_value(p.payload).unwrap();
        let msg = Voucher {
            payer: v.voucher.payer,
            payee: v.voucher.payee,
            salt: v.voucher.salt,
            cumulativeAmount: v.voucher.cumulative_amount,
            nonce: v.voucher.nonce,
        };
        let s = alloy_primitives::Signature::try_from(v.signature.as_ref()).unwrap();
        let who =
            cairn_core::sig::recover_prehash(&s, &msg.eip712_signing_hash(&pre_domain)).unwrap();
        assert_eq!(who, v.voucher.payer);
    });
    let store_t = |counts: cairn_sqlite::Durability, n: usize| {
        let dir = tempfile::tempdir().unwrap();
        let store =
            cairn_x402::PaymentStore::open(&dir.path().join("payments.sqlite"), counts).unwrap();
        let id = B256::repeat_byte(7);
        let rec = cairn_x402::store::ChannelRecord {
            id,
            payer: payer.address(),
            payee: escrow,
            salt: B256::ZERO,
            deposited: U256::ZERO,
            closing: false,
            accepted: U256::ZERO,
            pending: U256::ZERO,
            redeemed: U256::ZERO,
        };
        store
            .refresh_channel(1, &rec, U256::MAX >> 1, false, U256::ZERO)
            .unwrap();
        let price = U256::from(10);
        let mut i = 0u64;
        time(n, || {
            i += 1;
            let key = alloy_primitives::keccak256(i.to_be_bytes());
            store
                .accept_voucher(id, key, price * U256::from(i), B256::ZERO, price, &[1; 65])
                .unwrap()
                .unwrap();
            store.commit_voucher(key, price).unwrap();
        })
    };
    let store_process = store_t(cairn_sqlite::Durability::Normal, n.min(20_000));
    let store_power = store_t(cairn_sqlite::Durability::Full, n.min(2_000));
    println!(
        "{}",
        json!({
            "prepaid_store": {"process": {"p50_us": store_process.0, "p99_us": store_process.1},
                              "power": {"p50_us": store_power.0, "p99_us": store_power.1}},
            "iterations": n,
            "ecrecover_k256": {"p50_us": k256.0, "p99_us": k256.1},
            "ecrecover": {"p50_us": floor.0, "p99_us": floor.1, "k256_over_libsecp256k1_p50": k256.0 / floor.0},
            "exact": {"p50_us": exact_t.0, "p99_us": exact_t.1, "ratio_p50_to_ecrecover": exact_t.0 / floor.0},
            "prepaid": {"p50_us": prepaid_t.0, "p99_us": prepaid_t.1, "ratio_p50_to_ecrecover": prepaid_t.0 / floor.0},
        })
    );
}
