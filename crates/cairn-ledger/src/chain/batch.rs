//! The x402 `batch-settlement` scheme's contracts: payment channels a payer funds through a
//! deposit collector (EIP-3009 or Permit2), cumulative vouchers the payer signs per request,
//! claims the receiver side sends in batches, and the sweep of what was claimed to the receiver.

use super::*;
use crate::BatchContracts;
use crate::contracts::X402BatchSettlement;
pub use crate::contracts::batch_settlement::X402BatchSettlement::{
    ChannelConfig, Voucher as ClaimedVoucher, VoucherClaim,
};
use crate::contracts::x402_addresses;
use alloy_sol_types::SolValue;

/// The scheme's EIP-712 messages, in a module of their own: their names (`Voucher`,
/// `PermitWitnessTransferFrom`) are the spec's and clash with Cairn's own.
pub mod typed {
    alloy_sol_types::sol! {
        /// A payer's cumulative ceiling on what a channel's receiver may claim.
        struct Voucher {
            bytes32 channelId;
            uint128 maxClaimableAmount;
        }
        /// One row of a receiver authorizer's claim batch.
        struct ClaimEntry {
            bytes32 channelId;
            uint128 maxClaimableAmount;
            uint128 totalClaimed;
        }
        /// What a receiver authorizer signs to let anyone send its claims.
        struct ClaimBatch {
            ClaimEntry[] claims;
        }
        /// A receiver authorizer's cooperative refund.
        struct Refund {
            bytes32 channelId;
            uint256 nonce;
            uint128 amount;
        }
        /// Permit2's token permission.
        struct TokenPermissions {
            address token;
            uint256 amount;
        }
        /// The Permit2 deposit's witness: the only channel the deposit may fund.
        struct DepositWitness {
            bytes32 channelId;
        }
        /// What a payer signs for a Permit2 deposit (spender: the Permit2 deposit collector).
        struct PermitWitnessTransferFrom {
            TokenPermissions permitted;
            address spender;
            uint256 nonce;
            uint256 deadline;
            DepositWitness witness;
        }
    }
}

/// A channel as the contract holds it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchChannelState {
    /// Deposited, minus what was withdrawn and refunded (claimed funds stay counted).
    #[serde(serialize_with = "decimal")]
    pub balance: U256,
    /// Claimed by the receiver side so far.
    #[serde(serialize_with = "decimal")]
    pub total_claimed: U256,
    /// A pending withdrawal's amount (0: none).
    #[serde(serialize_with = "decimal")]
    pub withdraw_amount: U256,
    /// When the pending withdrawal was asked for (unix seconds; 0: none).
    pub withdraw_requested_at: u64,
    /// The next cooperative refund's nonce.
    #[serde(serialize_with = "decimal")]
    pub refund_nonce: U256,
}

impl BatchChannelState {
    /// What the payer could still get back: the balance not claimed.
    pub fn unclaimed(&self) -> U256 {
        self.balance.saturating_sub(self.total_claimed)
    }
}

/// The scheme's EIP-712 domain on chain `chain_id`: `{name: "x402 Batch Settlement", version:
/// "1", chainId, verifyingContract: the batch-settlement contract}`.
pub fn batch_domain(chain_id: u64) -> Eip712Domain {
    Eip712Domain::new(
        Some("x402 Batch Settlement".into()),
        Some("1".into()),
        Some(U256::from(chain_id)),
        Some(x402_addresses::BATCH_SETTLEMENT),
        None,
    )
}

/// A channel's id on chain `chain_id`: the EIP-712 hash of its config.
pub fn batch_channel_id(chain_id: u64, config: &ChannelConfig) -> B256 {
    config.eip712_signing_hash(&batch_domain(chain_id))
}

/// The digest a payer authorizer signs for a voucher of `max` on `channel_id`.
pub fn batch_voucher_hash(chain_id: u64, channel_id: B256, max: u128) -> B256 {
    typed::Voucher {
        channelId: channel_id,
        maxClaimableAmount: max,
    }
    .eip712_signing_hash(&batch_domain(chain_id))
}

