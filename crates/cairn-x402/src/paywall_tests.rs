//! The paywall in front of a real axum route, over HTTP, settling on the embedded chain.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use alloy_primitives::{Address, B256, U256};
use alloy_signer_local::PrivateKeySigner;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use cairn_ledger::dev_signer;

use crate::prepaid::Prepaid;
use crate::tests::devnet;
use crate::wire::{PAYMENT_SIGNATURE, PaymentRequired, SettleResponse, decode_header};
use crate::{Paid, Paywall, Price, Pricing, client};

const PRICE: u64 = 1_000;

/// The site's price, which a test may change (an operator's new `--model-price`, a release).
struct Fixed(Arc<AtomicU64>);

impl Default for Fixed {
    fn default() -> Self {
        Self(Arc::new(AtomicU64::new(PRICE)))
    }
}

/// What the pricing put in the request: the route must see it (a node runs the model it priced).
#[derive(Clone)]
struct Quoted;

impl Pricing for Fixed {
    fn price<'a>(
        &'a self,
        parts: &'a mut axum::http::request::Parts,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<Option<Price>, axum::response::Response>>
                + Send
                + 'a,
        >,
    > {
        parts.extensions.insert(Quoted);
        let amount = U256::from(self.0.load(Ordering::SeqCst));
        Box::pin(async move {
            Ok(Some(Price {
                amount,
                description: "a test run".into(),
            }))
        })
    }
}

/// The route: counts its runs, takes a while, fails on body "fail", panics on "panic", echoes
/// the payment.
/// The answers the test route gave, by payment reference: what the node's receipt log is to
/// its `KeptAnswers` (the same request's answer again; another request's, none).
#[derive(Default)]
struct Answered(std::sync::Mutex<std::collections::HashMap<B256, (String, String)>>);

impl crate::KeptAnswers for Answered {
    fn answer<'a>(
        &'a self,
        payment_ref: B256,
        _: &'a axum::http::HeaderMap,
        body: &'a [u8],
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Option<axum::response::Response>> + Send + 'a>,
    > {
        Box::pin(async move {
            use axum::response::IntoResponse;
            let (asked, answer) = self.0.lock().unwrap().get(&payment_ref)?.clone();
            (asked.as_bytes() == body).then(|| (StatusCode::OK, answer).into_response())
        })
    }
}

async fn run(
    State((runs, answered)): State<(Arc<AtomicUsize>, Arc<Answered>)>,
    paid: Option<axum::Extension<Paid>>,
    quoted: Option<axum::Extension<Quoted>>,
    body: String,
) -> (StatusCode, String) {
    assert!(
        quoted.is_some(),
        "what the pricing put in the request reaches the route"
    );
    runs.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await;
    if body == "fail" {
        return (StatusCode::BAD_REQUEST, "{\"code\":\"bad\"}".into());
    }
    if body == "panic" {
        panic!("the route panics");
    }
    let paid = paid.expect("the paywall put the payment in");
    let answer = format!("ran for {}", paid.0.payer);
    answered
        .0
        .lock()
        .unwrap()
        .insert(paid.0.payment_ref, (body, answer.clone()));
    (StatusCode::OK, answer)
}

struct Site {
    url: String,
    runs: Arc<AtomicUsize>,
    d: crate::tests::Devnet,
    vault: Address,
    price: Arc<AtomicU64>,
}

async fn site(prepaid: bool) -> Site {
    site_with(prepaid, None).await.0
}

/// A site whose paywall also takes x402 `batch-settlement` vouchers (the node's side returned).
async fn batch_site() -> (Site, Arc<crate::batch::Batch>) {
    let (s, b) = site_with(false, Some(())).await;
    (s, b.unwrap())
}

async fn site_with(prepaid: bool, batch: Option<()>) -> (Site, Option<Arc<crate::batch::Batch>>) {
    site_on(devnet().await, prepaid, batch).await
}

/// [`site_with`] on the devnet `d`.
async fn site_on(
    d: crate::tests::Devnet,
    prepaid: bool,
    batch: Option<()>,
) -> (Site, Option<Arc<crate::batch::Batch>>) {
    let vault = dev_signer(9).address();
    let pre = prepaid.then(|| {
        Arc::new(Prepaid::new(
            d.chain.clone(),
            d.facilitator.store().clone(),
            dev_signer(2),
            vault,
        ))
    });
    let pricing = Fixed::default();
    let price = pricing.0.clone();
    let mut paywall = Paywall::new(d.facilitator.clone(), pre, Arc::new(pricing), vault);
    let mut book = None;
    let answered = Arc::new(Answered::default());
    if batch.is_some() {
        paywall = paywall.with_kept_answers(answered.clone());
        let b = Arc::new(
            crate::batch::Batch::new(
                d.chain.clone(),
                d.facilitator.store().clone(),
                dev_signer(2),
                vault,
            )
            .await
            .unwrap()
            .expect("the devnet has the batch-settlement contracts"),
        );
        paywall = paywall.with_batch(b.clone());
        book = Some(b);
    }
    let paywall = Arc::new(paywall);
    let runs = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/run", post(run))
        .with_state((runs.clone(), answered))
        .layer(axum::middleware::from_fn_with_state(
            paywall,
            crate::paywall::middleware,
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/run", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (
        Site {
            url,
            runs,
            d,
            vault,
            price,
        },
        book,
    )
}

async fn required(url: &str) -> PaymentRequired {
    let r = reqwest::Client::new()
        .post(url)
        .body("go")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 402);
    client::offers(r.headers()).unwrap()
}

async fn exact_header(url: &str, payer: &PrivateKeySigner) -> String {
    let req = required(url).await;
    let offer = offer_of(&req, "exact");
    client::pay_exact(payer, &req, &offer).unwrap()
}

/// A call on `url` paid from channel `ch` under `terms` (the 402 and its batch-settlement
/// offer), depositing `deposit` if the channel needs it: answered 200, and the channel counts
/// what it was charged.
async fn charged_call(
    url: &str,
    ch: &mut crate::client::BatchChannel,
    payer: &PrivateKeySigner,
    (req, offer): (&PaymentRequired, &crate::wire::PaymentRequirements),
    deposit: U256,
) {
    let h = ch.pay(payer, req, offer, deposit).unwrap();
    let (status, body, settle, _) = send(url, &h, "go").await;
    assert_eq!(status, 200, "{body}");
    ch.charged(&settle.unwrap(), offer.amount);
}

async fn send(
    url: &str,
    header: &str,
    body: &str,
) -> (u16, String, Option<SettleResponse>, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(url)
        .header(PAYMENT_SIGNATURE, header)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let settle = client::settle_response(r.headers());
    let v2 = r
        .headers()
        .get("payment-required")
        .and_then(|h| decode_header::<serde_json::Value>("PAYMENT-REQUIRED", h.as_bytes()).ok())
        .unwrap_or_default();
    (status, r.text().await.unwrap(), settle, v2)
}

#[tokio::test]
async fn unpaid_gets_both_versions_and_a_json_error() {
    let s = site(true).await;
    let r = reqwest::Client::new()
        .post(&s.url)
        .body("go")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 402);
    let req = client::offers(r.headers()).unwrap();
    assert_eq!(req.x402_version, 2);
    let schemes: Vec<_> = req.accepts.iter().map(|o| o.scheme.as_str()).collect();
    assert_eq!(schemes, ["prepaid", "exact", "upto"]);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["x402Version"], 1);
    assert_eq!(body["code"], "payment_required");
    assert!(body["message"].as_str().unwrap().contains("1000"));
    assert_eq!(s.runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_replayed_payment_runs_once_in_sequence_and_in_parallel() {
    let s = site(false).await;
    let h = exact_header(&s.url, &s.d.payer).await;
    let (status, body, settle, _) = send(&s.url, &h, "go").await;
    assert_eq!(status, 200, "{body}");
    assert!(settle.unwrap().success);
    let (status, _, _, v2) = send(&s.url, &h, "go").await;
    assert_eq!(status, 402);
    assert_eq!(v2["error"], "invalid_exact_evm_nonce_already_used");
    assert_eq!(s.runs.load(Ordering::SeqCst), 1);

    let h = exact_header(&s.url, &s.d.payer).await;
    let all = futures::future::join_all((0..8).map(|_| send(&s.url, &h, "go"))).await;
    let ok = all.iter().filter(|r| r.0 == 200).count();
    assert_eq!(ok, 1, "{:?}", all.iter().map(|r| r.0).collect::<Vec<_>>());
    for r in all.iter().filter(|r| r.0 != 200) {
        assert_eq!(
            (r.0, r.3["error"].as_str()),
            (402, Some("invalid_exact_evm_nonce_already_used")),
            "{all:?}"
        );
    }
    assert_eq!(s.runs.load(Ordering::SeqCst), 2);
    assert_eq!(
        s.d.chain.token_balance(s.vault).await.unwrap(),
        U256::from(2 * PRICE)
    );
}

#[tokio::test]
async fn a_failing_route_charges_nothing_and_the_payment_stays_usable() {
    let s = site(false).await;
    let before = s.d.chain.token_balance(s.d.payer.address()).await.unwrap();
    let h = exact_header(&s.url, &s.d.payer).await;
    let (status, _, settle, _) = send(&s.url, &h, "fail").await;
    assert_eq!(status, 400);
    assert!(settle.is_none());
    assert_eq!(
        s.d.chain.token_balance(s.d.payer.address()).await.unwrap(),
        before
    );
    let (status, _, _, _) = send(&s.url, &h, "go").await;
    assert_eq!(status, 200);
    assert_eq!(
        s.d.chain.token_balance(s.d.payer.address()).await.unwrap(),
        before - U256::from(PRICE)
    );
}

#[tokio::test]
async fn a_failed_settlement_withholds_the_output() {
    let s = site(false).await;
    // A payer who holds exactly one price signs two payments; both pass the checks before
    // either settles, only one transfer can succeed.
    let poor = dev_signer(7);
    s.d.chain
        .mint(&dev_signer(0), poor.address(), U256::from(PRICE))
        .await
        .unwrap();
    let h1 = exact_header(&s.url, &poor).await;
    let h2 = exact_header(&s.url, &poor).await;
    let (a, b) = tokio::join!(send(&s.url, &h1, "go"), send(&s.url, &h2, "go"));
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [200, 402], "{a:?} {b:?}");
    let failed = if a.0 == 402 { a } else { b };
    // The output is not in the refusal; the reason is.
    assert!(!failed.1.contains("ran for"), "{}", failed.1);
    let settle = failed.2.expect("a PAYMENT-RESPONSE on the failure");
    assert!(!settle.success);
    assert_eq!(
        settle.error_reason.as_deref(),
        Some("invalid_exact_evm_transaction_simulation_failed")
    );
    assert_eq!(s.runs.load(Ordering::SeqCst), 2);
    assert_eq!(
        s.d.chain.token_balance(poor.address()).await.unwrap(),
        U256::ZERO
    );
}

