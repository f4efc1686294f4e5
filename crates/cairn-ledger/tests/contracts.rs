//! The contracts' behaviour, run twice: on the embedded revm ledger and on anvil (npm
//! `@foundry-rs/anvil-linux-amd64`, path in `CAIRN_ANVIL`; required when
//! `CAIRN_TEST_REQUIRE_SERVICES` is set).

use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::{Address, B256, Signature, U256, keccak256};
use alloy_signer::SignerSync;
use alloy_signer_local::PrivateKeySigner;
use alloy_sol_types::{SolStruct, sol};
use cairn_core::{BlobId, ExecutionProfile};
use cairn_ledger::anvil::Anvil;
use cairn_ledger::contracts::Settlement;
use cairn_ledger::deploy::{TOKEN_UNIT, deploy};
use cairn_ledger::{
    BatchStatus, Chain, DeployParams, EmbeddedLedger, Ledger, LedgerError, RegistrationRequest,
    Role, RpcLedger, dev_signer,
};
use cairn_receipt::merkle::ReceiptTree;
use cairn_receipt::{Claims, ReceiptDomain, SignedReceipt};

fn units(n: u64) -> U256 {
    U256::from(n * TOKEN_UNIT)
}

/// Accounts of one scenario: governor, treasury, node, three verifiers, an outsider, a payer.
struct Actors {
    gov: PrivateKeySigner,
    treasury: PrivateKeySigner,
    node: PrivateKeySigner,
    verifiers: Vec<PrivateKeySigner>,
    outsider: PrivateKeySigner,
    payer: PrivateKeySigner,
}

fn actors(base: usize) -> Actors {
    Actors {
        gov: dev_signer(base),
        treasury: dev_signer(base + 1),
        node: dev_signer(base + 2),
        verifiers: (3..6).map(|i| dev_signer(base + i)).collect(),
        outsider: dev_signer(base + 6),
        payer: dev_signer(base + 7),
    }
}

fn all(a: &Actors) -> Vec<Address> {
    let mut v = vec![
        a.gov.address(),
        a.treasury.address(),
        a.node.address(),
        a.outsider.address(),
        a.payer.address(),
    ];
    v.extend(a.verifiers.iter().map(|s| s.address()));
    v
}

/// Deploys a fresh set, funds everyone with tokens, registers the node and the verifiers.
async fn setup(ledger: Arc<dyn Ledger>, a: &Actors) -> Chain {
    let params = DeployParams::devnet(a.gov.address(), a.treasury.address());
    let d = deploy(ledger.as_ref(), &a.gov, &params).await.unwrap();
    let chain = Chain::new(ledger, d).unwrap();
    for who in all(a) {
        chain.mint(&a.gov, who, units(10_000)).await.unwrap();
    }
    let dev = |s: &PrivateKeySigner, role, url| RegistrationRequest::dev(s.address(), role, url);
    chain
        .register(
            &a.node,
            &dev(&a.node, Role::Inference, "http://node"),
            units(1_000),
            vec![],
        )
        .await
        .unwrap();
    for v in &a.verifiers {
        chain
            .register(
                v,
                &dev(v, Role::Verifier, "http://verifier"),
                units(100),
                vec![],
            )
            .await
            .unwrap();
    }
    chain
}

fn receipts(chain: &Chain, node: &PrivateKeySigner, n: usize, price: u64) -> Vec<SignedReceipt> {
    let domain = ReceiptDomain {
        chain_id: chain.deployment().chain_id,
        verifying_contract: chain.deployment().settlement,
    };
    let profile = ExecutionProfile {
        engine: "tract".into(),
        engine_version: "0.23.9".into(),
        isa: "generic".into(),
        threads: 1,
    };
    (0..n)
        .map(|i| {
            Claims {
                request_id: keccak256(format!("request {i} {}", node.address())),
                model: BlobId::of(b"model"),
                input_hash: keccak256(format!("in {i}")),
                output_hash: keccak256(format!("out {i}")),
                profile: profile.clone(),
                timestamp: 1_700_000_000 + i as u64,
                price: U256::from(price),
                payment_ref: B256::ZERO,
                llm: None,
            }
            .sign(domain, node)
            .unwrap()
        })
        .collect()
}

/// The settlement form of a tensor receipt (what the node's and the verifiers' challenges send).
fn as_settlement(r: &SignedReceipt) -> Settlement::Receipt {
    let cairn_ledger::Challenged::Tensor(t) = cairn_ledger::Challenged::from(r) else {
        panic!("a tensor receipt")
    };
    t
}

fn reason(e: LedgerError) -> String {
    match e {
        LedgerError::Reverted { reason, .. } => reason,
        other => panic!("expected a revert, got {other}"),
    }
}

fn sign_all(
    chain: &Chain,
    signers: &[PrivateKeySigner],
    batch: &cairn_ledger::BatchInfo,
) -> Vec<(Address, Signature)> {
    signers
        .iter()
        .map(|s| (s.address(), chain.sign_attestation(s, batch).unwrap()))
        .collect()
}

async fn batches_split_fees(ledger: Arc<dyn Ledger>) {
    let a = actors(100);
    let chain = setup(ledger.clone(), &a).await;
    let rs = receipts(&chain, &a.node, 7, 1_000);
    let digests: Vec<B256> = rs.iter().map(|r| r.signing_hash()).collect();
    let tree = ReceiptTree::new(&digests).unwrap();
    let fees = U256::from(7_000u64);

    // Only an active inference node may submit.
    let e = chain
        .submit_batch(&a.outsider, tree.root(), 7, fees)
        .await
        .unwrap_err();
    assert!(reason(e).contains("NotActiveNode"));

    let before_node = chain.token_balance(a.node.address()).await.unwrap();
    let (id, _) = chain
        .submit_batch(&a.node, tree.root(), 7, fees)
        .await
        .unwrap();
    let batch = chain.batch(id).await.unwrap();
    assert_eq!(batch.status, BatchStatus::Submitted);
    assert_eq!(
        (batch.count, batch.fees, batch.root),
        (7, fees, tree.root())
    );

    // Inclusion: every proof verifies on chain; a bad proof or a foreign receipt does not.
    for d in &digests {
        assert!(
            chain
                .verify_inclusion(id, *d, tree.proof(*d).unwrap())
                .await
                .unwrap()
        );
    }
    let mut bad = tree.proof(digests[0]).unwrap();
    bad[0] = keccak256(bad[0]);
    assert!(!chain.verify_inclusion(id, digests[0], bad).await.unwrap());
    assert!(
        !chain
            .verify_inclusion(id, keccak256("foreign"), tree.proof(digests[0]).unwrap())
            .await
            .unwrap()
    );
    // The contract computes the same receipt hash as the node's EIP-712 code.
    let out = ledger
        .call(
            chain.deployment().settlement,
            alloy_sol_types::SolCall::abi_encode(&Settlement::receiptHashCall {
                r: as_settlement(&rs[0]),
            })
            .into(),
        )
        .await
        .unwrap();
    let onchain =
        <Settlement::receiptHashCall as alloy_sol_types::SolCall>::abi_decode_returns(&out)
            .unwrap();
    assert_eq!(onchain, digests[0]);

    // Attestation: a non-verifier, too few signers, a repeated signer are all refused.
    let mut with_outsider = sign_all(&chain, &a.verifiers[..1], &batch);
    with_outsider.push((
        a.outsider.address(),
        chain.sign_attestation(&a.outsider, &batch).unwrap(),
    ));
    let e = chain
        .attest_batch(&a.node, id, with_outsider)
        .await
        .unwrap_err();
    assert!(
        reason(e).contains("NotActiveVerifier"),
        "non-verifier accepted"
    );
    let e = chain
        .attest_batch(&a.node, id, sign_all(&chain, &a.verifiers[..1], &batch))
        .await
        .unwrap_err();
    assert!(reason(e).contains("QuorumNotMet"));
    let mut twice = sign_all(&chain, &a.verifiers[..1], &batch);
    twice.push(twice[0]);
    let e = chain.attest_batch(&a.node, id, twice).await.unwrap_err();
    assert!(reason(e).contains("SignersNotAscending"));
    // A signature over different batch fields recovers to a stranger.
    let mut wrong = batch.clone();
    wrong.fees = U256::from(1u64);
    let forged = sign_all(&chain, &a.verifiers, &wrong);
    let e = chain.attest_batch(&a.node, id, forged).await.unwrap_err();
    assert!(reason(e).contains("NotActiveVerifier"));

    chain
        .attest_batch(&a.node, id, sign_all(&chain, &a.verifiers, &batch))
        .await
        .unwrap();
    let e = chain.finalize(&a.node, id).await.unwrap_err();
    assert!(reason(e).contains("ChallengeWindowOpen"));
    ledger
        .advance_time(chain.challenge_window().await.unwrap() + 1)
        .await
        .unwrap();

    let before_t = chain.token_balance(a.treasury.address()).await.unwrap();
    let before_v: Vec<U256> = futures_balances(&chain, &a.verifiers).await;
    chain.finalize(&a.outsider, id).await.unwrap();
    assert_eq!(
        chain.batch(id).await.unwrap().status,
        BatchStatus::Finalized
    );
    // devnet split: 10% verifiers (3 equal parts), 5% treasury, the rest to the node.
    let per_verifier = U256::from(7_000u64 * 1_000 / 10_000 / 3);
    let dust = U256::from(7_000u64 * 1_000 / 10_000) - per_verifier * U256::from(3u64);
    let to_treasury = U256::from(7_000u64 * 500 / 10_000) + dust;
    let to_node = fees - U256::from(700u64) - U256::from(350u64);
    for (v, before) in a.verifiers.iter().zip(before_v) {
        assert_eq!(
            chain.token_balance(v.address()).await.unwrap(),
            before + per_verifier
        );
    }
    assert_eq!(
        chain.token_balance(a.treasury.address()).await.unwrap(),
        before_t + to_treasury
    );
    assert_eq!(
        chain.token_balance(a.node.address()).await.unwrap(),
        before_node - fees + to_node
    );
    let e = chain.finalize(&a.outsider, id).await.unwrap_err();
    assert!(
        reason(e).contains("WrongStatus"),
        "double finalize accepted"
    );
}

