//! Gas per settled receipt and per prepaid request, and transactions per second, on the embedded
//! ledger and (when `CAIRN_ANVIL` points at an anvil binary) on anvil side by side.
//!
//! `scripts/bench-settlement.sh` runs it in release mode. Gas does not depend on what a receipt
//! says (the contract only sees the root), so batches are built over distinct random digests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_primitives::{Address, B256, U256, keccak256};
use alloy_sol_types::SolCall;
use cairn_ledger::anvil::Anvil;
use cairn_ledger::deploy::{TOKEN_UNIT, deploy};
use cairn_ledger::{
    Chain, DeployParams, EmbeddedLedger, Ledger, RegistrationRequest, Role, RpcLedger, TxRequest,
    dev_signer,
};
use cairn_receipt::merkle::ReceiptTree;

fn genesis() -> Vec<(Address, U256)> {
    (0..10)
        .map(|i| (dev_signer(i).address(), U256::from(10u128.pow(24))))
        .collect()
}

async fn setup(ledger: Arc<dyn Ledger>) -> Chain {
    let gov = dev_signer(0);
    let d = deploy(
        ledger.as_ref(),
        &gov,
        &DeployParams {
            challenge_window: 0,
            ..DeployParams::devnet(gov.address(), dev_signer(1).address())
        },
    )
    .await
    .unwrap();
    let chain = Chain::new(ledger, d).unwrap();
    let unit = U256::from(TOKEN_UNIT);
    for i in 2..10 {
        chain
            .mint(
                &gov,
                dev_signer(i).address(),
                U256::from(10u64.pow(9)) * unit,
            )
            .await
            .unwrap();
    }
    chain
        .register(
            &dev_signer(2),
            &RegistrationRequest::dev(dev_signer(2).address(), Role::Inference, "bench"),
            U256::from(1_000u64) * unit,
            vec![],
        )
        .await
        .unwrap();
    for i in 3..6 {
        chain
            .register(
                &dev_signer(i),
                &RegistrationRequest::dev(dev_signer(i).address(), Role::Verifier, "bench"),
                U256::from(100u64) * unit,
                vec![],
            )
            .await
            .unwrap();
    }
    chain
}

struct BatchGas {
    approve: u64,
    submit: u64,
    attest: u64,
    finalize: u64,
}

async fn settle_batch(chain: &Chain, n: usize, salt: u64) -> BatchGas {
    let node = dev_signer(2);
    let digests: Vec<B256> = (0..n)
        .map(|i| keccak256(format!("bench receipt {salt} {i}")))
        .collect();
    let tree = ReceiptTree::new(&digests).unwrap();
    let fees = U256::from(1_000u64 * n as u64);
    let approve = chain
        .approve(&node, chain.deployment().settlement, fees)
        .await
        .unwrap()
        .gas_used;
    // submit_batch approves again when fees > 0; measure the submit alone with zero-fee approve
    // already done above by sending the call directly.
    let out = chain
        .ledger()
        .send(
            &node,
            TxRequest {
                to: Some(chain.deployment().settlement),
                data: cairn_ledger::contracts::Settlement::submitBatchCall {
                    root: tree.root(),
                    count: n as u32,
                    fees,
                }
                .abi_encode()
                .into(),
                value: U256::ZERO,
            },
        )
        .await
        .unwrap();
    let submit = out.gas_used;
    let id = chain.batch_count().await.unwrap();
    let batch = chain.batch(id).await.unwrap();
    let sigs = (3..5)
        .map(|i| {
            let v = dev_signer(i);
            (v.address(), chain.sign_attestation(&v, &batch).unwrap())
        })
        .collect();
    let attest = chain.attest_batch(&node, id, sigs).await.unwrap().gas_used;
    let finalize = chain.finalize(&node, id).await.unwrap().gas_used;
    BatchGas {
        approve,
        submit,
        attest,
        finalize,
    }
}

async fn exact_payment_gas(chain: &Chain) -> u64 {
    let call = chain
        .transfer_authorization(
            &dev_signer(6),
            dev_signer(2).address(),
            U256::from(1_000u64),
            u64::MAX,
            keccak256("bench auth"),
        )
        .await
        .unwrap();
    chain
        .ledger()
        .send(
            &dev_signer(7),
            TxRequest {
                to: Some(chain.deployment().token),
                data: call.abi_encode().into(),
                value: U256::ZERO,
            },
        )
        .await
        .unwrap()
        .gas_used
}