#[tokio::test]
async fn bad_payments_are_refused_with_their_reason() {
    let s = site(false).await;
    let req = required(&s.url).await;
    let offer = req.accepts[0].clone();
    // Wrongly addressed: the authorization pays someone else than the offer's payTo.
    let mut elsewhere = offer.clone();
    elsewhere.pay_to = Address::repeat_byte(0x42);
    let forged_to = client::pay_exact(&s.d.payer, &req, &elsewhere).unwrap();
    let mut env: serde_json::Value =
        decode_header("PAYMENT-SIGNATURE", forged_to.as_bytes()).unwrap();
    env["accepted"] = serde_json::to_value(&offer).unwrap();
    let forged_to = crate::wire::encode_header(&env);
    let (status, _, _, v2) = send(&s.url, &forged_to, "go").await;
    assert_eq!(
        (status, v2["error"].as_str()),
        (402, Some("invalid_exact_evm_payload_recipient_mismatch"))
    );
    // Underpaid: value below the price.
    let mut cheap = offer.clone();
    cheap.amount = U256::from(PRICE - 1);
    let under = client::pay_exact(&s.d.payer, &req, &cheap).unwrap();
    let mut env: serde_json::Value = decode_header("PAYMENT-SIGNATURE", under.as_bytes()).unwrap();
    env["accepted"] = serde_json::to_value(&offer).unwrap();
    let (status, _, _, v2) = send(&s.url, &crate::wire::encode_header(&env), "go").await;
    assert_eq!(
        (status, v2["error"].as_str()),
        (
            402,
            Some("invalid_exact_evm_payload_authorization_value_mismatch")
        )
    );
    // Forged: signed by someone else than `from`.
    let good = client::pay_exact(&s.d.payer, &req, &offer).unwrap();
    let other = client::pay_exact(&dev_signer(8), &req, &offer).unwrap();
    let mut env: serde_json::Value = decode_header("PAYMENT-SIGNATURE", good.as_bytes()).unwrap();
    let o: serde_json::Value = decode_header("PAYMENT-SIGNATURE", other.as_bytes()).unwrap();
    env["payload"]["signature"] = o["payload"]["signature"].clone();
    let (status, _, _, v2) = send(&s.url, &crate::wire::encode_header(&env), "go").await;
    assert_eq!(
        (status, v2["error"].as_str()),
        (402, Some("invalid_exact_evm_payload_signature"))
    );
    // Expired: validBefore in the past (re-signed, so only the time is wrong).
    let mut env: serde_json::Value = decode_header("PAYMENT-SIGNATURE", good.as_bytes()).unwrap();
    let mut auth: crate::exact::Authorization =
        serde_json::from_value(env["payload"]["authorization"].clone()).unwrap();
    auth.valid_before = U256::from(crate::now_secs() - 10);
    let sig = {
        use alloy_signer::SignerSync;
        use alloy_sol_types::SolStruct;
        let domain = crate::exact::domain_from_offer(&offer, 31337);
        s.d.payer
            .sign_hash_sync(&auth.message().eip712_signing_hash(&domain))
            .unwrap()
    };
    env["payload"]["authorization"] = serde_json::to_value(&auth).unwrap();
    env["payload"]["signature"] = serde_json::Value::String(format!(
        "0x{}",
        alloy_primitives::hex::encode(sig.as_bytes())
    ));
    let (status, _, _, v2) = send(&s.url, &crate::wire::encode_header(&env), "go").await;
    assert_eq!(
        (status, v2["error"].as_str()),
        (
            402,
            Some("invalid_exact_evm_payload_authorization_valid_before")
        )
    );
    // Garbage.
    let (status, body, _, v2) = send(&s.url, "not base64!", "go").await;
    assert_eq!(
        (status, v2["error"].as_str()),
        (402, Some("invalid_payload")),
        "{body}"
    );
    assert_eq!(s.runs.load(Ordering::SeqCst), 0);
    assert_eq!(s.d.chain.token_balance(s.vault).await.unwrap(), U256::ZERO);
}

/// `header` as a payer would send it had the offer described `what` (the resource it echoes):
/// the 402 it answered came before the name it calls stood for another model.
fn echoing(header: &str, what: &str) -> String {
    let mut env: serde_json::Value = decode_header("PAYMENT-SIGNATURE", header.as_bytes()).unwrap();
    if env["resource"].is_null() {
        env["resource"] = serde_json::json!({"url": "http://127.0.0.1/run"});
    }
    env["resource"]["description"] = serde_json::Value::String(what.into());
    crate::wire::encode_header(&env)
}

