//! The facilitator's `batch-settlement`, for other x402 servers: `/verify` checks a deposit or
//! voucher against the channel on chain (and simulates a deposit), `/settle` submits deposits,
//! claims (signing the claim batch as the receiver authorizer it advertises in `/supported`)
//! and sweeps; the server counts vouchers itself, as the scheme has it.

use alloy_primitives::Bytes;
use cairn_ledger::chain::{ClaimedVoucher, VoucherClaim};

use super::*;
use crate::batch::{self, Checked, ConfigWire, DepositCx, Terms, check_payload};

/// A claim row as the official server sends it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClaimRowWire {
    voucher: ClaimVoucherWire,
    signature: Bytes,
    #[serde(with = "crate::wire::decimal")]
    total_claimed: U256,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClaimVoucherWire {
    channel: ConfigWire,
    #[serde(with = "crate::wire::decimal")]
    max_claimable_amount: U256,
}

/// The settle actions beside a deposit.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum Action {
    #[serde(rename_all = "camelCase")]
    Claim {
        claims: Vec<ClaimRowWire>,
        claim_authorizer_signature: Option<Bytes>,
    },
    Settle {
        receiver: Address,
        token: Address,
    },
}

fn invalid(code: &'static str, msg: impl Into<String>) -> X402Error {
    X402Error::Invalid(Reason::new(code, msg))
}

impl Facilitator {
    /// The `/supported` kind: this facilitator claims for the servers that name it as their
    /// channels' receiver authorizer.
    pub(super) fn batch_kind(&self) -> Option<Value> {
        self.chain.deployment().batch?;
        Some(
            json!({"x402Version": 2, "scheme": batch::SCHEME, "network": self.network(),
            "extra": {"receiverAuthorizer": self.address().to_checksum(None)}}),
        )
    }

    /// The requirements and payload of a `batch-settlement` request on this facilitator's chain
    /// and token, within its policy's payees.
    fn batch_request(
        &self,
        req: &FacilitatorRequest,
    ) -> Result<(Value, PaymentRequirements), X402Error> {
        let bad = |m: String| X402Error::Malformed(m);
        if req.x402_version != 2 {
            return Err(bad("batch-settlement is an x402 version 2 scheme".into()));
        }
        let r: PaymentRequirements = serde_json::from_value(req.payment_requirements.clone())
            .map_err(|e| bad(format!("paymentRequirements: {e}")))?;
        let p: PaymentPayload = serde_json::from_value(req.payment_payload.clone())
            .map_err(|e| bad(format!("paymentPayload: {e}")))?;
        if r.network != self.network() {
            return Err(invalid(
                "invalid_batch_settlement_evm_network_mismatch",
                format!(
                    "this facilitator settles on {}, not {}",
                    self.network(),
                    r.network
                ),
            ));
        }
        if r.asset != self.token() {
            return Err(invalid(
                "invalid_batch_settlement_evm_token_mismatch",
                format!(
                    "this facilitator settles token {}, not {}",
                    self.token(),
                    r.asset
                ),
            ));
        }
        if let Some(policy) = &self.policy
            && !policy.pay_to.contains(&r.pay_to)
        {
            return Err(invalid(
                "invalid_payment_requirements",
                format!("this facilitator does not settle payments to {}", r.pay_to),
            ));
        }
        Ok((p.payload, r))
    }

