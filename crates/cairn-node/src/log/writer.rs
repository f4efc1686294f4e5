//! The writer thread: group commits of queued entries, and the payload sweep.

use super::*;

/// The writer thread: commits whatever has queued (up to 512 entries) in one transaction, the
/// batch-sealed receipts among them signed under one root first (the group is the micro-batch:
/// nothing waits for it to fill), and drops payloads older than the retention window (receipts
/// stay).
pub(super) fn writer(
    mut conn: Connection,
    rx: mpsc::Receiver<Job>,
    retention: Duration,
    settles: bool,
    sealer: Option<ReceiptSigner>,
) {
    let mut last_sweep = Instant::now();
    let sweep_every = Duration::from_secs(60).min(retention.max(Duration::from_secs(1)));
    loop {
        let first = match rx.recv_timeout(sweep_every) {
            Ok(job) => Some(job),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        if let Some(first) = first {
            let mut batch = vec![first];
            while batch.len() < 512 {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let result = guarded(|| {
                seal(sealer.as_ref(), &mut batch);
                commit(&mut conn, &batch).map_err(|e| e.to_string())
            });
            if let Err(e) = &result {
                tracing::error!(error = %e, "receipt log commit failed");
            }
            for (entry, done) in batch {
                let _ = done.send(result.clone().and_then(|()| match entry.receipt {
                    EntryReceipt::Signed(json, _) => Ok(json),
                    EntryReceipt::ToSign(_) => Err("the receipt was not signed".into()),
                }));
            }
        }
        if last_sweep.elapsed() >= sweep_every {
            last_sweep = Instant::now();
            let cutoff = crate::now_secs() as i64 - retention.as_secs() as i64;
            // A verifier may ask for any payload of an open batch (and of a receipt not yet
            // batched): those stay until their batch is final, however old.
            let sql = if settles {
                "UPDATE receipts SET input = NULL, output = NULL
                 WHERE created_at < ?1 AND input IS NOT NULL AND batch IN
                   (SELECT local FROM batches WHERE status IN ('finalized', 'voided'))"
            } else {
                "UPDATE receipts SET input = NULL, output = NULL WHERE created_at < ?1 AND input IS NOT NULL"
            };
            if let Err(e) = conn.execute(sql, params![cutoff]) {
                tracing::warn!(error = %e, "receipt payload sweep failed");
            }
        }
    }
}

/// Signs the group's batch-sealed receipts under one root; if that fails, their jobs get the
/// error and leave the group.
pub(super) fn seal(sealer: Option<&ReceiptSigner>, batch: &mut Vec<Job>) {
    let to_sign: Vec<Claims> = batch
        .iter()
        .filter_map(|(e, _)| e.receipt.claims().cloned())
        .collect();
    if to_sign.is_empty() {
        return;
    }
    let signed = match sealer {
        Some(s) => s.sign_batch(to_sign).map_err(|e| e.to_string()),
        None => Err("this receipt log signs no batches".into()),
    };
    match signed {
        Ok(receipts) => {
            let mut receipts = receipts.into_iter();
            for (e, _) in batch.iter_mut() {
                if e.receipt.claims().is_some() {
                    let r = receipts.next().expect("one receipt per claim");
                    e.receipt = EntryReceipt::signed(&r);
                }
            }
        }
        Err(reason) => {
            tracing::error!(error = %reason, "signing a receipt batch failed");
            let (fail, keep): (Vec<Job>, Vec<Job>) = std::mem::take(batch)
                .into_iter()
                .partition(|(e, _)| e.receipt.claims().is_some());
            *batch = keep;
            for (_, done) in fail {
                let _ = done.send(Err(reason.clone()));
            }
        }
    }
}

/// Runs one group's signing and commit so that a panic in it (a bug) fails that group's
/// requests with the reason instead of stopping the writer and with it every later append. A
/// transaction open when it panicked is rolled back as it unwinds.
pub(super) fn guarded(group: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(group)).unwrap_or_else(|p| {
        let why = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        Err(format!(
            "the receipt log failed on this group ({why}); none of it was kept, retry"
        ))
    })
}

pub(super) fn commit(conn: &mut Connection, batch: &[Job]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        // A payment is held by one request at a time: an earlier receipt under the same
        // reference is from a run whose payment was given back (the process stopped, or the
        // answer was lost) and must never bill it too.
        let mut stale = tx.prepare_cached(
            "UPDATE receipts SET billing = 'void', input = NULL, output = NULL
             WHERE payment_ref = ?1 AND billing = 'awaiting_payment'",
        )?;
        for (e, _) in batch {
            if e.billing == Billing::AwaitingPayment && e.payment_ref != [0; 32] {
                stale.execute(params![e.payment_ref.as_slice()])?;
            }
        }
        let mut stmt = tx.prepare_cached(
            "INSERT INTO receipts (id, created_at, model, receipt, compact, input, output, digest,
                                   price, billing, payer, payment_ref)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?;
        for (e, _) in batch {
            let EntryReceipt::Signed(json, compact) = &e.receipt else {
                return Err(rusqlite::Error::InvalidParameterName(format!(
                    "receipt {} is not signed",
                    e.id
                )));
            };
            stmt.execute(params![
                e.id,
                e.created_at,
                e.model,
                // The JSON text only for a receipt with no binary form.
                if compact.is_some() { "" } else { json.as_str() },
                compact.as_ref().map(|c| c.as_bytes()),
                e.input,
                e.output,
                e.digest.as_slice(),
                e.price,
                e.billing.as_str(),
                e.payer.as_ref().map(|p| p.as_slice()),
                // No payment, no reference (and no entry in the index of references).
                (e.payment_ref != [0; 32]).then_some(e.payment_ref.as_slice()),
            ])?;
        }
    }
    tx.commit()
}
