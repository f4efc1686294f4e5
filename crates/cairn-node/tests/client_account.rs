//! Attack: a node lies about what it accepted on a payer's prepaid channel ("you have spent
//! everything but one price"), hoping the client signs a voucher for the whole deposit. The
//! client signs from its own account: each voucher is what its own successful calls cost plus
//! the price, whatever the node says.

use std::sync::{Arc, Mutex};

use alloy_primitives::{Address, B256, U256};
use alloy_signer::SignerSync;
use alloy_signer_local::PrivateKeySigner;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use cairn_core::{BlobId, DataType, ExecutionProfile, Tensor};
use cairn_node_api::NodeClient;
use cairn_receipt::{Claims, ReceiptDomain};
use cairn_x402::client::PrepaidAccount;
use cairn_x402::wire::{
    PaymentPayload, PaymentRequired, PaymentRequirements, ResourceInfo, decode_header,
    encode_header,
};
use serde_json::json;

const PRICE: u64 = 1_000;

fn offer(scheme: &str) -> PaymentRequirements {
    PaymentRequirements {
        scheme: scheme.into(),
        network: "eip155:31337".into(),
        amount: U256::from(PRICE),
        asset: Address::repeat_byte(1),
        pay_to: Address::repeat_byte(2),
        max_timeout_seconds: 300,
        extra: json!({"name": "Cairn USD", "version": "1", "escrow": Address::repeat_byte(3)}),
    }
}

/// A 402 answer for `url` offering `accepts`, refusing a payment for `error` if any.
fn payment_required(
    url: &str,
    accepts: Vec<PaymentRequirements>,
    error: Option<String>,
) -> axum::response::Response {
    let required = PaymentRequired {
        x402_version: 2,
        error,
        resource: ResourceInfo {
            url: url.into(),
            description: String::new(),
            mime_type: String::new(),
        },
        accepts,
        extensions: None,
    };
    (
        StatusCode::PAYMENT_REQUIRED,
        [("payment-required", encode_header(&required))],
        "{}",
    )
        .into_response()
}

fn receipt() -> serde_json::Value {
    Claims {
        request_id: B256::repeat_byte(9),
        model: BlobId::of(b"m"),
        input_hash: B256::ZERO,
        output_hash: B256::ZERO,
        profile: ExecutionProfile {
            engine: "tract".into(),
            engine_version: "0.23.9".into(),
            isa: "generic".into(),
            threads: 1,
        },
        timestamp: 1_700_000_000,
        price: U256::from(PRICE),
        payment_ref: B256::ZERO,
        llm: None,
    }
    .sign(
        ReceiptDomain {
            chain_id: 31337,
            verifying_contract: Address::repeat_byte(5),
        },
        &PrivateKeySigner::random(),
    )
    .unwrap()
    .to_json()
}

/// A lying node: every channel "has spent" all but one price of a large deposit. Records the
/// payments it is sent.
async fn liar() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let infer = move |headers: HeaderMap| {
        let s = s.clone();
        async move {
            let Some(h) = headers.get("payment-signature") else {
                return payment_required(
                    "http://node/v2/models/m/infer",
                    vec![offer("prepaid"), offer("exact")],
                    None,
                );
            };
            let p: PaymentPayload = decode_header("PAYMENT-SIGNATURE", h.as_bytes()).unwrap();
            s.lock()
                .unwrap()
                .push(json!({"scheme": p.accepted.scheme, "payload": p.payload}));
            // A well-formed answer (the client reads only receipts that verify): the lie is
            // in the channel state alone.
            axum::Json(json!({
                "model_name": BlobId::of(b"m"), "model_version": "",
                "outputs": [{"name": "y", "datatype": "FP32", "shape": [1], "data": [1.0]}],
                "parameters": {"receipt": receipt(), "payload_token": B256::ZERO},
            }))
            .into_response()
        }
    };
    let app = axum::Router::new()
        .route("/v2/models/m/infer", post(infer))
        .route(
            "/v1/prepaid/{payer}",
            get(|| async {
                axum::Json(json!({
                    "payer": Address::repeat_byte(4), "payee": Address::repeat_byte(2),
                    "salt": B256::ZERO, "known": true, "closing": false,
                    "deposited": "1000000", "accepted": "999000",
                }))
            }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, seen)
}

