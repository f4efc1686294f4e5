//! `CairnToken`: balances, minting, transfers and EIP-3009 authorizations; the nodes' vaults.

use super::*;

/// A use of an EIP-3009 authorization on record ([`Chain::authorization_paid`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthorizationUse {
    /// Whether it paid the value to the payee asked about.
    pub paid: bool,
    /// The transaction that used it.
    pub tx: B256,
}

impl Chain {
    /// Payment-token balance of `who`.
    pub async fn token_balance(&self, who: Address) -> Result<U256, LedgerError> {
        self.view(
            self.deployment.token,
            CairnToken::balanceOfCall { account: who },
        )
        .await
    }

    /// Mints devnet tokens (the signer needs the minter role).
    pub async fn mint(
        &self,
        minter: &PrivateKeySigner,
        to: Address,
        amount: U256,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            minter,
            self.deployment.token,
            CairnToken::mintCall { to, amount },
        )
        .await
    }

    /// Plain token transfer.
    pub async fn transfer(
        &self,
        from: &PrivateKeySigner,
        to: Address,
        amount: U256,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            from,
            self.deployment.token,
            CairnToken::transferCall { to, value: amount },
        )
        .await
    }

    /// Lets `spender` move up to `amount` of the owner's tokens.
    pub async fn approve(
        &self,
        owner: &PrivateKeySigner,
        spender: Address,
        amount: U256,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            owner,
            self.deployment.token,
            CairnToken::approveCall {
                spender,
                value: amount,
            },
        )
        .await
    }

    /// The payment token's EIP-712 domain, as it reports it (ERC-5267 `eip712Domain()`).
    pub async fn token_domain(&self) -> Result<Eip712Domain, LedgerError> {
        let d = self
            .view(self.deployment.token, CairnToken::eip712DomainCall {})
            .await?;
        Ok(Eip712Domain::new(
            Some(d.name.into()),
            Some(d.version.into()),
            Some(d.chainId),
            Some(d.verifyingContract),
            None,
        ))
    }

    /// An EIP-3009 `transferWithAuthorization` call signed by `from` (anyone may send it).
    pub async fn transfer_authorization(
        &self,
        from: &PrivateKeySigner,
        to: Address,
        value: U256,
        valid_before: u64,
        nonce: B256,
    ) -> Result<CairnToken::transferWithAuthorization_1Call, LedgerError> {
        let msg = TransferWithAuthorization {
            from: from.address(),
            to,
            value,
            validAfter: U256::ZERO,
            validBefore: U256::from(valid_before),
            nonce,
        };
        let sig = sign(from, msg.eip712_signing_hash(&self.token_domain().await?))?;
        Ok(CairnToken::transferWithAuthorization_1Call {
            from: msg.from,
            to,
            value,
            validAfter: msg.validAfter,
            validBefore: msg.validBefore,
            nonce,
            v: 27 + sig.v() as u8,
            r: sig.r().into(),
            s: sig.s().into(),
        })
    }

    /// Whether `authorizer` has used (or cancelled) EIP-3009 `nonce`.
    pub async fn authorization_used(
        &self,
        authorizer: Address,
        nonce: B256,
    ) -> Result<bool, LedgerError> {
        self.view(
            self.deployment.token,
            CairnToken::authorizationStateCall { authorizer, nonce },
        )
        .await
    }

    /// Whether EIP-3009 authorization (`authorizer`, `nonce`) was used by a transfer of `value`
    /// to `to`, from the token's events since block `from_block`, and by which transaction:
    /// `None` when no use (or not its transfer) is on record yet, `paid: false` when the nonce
    /// went to another transfer (the payer signed two with one nonce and the other was mined
    /// first). A used nonce alone proves no payment, and
    /// neither does some transfer to `to` in the same transaction: the token emits a use's
    /// `Transfer` right after its `AuthorizationUsed`, so only that log counts, and one transfer
    /// can never vouch for two authorizations.
    pub async fn authorization_paid(
        &self,
        authorizer: Address,
        nonce: B256,
        to: Address,
        value: U256,
        from_block: u64,
    ) -> Result<Option<AuthorizationUse>, LedgerError> {
        let token = self.deployment.token;
        let used = self
            .ledger
            .logs(crate::LogFilter {
                address: Some(token),
                topic0: Some(CairnToken::AuthorizationUsed::SIGNATURE_HASH),
                topic1: Some(authorizer.into_word()),
                topic2: Some(nonce),
                // Nothing of ours is older than the deployment.
                from_block: from_block.max(self.deployment.block),
                ..Default::default()
            })
            .await?
            .into_iter()
            .find(|l| {
                CairnToken::AuthorizationUsed::decode_log(&l.log)
                    .is_ok_and(|e| e.authorizer == authorizer && e.nonce == nonce)
            });
        let Some(used) = used else {
            return Ok(None);
        };
        // The use's own Transfer, wherever it went; not readable (yet) is unknown, not unpaid.
        let transfer = self
            .ledger
            .logs(crate::LogFilter {
                address: Some(token),
                topic0: Some(CairnToken::Transfer::SIGNATURE_HASH),
                topic1: Some(authorizer.into_word()),
                from_block: used.block,
                to_block: Some(used.block),
                ..Default::default()
            })
            .await?
            .into_iter()
            .find(|l| l.tx == used.tx && l.index == used.index + 1)
            .and_then(|l| CairnToken::Transfer::decode_log(&l.log).ok());
        Ok(transfer.map(|e| AuthorizationUse {
            paid: e.from == authorizer && e.to == to && e.value == value,
            tx: used.tx,
        }))
    }

    /// Sends a signed EIP-3009 transfer (any sender may; the payer pays no gas).
    pub async fn send_authorization(
        &self,
        sender: &PrivateKeySigner,
        call: CairnToken::transferWithAuthorization_1Call,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(sender, self.deployment.token, call).await
    }

    /// The payment vault of inference node `node`: its x402 `payTo` and voucher payee, whose
    /// funds can only become that node's batch fees.
    pub async fn vault_of(&self, node: Address) -> Result<Address, LedgerError> {
        self.view(self.deployment.settlement, Settlement::vaultOfCall { node })
            .await
    }
}
