use super::*;

/// A log that keeps payloads an hour, fsyncs, settles nothing and signs no batches.
async fn plain_log(path: &std::path::Path) -> ReceiptLog {
    log_with(path, Duration::from_secs(3600), Durability::Full).await
}

/// A log at `durability` that keeps payloads `retention`, settles nothing and signs no batches.
async fn log_with(
    path: &std::path::Path,
    retention: Duration,
    durability: Durability,
) -> ReceiptLog {
    ReceiptLog::open(path, retention, durability, false, None)
        .await
        .unwrap()
}

/// SQLite's `synchronous` on the write connection as appends see it (1 NORMAL, 2 FULL).
async fn appends_synchronous(log: &ReceiptLog) -> i64 {
    let writer = log.writer.clone();
    tokio::task::spawn_blocking(move || {
        // Asking for no more than the log's least durability changes nothing.
        writer.with_conn(Durability::Normal, |c| {
            c.query_row("PRAGMA synchronous", [], |r| r.get(0))
        })
    })
    .await
    .unwrap()
    .unwrap()
}

/// The receipt of log entry `id` ([`entry`]), signed on its own.
fn own_receipt(id: &str) -> SignedReceipt {
    let mut c = claims(0);
    c.request_id = alloy_primitives::keccak256(id);
    test_signer().sign(c)
}

/// A log entry for receipt `id`, billed as `billing`, paid by payment reference `payment`.
fn entry(id: &str, billing: Billing, payment: u8) -> Entry {
    Entry {
        id: id.into(),
        created_at: 1,
        model: "m".into(),
        receipt: EntryReceipt::signed(&own_receipt(id)),
        input: vec![1],
        output: vec![2],
        digest: [7; 32],
        price: "0".into(),
        billing,
        payer: None,
        payment_ref: [payment; 32],
    }
}

/// What was appended reads back at once; an id seen again (ids are 32 random bytes: only a
/// journal entry replayed after SQLite took it) keeps the first entry.
#[tokio::test(flavor = "multi_thread")]
async fn appends_read_back_and_a_repeated_id_keeps_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let log = plain_log(&dir.path().join("r.sqlite")).await;
    let entry = |id: &str| entry(id, Billing::Final, 0);
    log.append(entry("a")).await.unwrap();
    let mut again = entry("a");
    again.output = vec![3];
    log.append(again).await.unwrap();
    let got = log.get("a").await.unwrap().unwrap();
    assert!(got.payloads);
    // Kept in binary form, served as the same JSON.
    assert_eq!(got.receipt, ReceiptJson::from(&own_receipt("a")));
    assert_eq!(log.payload("a", true).await.unwrap(), Some(vec![2]));
    assert!(log.get("b").await.unwrap().is_none());
    assert_eq!(log.count().await.unwrap(), 1);
}

/// A settler pass bills every receipt awaiting payment, chunk after chunk, not one chunk a
/// tick (a paid load above a chunk a second would leave an ever longer backlog unbatched), and
/// goes on past receipts whose payments are still open instead of stopping at them or reading
/// them again. Here the oldest chunk's payments are open (reserved in the store), three are
/// paid, and the rest are unknown to the store (voided).
#[tokio::test(flavor = "multi_thread")]
async fn one_settler_pass_bills_every_chunk_and_passes_open_payments() {
    let dir = tempfile::tempdir().unwrap();
    let log = plain_log(&dir.path().join("r.sqlite")).await;
    let store = cairn_x402::PaymentStore::open(
        &dir.path().join("payments.sqlite"),
        cairn_sqlite::Durability::Normal,
    )
    .unwrap();
    let reserve = |i: u8| {
        let r = store
            .reserve(&cairn_x402::store::NewPayment {
                key: B256::repeat_byte(i),
                chain: 1,
                scheme: "exact",
                payer: alloy_primitives::Address::ZERO,
                amount: alloy_primitives::U256::from(1),
                resource: "r",
                payload: "{}",
                from_block: 0,
            })
            .unwrap();
        assert!(matches!(r, cairn_x402::store::Reserve::Reserved));
    };
    for i in 1..=12u8 {
        if i <= 4 || i >= 10 {
            reserve(i);
        }
        log.append(entry(&format!("r{i}"), Billing::AwaitingPayment, i))
            .await
            .unwrap();
    }
    for i in 10..=12u8 {
        store
            .set_state(
                B256::repeat_byte(i),
                cairn_x402::store::PaymentState::Settled,
                Some("0x01"),
                None,
                None,
            )
            .unwrap();
    }
    let resolved = crate::batcher::resolve_all_billing(&log, &store, 4)
        .await
        .unwrap();
    assert_eq!(
        resolved, 8,
        "every receipt but the four still open, in one pass"
    );
    let mut open: Vec<String> = log
        .awaiting_payment(100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.0)
        .collect();
    open.sort();
    assert_eq!(open, ["r1", "r2", "r3", "r4"]);
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
    assert_eq!(receipt, ReceiptJson::from(&own_receipt("again")));
}

