use std::sync::Arc;

use alloy_primitives::{Address, B256, U256, address, b256};
use alloy_signer_local::PrivateKeySigner;
use alloy_sol_types::Eip712Domain;
use cairn_ledger::deploy::TOKEN_UNIT;
use cairn_ledger::{Chain, EmbeddedLedger, Ledger, dev_signer};
use serde_json::{Value, json};

use crate::exact::{self, verify_local};
use crate::facilitator::{FacilitatorRequest, Settlement};
use crate::store::{ChannelRecord, NewPayment, Outcome, PaymentState, Reserve, VoucherRefusal};
use crate::wire::*;
use crate::*;
use cairn_sqlite::Durability;

// ---- known answers from the x402 v2 specification ----

/// `PAYMENT-SIGNATURE` example of the v2 HTTP transport spec (specs/transports-v2/http.md).
const SPEC_PAYMENT_SIGNATURE: &str = "eyJ4NDAyVmVyc2lvbiI6MiwicmVzb3VyY2UiOnsidXJsIjoiaHR0cHM6Ly9hcGkuZXhhbXBsZS5jb20vcHJlbWl1bS1kYXRhIiwiZGVzY3JpcHRpb24iOiJBY2Nlc3MgdG8gcHJlbWl1bSBtYXJrZXQgZGF0YSIsIm1pbWVUeXBlIjoiYXBwbGljYXRpb24vanNvbiJ9LCJhY2NlcHRlZCI6eyJzY2hlbWUiOiJleGFjdCIsIm5ldHdvcmsiOiJlaXAxNTU6ODQ1MzIiLCJhbW91bnQiOiIxMDAwMCIsImFzc2V0IjoiMHgwMzZDYkQ1Mzg0MmM1NDI2NjM0ZTc5Mjk1NDFlQzIzMThmM2RDRjdlIiwicGF5VG8iOiIweDIwOTY5M0JjNmFmYzBDNTMyOGJBMzZGYUYwM0M1MTRFRjMxMjI4N0MiLCJtYXhUaW1lb3V0U2Vjb25kcyI6NjAsImV4dHJhIjp7Im5hbWUiOiJVU0RDIiwidmVyc2lvbiI6IjIifX0sInBheWxvYWQiOnsic2lnbmF0dXJlIjoiMHgyZDZhNzU4OGQ2YWNjYTUwNWNiZjBkOWE0YTIyN2UwYzUyYzZjMzQwMDhjOGU4OTg2YTEyODMyNTk3NjQxNzM2MDhhMmNlNjQ5NjY0MmUzNzdkNmRhOGRiYmY1ODM2ZTliZDE1MDkyZjllY2FiMDVkZWQzZDYyOTNhZjE0OGI1NzFjIiwiYXV0aG9yaXphdGlvbiI6eyJmcm9tIjoiMHg4NTdiMDY1MTlFOTFlM0E1NDUzODc5MWJEYmIwRTIyMzczZTM2YjY2IiwidG8iOiIweDIwOTY5M0JjNmFmYzBDNTMyOGJBMzZGYUYwM0M1MTRFRjMxMjI4N0MiLCJ2YWx1ZSI6IjEwMDAwIiwidmFsaWRBZnRlciI6IjE3NDA2NzIwODkiLCJ2YWxpZEJlZm9yZSI6IjE3NDA2NzIxNTQiLCJub25jZSI6IjB4ZjM3NDY2MTNjMmQ5MjBiNWZkYWJjMDg1NmYyYWViMmQ0Zjg4ZWU2MDM3YjhjYzVkMDRhNzFhNDQ2MmYxMzQ4MCJ9fX0=";
const SPEC_PAYMENT_REQUIRED: &str = "eyJ4NDAyVmVyc2lvbiI6MiwiZXJyb3IiOiJQQVlNRU5ULVNJR05BVFVSRSBoZWFkZXIgaXMgcmVxdWlyZWQiLCJyZXNvdXJjZSI6eyJ1cmwiOiJodHRwczovL2FwaS5leGFtcGxlLmNvbS9wcmVtaXVtLWRhdGEiLCJkZXNjcmlwdGlvbiI6IkFjY2VzcyB0byBwcmVtaXVtIG1hcmtldCBkYXRhIiwibWltZVR5cGUiOiJhcHBsaWNhdGlvbi9qc29uIn0sImFjY2VwdHMiOlt7InNjaGVtZSI6ImV4YWN0IiwibmV0d29yayI6ImVpcDE1NTo4NDUzMiIsImFtb3VudCI6IjEwMDAwIiwiYXNzZXQiOiIweDAzNkNiRDUzODQyYzU0MjY2MzRlNzkyOTU0MWVDMjMxOGYzZENGN2UiLCJwYXlUbyI6IjB4MjA5NjkzQmM2YWZjMEM1MzI4YkEzNkZhRjAzQzUxNEVGMzEyMjg3QyIsIm1heFRpbWVvdXRTZWNvbmRzIjo2MCwiZXh0cmEiOnsibmFtZSI6IlVTREMiLCJ2ZXJzaW9uIjoiMiJ9fV19";
const SPEC_PAYMENT_RESPONSE_OK: &str = "eyJzdWNjZXNzIjp0cnVlLCJ0cmFuc2FjdGlvbiI6IjB4MTIzNDU2Nzg5MGFiY2RlZjEyMzQ1Njc4OTBhYmNkZWYxMjM0NTY3ODkwYWJjZGVmMTIzNDU2Nzg5MGFiY2RlZiIsIm5ldHdvcmsiOiJlaXAxNTU6ODQ1MzIiLCJwYXllciI6IjB4ODU3YjA2NTE5RTkxZTNBNTQ1Mzg3OTFiRGJiMEUyMjM3M2UzNmI2NiJ9";
const SPEC_PAYMENT_RESPONSE_FAIL: &str = "eyJzdWNjZXNzIjpmYWxzZSwiZXJyb3JSZWFzb24iOiJpbnN1ZmZpY2llbnRfZnVuZHMiLCJuZXR3b3JrIjoiZWlwMTU1Ojg0NTMyIn0=";
const SPEC_PAYER: Address = address!("0x857b06519E91e3A54538791bDbb0E22373e36b66");
const SPEC_USDC: Address = address!("0x036CbD53842c5426634e7929541eC2318f3dCF7e");

fn spec_domain() -> Eip712Domain {
    Eip712Domain::new(
        Some("USDC".into()),
        Some("2".into()),
        Some(U256::from(84532)),
        Some(SPEC_USDC),
        None,
    )
}

