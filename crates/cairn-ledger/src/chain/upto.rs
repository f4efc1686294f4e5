//! The x402 `upto` scheme's contracts: a payer signs a Permit2 witness transfer of at most a
//! maximum to a recipient, settled once by the facilitator it names, through the x402 `upto`
//! proxy, for what the call cost.

use super::*;
use crate::UptoContracts;
use crate::contracts::Permit2;
use crate::contracts::upto_proxy::{Permit2 as ProxyPermit2, X402UptoPermit2Proxy};

sol! {
    /// Permit2's token permission: the token and the most that may move.
    struct TokenPermissions {
        address token;
        uint256 amount;
    }
    /// The `upto` witness: who is paid, the one facilitator that may settle, and from when.
    struct Witness {
        address to;
        address facilitator;
        uint256 validAfter;
    }
    /// What an `upto` payer signs: Permit2's `PermitWitnessTransferFrom` with the `upto` witness,
    /// the proxy as spender.
    struct PermitWitnessTransferFrom {
        TokenPermissions permitted;
        address spender;
        uint256 nonce;
        uint256 deadline;
        Witness witness;
    }
    /// EIP-2612's approval, signed by the owner.
    struct Permit {
        address owner;
        address spender;
        uint256 value;
        uint256 nonce;
        uint256 deadline;
    }
}

/// One `upto` authorization: everything the payer's Permit2 signature covers, and the payer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UptoAuthorization {
    /// The payer (token owner, the signer).
    pub owner: Address,
    /// The token.
    pub token: Address,
    /// The most the facilitator may settle.
    #[serde(serialize_with = "decimal")]
    pub max: U256,
    /// The Permit2 nonce (unordered: any unused value; the x402 clients pick a random one).
    #[serde(serialize_with = "decimal")]
    pub nonce: U256,
    /// Unix seconds after which it cannot be settled.
    #[serde(serialize_with = "decimal")]
    pub deadline: U256,
    /// Who is paid.
    pub to: Address,
    /// The only account that may settle it.
    pub facilitator: Address,
    /// Unix seconds before which it cannot be settled.
    #[serde(serialize_with = "decimal")]
    pub valid_after: U256,
}

impl UptoAuthorization {
    /// The EIP-712 message, with the `upto` proxy as spender.
    pub fn message(&self, proxy: Address) -> PermitWitnessTransferFrom {
        PermitWitnessTransferFrom {
            permitted: TokenPermissions {
                token: self.token,
                amount: self.max,
            },
            spender: proxy,
            nonce: self.nonce,
            deadline: self.deadline,
            witness: Witness {
                to: self.to,
                facilitator: self.facilitator,
                validAfter: self.valid_after,
            },
        }
    }

    /// The digest the payer signs: the message under Permit2's domain (name "Permit2", no
    /// version) on chain `chain_id`.
    pub fn signing_hash(&self, chain_id: u64, upto: &UptoContracts) -> B256 {
        self.message(upto.proxy)
            .eip712_signing_hash(&permit2_domain(chain_id, upto.permit2))
    }

    fn permit(&self) -> ProxyPermit2::PermitTransferFrom {
        ProxyPermit2::PermitTransferFrom {
            permitted: ProxyPermit2::TokenPermissions {
                token: self.token,
                amount: self.max,
            },
            nonce: self.nonce,
            deadline: self.deadline,
        }
    }

    fn witness(&self) -> X402UptoPermit2Proxy::Witness {
        X402UptoPermit2Proxy::Witness {
            to: self.to,
            facilitator: self.facilitator,
            validAfter: self.valid_after,
        }
    }
}

/// Permit2's EIP-712 domain: `{name: "Permit2", chainId, verifyingContract}`.
pub fn permit2_domain(chain_id: u64, permit2: Address) -> Eip712Domain {
    Eip712Domain::new(
        Some("Permit2".into()),
        None,
        Some(U256::from(chain_id)),
        Some(permit2),
        None,
    )
}

/// An owner's EIP-2612 approval, as the `upto` proxy's `settleWithPermit` takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenPermit {
    /// The approved amount (the `upto` maximum).
    pub value: U256,
    /// Unix seconds after which the approval cannot be used.
    pub deadline: U256,
    /// The owner's signature.
    pub signature: Signature,
}

impl Chain {
    /// Permit2 and the `upto` proxy on this chain, or why `upto` is unavailable.
    pub fn upto(&self) -> Result<UptoContracts, LedgerError> {
        self.deployment.upto.ok_or_else(|| {
            LedgerError::Unsupported(
                "this chain has no Permit2 and x402 upto proxy at the addresses the x402 clients expect"
                    .into(),
            )
        })
    }

