//! The payer's side of the prepaid scheme: vouchers and gasless deposits signed, the escrow's domain read from an offer.

use super::*;

/// Signs a voucher with ceiling `cumulative` and a fresh random nonce (client side).
pub fn sign_voucher(
    payer: &PrivateKeySigner,
    payee: Address,
    salt: B256,
    cumulative: U256,
    domain: &Eip712Domain,
) -> Result<PrepaidPayload, X402Error> {
    use alloy_signer::SignerSync;
    let v = Voucher {
        payer: payer.address(),
        payee,
        salt,
        cumulativeAmount: cumulative,
        nonce: B256::random(),
    };
    let sig = payer
        .sign_hash_sync(&v.eip712_signing_hash(domain))
        .map_err(|e| X402Error::Malformed(format!("signing the voucher: {e}")))?;
    Ok(PrepaidPayload {
        voucher: VoucherWire {
            payer: payer.address(),
            payee,
            salt,
            cumulative_amount: cumulative,
            nonce: v.nonce,
        },
        signature: Bytes::from(sig.as_bytes().to_vec()),
    })
}

/// A gasless deposit: the payer's EIP-3009 `ReceiveWithAuthorization` of `amount` to the escrow,
/// which the node submits (`Escrow.depositWithAuthorization`). Valid from 0 until
/// `valid_before`. Its EIP-3009 nonce is `keccak256(abi.encode(channelId, entropy))`, so the
/// signature binds the channel (payee and salt): nobody who sees it can redirect the deposit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DepositAuthorization {
    /// The payer.
    pub payer: Address,
    /// The channel's salt.
    pub salt: B256,
    /// Amount deposited.
    #[serde(with = "decimal")]
    pub amount: U256,
    /// Not valid from (Unix seconds).
    #[serde(with = "decimal")]
    pub valid_before: U256,
    /// The payer's random entropy (the EIP-3009 nonce is derived from it and the channel).
    pub entropy: B256,
    /// The payer's signature over the `ReceiveWithAuthorization` (token domain).
    pub signature: Bytes,
}

/// Signs a gasless deposit of `amount` into the channel (`payee`, `salt`) of `escrow`.
pub fn sign_deposit(
    payer: &PrivateKeySigner,
    escrow: Address,
    payee: Address,
    salt: B256,
    amount: U256,
    valid_before: u64,
    token_domain: &Eip712Domain,
) -> Result<DepositAuthorization, X402Error> {
    use alloy_signer::SignerSync;
    let entropy = B256::random();
    let nonce = Chain::deposit_nonce(payer.address(), payee, salt, entropy);
    let msg = cairn_ledger::chain::ReceiveWithAuthorization {
        from: payer.address(),
        to: escrow,
        value: amount,
        validAfter: U256::ZERO,
        validBefore: U256::from(valid_before),
        nonce,
    };
    let sig = payer
        .sign_hash_sync(&msg.eip712_signing_hash(token_domain))
        .map_err(|e| X402Error::Malformed(format!("signing the deposit: {e}")))?;
    Ok(DepositAuthorization {
        payer: payer.address(),
        salt,
        amount,
        valid_before: U256::from(valid_before),
        entropy,
        signature: Bytes::from(sig.as_bytes().to_vec()),
    })
}

/// The escrow's EIP-712 domain as a `prepaid` offer describes it.
pub fn domain_from_offer(req: &PaymentRequirements) -> Option<Eip712Domain> {
    let escrow: Address = req.extra.get("escrow")?.as_str()?.parse().ok()?;
    let chain_id = crate::wire::chain_id_of(&req.network)?;
    Some(Eip712Domain::new(
        Some(req.extra.get("name")?.as_str()?.to_string().into()),
        Some(req.extra.get("version")?.as_str()?.to_string().into()),
        Some(U256::from(chain_id)),
        Some(escrow),
        None,
    ))
}