/// The digest a receiver authorizer signs to let anyone send `claims`.
pub fn batch_claims_hash(chain_id: u64, claims: &[VoucherClaim]) -> B256 {
    typed::ClaimBatch {
        claims: claims
            .iter()
            .map(|c| typed::ClaimEntry {
                channelId: batch_channel_id(chain_id, &c.voucher.channel),
                maxClaimableAmount: c.voucher.maxClaimableAmount,
                totalClaimed: c.totalClaimed,
            })
            .collect(),
    }
    .eip712_signing_hash(&batch_domain(chain_id))
}

/// The digest a receiver authorizer signs for a cooperative refund.
pub fn batch_refund_hash(chain_id: u64, channel_id: B256, nonce: U256, amount: u128) -> B256 {
    typed::Refund {
        channelId: channel_id,
        nonce,
        amount,
    }
    .eip712_signing_hash(&batch_domain(chain_id))
}

/// The EIP-3009 nonce of a deposit into `channel_id` with `salt`: `keccak256(abi.encode(channelId,
/// salt))`, so the authorization funds that channel only.
pub fn erc3009_deposit_nonce(channel_id: B256, salt: U256) -> B256 {
    alloy_primitives::keccak256((channel_id, salt).abi_encode())
}

/// The digest a payer signs for a Permit2 deposit of `amount` into `channel_id`.
pub fn permit2_deposit_hash(
    chain_id: u64,
    token: Address,
    amount: U256,
    nonce: U256,
    deadline: U256,
    channel_id: B256,
) -> B256 {
    typed::PermitWitnessTransferFrom {
        permitted: typed::TokenPermissions { token, amount },
        spender: x402_addresses::PERMIT2_DEPOSIT_COLLECTOR,
        nonce,
        deadline,
        witness: typed::DepositWitness {
            channelId: channel_id,
        },
    }
    .eip712_signing_hash(&permit2_domain(chain_id, x402_addresses::PERMIT2))
}

/// `collectorData` for the EIP-3009 collector.
pub fn erc3009_collector_data(
    valid_after: U256,
    valid_before: U256,
    salt: U256,
    signature: &Bytes,
) -> Bytes {
    (valid_after, valid_before, salt, signature.clone())
        .abi_encode_params()
        .into()
}

/// `collectorData` for the Permit2 collector, with the payer's EIP-2612 approval of Permit2 when
/// it sent none.
pub fn permit2_collector_data(
    nonce: U256,
    deadline: U256,
    signature: &Bytes,
    permit: Option<&TokenPermit>,
) -> Bytes {
    let eip2612: Bytes = permit
        .map(|p| {
            (
                p.value,
                p.deadline,
                U256::from(27 + p.signature.v() as u8),
                B256::from(p.signature.r()),
                B256::from(p.signature.s()),
            )
                .abi_encode_params()
                .into()
        })
        .unwrap_or_default();
    (nonce, deadline, signature.clone(), eip2612)
        .abi_encode_params()
        .into()
}

impl Chain {
    /// The batch-settlement contracts on this chain, or why the scheme is unavailable.
    pub fn batch_contracts(&self) -> Result<BatchContracts, LedgerError> {
        self.deployment.batch.ok_or_else(|| {
            LedgerError::Unsupported(
                "this chain has no x402 batch-settlement contracts at the addresses the x402 clients expect"
                    .into(),
            )
        })
    }

    /// A channel's id on this chain.
    pub fn batch_channel_id(&self, config: &ChannelConfig) -> B256 {
        batch_channel_id(self.deployment.chain_id, config)
    }

    /// Signs a voucher of `max` on `channel_id` as the channel's payer authorizer.
    pub fn sign_batch_voucher(
        &self,
        authorizer: &PrivateKeySigner,
        channel_id: B256,
        max: u128,
    ) -> Result<Signature, LedgerError> {
        sign(
            authorizer,
            batch_voucher_hash(self.deployment.chain_id, channel_id, max),
        )
    }

    /// Signs `claims` as their receiver authorizer (for `claimWithSignature`).
    pub fn sign_batch_claims(
        &self,
        authorizer: &PrivateKeySigner,
        claims: &[VoucherClaim],
    ) -> Result<Signature, LedgerError> {
        sign(
            authorizer,
            batch_claims_hash(self.deployment.chain_id, claims),
        )
    }