/// The same within one index transaction: the index thread commits many entries at once, and
/// a rerun must void the earlier receipt even when both are in the same transaction.
#[test]
fn a_rerun_in_the_same_transaction_voids_the_earlier_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = cairn_sqlite::open(&dir.path().join("r.sqlite"), Durability::Normal).unwrap();
    conn.execute_batch(SCHEMA).unwrap();
    migrate(&conn).unwrap();
    let (first, again) = (
        entry("first", Billing::AwaitingPayment, 9),
        entry("again", Billing::AwaitingPayment, 9),
    );
    commit(&mut conn, [&first, &again].into_iter()).unwrap();
    let billing = |conn: &Connection, id: &str| -> String {
        conn.query_row("SELECT billing FROM receipts WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap()
    };
    assert_eq!(billing(&conn, "first"), "void");
    assert_eq!(billing(&conn, "again"), "awaiting_payment");
    // The same entry committed twice (replayed from the journal by a log that lost the race to
    // index it) is skipped: it does not void itself.
    commit(&mut conn, [&again].into_iter()).unwrap();
    assert_eq!(billing(&conn, "again"), "awaiting_payment");
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
        llm: None,
    }
}

fn test_signer() -> ReceiptSigner {
    ReceiptSigner::new(
        cairn_core::sig::SigningKey::from_bytes(&B256::repeat_byte(5)).unwrap(),
        cairn_receipt::ReceiptDomain {
            chain_id: 31337,
            verifying_contract: Address::repeat_byte(9),
        },
    )
}

fn unsigned(signer: &ReceiptSigner, i: u8) -> Entry {
    unsigned_claims(signer, claims(i))
}

/// A log entry whose claims `c` the writer signs in a batch.
fn unsigned_claims(signer: &ReceiptSigner, c: Claims) -> Entry {
    let digest = signer.digest(&c);
    Entry::new(
        ToLog::ToSign(c),
        digest,
        vec![1],
        vec![2],
        Billing::Final,
        None,
    )
}

/// One group: its batch-sealed entries are signed under one root (count = how many), each with
/// its own proof, and an entry signed alone is left as it was.
#[test]
fn a_group_is_signed_under_one_root() {
    let signer = test_signer();
    let mut jobs: Vec<Job> = (1..=10u8)
        .map(|i| (unsigned(&signer, i), oneshot::channel().0))
        .collect();
    jobs.insert(4, (entry("own", Billing::Final, 0), oneshot::channel().0));
    seal(Some(&signer), &mut jobs);
    assert_eq!(jobs.len(), 11);
    let mut cache = cairn_receipt::SealCache::default();
    for (e, _) in &jobs {
        let EntryReceipt::Signed(json, compact) = &e.receipt else {
            panic!("every entry is signed after seal")
        };
        if e.id == "own" {
            assert_eq!(*json, ReceiptJson::from(&own_receipt("own")));
            continue;
        }
        assert_eq!(compact.as_ref().unwrap().to_json().unwrap(), *json);
        let (r, digest) = json.verify_cached(&mut cache).unwrap();
        assert_eq!(digest.0, e.digest);
        assert_eq!(r.id().to_string(), e.id);
        let cairn_receipt::Seal::Batch(b) = &r.seal else {
            panic!("batch-sealed")
        };
        assert_eq!(b.count, 10);
    }
    assert_eq!(cache.roots(), 1);
}

/// A log that signs nothing refuses batch-sealed entries with a reason, and the rest of the
/// group still commits.
#[test]
fn without_a_sealer_batch_sealed_entries_leave_the_group_with_a_reason() {
    let signer = test_signer();
    let (done, mut failed) = oneshot::channel();
    let mut jobs: Vec<Job> = vec![
        (unsigned(&signer, 1), done),
        (entry("own", Billing::Final, 0), oneshot::channel().0),
    ];
    seal(None, &mut jobs);
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].0.id, "own");
    let reason = failed.try_recv().unwrap().unwrap_err();
    assert!(reason.contains("signs no batches"), "{reason}");
}

/// A group whose signing or commit panics fails with the reason; what it had written is rolled
/// back and the next group commits on the same connection.
#[test]
fn a_panicking_group_fails_alone_and_leaves_the_log_writable() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = cairn_sqlite::open(&dir.path().join("r.sqlite"), Durability::Normal).unwrap();
    conn.execute_batch(SCHEMA).unwrap();
    migrate(&conn).unwrap();
    let count = |c: &Connection| -> i64 {
        c.query_row("SELECT COUNT(*) FROM receipts", [], |r| r.get(0))
            .unwrap()
    };
    let first: Vec<Job> = vec![(entry("a", Billing::Final, 0), oneshot::channel().0)];
    let err = guarded(|| -> Result<(), String> {
        commit(&mut conn, first.iter().map(|j| &j.0)).unwrap();
        let tx = conn.transaction().unwrap();
        tx.execute(
            "UPDATE receipts SET model = 'half-written' WHERE id = 'a'",
            [],
        )
        .unwrap();
        panic!("signing blew up");
    })
    .unwrap_err();
    assert!(
        err.contains("signing blew up") && err.contains("retry"),
        "{err}"
    );
    let model: String = conn
        .query_row("SELECT model FROM receipts WHERE id = 'a'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(model, "m", "the panicking transaction was rolled back");
    let next: Vec<Job> = vec![(entry("b", Billing::Final, 0), oneshot::channel().0)];
    guarded(|| commit(&mut conn, next.iter().map(|j| &j.0)).map_err(|e| e.to_string())).unwrap();
    assert_eq!(count(&conn), 2);
}