#[test]
fn spec_headers_decode_as_documented() {
    let req: PaymentRequired =
        decode_header("PAYMENT-REQUIRED", SPEC_PAYMENT_REQUIRED.as_bytes()).unwrap();
    assert_eq!(req.x402_version, 2);
    assert_eq!(
        req.error.as_deref(),
        Some("PAYMENT-SIGNATURE header is required")
    );
    assert_eq!(req.resource.url, "https://api.example.com/premium-data");
    let o = &req.accepts[0];
    assert_eq!(
        (o.scheme.as_str(), o.network.as_str()),
        ("exact", "eip155:84532")
    );
    assert_eq!(o.amount, U256::from(10_000));
    assert_eq!(o.asset, SPEC_USDC);
    assert_eq!(
        o.pay_to,
        address!("0x209693Bc6afc0C5328bA36FaF03C514EF312287C")
    );
    assert_eq!(o.max_timeout_seconds, 60);
    assert_eq!(o.extra, json!({"name": "USDC", "version": "2"}));

    let pay: PaymentPayload =
        decode_header("PAYMENT-SIGNATURE", SPEC_PAYMENT_SIGNATURE.as_bytes()).unwrap();
    assert!(pay.accepted.same_offer(o));
    let p = exact::parse(&pay.payload).unwrap();
    assert_eq!(p.authorization.from, SPEC_PAYER);
    assert_eq!(p.authorization.valid_after, U256::from(1_740_672_089u64));
    assert_eq!(p.authorization.valid_before, U256::from(1_740_672_154u64));
    assert_eq!(
        p.authorization.nonce,
        b256!("0xf3746613c2d920b5fdabc0856f2aeb2d4f88ee6037b8cc5d04a71a4462f13480")
    );

    let ok: SettleResponse =
        decode_header("PAYMENT-RESPONSE", SPEC_PAYMENT_RESPONSE_OK.as_bytes()).unwrap();
    assert!(ok.success);
    assert_eq!(ok.payer, Some(SPEC_PAYER));
    assert_eq!(ok.network, "eip155:84532");
    let fail: SettleResponse =
        decode_header("PAYMENT-RESPONSE", SPEC_PAYMENT_RESPONSE_FAIL.as_bytes()).unwrap();
    assert!(!fail.success);
    assert_eq!(fail.error_reason.as_deref(), Some("insufficient_funds"));
    assert_eq!(fail.transaction, "");
}

/// An authorization valid for long would keep a payment the payer cancels open (and searched
/// for) until then: refused past now + maxTimeoutSeconds + the slack.
#[test]
fn an_authorization_valid_for_too_long_is_refused() {
    let pay: PaymentPayload =
        decode_header("PAYMENT-SIGNATURE", SPEC_PAYMENT_SIGNATURE.as_bytes()).unwrap();
    let payer = PrivateKeySigner::random();
    let now = now_secs();
    let sign = |valid_before: u64| {
        let authorization = exact::Authorization {
            from: payer.address(),
            to: pay.accepted.pay_to,
            value: pay.accepted.amount,
            valid_after: U256::ZERO,
            valid_before: U256::from(valid_before),
            nonce: B256::repeat_byte(9),
        };
        let hash = alloy_sol_types::SolStruct::eip712_signing_hash(
            &authorization.message(),
            &spec_domain(),
        );
        let sig = alloy_signer::SignerSync::sign_hash_sync(&payer, &hash).unwrap();
        exact::ExactPayload {
            signature: sig.as_bytes().to_vec().into(),
            authorization,
        }
    };
    let limit = now + pay.accepted.max_timeout_seconds.max(60) + exact::VALID_BEFORE_SLACK_SECS;
    assert!(verify_local(&sign(limit), &pay.accepted, &spec_domain(), now).is_ok());
    let e = verify_local(&sign(limit + 1), &pay.accepted, &spec_domain(), now).unwrap_err();
    assert_eq!(
        e.code(),
        "invalid_exact_evm_payload_authorization_valid_before"
    );
    assert!(e.to_string().contains("expires sooner"), "{e}");
}

#[test]
fn spec_authorization_recovers_to_its_payer_and_is_expired_today() {
    let pay: PaymentPayload =
        decode_header("PAYMENT-SIGNATURE", SPEC_PAYMENT_SIGNATURE.as_bytes()).unwrap();
    let p = exact::parse(&pay.payload).unwrap();
    // Inside its validity window the signature checks out and recovers to `from`.
    let checked = verify_local(&p, &pay.accepted, &spec_domain(), 1_740_672_100).unwrap();
    assert_eq!(checked.authorization.from, SPEC_PAYER);
    // Today it is refused as expired.
    let e = verify_local(&p, &pay.accepted, &spec_domain(), now_secs()).unwrap_err();
    assert_eq!(
        e.code(),
        "invalid_exact_evm_payload_authorization_valid_before"
    );
    // Before validAfter it is refused too.
    let e = verify_local(&p, &pay.accepted, &spec_domain(), 1_740_672_000).unwrap_err();
    assert_eq!(
        e.code(),
        "invalid_exact_evm_payload_authorization_valid_after"
    );
}

#[test]
fn tampered_spec_authorizations_are_refused_with_their_reason() {
    let pay: PaymentPayload =
        decode_header("PAYMENT-SIGNATURE", SPEC_PAYMENT_SIGNATURE.as_bytes()).unwrap();
    let p = exact::parse(&pay.payload).unwrap();
    let t = 1_740_672_100;
    // A different recipient in the offer: the money would go elsewhere.
    let mut other = pay.accepted.clone();
    other.pay_to = Address::repeat_byte(7);
    let e = verify_local(&p, &other, &spec_domain(), t).unwrap_err();
    assert_eq!(e.code(), "invalid_exact_evm_payload_recipient_mismatch");
    // Underpaid: the price is higher than the authorization.
    let mut dearer = pay.accepted.clone();
    dearer.amount = U256::from(10_001);
    let e = verify_local(&p, &dearer, &spec_domain(), t).unwrap_err();
    assert_eq!(
        e.code(),
        "invalid_exact_evm_payload_authorization_value_mismatch"
    );
    // Forged: the value raised after signing (offer raised to match) no longer recovers.
    let mut forged = p.clone();
    forged.authorization.value = U256::from(10_001);
    let e = verify_local(&forged, &dearer, &spec_domain(), t).unwrap_err();
    assert_eq!(e.code(), "invalid_exact_evm_payload_signature");
    // Another token's domain: no match either.
    let mut d = spec_domain();
    d.name = Some("USD Coin".into());
    let e = verify_local(&p, &pay.accepted, &d, t).unwrap_err();
    assert_eq!(e.code(), "invalid_exact_evm_payload_signature");
    // A truncated signature.
    let mut short = p.clone();
    short.signature = short.signature.slice(..64);
    let e = verify_local(&short, &pay.accepted, &spec_domain(), t).unwrap_err();
    assert_eq!(e.code(), "invalid_exact_evm_payload_signature");
}

