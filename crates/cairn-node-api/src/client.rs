//! A Rust client for a node's KServe v2 API (what `cairn infer` uses).

use alloy_primitives::{Address, B256};
use cairn_core::{BlobId, DataType, ErrorBody, Tensor};
use cairn_receipt::SignedReceipt;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;

use crate::kserve::{HEADER_LENGTH, InferRequest, ResponseOutput};
use crate::types::{InferResponse, NodeInfo, PaymentTerms, PrepaidChannel, StoredReceipt};
use crate::urls::NodeUrls;

/// Client failures.
#[derive(Debug, thiserror::Error)]
pub enum NodeClientError {
    /// The node answered with an error.
    #[error("node refused ({status}, {code}): {message}")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// Machine code.
        code: String,
        /// Message.
        message: String,
    },
    /// Transport failure.
    #[error("cannot talk to the node at {url}: {source}")]
    Http {
        /// Where.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
    /// The node's answer is not what the protocol says.
    #[error("unexpected answer from the node: {0}")]
    Protocol(String),
    /// The node asks to be paid in an asset this client was not told it may pay in
    /// ([`NodeClient::paying_only_named_assets`]): nothing was signed.
    #[error(
        "the node asks to be paid in {asset} on {network} ({scheme}); no asset to pay in was agreed: not paying"
    )]
    AssetNotAgreed {
        /// The chain the offer names (CAIP-2).
        network: String,
        /// The token it names.
        asset: alloy_primitives::Address,
        /// The offer's scheme.
        scheme: String,
    },
}

/// The result of one inference.
pub struct InferOutcome {
    /// Outputs, in the node's order.
    pub outputs: Vec<Tensor>,
    /// The receipt, verified.
    pub receipt: SignedReceipt,
    /// The model's CID as the node ran it.
    pub model_name: BlobId,
    /// Release version when called by name.
    pub model_version: String,
    /// What was paid, when the node asked for payment.
    pub payment: Option<PaymentMade>,
}

/// A payment `cairn infer` made.
#[derive(Clone, Debug)]
pub struct PaymentMade {
    /// `exact`, `prepaid` or `upto`.
    pub scheme: String,
    /// Token units.
    pub amount: alloy_primitives::U256,
    /// The payee (the node's payment vault).
    pub pay_to: alloy_primitives::Address,
    /// The node's settlement answer (`PAYMENT-RESPONSE`).
    pub settlement: Option<cairn_x402::wire::SettleResponse>,
    /// For `prepaid`: the voucher's cumulative amount and the payer's account file it goes
    /// into once the request succeeded.
    pub cumulative: Option<(alloy_primitives::U256, std::path::PathBuf)>,
    /// For `batch-settlement`: what the channel holds after this payment (its deposit counted),
    /// as this client reckons it; the node's `channelState` replaces it once the call succeeds.
    pub channel_balance: Option<alloy_primitives::U256>,
    /// For `batch-settlement`: the deposit this payment carried, if any.
    pub deposit: Option<alloy_primitives::U256>,
    /// For `batch-settlement`: the highest ceiling signed on the channel before this voucher,
    /// restored when the node refuses it.
    pub signed_before: Option<alloy_primitives::U256>,
}

/// A node client.
#[derive(Clone)]
pub struct NodeClient {
    urls: NodeUrls,
    http: reqwest::Client,
    payer: Option<alloy_signer_local::PrivateKeySigner>,
    salt: alloy_primitives::B256,
    /// Where the payer's own prepaid accounts live (`None`: never pays prepaid).
    accounts: Option<std::path::PathBuf>,
    /// Pay from an x402 `batch-settlement` channel, depositing this much when it runs low
    /// (`None`: never).
    batch_deposit: Option<alloy_primitives::U256>,
    /// How receipts are asked to be signed.
    seal: crate::SealChoice,
    /// The most one call may be asked to pay (`None`: whatever the node asks).
    max_price: Option<alloy_primitives::U256>,
    /// The largest answer body read (`None`: no cap).
    max_body: Option<usize>,
    /// Pays only offers to, and settled or claimed by, this address, when set.
    payee: Option<alloy_primitives::Address>,
    /// Pays only in this asset on this network (CAIP-2), when set.
    asset: Option<(String, alloy_primitives::Address)>,
    /// Pays nothing while `asset` is unset.
    asset_required: bool,
    /// Pays prepaid vouchers only on this escrow, when set.
    escrow: Option<alloy_primitives::Address>,
}

impl NodeClient {
    /// A client for the node at `base` (`http://127.0.0.1:7401`).
    pub fn new(base: &str) -> Self {
        Self {
            urls: NodeUrls::new(base),
            http: reqwest::Client::new(),
            payer: None,
            salt: alloy_primitives::B256::ZERO,
            accounts: None,
            batch_deposit: None,
            seal: crate::SealChoice::Own,
            max_price: None,
            max_body: None,
            payee: None,
            asset: None,
            asset_required: false,
            escrow: None,
        }
    }

    /// Pays nothing until [`NodeClient::with_asset`] names what it may pay in: every 402 is
    /// refused with [`NodeClientError::AssetNotAgreed`]. For a payer who named no asset: a
    /// node must not choose which of the payer's tokens, or which chain, it is paid from.
    pub fn paying_only_named_assets(mut self) -> Self {
        self.asset_required = true;
        self
    }

