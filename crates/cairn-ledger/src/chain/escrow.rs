//! `Escrow`: prepaid channels, deposits, vouchers, redemption and withdrawal.

use super::*;

impl Chain {
    /// Approves and deposits into the (payer, payee, salt) channel.
    pub async fn deposit(
        &self,
        payer: &PrivateKeySigner,
        payee: Address,
        salt: B256,
        amount: U256,
    ) -> Result<TxOutcome, LedgerError> {
        self.approve(payer, self.deployment.escrow, amount).await?;
        self.exec(
            payer,
            self.deployment.escrow,
            Escrow::depositCall {
                payee,
                salt,
                amount,
            },
        )
        .await
    }

    /// The EIP-3009 nonce a payer signs to deposit into channel (payer, payee, salt) with
    /// `entropy`: it binds the channel, so the deposit cannot be redirected.
    pub fn deposit_nonce(payer: Address, payee: Address, salt: B256, entropy: B256) -> B256 {
        alloy_primitives::keccak256(alloy_sol_types::SolValue::abi_encode(&(
            Self::channel_id(payer, payee, salt),
            entropy,
        )))
    }

    /// Deposits into the (payer, payee, salt) channel with the payer's EIP-3009
    /// `ReceiveWithAuthorization` to the escrow, whose nonce is [`Chain::deposit_nonce`] of
    /// `entropy`: anyone may send it, the payer pays no gas.
    #[allow(clippy::too_many_arguments)]
    pub async fn deposit_with_authorization(
        &self,
        sender: &PrivateKeySigner,
        payer: Address,
        payee: Address,
        salt: B256,
        amount: U256,
        valid_before: U256,
        entropy: B256,
        signature: &Signature,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            sender,
            self.deployment.escrow,
            Escrow::depositWithAuthorizationCall {
                payer,
                payee,
                salt,
                amount,
                validAfter: U256::ZERO,
                validBefore: valid_before,
                entropy,
                v: 27 + signature.v() as u8,
                r: signature.r().into(),
                s: signature.s().into(),
            },
        )
        .await
    }

    /// Signs a cumulative voucher as `payer` (no transaction), with a fresh random nonce.
    pub fn sign_voucher(
        &self,
        payer: &PrivateKeySigner,
        payee: Address,
        salt: B256,
        cumulative: U256,
    ) -> Result<(Voucher, Signature), LedgerError> {
        let voucher = Voucher {
            payer: payer.address(),
            payee,
            salt,
            cumulativeAmount: cumulative,
            nonce: B256::random(),
        };
        let sig = sign(payer, voucher.eip712_signing_hash(&self.escrow_domain()))?;
        Ok((voucher, sig))
    }

    /// Claims `amount` in total on the voucher's channel (at most its ceiling); pays the payee
    /// what it adds. Only the payee, or the node whose vault the payee is, may send it.
    pub async fn redeem(
        &self,
        sender: &PrivateKeySigner,
        voucher: &Voucher,
        amount: U256,
        signature: &Signature,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            sender,
            self.deployment.escrow,
            Escrow::redeemCall {
                payer: voucher.payer,
                payee: voucher.payee,
                salt: voucher.salt,
                cumulativeAmount: voucher.cumulativeAmount,
                nonce: voucher.nonce,
                amount,
                signature: Bytes::from(signature.as_bytes().to_vec()),
            },
        )
        .await
    }

    /// Starts the payer's refund delay for a channel.
    pub async fn request_withdrawal(
        &self,
        payer: &PrivateKeySigner,
        payee: Address,
        salt: B256,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            payer,
            self.deployment.escrow,
            Escrow::requestWithdrawalCall { payee, salt },
        )
        .await
    }

    /// Refunds the channel's unredeemed rest to the payer after the delay.
    pub async fn withdraw(
        &self,
        payer: &PrivateKeySigner,
        payee: Address,
        salt: B256,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            payer,
            self.deployment.escrow,
            Escrow::withdrawCall { payee, salt },
        )
        .await
    }

    /// (deposited, claimed) of a channel.
    pub async fn channel(
        &self,
        payer: Address,
        payee: Address,
        salt: B256,
    ) -> Result<(U256, U256), LedgerError> {
        let c = self.channel_state(payer, payee, salt).await?;
        Ok((c.deposited, c.claimed))
    }

    /// A channel's full state (deposited, claimed, refund time; zero when none was asked).
    pub async fn channel_state(
        &self,
        payer: Address,
        payee: Address,
        salt: B256,
    ) -> Result<ChannelState, LedgerError> {
        let c = self
            .view(
                self.deployment.escrow,
                Escrow::getChannelCall { payer, payee, salt },
            )
            .await?;
        Ok(ChannelState {
            deposited: c.deposited,
            claimed: c.claimed,
            withdrawable_at: c.withdrawableAt,
        })
    }

    /// The escrow's id of the (payer, payee, salt) channel.
    pub fn channel_id(payer: Address, payee: Address, salt: B256) -> B256 {
        alloy_primitives::keccak256(alloy_sol_types::SolValue::abi_encode(&(payer, payee, salt)))
    }
}