#[test]
fn hostile_headers_are_refused_before_parsing() {
    let huge = "A".repeat(MAX_HEADER_BYTES + 1);
    let e = decode_header::<PaymentPayload>("PAYMENT-SIGNATURE", huge.as_bytes()).unwrap_err();
    assert!(e.to_string().contains("at most"), "{e}");
    let e = decode_header::<PaymentPayload>("PAYMENT-SIGNATURE", b"%%%").unwrap_err();
    assert!(e.to_string().contains("not base64"), "{e}");
    let e = decode_header::<PaymentPayload>(
        "PAYMENT-SIGNATURE",
        encode_header(&json!({"x402Version": 2})).as_bytes(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("JSON"), "{e}");
    // Amounts must be decimal integers.
    let bad = json!({"scheme":"exact","network":"eip155:1","amount":"1e3","asset":SPEC_USDC,"payTo":SPEC_USDC,"maxTimeoutSeconds":1});
    assert!(serde_json::from_value::<PaymentRequirements>(bad).is_err());
}

// ---- the store ----

#[test]
fn a_payment_is_reserved_once_even_in_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let store = PaymentStore::open(&dir.path().join("payments.sqlite"), Durability::Full).unwrap();
    let key = B256::repeat_byte(1);
    let winners: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                s.spawn(move || {
                    let r = store
                        .reserve(&NewPayment {
                            key,
                            chain: 1,
                            scheme: "exact",
                            payer: Address::ZERO,
                            amount: U256::from(1),
                            resource: "r",
                            payload: "{}",
                            from_block: 0,
                        })
                        .unwrap();
                    matches!(r, Reserve::Reserved) as usize
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(winners, 1);
    // A released payment (its request failed) can be used again; a settled one cannot.
    store
        .set_state(key, PaymentState::Released, None, None, None)
        .unwrap();
    let again = |store: &PaymentStore| {
        store
            .reserve(&NewPayment {
                key,
                chain: 1,
                scheme: "exact",
                payer: Address::ZERO,
                amount: U256::from(1),
                resource: "r",
                payload: "{}",
                from_block: 0,
            })
            .unwrap()
    };
    assert!(matches!(again(&store), Reserve::Reserved));
    store
        .set_state(key, PaymentState::Settled, Some("0xabc"), None, None)
        .unwrap();
    match again(&store) {
        Reserve::Seen(r) => {
            assert_eq!(r.state, PaymentState::Settled);
            assert_eq!(r.tx.as_deref(), Some("0xabc"));
        }
        Reserve::Reserved => panic!("a settled payment was reserved again"),
    }
    // It survives reopening.
    drop(store);
    let store = PaymentStore::open(&dir.path().join("payments.sqlite"), Durability::Full).unwrap();
    assert_eq!(
        store.get(key).unwrap().unwrap().state,
        PaymentState::Settled
    );
}

/// A channel the store knows, with 100 deposited.
fn open_channel(store: &PaymentStore) -> B256 {
    open_channel_with(store, B256::repeat_byte(7), 100)
}

/// A channel `id` with `deposited` in it.
fn open_channel_with(store: &PaymentStore, id: B256, deposited: u64) -> B256 {
    let rec = ChannelRecord {
        id,
        payer: Address::repeat_byte(1),
        payee: Address::repeat_byte(2),
        salt: B256::ZERO,
        deposited: U256::ZERO,
        closing: false,
        accepted: U256::ZERO,
        pending: U256::ZERO,
        redeemed: U256::ZERO,
    };
    store
        .refresh_channel(1, &rec, U256::from(deposited), false, U256::ZERO)
        .unwrap();
    id
}

#[test]
fn vouchers_are_taken_in_memory_counted_on_disk_and_given_back_by_a_restart() {
    for counts in [Durability::Normal, Durability::Full] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("payments.sqlite");
        let store = PaymentStore::open(&path, counts).unwrap();
        let id = open_channel(&store);
        let price = U256::from(10);
        let (k1, k2, k3) = (
            B256::repeat_byte(0x11),
            B256::repeat_byte(0x22),
            B256::repeat_byte(0x33),
        );
        let take = |k: B256, cumulative: u64, sig: u8| {
            store.accept_voucher(id, k, U256::from(cumulative), B256::ZERO, price, &[sig; 65])
        };
        take(k1, 10, 1).unwrap().unwrap();
        // Taken twice, or a second voucher for the same step: refused while the first runs.
        assert_eq!(take(k1, 10, 1).unwrap(), Err(VoucherRefusal::AlreadyUsed));
        assert_eq!(
            take(k3, 10, 3).unwrap(),
            Err(VoucherRefusal::NotNext { owed: price })
        );
        assert_eq!(store.channel(id).unwrap().unwrap().pending, price);
        assert_eq!(store.outcome(k1).unwrap(), Outcome::Open);
        store.commit_voucher(k1, price).unwrap();
        // Counted: presented again it is "used" (the paywall answers it again), not "not next".
        assert_eq!(take(k1, 10, 1).unwrap(), Err(VoucherRefusal::AlreadyUsed));
        take(k2, 20, 2).unwrap().unwrap();
        store.release_voucher(k2).unwrap();
        // Given back: the same voucher may come again.
        take(k2, 20, 2).unwrap().unwrap();
        // Over the deposit, whatever the step.
        assert_eq!(
            take(k3, 200, 3).unwrap(),
            Err(VoucherRefusal::OverDeposit {
                deposited: U256::from(100)
            })
        );
        // Voucher steps leave the connection at the store's level; `exact` steps, channel
        // refreshes and redemptions raise it to FULL for their own commits only.
        let level = if counts == Durability::Full { 2 } else { 1 };
        assert_eq!(store.synchronous(), level, "{counts:?}");
        let inside: i64 = store
            .durable(|c| c.pragma_query_value(None, "synchronous", |r| r.get(0)))
            .unwrap();
        assert_eq!((inside, store.synchronous()), (2, level), "{counts:?}");
        store.sync().unwrap();
        // The file has one user: a second store on it is refused with the reason.
        let e = PaymentStore::open(&path, counts)
            .err()
            .expect("a second store");
        assert!(e.to_string().contains("in use by another process"), "{e}");
        // k2 was still running when the process stopped: it is given back by the restart.
        drop(store);
        let store = PaymentStore::open(&path, counts).unwrap();
        let ch = store.channel(id).unwrap().unwrap();
        assert_eq!((ch.accepted, ch.pending), (price, U256::ZERO));
        assert_eq!(store.outcome(k1).unwrap(), Outcome::Paid);
        assert_eq!(store.outcome(k2).unwrap(), Outcome::Failed);
        // The counted voucher is the one to redeem; the given-back one can be taken again.
        assert_eq!(
            store.redeemable(id, U256::ZERO).unwrap(),
            Some((U256::from(10), B256::ZERO, vec![1; 65]))
        );
        store
            .accept_voucher(id, k2, U256::from(20), B256::ZERO, price, &[2; 65])
            .unwrap()
            .unwrap();
    }
}

/// A counted voucher is one journal record on the answer path; SQLite takes it later. Before it
/// does, the next voucher is still checked against it; a process that stops first leaves the
/// counts in the journal, and the next open applies them, once, however often it reads them.
#[test]
fn counted_vouchers_wait_in_the_journal_and_a_restart_applies_them_once() {
    for counts in [Durability::Normal, Durability::Full] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("payments.sqlite");
        let journal = PaymentStore::journal_path(&path);
        let price = U256::from(10);
        let (k1, k2) = (B256::repeat_byte(0x11), B256::repeat_byte(0x22));
        let id = {
            let store = PaymentStore::open_unapplied(&path, counts).unwrap();
            let id = open_channel(&store);
            let take = |k: B256, cumulative: u64, sig: u8| {
                store.accept_voucher(id, k, U256::from(cumulative), B256::ZERO, price, &[sig; 65])
            };
            take(k1, 10, 1).unwrap().unwrap();
            store.commit_voucher(k1, price).unwrap();
            // Not in SQLite yet, and still the channel's state: k1 is used, 20 is the next step.
            assert_eq!(take(k1, 10, 1).unwrap(), Err(VoucherRefusal::AlreadyUsed));
            assert_eq!(
                take(B256::repeat_byte(0x33), 10, 3).unwrap(),
                Err(VoucherRefusal::NotNext { owed: price })
            );
            take(k2, 20, 2).unwrap().unwrap();
            store.commit_voucher(k2, price).unwrap();
            id
        };
        // The process stopped: SQLite never saw the counts, the journal holds both.
        let sqlite_has = || {
            let c = rusqlite::Connection::open(&path).unwrap();
            let n: i64 = c
                .query_row("SELECT count(*) FROM vouchers", [], |r| r.get(0))
                .unwrap();
            let accepted: String = c
                .query_row("SELECT accepted FROM channels", [], |r| r.get(0))
                .unwrap();
            (n, accepted)
        };
        assert_eq!(sqlite_has(), (0, "0".into()), "{counts:?}");
        let written = std::fs::read(&journal).unwrap();
        assert!(!written.is_empty());
        let reopen = || {
            let store = PaymentStore::open(&path, counts).unwrap();
            let ch = store.channel(id).unwrap().unwrap();
            let redeem = store.redeemable(id, U256::ZERO).unwrap();
            (ch.accepted, redeem)
        };
        let want = (
            U256::from(20),
            Some((U256::from(20), B256::ZERO, vec![2; 65])),
        );
        assert_eq!(reopen(), want, "{counts:?}");
        assert_eq!(
            std::fs::metadata(&journal).unwrap().len(),
            0,
            "emptied once applied"
        );
        // The same records again (a file SQLite already applied): nothing counted twice.
        std::fs::write(&journal, &written).unwrap();
        assert_eq!(reopen(), want, "{counts:?}");
        assert_eq!(sqlite_has(), (2, "20".into()));
        // A record cut short by the end of the file was never answered: skipped.
        let mut torn = written.clone();
        torn.truncate(written.len() - 7);
        std::fs::write(&journal, &torn).unwrap();
        assert_eq!(reopen(), want, "{counts:?}");
        // Damage before the end: a checksum that fails, or a length no record has (which
        // must not pass for a torn tail). Under Full every record was on disk before its
        // answer: the store does not open, and says what to do. Under Normal a power cut may
        // leave the page cache's last writes out of order: the reading stops there, a copy of
        // the file is kept.
        let mut bad_sum = written.clone();
        bad_sum[20] ^= 0xff;
        let mut bad_len = written.clone();
        bad_len[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        for damaged in [bad_sum, bad_len] {
            std::fs::write(&journal, &damaged).unwrap();
            if counts == Durability::Full {
                let e = PaymentStore::open(&path, counts).err().expect("damaged");
                assert!(e.to_string().contains("Move the file aside"), "{e}");
                std::fs::remove_file(&journal).unwrap();
            } else {
                assert_eq!(reopen(), want, "{counts:?}");
                let aside = dir.path().join("payments.sqlite-vouchers.damaged-at-0");
                assert_eq!(std::fs::read(&aside).unwrap(), damaged);
                std::fs::remove_file(&aside).unwrap();
            }
            assert_eq!(reopen(), want, "{counts:?}");
        }
    }
}

/// The applier thread moves counts into SQLite without any read asking for them.
#[test]
fn the_applier_moves_counts_into_sqlite_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("payments.sqlite");
    let store = PaymentStore::open(&path, Durability::Normal).unwrap();
    let id = open_channel(&store);
    let price = U256::from(1);
    for i in 1..=50u64 {
        let k = B256::from(U256::from(i));
        store
            .accept_voucher(id, k, U256::from(i), B256::ZERO, price, &[1; 65])
            .unwrap()
            .unwrap();
        store.commit_voucher(k, price).unwrap();
    }
    let applied = || store.applied_vouchers();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while applied() < 50 {
        assert!(
            std::time::Instant::now() < deadline,
            "applied {}",
            applied()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(store.channel(id).unwrap().unwrap().accepted, U256::from(50));
}

/// Under steady counts the journal never empties between two applies: it is rewritten with
/// only what waits, so it stays bounded, and what it held is all in SQLite.
#[test]
fn the_journal_stays_bounded_while_counts_keep_coming() {
    // Under power durability the journal is rewritten only after a commit that waited for the
    // disk (applies between them do not): bounded all the same.
    for (counts, n) in [(Durability::Normal, 12_000u64), (Durability::Full, 6_000)] {
        journal_stays_bounded(counts, n);
    }
}

/// `n` counts, about 250 bytes of journal each, with one always waiting.
fn journal_stays_bounded(counts: Durability, n: u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("payments.sqlite");
    let store = PaymentStore::open_unapplied(&path, counts).unwrap();
    let id = open_channel_with(&store, B256::repeat_byte(9), n);
    let journal = PaymentStore::journal_path(&path);
    let mut largest = 0;
    for i in 1..=n {
        let k = B256::from(U256::from(i));
        store
            .accept_voucher(id, k, U256::from(i), B256::ZERO, U256::from(1), &[1; 65])
            .unwrap()
            .unwrap();
        store.commit_voucher(k, U256::from(1)).unwrap();
        // One count always waits when SQLite takes the rest, as under load.
        if i % 100 == 0 {
            store.flush_all_but_last();
        }
        largest = largest.max(std::fs::metadata(&journal).unwrap().len());
    }
    assert!(
        largest < (1 << 20) + (64 << 10),
        "{counts:?}: the journal grew to {largest} bytes"
    );
    assert_eq!(store.synchronous(), counts_level(counts));
    drop(store);
    let store = PaymentStore::open(&path, counts).unwrap();
    assert_eq!(store.channel(id).unwrap().unwrap().accepted, U256::from(n));
}

/// The connection's `synchronous` level for a store of `counts` (1 `NORMAL`, 2 `FULL`).
fn counts_level(counts: Durability) -> i64 {
    if counts == Durability::Full { 2 } else { 1 }
}

/// Two vouchers run at once, the cheaper one fails: the dearer one is counted and is then
/// exactly the next step again. Presented again it is "used", never taken and charged twice.
#[test]
fn a_counted_voucher_is_never_taken_again_even_when_it_is_the_next_step() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        PaymentStore::open(&dir.path().join("payments.sqlite"), Durability::Normal).unwrap();
    let id = open_channel(&store);
    let price = U256::from(10);
    let (a, b) = (B256::repeat_byte(0xa), B256::repeat_byte(0xb));
    store
        .accept_voucher(id, a, U256::from(10), B256::ZERO, price, &[1; 65])
        .unwrap()
        .unwrap();
    store
        .accept_voucher(id, b, U256::from(20), B256::ZERO, price, &[2; 65])
        .unwrap()
        .unwrap();
    store.release_voucher(a).unwrap();
    store.commit_voucher(b, price).unwrap();
    assert_eq!(store.channel(id).unwrap().unwrap().accepted, price);
    assert_eq!(
        store
            .accept_voucher(id, b, U256::from(20), B256::ZERO, price, &[2; 65])
            .unwrap(),
        Err(VoucherRefusal::AlreadyUsed)
    );
    // Counting a voucher that is not taken is an error (the answer would leave unpaid);
    // giving one back twice is harmless.
    assert!(store.commit_voucher(a, price).is_err());
    store.release_voucher(a).unwrap();
    // The voucher promised the failed request too: it is claimed only up to what is owed.
    assert_eq!(
        store.redeemable(id, U256::ZERO).unwrap(),
        Some((U256::from(20), B256::ZERO, vec![2; 65]))
    );
}

/// Calls charged per token: each voucher is a ceiling (what is owed and in flight plus the
/// call's most); a call counts what it used, the rest is freed for the next voucher, and the
/// largest kept voucher covers everything owed. A charge above the ceiling is refused.
#[test]
fn a_metered_call_counts_what_it_used_and_frees_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        PaymentStore::open(&dir.path().join("payments.sqlite"), Durability::Normal).unwrap();
    let id = open_channel(&store);
    let most = U256::from(30);
    let (a, b, c) = (
        B256::repeat_byte(0xa),
        B256::repeat_byte(0xb),
        B256::repeat_byte(0xc),
    );
    let take = |k: B256, cumulative: u64, sig: u8| {
        store.accept_voucher(id, k, U256::from(cumulative), B256::ZERO, most, &[sig; 65])
    };
    // Two calls at once: ceilings 30 and 60.
    take(a, 30, 1).unwrap().unwrap();
    take(b, 60, 2).unwrap().unwrap();
    assert!(
        store.commit_voucher(a, most + U256::from(1)).is_err(),
        "charged over its ceiling"
    );
    store.commit_voucher(a, U256::from(7)).unwrap();
    store.commit_voucher(b, U256::from(11)).unwrap();
    let ch = store.channel(id).unwrap().unwrap();
    assert_eq!((ch.accepted, ch.pending), (U256::from(18), U256::ZERO));
    // The next ceiling starts from what was used, not from the ceilings signed.
    assert_eq!(
        take(c, 90, 3).unwrap(),
        Err(VoucherRefusal::NotNext {
            owed: U256::from(18)
        })
    );
    take(c, 48, 3).unwrap().unwrap();
    store.commit_voucher(c, U256::ZERO).unwrap();
    // Claimed with the largest ceiling, up to the 18 owed.
    let (cumulative, _, sig) = store.redeemable(id, U256::ZERO).unwrap().unwrap();
    assert_eq!((cumulative, sig), (U256::from(60), vec![2; 65]));
    assert_eq!(store.channel(id).unwrap().unwrap().accepted, U256::from(18));
}