/// Through the writer: every batch-sealed receipt handed back verifies and is what the log
/// stored; concurrent appends share roots when they commit together.
#[tokio::test(flavor = "multi_thread")]
async fn appended_batch_sealed_receipts_verify_and_are_what_was_stored() {
    let dir = tempfile::tempdir().unwrap();
    let signer = test_signer();
    let log = ReceiptLog::open(
        &dir.path().join("r.sqlite"),
        Duration::from_secs(3600),
        Durability::Normal,
        false,
        Some(signer.clone()),
    )
    .await
    .unwrap();
    let appends: Vec<_> = (1..=40u8)
        .map(|i| {
            let e = unsigned(&signer, i);
            let digest = B256::from(e.digest);
            let log = log.clone();
            tokio::spawn(async move { (digest, log.append(e).await.unwrap()) })
        })
        .collect();
    let mut cache = cairn_receipt::SealCache::default();
    for a in appends {
        let (digest, json) = a.await.unwrap();
        let (r, d) = json.verify_cached(&mut cache).unwrap();
        assert_eq!(d, digest);
        assert_eq!(r.signer, signer.address());
        let stored = log.get(&r.id().to_string()).await.unwrap().unwrap();
        assert_eq!(stored.receipt, json);
    }
    assert_eq!(log.count().await.unwrap(), 40);
}

/// A log that signs batches, holding a group `linger` at most.
async fn sealing_log(dir: &std::path::Path, linger: Duration) -> ReceiptLog {
    let log = ReceiptLog::open(
        &dir.join("r.sqlite"),
        Duration::from_secs(3600),
        Durability::Normal,
        false,
        Some(test_signer()),
    )
    .await
    .unwrap();
    log.writer.set_linger(linger);
    log
}

/// The batch seal of an appended receipt.
fn batch_seal(json: &ReceiptJson) -> cairn_receipt::BatchSeal {
    let (r, _) = json
        .verify_cached(&mut cairn_receipt::SealCache::default())
        .unwrap();
    let cairn_receipt::Seal::Batch(b) = r.seal else {
        panic!("batch-sealed")
    };
    b
}

/// A test's bound on what should take milliseconds (a hold of 600 s shows as a failure).
async fn soon<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("done within 10 s")
}

/// Batch-sealed requests admitted together share one signature even when each reaches the log
/// while the journal is free: the group waits for those on their way. (On one thread each
/// append used to find the journal free and be signed alone.)
#[tokio::test(flavor = "current_thread")]
async fn batch_sealed_receipts_of_requests_served_together_share_one_signature() {
    let dir = tempfile::tempdir().unwrap();
    let signer = test_signer();
    let log = sealing_log(dir.path(), Duration::from_secs(600)).await;
    let coming: Vec<Coming> = (0..8).map(|_| log.coming()).collect();
    let appends: Vec<_> = coming
        .into_iter()
        .zip(1..=8u8)
        .map(|(c, i)| {
            let (log, e) = (log.clone(), unsigned(&signer, i));
            tokio::spawn(async move { log.append_coming(e, Some(c)).await.unwrap() })
        })
        .collect();
    let mut roots = std::collections::BTreeSet::new();
    for a in appends {
        let b = batch_seal(&soon(a).await.unwrap());
        assert_eq!(b.count, 8);
        roots.insert(b.root);
    }
    assert_eq!(roots.len(), 1);
}

/// A held group does not wait past its deadline for a request that does not come (still
/// being served): it waits the linger, then goes.
#[tokio::test(flavor = "current_thread")]
async fn a_held_group_is_written_by_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let signer = test_signer();
    let linger = Duration::from_millis(50);
    let log = sealing_log(dir.path(), linger).await;
    let _slow = log.coming();
    let started = std::time::Instant::now();
    let alone = soon(log.append_coming(unsigned(&signer, 1), Some(log.coming())))
        .await
        .unwrap();
    assert!(started.elapsed() >= linger, "it was held for the other");
    assert_eq!(batch_seal(&alone).count, 1);
}