/// x402 `upto`: the payer's one-time approval of Permit2, then per request one settlement of a
/// Permit2 witness transfer with a random 256-bit nonce (as the official clients pick them, so
/// each lands in a fresh bitmap word): the first and the mean of the next ten.
async fn upto_payment_gas(chain: &Chain) -> (u64, u64, u64) {
    let payer = dev_signer(7);
    let facilitator = dev_signer(2);
    let upto = chain.upto().unwrap();
    let approve = chain
        .approve(&payer, upto.permit2, U256::MAX)
        .await
        .unwrap()
        .gas_used;
    let head = chain.ledger().head().await.unwrap().timestamp;
    let mut gas = Vec::new();
    for i in 0..11u64 {
        let auth = cairn_ledger::UptoAuthorization {
            owner: payer.address(),
            token: chain.deployment().token,
            max: U256::from(2_000u64),
            nonce: U256::from_be_bytes(keccak256(format!("bench permit {i}")).0),
            deadline: U256::from(head + 3_600),
            to: facilitator.address(),
            facilitator: facilitator.address(),
            valid_after: U256::ZERO,
        };
        let sig = chain.sign_upto(&payer, &auth).unwrap();
        let out = chain
            .settle_upto(
                &facilitator,
                &auth,
                U256::from(1_000u64),
                sig.as_bytes().to_vec().into(),
            )
            .await
            .unwrap();
        gas.push(out.gas_used);
    }
    let steady = gas[1..].iter().sum::<u64>() / (gas.len() as u64 - 1);
    (approve, gas[0], steady)
}

/// Gas of one redemption covering `n` requests of 1,000 units each.
async fn voucher_gas(chain: &Chain, n: u64, salt: u64) -> (u64, u64) {
    let payer = dev_signer(8);
    let payee = dev_signer(2).address();
    let channel = keccak256(format!("bench channel {salt}"));
    let total = U256::from(1_000u64 * n);
    chain
        .approve(&payer, chain.deployment().escrow, total)
        .await
        .unwrap();
    let deposit = chain
        .ledger()
        .send(
            &payer,
            TxRequest {
                to: Some(chain.deployment().escrow),
                data: cairn_ledger::contracts::Escrow::depositCall {
                    payee,
                    salt: channel,
                    amount: total,
                }
                .abi_encode()
                .into(),
                value: U256::ZERO,
            },
        )
        .await
        .unwrap()
        .gas_used;
    // The payer signs one voucher per request; the node keeps only the latest.
    let mut latest = None;
    for i in 1..=n {
        latest = Some(
            chain
                .sign_voucher(&payer, payee, channel, U256::from(1_000u64 * i))
                .unwrap(),
        );
    }
    let (voucher, sig) = latest.unwrap();
    let redeem = chain
        .redeem(&dev_signer(2), &voucher, total, &sig)
        .await
        .unwrap()
        .gas_used;
    (deposit, redeem)
}

/// x402 `batch-settlement`: one channel's EIP-3009 deposit (its lifetime's first transaction),
/// then `n` requests of 1,000 units each paid by vouchers off chain, claimed in one claim and
/// swept to the receiver: (deposit, claim, sweep).
async fn batch_channel_gas(chain: &Chain, n: u64, salt: u8) -> (u64, u64, u64) {
    use cairn_ledger::chain::{ChannelConfig, ClaimedVoucher, VoucherClaim};
    let payer = dev_signer(8);
    let node = dev_signer(2);
    let receiver = dev_signer(3).address();
    let config = ChannelConfig {
        payer: payer.address(),
        payerAuthorizer: payer.address(),
        receiver,
        receiverAuthorizer: node.address(),
        token: chain.deployment().token,
        withdrawDelay: alloy_primitives::aliases::U40::from(900u64),
        salt: B256::repeat_byte(salt),
    };
    let total = 1_000u128 * u128::from(n);
    let head = chain.ledger().head().await.unwrap().timestamp;
    let data = chain
        .sign_erc3009_deposit(
            &payer,
            &config,
            U256::from(total),
            U256::from(head + 3_600),
            U256::from(salt),
        )
        .await
        .unwrap();
    let batch = chain.batch_contracts().unwrap();
    let deposit = chain
        .batch_deposit(&node, &config, total, batch.erc3009_collector, data)
        .await
        .unwrap()
        .gas_used;
    // One voucher per request off chain; the claim needs only the latest.
    let id = chain.batch_channel_id(&config);
    let sig = chain.sign_batch_voucher(&payer, id, total).unwrap();
    let claim = chain
        .batch_claim(
            &node,
            vec![VoucherClaim {
                voucher: ClaimedVoucher {
                    channel: config,
                    maxClaimableAmount: total,
                },
                signature: sig.as_bytes().to_vec().into(),
                totalClaimed: total,
            }],
        )
        .await
        .unwrap()
        .gas_used;
    let sweep = chain
        .batch_settle(&node, receiver, chain.deployment().token)
        .await
        .unwrap()
        .gas_used;
    (deposit, claim, sweep)
}