// ---- the facilitator on the embedded chain ----

pub(crate) struct Devnet {
    pub _dir: tempfile::TempDir,
    pub chain: Chain,
    pub facilitator: Arc<Facilitator>,
    pub payer: PrivateKeySigner,
    pub payee: Address,
}

pub(crate) async fn devnet() -> Devnet {
    devnet_on(|l| l).await
}

/// [`devnet`] on the embedded chain as `wrap` makes it.
async fn devnet_on(wrap: impl FnOnce(Arc<dyn Ledger>) -> Arc<dyn Ledger>) -> Devnet {
    let dir = tempfile::tempdir().unwrap();
    let gov = dev_signer(0);
    let ledger: Arc<dyn Ledger> = wrap(Arc::new(
        EmbeddedLedger::open(&dir.path().join("chain.sqlite"), 31337, &[]).unwrap(),
    ));
    let chain = cairn_ledger::devnet::deployed(ledger).await.unwrap();
    let payer = dev_signer(6);
    chain
        .mint(&gov, payer.address(), U256::from(100 * TOKEN_UNIT))
        .await
        .unwrap();
    let store = PaymentStore::open(&dir.path().join("payments.sqlite"), Durability::Full).unwrap();
    let facilitator = Arc::new(
        Facilitator::new(chain.clone(), dev_signer(2), store)
            .await
            .unwrap(),
    );
    Devnet {
        _dir: dir,
        chain,
        facilitator,
        payer,
        payee: dev_signer(9).address(),
    }
}

