//! The embedded chain's transactions as Ethereum sees them.

use std::sync::Arc;

use alloy_eips::eip2718::Encodable2718;
use alloy_primitives::keccak256;

use super::*;
use crate::dev_signer;

fn open(dir: &Path) -> Arc<EmbeddedLedger> {
    let funded = [(dev_signer(0).address(), U256::from(10u128.pow(21)))];
    Arc::new(EmbeddedLedger::open(&dir.join("chain.sqlite"), 31337, &funded).unwrap())
}

#[test]
fn concurrent_sends_from_one_key_each_get_the_next_nonce() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path());
    let signer = dev_signer(0);
    let outcomes: Vec<TxOutcome> = std::thread::scope(|scope| {
        let sends: Vec<_> = (0..16u64)
            .map(|i| {
                let (ledger, signer) = (ledger.clone(), signer.clone());
                scope.spawn(move || {
                    let tx = TxRequest {
                        to: Some(Address::with_last_byte(i as u8 + 0x40)),
                        value: U256::from(i + 1),
                        ..Default::default()
                    };
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    rt.block_on(ledger.send(&signer, tx)).unwrap()
                })
            })
            .collect();
        sends.into_iter().map(|s| s.join().unwrap()).collect()
    });
    let mut blocks = Vec::new();
    for out in outcomes {
        // The hash is the signed envelope's, as any tool computes it.
        let served = ledger.transaction(out.hash).unwrap().unwrap();
        assert_eq!(keccak256(served.inner.inner().encoded_2718()), out.hash);
        assert_eq!(served.inner.signer(), signer.address());
        blocks.push(out.block);
    }
    blocks.sort();
    assert_eq!(blocks, (1..=16).collect::<Vec<_>>());
    assert_eq!(ledger.account(signer.address()).nonce, 16);
    for i in 0..16u64 {
        let to = Address::with_last_byte(i as u8 + 0x40);
        assert_eq!(ledger.account(to).balance, U256::from(i + 1));
    }
}

#[tokio::test]
async fn blocks_chain_by_their_header_hashes_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let hashes = {
        let ledger = open(dir.path());
        for i in 0..3u8 {
            let tx = TxRequest {
                to: Some(Address::with_last_byte(i + 0x40)),
                ..Default::default()
            };
            ledger.send(&dev_signer(0), tx).await.unwrap();
        }
        ledger.mine_empty().unwrap();
        (0..=4)
            .map(|n| ledger.block(BlockRef::Number(n), false).unwrap().unwrap())
            .collect::<Vec<_>>()
    };
    let ledger = open(dir.path());
    for pair in hashes.windows(2) {
        assert_eq!(pair[1].header.parent_hash, pair[0].header.hash);
    }
    for b in &hashes {
        assert_eq!(b.header.inner.hash_slow(), b.header.hash);
        let again = ledger.block(BlockRef::Hash(b.header.hash), false).unwrap();
        assert_eq!(again.unwrap().header.number, b.header.number);
    }
    // The next block builds on the last one stored.
    let out = ledger
        .send(&dev_signer(0), TxRequest::default())
        .await
        .unwrap();
    let next = ledger
        .block(BlockRef::Number(out.block), false)
        .unwrap()
        .unwrap();
    assert_eq!(next.header.parent_hash, hashes[4].header.hash);
}