async fn futures_balances(chain: &Chain, who: &[PrivateKeySigner]) -> Vec<U256> {
    let mut out = Vec::new();
    for s in who {
        out.push(chain.token_balance(s.address()).await.unwrap());
    }
    out
}

async fn challenge_slashes(ledger: Arc<dyn Ledger>) {
    let a = actors(200);
    let chain = setup(ledger.clone(), &a).await;
    let rs = receipts(&chain, &a.node, 3, 500);
    let digests: Vec<B256> = rs.iter().map(|r| r.signing_hash()).collect();
    let tree = ReceiptTree::new(&digests).unwrap();
    let fees = U256::from(1_500u64);
    let (id, _) = chain
        .submit_batch(&a.node, tree.root(), 3, fees)
        .await
        .unwrap();
    let batch = chain.batch(id).await.unwrap();
    chain
        .attest_batch(&a.node, id, sign_all(&chain, &a.verifiers[..2], &batch))
        .await
        .unwrap();

    let bad = &rs[1];
    let evidence = keccak256("verifier output hash differs");
    let proof = tree.proof(bad.signing_hash()).unwrap();
    let verdicts = |signers: &[&PrivateKeySigner]| -> Vec<(Address, Signature)> {
        signers
            .iter()
            .map(|s| {
                (
                    s.address(),
                    chain
                        .sign_verdict(s, id, bad.signing_hash(), evidence)
                        .unwrap(),
                )
            })
            .collect()
    };
    // A verdict signed by outsiders (forged quorum) is refused.
    let e = chain
        .challenge(
            &a.payer,
            id,
            as_settlement(bad),
            proof.clone(),
            evidence,
            verdicts(&[&a.outsider, &a.treasury]),
        )
        .await
        .unwrap_err();
    assert!(reason(e).contains("NotActiveVerifier"));
    // A wrong proof is refused.
    let e = chain
        .challenge(
            &a.payer,
            id,
            as_settlement(bad),
            tree.proof(digests[0]).unwrap(),
            evidence,
            verdicts(&[&a.verifiers[0], &a.verifiers[1]]),
        )
        .await
        .unwrap_err();
    assert!(reason(e).contains("InvalidProof"));

    let stake = chain.node(a.node.address()).await.unwrap().stake;
    let before_c = chain.token_balance(a.payer.address()).await.unwrap();
    let before_v0 = chain.token_balance(a.verifiers[0].address()).await.unwrap();
    let before_v2 = chain.token_balance(a.verifiers[2].address()).await.unwrap();
    let before_t = chain.token_balance(a.treasury.address()).await.unwrap();
    chain
        .challenge(
            &a.payer,
            id,
            as_settlement(bad),
            proof,
            evidence,
            verdicts(&[&a.verifiers[0], &a.verifiers[2]]),
        )
        .await
        .unwrap();
    let slashed = stake * U256::from(5_000u64) / U256::from(10_000u64);
    let reward = slashed * U256::from(2_000u64) / U256::from(10_000u64);
    assert_eq!(chain.batch(id).await.unwrap().status, BatchStatus::Voided);
    assert_eq!(
        chain.node(a.node.address()).await.unwrap().stake,
        stake - slashed
    );
    // The reward goes to the verdict's signers, not to whoever sent the transaction.
    let per_signer = reward / U256::from(2u64);
    assert_eq!(
        chain.token_balance(a.payer.address()).await.unwrap(),
        before_c
    );
    assert_eq!(
        chain.token_balance(a.verifiers[0].address()).await.unwrap(),
        before_v0 + per_signer
    );
    assert_eq!(
        chain.token_balance(a.verifiers[2].address()).await.unwrap(),
        before_v2 + per_signer
    );
    assert_eq!(
        chain.token_balance(a.treasury.address()).await.unwrap(),
        before_t + (slashed - per_signer * U256::from(2u64)) + fees
    );
    ledger.advance_time(60).await.unwrap();
    let e = chain.finalize(&a.node, id).await.unwrap_err();
    assert!(reason(e).contains("WrongStatus"), "voided batch finalized");
}

async fn escrow_vouchers(ledger: Arc<dyn Ledger>) {
    let a = actors(300);
    let chain = setup(ledger.clone(), &a).await;
    let salt = keccak256("channel 1");
    let payee = a.node.address();
    chain
        .deposit(&a.payer, payee, salt, U256::from(10_000u64))
        .await
        .unwrap();

    let voucher = |by: &PrivateKeySigner, cumulative: u64| {
        chain
            .sign_voucher(by, payee, salt, U256::from(cumulative))
            .unwrap()
    };
    let redeem = async |by: &PrivateKeySigner,
                        _cumulative: u64,
                        amount: u64,
                        (v, sig): &(cairn_ledger::chain::Voucher, Signature)| {
        chain.redeem(by, v, U256::from(amount), sig).await
    };
    let v100 = voucher(&a.payer, 100);
    let before = chain.token_balance(payee).await.unwrap();
    redeem(&a.node, 100, 100, &v100).await.unwrap();
    assert_eq!(
        chain.token_balance(payee).await.unwrap(),
        before + U256::from(100u64)
    );
    // Replayed and lower claims are refused.
    let e = redeem(&a.node, 100, 100, &v100).await.unwrap_err();
    assert!(reason(e).contains("VoucherNotIncreasing"));
    let e = redeem(&a.node, 50, 50, &voucher(&a.payer, 50))
        .await
        .unwrap_err();
    assert!(reason(e).contains("VoucherNotIncreasing"));
    // A voucher signed by someone else, or a claim above the deposit, is refused.
    let (mut forged, sig) = voucher(&a.outsider, 900);
    forged.payer = a.payer.address();
    let e = redeem(&a.node, 900, 900, &(forged, sig)).await.unwrap_err();
    assert!(reason(e).contains("InvalidVoucherSignature"));
    // The nonce is signed: the same voucher with another nonce is not the payer's.
    let (mut renonced, sig) = voucher(&a.payer, 900);
    renonced.nonce = B256::repeat_byte(7);
    let e = redeem(&a.node, 900, 900, &(renonced, sig))
        .await
        .unwrap_err();
    assert!(reason(e).contains("InvalidVoucherSignature"));
    let e = redeem(&a.node, 10_001, 10_001, &voucher(&a.payer, 10_001))
        .await
        .unwrap_err();
    assert!(reason(e).contains("InsufficientDeposit"));
    // A voucher is a ceiling: a call authorized for 2,000 and charged 600 is claimed at 700 in
    // all. Nobody but the payee may claim (anyone holding the voucher could charge the whole
    // ceiling), and no claim goes above the voucher.
    let ceiling = voucher(&a.payer, 2_000);
    let e = redeem(&a.outsider, 2_000, 2_000, &ceiling)
        .await
        .unwrap_err();
    assert!(reason(e).contains("NotPayee"), "an outsider claimed");
    let e = redeem(&a.node, 2_000, 2_001, &ceiling).await.unwrap_err();
    assert!(reason(e).contains("OverVoucher"));
    redeem(&a.node, 2_000, 700, &ceiling).await.unwrap();
    assert_eq!(
        chain.token_balance(payee).await.unwrap(),
        before + U256::from(700u64)
    );
    // The latest voucher covers many requests in one redemption.
    redeem(&a.node, 2_500, 2_500, &voucher(&a.payer, 2_500))
        .await
        .unwrap();
    assert_eq!(
        chain.token_balance(payee).await.unwrap(),
        before + U256::from(2_500u64)
    );

    // A node's payment vault is claimed for by the node (the vault sends no transactions),
    // and by no other node.
    let vault = chain.vault_of(a.node.address()).await.unwrap();
    chain
        .deposit(&a.payer, vault, salt, U256::from(1_000u64))
        .await
        .unwrap();
    let to_vault = chain
        .sign_voucher(&a.payer, vault, salt, U256::from(400u64))
        .unwrap();
    let claim = async |by: &PrivateKeySigner| {
        chain
            .redeem(by, &to_vault.0, U256::from(300u64), &to_vault.1)
            .await
    };
    let e = claim(&a.verifiers[0]).await.unwrap_err();
    assert!(reason(e).contains("NotPayee"), "another node claimed");
    claim(&a.node).await.unwrap();
    assert_eq!(
        chain.token_balance(vault).await.unwrap(),
        U256::from(300u64)
    );

    // Withdrawal: not before a request, not before the delay, then exactly the unspent rest.
    let e = chain.withdraw(&a.payer, payee, salt).await.unwrap_err();
    assert!(reason(e).contains("WithdrawalNotRequested"));
    chain
        .request_withdrawal(&a.payer, payee, salt)
        .await
        .unwrap();
    let e = chain.withdraw(&a.payer, payee, salt).await.unwrap_err();
    assert!(reason(e).contains("WithdrawalDelayNotOver"));
    ledger.advance_time(3_601).await.unwrap();
    let before_payer = chain.token_balance(a.payer.address()).await.unwrap();
    chain.withdraw(&a.payer, payee, salt).await.unwrap();
    assert_eq!(
        chain.token_balance(a.payer.address()).await.unwrap(),
        before_payer + U256::from(7_500u64)
    );
    assert_eq!(
        chain.channel(a.payer.address(), payee, salt).await.unwrap(),
        (U256::from(2_500u64), U256::from(2_500u64))
    );
}