fn request(d: &Devnet, amount: u64) -> FacilitatorRequest {
    let offer = d.facilitator.exact_offer(d.payee, U256::from(amount), 60);
    signed_request(d, &offer, client::pay_exact, &offer)
}

/// A facilitator request asking `requirements`, paid for `offer` as `pay` signs it.
fn signed_request(
    d: &Devnet,
    offer: &PaymentRequirements,
    pay: impl Fn(&PrivateKeySigner, &PaymentRequired, &PaymentRequirements) -> Result<String, X402Error>,
    requirements: &PaymentRequirements,
) -> FacilitatorRequest {
    let required = PaymentRequired {
        x402_version: 2,
        error: None,
        resource: ResourceInfo {
            url: "http://x/y".into(),
            ..Default::default()
        },
        accepts: vec![offer.clone()],
        extensions: None,
    };
    let header = pay(&d.payer, &required, offer).unwrap();
    let payload: PaymentPayload = decode_header("PAYMENT-SIGNATURE", header.as_bytes()).unwrap();
    FacilitatorRequest {
        x402_version: 2,
        payment_payload: serde_json::to_value(payload).unwrap(),
        payment_requirements: serde_json::to_value(requirements).unwrap(),
    }
}

/// `req`'s payment checked and reserved, as the paywall does before a route runs.
fn reserved(d: &Devnet, req: &FacilitatorRequest) -> (B256, crate::exact::CheckedExact) {
    let p: PaymentPayload = serde_json::from_value(req.payment_payload.clone()).unwrap();
    let c = d
        .facilitator
        .check_exact(&p.payload, &p.accepted, now_secs())
        .unwrap();
    let (key, r) = d.facilitator.reserve(&c, "http://x/y", &p.payload).unwrap();
    assert!(matches!(r, Reserve::Reserved));
    (key, c)
}

/// The payer signs a second authorization with the same nonce to another address and gets it
/// mined first (a front-run; on a public chain anyone sees the node's transfer coming). The
/// nonce is then used but the node was never paid: a payment left pending by a crash must fail,
/// not settle and hand over its kept answer.
#[tokio::test]
async fn a_nonce_used_by_the_payers_other_transfer_is_not_a_payment() {
    let d = devnet().await;
    let (key, c) = reserved(&d, &request(&d, 700));
    // Marked pending, then the sender "died" before its transfer was out.
    d.facilitator
        .store()
        .mark_pending(key, Some(b"the answer"))
        .unwrap();
    // The payer's own transfer with the same nonce, to an address of theirs.
    let elsewhere = address!("0x00000000000000000000000000000000000000e1");
    let offer = d.facilitator.exact_offer(elsewhere, U256::from(700), 60);
    let authorization = crate::exact::Authorization {
        to: elsewhere,
        ..c.authorization.clone()
    };
    let hash = alloy_sol_types::SolStruct::eip712_signing_hash(
        &authorization.message(),
        &crate::exact::domain_from_offer(&offer, d.chain.ledger().chain_id()),
    );
    let signature = alloy_signer::SignerSync::sign_hash_sync(&d.payer, &hash).unwrap();
    let theirs = crate::exact::CheckedExact {
        authorization,
        signature,
        from_block: 0,
    };
    d.chain
        .send_authorization(&dev_signer(3), theirs.transfer_call())
        .await
        .unwrap();
    assert!(
        d.chain
            .authorization_used(d.payer.address(), c.authorization.nonce)
            .await
            .unwrap()
    );
    d.facilitator.reconcile_all().await;
    let rec = d.facilitator.store().get(key).unwrap().unwrap();
    assert_eq!(rec.state, PaymentState::Failed, "{rec:?}");
    assert!(
        rec.response.is_none(),
        "the kept answer must not stay to be handed over"
    );
    assert_eq!(d.chain.token_balance(d.payee).await.unwrap(), U256::ZERO);
    assert_eq!(d.facilitator.store().outcome(key).unwrap(), Outcome::Failed);
}

/// The same authorization relayed by someone else between the check and the node's send (anyone
/// may submit it): the node's transfer reverts on the used nonce, but the node was paid, so the
/// payment settles and the payer gets the answer it paid for.
#[tokio::test]
async fn an_authorization_relayed_by_someone_else_first_still_pays_the_node() {
    let d = devnet().await;
    let (key, c) = reserved(&d, &request(&d, 900));
    d.chain
        .send_authorization(&dev_signer(4), c.transfer_call())
        .await
        .unwrap();
    // More blocks, and a reconciler round that reads the new head before the node sends: the
    // search for the transfer still starts from the head known at the check.
    d.chain.ledger().advance_time(5).await.unwrap();
    d.facilitator.reconcile_all().await;
    let s = d.facilitator.settle_reserved(key, &c, None).await;
    assert!(matches!(s, Settlement::Settled(_)), "{s:?}");
    assert_eq!(
        d.facilitator.store().get(key).unwrap().unwrap().state,
        PaymentState::Settled
    );
    assert_eq!(
        d.chain.token_balance(d.payee).await.unwrap(),
        U256::from(900)
    );
}

