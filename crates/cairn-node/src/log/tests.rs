use super::*;

/// A log entry for receipt `id`, billed as `billing`, paid by payment reference `payment`.
fn entry(id: &str, billing: Billing, payment: u8) -> Entry {
    Entry {
        id: id.into(),
        created_at: 1,
        model: "m".into(),
        receipt: EntryReceipt::Signed(ReceiptJson::from_text(format!("\"receipt {id}\"")).unwrap()),
        input: vec![1],
        output: vec![2],
        digest: [7; 32],
        price: "0".into(),
        billing,
        payer: None,
        payment_ref: [payment; 32],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn appends_reads_and_refuses_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let log = ReceiptLog::open(
        &dir.path().join("r.sqlite"),
        Duration::from_secs(3600),
        Durability::Full,
        false,
        None,
    )
    .await
    .unwrap();
    let entry = |id: &str| Entry {
        receipt: EntryReceipt::Signed(ReceiptJson::from_text("{}".into()).unwrap()),
        ..entry(id, Billing::Final, 0)
    };
    log.append(entry("a")).await.unwrap();
    assert!(log.append(entry("a")).await.is_err());
    let got = log.get("a").await.unwrap().unwrap();
    assert!(got.payloads);
    assert_eq!(log.payload("a", true).await.unwrap(), Some(vec![2]));
    assert!(log.get("b").await.unwrap().is_none());
    assert_eq!(log.count().await.unwrap(), 1);
}

/// A payment given back and presented again runs again: only the new run's receipt may
/// bill it, so the earlier one is voided (else one payment would pay two fees).
#[tokio::test(flavor = "multi_thread")]
async fn a_rerun_under_the_same_payment_voids_the_earlier_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let log = ReceiptLog::open(
        &dir.path().join("r.sqlite"),
        Duration::from_secs(3600),
        Durability::Full,
        true,
        None,
    )
    .await
    .unwrap();
    let entry = |id: &str, payment: u8| Entry {
        price: "5".into(),
        payer: Some([1; 20]),
        ..entry(id, Billing::AwaitingPayment, payment)
    };
    log.append(entry("first", 9)).await.unwrap();
    log.append(entry("other", 8)).await.unwrap();
    log.append(entry("again", 9)).await.unwrap();
    let waiting: Vec<String> = log
        .awaiting_payment(10)
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.0)
        .collect();
    assert_eq!(waiting, ["other", "again"]);
    assert!(!log.get("first").await.unwrap().unwrap().payloads);
    let (receipt, _) = log.by_payment(B256::repeat_byte(9)).await.unwrap().unwrap();
    assert_eq!(receipt.as_str(), "\"receipt again\"");
}

fn claims(i: u8) -> Claims {
    Claims {
        request_id: B256::repeat_byte(i),
        model: cairn_core::BlobId::of(b"model"),
        input_hash: B256::repeat_byte(2),
        output_hash: B256::repeat_byte(3),
        profile: cairn_core::ExecutionProfile {
            engine: "tract".into(),
            engine_version: "0".into(),
            isa: "x86_64".into(),
            threads: 1,
        },
        timestamp: 1,
        price: alloy_primitives::U256::from(4u8),
        payment_ref: B256::ZERO,
    }
}

/// Batch-sealed entries are signed by the writer, one root per group commit: every receipt
/// handed back verifies, is what the log stored, and names a root signed once for its group.
#[tokio::test(flavor = "multi_thread")]
async fn the_writer_signs_batch_sealed_receipts_one_root_per_group() {
    let dir = tempfile::tempdir().unwrap();
    let key = alloy_signer_local::PrivateKeySigner::random();
    let signer = ReceiptSigner::new(
        cairn_core::sig::SigningKey::from_signer(&key),
        cairn_receipt::ReceiptDomain {
            chain_id: 31337,
            verifying_contract: Address::repeat_byte(9),
        },
    );
    let log = ReceiptLog::open(
        &dir.path().join("r.sqlite"),
        Duration::from_secs(3600),
        Durability::Normal,
        false,
        Some(signer.clone()),
    )
    .await
    .unwrap();
    let appends = (1..=40u8).map(|i| {
        let c = claims(i);
        let digest = signer.digest(&c);
        let log = log.clone();
        tokio::spawn(async move {
            let e = Entry::new(c, None, digest, vec![1], vec![2], Billing::Final, None);
            (digest, log.append(e).await.unwrap())
        })
    });
    let mut cache = cairn_receipt::SealCache::default();
    for a in appends.collect::<Vec<_>>() {
        let (digest, json) = a.await.unwrap();
        let (r, d) = json.verify_cached(&mut cache).unwrap();
        assert_eq!(d, digest);
        assert_eq!(r.signer, key.address());
        assert!(matches!(r.seal, cairn_receipt::Seal::Batch(_)));
        let stored = log.get(&r.id().to_string()).await.unwrap().unwrap();
        assert_eq!(stored.receipt, json);
    }
    assert!((1..=40).contains(&cache.roots()), "{}", cache.roots());
}

/// A log that signs nothing refuses batch-sealed entries with a reason, and the rest of the
/// group still commits.
#[tokio::test(flavor = "multi_thread")]
async fn without_a_sealer_batch_sealed_entries_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let log = ReceiptLog::open(
        &dir.path().join("r.sqlite"),
        Duration::from_secs(3600),
        Durability::Normal,
        false,
        None,
    )
    .await
    .unwrap();
    let unsigned = Entry::new(
        claims(1),
        None,
        B256::ZERO,
        vec![],
        vec![],
        Billing::Final,
        None,
    );
    let (a, b) = tokio::join!(
        log.append(unsigned),
        log.append(entry("own", Billing::Final, 0))
    );
    assert!(a.unwrap_err().to_string().contains("signs no batches"));
    assert_eq!(b.unwrap().as_str(), "\"receipt own\"");
    assert_eq!(log.count().await.unwrap(), 1);
}