    /// Signs a cooperative refund as the channel's receiver authorizer.
    pub fn sign_batch_refund(
        &self,
        authorizer: &PrivateKeySigner,
        channel_id: B256,
        nonce: U256,
        amount: u128,
    ) -> Result<Signature, LedgerError> {
        sign(
            authorizer,
            batch_refund_hash(self.deployment.chain_id, channel_id, nonce, amount),
        )
    }

    /// A payer's EIP-3009 deposit of `amount` into the channel of `config` with `salt`, as the
    /// collector's `collectorData` (no transaction).
    pub async fn sign_erc3009_deposit(
        &self,
        payer: &PrivateKeySigner,
        config: &ChannelConfig,
        amount: U256,
        valid_before: U256,
        salt: U256,
    ) -> Result<Bytes, LedgerError> {
        let msg = ReceiveWithAuthorization {
            from: payer.address(),
            to: x402_addresses::ERC3009_DEPOSIT_COLLECTOR,
            value: amount,
            validAfter: U256::ZERO,
            validBefore: valid_before,
            nonce: erc3009_deposit_nonce(self.batch_channel_id(config), salt),
        };
        let sig = sign(payer, msg.eip712_signing_hash(&self.token_domain().await?))?;
        Ok(erc3009_collector_data(
            U256::ZERO,
            valid_before,
            salt,
            &sig.as_bytes().to_vec().into(),
        ))
    }

    /// A payer's Permit2 deposit of `amount` into the channel of `config`, as the collector's
    /// `collectorData` (no transaction).
    pub fn sign_permit2_deposit(
        &self,
        payer: &PrivateKeySigner,
        config: &ChannelConfig,
        amount: U256,
        nonce: U256,
        deadline: U256,
    ) -> Result<Bytes, LedgerError> {
        let hash = permit2_deposit_hash(
            self.deployment.chain_id,
            config.token,
            amount,
            nonce,
            deadline,
            self.batch_channel_id(config),
        );
        let sig = sign(payer, hash)?;
        Ok(permit2_collector_data(
            nonce,
            deadline,
            &sig.as_bytes().to_vec().into(),
            None,
        ))
    }