#[tokio::test]
async fn facilitator_verifies_settles_once_and_answers_retries_with_the_first_outcome() {
    let d = devnet().await;
    let req = request(&d, 1_500);
    let v = d.facilitator.verify(&req).await;
    assert!(v.is_valid, "{v:?}");
    assert_eq!(v.payer, Some(d.payer.address()));
    let before = d.chain.token_balance(d.payer.address()).await.unwrap();
    let s1 = d.facilitator.settle(&req).await;
    assert!(s1.success, "{s1:?}");
    assert!(s1.transaction.starts_with("0x"));
    // A retry (e.g. after the resource server's timeout) gets the same answer, no new transfer.
    let s2 = d.facilitator.settle(&req).await;
    assert_eq!(s1, s2);
    assert_eq!(
        d.chain.token_balance(d.payer.address()).await.unwrap(),
        before - U256::from(1_500)
    );
    assert_eq!(
        d.chain.token_balance(d.payee).await.unwrap(),
        U256::from(1_500)
    );
    // Verifying a spent authorization says so.
    let v = d.facilitator.verify(&req).await;
    assert_eq!(
        v.invalid_reason.as_deref(),
        Some("invalid_exact_evm_nonce_already_used")
    );
}

#[tokio::test]
async fn facilitator_refuses_with_reasons() {
    let d = devnet().await;
    // More than the payer holds.
    let rich = request(&d, 1_000 * TOKEN_UNIT);
    let v = d.facilitator.verify(&rich).await;
    assert_eq!(
        v.invalid_reason.as_deref(),
        Some("invalid_exact_evm_insufficient_balance")
    );
    let s = d.facilitator.settle(&rich).await;
    assert_eq!(
        s.error_reason.as_deref(),
        Some("invalid_exact_evm_insufficient_balance")
    );
    // Requirements that are not what the payment accepted.
    let mut req = request(&d, 10);
    req.payment_requirements["amount"] = json!("11");
    let v = d.facilitator.verify(&req).await;
    assert_eq!(
        v.invalid_reason.as_deref(),
        Some("invalid_payment_requirements")
    );
    // Another network.
    let mut req = request(&d, 10);
    req.payment_requirements["network"] = json!("eip155:1");
    req.payment_payload["accepted"]["network"] = json!("eip155:1");
    let v = d.facilitator.verify(&req).await;
    assert_eq!(
        v.invalid_reason.as_deref(),
        Some("invalid_exact_evm_network_mismatch")
    );
    // A forged signature (one byte flipped).
    let mut req = request(&d, 10);
    let sig = req.payment_payload["payload"]["signature"]
        .as_str()
        .unwrap()
        .to_string();
    let flipped = format!(
        "{}{}",
        &sig[..10],
        if &sig[10..11] == "0" { "1" } else { "0" }
    ) + &sig[11..];
    req.payment_payload["payload"]["signature"] = Value::String(flipped);
    let v = d.facilitator.verify(&req).await;
    assert_eq!(
        v.invalid_reason.as_deref(),
        Some("invalid_exact_evm_payload_signature")
    );
    // Nothing moved.
    assert_eq!(d.chain.token_balance(d.payee).await.unwrap(), U256::ZERO);
}

/// The embedded chain, except that sends answer busy without sending while `busy` is above
/// zero (one less each): what the JSON-RPC ledger answers when the key's earlier transaction,
/// maybe another role's (a node's roles share its key), was out or was mined just now.
pub(crate) struct Busy {
    inner: Arc<dyn Ledger>,
    pub(crate) busy: std::sync::atomic::AtomicU32,
}

#[async_trait::async_trait]
impl Ledger for Busy {
    fn chain_id(&self) -> u64 {
        self.inner.chain_id()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn call(
        &self,
        to: Address,
        data: alloy_primitives::Bytes,
    ) -> Result<alloy_primitives::Bytes, cairn_ledger::LedgerError> {
        self.inner.call(to, data).await
    }
    async fn send(
        &self,
        signer: &PrivateKeySigner,
        tx: cairn_ledger::TxRequest,
    ) -> Result<cairn_ledger::TxOutcome, cairn_ledger::LedgerError> {
        use std::sync::atomic::Ordering;
        if self
            .busy
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(cairn_ledger::LedgerError::Busy {
                hash: B256::repeat_byte(0xbb),
                nonce: 7,
                cleared: true,
            });
        }
        self.inner.send(signer, tx).await
    }
    async fn head(&self) -> Result<cairn_ledger::BlockInfo, cairn_ledger::LedgerError> {
        self.inner.head().await
    }
    async fn block_at(
        &self,
        number: u64,
    ) -> Result<Option<cairn_ledger::BlockStamp>, cairn_ledger::LedgerError> {
        self.inner.block_at(number).await
    }
    async fn balance(&self, who: Address) -> Result<U256, cairn_ledger::LedgerError> {
        self.inner.balance(who).await
    }
    async fn logs(
        &self,
        filter: cairn_ledger::LogFilter,
    ) -> Result<Vec<cairn_ledger::LogRecord>, cairn_ledger::LedgerError> {
        self.inner.logs(filter).await
    }
    async fn state_root(&self) -> Result<B256, cairn_ledger::LedgerError> {
        self.inner.state_root().await
    }
    async fn advance_time(&self, secs: u64) -> Result<(), cairn_ledger::LedgerError> {
        self.inner.advance_time(secs).await
    }
    async fn code(
        &self,
        who: Address,
    ) -> Result<alloy_primitives::Bytes, cairn_ledger::LedgerError> {
        self.inner.code(who).await
    }
    async fn dev_set_code(
        &self,
        who: Address,
        code: alloy_primitives::Bytes,
    ) -> Result<(), cairn_ledger::LedgerError> {
        self.inner.dev_set_code(who, code).await
    }
}

/// [`devnet`] whose chain answers the next sends [`Busy`] (as many as its count says).
pub(crate) async fn busy_devnet() -> (Devnet, Arc<Busy>) {
    let busy = Arc::new(std::sync::OnceLock::<Arc<Busy>>::new());
    let d = {
        let busy = busy.clone();
        devnet_on(move |inner| {
            let b = Arc::new(Busy {
                inner,
                busy: std::sync::atomic::AtomicU32::new(0),
            });
            busy.set(b.clone()).ok().unwrap();
            b
        })
        .await
    };
    let busy = busy.get().unwrap().clone();
    (d, busy)
}