    /// Pays only offers naming `asset` (a token contract) on `network` (CAIP-2, `eip155:8453`):
    /// a node cannot have the payer sign for another token it holds, or on another chain, where
    /// the same number of units may be worth far more.
    pub fn with_asset(mut self, network: &str, asset: alloy_primitives::Address) -> Self {
        self.asset = Some((network.to_owned(), asset));
        self
    }

    /// Signs prepaid vouchers only for channels on `escrow`: a voucher is signed over its
    /// escrow, whose token is what it pays, whatever asset the offer names.
    pub fn with_escrow(mut self, escrow: alloy_primitives::Address) -> Self {
        self.escrow = Some(escrow);
        self
    }

    /// Pays only offers whose `payTo` is `payee`, and that only `payee` can settle (an `upto`
    /// offer's `facilitatorAddress`, a `batch-settlement` offer's `receiverAuthorizer`): a
    /// service whose address the caller knows, where the service itself settles. What sits
    /// between cannot put its own address in the offer.
    pub fn with_payee(mut self, payee: alloy_primitives::Address) -> Self {
        self.payee = Some(payee);
        self
    }

    /// Sends `req` (to `url`: this client's node, or another service taking the same x402
    /// payments), paying its 402 as this client pays a language-model call (`metered`: an
    /// `exact` transfer, which cannot be for less than it names, is not used). The payment
    /// made goes to [`NodeClient::record_charge`] once the answer says what it cost.
    pub async fn send_paid(
        &self,
        url: &str,
        req: reqwest::RequestBuilder,
        metered: bool,
    ) -> Result<(reqwest::Response, Option<PaymentMade>), NodeClientError> {
        self.send_paying(url, req, metered, None).await
    }

    /// Records in the payer's own account of a voucher's channel that the metered call paid by
    /// `m` was charged `charged` (at most what the voucher allowed).
    pub fn record_charge(
        m: &PaymentMade,
        charged: alloy_primitives::U256,
    ) -> Result<(), NodeClientError> {
        let Some((cumulative, _)) = &m.cumulative else {
            return Ok(());
        };
        if charged > m.amount {
            return Err(NodeClientError::Protocol(format!(
                "charged {charged}, over the {} the voucher allowed",
                m.amount
            )));
        }
        record(m, *cumulative - m.amount + charged)
    }

    /// Refuses to pay a call whose 402 offers any amount over `max` (a node asking more than
    /// its published price is not paid).
    pub fn with_max_price(mut self, max: alloy_primitives::U256) -> Self {
        self.max_price = Some(max);
        self
    }

    /// Reads answer bodies of at most `max` bytes (a node that sends more is cut off: a
    /// protocol error).
    pub fn with_max_body(mut self, max: usize) -> Self {
        self.max_body = Some(max);
        self
    }

    /// This client with a body cap of at most `max` (for error bodies).
    fn with_cap(&self, max: usize) -> Self {
        let mut c = self.clone();
        c.max_body = Some(self.max_body.map_or(max, |m| m.min(max)));
        c
    }

    /// A response's body, within the cap.
    async fn body(&self, url: &str, resp: reqwest::Response) -> Result<Vec<u8>, NodeClientError> {
        self.body_seen(url, resp, &mut |_| {}).await
    }