/// A log holding groups up to 600 s, a batch-sealed request on its way (its guard), and
/// another's append spawned and held for it.
async fn held_behind_one_on_its_way(
    dir: &std::path::Path,
    signer: &ReceiptSigner,
) -> (ReceiptLog, Coming, tokio::task::JoinHandle<ReceiptJson>) {
    let log = sealing_log(dir, Duration::from_secs(600)).await;
    let on_its_way = log.coming();
    let held = {
        let (log, e, c) = (log.clone(), unsigned(signer, 1), log.coming());
        tokio::spawn(async move { log.append_coming(e, Some(c)).await.unwrap() })
    };
    tokio::task::yield_now().await;
    assert!(!held.is_finished(), "held for the request on its way");
    (log, on_its_way, held)
}

/// A request that fails on its way lets the group held for it go at once; with none on its
/// way, nothing is held.
#[tokio::test(flavor = "current_thread")]
async fn a_request_that_fails_on_its_way_lets_the_held_group_go() {
    let dir = tempfile::tempdir().unwrap();
    let signer = test_signer();
    let (log, failing, held) = held_behind_one_on_its_way(dir.path(), &signer).await;
    drop(failing);
    assert_eq!(batch_seal(&soon(held).await.unwrap()).count, 1);
    let alone = soon(log.append(unsigned(&signer, 2))).await.unwrap();
    assert_eq!(batch_seal(&alone).count, 1);
}

/// An entry signed on its own is never held, and takes a held group with it.
#[tokio::test(flavor = "current_thread")]
async fn own_receipts_never_wait_and_take_a_held_group_along() {
    let dir = tempfile::tempdir().unwrap();
    let signer = test_signer();
    let (log, _slow, held) = held_behind_one_on_its_way(dir.path(), &signer).await;
    let own = soon(log.append(entry("own", Billing::Final, 0)))
        .await
        .unwrap();
    assert_eq!(own, ReceiptJson::from(&own_receipt("own")));
    assert_eq!(batch_seal(&soon(held).await.unwrap()).count, 1);
}

/// Many batch-sealed appends racing on several threads, each announced first, some of their
/// requests failing on the way: every one is answered once, with a receipt that verifies, and
/// the log holds them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_batch_sealed_appends_are_each_answered_once() {
    let dir = tempfile::tempdir().unwrap();
    let signer = test_signer();
    let log = sealing_log(dir.path(), Duration::from_micros(200)).await;
    let tasks: Vec<_> = (0..8u8)
        .map(|t| {
            let (log, signer) = (log.clone(), signer.clone());
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..25u8 {
                    let coming = log.coming();
                    if i % 5 == 4 {
                        drop(coming);
                        continue;
                    }
                    let mut c = claims(i);
                    c.request_id = alloy_primitives::keccak256([t, i]);
                    let e = unsigned_claims(&signer, c);
                    let json = log.append_coming(e, Some(coming)).await.unwrap();
                    let (r, _) = json
                        .verify_cached(&mut cairn_receipt::SealCache::default())
                        .unwrap();
                    ids.push(r.id());
                }
                ids
            })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        ids.extend(soon(t).await.unwrap());
    }
    assert_eq!(ids.len(), 8 * 20);
    assert_eq!(log.count().await.unwrap(), 8 * 20);
}

/// A row written before receipts were kept in binary form (JSON text, no `compact`) is read
/// as before.
#[tokio::test(flavor = "multi_thread")]
async fn rows_from_before_the_binary_form_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sqlite");
    let log = plain_log(&path).await;
    log.append(entry("new", Billing::Final, 0)).await.unwrap();
    let old = own_receipt("old");
    let json = ReceiptJson::from(&old);
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute(
            "INSERT INTO receipts (id, created_at, model, receipt, digest, price)
             VALUES ('old', 1, 'm', ?1, ?2, '0')",
            params![json.as_str(), old.signing_hash().as_slice()],
        )
        .unwrap();
    assert_eq!(log.get("old").await.unwrap().unwrap().receipt, json);
    drop(log);
    // An older log's schema: the full payment index, an unpaid row with a zero reference. At
    // the next open both are gone and the zero reference finds nothing.
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(
        "DROP INDEX receipts_paid_by;
         CREATE INDEX receipts_by_payment ON receipts (payment_ref);
         UPDATE receipts SET payment_ref = zeroblob(32), output = x'02' WHERE id = 'old';",
    )
    .unwrap();
    drop(c);
    let log = plain_log(&path).await;
    let c = rusqlite::Connection::open(&path).unwrap();
    let indexes: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'receipts_%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        indexes.contains(&"receipts_paid_by".to_string()),
        "{indexes:?}"
    );
    assert!(
        !indexes.contains(&"receipts_by_payment".to_string()),
        "{indexes:?}"
    );
    let zero: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM receipts WHERE payment_ref = zeroblob(32)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(zero, 0, "old zero references cleared");
    assert!(log.by_payment(B256::ZERO).await.unwrap().is_none());
    assert_eq!(
        log.get("new").await.unwrap().unwrap().receipt,
        ReceiptJson::from(&own_receipt("new"))
    );
}