/// An `upto` settlement whose first send finds the key busy is sent once more and settles
/// what was used. Busy twice running, nothing was sent and it fails (the permit stays unused:
/// the payer paid nothing, and the same permit cannot be settled later by surprise, since its
/// record says failed).
#[tokio::test]
async fn an_upto_settlement_whose_first_send_finds_the_key_busy_settles() {
    let (d, busy) = busy_devnet().await;
    let permit2 = d.chain.upto().unwrap().permit2;
    d.chain.approve(&d.payer, permit2, U256::MAX).await.unwrap();
    let upto_request = |max: u64, charge: u64| {
        let offer = d
            .facilitator
            .upto_offer(d.payee, U256::from(max), 60)
            .unwrap();
        let charged = PaymentRequirements {
            amount: U256::from(charge),
            ..offer.clone()
        };
        signed_request(&d, &offer, client::pay_upto, &charged)
    };
    let payer_before = d.chain.token_balance(d.payer.address()).await.unwrap();
    busy.busy.store(1, std::sync::atomic::Ordering::SeqCst);
    let s = d.facilitator.settle(&upto_request(40, 30)).await;
    assert!(s.success, "{s:?}");
    assert_eq!(
        d.chain.token_balance(d.payee).await.unwrap(),
        U256::from(30)
    );
    assert_eq!(busy.busy.load(std::sync::atomic::Ordering::SeqCst), 0);

    busy.busy.store(2, std::sync::atomic::Ordering::SeqCst);
    let req = upto_request(40, 30);
    let s = d.facilitator.settle(&req).await;
    assert_eq!(
        (s.success, s.error_reason.as_deref()),
        (false, Some("invalid_upto_evm_transaction_failed")),
        "busy twice running: {s:?}"
    );
    // The same permit again gets the first outcome (not "nonce used": it never was), never a
    // late transfer.
    let again = d.facilitator.settle(&req).await;
    assert_eq!(
        (again.success, again.error_reason.as_deref()),
        (false, Some("invalid_upto_evm_transaction_failed")),
        "{again:?}"
    );
    d.facilitator.reconcile_all().await;
    assert_eq!(
        d.chain.token_balance(d.payee).await.unwrap(),
        U256::from(30),
        "nothing sent for the failed one"
    );
    assert_eq!(
        d.chain.token_balance(d.payer.address()).await.unwrap(),
        payer_before - U256::from(30)
    );
}

/// A payment whose first send finds the facilitator's key busy (nothing sent: the key's
/// earlier transaction, maybe the node's settler's, was mined just now) is sent once more and
/// settles, instead of failing an honest payer for the node's own traffic. Busy twice running
/// leaves it pending, not failed (a transfer of it may be the one out), and the reconciler
/// sends it once the key is free.
#[tokio::test]
async fn a_payment_whose_first_send_finds_the_key_busy_settles() {
    let (d, busy) = busy_devnet().await;
    busy.busy.store(1, std::sync::atomic::Ordering::SeqCst);
    let s = d.facilitator.settle(&request(&d, 40)).await;
    assert!(s.success, "{s:?}");
    assert_eq!(
        d.chain.token_balance(d.payee).await.unwrap(),
        U256::from(40)
    );
    busy.busy.store(2, std::sync::atomic::Ordering::SeqCst);
    let s = d.facilitator.settle(&request(&d, 40)).await;
    assert_eq!(
        (s.success, s.error_reason.as_deref()),
        (false, Some("settlement_pending")),
        "busy twice running: {s:?}"
    );
    assert_eq!(
        d.chain.token_balance(d.payee).await.unwrap(),
        U256::from(40),
        "nothing sent yet"
    );
    d.facilitator.reconcile_all().await;
    assert_eq!(
        d.chain.token_balance(d.payee).await.unwrap(),
        U256::from(80),
        "sent by the reconciler once the key was free"
    );
}

#[tokio::test]
async fn parallel_settlements_all_land_without_nonce_errors() {
    let d = devnet().await;
    let reqs: Vec<_> = (0..16).map(|_| request(&d, 7)).collect();
    let outcomes = futures::future::join_all(reqs.iter().map(|r| d.facilitator.settle(r))).await;
    for o in &outcomes {
        assert!(o.success, "{o:?}");
    }
    assert_eq!(
        d.chain.token_balance(d.payee).await.unwrap(),
        U256::from(7 * 16)
    );
}

#[tokio::test]
async fn expired_authorization_is_not_sent() {
    let d = devnet().await;
    let req = request(&d, 5);
    let payload: PaymentPayload = serde_json::from_value(req.payment_payload.clone()).unwrap();
    let c = d
        .facilitator
        .check_exact(&payload.payload, &payload.accepted, now_secs())
        .unwrap();
    let mut expired = c.clone();
    expired.authorization.valid_before = U256::from(now_secs() - 1);
    let out = d
        .facilitator
        .settle_reserved(B256::repeat_byte(9), &expired, None)
        .await;
    assert!(
        matches!(out, Settlement::Failed(ref r) if r.code == "invalid_exact_evm_payload_authorization_valid_before"),
        "{out:?}"
    );
}

/// A process that stops mid-request: a payment still reserved never had a transfer out and is
/// given back; one marked pending with no transaction on record (the sender died mid-send) is
/// sent again by the next process's reconciler, once, and keeps the withheld answer; one whose
/// transfer got through before the crash is settled without a second send, under the hash of
/// the transaction that paid it (whoever sent it).
#[tokio::test]
async fn a_restart_releases_unsent_payments_and_finishes_a_send_cut_off() {
    let d = devnet().await;
    let reserve = |req: &FacilitatorRequest| reserved(&d, req);
    let (running, _) = reserve(&request(&d, 700));
    let (cut_off, _) = reserve(&request(&d, 800));
    let (through, c) = reserve(&request(&d, 900));
    let store = d.facilitator.store();
    // `through` noted a transaction that was never mined (replaced with higher fees, say).
    for (key, tx) in [(cut_off, None), (through, Some("0x5ca1ed"))] {
        store
            .set_state(key, PaymentState::Pending, tx, None, Some(b"the answer"))
            .unwrap();
    }
    let paid_by = d
        .chain
        .send_authorization(&dev_signer(3), c.transfer_call())
        .await
        .unwrap()
        .hash;
    let payer_before = d.chain.token_balance(d.payer.address()).await.unwrap();

    // The next process (the store has one user at a time: this one stops first).
    let Devnet {
        _dir: dir,
        chain,
        facilitator,
        payer,
        payee,
    } = d;
    drop(facilitator);
    let store = PaymentStore::open(&dir.path().join("payments.sqlite"), Durability::Full).unwrap();
    let f = Facilitator::new(chain.clone(), dev_signer(2), store)
        .await
        .unwrap();
    assert_eq!(
        f.store().get(running).unwrap().unwrap().state,
        PaymentState::Released
    );
    for _ in 0..2 {
        f.reconcile_all().await;
    }
    for key in [cut_off, through] {
        let rec = f.store().get(key).unwrap().unwrap();
        assert_eq!(rec.state, PaymentState::Settled, "{rec:?}");
        assert_eq!(rec.response.as_deref(), Some(&b"the answer"[..]));
    }
    assert_eq!(
        f.store().get(through).unwrap().unwrap().tx,
        Some(paid_by.to_string())
    );
    assert_eq!(
        chain.token_balance(payer.address()).await.unwrap(),
        payer_before - U256::from(800),
        "only the cut-off transfer is sent, and once"
    );
    assert_eq!(
        chain.token_balance(payee).await.unwrap(),
        U256::from(800 + 900)
    );
}