    /// Signs an `upto` authorization as its owner (no transaction).
    pub fn sign_upto(
        &self,
        owner: &PrivateKeySigner,
        auth: &UptoAuthorization,
    ) -> Result<Signature, LedgerError> {
        if owner.address() != auth.owner {
            return Err(LedgerError::Invalid(
                "the signer is not the authorization's owner".into(),
            ));
        }
        sign(
            owner,
            auth.signing_hash(self.deployment.chain_id, &self.upto()?),
        )
    }

    /// Settles `amount` of a signed authorization, sent by its facilitator.
    pub async fn settle_upto(
        &self,
        facilitator: &PrivateKeySigner,
        auth: &UptoAuthorization,
        amount: U256,
        signature: Bytes,
    ) -> Result<TxOutcome, LedgerError> {
        let upto = self.upto()?;
        self.exec(
            facilitator,
            upto.proxy,
            X402UptoPermit2Proxy::settleCall {
                permit: auth.permit(),
                amount,
                owner: auth.owner,
                witness: auth.witness(),
                signature,
            },
        )
        .await
    }

    /// As [`Chain::settle_upto`], approving Permit2 first with the owner's EIP-2612 signature.
    pub async fn settle_upto_with_permit(
        &self,
        facilitator: &PrivateKeySigner,
        permit: &TokenPermit,
        auth: &UptoAuthorization,
        amount: U256,
        signature: Bytes,
    ) -> Result<TxOutcome, LedgerError> {
        let upto = self.upto()?;
        self.exec(
            facilitator,
            upto.proxy,
            X402UptoPermit2Proxy::settleWithPermitCall {
                permit2612: X402UptoPermit2Proxy::EIP2612Permit {
                    value: permit.value,
                    deadline: permit.deadline,
                    r: permit.signature.r().into(),
                    s: permit.signature.s().into(),
                    v: 27 + permit.signature.v() as u8,
                },
                permit: auth.permit(),
                amount,
                owner: auth.owner,
                witness: auth.witness(),
                signature,
            },
        )
        .await
    }

    /// Whether `owner`'s Permit2 `nonce` is used (settled or invalidated).
    pub async fn permit2_nonce_used(
        &self,
        owner: Address,
        nonce: U256,
    ) -> Result<bool, LedgerError> {
        let word = self
            .view(
                self.upto()?.permit2,
                Permit2::nonceBitmapCall {
                    _0: owner,
                    _1: nonce >> 8,
                },
            )
            .await?;
        Ok(word.bit((nonce.byte(0)) as usize))
    }

    /// Revokes `owner`'s unused Permit2 `nonce` (a signed authorization becomes worthless).
    pub async fn invalidate_permit2_nonce(
        &self,
        owner: &PrivateKeySigner,
        nonce: U256,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            owner,
            self.upto()?.permit2,
            Permit2::invalidateUnorderedNoncesCall {
                wordPos: nonce >> 8,
                mask: U256::from(1) << (nonce.byte(0) as usize),
            },
        )
        .await
    }

    /// How much `spender` may move of `owner`'s tokens.
    pub async fn token_allowance(
        &self,
        owner: Address,
        spender: Address,
    ) -> Result<U256, LedgerError> {
        self.view(
            self.deployment.token,
            CairnToken::allowanceCall { owner, spender },
        )
        .await
    }

    /// `owner`'s current EIP-2612 nonce on the payment token.
    pub async fn token_nonce(&self, owner: Address) -> Result<U256, LedgerError> {
        self.view(self.deployment.token, CairnToken::noncesCall { owner })
            .await
    }

    /// Signs an EIP-2612 approval of `spender` for `value` as `owner` (no transaction), at the
    /// owner's current permit nonce.
    pub async fn sign_token_permit(
        &self,
        owner: &PrivateKeySigner,
        spender: Address,
        value: U256,
        deadline: U256,
    ) -> Result<TokenPermit, LedgerError> {
        let nonce = self
            .view(
                self.deployment.token,
                CairnToken::noncesCall {
                    owner: owner.address(),
                },
            )
            .await?;
        let message = Permit {
            owner: owner.address(),
            spender,
            value,
            nonce,
            deadline,
        };
        let hash = message.eip712_signing_hash(&self.token_domain().await?);
        Ok(TokenPermit {
            value,
            deadline,
            signature: sign(owner, hash)?,
        })
    }
}
