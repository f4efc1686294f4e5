use super::*;

/// A log entry for receipt `id`, billed as `billing`, paid by payment reference `payment`.
fn entry(id: &str, billing: Billing, payment: u8) -> Entry {
    Entry {
        id: id.into(),
        created_at: 1,
        model: "m".into(),
        receipt: format!("\"receipt {id}\""),
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
    )
    .await
    .unwrap();
    let entry = |id: &str| Entry {
        receipt: "{}".into(),
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