/// A payment made for what the resource was when offered (a node names the model's CID there)
/// pays for no run of something else: refused before the route, nothing charged, the payment
/// still good for what it was made for; a payment already charged still gets its answer again.
#[tokio::test]
async fn a_payment_made_for_another_resource_runs_nothing_and_charges_nothing() {
    // Prepaid, and answers kept by payment (as a node keeps them in its receipt log).
    let s = site_with(true, Some(())).await.0;
    let payer = &s.d.payer;
    let before = s.d.chain.token_balance(payer.address()).await.unwrap();
    let refused = refused_as_stale;
    // exact: refused, with nothing written, then the same authorization pays with the
    // resource it is for.
    let h = exact_header(&s.url, payer).await;
    refused(&send(&s.url, &echoing(&h, "an older release"), "go").await);
    assert_eq!(s.runs.load(Ordering::SeqCst), 0);
    assert!(stored(&s, &h).is_none(), "a stale payment writes nothing");
    assert_eq!(
        s.d.chain.token_balance(payer.address()).await.unwrap(),
        before
    );
    // While it runs, the same payment made stale is refused as in use (not as unspent).
    let running = tokio::spawn({
        let (url, h) = (s.url.clone(), h.clone());
        async move { send(&url, &h, "go").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, _, _, v2) = send(&s.url, &echoing(&h, "an older release"), "go").await;
    assert_eq!(
        (status, v2["error"].as_str()),
        (402, Some("invalid_exact_evm_nonce_already_used"))
    );
    let (status, body, _, _) = running.await.unwrap();
    assert_eq!(status, 200, "{body}");
    // Charged: presented again with what it was made for, it is answered from what was kept.
    let (status, again, _, _) = send(&s.url, &echoing(&h, "an older release"), "go").await;
    assert_eq!((status, &again), (200, &body));
    assert_eq!(s.runs.load(Ordering::SeqCst), 1);
    // A prepaid voucher: refused, and its step given back for the next call.
    let salt = B256::ZERO;
    let (req, offer) = prepaid_deposit(&s, salt).await;
    let offer = &offer;
    let v1 = client::pay_prepaid(payer, &req, offer, salt, U256::from(PRICE)).unwrap();
    refused(&send(&s.url, &echoing(&v1, "an older release"), "go").await);
    assert_eq!(s.runs.load(Ordering::SeqCst), 1);
    let (status, body, _, _) = send(&s.url, &v1, "go").await;
    assert_eq!(status, 200, "{body}");
    let (status, again, _, _) = send(&s.url, &echoing(&v1, "an older release"), "go").await;
    assert_eq!((status, &again), (200, &body));
    // Not with another signature: a counted voucher's fields are no key to its answer.
    let mut forged: serde_json::Value = decode_header("PAYMENT-SIGNATURE", v1.as_bytes()).unwrap();
    let other = client::pay_prepaid(&dev_signer(8), &req, offer, salt, U256::from(PRICE)).unwrap();
    let other: serde_json::Value = decode_header("PAYMENT-SIGNATURE", other.as_bytes()).unwrap();
    forged["payload"]["signature"] = other["payload"]["signature"].clone();
    let forged = crate::wire::encode_header(&forged);
    refused(&send(&s.url, &echoing(&forged, "an older release"), "go").await);
    // An upto permit: refused, nothing settled, and it still pays.
    approve_permit2(&s, payer).await;
    let h = upto_header(&s, payer, |_| {}, |_| {}).await;
    let body = refused_as_stale_then_paid(&s, &h, U256::from(PRICE)).await;
    assert_eq!(s.runs.load(Ordering::SeqCst), 3);
    let (status, again, _, _) = send(&s.url, &echoing(&h, "an older release"), "go").await;
    assert_eq!((status, &again), (200, &body));
    assert_eq!(s.runs.load(Ordering::SeqCst), 3);
    // A batch-settlement deposit: refused before its transaction (sent at the node's gas).
    let h = batch_deposit(&s, B256::repeat_byte(6), U256::from(20 * PRICE)).await;
    refused_as_stale_then_paid(&s, &h, U256::from(20 * PRICE)).await;
    assert_eq!(s.runs.load(Ordering::SeqCst), 4);
}

/// `r` is the refusal of a payment made for what the site sold before.
fn refused_as_stale(r: &(u16, String, Option<SettleResponse>, serde_json::Value)) {
    assert_eq!(
        (r.0, r.3["error"].as_str()),
        (402, Some("invalid_payment_requirements")),
        "{r:?}"
    );
    assert!(
        r.1.contains("a test run"),
        "names what is sold now: {}",
        r.1
    );
}

/// `header` made stale is refused, the payer's balance untouched; as made, it pays `cost` and
/// runs: its answer.
async fn refused_as_stale_then_paid(s: &Site, header: &str, cost: U256) -> String {
    let payer = s.d.payer.address();
    let before = s.d.chain.token_balance(payer).await.unwrap();
    let runs = s.runs.load(Ordering::SeqCst);
    refused_as_stale(&send(&s.url, &echoing(header, "an older release"), "go").await);
    assert_eq!(s.runs.load(Ordering::SeqCst), runs);
    assert_eq!(s.d.chain.token_balance(payer).await.unwrap(), before);
    let (status, body, _, _) = send(&s.url, header, "go").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.d.chain.token_balance(payer).await.unwrap(), before - cost);
    body
}

/// The `PAYMENT-SIGNATURE` of a batch-settlement refund request `payload` for `offer` in `req`.
fn refund_request(
    req: &PaymentRequired,
    offer: &crate::wire::PaymentRequirements,
    payload: serde_json::Value,
) -> String {
    crate::wire::encode_header(&crate::wire::PaymentPayload {
        x402_version: 2,
        resource: Some(req.resource.clone()),
        accepted: offer.clone(),
        payload,
        extensions: None,
    })
}

/// The offer of `scheme` in `req`.
fn offer_of(req: &PaymentRequired, scheme: &str) -> crate::wire::PaymentRequirements {
    req.accepts
        .iter()
        .find(|o| o.scheme == scheme)
        .unwrap_or_else(|| panic!("no {scheme} offer"))
        .clone()
}

/// The payer's deposit of 10 prices on the prepaid channel `salt`, and the 402 with its offer.
async fn prepaid_deposit(
    s: &Site,
    salt: B256,
) -> (PaymentRequired, crate::wire::PaymentRequirements) {
    s.d.chain
        .deposit(&s.d.payer, s.vault, salt, U256::from(10 * PRICE))
        .await
        .unwrap();
    let req = required(&s.url).await;
    let offer = offer_of(&req, "prepaid");
    (req, offer)
}

/// What the payment store holds of the `exact` payment `header`.
fn stored(s: &Site, header: &str) -> Option<crate::store::PaymentRecord> {
    let env: serde_json::Value = decode_header("PAYMENT-SIGNATURE", header.as_bytes()).unwrap();
    let auth: crate::exact::Authorization =
        serde_json::from_value(env["payload"]["authorization"].clone()).unwrap();
    let key = crate::exact::payment_ref(s.d.facilitator.token(), auth.from, auth.nonce);
    s.d.facilitator.store().get(key).unwrap()
}

/// A batch-settlement payload from the payer's own channel on `salt` that deposits `deposit`
/// with its first voucher.
async fn batch_deposit(s: &Site, salt: B256, deposit: U256) -> String {
    let req = required(&s.url).await;
    let offer = req
        .accepts
        .iter()
        .find(|o| o.scheme == crate::batch::SCHEME)
        .unwrap();
    let mut ch = client::BatchChannel::new(s.d.payer.address(), offer, salt).unwrap();
    ch.pay(&s.d.payer, &req, offer, deposit).unwrap()
}

/// A payment made at the price asked before a change pays for no new run (nothing charged, the
/// payment given back), and one charged before the change is still answered again: its payer
/// lost the answer, not the right to it.
#[tokio::test]
async fn a_payment_charged_before_the_price_changed_is_answered_again() {
    let s = site_with(true, Some(())).await.0;
    let payer = &s.d.payer;
    let salt = B256::ZERO;
    let (req, offer) = prepaid_deposit(&s, salt).await;
    let offer = &offer;
    let voucher =
        |n: u64| client::pay_prepaid(payer, &req, offer, salt, U256::from(n * PRICE)).unwrap();
    let (charged, unused) = (
        exact_header(&s.url, payer).await,
        exact_header(&s.url, payer).await,
    );
    let (status, exact_answer, _, _) = send(&s.url, &charged, "go").await;
    assert_eq!(status, 200, "{exact_answer}");
    let v1 = voucher(1);
    let (status, voucher_answer, _, _) = send(&s.url, &v1, "go").await;
    assert_eq!(status, 200, "{voucher_answer}");
    let paid = s.d.chain.token_balance(payer.address()).await.unwrap();
    s.price.store(2 * PRICE, Ordering::SeqCst);
    // Charged at the old price: answered again, nothing more charged or run.
    for (h, answer) in [(&charged, &exact_answer), (&v1, &voucher_answer)] {
        let (status, again, _, _) = send(&s.url, h, "go").await;
        assert_eq!((status, &again), (200, answer));
    }
    // Made at the old price, never charged: refused, and nothing runs.
    let v2 = voucher(2);
    for h in [&unused, &v2] {
        let (status, body, _, v2) = send(&s.url, h, "go").await;
        assert_eq!(
            (status, v2["error"].as_str()),
            (402, Some("invalid_payment_requirements")),
            "{body}"
        );
        assert!(body.contains("2000"), "names the price now: {body}");
    }
    assert!(
        stored(&s, &unused).is_none(),
        "a stale payment writes nothing"
    );
    assert_eq!(s.runs.load(Ordering::SeqCst), 2);
    assert_eq!(
        s.d.chain.token_balance(payer.address()).await.unwrap(),
        paid
    );
    // A deposit of one unit echoing a price of 0 (whose minimum deposit is 0): refused before
    // the node sends its transaction.
    let h = batch_deposit(&s, B256::repeat_byte(7), U256::from(1)).await;
    let mut env: serde_json::Value = decode_header("PAYMENT-SIGNATURE", h.as_bytes()).unwrap();
    env["accepted"]["amount"] = "0".into();
    let (status, body, _, refusal) = send(&s.url, &crate::wire::encode_header(&env), "go").await;
    assert_eq!(
        (status, refusal["error"].as_str()),
        (402, Some("invalid_payment_requirements")),
        "{body}"
    );
    assert_eq!(
        s.d.chain.token_balance(payer.address()).await.unwrap(),
        paid
    );
    // At the old price again, the one never charged still pays, and the voucher's step is free.
    s.price.store(PRICE, Ordering::SeqCst);
    for h in [&unused, &v2] {
        let (status, body, _, _) = send(&s.url, h, "go").await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(s.runs.load(Ordering::SeqCst), 4);
}

/// Without kept answers, an answer withheld while its transfer confirms goes only to the same
/// request presented again: the payment itself is public once its transfer is out, so anyone
/// could present it.
#[tokio::test]
async fn a_withheld_answer_goes_only_to_the_request_that_asked_it() {
    let (d, busy) = crate::tests::busy_devnet().await;
    let s = site_on(d, false, None).await.0;
    let h = exact_header(&s.url, &s.d.payer).await;
    // Refused for `code`, and nothing of the answer in the refusal.
    let withheld =
        |(status, body, _, v2): (u16, String, Option<SettleResponse>, serde_json::Value),
         code: &str| {
            assert_eq!((status, v2["error"].as_str()), (402, Some(code)), "{body}");
            assert!(!body.contains("ran for"), "{body}");
        };
    busy.busy.store(2, Ordering::SeqCst);
    withheld(send(&s.url, &h, "go").await, "settlement_pending");
    s.d.facilitator.reconcile_all().await;
    withheld(
        send(&s.url, &h, "another").await,
        "invalid_exact_evm_nonce_already_used",
    );
    let (status, body, settle, _) = send(&s.url, &h, "go").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("ran for"), "{body}");
    assert!(settle.unwrap().success);
    assert_eq!(s.runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn parallel_paid_requests_all_settle() {
    let s = site(false).await;
    let mut headers = Vec::new();
    for _ in 0..12 {
        headers.push(exact_header(&s.url, &s.d.payer).await);
    }
    let all = futures::future::join_all(headers.iter().map(|h| send(&s.url, h, "go"))).await;
    for r in &all {
        assert_eq!(r.0, 200, "{:?}", r.1);
    }
    assert_eq!(
        s.d.chain.token_balance(s.vault).await.unwrap(),
        U256::from(12 * PRICE)
    );
}

#[tokio::test]
async fn prepaid_vouchers_are_checked_locally_stepped_atomically_and_redeemed() {
    let s = site(true).await;
    let payer = &s.d.payer;
    let salt = B256::ZERO;
    let (req, offer) = prepaid_deposit(&s, salt).await;
    let voucher =
        |n: u64| client::pay_prepaid(payer, &req, &offer, salt, U256::from(n * PRICE)).unwrap();
    // The same voucher eight times at once: the step is taken once, so one runs and is paid,
    // the other seven are refused as used.
    let v1 = voucher(1);
    let all = futures::future::join_all((0..8).map(|_| send(&s.url, &v1, "go"))).await;
    let ok: Vec<_> = all.iter().filter(|r| r.0 == 200).collect();
    assert_eq!(ok.len(), 1, "{all:?}");
    assert!(ok[0].2.as_ref().unwrap().success);
    for r in all.iter().filter(|r| r.0 != 200) {
        assert_eq!(
            (r.0, r.3["error"].as_str()),
            (402, Some("invalid_prepaid_voucher_already_used")),
            "{all:?}"
        );
    }
    assert_eq!(s.runs.load(Ordering::SeqCst), 1);
    // The same voucher again: it was taken (nothing runs, nothing more is owed).
    let (status, _, _, v2) = send(&s.url, &v1, "go").await;
    assert_eq!(
        (status, v2["error"].as_str()),
        (402, Some("invalid_prepaid_voucher_already_used"))
    );
    // A voucher promising more than the next step: refused (the node could claim more than
    // is owed with it).
    let (status, _, _, v2) = send(&s.url, &voucher(5), "go").await;
    assert_eq!(
        (status, v2["error"].as_str()),
        (402, Some("invalid_prepaid_voucher_amount"))
    );
    // A failing route gives the step back.
    let (status, _, _, _) = send(&s.url, &voucher(2), "fail").await;
    assert_eq!(status, 400);
    // So does a route that panics (a voucher left taken would block the channel's next step
    // until the node restarts).
    let (status, _, _, _) = send(&s.url, &voucher(2), "panic").await;
    assert_eq!(status, 500);
    let (status, _, _, _) = send(&s.url, &voucher(2), "go").await;
    assert_eq!(status, 200);
    // Past the deposit: refused.
    let (status, _, _, v2) = send(&s.url, &voucher(11), "go").await;
    assert_eq!(
        (status, v2["error"].as_str()),
        (402, Some("invalid_prepaid_insufficient_deposit"))
    );
    // A voucher signed by someone else for this payer: refused.
    let forged =
        client::pay_prepaid(&dev_signer(8), &req, &offer, salt, U256::from(3 * PRICE)).unwrap();
    let mut env: serde_json::Value = decode_header("PAYMENT-SIGNATURE", forged.as_bytes()).unwrap();
    env["payload"]["voucher"]["payer"] = serde_json::Value::String(payer.address().to_string());
    let (status, _, _, v2) = send(&s.url, &crate::wire::encode_header(&env), "go").await;
    assert_eq!(
        (status, v2["error"].as_str()),
        (402, Some("invalid_prepaid_signature"))
    );
    assert_eq!(s.runs.load(Ordering::SeqCst), 4);
    // Redemption pays the vault what was accepted, once.
    let pre = Prepaid::new(
        s.d.chain.clone(),
        s.d.facilitator.store().clone(),
        // The payee claims (here an account; a node claims for its payment vault).
        dev_signer(9),
        s.vault,
    );
    assert_eq!(pre.redeem_due().await.unwrap(), 1);
    assert_eq!(pre.redeem_due().await.unwrap(), 0);
    assert_eq!(
        s.d.chain.token_balance(s.vault).await.unwrap(),
        U256::from(2 * PRICE)
    );
    // After the payer asks to withdraw, the node takes no new vouchers on the channel.
    s.d.chain
        .request_withdrawal(payer, s.vault, salt)
        .await
        .unwrap();
    pre.redeem_due().await.unwrap();
    let (status, _, _, v2) = send(&s.url, &voucher(3), "go").await;
    assert_eq!(
        (status, v2["error"].as_str()),
        (402, Some("invalid_prepaid_channel_closing"))
    );
    // A new deposit cancels the withdrawal on chain; the node takes vouchers again (before, its
    // cached `closing` flag stayed set forever).
    s.d.chain
        .deposit(payer, s.vault, salt, U256::from(PRICE))
        .await
        .unwrap();
    let (status, body, _, _) = send(&s.url, &voucher(3), "go").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_failed_last_request_leaves_the_vouchers_redeemable() {
    let s = site(true).await;
    let payer = &s.d.payer;
    let salt = B256::repeat_byte(5);
    let (req, offer) = prepaid_deposit(&s, salt).await;
    let voucher =
        |n: u64| client::pay_prepaid(payer, &req, &offer, salt, U256::from(n * PRICE)).unwrap();
    assert_eq!(send(&s.url, &voucher(1), "go").await.0, 200);
    // The last request fails. Before the fix the node rolled its count back to 1 but kept the
    // signature of the voucher for 2: redeeming (1, sig of 2) reverted, every time.
    assert_eq!(send(&s.url, &voucher(2), "fail").await.0, 400);
    let before = s.d.chain.token_balance(s.vault).await.unwrap();
    let pre = Prepaid::new(
        s.d.chain.clone(),
        s.d.facilitator.store().clone(),
        // The payee claims (here an account; a node claims for its payment vault).
        dev_signer(9),
        s.vault,
    );
    assert_eq!(pre.redeem_due().await.unwrap(), 1);
    assert_eq!(
        s.d.chain.token_balance(s.vault).await.unwrap(),
        before + U256::from(PRICE)
    );
    let (_, claimed) =
        s.d.chain
            .channel(payer.address(), s.vault, salt)
            .await
            .unwrap();
    assert_eq!(claimed, U256::from(PRICE), "the failed request was charged");
    // The payer's next call (its own account says one call paid) presents the voucher for 2
    // again: taken, counted, redeemed.
    assert_eq!(send(&s.url, &voucher(2), "go").await.0, 200);
    assert_eq!(pre.redeem_due().await.unwrap(), 1);
    let (_, claimed) =
        s.d.chain
            .channel(payer.address(), s.vault, salt)
            .await
            .unwrap();
    assert_eq!(claimed, U256::from(2 * PRICE));
}

/// Two vouchers with the same ceiling are two vouchers (their nonces differ). A call charged
/// less than its most leaves the next call's ceiling where the last one's was: before nonces
/// that voucher was byte for byte the first one, refused as used, and the payer could never pay
/// again. The first voucher presented again is still refused; the claim is what was charged.
#[tokio::test]
async fn a_ceiling_met_again_is_a_new_voucher_not_a_replay() {
    let s = site(true).await;
    let payer = &s.d.payer;
    let salt = B256::repeat_byte(9);
    s.d.chain
        .deposit(payer, s.vault, salt, U256::from(100u64))
        .await
        .unwrap();
    let pre = Prepaid::new(
        s.d.chain.clone(),
        s.d.facilitator.store().clone(),
        dev_signer(9),
        s.vault,
    );
    let domain = s.d.chain.escrow_domain();
    let sign = |ceiling: u64| {
        serde_json::to_value(
            crate::prepaid::sign_voucher(payer, s.vault, salt, U256::from(ceiling), &domain)
                .unwrap(),
        )
        .unwrap()
    };
    // Most 30, charged 7; then most 23: the ceiling is 30 again.
    let first = sign(30);
    let a = pre.accept(&first, U256::from(30u64)).await.unwrap();
    pre.commit(&a, U256::from(7u64)).unwrap();
    let b = pre.accept(&sign(30), U256::from(23u64)).await.unwrap();
    assert_ne!(a.payment_ref(), b.payment_ref());
    pre.commit(&b, U256::from(23u64)).unwrap();
    match pre.accept(&first, U256::from(23u64)).await {
        Err(crate::X402Error::Invalid(r)) => {
            assert_eq!(r.code, "invalid_prepaid_voucher_already_used")
        }
        other => panic!("a replayed voucher was {other:?}"),
    }
    let before = s.d.chain.token_balance(s.vault).await.unwrap();
    assert_eq!(pre.redeem_due().await.unwrap(), 1);
    assert_eq!(
        s.d.chain.token_balance(s.vault).await.unwrap(),
        before + U256::from(30u64)
    );
}

/// An `upto` payment for the site's offer, signed by `payer` over the terms `signed` leaves,
/// then sent with the terms `sent` leaves (a forgery when they differ).
async fn upto_header(
    s: &Site,
    payer: &PrivateKeySigner,
    signed: impl FnOnce(&mut cairn_ledger::UptoAuthorization),
    sent: impl FnOnce(&mut cairn_ledger::UptoAuthorization),
) -> String {
    let req = required(&s.url).await;
    let offer = offer_of(&req, "upto");
    let facilitator: Address = offer.extra["facilitatorAddress"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut auth = cairn_ledger::UptoAuthorization {
        owner: payer.address(),
        token: offer.asset,
        max: offer.amount,
        nonce: U256::from_be_bytes(B256::random().0),
        deadline: U256::from(crate::now_secs() + 300),
        to: offer.pay_to,
        facilitator,
        valid_after: U256::ZERO,
    };
    signed(&mut auth);
    let sig = s.d.chain.sign_upto(payer, &auth).unwrap();
    sent(&mut auth);
    let upto = s.d.chain.upto().unwrap();
    let payload = serde_json::json!({
        "permit2Authorization": {
            "from": auth.owner,
            "permitted": {"token": auth.token, "amount": auth.max.to_string()},
            "spender": upto.proxy,
            "nonce": auth.nonce.to_string(),
            "deadline": auth.deadline.to_string(),
            "witness": {
                "to": auth.to,
                "facilitator": auth.facilitator,
                "validAfter": auth.valid_after.to_string(),
            },
        },
        "signature": alloy_primitives::Bytes::from(sig.as_bytes().to_vec()),
    });
    crate::wire::encode_header(&crate::wire::PaymentPayload {
        x402_version: 2,
        resource: None,
        accepted: offer,
        payload,
        extensions: None,
    })
}

/// Sends `body` paid by an upto permit with `nonce`, which the payer revokes 60 ms into the
/// call (routes taking 150 ms).
async fn send_revoked_meanwhile(
    s: &Site,
    payer: &PrivateKeySigner,
    nonce: U256,
    body: &'static str,
) -> (u16, String, Option<SettleResponse>, serde_json::Value) {
    let h = upto_header(s, payer, |a| a.nonce = nonce, |_| {}).await;
    let call = tokio::spawn({
        let url = s.url.clone();
        async move { send(&url, &h, body).await }
    });
    tokio::time::sleep(Duration::from_millis(60)).await;
    s.d.chain
        .invalidate_permit2_nonce(payer, nonce)
        .await
        .unwrap();
    call.await.unwrap()
}

async fn approve_permit2(s: &Site, payer: &PrivateKeySigner) {
    let permit2 = s.d.chain.upto().unwrap().permit2;
    s.d.chain.approve(payer, permit2, U256::MAX).await.unwrap();
}

#[tokio::test]
async fn upto_pays_the_price_once_a_failed_run_charges_nothing_and_a_replay_is_refused() {
    let s = site(false).await;
    let payer = &s.d.payer;
    approve_permit2(&s, payer).await;
    let before = s.d.chain.token_balance(payer.address()).await.unwrap();
    let h = upto_header(&s, payer, |_| {}, |_| {}).await;
    // A route that fails: no transaction, and the permit is still good.
    let (status, _, settle, _) = send(&s.url, &h, "fail").await;
    assert_eq!(status, 400);
    assert!(settle.is_none());
    let (status, body, settle, _) = send(&s.url, &h, "go").await;
    assert_eq!(status, 200, "{body}");
    let settle = settle.unwrap();
    assert!(settle.success, "{settle:?}");
    assert_eq!(settle.amount.as_deref(), Some("1000"));
    assert!(settle.transaction.starts_with("0x"), "{settle:?}");
    assert_eq!(
        s.d.chain.token_balance(payer.address()).await.unwrap(),
        before - U256::from(PRICE)
    );
    assert_eq!(
        s.d.chain.token_balance(s.vault).await.unwrap(),
        U256::from(PRICE)
    );
    let (status, _, _, v2) = send(&s.url, &h, "go").await;
    assert_eq!(status, 402);
    assert_eq!(v2["error"], "permit2_invalid_nonce");
    assert_eq!(s.runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn upto_refusals_run_nothing_and_charge_nothing() {
    let s = site(false).await;
    let payer = &s.d.payer;
    let before = s.d.chain.token_balance(payer.address()).await.unwrap();
    // Permit2 not approved yet.
    let h = upto_header(&s, payer, |_| {}, |_| {}).await;
    let (status, _, _, v2) = send(&s.url, &h, "go").await;
    assert_eq!(
        (status, v2["error"].as_str()),
        (402, Some("permit2_allowance_required"))
    );
    approve_permit2(&s, payer).await;
    let cases: Vec<(&str, String)> = vec![
        (
            "invalid_permit2_signature",
            upto_header(&s, payer, |_| {}, |a| a.nonce += U256::from(1)).await,
        ),
        (
            "upto_facilitator_mismatch",
            upto_header(
                &s,
                payer,
                |a| a.facilitator = dev_signer(7).address(),
                |_| {},
            )
            .await,
        ),
        (
            "invalid_permit2_recipient_mismatch",
            upto_header(&s, payer, |a| a.to = dev_signer(7).address(), |_| {}).await,
        ),
        (
            "permit2_amount_mismatch",
            upto_header(&s, payer, |a| a.max = U256::from(PRICE - 1), |_| {}).await,
        ),
        (
            "permit2_deadline_expired",
            upto_header(
                &s,
                payer,
                |a| a.deadline = U256::from(crate::now_secs()),
                |_| {},
            )
            .await,
        ),
        (
            "permit2_not_yet_valid",
            upto_header(
                &s,
                payer,
                |a| a.valid_after = U256::from(crate::now_secs() + 100),
                |_| {},
            )
            .await,
        ),
    ];
    for (code, h) in cases {
        let (status, body, _, v2) = send(&s.url, &h, "go").await;
        assert_eq!((status, v2["error"].as_str()), (402, Some(code)), "{body}");
    }
    // A payer who signs for more than they hold.
    let poor = dev_signer(8);
    approve_permit2(&s, &poor).await;
    let h = upto_header(&s, &poor, |_| {}, |_| {}).await;
    let (status, _, _, v2) = send(&s.url, &h, "go").await;
    assert_eq!(
        (status, v2["error"].as_str()),
        (402, Some("permit2_insufficient_balance"))
    );
    assert_eq!(s.runs.load(Ordering::SeqCst), 0);
    assert_eq!(
        s.d.chain.token_balance(payer.address()).await.unwrap(),
        before
    );
}

#[tokio::test]
async fn a_permit_revoked_while_its_call_runs_is_not_charged_and_its_answer_is_withheld() {
    let s = site(false).await;
    let payer = &s.d.payer;
    approve_permit2(&s, payer).await;
    let before = s.d.chain.token_balance(payer.address()).await.unwrap();
    let nonce = U256::from(4242u64);
    // The route takes 150 ms: the payer revokes the permit's nonce meanwhile.
    let (status, body, settle, v2) = send_revoked_meanwhile(&s, payer, nonce, "go").await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(v2["error"], "permit2_invalid_nonce");
    assert!(!settle.unwrap().success);
    assert!(!body.contains("ran for"), "the answer leaked: {body}");
    assert_eq!(
        s.d.chain.token_balance(payer.address()).await.unwrap(),
        before
    );
}

#[tokio::test]
async fn upto_signatures_the_contract_would_refuse_are_refused_before_the_call() {
    let s = site(false).await;
    let payer = &s.d.payer;
    approve_permit2(&s, payer).await;
    let h = upto_header(&s, payer, |_| {}, |_| {}).await;
    // Rewrite the signature inside the header: v as 0/1 (alloy parses it, OpenZeppelin's ECDSA
    // would not), and the high-s twin.
    let with_sig = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut pp: crate::wire::PaymentPayload =
            decode_header("PAYMENT-SIGNATURE", h.as_bytes()).unwrap();
        let sig: alloy_primitives::Bytes =
            serde_json::from_value(pp.payload["signature"].clone()).unwrap();
        let mut sig = sig.to_vec();
        f(&mut sig);
        pp.payload["signature"] = serde_json::json!(alloy_primitives::Bytes::from(sig));
        crate::wire::encode_header(&pp)
    };
    let low_v = with_sig(&|sig| sig[64] -= 27);
    let twin = with_sig(&|sig| {
        let parsed = alloy_primitives::Signature::try_from(&sig[..]).unwrap();
        *sig = cairn_core::sig::malleate(&parsed).as_bytes().to_vec();
    });
    for h in [low_v, twin] {
        let (status, body, _, v2) = send(&s.url, &h, "go").await;
        assert_eq!(
            (status, v2["error"].as_str()),
            (402, Some("invalid_permit2_signature")),
            "{body}"
        );
    }
    // A permit that expires before a call could end and be settled.
    let short = upto_header(
        &s,
        payer,
        |a| a.deadline = U256::from(crate::now_secs() + 30),
        |_| {},
    )
    .await;
    let (status, _, _, v2) = send(&s.url, &short, "go").await;
    assert_eq!(
        (status, v2["error"].as_str()),
        (402, Some("permit2_deadline_expired"))
    );
    assert_eq!(s.runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn upto_permits_at_once_never_promise_more_than_the_payer_holds() {
    let s = site(false).await;
    let payer = dev_signer(5);
    s.d.chain
        .mint(
            &dev_signer(0),
            payer.address(),
            U256::from(PRICE + PRICE / 2),
        )
        .await
        .unwrap();
    approve_permit2(&s, &payer).await;
    // Two permits of one price each, the payer holding one and a half: one runs; the other is
    // refused while the first is open, however they interleave.
    let (a, b) = (
        upto_header(&s, &payer, |_| {}, |_| {}).await,
        upto_header(&s, &payer, |_| {}, |_| {}).await,
    );
    let both = futures::future::join_all([send(&s.url, &a, "go"), send(&s.url, &b, "go")]).await;
    let codes: Vec<_> = both
        .iter()
        .map(|r| (r.0, r.3["error"].as_str().map(str::to_string)))
        .collect();
    assert!(codes.contains(&(200, None)), "{codes:?}");
    assert!(
        codes.contains(&(402, Some("permit2_insufficient_balance".into()))),
        "{codes:?}"
    );
    // One permit sent twice at once: it runs once.
    let c = upto_header(&s, &s.d.payer, |_| {}, |_| {}).await;
    approve_permit2(&s, &s.d.payer).await;
    let twice = futures::future::join_all([send(&s.url, &c, "go"), send(&s.url, &c, "go")]).await;
    let ok = twice.iter().filter(|r| r.0 == 200).count();
    assert_eq!(
        ok,
        1,
        "{:?}",
        twice
            .iter()
            .map(|r| (r.0, r.3["error"].clone()))
            .collect::<Vec<_>>()
    );
    for r in twice.iter().filter(|r| r.0 != 200) {
        assert_eq!(r.3["error"], "permit2_invalid_nonce");
    }
    assert_eq!(s.runs.load(Ordering::SeqCst), 2);
    assert_eq!(
        s.d.chain.token_balance(payer.address()).await.unwrap(),
        U256::from(PRICE / 2)
    );
}

/// A metered route (as a language-model call is): at most two prices, charged what the body
/// says after the run (`charge N`, `slow N`: after 150 ms; `fail`: no charge).
async fn metered(
    State(w): State<Arc<Paywall>>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let m = match w
        .take_metered(
            &uri,
            &headers,
            &body,
            U256::from(2 * PRICE),
            "metered".into(),
        )
        .await
    {
        Ok(m) => m,
        Err(r) => return r,
    };
    let text = String::from_utf8_lossy(&body).to_string();
    if text == "fail" {
        return (StatusCode::BAD_REQUEST, "failed").into_response();
    }
    if text.starts_with("slow") {
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let n: u64 = text.split_whitespace().last().unwrap().parse().unwrap();
    match m.charge(U256::from(n)).await {
        Ok(h) => {
            let mut r = (StatusCode::OK, "charged").into_response();
            r.headers_mut().extend(h);
            r
        }
        Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()).into_response(),
    }
}

async fn metered_site() -> Site {
    let d = devnet().await;
    let vault = dev_signer(9).address();
    let paywall = Arc::new(Paywall::new(
        d.facilitator.clone(),
        None,
        Arc::new(Fixed::default()),
        vault,
    ));
    let app = Router::new()
        .route("/metered", post(metered))
        .with_state(paywall);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/metered", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Site {
        url,
        runs: Arc::new(AtomicUsize::new(0)),
        d,
        vault,
        price: Arc::new(AtomicU64::new(PRICE)),
    }
}

#[tokio::test]
async fn a_metered_call_paid_with_upto_is_charged_what_it_used() {
    let s = metered_site().await;
    let payer = &s.d.payer;
    approve_permit2(&s, payer).await;
    let before = s.d.chain.token_balance(payer.address()).await.unwrap();
    // Only upto can pay (this paywall takes no vouchers), for the most.
    let req = required(&s.url).await;
    assert_eq!(req.accepts.len(), 1);
    assert_eq!(req.accepts[0].scheme, "upto");
    assert_eq!(req.accepts[0].amount, U256::from(2 * PRICE));

    let h = upto_header(&s, payer, |_| {}, |_| {}).await;
    let (status, body, settle, _) = send(&s.url, &h, "charge 700").await;
    assert_eq!(status, 200, "{body}");
    let settle = settle.unwrap();
    assert_eq!(
        (settle.success, settle.amount.as_deref()),
        (true, Some("700"))
    );
    assert_eq!(
        s.d.chain.token_balance(payer.address()).await.unwrap(),
        before - U256::from(700u64)
    );
    // More than the most is never settled.
    let h = upto_header(&s, payer, |_| {}, |_| {}).await;
    let (status, _, _, _) = send(&s.url, &h, "charge 2001").await;
    assert_eq!(status, 422);
    // A failed call charges nothing and leaves the permit usable; a charge of 0 sends nothing.
    let h = upto_header(&s, payer, |a| a.nonce = U256::from(99u64), |_| {}).await;
    let (status, _, _, _) = send(&s.url, &h, "fail").await;
    assert_eq!(status, 400);
    let (status, _, settle, _) = send(&s.url, &h, "charge 0").await;
    assert_eq!(status, 200);
    let settle = settle.unwrap();
    assert_eq!(
        (settle.amount.as_deref(), settle.transaction.as_str()),
        (Some("0"), "")
    );
    assert!(
        !s.d.chain
            .permit2_nonce_used(payer.address(), U256::from(99u64))
            .await
            .unwrap()
    );
    // Revoked while the call runs: the charge fails, nothing moves, the answer is withheld.
    let nonce = U256::from(7777u64);
    let (status, body, _, _) = send_revoked_meanwhile(&s, payer, nonce, "slow 500").await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("permit2_invalid_nonce"), "{body}");
    assert_eq!(
        s.d.chain.token_balance(payer.address()).await.unwrap(),
        before - U256::from(700u64)
    );
}

/// `upto_header` with the payer's EIP-2612 approval of Permit2 (`eip2612GasSponsoring`) in the
/// payload's extensions, made by `signer` at `nonce` for `value`.
async fn with_eip2612(
    s: &Site,
    header: &str,
    signer: &PrivateKeySigner,
    value: U256,
    nonce_offset: u64,
    valid_secs: u64,
) -> String {
    use alloy_sol_types::SolStruct;
    let mut pp: crate::wire::PaymentPayload =
        decode_header("PAYMENT-SIGNATURE", header.as_bytes()).unwrap();
    let owner: Address = pp.payload["permit2Authorization"]["from"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let permit2 = s.d.chain.upto().unwrap().permit2;
    let nonce = s.d.chain.token_nonce(owner).await.unwrap() + U256::from(nonce_offset);
    let deadline = U256::from(crate::now_secs() + valid_secs);
    let message = cairn_ledger::chain::Permit {
        owner,
        spender: permit2,
        value,
        nonce,
        deadline,
    };
    let hash = message.eip712_signing_hash(&s.d.chain.token_domain().await.unwrap());
    let sig = alloy_signer::SignerSync::sign_hash_sync(signer, &hash).unwrap();
    pp.extensions = Some(serde_json::json!({"eip2612GasSponsoring": {"info": {
        "from": owner, "asset": s.d.chain.deployment().token, "spender": permit2,
        "amount": value.to_string(), "nonce": nonce.to_string(), "deadline": deadline.to_string(),
        "signature": alloy_primitives::Bytes::from(sig.as_bytes().to_vec()), "version": "1",
    }}}));
    crate::wire::encode_header(&pp)
}

#[tokio::test]
async fn an_upto_payer_who_never_approved_permit2_pays_with_an_eip2612_approval_inside() {
    let s = site(false).await;
    // The 402 declares the extension beside the upto offer.
    let r = reqwest::Client::new()
        .post(&s.url)
        .body("go")
        .send()
        .await
        .unwrap();
    let req = client::offers(r.headers()).unwrap();
    assert!(
        req.extensions.unwrap()["eip2612GasSponsoring"]["schema"].is_object(),
        "no extension declared"
    );
    let payer = dev_signer(5);
    s.d.chain
        .mint(&dev_signer(0), payer.address(), U256::from(10 * PRICE))
        .await
        .unwrap();
    let price = U256::from(PRICE);
    // Refused: for less than the maximum, signed by someone else, at a stale nonce.
    let base = upto_header(&s, &payer, |_| {}, |_| {}).await;
    for (h, code) in [
        (
            with_eip2612(&s, &base, &payer, price - U256::from(1), 0, 600).await,
            "permit2_2612_amount_mismatch",
        ),
        (
            with_eip2612(&s, &base, &dev_signer(7), price, 0, 600).await,
            "eip2612_signature_invalid",
        ),
        (
            with_eip2612(&s, &base, &payer, price, 1, 600).await,
            "eip2612_nonce_mismatch",
        ),
        // Expiring before the permit it approves for (signed for 300 s).
        (
            with_eip2612(&s, &base, &payer, price, 0, 200).await,
            "eip2612_deadline_expired",
        ),
    ] {
        let (status, body, _, v2) = send(&s.url, &h, "go").await;
        assert_eq!((status, v2["error"].as_str()), (402, Some(code)), "{body}");
    }
    // Approval and transfer in the one settlement: the payer sent no transaction.
    let h = with_eip2612(&s, &base, &payer, price, 0, 600).await;
    let (status, body, settle, _) = send(&s.url, &h, "go").await;
    assert_eq!(status, 200, "{body}");
    assert!(settle.unwrap().success);
    assert_eq!(
        s.d.chain.token_balance(payer.address()).await.unwrap(),
        U256::from(9 * PRICE)
    );
    assert_eq!(
        s.d.chain.token_nonce(payer.address()).await.unwrap(),
        U256::from(1)
    );
    assert_eq!(s.runs.load(Ordering::SeqCst), 1);

    // An approval replaces the allowance when settled: with another permit open, it must cover
    // both, however large the allowance is now.
    approve_permit2(&s, &payer).await;
    let open = upto_header(&s, &payer, |_| {}, |_| {}).await;
    let first = tokio::spawn({
        let url = s.url.clone();
        async move { send(&url, &open, "go").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = upto_header(&s, &payer, |_| {}, |_| {}).await;
    let h = with_eip2612(&s, &second, &payer, price, 0, 600).await;
    let (status, body, _, v2) = send(&s.url, &h, "go").await;
    assert_eq!(
        (status, v2["error"].as_str()),
        (402, Some("permit2_allowance_required")),
        "{body}"
    );
    assert_eq!(first.await.unwrap().0, 200);
}

/// x402 `batch-settlement`: a deposit once (submitted by the node), then a voucher per request
/// counted without a chain call; every bad voucher is refused with its x402 reason and charges
/// nothing; a payer's withdrawal stops new vouchers and the node claims what it is owed within
/// the delay, sweeping it to its vault; the payer gets the rest back.
#[tokio::test]
async fn batch_settlement_channels_pay_and_refuse_bad_vouchers() {
    use crate::client::BatchChannel;
    let (s, batch) = batch_site().await;
    let payer = &s.d.payer;
    let chain = &s.d.chain;
    let token_balance = |who: Address| async move { chain.token_balance(who).await.unwrap() };
    let start = token_balance(payer.address()).await;
    let req = required(&s.url).await;
    let offer = offer_of(&req, "batch-settlement");
    assert_eq!(
        offer.extra["receiverAuthorizer"],
        dev_signer(2).address().to_checksum(None)
    );
    assert_eq!(offer.extra["minDeposit"], (10 * PRICE).to_string());
    let mut ch = BatchChannel::new(payer.address(), &offer, B256::repeat_byte(5)).unwrap();
    let reason = |v2: &serde_json::Value| v2["error"].as_str().unwrap_or_default().to_string();

    // A deposit under the node's minimum is refused before any transaction.
    let mut small = ch.clone();
    let h = small.pay(payer, &req, &offer, U256::from(PRICE)).unwrap();
    let (status, _, _, v2) = send(&s.url, &h, "go").await;
    assert_eq!(status, 402);
    assert_eq!(
        reason(&v2),
        "invalid_batch_settlement_evm_deposit_below_min_deposit"
    );
    assert_eq!(token_balance(payer.address()).await, start);

    // The deposit and the first voucher, then a voucher alone: each call charged the price.
    let deposit = U256::from(20 * PRICE);
    let mut last_header = String::new();
    for n in 1..=2u64 {
        let h = ch.pay(payer, &req, &offer, deposit).unwrap();
        last_header = h.clone();
        let (status, body, settle, _) = send(&s.url, &h, "go").await;
        assert_eq!(status, 200, "{body}");
        let settle = settle.unwrap();
        assert_eq!(settle.transaction, "");
        let extra = settle.extra.clone().unwrap();
        assert_eq!(extra["chargedAmount"], PRICE.to_string());
        assert_eq!(
            extra["channelState"]["chargedCumulativeAmount"],
            (n * PRICE).to_string()
        );
        ch.charged(&settle, offer.amount);
    }
    assert_eq!(token_balance(payer.address()).await, start - deposit);
    assert_eq!(s.runs.load(Ordering::SeqCst), 2);
    let last = ch.clone();

    // A voucher presented again for another request: the corrective 402 with the channel's
    // state and the payer's own latest voucher; nothing runs.
    let mut replay = ch.clone();
    replay.charged -= U256::from(PRICE);
    let h = replay.pay(payer, &req, &offer, deposit).unwrap();
    let (status, _, _, v2) = send(&s.url, &h, "another").await;
    assert_eq!(status, 402);
    assert_eq!(
        reason(&v2),
        "invalid_batch_settlement_evm_cumulative_amount_mismatch"
    );
    let extra = &v2["accepts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["scheme"] == "batch-settlement")
        .unwrap()["extra"];
    assert_eq!(
        extra["channelState"]["chargedCumulativeAmount"],
        (2 * PRICE).to_string()
    );
    assert_eq!(
        extra["voucherState"]["signedMaxClaimable"],
        (2 * PRICE).to_string()
    );

    // The last voucher presented again with the request it paid for: that answer again, charged
    // nothing more, and the response says so with the channel's state (a client new to the
    // channel learns where it stands).
    let (status, body, settle, _) = send(&s.url, &last_header, "go").await;
    assert_eq!(status, 200, "{body}");
    let extra = settle.unwrap().extra.expect("the channel's state");
    assert_eq!(extra["chargedAmount"], "0");
    assert_eq!(
        extra["channelState"]["chargedCumulativeAmount"],
        (2 * PRICE).to_string()
    );
    assert_eq!(s.runs.load(Ordering::SeqCst), 2);

    // Forged, high-s, over the balance, for another authorizer: each refused with its reason.
    let h = ch.pay(&dev_signer(7), &req, &offer, deposit).unwrap();
    let (status, _, _, v2) = send(&s.url, &h, "go").await;
    assert_eq!(
        (status, reason(&v2).as_str()),
        (402, "invalid_batch_settlement_evm_voucher_signature")
    );
    let mut high_s: serde_json::Value = ch.clone().payload(payer, &offer, deposit).unwrap();
    let sig: alloy_primitives::Signature = high_s["voucher"]["signature"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    high_s["voucher"]["signature"] = serde_json::json!(alloy_primitives::Bytes::from(
        cairn_core::sig::malleate(&sig).as_bytes().to_vec()
    ));
    let h = crate::wire::encode_header(&crate::wire::PaymentPayload {
        x402_version: 2,
        resource: Some(req.resource.clone()),
        accepted: offer.clone(),
        payload: high_s,
        extensions: None,
    });
    let (status, _, _, v2) = send(&s.url, &h, "go").await;
    assert_eq!(
        (status, reason(&v2).as_str()),
        (402, "invalid_batch_settlement_evm_voucher_signature")
    );
    // A voucher whose v byte is 0 (alloy reads it, the contract's ecrecover does not): the
    // node would serve it and never claim it.
    let mut v0: serde_json::Value = ch.clone().payload(payer, &offer, deposit).unwrap();
    let mut raw: Vec<u8> =
        alloy_primitives::hex::decode(v0["voucher"]["signature"].as_str().unwrap()).unwrap();
    raw[64] -= 27;
    v0["voucher"]["signature"] = serde_json::json!(alloy_primitives::Bytes::from(raw));
    let h = crate::wire::encode_header(&crate::wire::PaymentPayload {
        x402_version: 2,
        resource: Some(req.resource.clone()),
        accepted: offer.clone(),
        payload: v0,
        extensions: None,
    });
    let (status, _, _, v2) = send(&s.url, &h, "go").await;
    assert_eq!(
        (status, reason(&v2).as_str()),
        (402, "invalid_batch_settlement_evm_voucher_signature")
    );
    // A channel without a payer authorizer (its claims would depend on the payer's code later).
    let mut bare = ch.clone();
    bare.config.payerAuthorizer = Address::ZERO;
    bare.id = cairn_ledger::chain::batch_channel_id(31337, &bare.config);
    let h = bare.pay(payer, &req, &offer, deposit).unwrap();
    let (status, _, _, v2) = send(&s.url, &h, "go").await;
    assert_eq!(
        (status, reason(&v2).as_str()),
        (
            402,
            "invalid_batch_settlement_evm_payer_authorizer_required"
        )
    );
    assert_eq!(token_balance(payer.address()).await, start - deposit);
    // A channel held shut (a refund on its way) takes no voucher until it opens again.
    assert!(s.d.facilitator.store().lock_channel(ch.id));
    let h = ch.clone().pay(payer, &req, &offer, deposit).unwrap();
    let (status, _, _, v2) = send(&s.url, &h, "go").await;
    assert_eq!(
        (status, reason(&v2).as_str()),
        (402, "invalid_batch_settlement_evm_channel_busy")
    );
    s.d.facilitator.store().unlock_channel(ch.id);
    let mut over = ch.clone();
    over.charged = deposit;
    over.balance = U256::MAX;
    let h = over.pay(payer, &req, &offer, deposit).unwrap();
    let (status, _, _, v2) = send(&s.url, &h, "go").await;
    assert_eq!(
        (status, reason(&v2).as_str()),
        (
            402,
            "invalid_batch_settlement_evm_cumulative_exceeds_balance"
        )
    );
    let mut foreign = offer.clone();
    foreign.extra["receiverAuthorizer"] = serde_json::json!(dev_signer(7).address());
    let mut other = BatchChannel::new(payer.address(), &foreign, B256::repeat_byte(5)).unwrap();
    other.balance = U256::MAX;
    let h = other.pay(payer, &req, &offer, deposit).unwrap();
    let (status, _, _, v2) = send(&s.url, &h, "go").await;
    assert_eq!(
        (status, reason(&v2).as_str()),
        (
            402,
            "invalid_batch_settlement_evm_receiver_authorizer_mismatch"
        )
    );
    // A failed request is not charged: the same next step pays the next request.
    let h = ch.clone().pay(payer, &req, &offer, deposit).unwrap();
    let (status, _, _, _) = send(&s.url, &h, "fail").await;
    assert_eq!(status, 400);
    let h = ch.pay(payer, &req, &offer, deposit).unwrap();
    let (status, _, settle, _) = send(&s.url, &h, "go").await;
    assert_eq!(status, 200);
    ch.charged(&settle.unwrap(), offer.amount);
    assert_eq!(ch.charged, U256::from(3 * PRICE));
    assert_eq!(token_balance(payer.address()).await, start - deposit);
    assert_ne!(last.charged, ch.charged);

    // A cooperative refund: not for a voucher other than the charged total, not for more than
    // is unclaimed; then the node claims what it is owed and refunds 2,000 in one transaction.
    let refund = |p: serde_json::Value| refund_request(&req, &offer, p);
    let mut behind = ch.clone();
    behind.charged -= U256::from(PRICE);
    let h = refund(behind.refund_payload(payer, &offer, None).unwrap());
    let (status, _, _, v2) = send(&s.url, &h, "go").await;
    assert_eq!(
        (status, reason(&v2).as_str()),
        (
            402,
            "invalid_batch_settlement_evm_cumulative_amount_mismatch"
        )
    );
    let h = refund(ch.refund_payload(payer, &offer, Some(deposit)).unwrap());
    let (status, _, _, v2) = send(&s.url, &h, "go").await;
    assert_eq!(
        (status, reason(&v2).as_str()),
        (402, "invalid_batch_settlement_evm_refund_no_balance")
    );
    let before = token_balance(payer.address()).await;
    let h = refund(
        ch.refund_payload(payer, &offer, Some(U256::from(2_000u64)))
            .unwrap(),
    );
    let (status, body, settle, _) = send(&s.url, &h, "go").await;
    assert_eq!(status, 200, "{body}");
    let settle = settle.unwrap();
    assert_eq!(settle.amount.as_deref(), Some("2000"));
    assert_eq!(
        token_balance(payer.address()).await,
        before + U256::from(2_000u64)
    );
    assert_eq!(s.runs.load(Ordering::SeqCst), 4, "a refund ran the route");
    let deposit = deposit - U256::from(2_000u64);
    // Another refund with nothing charged since: refused before its transaction (each is
    // sent at the node's gas, and costs the payer nothing).
    let h = refund(
        ch.refund_payload(payer, &offer, Some(U256::from(1u64)))
            .unwrap(),
    );
    let (status, body, _, v2) = send(&s.url, &h, "go").await;
    assert_eq!(
        (status, reason(&v2).as_str()),
        (402, crate::batch::ERR_NOTHING_CHARGED),
        "{body}"
    );
    assert_eq!(
        token_balance(payer.address()).await,
        before + U256::from(2_000u64)
    );
    // The node's count is claimed with it; a channel refunded in part still pays. A refund
    // asked while that call runs waits for it (nothing is refunded from under a request).
    let h = ch.pay(payer, &req, &offer, deposit).unwrap();
    let refund_now = refund(ch.refund_payload(payer, &offer, None).unwrap());
    let url = s.url.clone();
    let running = tokio::spawn(async move { send(&url, &h, "go").await });
    tokio::time::sleep(Duration::from_millis(60)).await;
    let (status, _, _, v2) = send(&s.url, &refund_now, "go").await;
    assert_eq!(
        (status, reason(&v2).as_str()),
        (402, "invalid_batch_settlement_evm_channel_busy")
    );
    let (status, _, settle, _) = running.await.unwrap();
    assert_eq!(status, 200);
    ch.charged(&settle.unwrap(), offer.amount);

    // The payer asks for all that is unclaimed on chain back (the node's last 1,000 included):
    // the node stops taking vouchers, claims what it is owed within the delay and sweeps
    // everything claimed to its vault; after the delay the payer takes the rest.
    let unclaimed = deposit - U256::from(3 * PRICE);
    chain
        .batch_initiate_withdraw(payer, &ch.config, unclaimed.to::<u128>())
        .await
        .unwrap();
    let vault_before = token_balance(s.vault).await;
    assert_eq!(batch.claim_due().await.unwrap(), 1);
    assert_eq!(
        token_balance(s.vault).await,
        vault_before + U256::from(4 * PRICE)
    );
    let h = ch.clone().pay(payer, &req, &offer, deposit).unwrap();
    let (status, _, _, v2) = send(&s.url, &h, "go").await;
    assert_eq!(
        (status, reason(&v2).as_str()),
        (402, "invalid_batch_settlement_evm_withdrawal_pending")
    );
    assert_eq!(s.runs.load(Ordering::SeqCst), 5);
    chain.ledger().advance_time(901).await.unwrap();
    chain
        .batch_finalize_withdraw(payer, &ch.config)
        .await
        .unwrap();
    assert_eq!(
        token_balance(payer.address()).await,
        start - U256::from(4 * PRICE)
    );
    // Nothing more to claim: a second round sends nothing.
    assert_eq!(batch.claim_due().await.unwrap(), 0);
}

/// A deposit whose transaction never went out (the node's key busy) leaves the channel's turn
/// at the node's gas unused: the payer's retry goes through.
#[tokio::test]
async fn a_deposit_never_sent_does_not_use_up_the_channels_turn() {
    use crate::client::BatchChannel;
    let (d, busy) = crate::tests::busy_devnet().await;
    let s = site_on(d, false, Some(())).await.0;
    let payer = &s.d.payer;
    let req = required(&s.url).await;
    let offer = offer_of(&req, crate::batch::SCHEME);
    let mut ch = BatchChannel::new(payer.address(), &offer, B256::repeat_byte(9)).unwrap();
    let h = ch.pay(payer, &req, &offer, U256::from(20 * PRICE)).unwrap();
    let balance = s.d.chain.token_balance(payer.address()).await.unwrap();
    // Exactly one send finds the key busy: the deposit's, tried and not gone out.
    busy.busy.store(1, Ordering::SeqCst);
    let (status, body, _, _) = send(&s.url, &h, "go").await;
    assert_eq!(
        busy.busy.load(Ordering::SeqCst),
        0,
        "no send was tried: {body}"
    );
    assert_eq!(status, 502, "{body}");
    assert_eq!(
        s.d.chain.token_balance(payer.address()).await.unwrap(),
        balance
    );
    let (status, body, settle, _) = send(&s.url, &h, "go").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.runs.load(Ordering::SeqCst), 1);
    ch.charged(&settle.unwrap(), offer.amount);
    // A refund that never went out (the key busy) neither uses the turn nor holds the channel
    // shut: the channel pays at once, and the refund goes through when asked again.
    let refund = refund_request(
        &req,
        &offer,
        ch.refund_payload(payer, &offer, None).unwrap(),
    );
    busy.busy.store(1, Ordering::SeqCst);
    let (status, body, _, _) = send(&s.url, &refund, "go").await;
    assert_eq!(
        busy.busy.load(Ordering::SeqCst),
        0,
        "no send was tried: {body}"
    );
    assert_eq!(status, 502, "{body}");
    charged_call(&s.url, &mut ch, payer, (&req, &offer), U256::ZERO).await;
    let refund = refund_request(
        &req,
        &offer,
        ch.refund_payload(payer, &offer, None).unwrap(),
    );
    let (status, body, _, _) = send(&s.url, &refund, "go").await;
    assert_eq!(status, 200, "{body}");
}

/// A channel whose deposit's call failed (nothing charged) gets no refund and no second
/// deposit at the node's gas: deposits and refunds for nothing would cost the payer nothing
/// and the node two transactions each. A call charged on it makes one possible again.
#[tokio::test]
async fn a_channel_charged_nothing_gets_no_transaction_at_the_nodes_gas() {
    use crate::client::BatchChannel;
    let (s, _batch) = batch_site().await;
    let payer = &s.d.payer;
    let chain = &s.d.chain;
    let token_balance = |who: Address| async move { chain.token_balance(who).await.unwrap() };
    let reason = |v2: &serde_json::Value| v2["error"].as_str().unwrap_or_default().to_string();
    let req = required(&s.url).await;
    let offer = offer_of(&req, crate::batch::SCHEME);
    let refund = |p: serde_json::Value| refund_request(&req, &offer, p);
    let deposit = U256::from(20 * PRICE);
    let mut idle = BatchChannel::new(payer.address(), &offer, B256::repeat_byte(8)).unwrap();
    let h = idle.pay(payer, &req, &offer, deposit).unwrap();
    let (status, body, _, _) = send(&s.url, &h, "fail").await;
    assert_eq!(status, 400, "{body}");
    let after_deposit = token_balance(payer.address()).await;
    let h = refund(idle.refund_payload(payer, &offer, None).unwrap());
    let (status, body, _, v2) = send(&s.url, &h, "go").await;
    assert_eq!(
        (status, reason(&v2).as_str()),
        (402, crate::batch::ERR_NOTHING_CHARGED),
        "{body}"
    );
    // A top-up with a call that would fail again (the client made to deposit anyway).
    idle.balance = U256::ZERO;
    let h = idle.pay(payer, &req, &offer, deposit).unwrap();
    let (status, body, _, v2) = send(&s.url, &h, "fail").await;
    assert_eq!(
        (status, reason(&v2).as_str()),
        (402, crate::batch::ERR_NOTHING_CHARGED),
        "{body}"
    );
    assert_eq!(token_balance(payer.address()).await, after_deposit);
    // A call charged on it makes one refund possible again.
    idle.balance = deposit;
    charged_call(&s.url, &mut idle, payer, (&req, &offer), U256::ZERO).await;
    let h = refund(idle.refund_payload(payer, &offer, None).unwrap());
    let (status, body, _, _) = send(&s.url, &h, "go").await;
    assert_eq!(status, 200, "{body}");
}

/// A unit charged (a metered call can be charged that little) does not buy a transaction at the
/// node's gas: a refund waits until the channel was charged the gas allowance since the node's
/// last transaction for it, and a node started again on the same store still knows.
#[tokio::test]
async fn a_channel_charged_less_than_the_gas_allowance_gets_no_transaction_at_the_nodes_gas() {
    use crate::client::BatchChannel;
    let (s, batch) = batch_site().await;
    let payer = &s.d.payer;
    let chain = &s.d.chain;
    let reason = |v2: &serde_json::Value| v2["error"].as_str().unwrap_or_default().to_string();
    // One unit a call: the channel's deposit (free: its first; at least the allowance and a
    // call, so that spending it earns the next) and a call charged 1.
    s.price.store(1, Ordering::SeqCst);
    let req = required(&s.url).await;
    let offer = offer_of(&req, crate::batch::SCHEME);
    let min = crate::batch::DEFAULT_GAS_ALLOWANCE + 1;
    assert_eq!(offer.extra["minDeposit"], min.to_string());
    let mut ch = BatchChannel::new(payer.address(), &offer, B256::repeat_byte(11)).unwrap();
    let h = ch.pay(payer, &req, &offer, U256::from(min - 1)).unwrap();
    let (status, body, _, v2) = send(&s.url, &h, "go").await;
    assert_eq!(
        (status, reason(&v2).as_str()),
        (
            402,
            "invalid_batch_settlement_evm_deposit_below_min_deposit"
        ),
        "{body}"
    );
    ch.balance = U256::ZERO;
    charged_call(&s.url, &mut ch, payer, (&req, &offer), U256::from(min)).await;
    let after_call = chain.token_balance(payer.address()).await.unwrap();
    let payload = ch.refund_payload(payer, &offer, None).unwrap();
    let (status, body, _, v2) =
        send(&s.url, &refund_request(&req, &offer, payload.clone()), "go").await;
    let short = crate::batch::DEFAULT_GAS_ALLOWANCE - 1;
    assert_eq!(
        (status, reason(&v2).as_str()),
        (402, crate::batch::ERR_NOTHING_CHARGED),
        "{body}"
    );
    assert!(body.contains(&format!("; {short} more first")), "{body}");
    assert_eq!(
        chain.token_balance(payer.address()).await.unwrap(),
        after_call
    );
    // The node started again on its store: the channel's turn is still used.
    let again = || async {
        crate::batch::Batch::new(
            chain.clone(),
            s.d.facilitator.store().clone(),
            dev_signer(2),
            s.vault,
        )
        .await
        .unwrap()
        .unwrap()
    };
    let e = again().await.refund(&payload).await.unwrap_err();
    assert!(
        matches!(&e, crate::X402Error::Invalid(r) if r.code == crate::batch::ERR_NOTHING_CHARGED),
        "{e}"
    );
    assert_eq!(
        chain.token_balance(payer.address()).await.unwrap(),
        after_call
    );
    // Claims are gas too: the first round after a start claims what is owed, however small;
    // after that a count below the allowance waits (5 minutes), unless its payer asks for a
    // withdrawal: then it is claimed within the delay.
    let mut other = BatchChannel::new(payer.address(), &offer, B256::repeat_byte(12)).unwrap();
    let terms = (&req, &offer);
    charged_call(&s.url, &mut other, payer, terms, U256::from(min)).await;
    assert_eq!(batch.claim_due().await.unwrap(), 2, "the first round");
    charged_call(&s.url, &mut other, payer, terms, U256::ZERO).await;
    assert_eq!(
        batch.claim_due().await.unwrap(),
        0,
        "one unit claimed at once"
    );
    chain
        .batch_initiate_withdraw(payer, &other.config, (min - 2) as u128)
        .await
        .unwrap();
    let vault = chain.token_balance(s.vault).await.unwrap();
    assert_eq!(batch.claim_due().await.unwrap(), 1);
    assert_eq!(
        chain.token_balance(s.vault).await.unwrap(),
        vault + U256::from(1u64),
        "the withdrawing channel's count, swept"
    );
    // An operator whose transactions cost nothing (allowance 0) sends it for any charge.
    let after_call = chain.token_balance(payer.address()).await.unwrap();
    let refunded = again()
        .await
        .with_gas_allowance(U256::ZERO)
        .refund(&payload)
        .await
        .unwrap();
    assert_eq!(refunded.amount, U256::from(min - 1));
    assert_eq!(
        chain.token_balance(payer.address()).await.unwrap(),
        after_call + U256::from(min - 1)
    );
}