/// The lookups by batch and by payment use their (partial) indexes, and an unpaid, unbatched
/// receipt is in neither: its commit writes no page of them.
#[tokio::test(flavor = "multi_thread")]
async fn lookups_use_the_partial_indexes_that_unpaid_receipts_stay_out_of() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sqlite");
    let log = plain_log(&path).await;
    log.append(entry("unpaid", Billing::Final, 0))
        .await
        .unwrap();
    log.append(entry("paid", Billing::AwaitingPayment, 9))
        .await
        .unwrap();
    // Once SQLite holds both (a read through the log waits for that).
    assert_eq!(log.count().await.unwrap(), 2);
    let c = rusqlite::Connection::open(&path).unwrap();
    let plan = |sql: &str| -> String {
        let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        stmt.query_map([1i64], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect::<Vec<_>>()
            .join("; ")
    };
    let p = plan("SELECT receipt FROM receipts WHERE batch = ?1 ORDER BY id");
    assert!(p.contains("receipts_in_batch"), "{p}");
    // The sweep reads only rows that still have payloads, never what it swept before.
    for settles in [false, true] {
        let sweep: String = c
            .prepare(&format!("EXPLAIN QUERY PLAN {}", sweep_sql(settles)))
            .unwrap()
            .query_map([1i64, 256], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect::<Vec<_>>()
            .join("; ");
        assert!(sweep.contains("receipts_kept"), "{sweep}");
    }
    let p = plan("SELECT receipt FROM receipts WHERE payment_ref = ?1 AND billing != 'void'");
    assert!(p.contains("receipts_paid_by"), "{p}");
    let in_index = |index: &str| -> i64 {
        c.query_row(
            &format!(
                "SELECT COUNT(*) FROM receipts INDEXED BY {index} WHERE {}",
                if index == "receipts_in_batch" {
                    "batch IS NOT NULL"
                } else {
                    "payment_ref IS NOT NULL"
                }
            ),
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(in_index("receipts_paid_by"), 1, "only the paid receipt");
    assert_eq!(in_index("receipts_in_batch"), 0, "nothing is batched yet");
    let (r, _) = log.by_payment(B256::repeat_byte(9)).await.unwrap().unwrap();
    assert_eq!(r, ReceiptJson::from(&own_receipt("paid")));
    assert!(
        log.by_payment(B256::ZERO).await.unwrap().is_none(),
        "no payment is no reference"
    );
}

/// Appends from many tasks at once, each committing the queue when it finds the connection free:
/// none is left in the queue when the one holding the connection lets go (a stranded entry would
/// never answer), and each lands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_append_is_left_behind_when_many_race_for_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    appends_race(&dir, None, 16, 150, false).await;
}

/// The index thread gathers entries into larger commits; a read still sees everything
/// answered before it, and nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gathering_index_still_shows_each_read_what_was_answered_before_it() {
    let dir = tempfile::tempdir().unwrap();
    appends_race(&dir, Some(true), 8, 50, true).await;
}

/// The same with the node never busy: the quiet index thread (lowest CPU priority) commits,
/// and a read waiting has the main one commit for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quiet_index_still_shows_each_read_what_was_answered_before_it() {
    let dir = tempfile::tempdir().unwrap();
    appends_race(&dir, Some(false), 8, 50, true).await;
}

/// `tasks` tasks each append `each` entries to a log (at `Normal` durability, gathering its
/// index commits with the node's load `busy` when given), each entry read back after its
/// append when `read_back`; every append answers within a minute and each lands exactly once.
async fn appends_race(
    dir: &tempfile::TempDir,
    busy: Option<bool>,
    tasks: usize,
    each: usize,
    read_back: bool,
) {
    let log = log_with(
        &dir.path().join("r.sqlite"),
        Duration::from_secs(3600),
        Durability::Normal,
    )
    .await;
    if let Some(busy) = busy {
        log.gather(move || busy).unwrap();
    }
    let running: Vec<_> = (0..tasks)
        .map(|t| {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..each {
                    let id = format!("{t}-{i}");
                    log.append(entry(&id, Billing::Final, 0)).await.unwrap();
                    if read_back {
                        assert!(log.get(&id).await.unwrap().is_some(), "{id} not read back");
                    }
                }
            })
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(running))
        .await
        .expect("every append answered")
        .into_iter()
        .for_each(|r| r.unwrap());
    assert_eq!(log.count().await.unwrap(), (tasks * each) as i64);
}