    fn batch_terms(&self, r: &PaymentRequirements) -> Result<Terms, X402Error> {
        let receiver_authorizer = r
            .extra
            .get("receiverAuthorizer")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<Address>().ok())
            .filter(|a| !a.is_zero())
            .ok_or_else(|| {
                invalid(
                    "invalid_batch_settlement_evm_receiver_authorizer_mismatch",
                    "the requirements name no receiverAuthorizer",
                )
            })?;
        Ok(Terms {
            chain_id: self.chain_id(),
            receiver: r.pay_to,
            receiver_authorizer,
            token: r.asset,
            withdraw_delay: r.extra.get("withdrawDelay").and_then(Value::as_u64),
        })
    }

    /// Checks a deposit or voucher against the channel on chain: the voucher within the balance
    /// (after the deposit) and above what was claimed; a deposit also simulated. Returns the
    /// checked voucher and the channel's state before.
    async fn batch_check(
        &self,
        req: &FacilitatorRequest,
    ) -> Result<(Checked, BatchChannelView, Option<(Address, Bytes)>), X402Error> {
        let (payload, r) = self.batch_request(req)?;
        let c = check_payload(&payload, &self.batch_terms(&r)?)?;
        let contracts = self.chain.batch_contracts()?;
        let st = self.chain.batch_channel(c.id).await?;
        let extensions = req.payment_payload.get("extensions");
        let deposit = match &c.deposit {
            Some(d) => Some(
                DepositCx {
                    chain: &self.chain,
                    contracts,
                    token_domain: self.token_domain(),
                }
                .collector_data(&c, d, extensions, now_secs())
                .await?,
            ),
            None => None,
        };
        let added = c.deposit.as_ref().map_or(U256::ZERO, |d| d.amount);
        if c.deposit.is_none() && st.balance.is_zero() {
            return Err(invalid(
                "invalid_batch_settlement_evm_channel_not_found",
                "the channel has no deposit",
            ));
        }
        if c.max > st.balance + added {
            return Err(invalid(
                "invalid_batch_settlement_evm_cumulative_exceeds_balance",
                format!(
                    "the voucher promises {} but the channel holds {}",
                    c.max,
                    st.balance + added
                ),
            ));
        }
        if c.max <= st.total_claimed {
            return Err(invalid(
                "invalid_batch_settlement_evm_cumulative_below_claimed",
                format!(
                    "the voucher promises {}; {} is claimed already",
                    c.max, st.total_claimed
                ),
            ));
        }
        if let (Some(d), Some((collector, data))) = (&c.deposit, &deposit) {
            // The gas of a deposit is this facilitator's: no dust (its policy's minimum).
            if let Some(p) = &self.policy
                && d.amount < p.min_amount
            {
                return Err(invalid(
                    "invalid_batch_settlement_evm_deposit_below_min_deposit",
                    format!(
                        "this facilitator submits deposits of at least {} token units",
                        p.min_amount
                    ),
                ));
            }
            DepositCx {
                chain: &self.chain,
                contracts,
                token_domain: self.token_domain(),
            }
            .simulate(&c.config.config(), d.amount, *collector, data)
            .await?;
        }
        Ok((c, BatchChannelView(st), deposit))
    }

    /// `POST /verify` for `batch-settlement`.
    pub(super) async fn verify_batch(&self, req: &FacilitatorRequest) -> VerifyResponse {
        match self.batch_check(req).await {
            Ok((c, st, _)) => VerifyResponse {
                is_valid: true,
                invalid_reason: None,
                payer: Some(c.config.payer()),
                extra: Some(st.flat(c.id)),
            },
            Err(e) => {
                let mut v = verify_answer(Err(e), req);
                v.payer = v.payer.or_else(|| batch_payer(req));
                v
            }
        }
    }

    /// `POST /settle` for `batch-settlement`: a deposit, a claim batch, or a sweep.
    pub(super) async fn settle_batch(&self, req: &FacilitatorRequest) -> SettleResponse {
        let network = self.network();
        let fail = |e: X402Error| {
            if !matches!(e, X402Error::Invalid(_) | X402Error::Malformed(_)) {
                tracing::warn!(error = %e, "a batch-settlement settlement failed on our side");
            }
            SettleResponse {
                success: false,
                error_reason: Some(e.code().to_string()),
                transaction: String::new(),
                network: network.clone(),
                payer: batch_payer(req),
                amount: None,
                extra: None,
            }
        };
        let kind = req.payment_payload["payload"]["type"]
            .as_str()
            .unwrap_or_default();
        let out = match kind {
            "deposit" => self.settle_batch_deposit(req).await,
            "claim" | "settle" => self.settle_batch_action(req).await,
            "voucher" => Err(invalid(
                "invalid_batch_settlement_evm_payload_type",
                "a voucher is not settled by itself: the server counts it and claims it later (a claim payload)",
            )),
            _ => Err(invalid(
                "invalid_batch_settlement_evm_unknown_settle_action",
                format!("settle action {kind:?} is not one of deposit, claim, settle"),
            )),
        };
        out.unwrap_or_else(fail)
    }

    async fn settle_batch_deposit(
        &self,
        req: &FacilitatorRequest,
    ) -> Result<SettleResponse, X402Error> {
        let (c, _, deposit) = self.batch_check(req).await?;
        let (Some(d), Some((collector, data))) = (&c.deposit, deposit) else {
            return Err(invalid(
                "invalid_batch_settlement_evm_deposit_payload",
                "no deposit",
            ));
        };
        let tx = self
            .chain
            .batch_deposit(
                &self.signer,
                &c.config.config(),
                d.amount.to::<u128>(),
                collector,
                data,
            )
            .await
            .map_err(|e| match e {
                LedgerError::Reverted { reason, .. } => invalid(
                    "invalid_batch_settlement_evm_deposit_transaction_failed",
                    format!("the deposit was refused by the chain: {reason}"),
                ),
                other => X402Error::Chain(other),
            })?;
        let st = BatchChannelView(self.chain.batch_channel(c.id).await?);
        Ok(SettleResponse {
            success: true,
            error_reason: None,
            transaction: tx.hash.to_string(),
            network: self.network(),
            payer: Some(c.config.payer()),
            amount: Some(d.amount.to_string()),
            extra: Some(json!({ "channelState": st.flat(c.id) })),
        })
    }

    async fn settle_batch_action(
        &self,
        req: &FacilitatorRequest,
    ) -> Result<SettleResponse, X402Error> {
        let (payload, _) = self.batch_request(req)?;
        let action: Action = serde_json::from_value(payload).map_err(|e| {
            invalid(
                "invalid_batch_settlement_evm_claim_payload",
                format!("the settle action: {e}"),
            )
        })?;
        let revert = |code: &'static str| {
            move |e: LedgerError| match e {
                LedgerError::Reverted { reason, .. } => {
                    invalid(code, format!("refused by the chain: {reason}"))
                }
                other => X402Error::Chain(other),
            }
        };
        match action {
            Action::Claim {
                claims,
                claim_authorizer_signature,
            } => {
                if claims.is_empty() || claims.len() > batch::MAX_CLAIMS_PER_TX {
                    return Err(invalid(
                        "invalid_batch_settlement_evm_claim_payload",
                        format!("a claim batch has 1 to {} rows", batch::MAX_CLAIMS_PER_TX),
                    ));
                }
                if let Some(p) = &self.policy
                    && let Some(r) = claims
                        .iter()
                        .find(|r| !p.pay_to.contains(&r.voucher.channel.receiver()))
                {
                    return Err(invalid(
                        "invalid_payment_requirements",
                        format!(
                            "this facilitator does not claim for {}",
                            r.voucher.channel.receiver()
                        ),
                    ));
                }
                let rows: Vec<VoucherClaim> = claims
                    .into_iter()
                    .map(|r| VoucherClaim {
                        voucher: ClaimedVoucher {
                            channel: r.voucher.channel.config(),
                            maxClaimableAmount: r.voucher.max_claimable_amount.saturating_to(),
                        },
                        signature: r.signature,
                        totalClaimed: r.total_claimed.saturating_to(),
                    })
                    .collect();
                let signature = match claim_authorizer_signature {
                    Some(s) => s,
                    None => {
                        // Signed here only for channels that name this facilitator.
                        if rows
                            .iter()
                            .any(|r| r.voucher.channel.receiverAuthorizer != self.address())
                        {
                            return Err(invalid(
                                "invalid_batch_settlement_evm_authorizer_address_mismatch",
                                format!(
                                    "a claim without claimAuthorizerSignature is signed by this facilitator ({}), and only for channels whose receiverAuthorizer it is",
                                    self.address()
                                ),
                            ));
                        }
                        self.chain
                            .sign_batch_claims(&self.signer, &rows)?
                            .as_bytes()
                            .to_vec()
                            .into()
                    }
                };
                // Gas for a batch that raises no channel's total buys nothing.
                let mut raises = false;
                for r in &rows {
                    let id = self.chain.batch_channel_id(&r.voucher.channel);
                    if U256::from(r.totalClaimed)
                        > self.chain.batch_channel(id).await?.total_claimed
                    {
                        raises = true;
                        break;
                    }
                }
                if !raises {
                    return Err(invalid(
                        "invalid_batch_settlement_evm_claim_payload",
                        "no row claims more than its channel's claimed total",
                    ));
                }
                let tx = self
                    .chain
                    .batch_claim_with_signature(&self.signer, rows, signature)
                    .await
                    .map_err(revert(
                        "invalid_batch_settlement_evm_claim_transaction_failed",
                    ))?;
                Ok(SettleResponse {
                    success: true,
                    error_reason: None,
                    transaction: tx.hash.to_string(),
                    network: self.network(),
                    payer: None,
                    amount: None,
                    extra: None,
                })
            }
            Action::Settle { receiver, token } => {
                if let Some(p) = &self.policy
                    && !p.pay_to.contains(&receiver)
                {
                    return Err(invalid(
                        "invalid_payment_requirements",
                        format!("this facilitator does not settle for {receiver}"),
                    ));
                }
                let (claimed, settled) = self.chain.batch_receiver(receiver, token).await?;
                if claimed <= settled {
                    return Err(invalid(
                        "invalid_batch_settlement_evm_nothing_to_settle",
                        format!("nothing claimed for {receiver} is left to sweep"),
                    ));
                }
                let tx = self
                    .chain
                    .batch_settle(&self.signer, receiver, token)
                    .await
                    .map_err(revert(
                        "invalid_batch_settlement_evm_settle_transaction_failed",
                    ))?;
                Ok(SettleResponse {
                    success: true,
                    error_reason: None,
                    transaction: tx.hash.to_string(),
                    network: self.network(),
                    payer: None,
                    amount: Some((claimed - settled).to_string()),
                    extra: None,
                })
            }
        }
    }
}

/// A channel's state as the scheme's responses carry it.
struct BatchChannelView(cairn_ledger::chain::BatchChannelState);

impl BatchChannelView {
    fn flat(&self, id: B256) -> Value {
        json!({
            "channelId": id,
            "balance": self.0.balance.to_string(),
            "totalClaimed": self.0.total_claimed.to_string(),
            "withdrawRequestedAt": self.0.withdraw_requested_at,
            "refundNonce": self.0.refund_nonce.to_string(),
        })
    }
}

/// The payer a `batch-settlement` payload names, for answers that refuse it.
fn batch_payer(req: &FacilitatorRequest) -> Option<Address> {
    req.payment_payload["payload"]["channelConfig"]["payer"]
        .as_str()?
        .parse()
        .ok()
}

pub(super) fn is_batch(req: &FacilitatorRequest) -> bool {
    req.payment_requirements["scheme"] == batch::SCHEME
}