#[tokio::test]
async fn vouchers_follow_the_payers_own_account_not_the_nodes_word() {
    let (url, seen) = liar().await;
    let dir = tempfile::tempdir().unwrap();
    let payer = PrivateKeySigner::random();
    let x = Tensor::new("x", DataType::Fp32, vec![1], vec![0; 4]).unwrap();
    let client = NodeClient::new(&url)
        .with_payer(payer.clone(), Default::default())
        .with_accounts(dir.path().to_owned());
    // No account on this machine for the channel: the client does not take the node's word for
    // where the channel stands; it pays this call with `exact` (one price, at most).
    let out = client
        .infer("m", std::slice::from_ref(&x), true)
        .await
        .unwrap();
    assert_eq!(out.payment.unwrap().scheme, "exact");
    // With an account (3,000 paid so far), the vouchers are 4,000 then 5,000.
    let path = client
        .account_path(payer.address(), &offer("prepaid"))
        .unwrap();
    PrepaidAccount::create(&path, U256::from(3_000u64)).unwrap();
    for _ in 0..2 {
        let out = client
            .infer("m", std::slice::from_ref(&x), true)
            .await
            .unwrap();
        assert_eq!(out.payment.unwrap().scheme, "prepaid");
    }
    let vouchers: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p["scheme"] == "prepaid")
        .map(|p| {
            p["payload"]["voucher"]["cumulativeAmount"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        vouchers,
        ["4000", "5000"],
        "the node's claim of 999,000 leaked into a voucher"
    );
    assert_eq!(
        PrepaidAccount::load(&path).unwrap().unwrap().paid,
        U256::from(5_000u64)
    );
}

/// Attack: a node asks to be paid in another token the payer holds, or on another chain, where
/// the same number of units may be worth far more, or with vouchers on another escrow. A client
/// pinned to its asset (and escrow) signs nothing for any other; pinned to the node's own, it
/// pays.
#[tokio::test]
async fn a_client_pinned_to_its_asset_signs_for_no_other() {
    let (url, seen) = liar().await;
    let payer = PrivateKeySigner::random();
    let x = Tensor::new("x", DataType::Fp32, vec![1], vec![0; 4]).unwrap();
    let theirs = offer("exact");
    for (network, asset) in [
        (theirs.network.as_str(), Address::repeat_byte(9)),
        ("eip155:8453", theirs.asset),
    ] {
        let Err(e) = NodeClient::new(&url)
            .with_payer(payer.clone(), Default::default())
            .with_asset(network, asset)
            .infer("m", std::slice::from_ref(&x), true)
            .await
        else {
            panic!("paid in {asset} on {network}")
        };
        let e = e.to_string();
        assert!(e.contains("not paying"), "{e}");
        assert!(seen.lock().unwrap().is_empty(), "a payment was sent: {e}");
    }
    // A voucher pays in its escrow's token, whatever asset the offer names: pinned to another
    // escrow, nothing is signed either.
    let Err(e) = NodeClient::new(&url)
        .with_payer(payer.clone(), Default::default())
        .with_asset(&theirs.network, theirs.asset)
        .with_escrow(Address::repeat_byte(8))
        .infer("m", std::slice::from_ref(&x), true)
        .await
    else {
        panic!("paid with vouchers on another escrow")
    };
    assert!(e.to_string().contains("not paying"), "{e}");
    assert!(seen.lock().unwrap().is_empty());
    let out = NodeClient::new(&url)
        .with_payer(payer, Default::default())
        .with_asset(&theirs.network, theirs.asset)
        .with_escrow(Address::repeat_byte(3))
        .infer("m", std::slice::from_ref(&x), true)
        .await
        .unwrap();
    assert_eq!(out.payment.unwrap().scheme, "exact");
    assert_eq!(seen.lock().unwrap().len(), 1);
}

/// Attack: a node publishes a per-token price, then names a far larger ceiling in a chat
/// call's 402, hoping the client signs it (it could then claim the whole ceiling). The client
/// works the ceiling out from the published price and the request, and refuses to sign more.
#[tokio::test]
async fn a_ceiling_over_the_published_price_is_not_signed() {
    let price = cairn_node_api::openai::TokenPrice {
        prompt_per_1k: U256::from(100u64),
        completion_per_1k: U256::from(400u64),
    };
    let terms = cairn_node_api::PaymentTerms {
        pay_to: Address::repeat_byte(2),
        asset: Address::repeat_byte(1),
        network: "eip155:31337".into(),
        schemes: vec!["prepaid".into()],
        escrow: Address::repeat_byte(3),
        token_name: "Cairn USD".into(),
        token_version: "1".into(),
        min_deposit: U256::from(1u64),
        default_price: U256::ZERO,
        model_prices: Vec::new(),
        llm_prices: vec![cairn_node_api::LlmPrice {
            model: "*".into(),
            prompt_per_1k: price.prompt_per_1k,
            completion_per_1k: price.completion_per_1k,
        }],
        redeem_every_secs: 5,
    };
    let asked = Arc::new(Mutex::new(U256::ZERO));
    let a = asked.clone();
    let chat = move |headers: HeaderMap| {
        let a = a.clone();
        async move {
            assert!(
                headers.get("payment-signature").is_none(),
                "the client signed the inflated ceiling"
            );
            let mut o = offer("prepaid");
            o.amount = *a.lock().unwrap();
            payment_required("http://node/v1/chat/completions", vec![o], None)
        }
    };
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(chat))
        .route(
            "/v1/node",
            get(move || async move { axum::Json(json!({"payments": terms})) }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });

    let dir = tempfile::tempdir().unwrap();
    let payer = PrivateKeySigner::random();
    let client = NodeClient::new(&url)
        .with_payer(payer.clone(), Default::default())
        .with_accounts(dir.path().to_owned());
    let path = client
        .account_path(payer.address(), &offer("prepaid"))
        .unwrap();
    PrepaidAccount::create(&path, U256::ZERO).unwrap();
    let request = json!({"model": "m@1", "messages": [{"role": "user", "content": "Hi"}],
                         "max_tokens": 8});
    let body_len = serde_json::to_vec(&request).unwrap().len();
    *asked.lock().unwrap() = price.most(body_len, Some(8)) * U256::from(1_000u64);
    let e = client.chat(&request).await.unwrap_err().to_string();
    assert!(e.contains("not paying"), "{e}");
    assert_eq!(
        PrepaidAccount::load(&path).unwrap().unwrap().signed,
        U256::ZERO
    );
}