/// The facilitator's `batch-settlement` for another server: a deposit verified (simulated) and
/// submitted, vouchers checked against the channel on chain, claims signed only for channels
/// naming this facilitator as receiver authorizer, the sweep once; bad vouchers refused.
#[tokio::test]
async fn the_facilitator_deposits_claims_and_sweeps_batch_settlement_channels() {
    use crate::client::BatchChannel;
    let d = devnet().await;
    let f = &d.facilitator;
    let shop = Address::repeat_byte(0x5a);
    let offer = PaymentRequirements {
        scheme: "batch-settlement".into(),
        network: f.network(),
        amount: U256::from(1_000u64),
        asset: f.token(),
        pay_to: shop,
        max_timeout_seconds: 300,
        extra: serde_json::json!({
            "receiverAuthorizer": f.address(),
            "withdrawDelay": 900,
            "name": f.token_domain().name.as_deref().unwrap(),
            "version": f.token_domain().version.as_deref().unwrap(),
        }),
    };
    let supported = f.supported();
    assert!(
        supported["kinds"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["scheme"] == "batch-settlement"
                && k["extra"]["receiverAuthorizer"] == f.address().to_checksum(None)),
        "{supported}"
    );
    let req_of = |payload: serde_json::Value, offer: &PaymentRequirements| FacilitatorRequest {
        x402_version: 2,
        payment_payload: serde_json::json!({"x402Version": 2, "accepted": offer, "payload": payload}),
        payment_requirements: serde_json::to_value(offer).unwrap(),
    };
    let mut ch = BatchChannel::new(d.payer.address(), &offer, B256::repeat_byte(1)).unwrap();
    let deposit = ch.payload(&d.payer, &offer, U256::from(5_000u64)).unwrap();
    let v = f.verify(&req_of(deposit.clone(), &offer)).await;
    assert!(v.is_valid, "{v:?}");
    assert_eq!(v.extra.as_ref().unwrap()["balance"], "0");
    let before = d.chain.ledger().head().await.unwrap().number;
    let s = f.settle(&req_of(deposit.clone(), &offer)).await;
    assert!(s.success, "{s:?}");
    assert_eq!(s.extra.as_ref().unwrap()["channelState"]["balance"], "5000");
    // The embedded chain mines a block per transaction.
    assert!(d.chain.ledger().head().await.unwrap().number > before);
    // The same deposit again: its authorization is used, found by simulating it, before any
    // transaction at the facilitator's gas; the payer paid once.
    let payer_balance = d.chain.token_balance(d.payer.address()).await.unwrap();
    let head = d.chain.ledger().head().await.unwrap().number;
    let again = f.settle(&req_of(deposit, &offer)).await;
    assert_eq!(
        again.error_reason.as_deref(),
        Some("invalid_batch_settlement_evm_deposit_simulation_failed"),
        "{again:?}"
    );
    assert_eq!(
        d.chain.token_balance(d.payer.address()).await.unwrap(),
        payer_balance
    );
    assert_eq!(
        d.chain.ledger().head().await.unwrap().number,
        head,
        "a transaction was sent"
    );
    ch.charged = U256::from(1_000u64);
    let voucher = ch.payload(&d.payer, &offer, U256::ZERO).unwrap();
    assert_eq!(voucher["type"], "voucher");
    let v = f.verify(&req_of(voucher.clone(), &offer)).await;
    assert!(v.is_valid, "{v:?}");
    // Settled by itself, a voucher is refused (the server counts it, then claims).
    let s = f.settle(&req_of(voucher.clone(), &offer)).await;
    assert_eq!(
        s.error_reason.as_deref(),
        Some("invalid_batch_settlement_evm_payload_type")
    );
    // Over the balance, forged, another receiver: refused with their reasons.
    let mut over = ch.clone();
    over.charged = U256::from(4_500u64);
    over.balance = U256::MAX;
    let v = f
        .verify(&req_of(
            over.payload(&d.payer, &offer, U256::ZERO).unwrap(),
            &offer,
        ))
        .await;
    assert_eq!(
        v.invalid_reason.as_deref(),
        Some("invalid_batch_settlement_evm_cumulative_exceeds_balance")
    );
    let v = f
        .verify(&req_of(
            ch.clone()
                .payload(&dev_signer(7), &offer, U256::ZERO)
                .unwrap(),
            &offer,
        ))
        .await;
    assert_eq!(
        v.invalid_reason.as_deref(),
        Some("invalid_batch_settlement_evm_voucher_signature")
    );
    let mut elsewhere = offer.clone();
    elsewhere.pay_to = Address::repeat_byte(0x77);
    let v = f.verify(&req_of(voucher.clone(), &elsewhere)).await;
    assert_eq!(
        v.invalid_reason.as_deref(),
        Some("invalid_batch_settlement_evm_receiver_mismatch")
    );

    // Claims: the facilitator signs only for channels that name it.
    let claim = |authorizer: Address, total: u64| {
        let mut config = serde_json::to_value(&voucher["channelConfig"]).unwrap();
        config["receiverAuthorizer"] = serde_json::json!(authorizer);
        serde_json::json!({"type": "claim", "claims": [{
            "voucher": {"channel": config, "maxClaimableAmount": voucher["voucher"]["maxClaimableAmount"]},
            "signature": voucher["voucher"]["signature"],
            "totalClaimed": total.to_string(),
        }]})
    };
    let s = f
        .settle(&req_of(claim(Address::repeat_byte(9), 2_000), &offer))
        .await;
    assert_eq!(
        s.error_reason.as_deref(),
        Some("invalid_batch_settlement_evm_authorizer_address_mismatch")
    );
    let s = f.settle(&req_of(claim(f.address(), 2_000), &offer)).await;
    assert!(s.success, "{s:?}");
    // The same claim again would raise nothing: no transaction (no gas) for it.
    let s = f.settle(&req_of(claim(f.address(), 2_000), &offer)).await;
    assert_eq!(
        s.error_reason.as_deref(),
        Some("invalid_batch_settlement_evm_claim_payload")
    );
    let sweep = serde_json::json!({"type": "settle", "receiver": shop, "token": f.token()});
    let s = f.settle(&req_of(sweep.clone(), &offer)).await;
    assert!(s.success, "{s:?}");
    assert_eq!(s.amount.as_deref(), Some("2000"));
    assert_eq!(
        d.chain.token_balance(shop).await.unwrap(),
        U256::from(2_000u64)
    );
    let s = f.settle(&req_of(sweep, &offer)).await;
    assert_eq!(
        s.error_reason.as_deref(),
        Some("invalid_batch_settlement_evm_nothing_to_settle")
    );
}

/// A batch-settlement voucher carries no nonce: after a call charged less than its price (0
/// here) the same ceiling is the channel's next step again and is taken again (still within what
/// the payer signed); a counted voucher that is not the next step stays refused.
#[test]
fn a_counted_nonceless_voucher_is_taken_again_only_as_the_next_step() {
    let dir = tempfile::tempdir().unwrap();
    let store = PaymentStore::open(&dir.path().join("p.sqlite"), Durability::Full).unwrap();
    let id = B256::repeat_byte(3);
    let rec = crate::store::ChannelRecord {
        id,
        payer: Address::repeat_byte(1),
        payee: Address::repeat_byte(2),
        salt: B256::ZERO,
        deposited: U256::from(10_000u64),
        closing: false,
        accepted: U256::ZERO,
        pending: U256::ZERO,
        redeemed: U256::ZERO,
    };
    store.refresh_batch_channel(31337, &rec, b"config").unwrap();
    let price = U256::from(1_000u64);
    let key = B256::repeat_byte(9);
    let take = |again| {
        store
            .accept_voucher_again(id, key, price, B256::ZERO, price, b"sig", again)
            .unwrap()
    };
    assert_eq!(take(true), Ok(()));
    store.commit_voucher(key, U256::ZERO).unwrap();
    assert_eq!(take(false), Err(crate::store::VoucherRefusal::AlreadyUsed));
    assert_eq!(take(true), Ok(()));
    store.commit_voucher(key, price).unwrap();
    // Now 1,000 is owed: the same ceiling is no longer the next step.
    assert!(matches!(
        take(true),
        Err(crate::store::VoucherRefusal::AlreadyUsed
            | crate::store::VoucherRefusal::NotNext { .. })
    ));
    assert_eq!(store.channel(id).unwrap().unwrap().accepted, price);
}