/// One claim transaction for `k` channels (their deposits made first): its gas per channel.
async fn batch_claims_across(chain: &Chain, k: usize, base: u8) -> f64 {
    use cairn_ledger::chain::{ChannelConfig, ClaimedVoucher, VoucherClaim};
    let payer = dev_signer(8);
    let node = dev_signer(2);
    let batch = chain.batch_contracts().unwrap();
    let head = chain.ledger().head().await.unwrap().timestamp;
    let mut rows = Vec::new();
    for i in 0..k {
        let mut salt = [base; 32];
        salt[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let config = ChannelConfig {
            payer: payer.address(),
            payerAuthorizer: payer.address(),
            receiver: dev_signer(3).address(),
            receiverAuthorizer: node.address(),
            token: chain.deployment().token,
            withdrawDelay: alloy_primitives::aliases::U40::from(900u64),
            salt: B256::from(salt),
        };
        let data = chain
            .sign_erc3009_deposit(
                &payer,
                &config,
                U256::from(5_000u64),
                U256::from(head + 3_600),
                U256::from(i),
            )
            .await
            .unwrap();
        chain
            .batch_deposit(&node, &config, 5_000, batch.erc3009_collector, data)
            .await
            .unwrap();
        let id = chain.batch_channel_id(&config);
        let sig = chain.sign_batch_voucher(&payer, id, 5_000).unwrap();
        rows.push(VoucherClaim {
            voucher: ClaimedVoucher {
                channel: config,
                maxClaimableAmount: 5_000,
            },
            signature: sig.as_bytes().to_vec().into(),
            totalClaimed: 5_000,
        });
    }
    let gas = chain.batch_claim(&node, rows).await.unwrap().gas_used;
    gas as f64 / k as f64
}

async fn tps(chain: &Chain, n: u64) -> f64 {
    let from = dev_signer(9);
    let to = dev_signer(6).address();
    let start = Instant::now();
    for i in 0..n {
        chain.transfer(&from, to, U256::from(i + 1)).await.unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

async fn report(name: &str, ledger: Arc<dyn Ledger>) -> f64 {
    let chain = setup(ledger).await;
    println!("\n## {name}\n");
    println!(
        "| receipts per batch | approve | submitBatch | attestBatch (2 sigs) | finalize | total | gas per receipt |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for (k, n) in [1usize, 100, 1_000, 10_000].into_iter().enumerate() {
        let g = settle_batch(&chain, n, k as u64).await;
        let total = g.approve + g.submit + g.attest + g.finalize;
        println!(
            "| {n} | {} | {} | {} | {} | {total} | {:.1} |",
            g.approve,
            g.submit,
            g.attest,
            g.finalize,
            total as f64 / n as f64
        );
    }
    let exact = exact_payment_gas(&chain).await;
    println!(
        "\nPer-request payment with EIP-3009 (x402 `exact`, one transaction per inference): {exact} gas per request."
    );
    let (approve, first, steady) = upto_payment_gas(&chain).await;
    println!(
        "Per-request payment with x402 `upto` (Permit2 witness transfer settled through the proxy, one transaction per call): {steady} gas per request ({first} for the payer's first; its one-time Permit2 approval: {approve})."
    );
    println!("\n| requests per voucher redemption | deposit | redeem | gas per request (redeem) |");
    println!("|---:|---:|---:|---:|");
    for (k, n) in [1u64, 100, 10_000].into_iter().enumerate() {
        let (deposit, redeem) = voucher_gas(&chain, n, k as u64).await;
        println!(
            "| {n} | {deposit} | {redeem} | {:.2} |",
            redeem as f64 / n as f64
        );
    }
    println!(
        "\n| requests per batch-settlement claim (one channel) | deposit (EIP-3009, once) | claim | sweep | gas per request (claim + sweep) |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for (k, n) in [1u64, 100, 10_000].into_iter().enumerate() {
        let (deposit, claim, sweep) = batch_channel_gas(&chain, n, 0x40 + k as u8).await;
        println!(
            "| {n} | {deposit} | {claim} | {sweep} | {:.2} |",
            (claim + sweep) as f64 / n as f64
        );
    }
    println!("\n| channels per batch-settlement claim transaction | gas per channel claimed |");
    println!("|---:|---:|");
    for (j, k) in [1usize, 10, 100].into_iter().enumerate() {
        let per = batch_claims_across(&chain, k, 0x60 + j as u8).await;
        println!("| {k} | {per:.0} |");
    }
    let t = tps(&chain, 2_000).await;
    println!("\nToken transfers, one per block, sequential: {t:.0} tx/s");
    t
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let embedded =
        EmbeddedLedger::open(&dir.path().join("chain.sqlite"), 31337, &genesis()).unwrap();
    println!("# Settlement gas table (Cancun, solc 0.8.37 optimizer 10000 runs)");
    let t_embedded = report("embedded ledger (revm 43.0.3, SQLite)", Arc::new(embedded)).await;
    if let Some(anvil) = Anvil::from_env(31337).unwrap() {
        let ledger = RpcLedger::connect(anvil.url(), Duration::from_secs(30))
            .await
            .unwrap();
        for (who, wei) in genesis() {
            ledger.dev_set_balance(who, wei).await.unwrap();
        }
        let t_anvil = report(
            "anvil 1.7.1 over JSON-RPC (same bytecode)",
            Arc::new(ledger),
        )
        .await;
        println!(
            "\nEmbedded vs anvil, sequential mined transactions per second: {:.2}x",
            t_embedded / t_anvil
        );
    }
}