    /// Deposits `amount` into the channel of `config` through `collector` (anyone may send it).
    pub async fn batch_deposit(
        &self,
        sender: &PrivateKeySigner,
        config: &ChannelConfig,
        amount: u128,
        collector: Address,
        collector_data: Bytes,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            sender,
            self.batch_contracts()?.settlement,
            X402BatchSettlement::depositCall {
                config: config.clone(),
                amount,
                collector,
                collectorData: collector_data,
            },
        )
        .await
    }

    /// Claims `claims`, sent by their receiver or receiver authorizer.
    pub async fn batch_claim(
        &self,
        sender: &PrivateKeySigner,
        claims: Vec<VoucherClaim>,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            sender,
            self.batch_contracts()?.settlement,
            X402BatchSettlement::claimCall {
                voucherClaims: claims,
            },
        )
        .await
    }

    /// Claims `claims` on their receiver authorizer's signature, sent by anyone.
    pub async fn batch_claim_with_signature(
        &self,
        sender: &PrivateKeySigner,
        claims: Vec<VoucherClaim>,
        signature: Bytes,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            sender,
            self.batch_contracts()?.settlement,
            X402BatchSettlement::claimWithSignatureCall {
                voucherClaims: claims,
                authorizerSignature: signature,
            },
        )
        .await
    }

    /// Sweeps what was claimed for `receiver` in `token` to it (anyone may send it).
    pub async fn batch_settle(
        &self,
        sender: &PrivateKeySigner,
        receiver: Address,
        token: Address,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            sender,
            self.batch_contracts()?.settlement,
            X402BatchSettlement::settleCall { receiver, token },
        )
        .await
    }

    /// The payer (or its authorizer) asks for `amount` back after the withdraw delay.
    pub async fn batch_initiate_withdraw(
        &self,
        payer: &PrivateKeySigner,
        config: &ChannelConfig,
        amount: u128,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            payer,
            self.batch_contracts()?.settlement,
            X402BatchSettlement::initiateWithdrawCall {
                config: config.clone(),
                amount,
            },
        )
        .await
    }

    /// The payer (or its authorizer) takes its withdrawal after the delay.
    pub async fn batch_finalize_withdraw(
        &self,
        payer: &PrivateKeySigner,
        config: &ChannelConfig,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            payer,
            self.batch_contracts()?.settlement,
            X402BatchSettlement::finalizeWithdrawCall {
                config: config.clone(),
            },
        )
        .await
    }

    /// The receiver (or its authorizer) refunds up to `amount` of the unclaimed balance.
    pub async fn batch_refund(
        &self,
        receiver: &PrivateKeySigner,
        config: &ChannelConfig,
        amount: u128,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            receiver,
            self.batch_contracts()?.settlement,
            X402BatchSettlement::refundCall {
                config: config.clone(),
                amount,
            },
        )
        .await
    }

    /// A cooperative refund on the receiver authorizer's signature, sent by anyone.
    pub async fn batch_refund_with_signature(
        &self,
        sender: &PrivateKeySigner,
        config: &ChannelConfig,
        amount: u128,
        nonce: U256,
        signature: Bytes,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            sender,
            self.batch_contracts()?.settlement,
            X402BatchSettlement::refundWithSignatureCall {
                config: config.clone(),
                amount,
                nonce,
                receiverAuthorizerSignature: signature,
            },
        )
        .await
    }

    /// Claims `claims` and refunds up to `amount` of `config`'s unclaimed balance to its payer,
    /// in one transaction (`multicall`), sent by the receiver authorizer: what the receiver is
    /// owed is claimed before the payer gets the rest.
    pub async fn batch_claim_and_refund(
        &self,
        receiver_authorizer: &PrivateKeySigner,
        claims: Vec<VoucherClaim>,
        config: &ChannelConfig,
        amount: u128,
    ) -> Result<TxOutcome, LedgerError> {
        let mut data: Vec<Bytes> = Vec::new();
        if !claims.is_empty() {
            data.push(
                X402BatchSettlement::claimCall {
                    voucherClaims: claims,
                }
                .abi_encode()
                .into(),
            );
        }
        data.push(
            X402BatchSettlement::refundCall {
                config: config.clone(),
                amount,
            }
            .abi_encode()
            .into(),
        );
        self.exec(
            receiver_authorizer,
            self.batch_contracts()?.settlement,
            X402BatchSettlement::multicallCall { data },
        )
        .await
    }

    /// A channel's state on chain.
    pub async fn batch_channel(&self, channel_id: B256) -> Result<BatchChannelState, LedgerError> {
        let at = self.batch_contracts()?.settlement;
        let ch = self
            .view(
                at,
                X402BatchSettlement::channelsCall {
                    channelId: channel_id,
                },
            )
            .await?;
        let w = self
            .view(
                at,
                X402BatchSettlement::pendingWithdrawalsCall {
                    channelId: channel_id,
                },
            )
            .await?;
        let refund_nonce = self
            .view(
                at,
                X402BatchSettlement::refundNonceCall {
                    channelId: channel_id,
                },
            )
            .await?;
        Ok(BatchChannelState {
            balance: U256::from(ch.balance),
            total_claimed: U256::from(ch.totalClaimed),
            withdraw_amount: U256::from(w.amount),
            withdraw_requested_at: w.initiatedAt.to::<u64>(),
            refund_nonce,
        })
    }

    /// What was claimed for `receiver` in `token` across its channels, and how much of it was
    /// swept to it: `(claimed, settled)`.
    pub async fn batch_receiver(
        &self,
        receiver: Address,
        token: Address,
    ) -> Result<(U256, U256), LedgerError> {
        let r = self
            .view(
                self.batch_contracts()?.settlement,
                X402BatchSettlement::receiversCall { receiver, token },
            )
            .await?;
        Ok((U256::from(r.totalClaimed), U256::from(r.totalSettled)))
    }
}