    /// The answer's body, each piece shown to `seen` as it arrives.
    async fn body_seen(
        &self,
        url: &str,
        mut resp: reqwest::Response,
        seen: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<Vec<u8>, NodeClientError> {
        let max = self.max_body.unwrap_or(usize::MAX);
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(NodeClientError::Protocol(format!(
                "{url}: the answer is over {max} bytes"
            )));
        }
        let mut out = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|source| NodeClientError::Http {
            url: url.to_owned(),
            source,
        })? {
            if out.len() + chunk.len() > max {
                return Err(NodeClientError::Protocol(format!(
                    "{url}: the answer is over {max} bytes"
                )));
            }
            seen(&chunk);
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Sends through `http` (e.g. a [`crate::fetch::Fetcher`]'s client, for a node whose URL
    /// someone else chose: no redirects, public addresses only).
    pub fn with_http(mut self, http: reqwest::Client) -> Self {
        self.http = http;
        self
    }

    /// Asks for receipts sealed as `seal` ([`crate::RECEIPT_SEAL_HEADER`]).
    pub fn with_seal(mut self, seal: crate::SealChoice) -> Self {
        self.seal = seal;
        self
    }

    /// Keeps the payer's own prepaid accounts in `dir` ([`cairn_x402::client::PrepaidAccount`]):
    /// prepaid is used only on channels with an account there.
    pub fn with_accounts(mut self, dir: std::path::PathBuf) -> Self {
        self.accounts = Some(dir);
        self
    }

    /// Pays from the payer's x402 `batch-settlement` channel with the node (channel `salt`,
    /// its account kept with the prepaid ones) when the node offers it and no prepaid deposit
    /// covers the call, depositing `amount` (at least the offer's `minDeposit`) with the payment
    /// whenever the channel holds too little: a gasless EIP-3009 authorization the node submits.
    pub fn with_batch_deposit(mut self, amount: alloy_primitives::U256) -> Self {
        self.batch_deposit = Some(amount);
        self
    }

    /// The account file of the payer's channel for a prepaid `offer`.
    pub fn account_path(
        &self,
        payer: alloy_primitives::Address,
        offer: &cairn_x402::wire::PaymentRequirements,
    ) -> Option<std::path::PathBuf> {
        let dir = self.accounts.as_ref()?;
        let escrow: alloy_primitives::Address =
            offer.extra.get("escrow")?.as_str()?.parse().ok()?;
        let chain_id = cairn_x402::wire::chain_id_of(&offer.network)?;
        let channel = cairn_ledger::Chain::channel_id(payer, offer.pay_to, self.salt);
        Some(cairn_x402::client::PrepaidAccount::path(
            dir, chain_id, escrow, channel,
        ))
    }

    /// Pays the node's 402 answers with `payer`: prepaid (channel `salt`) when the payer has a
    /// deposit with the node that covers the price, else `exact`, else `upto` (a language-model
    /// call, which `exact` cannot pay; the payer must have approved Permit2 on the token).
    pub fn with_payer(
        mut self,
        payer: alloy_signer_local::PrivateKeySigner,
        salt: alloy_primitives::B256,
    ) -> Self {
        self.payer = Some(payer);
        self.salt = salt;
        self
    }

    /// The payment header for a 402 answer: (header value, what is paid).
    /// `metered`: a call charged by what it uses, which `exact` (a transfer of the whole
    /// amount named) never pays.
    async fn pay(
        &self,
        payer: &alloy_signer_local::PrivateKeySigner,
        headers: &reqwest::header::HeaderMap,
        metered: bool,
    ) -> Result<(String, PaymentMade), NodeClientError> {
        use cairn_x402::client as pay;
        let p = |m: String| NodeClientError::Protocol(m);
        let required = pay::offers(headers).map_err(|e| p(e.to_string()))?;
        let prepaid = required
            .accepts
            .iter()
            .find(|o| o.scheme == "prepaid")
            .and_then(|o| Some((o, self.account_path(payer.address(), o)?)));
        if let Some((offer, path)) = prepaid
            && let Some(mut account) =
                cairn_x402::client::PrepaidAccount::load(&path).map_err(|e| p(e.to_string()))?
        {
            let ch = self.prepaid_channel(payer.address(), self.salt).await?;
            // Our own account says what is owed; the node's count only within the ceilings we
            // signed (see `PrepaidAccount::owed`).
            let paid = if ch.known {
                account.owed(ch.accepted)
            } else {
                account.paid
            };
            let next = paid + offer.amount;
            if ch.known && ch.closing != Some(true) && next <= ch.deposited.unwrap_or_default() {
                account.signing(next).map_err(|e| p(e.to_string()))?;
                let header = pay::pay_prepaid(payer, &required, offer, self.salt, next)
                    .map_err(|e| p(e.to_string()))?;
                let mut m = made(offer);
                m.cumulative = Some((next, path));
                return Ok((header, m));
            }
        }
        if let Some(paid) = self.pay_batch(payer, &required, None)? {
            return Ok(paid);
        }
        if let Some(offer) = required
            .accepts
            .iter()
            .find(|o| o.scheme == "exact" && !metered)
        {
            let header = pay::pay_exact(payer, &required, offer).map_err(|e| p(e.to_string()))?;
            return Ok((header, made(offer)));
        }
        if let Some(offer) = required.accepts.iter().find(|o| o.scheme == "upto") {
            let header = pay::pay_upto(payer, &required, offer).map_err(|e| p(e.to_string()))?;
            return Ok((header, made(offer)));
        }
        Err(
            match required.accepts.iter().find(|o| o.scheme == "prepaid") {
                Some(o) => p(format!(
                    "the node takes only a prepaid voucher for this call (at most {} token units): deposit with it first (cairn pay deposit) so the channel covers that",
                    o.amount
                )),
                None => p("the node offers no payment scheme this client can pay".into()),
            },
        )
    }

    /// Pays from the payer's `batch-settlement` channel, when the client is set to
    /// ([`NodeClient::with_batch_deposit`]) and the node offers it; `None` otherwise.
    /// `refused`: this call's voucher the node just refused, whose 402 `required` is.
    fn pay_batch(
        &self,
        payer: &alloy_signer_local::PrivateKeySigner,
        required: &cairn_x402::wire::PaymentRequired,
        refused: Option<&PaymentMade>,
    ) -> Result<Option<(String, PaymentMade)>, NodeClientError> {
        use cairn_x402::batch;
        use cairn_x402::client::{BatchChannel, PrepaidAccount};
        let p = |e: cairn_x402::X402Error| NodeClientError::Protocol(e.to_string());
        let (Some(deposit), Some(dir)) = (self.batch_deposit, &self.accounts) else {
            return Ok(None);
        };
        let Some(offer) = required.accepts.iter().find(|o| o.scheme == batch::SCHEME) else {
            return Ok(None);
        };
        let mut ch = BatchChannel::new(payer.address(), offer, self.salt).map_err(p)?;
        let chain_id = cairn_x402::wire::chain_id_of(&offer.network).ok_or_else(|| {
            NodeClientError::Protocol(format!("{} is not an EVM chain", offer.network))
        })?;
        let path = PrepaidAccount::path(
            dir,
            chain_id,
            cairn_ledger::contracts::x402_addresses::BATCH_SETTLEMENT,
            ch.id,
        );
        let (mut account, fresh) = match PrepaidAccount::load(&path).map_err(p)? {
            Some(a) => (a, false),
            None => (
                PrepaidAccount::create(&path, alloy_primitives::U256::ZERO).map_err(p)?,
                true,
            ),
        };
        let min: alloy_primitives::U256 = offer
            .extra
            .get("minDeposit")
            .and_then(|v| v.as_str()?.parse().ok())
            .unwrap_or_default();
        if min > deposit {
            return Err(NodeClientError::Protocol(format!(
                "the node takes deposits of at least {min} token units into a batch-settlement channel, more than the {deposit} you allow (--batch-deposit)"
            )));
        }
        // The voucher just refused paid for nothing: it proves nothing about what is owed
        // (a node could otherwise show it back as "your latest voucher" and move the count up
        // one price per refusal).
        // (`send_paying` has given its ceiling back already.)
        let refused_ceiling = refused.and_then(|m| Some(m.cumulative.as_ref()?.0));
        let mut owed = account.paid;
        // The node refused our last voucher as not the channel's next step: its count, within
        // the ceilings we are shown to have signed (see `PrepaidAccount::owed`).
        if let Some(c) = ch.corrective(offer) {
            if let Some(signed) = c.signed
                && Some(signed) != refused_ceiling
            {
                account.signing(signed).map_err(p)?;
            }
            owed = account.owed(c.charged);
            account.set_deposited(c.balance).map_err(p)?;
        }
        if matches!(
            required.error.as_deref(),
            Some(batch::ERR_EXCEEDS_BALANCE | batch::ERR_CHANNEL_NOT_FOUND)
        ) {
            account
                .set_deposited(alloy_primitives::U256::ZERO)
                .map_err(p)?;
        }
        ch.charged = owed;
        // New to this machine, the channel may well exist (another machine, another client):
        // a voucher alone first; the node's refusal then says whether to deposit, and what
        // the channel holds and has been charged.
        ch.balance = if fresh {
            alloy_primitives::U256::MAX
        } else {
            account.deposited
        };
        let next = owed + offer.amount;
        let signed_before = account.signed;
        let balance = ch.balance;
        // At most one deposit per call: a node refusing a deposit's voucher does not get another.
        if refused.is_some_and(|m| m.deposit.is_some()) && next > balance {
            return Err(NodeClientError::Protocol(
                "the node refused a payment that carried a deposit; not depositing again for this call"
                    .into(),
            ));
        }
        account.signing(next).map_err(p)?;
        let header = ch.pay(payer, required, offer, deposit).map_err(p)?;
        let mut m = made(offer);
        m.cumulative = Some((next, path));
        m.signed_before = Some(signed_before);
        m.deposit = (ch.balance > balance).then(|| ch.balance - balance);
        m.channel_balance = Some(if fresh {
            alloy_primitives::U256::ZERO
        } else {
            ch.balance
        });
        Ok(Some((header, m)))
    }

    /// Sends `req`, paying a 402 with the payer's key when there is one. A `batch-settlement`
    /// voucher the node refuses as not the channel's next step, or as more than the channel
    /// holds, is paid once more from the channel's state as the refusal gives it. `ceiling`:
    /// a metered call's request and body size, whose ceiling is checked before paying.
    async fn send_paying(
        &self,
        url: &str,
        req: reqwest::RequestBuilder,
        metered: bool,
        ceiling: Option<(&serde_json::Value, usize)>,
    ) -> Result<(reqwest::Response, Option<PaymentMade>), NodeClientError> {
        use cairn_x402::batch;
        let http = |source| NodeClientError::Http {
            url: url.to_owned(),
            source,
        };
        let mut retry = req.try_clone();
        let mut resp = req.send().await.map_err(http)?;
        let mut payment: Option<PaymentMade> = None;
        let Some(payer) = &self.payer else {
            return Ok((resp, None));
        };
        while resp.status() == StatusCode::PAYMENT_REQUIRED
            && let Some(again) = retry.take()
        {
            if let Some((request, len)) = ceiling {
                self.check_ceiling(request, len, resp.headers()).await?;
            }
            if let Some(payee) = self.payee {
                let required = cairn_x402::client::offers(resp.headers())
                    .map_err(|e| NodeClientError::Protocol(e.to_string()))?;
                offers_only_for(&required, payee).map_err(NodeClientError::Protocol)?;
            }
            if self.asset.is_none() && self.asset_required {
                let required = cairn_x402::client::offers(resp.headers())
                    .map_err(|e| NodeClientError::Protocol(e.to_string()))?;
                let o = required.accepts.first().ok_or_else(|| {
                    NodeClientError::Protocol("a 402 that offers no way to pay".into())
                })?;
                return Err(NodeClientError::AssetNotAgreed {
                    network: o.network.clone(),
                    asset: o.asset,
                    scheme: o.scheme.clone(),
                });
            }
            if let Some((network, asset)) = &self.asset {
                let required = cairn_x402::client::offers(resp.headers())
                    .map_err(|e| NodeClientError::Protocol(e.to_string()))?;
                if let Some(o) = required
                    .accepts
                    .iter()
                    .find(|o| o.network != *network || o.asset != *asset)
                {
                    return Err(NodeClientError::Protocol(format!(
                        "the node asks to be paid in {} on {} ({}); this client pays only in {asset} on {network}: not paying",
                        o.asset, o.network, o.scheme
                    )));
                }
            }
            if let Some(escrow) = self.escrow {
                let required = cairn_x402::client::offers(resp.headers())
                    .map_err(|e| NodeClientError::Protocol(e.to_string()))?;
                if let Some(o) = required.accepts.iter().find(|o| {
                    o.scheme == "prepaid"
                        && o.extra
                            .get("escrow")
                            .and_then(|v| v.as_str()?.parse::<alloy_primitives::Address>().ok())
                            != Some(escrow)
                }) {
                    return Err(NodeClientError::Protocol(format!(
                        "the node asks for vouchers on escrow {}; this client signs them only on {escrow}: not paying",
                        o.extra
                            .get("escrow")
                            .map_or_else(|| "(none named)".into(), |v| v.to_string())
                    )));
                }
            }
            if let Some(max) = self.max_price {
                let required = cairn_x402::client::offers(resp.headers())
                    .map_err(|e| NodeClientError::Protocol(e.to_string()))?;
                if let Some(o) = required.accepts.iter().find(|o| o.amount > max) {
                    return Err(NodeClientError::Protocol(format!(
                        "the node asks {} token units ({}), over the {max} this call may cost: not paying",
                        o.amount, o.scheme
                    )));
                }
            }
            let (header, mut made) = match &payment {
                None => self.pay(payer, resp.headers(), metered).await?,
                // Paid once more only from the same channel, from the state its refusal gives.
                Some(m) if m.scheme == batch::SCHEME => {
                    let Ok(required) = cairn_x402::client::offers(resp.headers()) else {
                        break;
                    };
                    if !matches!(
                        required.error.as_deref(),
                        Some(
                            batch::ERR_CUMULATIVE_MISMATCH
                                | batch::ERR_EXCEEDS_BALANCE
                                | batch::ERR_CHANNEL_NOT_FOUND
                        )
                    ) {
                        break;
                    }
                    match self.pay_batch(payer, &required, Some(m))? {
                        Some(paid) => paid,
                        None => break,
                    }
                }
                Some(_) => break,
            };
            // One more try only for a batch-settlement voucher, the first time.
            retry = if payment.is_none() {
                again.try_clone()
            } else {
                None
            };
            resp = again
                .header(cairn_x402::wire::PAYMENT_SIGNATURE, header)
                .send()
                .await
                .map_err(http)?;
            made.settlement = cairn_x402::client::settle_response(resp.headers());
            if resp.status() == StatusCode::PAYMENT_REQUIRED {
                forget_refused(&made)?;
            }
            payment = Some(made);
        }
        Ok((resp, payment))
    }

    async fn check(
        &self,
        url: &str,
        resp: reqwest::Response,
    ) -> Result<reqwest::Response, NodeClientError> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = self
            .with_cap(64 * 1024)
            .body(url, resp)
            .await
            .ok()
            .and_then(|b| ErrorBody::parse(&b));
        let body = body.unwrap_or_else(|| ErrorBody::new("unknown", url));
        Err(NodeClientError::Api {
            status,
            code: body.code,
            message: body.message,
        })
    }

    async fn read<T: DeserializeOwned>(
        &self,
        url: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<T, NodeClientError> {
        let resp = req.send().await.map_err(|source| NodeClientError::Http {
            url: url.to_owned(),
            source,
        })?;
        let resp = self.check(url, resp).await?;
        let bytes = self.body(url, resp).await?;
        serde_json::from_slice(&bytes).map_err(|e| NodeClientError::Protocol(format!("{url}: {e}")))
    }

    /// The node's URLs.
    pub fn urls(&self) -> &NodeUrls {
        &self.urls
    }

    /// `GET /v1/node`.
    pub async fn info(&self) -> Result<NodeInfo, NodeClientError> {
        let url = self.urls.info();
        self.read(&url, self.http.get(&url)).await
    }

    /// The payment terms of `GET /v1/node` (`None`: the node is free). Reads that field
    /// alone, so a node that adds to the rest of its info is still paid.
    pub async fn payment_terms(&self) -> Result<Option<PaymentTerms>, NodeClientError> {
        #[derive(serde::Deserialize)]
        struct Payments {
            payments: Option<PaymentTerms>,
        }
        let url = self.urls.info();
        let p: Payments = self.read(&url, self.http.get(&url)).await?;
        Ok(p.payments)
    }

    /// `GET /v1/receipts/{id}`.
    pub async fn receipt(&self, id: B256) -> Result<StoredReceipt, NodeClientError> {
        let url = self.urls.receipt(id);
        self.read(&url, self.http.get(&url)).await
    }

    /// `GET /v1/prepaid/{payer}?salt=`: the payer's channel as the node accounts it.
    pub async fn prepaid_channel(
        &self,
        payer: Address,
        salt: B256,
    ) -> Result<PrepaidChannel, NodeClientError> {
        let url = self.urls.prepaid_channel(payer, salt);
        self.read(&url, self.http.get(&url)).await
    }

    /// `POST /v1/prepaid/deposits`: hands the node a gasless deposit to submit.
    pub async fn prepaid_deposit(
        &self,
        deposit: &cairn_x402::prepaid::DepositAuthorization,
    ) -> Result<PrepaidChannel, NodeClientError> {
        let url = self.urls.prepaid_deposits();
        self.read(&url, self.http.post(&url).json(deposit)).await
    }

    /// Runs `model` on `inputs`, sending tensors in binary (or as JSON numbers when `json`).
    pub async fn infer(
        &self,
        model: &str,
        inputs: &[Tensor],
        json_body: bool,
    ) -> Result<InferOutcome, NodeClientError> {
        let url = self.urls.infer(model);
        let mut req = self.http.post(&url);
        if self.seal != crate::SealChoice::Own {
            req = req.header(crate::RECEIPT_SEAL_HEADER, self.seal.as_str());
        }
        if json_body {
            let body = serde_json::to_vec(&InferRequest::json(inputs)).expect("serializes");
            req = req.header("content-type", "application/json").body(body);
        } else {
            let (body, json_len) = binary_request(inputs);
            req = req
                .header("content-type", "application/octet-stream")
                .header(HEADER_LENGTH, json_len)
                .body(body);
        }
        let (resp, payment) = self.send_paying(&url, req, false, None).await?;
        let resp = self.check(&url, resp).await?;
        // The voucher paid for a request that succeeded: it is what we owe from now on.
        if let Some(m) = &payment
            && let Some((cumulative, _)) = &m.cumulative
        {
            record(m, *cumulative)?;
        }
        let json_len = resp
            .headers()
            .get(HEADER_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        let bytes = self.body(&url, resp).await?;
        let mut outcome = parse_response(&bytes, json_len)?;
        outcome.payment = payment;
        Ok(outcome)
    }
}

/// A chat completion as [`NodeClient::chat`] got it.
#[derive(Debug)]
pub struct ChatOutcome {
    /// The `chat.completion` answer (for a streamed call, one holding the text its chunks
    /// carried, as `choices[0].message.content`).
    pub answer: serde_json::Value,
    /// Its receipt, verified and checked against the request and answer bytes.
    pub receipt: SignedReceipt,
    /// What was paid, when the node asked for payment (`amount`: the most the voucher
    /// allowed; the charge is the receipt's price).
    pub payment: Option<PaymentMade>,
    /// The request body as sent (what the receipt's input hash binds).
    pub request: Vec<u8>,
    /// The answer body as received (what the receipt's output hash binds).
    pub response: Vec<u8>,
}

impl NodeClient {
    /// `POST /v1/chat/completions` with `request` (not streamed), paid per token with a prepaid
    /// voucher when the node asks. The receipt is fetched and checked: signed by the node, over
    /// these exact request and answer bytes; the payer's account then records what it charged.
    pub async fn chat(&self, request: &serde_json::Value) -> Result<ChatOutcome, NodeClientError> {
        self.chat_streaming(request, &|_| {}).await
    }

    /// As [`NodeClient::chat`]; when `request` asks for a stream (`"stream": true`), each piece
    /// of the answer's text goes to `delta` as it arrives (before the receipt is checked: a
    /// call that then fails its checks is an error all the same).
    pub async fn chat_streaming(
        &self,
        request: &serde_json::Value,
        delta: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<ChatOutcome, NodeClientError> {
        use sha2::Digest;
        let url = self.urls.chat_completions();
        let body = serde_json::to_vec(request).expect("serializes");
        let req = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone());
        let (resp, payment) = self
            .send_paying(&url, req, true, Some((request, body.len())))
            .await?;
        let resp = self.check(&url, resp).await?;
        let p = NodeClientError::Protocol;
        let id: B256 = resp
            .headers()
            .get(crate::openai::RECEIPT_ID_HEADER)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .ok_or_else(|| p("the answer names no receipt".into()))?;
        let streamed = request["stream"].as_bool() == Some(true);
        let mut events = crate::openai::SseText::default();
        let bytes = self
            .body_seen(&url, resp, &mut |piece| {
                if streamed {
                    for d in events.push(piece) {
                        delta(&d);
                    }
                }
            })
            .await?;
        let stored = self.receipt(id).await?;
        let receipt = stored
            .receipt
            .verify()
            .map_err(|e| p(format!("the node's receipt: {e}")))?;
        let hash = |b: &[u8]| B256::from_slice(&sha2::Sha256::digest(b));
        if receipt.id() != id
            || receipt.claims.input_hash != hash(&body)
            || receipt.claims.output_hash != hash(&bytes)
        {
            return Err(p(format!(
                "receipt {id} does not bind this request and answer"
            )));
        }
        // A permit was settled for what the node says the call cost: the receipt's price.
        if let Some(m) = &payment
            && let Some(s) = &m.settlement
            && let Some(amount) = &s.amount
            && amount.parse::<alloy_primitives::U256>().ok() != Some(receipt.claims.price)
        {
            return Err(p(format!(
                "the node settled {amount} for call {id}, whose receipt charges {}",
                receipt.claims.price
            )));
        }
        // The voucher allowed up to its amount; the receipt says what was used.
        if let Some(m) = &payment
            && let Some((cumulative, _)) = &m.cumulative
        {
            if receipt.claims.price > m.amount {
                return Err(p(format!(
                    "receipt {id} charges {} over the {} the voucher allowed",
                    receipt.claims.price, m.amount
                )));
            }
            record(m, *cumulative - m.amount + receipt.claims.price)?;
        }
        let answer = if streamed {
            let text = crate::openai::stream_text(&bytes).map_err(|e| p(format!("{url}: {e}")))?;
            serde_json::json!({"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]})
        } else {
            serde_json::from_slice(&bytes).map_err(|e| p(format!("{url}: {e}")))?
        };
        Ok(ChatOutcome {
            answer,
            receipt,
            payment,
            request: body,
            response: bytes.to_vec(),
        })
    }
}

impl NodeClient {
    /// Refuses a chat call's 402 whose prepaid ceiling is over what the node's own published
    /// per-token price allows for this request ([`crate::openai::TokenPrice::most`]): a node
    /// that names a larger ceiling would be signed the right to claim it.
    async fn check_ceiling(
        &self,
        request: &serde_json::Value,
        body_bytes: usize,
        headers: &reqwest::header::HeaderMap,
    ) -> Result<(), NodeClientError> {
        let p = NodeClientError::Protocol;
        let required = cairn_x402::client::offers(headers).map_err(|e| p(e.to_string()))?;
        // A voucher's ceiling and a permit's maximum are both the most the node may charge.
        let offers: Vec<_> = required
            .accepts
            .iter()
            .filter(|o| {
                o.scheme == "prepaid" || o.scheme == "upto" || o.scheme == cairn_x402::batch::SCHEME
            })
            .collect();
        let Some(offer) = offers.iter().max_by_key(|o| o.amount) else {
            return Ok(());
        };
        let terms = self
            .payment_terms()
            .await?
            .ok_or_else(|| p("the node asks for payment but publishes no terms".into()))?;
        let model = request["model"].as_str().unwrap_or_default();
        // The model's own price, else the dearest the node publishes.
        let price = match terms.llm_prices.iter().find(|l| l.model == model) {
            Some(l) => crate::openai::TokenPrice {
                prompt_per_1k: l.prompt_per_1k,
                completion_per_1k: l.completion_per_1k,
            },
            None => crate::openai::TokenPrice {
                prompt_per_1k: terms
                    .llm_prices
                    .iter()
                    .map(|l| l.prompt_per_1k)
                    .max()
                    .unwrap_or_default(),
                completion_per_1k: terms
                    .llm_prices
                    .iter()
                    .map(|l| l.completion_per_1k)
                    .max()
                    .unwrap_or_default(),
            },
        };
        let asked = request["max_completion_tokens"]
            .as_u64()
            .or_else(|| request["max_tokens"].as_u64())
            .map(|m| m.min(u64::from(u32::MAX)) as u32);
        let allowed = price.most(body_bytes, asked);
        if offer.amount > allowed {
            return Err(p(format!(
                "the node asks a ceiling of {} token units for this call; its published price ({}/{} per 1,000 tokens) allows at most {allowed}: not paying",
                offer.amount, price.prompt_per_1k, price.completion_per_1k
            )));
        }
        Ok(())
    }
}

/// A `batch-settlement` voucher the node refused (402) paid for nothing: its ceiling is given
/// back in the payer's account, so it never counts as a step the payer signed.
fn forget_refused(m: &PaymentMade) -> Result<(), NodeClientError> {
    let (Some((ceiling, path)), Some(before)) = (&m.cumulative, m.signed_before) else {
        return Ok(());
    };
    let p = |e: cairn_x402::X402Error| NodeClientError::Protocol(e.to_string());
    if let Some(mut a) = cairn_x402::client::PrepaidAccount::load(path).map_err(p)? {
        a.refused(*ceiling, before).map_err(p)?;
    }
    Ok(())
}

/// Records in the payer's account of a voucher's channel that everything owed after a request
/// that succeeded is `cumulative`, and (`batch-settlement`) what the channel now holds.
fn record(m: &PaymentMade, cumulative: alloy_primitives::U256) -> Result<(), NodeClientError> {
    let p = |e: cairn_x402::X402Error| NodeClientError::Protocol(e.to_string());
    let Some((_, path)) = &m.cumulative else {
        return Ok(());
    };
    let Some(mut a) = cairn_x402::client::PrepaidAccount::load(path).map_err(p)? else {
        return Ok(());
    };
    a.record(cumulative).map_err(p)?;
    if let Some(ours) = m.channel_balance {
        // The node read the channel from the chain when it took a deposit; a node that says
        // less than we reckon only makes us deposit sooner (into our own channel).
        let theirs = m.settlement.as_ref().and_then(|s| {
            s.extra
                .as_ref()?
                .get("channelState")?
                .get("balance")?
                .as_str()?
                .parse()
                .ok()
        });
        a.set_deposited(theirs.unwrap_or(ours)).map_err(p)?;
    }
    Ok(())
}

/// Whether every offer pays `party`, and only `party` can settle or claim it.
fn offers_only_for(
    required: &cairn_x402::wire::PaymentRequired,
    party: alloy_primitives::Address,
) -> Result<(), String> {
    for o in &required.accepts {
        let settler = match o.scheme.as_str() {
            "upto" => Some("facilitatorAddress"),
            cairn_x402::batch::SCHEME => Some("receiverAuthorizer"),
            _ => None,
        };
        let settled_by = settler.map(|field| {
            o.extra
                .get(field)
                .and_then(|v| v.as_str())
                .and_then(|v| v.parse::<alloy_primitives::Address>().ok())
        });
        if o.pay_to != party || settled_by.is_some_and(|s| s != Some(party)) {
            return Err(format!(
                "the offer pays {} ({}, settled by {}), not {party}: not paying",
                o.pay_to,
                o.scheme,
                settled_by
                    .flatten()
                    .map_or_else(|| "whoever submits it".into(), |s| s.to_string())
            ));
        }
    }
    Ok(())
}

fn made(offer: &cairn_x402::wire::PaymentRequirements) -> PaymentMade {
    PaymentMade {
        scheme: offer.scheme.clone(),
        amount: offer.amount,
        pay_to: offer.pay_to,
        settlement: None,
        cumulative: None,
        channel_balance: None,
        deposit: None,
        signed_before: None,
    }
}

/// A KServe v2 binary-extension request body for `inputs` (outputs asked in binary too), and the
/// length of its JSON part (the `Inference-Header-Content-Length` value).
pub fn binary_request(inputs: &[Tensor]) -> (Vec<u8>, usize) {
    let head = serde_json::to_string(&InferRequest::binary(inputs)).expect("serializes");
    let json_len = head.len();
    let mut body = head.into_bytes();
    for t in inputs {
        body.extend_from_slice(t.data());
    }
    (body, json_len)
}

/// Parses a KServe v2 response (JSON, or JSON plus binary outputs).
pub fn parse_response(
    bytes: &[u8],
    json_len: Option<usize>,
) -> Result<InferOutcome, NodeClientError> {
    let p = |m: String| NodeClientError::Protocol(m);
    let (head, rest) = match json_len {
        Some(n) if n <= bytes.len() => bytes.split_at(n),
        Some(_) => return Err(p("binary header length exceeds the body".into())),
        None => (bytes, &[][..]),
    };
    let body: InferResponse = serde_json::from_slice(head).map_err(|e| p(e.to_string()))?;
    let outputs = output_tensors(body.outputs, rest)?;
    Ok(InferOutcome {
        outputs,
        receipt: body
            .parameters
            .receipt
            .verify()
            .map_err(|e| p(format!("the node's receipt: {e}")))?,
        model_name: body.model_name,
        model_version: body.model_version,
        payment: None,
    })
}

/// The tensors of an outputs file `cairn infer --output x.json` wrote (`{"outputs": [...]}`).
pub fn parse_outputs(bytes: &[u8]) -> Result<Vec<Tensor>, NodeClientError> {
    #[derive(serde::Deserialize)]
    struct Outputs {
        outputs: Vec<ResponseOutput>,
    }
    let body: Outputs =
        serde_json::from_slice(bytes).map_err(|e| NodeClientError::Protocol(e.to_string()))?;
    output_tensors(body.outputs, &[])
}

/// Outputs as tensors: JSON `data`, or their share of `rest`, the binary part, in order.
fn output_tensors(
    outputs: Vec<ResponseOutput>,
    mut rest: &[u8],
) -> Result<Vec<Tensor>, NodeClientError> {
    let p = |m: String| NodeClientError::Protocol(m);
    let mut tensors = Vec::with_capacity(outputs.len());
    for o in outputs {
        let name = o.name;
        let dtype: DataType = o
            .datatype
            .parse()
            .map_err(|e: cairn_core::TensorError| p(e.to_string()))?;
        let data = if let Some(b) = o.parameters {
            let size = usize::try_from(b.binary_data_size).unwrap_or(usize::MAX);
            if size > rest.len() {
                return Err(p(format!("output `{name}` is truncated")));
            }
            let (this, r) = rest.split_at(size);
            rest = r;
            this.to_vec()
        } else {
            let count = cairn_core::tensor::element_count(&o.shape) as usize;
            let values = match o.data {
                Some(raw) => raw.value().map_err(|e| p(e.to_string()))?,
                None => serde_json::Value::Null,
            };
            crate::kserve::json_values_to_bytes(&name, dtype, &values, count)
                .map_err(|e| p(e.to_string()))?
        };
        tensors.push(Tensor::new(name, dtype, o.shape, data).map_err(|e| p(e.to_string()))?);
    }
    Ok(tensors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::{Address, U256};
    use cairn_x402::wire::{PaymentRequired, PaymentRequirements, ResourceInfo};

    fn offer(scheme: &str, pay_to: Address, extra: serde_json::Value) -> PaymentRequirements {
        PaymentRequirements {
            scheme: scheme.into(),
            network: "eip155:31337".into(),
            amount: U256::from(5000),
            asset: Address::repeat_byte(7),
            pay_to,
            max_timeout_seconds: 300,
            extra,
        }
    }

    fn required(accepts: Vec<PaymentRequirements>) -> PaymentRequired {
        PaymentRequired {
            x402_version: 2,
            error: None,
            resource: ResourceInfo::default(),
            accepts,
            extensions: None,
        }
    }

    #[test]
    fn offers_are_paid_only_to_and_settled_only_by_the_party_named() {
        let (entry, other) = (Address::repeat_byte(1), Address::repeat_byte(2));
        let by = |who: Address| serde_json::json!({"facilitatorAddress": who.to_string()});
        let claimed = |who: Address| serde_json::json!({"receiverAuthorizer": who.to_string()});
        let ok = required(vec![
            offer("upto", entry, by(entry)),
            offer(cairn_x402::batch::SCHEME, entry, claimed(entry)),
        ]);
        assert!(offers_only_for(&ok, entry).is_ok());
        for bad in [
            // Paid elsewhere; settled or claimed by another; a settler not named at all.
            offer("upto", other, by(entry)),
            offer("upto", entry, by(other)),
            offer("upto", entry, serde_json::json!({})),
            offer(cairn_x402::batch::SCHEME, entry, claimed(other)),
        ] {
            let e = offers_only_for(&required(vec![ok.accepts[0].clone(), bad]), entry);
            assert!(e.unwrap_err().contains("not paying"));
        }
    }
}