/// The sweep drops payloads past the retention window, a chunk at a time through the write
/// connection, while appends go on (each answered, nothing of theirs dropped); receipts stay.
#[tokio::test(flavor = "multi_thread")]
async fn old_payloads_are_swept_while_appends_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_with(
        &dir.path().join("r.sqlite"),
        Duration::from_secs(1),
        Durability::Normal,
    )
    .await;
    // Old rows (created at second 1): more than one chunk of them.
    for i in 0..(2 * SWEEP_CHUNK + 10) {
        log.append(entry(&format!("old-{i}"), Billing::Final, 0))
            .await
            .unwrap();
    }
    let fresh = |i: i64| {
        let mut e = entry(&format!("new-{i}"), Billing::Final, 0);
        e.created_at = crate::now_secs() as i64 + 3600;
        e
    };
    let mut i = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while log.payload("old-0", true).await.unwrap().is_some()
        || log
            .payload(&format!("old-{}", 2 * SWEEP_CHUNK + 9), true)
            .await
            .unwrap()
            .is_some()
    {
        assert!(std::time::Instant::now() < deadline, "the sweep never ran");
        log.append(fresh(i)).await.unwrap();
        i += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for n in 0..i {
        assert_eq!(
            log.payload(&format!("new-{n}"), true).await.unwrap(),
            Some(vec![2])
        );
    }
    assert!(log.get("old-0").await.unwrap().is_some(), "receipts stay");
    assert_eq!(log.count().await.unwrap(), 2 * SWEEP_CHUNK + 10 + i);
}

/// A write other than an append (a batch seal, say) returns while appends keep coming: after
/// its own write it commits a group or two of theirs at most, then hands the queue on. On a log
/// whose appends do not wait for the disk, it commits with synchronous=FULL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn other_writes_get_their_turn_and_wait_for_the_disk() {
    for durability in [Durability::Full, Durability::Normal] {
        other_writes_under_appends(durability).await;
    }
}

async fn other_writes_under_appends(durability: Durability) {
    let dir = tempfile::tempdir().unwrap();
    let log = log_with(
        &dir.path().join("r.sqlite"),
        Duration::from_secs(3600),
        durability,
    )
    .await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Appends arrive whether or not earlier ones were answered (clients do not take turns).
    let appenders: Vec<_> = (0..4)
        .map(|t| {
            let (log, stop) = (log.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0;
                let mut sent = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let log = log.clone();
                    let e = entry(&format!("{t}-{i}"), Billing::Final, 0);
                    sent.push(tokio::spawn(async move { log.append(e).await.unwrap() }));
                    i += 1;
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                for s in sent {
                    s.await.unwrap();
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..5 {
        let sync: i64 = tokio::time::timeout(
            Duration::from_secs(10),
            log.write(|c| c.query_row("PRAGMA synchronous", [], |r| r.get(0))),
        )
        .await
        .expect("a write gets its turn under a stream of appends")
        .unwrap();
        assert_eq!(sync, 2, "FULL");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for a in appenders {
        a.await.unwrap();
    }
    let sync = appends_synchronous(&log).await;
    let expected = if durability == Durability::Full { 2 } else { 1 };
    assert_eq!(sync, expected, "appends keep the log's own durability");
}

/// A write that panics midway leaves the connection as durable as the log says (appends do not
/// go on fsyncing every group) and the appends queued meanwhile committed.
#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_write_leaves_the_durability_and_the_queue_as_they_were() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_with(
        &dir.path().join("r.sqlite"),
        Duration::from_secs(3600),
        Durability::Normal,
    )
    .await;
    let writer = log.writer.clone();
    let panicked = tokio::task::spawn_blocking(move || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            writer.with_conn(Durability::Full, |_| -> rusqlite::Result<()> {
                panic!("a bug in a write")
            })
        }))
        .is_err()
    })
    .await
    .unwrap();
    assert!(panicked);
    log.append(entry("after", Billing::Final, 0)).await.unwrap();
    let sync = appends_synchronous(&log).await;
    assert_eq!(sync, 1, "NORMAL again");
}

/// Entries a process wrote to the journal and answered, which SQLite had not taken when it
/// stopped, are indexed when the log opens again; a record torn by the stop (never answered)
/// is skipped, the segments read are removed and numbering goes on after the last entry.
#[tokio::test(flavor = "multi_thread")]
async fn the_journal_is_indexed_when_the_log_opens_and_a_torn_tail_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sqlite");
    let journal_dir = path.with_extension("journal");
    // What the log held before it stopped: "kept" in SQLite.
    let log = plain_log(&path).await;
    log.append(entry("kept", Billing::Final, 0)).await.unwrap();
    assert_eq!(log.count().await.unwrap(), 1);
    drop(log);
    // Then a process that wrote three entries and stopped before indexing them, the third
    // record cut short.
    let mut j = journal::Journal::create(&journal_dir, 99, Durability::Full).unwrap();
    let (a, mut b, c) = (
        entry("a", Billing::Final, 0),
        entry("b", Billing::AwaitingPayment, 5),
        entry("c", Billing::Final, 0),
    );
    b.payer = Some([4; 20]);
    j.write(&[&a, &b]).unwrap();
    j.write(&[&c]).unwrap();
    drop(j);
    let seg = journal::segment_path(&journal_dir, 99);
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let log = plain_log(&path).await;
    assert_eq!(log.count().await.unwrap(), 3, "kept, a and b");
    assert!(log.get("c").await.unwrap().is_none(), "the torn record");
    assert_eq!(
        log.get("b").await.unwrap().unwrap().receipt,
        ReceiptJson::from(&own_receipt("b"))
    );
    assert_eq!(log.get("b").await.unwrap().unwrap().payer, Some([4; 20]));
    let (_, out) = log.by_payment(B256::repeat_byte(5)).await.unwrap().unwrap();
    assert_eq!(out, vec![2]);
    let segs: Vec<u64> = journal::segments(&journal_dir)
        .unwrap()
        .into_iter()
        .map(|s| s.0)
        .collect();
    assert_eq!(
        segs,
        [100],
        "the segment read is gone; appends go to the next"
    );
    log.append(entry("d", Billing::Final, 0)).await.unwrap();
    assert_eq!(log.writer.appended(), 1, "numbered from 1 in each run");
    drop(log);
    // Opened again: nothing is indexed twice.
    let log = plain_log(&path).await;
    assert_eq!(log.count().await.unwrap(), 4);
}