/// A lying node's `batch-settlement` side: every voucher is refused with a corrective 402 that
/// says the channel has been charged `claim`, backed by `voucherState`: a voucher the payer
/// never signed (`replay_own` false), or the very voucher it just sent (true; its ceiling is
/// then the claimed count). Records the payloads it is sent.
async fn batch_liar(replay_own: bool) -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let batch_offer = || {
        let mut o = offer(cairn_x402::batch::SCHEME);
        o.extra = json!({
            "name": "Cairn USD", "version": "1",
            "receiverAuthorizer": Address::repeat_byte(6),
            "withdrawDelay": 900, "minDeposit": "10000",
        });
        o
    };
    let infer = move |headers: HeaderMap| {
        let s = s.clone();
        async move {
            let mut o = batch_offer();
            let mut error = None;
            if let Some(h) = headers.get("payment-signature") {
                let p: PaymentPayload = decode_header("PAYMENT-SIGNATURE", h.as_bytes()).unwrap();
                let voucher = p.payload["voucher"].clone();
                s.lock().unwrap().push(p.payload);
                let (claim, signature) = if replay_own {
                    (
                        voucher["maxClaimableAmount"].clone(),
                        voucher["signature"].clone(),
                    )
                } else {
                    let forged = PrivateKeySigner::random()
                        .sign_hash_sync(&B256::repeat_byte(7))
                        .unwrap();
                    (
                        json!("999000"),
                        json!(alloy_primitives::Bytes::from(forged.as_bytes().to_vec())),
                    )
                };
                let extra = o.extra.as_object_mut().unwrap();
                extra.insert(
                    "channelState".into(),
                    json!({"channelId": voucher["channelId"], "balance": "1000000",
                        "totalClaimed": "0", "chargedCumulativeAmount": claim}),
                );
                extra.insert(
                    "voucherState".into(),
                    json!({"signedMaxClaimable": claim, "signature": signature}),
                );
                error = Some(cairn_x402::batch::ERR_CUMULATIVE_MISMATCH.to_string());
            }
            payment_required("http://node/v2/models/m/infer", vec![o], error)
        }
    };
    let app = axum::Router::new().route("/v2/models/m/infer", post(infer));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, seen)
}

/// The ceilings of the `batch-settlement` vouchers a client with a fresh account signs for
/// `runs` calls to `url`, each refused.
async fn batch_ceilings(
    url: &str,
    seen: &Mutex<Vec<serde_json::Value>>,
    runs: usize,
) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let x = Tensor::new("x", DataType::Fp32, vec![1], vec![0; 4]).unwrap();
    let client = NodeClient::new(url)
        .with_payer(PrivateKeySigner::random(), Default::default())
        .with_accounts(dir.path().to_owned())
        .with_batch_deposit(U256::from(50_000u64));
    for _ in 0..runs {
        let err = client
            .infer("m", std::slice::from_ref(&x), true)
            .await
            .err()
            .expect("the lying node never answers");
        assert!(err.to_string().contains("402"), "{err}");
    }
    let seen = seen.lock().unwrap();
    // New to this machine, the channel is tried with a voucher alone, and the node's word on
    // the balance (a lie there costs the payer nothing) makes no deposit either.
    assert!(seen.iter().all(|p| p["type"] == "voucher"), "{seen:?}");
    seen.iter()
        .map(|p| {
            p["voucher"]["maxClaimableAmount"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// Attack: the corrective 402 says the channel has been charged 999,000 already, backed by a
/// "latest voucher" the payer never signed, hoping the client signs the next step from there.
/// The client takes the node's count only within a ceiling the payer's own signature shows.
#[tokio::test]
async fn a_corrective_402_with_a_forged_voucher_moves_no_ceiling() {
    let (url, seen) = batch_liar(false).await;
    let ceilings = batch_ceilings(&url, &seen, 1).await;
    assert_eq!(
        ceilings,
        ["1000", "1000"],
        "the forged count leaked into a voucher"
    );
}

/// Attack: the node refuses each voucher and shows it back as the payer's latest one counted,
/// hoping the client steps one price up per refusal (its count growing with no call served).
/// A refused voucher proves nothing: every retry and every later call signs the same ceiling.
#[tokio::test]
async fn a_refused_voucher_shown_back_moves_no_ceiling() {
    let (url, seen) = batch_liar(true).await;
    let ceilings = batch_ceilings(&url, &seen, 3).await;
    assert_eq!(
        ceilings, ["1000"; 6],
        "a refused voucher raised the next one"
    );
}
