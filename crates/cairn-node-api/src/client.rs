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
    /// How receipts are asked to be signed.
    seal: crate::SealChoice,
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
            seal: crate::SealChoice::Own,
        }
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

    async fn check(
        &self,
        url: &str,
        resp: reqwest::Response,
    ) -> Result<reqwest::Response, NodeClientError> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.bytes().await.ok().and_then(|b| ErrorBody::parse(&b));
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
        self.check(url, resp)
            .await?
            .json()
            .await
            .map_err(|e| NodeClientError::Protocol(format!("{url}: {e}")))
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
        let retry = req.try_clone();
        let mut resp = req.send().await.map_err(|source| NodeClientError::Http {
            url: url.clone(),
            source,
        })?;
        let mut payment = None;
        if resp.status() == StatusCode::PAYMENT_REQUIRED
            && let (Some(payer), Some(retry)) = (&self.payer, retry)
        {
            let (header, mut made) = self.pay(payer, resp.headers(), false).await?;
            resp = retry
                .header(cairn_x402::wire::PAYMENT_SIGNATURE, header)
                .send()
                .await
                .map_err(|source| NodeClientError::Http {
                    url: url.clone(),
                    source,
                })?;
            made.settlement = cairn_x402::client::settle_response(resp.headers());
            payment = Some(made);
        }
        let resp = self.check(&url, resp).await?;
        // The voucher paid for a request that succeeded: it is what we owe from now on.
        if let Some((cumulative, path)) = payment.as_ref().and_then(|m| m.cumulative.as_ref())
            && let Some(mut a) = cairn_x402::client::PrepaidAccount::load(path)
                .map_err(|e| NodeClientError::Protocol(e.to_string()))?
        {
            a.record(*cumulative)
                .map_err(|e| NodeClientError::Protocol(e.to_string()))?;
        }
        let json_len = resp
            .headers()
            .get(HEADER_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        let bytes = resp.bytes().await.map_err(|source| NodeClientError::Http {
            url: url.clone(),
            source,
        })?;
        let mut outcome = parse_response(&bytes, json_len)?;
        outcome.payment = payment;
        Ok(outcome)
    }
}

/// A chat completion as [`NodeClient::chat`] got it.
#[derive(Debug)]
pub struct ChatOutcome {
    /// The `chat.completion` answer.
    pub answer: serde_json::Value,
    /// Its receipt, verified and checked against the request and answer bytes.
    pub receipt: SignedReceipt,
    /// What was paid, when the node asked for payment (`amount`: the most the voucher
    /// allowed; the charge is the receipt's price).
    pub payment: Option<PaymentMade>,
}

impl NodeClient {
    /// `POST /v1/chat/completions` with `request` (not streamed), paid per token with a prepaid
    /// voucher when the node asks. The receipt is fetched and checked: signed by the node, over
    /// these exact request and answer bytes; the payer's account then records what it charged.
    pub async fn chat(&self, request: &serde_json::Value) -> Result<ChatOutcome, NodeClientError> {
        use sha2::Digest;
        let url = self.urls.chat_completions();
        let body = serde_json::to_vec(request).expect("serializes");
        let req = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone());
        let retry = req.try_clone();
        let http = |source| NodeClientError::Http {
            url: url.clone(),
            source,
        };
        let mut resp = req.send().await.map_err(http)?;
        let mut payment = None;
        if resp.status() == StatusCode::PAYMENT_REQUIRED
            && let (Some(payer), Some(retry)) = (&self.payer, retry)
        {
            self.check_ceiling(request, body.len(), resp.headers())
                .await?;
            let (header, mut made) = self.pay(payer, resp.headers(), true).await?;
            resp = retry
                .header(cairn_x402::wire::PAYMENT_SIGNATURE, header)
                .send()
                .await
                .map_err(http)?;
            made.settlement = cairn_x402::client::settle_response(resp.headers());
            payment = Some(made);
        }
        let resp = self.check(&url, resp).await?;
        let p = NodeClientError::Protocol;
        let id: B256 = resp
            .headers()
            .get(crate::openai::RECEIPT_ID_HEADER)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .ok_or_else(|| p("the answer names no receipt".into()))?;
        let bytes = resp.bytes().await.map_err(http)?;
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
            && let Some((cumulative, path)) = &m.cumulative
            && let Some(mut a) =
                cairn_x402::client::PrepaidAccount::load(path).map_err(|e| p(e.to_string()))?
        {
            if receipt.claims.price > m.amount {
                return Err(p(format!(
                    "receipt {id} charges {} over the {} the voucher allowed",
                    receipt.claims.price, m.amount
                )));
            }
            a.record(*cumulative - m.amount + receipt.claims.price)
                .map_err(|e| p(e.to_string()))?;
        }
        let answer = serde_json::from_slice(&bytes).map_err(|e| p(format!("{url}: {e}")))?;
        Ok(ChatOutcome {
            answer,
            receipt,
            payment,
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
            .filter(|o| o.scheme == "prepaid" || o.scheme == "upto")
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

fn made(offer: &cairn_x402::wire::PaymentRequirements) -> PaymentMade {
    PaymentMade {
        scheme: offer.scheme.clone(),
        amount: offer.amount,
        pay_to: offer.pay_to,
        settlement: None,
        cumulative: None,
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