/// An entry survives the journal byte for byte: every billing, with and without a payer, a
/// receipt in binary form and one kept as JSON text.
#[test]
fn journal_records_read_back_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = journal::Journal::create(dir.path(), 1, Durability::Normal).unwrap();
    let mut entries = Vec::new();
    for (i, billing) in [
        Billing::Final,
        Billing::AwaitingPayment,
        Billing::Void,
        Billing::Local,
    ]
    .into_iter()
    .enumerate()
    {
        let mut e = entry(&format!("e{i}"), billing, i as u8);
        e.payer = (i % 2 == 1).then_some([i as u8; 20]);
        e.input = vec![i as u8; 1000 * i];
        if i == 3 {
            let EntryReceipt::Signed(json, _) = e.receipt else {
                unreachable!()
            };
            e.receipt = EntryReceipt::Signed(json, None);
        }
        entries.push(e);
    }
    j.write(&entries.iter().collect::<Vec<_>>()).unwrap();
    let mut read = Vec::new();
    let r = journal::replay(&journal::segment_path(dir.path(), 1), |e| {
        read.push(e);
        Ok(())
    })
    .unwrap();
    assert_eq!((r.damaged, read.len()), (false, 4));
    for (i, (got, want)) in read.iter().zip(&entries).enumerate() {
        assert_eq!(
            (&got.id, got.created_at, &got.model, &got.input, &got.output),
            (
                &want.id,
                want.created_at,
                &want.model,
                &want.input,
                &want.output
            )
        );
        assert_eq!(
            (
                got.digest,
                &got.price,
                got.billing,
                got.payer,
                got.payment_ref
            ),
            (
                want.digest,
                &want.price,
                want.billing,
                want.payer,
                want.payment_ref
            )
        );
        let EntryReceipt::Kept(kept) = &got.receipt else {
            panic!("read back as kept")
        };
        let EntryReceipt::Signed(json, compact) = &want.receipt else {
            unreachable!()
        };
        match (kept, compact) {
            (StoredReceipt::Compact(k), Some(c)) => assert_eq!(k.as_bytes(), c.as_bytes()),
            (StoredReceipt::Json(k), None) => assert_eq!(k, json),
            _ => panic!("entry {i} kept in the wrong form"),
        }
    }
}