sol! {
    struct Permit {
        address owner;
        address spender;
        uint256 value;
        uint256 nonce;
        uint256 deadline;
    }
    struct ReceiveWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }
    function permit(address owner, address spender, uint256 value, uint256 deadline, uint8 v, bytes32 r, bytes32 s);
    function allowance(address owner, address spender) returns (uint256);
    function depositWithAuthorization(address payer, address payee, bytes32 salt, uint256 amount, uint256 validAfter, uint256 validBefore, bytes32 entropy, uint8 v, bytes32 r, bytes32 s);
    function setFeeSplit(uint16 verifierBps_, uint16 treasuryBps_);
    function setHeartbeatTimeout(uint64 timeout);
    function withdrawUnbonded();
    function requestUnbond(uint256 amount);
}

async fn send_call<C: alloy_sol_types::SolCall>(
    chain: &Chain,
    signer: &PrivateKeySigner,
    to: Address,
    call: C,
) -> Result<cairn_ledger::TxOutcome, LedgerError> {
    chain
        .ledger()
        .send(
            signer,
            cairn_ledger::TxRequest {
                to: Some(to),
                data: call.abi_encode().into(),
                value: U256::ZERO,
            },
        )
        .await
}

async fn token_governance_and_unbonding(ledger: Arc<dyn Ledger>) {
    let a = actors(400);
    let chain = setup(ledger.clone(), &a).await;
    let d = chain.deployment().clone();

    // EIP-3009: a valid authorization moves tokens; reusing it or an expired one does not.
    let now = ledger.head().await.unwrap().timestamp;
    let auth = |valid_before: u64, nonce: B256| {
        let chain = chain.clone();
        let payer = a.payer.clone();
        let to = a.node.address();
        async move {
            chain
                .transfer_authorization(&payer, to, U256::from(42u64), valid_before, nonce)
                .await
                .unwrap()
        }
    };
    let before = chain.token_balance(a.node.address()).await.unwrap();
    let nonce = keccak256("auth 1");
    send_call(&chain, &a.outsider, d.token, auth(now + 600, nonce).await)
        .await
        .unwrap();
    assert_eq!(
        chain.token_balance(a.node.address()).await.unwrap(),
        before + U256::from(42u64)
    );
    let e = send_call(&chain, &a.outsider, d.token, auth(now + 600, nonce).await)
        .await
        .unwrap_err();
    assert!(reason(e).contains("ERC3009UsedAuthorization"));
    let e = send_call(
        &chain,
        &a.outsider,
        d.token,
        auth(now.saturating_sub(1), keccak256("auth 2")).await,
    )
    .await
    .unwrap_err();
    assert!(reason(e).contains("ERC3009InvalidAuthorizationTime"));

    // EIP-2612: a signed permit sets an allowance without the owner sending a transaction.
    let token_domain = chain.token_domain().await.unwrap();
    let permit = Permit {
        owner: a.payer.address(),
        spender: a.outsider.address(),
        value: U256::from(777u64),
        nonce: U256::ZERO,
        deadline: U256::from(now + 600),
    };
    let sig = a
        .payer
        .sign_hash_sync(&permit.eip712_signing_hash(&token_domain))
        .unwrap();
    let call = permitCall {
        owner: permit.owner,
        spender: permit.spender,
        value: permit.value,
        deadline: permit.deadline,
        v: 27 + sig.v() as u8,
        r: sig.r().into(),
        s: sig.s().into(),
    };
    send_call(&chain, &a.outsider, d.token, call.clone())
        .await
        .unwrap();
    let out = ledger
        .call(
            d.token,
            alloy_sol_types::SolCall::abi_encode(&allowanceCall {
                owner: a.payer.address(),
                spender: a.outsider.address(),
            })
            .into(),
        )
        .await
        .unwrap();
    let allowed = <allowanceCall as alloy_sol_types::SolCall>::abi_decode_returns(&out).unwrap();
    assert_eq!(allowed, U256::from(777u64));
    let e = send_call(&chain, &a.outsider, d.token, call)
        .await
        .unwrap_err();
    assert!(
        reason(e).contains("ERC2612InvalidSigner"),
        "permit replayed"
    );

    // Escrow deposit by EIP-3009 ReceiveWithAuthorization: the payer sends nothing.
    let salt = keccak256("gasless channel");
    let entropy = keccak256("deposit auth");
    // The nonce the payer signs binds the channel: payee and salt.
    let recv = ReceiveWithAuthorization {
        from: a.payer.address(),
        to: d.escrow,
        value: U256::from(5_000u64),
        validAfter: U256::ZERO,
        validBefore: U256::from(now + 600),
        nonce: Chain::deposit_nonce(a.payer.address(), a.node.address(), salt, entropy),
    };
    let sig = a
        .payer
        .sign_hash_sync(&recv.eip712_signing_hash(&token_domain))
        .unwrap();
    let deposit = depositWithAuthorizationCall {
        payer: a.payer.address(),
        payee: a.node.address(),
        salt,
        amount: recv.value,
        validAfter: recv.validAfter,
        validBefore: recv.validBefore,
        entropy,
        v: 27 + sig.v() as u8,
        r: sig.r().into(),
        s: sig.s().into(),
    };
    // Attack: a front-runner submits the payer's authorization into its own channel (another
    // payee, another salt). The signature no longer covers the nonce: refused.
    for (payee, salt) in [
        (a.outsider.address(), salt),
        (a.node.address(), keccak256("mine")),
    ] {
        let mut stolen = deposit.clone();
        stolen.payee = payee;
        stolen.salt = salt;
        let e = send_call(&chain, &a.outsider, d.escrow, stolen)
            .await
            .unwrap_err();
        assert!(
            reason(e).contains("ERC3009InvalidSignature"),
            "a redirected deposit went through"
        );
    }
    send_call(&chain, &a.node, d.escrow, deposit.clone())
        .await
        .unwrap();
    assert_eq!(
        chain
            .channel(a.payer.address(), a.node.address(), salt)
            .await
            .unwrap(),
        (U256::from(5_000u64), U256::ZERO)
    );
    let e = send_call(&chain, &a.node, d.escrow, deposit)
        .await
        .unwrap_err();
    assert!(
        reason(e).contains("ERC3009UsedAuthorization"),
        "deposit replayed"
    );

    // Governance: only the governor changes the fee split.
    let fee_split = async || {
        let read = async |data: Vec<u8>| {
            let out = chain
                .ledger()
                .call(d.settlement, data.into())
                .await
                .unwrap();
            U256::from_be_slice(&out)
        };
        (
            read(alloy_sol_types::SolCall::abi_encode(
                &Settlement::verifierBpsCall {},
            ))
            .await,
            read(alloy_sol_types::SolCall::abi_encode(
                &Settlement::treasuryBpsCall {},
            ))
            .await,
        )
    };
    let split_before = fee_split().await;
    assert_eq!(split_before, (U256::from(1_000u64), U256::from(500u64)));
    let e = send_call(
        &chain,
        &a.outsider,
        d.settlement,
        setFeeSplitCall {
            verifierBps_: 0,
            treasuryBps_: 0,
        },
    )
    .await
    .unwrap_err();
    assert!(reason(e).contains("AccessControlUnauthorizedAccount"));
    let e = send_call(
        &chain,
        &a.gov,
        d.settlement,
        setFeeSplitCall {
            verifierBps_: 9_000,
            treasuryBps_: 2_000,
        },
    )
    .await
    .unwrap_err();
    assert!(reason(e).contains("InvalidBps"));
    assert_eq!(
        fee_split().await,
        split_before,
        "refused calls changed the split"
    );
    send_call(
        &chain,
        &a.gov,
        d.settlement,
        setFeeSplitCall {
            verifierBps_: 2_000,
            treasuryBps_: 1_000,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        fee_split().await,
        (U256::from(2_000u64), U256::from(1_000u64))
    );

    // Liveness: with a heartbeat timeout, a silent node drops out until it beats again.
    send_call(
        &chain,
        &a.gov,
        d.registry,
        setHeartbeatTimeoutCall { timeout: 100 },
    )
    .await
    .unwrap();
    assert_eq!(chain.heartbeat_timeout().await.unwrap(), 100);
    assert!(
        chain
            .is_active(a.node.address(), Role::Inference)
            .await
            .unwrap()
    );
    ledger.advance_time(101).await.unwrap();
    assert!(
        !chain
            .is_active(a.node.address(), Role::Inference)
            .await
            .unwrap()
    );
    chain.heartbeat(&a.node).await.unwrap();
    assert!(
        chain
            .is_active(a.node.address(), Role::Inference)
            .await
            .unwrap()
    );
    send_call(
        &chain,
        &a.gov,
        d.registry,
        setHeartbeatTimeoutCall { timeout: 0 },
    )
    .await
    .unwrap();

    // Unbonding: stake leaves only after the delay.
    let v = &a.verifiers[0];
    send_call(
        &chain,
        v,
        d.registry,
        requestUnbondCall { amount: units(100) },
    )
    .await
    .unwrap();
    assert!(!chain.node(v.address()).await.unwrap().active);
    let e = send_call(&chain, v, d.registry, withdrawUnbondedCall {})
        .await
        .unwrap_err();
    assert!(reason(e).contains("UnbondingNotOver"));
    ledger.advance_time(3_601).await.unwrap();
    let before = chain.token_balance(v.address()).await.unwrap();
    send_call(&chain, v, d.registry, withdrawUnbondedCall {})
        .await
        .unwrap();
    assert_eq!(
        chain.token_balance(v.address()).await.unwrap(),
        before + units(100)
    );
    let active = chain.active_nodes(Role::Verifier).await.unwrap();
    assert_eq!(active.len(), 2);
    assert!(!active.contains(&v.address()));
}

/// Registration needs a verifier quorum's approval of exactly what is registered, before its
/// deadline, on an approved measurement; revoking the measurement retires the node.
async fn registration_quorum(ledger: Arc<dyn Ledger>) {
    let a = actors(450);
    let chain = setup(ledger.clone(), &a).await;
    let gov = &a.gov;
    chain.set_registration_quorum(gov, 2).await.unwrap();
    assert_eq!(chain.registration_quorum().await.unwrap(), 2);
    let tee = keccak256("an approved enclave image");
    chain
        .set_measurement(gov, Role::Inference, tee, true)
        .await
        .unwrap();
    let newcomer = &a.outsider;
    let now = ledger.head().await.unwrap().timestamp;
    let req = RegistrationRequest {
        node: newcomer.address(),
        role: Role::Inference,
        endpoint: "http://newcomer".into(),
        measurement: tee,
        evidence_digest: keccak256("evidence"),
        deadline: now + 600,
    };
    let approve = |signers: &[&PrivateKeySigner], r: &RegistrationRequest| {
        signers
            .iter()
            .map(|s| (s.address(), chain.sign_registration(s, r).unwrap()))
            .collect::<Vec<_>>()
    };
    let stake = units(1_000);
    // One approval is not a quorum.
    let e = chain
        .register(newcomer, &req, stake, approve(&[&a.verifiers[0]], &req))
        .await
        .unwrap_err();
    assert!(reason(e).contains("QuorumNotMet"));
    // Approvals by non-verifiers are refused.
    let e = chain
        .register(
            newcomer,
            &req,
            stake,
            approve(&[&a.payer, &a.treasury], &req),
        )
        .await
        .unwrap_err();
    assert!(reason(e).contains("NotActiveVerifier"), "forged quorum");
    // Approvals of another endpoint do not register this one.
    let other = RegistrationRequest {
        endpoint: "http://elsewhere".into(),
        ..req.clone()
    };
    let e = chain
        .register(
            newcomer,
            &req,
            stake,
            approve(&[&a.verifiers[0], &a.verifiers[1]], &other),
        )
        .await
        .unwrap_err();
    assert!(
        reason(e).contains("NotActiveVerifier"),
        "approval of other values"
    );
    // An unapproved measurement is refused whatever the verifiers say.
    let rogue = RegistrationRequest {
        measurement: keccak256("rogue image"),
        ..req.clone()
    };
    let e = chain
        .register(
            newcomer,
            &rogue,
            stake,
            approve(&[&a.verifiers[0], &a.verifiers[1]], &rogue),
        )
        .await
        .unwrap_err();
    assert!(reason(e).contains("MeasurementNotApproved"));
    // Expired approvals are refused.
    let stale = RegistrationRequest {
        deadline: now.saturating_sub(1),
        ..req.clone()
    };
    let e = chain
        .register(
            newcomer,
            &stale,
            stake,
            approve(&[&a.verifiers[0], &a.verifiers[1]], &stale),
        )
        .await
        .unwrap_err();
    assert!(reason(e).contains("RegistrationExpired"));
    chain
        .register(
            newcomer,
            &req,
            stake,
            approve(&[&a.verifiers[2], &a.verifiers[0]], &req),
        )
        .await
        .unwrap();
    let info = chain.node(newcomer.address()).await.unwrap();
    assert!(info.active);
    assert_eq!(info.measurement, tee);
    assert_eq!(info.evidence_digest, req.evidence_digest);
    // Revoking the measurement retires the node.
    chain
        .set_measurement(gov, Role::Inference, tee, false)
        .await
        .unwrap();
    let info = chain.node(newcomer.address()).await.unwrap();
    assert!(!info.active && !info.measurement_approved);
    let e = chain
        .set_measurement(&a.payer, Role::Inference, tee, true)
        .await
        .unwrap_err();
    assert!(
        reason(e).contains("AccessControl"),
        "only governance approves"
    );
}

/// A batch no quorum attests expires (fees back to the node's vault, stake unlocked); stake
/// backing an open batch stays slashable through an unbonding; moving an endpoint needs the
/// verifiers' approval; profiles are governance's.
async fn open_batches_bind_stake(ledger: Arc<dyn Ledger>) {
    let a = actors(470);
    let chain = setup(ledger.clone(), &a).await;
    let node = a.node.address();
    let rs = receipts(&chain, &a.node, 2, 1_000);
    let digests: Vec<B256> = rs.iter().map(|r| r.signing_hash()).collect();
    let tree = ReceiptTree::new(&digests).unwrap();
    let fees = U256::from(2_000u64);

    // Expiry: not before the timeout; after it, anyone closes the batch and the fees go to the
    // node's vault, from which its next batch pays.
    let (id, _) = chain
        .submit_batch(&a.node, tree.root(), 2, fees)
        .await
        .unwrap();
    assert_eq!(chain.open_batches(node).await.unwrap(), 1);
    // Attack on the node itself: its batch sent twice (a submission thought lost, a retry)
    // would have it pay the verifiers' and treasury's shares of the same receipts twice. A
    // root the node has open is refused, before any fee moves.
    let balance = chain.token_balance(node).await.unwrap();
    let e = chain
        .submit_batch(&a.node, tree.root(), 2, fees)
        .await
        .unwrap_err();
    assert!(reason(e).contains("RootSubmitted"));
    assert_eq!(chain.token_balance(node).await.unwrap(), balance);
    assert_eq!(chain.open_batches(node).await.unwrap(), 1);
    let e = chain.expire(&a.outsider, id).await.unwrap_err();
    assert!(reason(e).contains("NotExpired"));
    let vault = chain.vault_of(node).await.unwrap();
    let v0 = chain.token_balance(vault).await.unwrap();
    ledger
        .advance_time(chain.attestation_timeout().await.unwrap() + 1)
        .await
        .unwrap();
    chain.expire(&a.outsider, id).await.unwrap();
    assert_eq!(chain.batch(id).await.unwrap().status, BatchStatus::Expired);
    assert_eq!(chain.token_balance(vault).await.unwrap(), v0 + fees);
    // Still challengeable for a window, so the stake stays locked until it lapses.
    assert_eq!(chain.open_batches(node).await.unwrap(), 1);
    let batch = chain.batch(id).await.unwrap();
    let e = chain
        .attest_batch(&a.node, id, sign_all(&chain, &a.verifiers, &batch))
        .await
        .unwrap_err();
    assert!(reason(e).contains("WrongStatus"));
    let e = chain.expire(&a.outsider, id).await.unwrap_err();
    assert!(reason(e).contains("WrongStatus"));
    let e = chain.lapse(&a.outsider, id).await.unwrap_err();
    assert!(reason(e).contains("ChallengeWindowOpen"));
    ledger
        .advance_time(chain.challenge_window().await.unwrap() + 1)
        .await
        .unwrap();
    chain.lapse(&a.outsider, id).await.unwrap();
    assert_eq!(chain.batch(id).await.unwrap().status, BatchStatus::Lapsed);
    assert_eq!(chain.open_batches(node).await.unwrap(), 0);

    // Attack: a node front-runs a pending fraud proof by expiring its batch. The proof still
    // lands within the window after expiry: voided and slashed.
    let (id, _) = chain
        .submit_batch(&a.node, tree.root(), 2, fees)
        .await
        .unwrap();
    ledger
        .advance_time(chain.attestation_timeout().await.unwrap() + 1)
        .await
        .unwrap();
    chain.expire(&a.node, id).await.unwrap();
    let staked = chain.node(node).await.unwrap().stake;
    let evidence = keccak256("fraud");
    let verdicts: Vec<(Address, Signature)> = a.verifiers[..2]
        .iter()
        .map(|v| {
            (
                v.address(),
                chain
                    .sign_verdict(v, id, rs[1].signing_hash(), evidence)
                    .unwrap(),
            )
        })
        .collect();
    chain
        .challenge(
            &a.payer,
            id,
            as_settlement(&rs[1]),
            tree.proof(rs[1].signing_hash()).unwrap(),
            evidence,
            verdicts,
        )
        .await
        .unwrap();
    assert_eq!(chain.batch(id).await.unwrap().status, BatchStatus::Voided);
    assert_eq!(
        chain.node(node).await.unwrap().stake,
        staked / U256::from(2u64)
    );
    assert_eq!(chain.open_batches(node).await.unwrap(), 0);

    // Attack: submit a batch, unbond all stake, wait out the delay and leave before the batch
    // is final. The stake stays (withdrawal refused) and a proven fraud still slashes it.
    // (A voided batch's receipts are never paid: its root is refused again.)
    let e = chain
        .submit_batch(&a.node, tree.root(), 2, fees)
        .await
        .unwrap_err();
    assert!(reason(e).contains("RootSubmitted"));
    let tree = ReceiptTree::new(&digests[..1]).unwrap();
    let node_before = chain.token_balance(node).await.unwrap();
    let (id, _) = chain
        .submit_batch(&a.node, tree.root(), 1, fees)
        .await
        .unwrap();
    // The vault paid the fees: the node's own balance did not move.
    assert_eq!(chain.token_balance(node).await.unwrap(), node_before);
    let stake = chain.node(node).await.unwrap().stake;
    send_call(
        &chain,
        &a.node,
        chain.deployment().registry,
        requestUnbondCall { amount: stake },
    )
    .await
    .unwrap();
    ledger.advance_time(3_601).await.unwrap();
    let e = send_call(
        &chain,
        &a.node,
        chain.deployment().registry,
        withdrawUnbondedCall {},
    )
    .await
    .unwrap_err();
    assert!(
        reason(e).contains("StakeLocked"),
        "stake left with a batch open"
    );
    let bad = &rs[0];
    let evidence = keccak256("fraud");
    let verdicts: Vec<(Address, Signature)> = a.verifiers[..2]
        .iter()
        .map(|v| {
            (
                v.address(),
                chain
                    .sign_verdict(v, id, bad.signing_hash(), evidence)
                    .unwrap(),
            )
        })
        .collect();
    chain
        .challenge(
            &a.payer,
            id,
            as_settlement(bad),
            tree.proof(bad.signing_hash()).unwrap(),
            evidence,
            verdicts,
        )
        .await
        .unwrap();
    let after = chain.node(node).await.unwrap();
    let slashed = stake * U256::from(5_000u64) / U256::from(10_000u64);
    assert_eq!(
        (after.stake, after.unbonding),
        (U256::ZERO, stake - slashed)
    );
    // Closed by the challenge: what is left may go now.
    assert_eq!(chain.open_batches(node).await.unwrap(), 0);
    send_call(
        &chain,
        &a.node,
        chain.deployment().registry,
        withdrawUnbondedCall {},
    )
    .await
    .unwrap();

    // Endpoints: a move needs the registration quorum's approval (here 2), or governance.
    chain.set_registration_quorum(&a.gov, 2).await.unwrap();
    let v = &a.verifiers[2];
    let info = chain.node(v.address()).await.unwrap();
    let now = ledger.head().await.unwrap().timestamp;
    let req = RegistrationRequest {
        node: v.address(),
        role: Role::Verifier,
        endpoint: "http://attacker.internal:8080".into(),
        measurement: info.measurement,
        evidence_digest: info.evidence_digest,
        deadline: now + 300,
    };
    let e = chain.set_endpoint(v, &req, vec![]).await.unwrap_err();
    assert!(
        reason(e).contains("QuorumNotMet"),
        "an unapproved move went through"
    );
    let approvals: Vec<(Address, Signature)> = a.verifiers[..2]
        .iter()
        .map(|w| (w.address(), chain.sign_registration(w, &req).unwrap()))
        .collect();
    chain.set_endpoint(v, &req, approvals).await.unwrap();
    assert_eq!(
        chain.node(v.address()).await.unwrap().endpoint,
        req.endpoint
    );
    let e = chain
        .set_endpoint_for(&a.outsider, v.address(), "http://x")
        .await
        .unwrap_err();
    assert!(reason(e).contains("AccessControl"));
    chain
        .set_endpoint_for(&a.gov, v.address(), "http://verifier")
        .await
        .unwrap();
    assert_eq!(
        chain.node(v.address()).await.unwrap().endpoint,
        "http://verifier"
    );

    // Profiles: governance approves; verifiers declare theirs and are counted.
    let p = keccak256("engine=tract;version=x;isa=x86_64;threads=1");
    assert!(!chain.profile_approved(p).await.unwrap());
    let e = chain.set_profile(&a.outsider, p, true).await.unwrap_err();
    assert!(reason(e).contains("AccessControl"));
    chain.set_profile(&a.gov, p, true).await.unwrap();
    assert!(chain.profile_approved(p).await.unwrap());
    assert_eq!(chain.profile_verifiers(p).await.unwrap(), 0);
    chain.declare_profile(&a.verifiers[0], p).await.unwrap();
    chain.declare_profile(&a.verifiers[1], p).await.unwrap();
    assert_eq!(chain.profile_verifiers(p).await.unwrap(), 2);
    // A verifier declares several profiles (a tensor engine's and a language model's): each counts.
    let llm = keccak256("engine=cairn-llm;version=x;isa=any;threads=1");
    chain.declare_profile(&a.verifiers[0], llm).await.unwrap();
    assert_eq!(chain.profile_verifiers(p).await.unwrap(), 2);
    assert_eq!(chain.profile_verifiers(llm).await.unwrap(), 1);
    assert!(
        chain
            .verifies_profile(a.verifiers[0].address(), llm)
            .await
            .unwrap()
    );
    assert!(
        !chain
            .verifies_profile(a.verifiers[1].address(), llm)
            .await
            .unwrap()
    );
    let e = chain.declare_profile(&a.node, p).await.unwrap_err();
    assert!(reason(e).contains("NotAVerifier"));
}

/// A batch holds tensor and language-model receipts side by side; the contract hashes an
/// `LlmReceipt` as the node signs it, and a fraud verdict on one slashes through `challengeLlm`
/// (its leaf cannot be passed off as a tensor receipt's).
async fn llm_receipts_are_challenged(ledger: Arc<dyn Ledger>) {
    let a = actors(480);
    let chain = setup(ledger.clone(), &a).await;
    let mut rs = receipts(&chain, &a.node, 4, 250);
    let domain = rs[0].domain;
    for r in rs.iter_mut().skip(2) {
        let mut c = r.claims.clone();
        c.profile.engine = "cairn-llm".into();
        c.llm = Some(cairn_receipt::LlmUsage {
            prompt_tokens: 40,
            completion_tokens: 7,
            complete: false,
        });
        *r = c.sign(domain, &a.node).unwrap();
    }
    let digests: Vec<B256> = rs.iter().map(|r| r.signing_hash()).collect();
    let tree = ReceiptTree::new(&digests).unwrap();
    let (id, _) = chain
        .submit_batch(&a.node, tree.root(), 4, U256::from(1_000u64))
        .await
        .unwrap();
    let bad = &rs[3];
    let cairn_ledger::Challenged::Llm(onchain_form) = cairn_ledger::Challenged::from(bad) else {
        panic!("an LLM receipt")
    };
    let out = ledger
        .call(
            chain.deployment().settlement,
            alloy_sol_types::SolCall::abi_encode(&Settlement::llmReceiptHashCall {
                r: onchain_form.clone(),
            })
            .into(),
        )
        .await
        .unwrap();
    let onchain =
        <Settlement::llmReceiptHashCall as alloy_sol_types::SolCall>::abi_decode_returns(&out)
            .unwrap();
    assert_eq!(onchain, bad.signing_hash());

    let evidence = keccak256("the tokens differ at position 3");
    let verdicts: Vec<(Address, Signature)> = a.verifiers[..2]
        .iter()
        .map(|s| {
            (
                s.address(),
                chain
                    .sign_verdict(s, id, bad.signing_hash(), evidence)
                    .unwrap(),
            )
        })
        .collect();
    let proof = tree.proof(bad.signing_hash()).unwrap();
    // The same fields read as a tensor receipt hash to another leaf: not in the batch.
    let as_tensor = Settlement::Receipt {
        requestId: onchain_form.requestId,
        model: onchain_form.model,
        inputHash: onchain_form.requestHash,
        outputHash: onchain_form.responseHash,
        profileHash: onchain_form.profileHash,
        node: onchain_form.node,
        timestamp: onchain_form.timestamp,
        price: onchain_form.price,
        paymentRef: onchain_form.paymentRef,
    };
    let e = chain
        .challenge(
            &a.payer,
            id,
            as_tensor,
            proof.clone(),
            evidence,
            verdicts.clone(),
        )
        .await
        .unwrap_err();
    assert!(reason(e).contains("InvalidProof"));
    let stake = chain.node(a.node.address()).await.unwrap().stake;
    chain
        .challenge(&a.payer, id, onchain_form, proof, evidence, verdicts)
        .await
        .unwrap();
    assert_eq!(chain.batch(id).await.unwrap().status, BatchStatus::Voided);
    assert_eq!(
        chain.node(a.node.address()).await.unwrap().stake,
        stake - stake * U256::from(5_000u64) / U256::from(10_000u64)
    );
}

/// The x402 `upto` scheme: Permit2 witness transfers settled through the `upto` proxy, at the
/// addresses the official clients sign for.
async fn upto_permit2(ledger: Arc<dyn Ledger>) {
    use cairn_ledger::UptoAuthorization;
    use cairn_ledger::contracts::x402_addresses;
    let a = actors(10);
    let chain = setup(ledger.clone(), &a).await;
    let upto = chain.upto().unwrap();
    assert_eq!(upto.permit2, x402_addresses::PERMIT2);
    assert_eq!(upto.proxy, x402_addresses::UPTO_PERMIT2_PROXY);
    let head = ledger.head().await.unwrap().timestamp;
    let facilitator = &a.node;
    let vault = a.treasury.address();
    let auth = |nonce: u64, max: u64| UptoAuthorization {
        owner: a.payer.address(),
        token: chain.deployment().token,
        max: U256::from(max),
        nonce: U256::from(nonce),
        deadline: U256::from(head + 3_600),
        to: vault,
        facilitator: facilitator.address(),
        valid_after: U256::ZERO,
    };
    let signed = |au: &UptoAuthorization| -> alloy_primitives::Bytes {
        chain
            .sign_upto(&a.payer, au)
            .unwrap()
            .as_bytes()
            .to_vec()
            .into()
    };
    let balance = |who: Address| {
        let chain = &chain;
        async move { chain.token_balance(who).await.unwrap() }
    };

    // Without an approval of Permit2 nothing moves.
    let first = auth(1, 1_000);
    let e = chain
        .settle_upto(facilitator, &first, U256::from(700u64), signed(&first))
        .await
        .unwrap_err();
    assert!(reason(e).contains("ERC20InsufficientAllowance"));
    chain
        .approve(&a.payer, upto.permit2, U256::MAX)
        .await
        .unwrap();

    // The facilitator settles what the call cost, once.
    let (payer_before, vault_before) = (balance(a.payer.address()).await, balance(vault).await);
    chain
        .settle_upto(facilitator, &first, U256::from(700u64), signed(&first))
        .await
        .unwrap();
    assert_eq!(
        balance(a.payer.address()).await,
        payer_before - U256::from(700u64)
    );
    assert_eq!(balance(vault).await, vault_before + U256::from(700u64));
    assert!(
        chain
            .permit2_nonce_used(a.payer.address(), U256::from(1))
            .await
            .unwrap()
    );
    let e = chain
        .settle_upto(facilitator, &first, U256::from(1u64), signed(&first))
        .await
        .unwrap_err();
    assert!(reason(e).contains("InvalidNonce"), "a replay settled");

    // Over the maximum, zero, by another facilitator, redirected, expired, too early: refused.
    let second = auth(2, 1_000);
    let sig = signed(&second);
    let e = chain
        .settle_upto(facilitator, &second, U256::from(1_001u64), sig.clone())
        .await
        .unwrap_err();
    assert!(reason(e).contains("AmountExceedsPermitted"));
    let e = chain
        .settle_upto(facilitator, &second, U256::ZERO, sig.clone())
        .await
        .unwrap_err();
    assert!(reason(e).contains("InvalidAmount"));
    let e = chain
        .settle_upto(&a.outsider, &second, U256::from(10u64), sig.clone())
        .await
        .unwrap_err();
    assert!(reason(e).contains("UnauthorizedFacilitator"));
    let claimed_by_outsider = UptoAuthorization {
        facilitator: a.outsider.address(),
        ..second.clone()
    };
    let e = chain
        .settle_upto(
            &a.outsider,
            &claimed_by_outsider,
            U256::from(10u64),
            sig.clone(),
        )
        .await
        .unwrap_err();
    assert!(
        reason(e).contains("InvalidSigner"),
        "a facilitator was swapped"
    );
    let redirected = UptoAuthorization {
        to: a.outsider.address(),
        ..second.clone()
    };
    let e = chain
        .settle_upto(facilitator, &redirected, U256::from(10u64), sig.clone())
        .await
        .unwrap_err();
    assert!(
        reason(e).contains("InvalidSigner"),
        "a payment was redirected"
    );
    let raised = UptoAuthorization {
        max: U256::from(5_000u64),
        ..second.clone()
    };
    let e = chain
        .settle_upto(facilitator, &raised, U256::from(2_000u64), sig.clone())
        .await
        .unwrap_err();
    assert!(reason(e).contains("InvalidSigner"), "a maximum was raised");
    let twin = cairn_core::sig::malleate(&chain.sign_upto(&a.payer, &second).unwrap());
    let e = chain
        .settle_upto(
            facilitator,
            &second,
            U256::from(10u64),
            twin.as_bytes().to_vec().into(),
        )
        .await
        .unwrap_err();
    assert!(
        reason(e).contains("InvalidSigner"),
        "a high-s signature settled"
    );
    let late = UptoAuthorization {
        deadline: U256::from(head.saturating_sub(1)),
        ..auth(3, 1_000)
    };
    let e = chain
        .settle_upto(facilitator, &late, U256::from(10u64), signed(&late))
        .await
        .unwrap_err();
    assert!(reason(e).contains("SignatureExpired"));
    let early = UptoAuthorization {
        valid_after: U256::from(head + 600),
        ..auth(4, 1_000)
    };
    let e = chain
        .settle_upto(facilitator, &early, U256::from(10u64), signed(&early))
        .await
        .unwrap_err();
    assert!(reason(e).contains("PaymentTooEarly"));
    // None of that moved a token; the untouched authorization still settles, up to its max.
    assert_eq!(
        balance(a.payer.address()).await,
        payer_before - U256::from(700u64)
    );
    chain
        .settle_upto(facilitator, &second, U256::from(1_000u64), sig)
        .await
        .unwrap();
    assert_eq!(balance(vault).await, vault_before + U256::from(1_700u64));

    // The payer revokes a signed authorization before it is settled.
    let revoked = auth(5, 1_000);
    let sig = signed(&revoked);
    chain
        .invalidate_permit2_nonce(&a.payer, U256::from(5))
        .await
        .unwrap();
    let e = chain
        .settle_upto(facilitator, &revoked, U256::from(10u64), sig)
        .await
        .unwrap_err();
    assert!(reason(e).contains("InvalidNonce"));

    // A payer who never approved Permit2 pays with an EIP-2612 approval inside the settlement;
    // one whose approval was sent first by someone else (front-run) still pays.
    let fresh = &a.verifiers[0];
    let fresh_auth = UptoAuthorization {
        owner: fresh.address(),
        nonce: U256::from(77),
        ..auth(0, 900)
    };
    let sig: alloy_primitives::Bytes = chain
        .sign_upto(fresh, &fresh_auth)
        .unwrap()
        .as_bytes()
        .to_vec()
        .into();
    let permit = chain
        .sign_token_permit(
            fresh,
            upto.permit2,
            U256::from(900u64),
            U256::from(head + 3_600),
        )
        .await
        .unwrap();
    let short = cairn_ledger::TokenPermit {
        value: U256::from(899u64),
        ..permit
    };
    let e = chain
        .settle_upto_with_permit(
            facilitator,
            &short,
            &fresh_auth,
            U256::from(400u64),
            sig.clone(),
        )
        .await
        .unwrap_err();
    assert!(reason(e).contains("Permit2612AmountMismatch"));
    let fresh_before = balance(fresh.address()).await;
    chain
        .settle_upto_with_permit(
            facilitator,
            &permit,
            &fresh_auth,
            U256::from(400u64),
            sig.clone(),
        )
        .await
        .unwrap();
    assert_eq!(
        balance(fresh.address()).await,
        fresh_before - U256::from(400u64)
    );
    assert_eq!(
        chain
            .token_allowance(fresh.address(), upto.permit2)
            .await
            .unwrap(),
        U256::from(500u64)
    );
    let again = UptoAuthorization {
        nonce: U256::from(78),
        ..fresh_auth.clone()
    };
    let sig = signed_by(&chain, fresh, &again);
    // The same (now used) EIP-2612 approval is ignored; the remaining allowance pays.
    chain
        .settle_upto_with_permit(facilitator, &permit, &again, U256::from(500u64), sig)
        .await
        .unwrap();
    assert_eq!(
        balance(fresh.address()).await,
        fresh_before - U256::from(900u64)
    );
}

/// The x402 `batch-settlement` channels: deposits through both collectors, vouchers claimed in
/// batches by the receiver side, the sweep to the receiver, the payer's withdrawal race and
/// cooperative refunds, with every forged, replayed or over-limit step refused.
async fn batch_settlement(ledger: Arc<dyn Ledger>) {
    use alloy_primitives::aliases::U40;
    use alloy_sol_types::SolCall;
    use cairn_ledger::chain::{ChannelConfig, ClaimedVoucher, VoucherClaim};
    use cairn_ledger::contracts::{X402BatchSettlement, x402_addresses};
    let a = actors(20);
    let chain = setup(ledger.clone(), &a).await;
    let batch = chain.batch_contracts().unwrap();
    assert_eq!(batch.settlement, x402_addresses::BATCH_SETTLEMENT);
    let token = chain.deployment().token;
    let receiver = a.treasury.address();
    let authorizer = &a.node;
    let config = |payer: &PrivateKeySigner, salt: u8| ChannelConfig {
        payer: payer.address(),
        payerAuthorizer: payer.address(),
        receiver,
        receiverAuthorizer: authorizer.address(),
        token,
        withdrawDelay: U40::from(900u64),
        salt: B256::repeat_byte(salt),
    };
    let cfg = config(&a.payer, 1);
    let id = chain.batch_channel_id(&cfg);
    // The id the contract computes is the one every client computes off chain.
    let on_chain = ledger
        .call(
            batch.settlement,
            X402BatchSettlement::getChannelIdCall {
                config: cfg.clone(),
            }
            .abi_encode()
            .into(),
        )
        .await
        .unwrap();
    assert_eq!(B256::from_slice(&on_chain), id);
    let head = ledger.head().await.unwrap().timestamp;
    let balance = |who: Address| {
        let chain = &chain;
        async move { chain.token_balance(who).await.unwrap() }
    };
    let payer_start = balance(a.payer.address()).await;

    // An EIP-3009 deposit, sent by the facilitator (anyone); its authorization works once.
    let data = chain
        .sign_erc3009_deposit(
            &a.payer,
            &cfg,
            U256::from(10_000u64),
            U256::from(head + 3_600),
            U256::from(7),
        )
        .await
        .unwrap();
    chain
        .batch_deposit(
            &a.outsider,
            &cfg,
            10_000,
            batch.erc3009_collector,
            data.clone(),
        )
        .await
        .unwrap();
    let e = chain
        .batch_deposit(
            &a.outsider,
            &cfg,
            10_000,
            batch.erc3009_collector,
            data.clone(),
        )
        .await
        .unwrap_err();
    assert!(
        reason(e).contains("ERC3009"),
        "a deposit authorization was replayed"
    );
    // The authorization funds its own channel only, and only through the contract.
    let other = config(&a.payer, 2);
    let e = chain
        .batch_deposit(
            &a.outsider,
            &other,
            10_000,
            batch.erc3009_collector,
            data.clone(),
        )
        .await
        .unwrap_err();
    assert!(
        reason(e).contains("ERC3009"),
        "a deposit went to another channel"
    );
    let direct =
        cairn_ledger::contracts::deposit_collectors::ERC3009DepositCollector::collectCall {
            payer: a.payer.address(),
            token,
            amount: U256::from(10_000u64),
            channelId: id,
            collectorData: data,
        };
    let e = ledger
        .send(
            &a.outsider,
            cairn_ledger::TxRequest {
                to: Some(batch.erc3009_collector),
                data: direct.abi_encode().into(),
                value: U256::ZERO,
            },
        )
        .await
        .unwrap_err();
    assert!(reason(e).contains("OnlyX402BatchSettlement"));
    // A Permit2 deposit tops the channel up (after the payer's one approval of Permit2).
    chain
        .approve(&a.payer, x402_addresses::PERMIT2, U256::MAX)
        .await
        .unwrap();
    let p2 = |nonce: u64, amount: u64, c: &ChannelConfig| {
        chain
            .sign_permit2_deposit(
                &a.payer,
                c,
                U256::from(amount),
                U256::from(nonce),
                U256::from(head + 3_600),
            )
            .unwrap()
    };
    let wrong_channel = p2(1, 5_000, &other);
    let e = chain
        .batch_deposit(
            &a.outsider,
            &cfg,
            5_000,
            batch.permit2_collector,
            wrong_channel,
        )
        .await
        .unwrap_err();
    assert!(
        reason(e).contains("InvalidSigner"),
        "a Permit2 deposit was redirected"
    );
    chain
        .batch_deposit(
            &a.outsider,
            &cfg,
            5_000,
            batch.permit2_collector,
            p2(1, 5_000, &cfg),
        )
        .await
        .unwrap();
    let e = chain
        .batch_deposit(
            &a.outsider,
            &cfg,
            5_000,
            batch.permit2_collector,
            p2(1, 5_000, &cfg),
        )
        .await
        .unwrap_err();
    assert!(
        reason(e).contains("InvalidNonce"),
        "a Permit2 deposit was replayed"
    );
    let st = chain.batch_channel(id).await.unwrap();
    assert_eq!(st.balance, U256::from(15_000u64));
    assert_eq!(
        balance(a.payer.address()).await,
        payer_start - U256::from(15_000u64)
    );
    let bad_config = ChannelConfig {
        withdrawDelay: U40::from(899u64),
        ..cfg.clone()
    };
    let e = chain
        .batch_deposit(
            &a.outsider,
            &bad_config,
            1,
            batch.permit2_collector,
            p2(2, 1, &bad_config),
        )
        .await
        .unwrap_err();
    assert!(reason(e).contains("WithdrawDelayOutOfRange"));

    // Vouchers: the receiver side claims any total up to the latest ceiling and the balance.
    let voucher = |max: u128, total: u128, signer: &PrivateKeySigner| VoucherClaim {
        voucher: ClaimedVoucher {
            channel: cfg.clone(),
            maxClaimableAmount: max,
        },
        signature: chain
            .sign_batch_voucher(signer, id, max)
            .unwrap()
            .as_bytes()
            .to_vec()
            .into(),
        totalClaimed: total,
    };
    let e = chain
        .batch_claim(&a.outsider, vec![voucher(3_000, 3_000, &a.payer)])
        .await
        .unwrap_err();
    assert!(reason(e).contains("NotAuthorizedToClaim"));
    let e = chain
        .batch_claim(authorizer, vec![voucher(3_000, 3_001, &a.payer)])
        .await
        .unwrap_err();
    assert!(reason(e).contains("ClaimExceedsCeiling"));
    let e = chain
        .batch_claim(authorizer, vec![voucher(3_000, 3_000, &a.outsider)])
        .await
        .unwrap_err();
    assert!(
        reason(e).contains("InvalidSignature"),
        "a forged voucher was claimed"
    );
    let mut high_s = voucher(3_000, 3_000, &a.payer);
    let sig = alloy_primitives::Signature::try_from(high_s.signature.as_ref()).unwrap();
    high_s.signature = cairn_core::sig::malleate(&sig).as_bytes().to_vec().into();
    let e = chain
        .batch_claim(authorizer, vec![high_s])
        .await
        .unwrap_err();
    assert!(
        reason(e).contains("ECDSAInvalidSignatureS"),
        "a high-s voucher was claimed"
    );
    let e = chain
        .batch_claim(authorizer, vec![voucher(20_000, 15_001, &a.payer)])
        .await
        .unwrap_err();
    assert!(reason(e).contains("ClaimExceedsBalance"));
    chain
        .batch_claim(authorizer, vec![voucher(3_000, 2_500, &a.payer)])
        .await
        .unwrap();
    // A lower or equal total is skipped, not failed; a signed batch goes in by anyone.
    let rows = vec![
        voucher(3_000, 2_000, &a.payer),
        voucher(5_000, 4_000, &a.payer),
    ];
    let e = chain
        .batch_claim_with_signature(
            &a.outsider,
            rows.clone(),
            chain
                .sign_batch_claims(&a.outsider, &rows)
                .unwrap()
                .as_bytes()
                .to_vec()
                .into(),
        )
        .await
        .unwrap_err();
    assert!(
        reason(e).contains("InvalidSignature"),
        "a claim batch was forged"
    );
    let signed_rows: alloy_primitives::Bytes = chain
        .sign_batch_claims(authorizer, &rows)
        .unwrap()
        .as_bytes()
        .to_vec()
        .into();
    let mut raised = rows.clone();
    raised[1].totalClaimed = 5_000;
    let e = chain
        .batch_claim_with_signature(&a.outsider, raised, signed_rows.clone())
        .await
        .unwrap_err();
    assert!(
        reason(e).contains("InvalidSignature"),
        "a signed claim was raised"
    );
    chain
        .batch_claim_with_signature(&a.outsider, rows, signed_rows)
        .await
        .unwrap();
    assert_eq!(
        chain.batch_channel(id).await.unwrap().total_claimed,
        U256::from(4_000u64)
    );
    // The sweep pays the receiver exactly what was claimed, once; anyone may send it.
    let before = balance(receiver).await;
    chain
        .batch_settle(&a.outsider, receiver, token)
        .await
        .unwrap();
    assert_eq!(balance(receiver).await, before + U256::from(4_000u64));
    chain
        .batch_settle(&a.outsider, receiver, token)
        .await
        .unwrap();
    assert_eq!(balance(receiver).await, before + U256::from(4_000u64));
    assert_eq!(
        chain.batch_receiver(receiver, token).await.unwrap(),
        (U256::from(4_000u64), U256::from(4_000u64))
    );

    // The withdrawal race: the payer asks for everything unclaimed; during the delay the
    // receiver still claims what it is owed, and the payer gets the rest.
    let e = chain
        .batch_initiate_withdraw(&a.outsider, &cfg, 1_000)
        .await
        .unwrap_err();
    assert!(reason(e).contains("InvalidChannel"));
    let e = chain
        .batch_initiate_withdraw(&a.payer, &cfg, 11_001)
        .await
        .unwrap_err();
    assert!(reason(e).contains("WithdrawAmountExceedsAvailable"));
    chain
        .batch_initiate_withdraw(&a.payer, &cfg, 11_000)
        .await
        .unwrap();
    let e = chain
        .batch_finalize_withdraw(&a.payer, &cfg)
        .await
        .unwrap_err();
    assert!(reason(e).contains("WithdrawDelayNotElapsed"));
    chain
        .batch_claim(authorizer, vec![voucher(6_000, 6_000, &a.payer)])
        .await
        .unwrap();
    ledger.advance_time(901).await.unwrap();
    let e = chain
        .batch_finalize_withdraw(&a.outsider, &cfg)
        .await
        .unwrap_err();
    assert!(reason(e).contains("NotAuthorizedToFinalizeWithdraw"));
    let payer_before = balance(a.payer.address()).await;
    chain.batch_finalize_withdraw(&a.payer, &cfg).await.unwrap();
    assert_eq!(
        balance(a.payer.address()).await,
        payer_before + U256::from(9_000u64)
    );
    let st = chain.batch_channel(id).await.unwrap();
    assert_eq!(
        (st.balance, st.total_claimed),
        (U256::from(6_000u64), U256::from(6_000u64))
    );
    let e = chain
        .batch_finalize_withdraw(&a.payer, &cfg)
        .await
        .unwrap_err();
    assert!(reason(e).contains("WithdrawalNotPending"));

    // Cooperative refunds: by the receiver side, or on its signature once (the refund nonce).
    let cfg2 = config(&a.payer, 3);
    let id2 = chain.batch_channel_id(&cfg2);
    chain
        .batch_deposit(
            &a.outsider,
            &cfg2,
            2_000,
            batch.permit2_collector,
            p2(3, 2_000, &cfg2),
        )
        .await
        .unwrap();
    let e = chain
        .batch_refund(&a.outsider, &cfg2, 500)
        .await
        .unwrap_err();
    assert!(reason(e).contains("NotAuthorizedToRefund"));
    let payer_before = balance(a.payer.address()).await;
    chain.batch_refund(authorizer, &cfg2, 500).await.unwrap();
    let nonce = chain.batch_channel(id2).await.unwrap().refund_nonce;
    assert_eq!(nonce, U256::from(1));
    let sig: alloy_primitives::Bytes = chain
        .sign_batch_refund(authorizer, id2, nonce, 5_000)
        .unwrap()
        .as_bytes()
        .to_vec()
        .into();
    let e = chain
        .batch_refund_with_signature(&a.outsider, &cfg2, 5_000, nonce, Default::default())
        .await
        .unwrap_err();
    assert!(reason(e).contains("InvalidSignature"));
    chain
        .batch_refund_with_signature(&a.outsider, &cfg2, 5_000, nonce, sig.clone())
        .await
        .unwrap();
    let e = chain
        .batch_refund_with_signature(&a.outsider, &cfg2, 5_000, nonce, sig)
        .await
        .unwrap_err();
    assert!(
        reason(e).contains("InvalidRefundNonce"),
        "a refund was replayed"
    );
    // Capped at what was unclaimed: 500 + 1,500 back, nothing more.
    assert_eq!(
        balance(a.payer.address()).await,
        payer_before + U256::from(2_000u64)
    );
    assert_eq!(chain.batch_channel(id2).await.unwrap().balance, U256::ZERO);

    // A payer who never approved Permit2 deposits with an EIP-2612 approval in the data.
    let fresh = &a.verifiers[0];
    let cfg3 = config(fresh, 4);
    let permit = chain
        .sign_token_permit(
            fresh,
            x402_addresses::PERMIT2,
            U256::from(700u64),
            U256::from(head + 3_600),
        )
        .await
        .unwrap();
    let sig = cairn_ledger::chain::permit2_deposit_hash(
        chain.deployment().chain_id,
        token,
        U256::from(700u64),
        U256::from(9),
        U256::from(head + 3_600),
        chain.batch_channel_id(&cfg3),
    );
    let sig: alloy_primitives::Bytes = alloy_signer::SignerSync::sign_hash_sync(fresh, &sig)
        .unwrap()
        .as_bytes()
        .to_vec()
        .into();
    let data = cairn_ledger::chain::permit2_collector_data(
        U256::from(9),
        U256::from(head + 3_600),
        &sig,
        Some(&permit),
    );
    let fresh_before = balance(fresh.address()).await;
    chain
        .batch_deposit(&a.outsider, &cfg3, 700, batch.permit2_collector, data)
        .await
        .unwrap();
    assert_eq!(
        balance(fresh.address()).await,
        fresh_before - U256::from(700u64)
    );
}

fn signed_by(
    chain: &Chain,
    who: &PrivateKeySigner,
    auth: &cairn_ledger::UptoAuthorization,
) -> alloy_primitives::Bytes {
    chain
        .sign_upto(who, auth)
        .unwrap()
        .as_bytes()
        .to_vec()
        .into()
}

async fn run_all(ledger: Arc<dyn Ledger>) {
    batch_settlement(ledger.clone()).await;
    upto_permit2(ledger.clone()).await;
    llm_receipts_are_challenged(ledger.clone()).await;
    open_batches_bind_stake(ledger.clone()).await;
    registration_quorum(ledger.clone()).await;
    batches_split_fees(ledger.clone()).await;
    challenge_slashes(ledger.clone()).await;
    escrow_vouchers(ledger.clone()).await;
    token_governance_and_unbonding(ledger).await;
}

fn genesis() -> Vec<(Address, U256)> {
    (0..500)
        .map(|i| (dev_signer(i).address(), U256::from(10u128.pow(22))))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contracts_on_the_embedded_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = EmbeddedLedger::open(&dir.path().join("chain.sqlite"), 31337, &genesis()).unwrap();
    run_all(Arc::new(ledger)).await;
}

/// The same suite through the embedded chain's own JSON-RPC server (`cairn-chain-rpc`) and the RPC
/// ledger: every transaction built, estimated and signed by alloy's wallet, sent raw, mined, and
/// read back as standard receipts and logs; time moved with `evm_increaseTime`/`evm_mine`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contracts_through_the_embedded_chains_json_rpc() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = EmbeddedLedger::open(&dir.path().join("chain.sqlite"), 31337, &genesis()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let config = cairn_chain_rpc::RpcConfig {
        dev_methods: true,
        ..Default::default()
    };
    tokio::spawn(cairn_chain_rpc::serve(listener, Arc::new(ledger), config));
    let rpc = RpcLedger::connect(&url, Duration::from_secs(30))
        .await
        .unwrap();
    run_all(Arc::new(rpc)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contracts_on_anvil() {
    let Some(anvil) = Anvil::for_test("contracts_on_anvil", 31337) else {
        return;
    };
    let ledger = RpcLedger::connect(anvil.url(), Duration::from_secs(30))
        .await
        .unwrap();
    for (who, wei) in genesis() {
        ledger.dev_set_balance(who, wei).await.unwrap();
    }
    run_all(Arc::new(ledger)).await;
}