/// While SQLite refuses the entries, appends are still answered (they are in the journal) and
/// reads say the index is behind instead of answering from a stale view; once SQLite takes
/// rows again the index catches up by itself and nothing is lost.
#[tokio::test(flavor = "multi_thread")]
async fn appends_go_on_while_the_index_fails_and_it_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sqlite");
    let log = log_with(&path, Duration::from_secs(3600), Durability::Normal).await;
    let side = rusqlite::Connection::open(&path).unwrap();
    side.execute_batch(
        "CREATE TRIGGER refuse BEFORE INSERT ON receipts
         BEGIN SELECT RAISE(ABORT, 'the disk is full'); END;",
    )
    .unwrap();
    for i in 0..5 {
        log.append(entry(&format!("x{i}"), Billing::Final, 0))
            .await
            .unwrap();
    }
    let err = log.get("x0").await.err().expect("the index is behind");
    assert!(
        err.to_string().contains("behind") && err.to_string().contains("disk is full"),
        "{err}"
    );
    side.execute_batch("DROP TRIGGER refuse").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match log.count().await {
            Ok(n) => {
                assert_eq!(n, 5);
                break;
            }
            Err(_) => assert!(std::time::Instant::now() < deadline, "never caught up"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A record damaged inside a segment (not a torn tail): the entries before it are indexed, the
/// rest is not read, and the segment is set aside, not deleted.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_segment_is_set_aside_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sqlite");
    let journal_dir = path.with_extension("journal");
    let mut j = journal::Journal::create(&journal_dir, 7, Durability::Normal).unwrap();
    let entries: Vec<Entry> = (0..3)
        .map(|i| entry(&format!("e{i}"), Billing::Final, 0))
        .collect();
    for e in &entries {
        j.write(&[e]).unwrap();
    }
    drop(j);
    let seg = journal::segment_path(&journal_dir, 7);
    let mut bytes = std::fs::read(&seg).unwrap();
    let second = bytes.len() / 3 + bytes.len() / 6;
    bytes[second] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    let log = plain_log(&path).await;
    assert!(log.get("e0").await.unwrap().is_some());
    assert!(log.get("e1").await.unwrap().is_none());
    assert!(log.get("e2").await.unwrap().is_none());
    assert!(!seg.exists());
    assert_eq!(
        std::fs::read(journal_dir.join(format!("{:016}.seg.damaged", 7))).unwrap(),
        bytes,
        "kept for an operator"
    );
}

/// One log per journal: a second open of the same log, while the first lives, is refused
/// (two would delete each other's segments) before it changes anything (no migration runs
/// under the first's feet); once the first is dropped it opens.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_log_on_the_same_journal_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sqlite");
    let first = plain_log(&path).await;
    // An index a migration adds, as if the running log were an older version's.
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch("DROP INDEX receipts_paid_by").unwrap();
    let has_index = |raw: &rusqlite::Connection| -> i64 {
        raw.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'receipts_paid_by'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    let err = ReceiptLog::open(
        &path,
        Duration::from_secs(3600),
        Durability::Full,
        false,
        None,
    )
    .await
    .err()
    .expect("refused");
    assert!(err.to_string().contains("another node"), "{err}");
    assert_eq!(has_index(&raw), 0, "the refused open migrated the live log");
    first.append(entry("a", Billing::Final, 0)).await.unwrap();
    drop(first);
    let again = plain_log(&path).await;
    assert_eq!(again.count().await.unwrap(), 1);
    assert_eq!(has_index(&raw), 1);
}

/// When starting the next segment keeps failing, the current one grows only to its cap; then
/// writes are refused with the reason (nothing kept), instead of growing a file the next open
/// must read whole.
#[test]
fn a_segment_that_cannot_rotate_stops_at_its_cap() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = journal::Journal::create(dir.path(), 1, Durability::Normal).unwrap();
    // The next segment's name is taken: every rotation fails.
    std::fs::write(journal::segment_path(dir.path(), 2), b"").unwrap();
    let mut big = entry("big", Billing::Final, 0);
    big.input = vec![7; 8 << 20];
    let mut written = 0u64;
    let err = loop {
        match j.write(&[&big]) {
            Ok(w) => {
                assert!(w.closed.is_none());
                written += 1;
                assert!(written < 100, "never refused");
            }
            Err(e) => break e,
        }
    };
    assert!(err.contains("no new segment"), "{err}");
    let len = std::fs::metadata(journal::segment_path(dir.path(), 1))
        .unwrap()
        .len();
    assert!(
        (4 * journal::SEGMENT_BYTES..5 * journal::SEGMENT_BYTES).contains(&len),
        "{len}"
    );
}

/// A log from before, whose batch roots were unique, opens with its batches as they were (ids,
/// states, chain ids) and takes a root it holds again: an expired batch's receipts sealed
/// again as the same set, which that log refused on every pass.
#[tokio::test(flavor = "multi_thread")]
async fn an_older_log_keeps_its_batches_and_takes_a_root_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sqlite");
    drop(plain_log(&path).await);
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        c.execute_batch(
            "DROP TABLE batches;
             CREATE TABLE batches (
                 local INTEGER PRIMARY KEY AUTOINCREMENT,
                 root BLOB NOT NULL UNIQUE,
                 count INTEGER NOT NULL,
                 fees TEXT NOT NULL,
                 status TEXT NOT NULL,
                 chain_batch INTEGER,
                 tx BLOB,
                 sealed_at INTEGER NOT NULL
             );
             ALTER TABLE batches ADD COLUMN sealed_block INTEGER;
             INSERT INTO batches (root, count, fees, status, chain_batch, sealed_at, sealed_block)
               VALUES (zeroblob(32), 2, '2000', 'expired', 7, 5, 9);",
        )
        .unwrap();
    }
    let log = plain_log(&path).await;
    let writer = log.writer.clone();
    type Row = (i64, String, Option<i64>, Option<i64>);
    let (unique, next, rows) = tokio::task::spawn_blocking(move || {
        writer.with_conn(Durability::Normal, |c| {
            let sql: String = c.query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'batches'",
                [],
                |r| r.get(0),
            )?;
            c.execute(
                "INSERT INTO batches (root, count, fees, status, sealed_at)
                 VALUES (zeroblob(32), 2, '2000', 'sealed', 6)",
                [],
            )?;
            let next = c.last_insert_rowid();
            let rows: Vec<Row> = c
                .prepare(
                    "SELECT local, status, chain_batch, sealed_block FROM batches ORDER BY local",
                )?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<rusqlite::Result<_>>()?;
            Ok((sql.contains("UNIQUE"), next, rows))
        })
    })
    .await
    .unwrap()
    .unwrap();
    assert!(!unique);
    assert_eq!(next, 2, "ids go on from the old ones");
    assert_eq!(
        rows,
        vec![
            (1, "expired".into(), Some(7), Some(9)),
            (2, "sealed".into(), None, None)
        ]
    );
}
