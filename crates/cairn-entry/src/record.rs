//! The run record (`cairn.run/1`): one turn's evidence, signed by the entry. It holds the input's
//! hash, the task object, every step (its inputs, its model's CID, the node, the receipt, what
//! was paid, failed attempts), the exact bytes of each language-model call, the answer, and the
//! edges between steps. The signature is EIP-191 `personal_sign` over the record's id, the
//! keccak-256 of the record's JSON text (carried as a string), so eth_account can check it.

use alloy_primitives::{Address, B256, U256};
use cairn_core::{BlobId, Tensor};
use cairn_receipt::{ReceiptJson, SignedReceipt};
use serde::{Deserialize, Serialize};

use crate::exact::ExactInputs;
use crate::router::Attempt;
use crate::skills::{ModelAnswer, ModelChoice};
use crate::task::{Draft, ParsedBy, Skill, SubtaskInputs, TaskObject};

/// The record's schema id.
pub const SCHEMA: &str = "cairn.run/1";

/// A tensor as the record keeps it: little-endian bytes in hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorRecord {
    /// Name.
    pub name: String,
    /// KServe datatype (`FP32`, `INT64`, …).
    pub datatype: String,
    /// Shape.
    pub shape: Vec<u64>,
    /// Data, hex.
    pub data: String,
}

impl TensorRecord {
    /// From a tensor.
    pub fn of(t: &Tensor) -> Self {
        Self {
            name: t.name().to_owned(),
            datatype: t.dtype().to_string(),
            shape: t.shape().to_vec(),
            data: alloy_primitives::hex::encode(t.data()),
        }
    }

    /// Back to a tensor.
    pub fn tensor(&self) -> Result<Tensor, String> {
        let dtype = self
            .datatype
            .parse()
            .map_err(|e: cairn_core::TensorError| e.to_string())?;
        let data = alloy_primitives::hex::decode(&self.data).map_err(|e| e.to_string())?;
        Tensor::new(self.name.clone(), dtype, self.shape.clone(), data).map_err(|e| e.to_string())
    }
}

/// A node that ran a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRef {
    /// Its URL as the entry reached it.
    pub url: String,
    /// Its address (the receipt's signer).
    pub address: Address,
}

/// What a step paid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Paid {
    /// x402 scheme, or `none` when the node asked nothing.
    pub scheme: String,
    /// The most the payment allowed (token units).
    pub authorized: String,
    /// What the receipt charges (token units).
    pub charged: String,
}

/// A language-model call, byte for byte: its receipt binds the SHA-256 of both.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmCall {
    /// The model asked for.
    pub model: String,
    /// The node.
    pub node: NodeRef,
    /// The request body sent.
    pub request: String,
    /// The answer body received.
    pub response: String,
    /// The receipt.
    pub receipt: ReceiptJson,
    /// What was paid.
    pub payment: Paid,
    /// Failed attempts on other nodes first.
    pub attempts: Vec<Attempt>,
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// It ran and its result is here.
    Done,
    /// It could not run; `error` says why.
    Failed,
}

/// A model step's evidence.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRun {
    /// The model.
    pub model: ModelChoice,
    /// A text step's token ids, by the model's vocabulary (`vocab_cid`): the input tensors are
    /// rebuilt from them, and `cairn run verify --hub` encodes the texts again to compare.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<Vec<u32>>,
    /// The node.
    pub node: NodeRef,
    /// The outputs the receipt binds.
    pub outputs: Vec<TensorRecord>,
    /// The receipt.
    pub receipt: ReceiptJson,
    /// What was paid.
    pub payment: Paid,
}

/// One computable sub-task's step.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The sub-task id (`s1`).
    pub id: String,
    /// Its skill.
    pub skill: Skill,
    /// Its inputs (as in the task object).
    pub inputs: SubtaskInputs,
    /// How it ended.
    pub status: Status,
    /// The result in words (an exact value, a digit, a file type).
    pub result: Option<String>,
    /// A model's answer with its score.
    pub answer: Option<ModelAnswer>,
    /// Why it failed.
    pub error: Option<String>,
    /// The model run, for a model skill that ran.
    pub run: Option<ModelRun>,
    /// Failed attempts on other nodes.
    pub attempts: Vec<Attempt>,
}

/// The answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    /// The text the user was shown.
    pub text: String,
    /// The language model's call that wrote its first part, when one did.
    pub llm: Option<LlmCall>,
    /// Why no language model wrote it, when none did.
    pub llm_skipped: Option<String>,
}

/// The run record of one turn.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRecord {
    /// [`SCHEMA`].
    pub schema: String,
    /// The entry that signed it.
    pub entry: Address,
    /// Unix seconds.
    pub created_at: u64,
    /// SHA-256 of the user's message (UTF-8).
    pub input_sha256: B256,
    /// SHA-256 of the earlier messages of the conversation as given (JSON), if any.
    pub history_sha256: Option<B256>,
    /// The task object.
    pub task: TaskObject,
    /// Its SHA-256.
    pub task_sha256: B256,
    /// The language-model call that labelled the input, when one did.
    pub parse: Option<LlmCall>,
    /// One step per sub-task.
    pub steps: Vec<Step>,
    /// The answer.
    pub answer: Answer,
    /// The DAG: `[from, to]` pairs over `input`, `parse`, step ids and `answer`.
    pub edges: Vec<[String; 2]>,
    /// Everything the receipts charge (token units).
    pub total_charged: String,
    /// The most failed attempts may have cost besides (token units; see [`Attempt::at_risk`]).
    pub at_risk: String,
    /// Attempts of language-model calls that no node answered.
    pub failed_calls: Vec<Attempt>,
    /// Random: a record's id cannot be guessed from a guessed message.
    pub nonce: B256,
}

/// A record with its id and signature, as stored and served.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedRecord {
    /// keccak-256 of `record`'s text.
    pub id: B256,
    /// EIP-191 `personal_sign` over the 32 bytes of `id`, `r ‖ s ‖ v` hex.
    pub signature: String,
    /// The record's JSON text, exactly as signed. A string, not embedded JSON: a JSON tool that
    /// reads and rewrites the file keeps a string's content but not an object's bytes.
    pub record: String,
}

/// Signs `record` with the entry's key.
pub fn sign(record: &RunRecord, key: &cairn_core::sig::SigningKey) -> SignedRecord {
    let text = serde_json::to_string(record).expect("serializes");
    let id = alloy_primitives::keccak256(text.as_bytes());
    let digest = alloy_primitives::eip191_hash_message(id.as_slice());
    let sig = key.sign_prehash(&digest);
    SignedRecord {
        id,
        signature: format!("0x{}", alloy_primitives::hex::encode(sig.as_bytes())),
        record: text,
    }
}

/// What a check of a record found wrong.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The record is not well formed.
    #[error("the record is malformed: {0}")]
    Malformed(String),
    /// Its id or signature does not hold.
    #[error("the record's signature: {0}")]
    Signature(String),
    /// Some content does not match what it claims.
    #[error("{0}")]
    Mismatch(String),
}

/// Checks the record's id and signature, then parses it.
pub fn open(signed: &SignedRecord) -> Result<RunRecord, RecordError> {
    let text = signed.record.as_str();
    if alloy_primitives::keccak256(text.as_bytes()) != signed.id {
        return Err(RecordError::Signature(
            "the id is not the keccak-256 of the record's text".into(),
        ));
    }
    let bytes = alloy_primitives::hex::decode(&signed.signature)
        .map_err(|e| RecordError::Signature(e.to_string()))?;
    let sig =
        cairn_core::sig::parse_rsv(&bytes).map_err(|e| RecordError::Signature(e.to_string()))?;
    let signer = cairn_core::sig::recover_message(&sig, signed.id.as_slice())
        .map_err(|e| RecordError::Signature(e.to_string()))?;
    let record: RunRecord =
        serde_json::from_str(text).map_err(|e| RecordError::Malformed(e.to_string()))?;
    if record.schema != SCHEMA {
        return Err(RecordError::Malformed(format!(
            "schema {:?}, not {SCHEMA}",
            record.schema
        )));
    }
    if signer != record.entry {
        return Err(RecordError::Signature(format!(
            "signed by {signer}, but the record names entry {}",
            record.entry
        )));
    }
    Ok(record)
}

fn sha256(b: &[u8]) -> B256 {
    crate::sha256(b)
}

/// Checks an LLM call's receipt binds its bytes and is its node's.
pub fn check_llm_call(what: &str, c: &LlmCall) -> Result<SignedReceipt, RecordError> {
    let m = |s: String| RecordError::Mismatch(format!("{what}: {s}"));
    let r = c.receipt.verify().map_err(|e| m(format!("receipt: {e}")))?;
    if r.signer != c.node.address {
        return Err(m(format!(
            "the receipt is signed by {}, not the node {}",
            r.signer, c.node.address
        )));
    }
    if r.claims.llm.is_none() {
        return Err(m("the receipt is not a language-model receipt".into()));
    }
    if r.claims.input_hash != sha256(c.request.as_bytes()) {
        return Err(m("the receipt does not bind the request bytes".into()));
    }
    if r.claims.output_hash != sha256(c.response.as_bytes()) {
        return Err(m("the receipt does not bind the answer bytes".into()));
    }
    check_paid(&c.payment, &r).map_err(m)?;
    Ok(r)
}

fn check_paid(p: &Paid, r: &SignedReceipt) -> Result<(), String> {
    if p.charged != r.claims.price.to_string() {
        return Err(format!(
            "the record says {} was charged, the receipt {}",
            p.charged, r.claims.price
        ));
    }
    Ok(())
}

/// The message content of a chat completion's answer body: a whole `chat.completion`, or
/// (`streamed`: the request asked for a stream) the text its events carried.
pub fn completion_text(response: &str, streamed: bool) -> Result<String, String> {
    if streamed {
        return cairn_node_api::openai::stream_text(response.as_bytes());
    }
    let v: serde_json::Value = serde_json::from_str(response).map_err(|e| e.to_string())?;
    v["choices"][0]["message"]["content"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "the answer has no message content".into())
}

/// The draft a parse call's answer holds.
pub fn draft_of(response: &str) -> Result<Draft, String> {
    let text = completion_text(response, false)?;
    serde_json::from_str(&text).map_err(|e| format!("the model's draft: {e}"))
}

/// Everything a record proves by itself, with no network: the task object follows from its
/// segments and the parse call's answer; every exact step recomputes; every receipt verifies,
/// is its node's and binds the step's inputs, outputs and model; each answer follows from its
/// outputs; the answer text follows from the answer call and the steps; the charges add up.
/// Returns every receipt with its step id, for the online checks.
pub fn check_offline(r: &RunRecord) -> Result<Vec<(String, ReceiptJson)>, RecordError> {
    let mm = |s: String| RecordError::Mismatch(s);
    if r.task.sha256() != r.task_sha256 {
        return Err(mm("the task object does not hash to task_sha256".into()));
    }
    // Segments numbered 1..N in order: the rules index them by number.
    if r.task
        .segments
        .iter()
        .enumerate()
        .any(|(i, s)| s.n as usize != i + 1)
        || r.task.segments.len() > crate::task::MAX_SEGMENTS
    {
        return Err(mm(
            "the task object's segments are not numbered 1, 2, … in order".into(),
        ));
    }
    let mut receipts = Vec::new();
    // The task object, derived again, from the parse call the entry makes for these segments.
    let draft = match &r.parse {
        Some(call) => {
            check_llm_call("parse", call)?;
            let asked = crate::entry::parse_request(&call.model, &r.task.segments);
            if serde_json::to_string(&asked).expect("serializes") != call.request {
                return Err(mm(
                    "parse: the request is not the one the entry makes for these segments".into(),
                ));
            }
            receipts.push(("parse".to_owned(), call.receipt.clone()));
            draft_of(&call.response).ok()
        }
        None => None,
    };
    let rules = crate::task::rules(&r.task.segments);
    let again = crate::task::merge(
        r.task.segments.clone(),
        rules,
        draft.as_ref(),
        r.task.parsed_by.clone(),
    );
    if again != r.task {
        return Err(mm(
            "the task object is not what the rules and the parse call's answer give for its segments".into(),
        ));
    }
    check_parsed_by(&r.task.parsed_by, r.parse.as_ref())?;
    if r.steps.len() != r.task.subtasks.len() {
        return Err(mm("one step per sub-task is required".into()));
    }
    let mut total = U256::ZERO;
    let mut risked = U256::ZERO;
    for (step, sub) in r.steps.iter().zip(&r.task.subtasks) {
        let m = |s: String| RecordError::Mismatch(format!("step {}: {s}", step.id));
        if step.id != sub.id || step.skill != sub.skill || step.inputs != sub.inputs {
            return Err(m("it is not its sub-task".into()));
        }
        for a in &step.attempts {
            let v = a
                .at_risk
                .parse::<U256>()
                .map_err(|e| m(format!("an attempt's at_risk: {e}")))?;
            risked = risked
                .checked_add(v)
                .ok_or_else(|| m("the amounts overflow".into()))?;
        }
        // An exact step is recomputed whatever it says: done with this result, or failed
        // with this error.
        if let SubtaskInputs::Exact { inputs } = &step.inputs {
            let ok = match inputs.run() {
                Ok(v) => step.status == Status::Done && step.result.as_deref() == Some(v.as_str()),
                Err(e) => {
                    step.status == Status::Failed
                        && step.error.as_deref() == Some(e.to_string().as_str())
                        && step.result.is_none()
                }
            };
            if !ok || step.run.is_some() {
                return Err(m("recomputed, it is not what the record says".into()));
            }
            continue;
        }
        if step.status == Status::Failed {
            if step.result.is_some() || step.run.is_some() || step.answer.is_some() {
                return Err(m("a failed step carries a result".into()));
            }
            continue;
        }
        let Some(run) = &step.run else {
            return Err(m("a model step without its run".into()));
        };
        let rc = run
            .receipt
            .verify()
            .map_err(|e| m(format!("receipt: {e}")))?;
        if rc.signer != run.node.address {
            return Err(m(format!(
                "the receipt is signed by {}, not the node {}",
                rc.signer, run.node.address
            )));
        }
        if rc.claims.model != run.model.cid {
            return Err(m("the receipt names another model".into()));
        }
        let inputs = crate::skills::build_inputs(step.skill, &step.inputs, &run.model, &run.tokens)
            .map_err(|e| m(e.to_string()))?;
        if rc.claims.input_hash != cairn_core::tensor::tensors_hash(&inputs) {
            return Err(m("the receipt does not bind the step's inputs".into()));
        }
        let outputs: Vec<Tensor> = run
            .outputs
            .iter()
            .map(TensorRecord::tensor)
            .collect::<Result<_, _>>()
            .map_err(m)?;
        if rc.claims.output_hash != cairn_core::tensor::tensors_hash(&outputs) {
            return Err(m("the receipt does not bind the recorded outputs".into()));
        }
        let answer =
            crate::skills::read_outputs(step.skill, &outputs, &run.model.labels, &run.tokens)
                .map_err(|e| m(e.to_string()))?;
        // The score is compared within 1e-9: JSON's decimal text of an f64 reads back within
        // an ulp, not always to the same bits.
        let same = step.answer.as_ref().is_some_and(|a| {
            a.label == answer.label
                && a.confident == answer.confident
                && (a.score - answer.score).abs() <= 1e-9
        });
        if !same || step.result.as_deref() != Some(answer.label.as_str()) {
            return Err(m("the answer is not what the outputs say".into()));
        }
        check_paid(&run.payment, &rc).map_err(m)?;
        if run.payment.scheme != "none" && run.payment.authorized != run.payment.charged {
            return Err(m(format!(
                "{} was paid but the receipt charges {}",
                run.payment.authorized, run.payment.charged
            )));
        }
        total = total
            .checked_add(rc.claims.price)
            .ok_or_else(|| m("the charges overflow".into()))?;
        receipts.push((step.id.clone(), run.receipt.clone()));
    }
    if let Some(call) = &r.parse {
        let price = call
            .receipt
            .verify()
            .map(|x| x.claims.price)
            .unwrap_or_default();
        total = total
            .checked_add(price)
            .ok_or_else(|| mm("the charges overflow".into()))?;
    }
    let llm_text = match &r.answer.llm {
        Some(call) => {
            let rc = check_llm_call("answer", call)?;
            // The request is the entry's for this task and these steps, with the history it
            // holds (which the record's history_sha256 must hash).
            let sent: serde_json::Value = serde_json::from_str(&call.request)
                .map_err(|e| mm(format!("answer: the request: {e}")))?;
            let messages = sent["messages"].as_array().cloned().unwrap_or_default();
            let history: Vec<crate::entry::Message> = messages
                .get(1..messages.len().saturating_sub(1))
                .unwrap_or_default()
                .iter()
                .map(|v| serde_json::from_value(v.clone()))
                .collect::<Result<_, _>>()
                .map_err(|e| mm(format!("answer: the request's history: {e}")))?;
            let streamed = sent["stream"].as_bool() == Some(true);
            let asked =
                crate::entry::answer_request(&call.model, &r.task, &r.steps, &history, streamed);
            if serde_json::to_string(&asked).expect("serializes") != call.request {
                return Err(mm(
                    "answer: the request is not the one the entry makes for these steps".into(),
                ));
            }
            let hashed = (!history.is_empty())
                .then(|| crate::sha256(&serde_json::to_vec(&history).expect("serializes")));
            if hashed != r.history_sha256 {
                return Err(mm(
                    "answer: the history sent is not the one history_sha256 names".into(),
                ));
            }
            total = total
                .checked_add(rc.claims.price)
                .ok_or_else(|| mm("the charges overflow".into()))?;
            receipts.push(("answer".to_owned(), call.receipt.clone()));
            // An answer whose text cannot be read is composed without it, as the entry did.
            completion_text(&call.response, streamed).ok()
        }
        None => None,
    };
    let failed = r
        .parse
        .iter()
        .chain(r.answer.llm.iter())
        .flat_map(|c| c.attempts.iter());
    for a in failed.chain(r.failed_calls.iter()) {
        {
            let v = a
                .at_risk
                .parse::<U256>()
                .map_err(|e| mm(format!("an attempt's at_risk: {e}")))?;
            risked = risked
                .checked_add(v)
                .ok_or_else(|| mm("the amounts overflow".into()))?;
        }
    }
    // A receipt proves one call: it is not counted twice.
    let mut ids = std::collections::HashSet::new();
    for (_, json) in &receipts {
        let id = json
            .verify()
            .map(|x| x.id())
            .map_err(|e| mm(e.to_string()))?;
        if !ids.insert(id) {
            return Err(mm(format!("receipt {id} appears twice")));
        }
    }
    if crate::entry::compose(&r.task, &r.steps, llm_text.as_deref()) != r.answer.text {
        return Err(mm(
            "the answer text is not what its call and the steps give".into(),
        ));
    }
    if total.to_string() != r.total_charged || risked.to_string() != r.at_risk {
        return Err(mm(format!(
            "the receipts charge {total} and the attempts risk {risked} in all; the record says {} and {}",
            r.total_charged, r.at_risk
        )));
    }
    if r.edges != edges(r) {
        return Err(mm("the edges are not the steps'".into()));
    }
    Ok(receipts)
}

fn check_parsed_by(p: &ParsedBy, call: Option<&LlmCall>) -> Result<(), RecordError> {
    let ok = match call {
        Some(c) => {
            p.llm.as_deref() == Some(c.model.as_str())
                && p.llm_receipt.as_deref()
                    == c.receipt
                        .verify()
                        .ok()
                        .map(|r| r.id().to_string())
                        .as_deref()
        }
        None => p.llm.is_none() && p.llm_receipt.is_none(),
    };
    if ok {
        Ok(())
    } else {
        Err(RecordError::Mismatch(
            "parsed_by does not name the parse call".into(),
        ))
    }
}

/// The DAG of a record: input → parse → each step → answer (input → step when no parse call).
pub fn edges(r: &RunRecord) -> Vec<[String; 2]> {
    let e = |a: &str, b: &str| [a.to_owned(), b.to_owned()];
    let mut out = Vec::new();
    let head = if r.parse.is_some() {
        out.push(e("input", "parse"));
        "parse"
    } else {
        "input"
    };
    for s in &r.steps {
        out.push(e(head, &s.id));
        out.push(e(&s.id, "answer"));
    }
    if r.steps.is_empty() {
        out.push(e(head, "answer"));
    }
    out
}

/// An exact step's inputs, if it is one.
pub fn exact_inputs(s: &Step) -> Option<&ExactInputs> {
    match &s.inputs {
        SubtaskInputs::Exact { inputs } => Some(inputs),
        _ => None,
    }
}

/// A model's CID, for display.
pub fn cid_of(s: &Step) -> Option<&BlobId> {
    s.run.as_ref().map(|r| &r.model.cid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact_record(key: &cairn_core::sig::SigningKey, input: &str) -> RunRecord {
        let task = crate::task::parse_by_rules(input).unwrap();
        let steps: Vec<Step> = task
            .subtasks
            .iter()
            .map(|s| {
                let SubtaskInputs::Exact { inputs } = &s.inputs else {
                    panic!("exact only")
                };
                Step {
                    id: s.id.clone(),
                    skill: s.skill,
                    inputs: s.inputs.clone(),
                    status: Status::Done,
                    result: Some(inputs.run().unwrap()),
                    answer: None,
                    error: None,
                    run: None,
                    attempts: Vec::new(),
                }
            })
            .collect();
        let text = crate::entry::compose(&task, &steps, None);
        let mut r = RunRecord {
            schema: SCHEMA.into(),
            entry: key.address(),
            created_at: 1,
            input_sha256: crate::sha256(input.as_bytes()),
            history_sha256: None,
            task_sha256: task.sha256(),
            task,
            parse: None,
            steps,
            answer: Answer {
                text,
                llm: None,
                llm_skipped: Some("none".into()),
            },
            edges: Vec::new(),
            total_charged: "0".into(),
            at_risk: "0".into(),
            failed_calls: Vec::new(),
            nonce: B256::ZERO,
        };
        r.edges = edges(&r);
        r
    }

    fn key(n: u8) -> cairn_core::sig::SigningKey {
        cairn_core::sig::SigningKey::from_bytes(&B256::repeat_byte(n)).unwrap()
    }

    #[test]
    fn a_signed_record_opens_and_checks_and_a_forged_one_does_not() {
        let k = key(7);
        let r = exact_record(&k, "What is 6 * 7? Convert 2 mi to km. lol");
        let signed = sign(&r, &k);
        let opened = open(&signed).unwrap();
        assert!(check_offline(&opened).unwrap().is_empty());
        // A high-s copy of the same signature is refused.
        let sig =
            cairn_core::sig::parse_rsv(&alloy_primitives::hex::decode(&signed.signature).unwrap())
                .unwrap();
        let high = cairn_core::sig::malleate(&sig);
        let mut forged = signed.clone();
        forged.signature = format!("0x{}", alloy_primitives::hex::encode(high.as_bytes()));
        assert!(matches!(open(&forged), Err(RecordError::Signature(_))));
        // Another key cannot sign for the entry the record names.
        let other = sign(&r, &key(8));
        assert!(matches!(open(&other), Err(RecordError::Signature(_))));
        // The entry's own signature over a record whose result was changed: it opens, and the
        // content check recomputes the step.
        let mut wrong = r.clone();
        wrong.steps[0].result = Some("43".into());
        let opened = open(&sign(&wrong, &k)).unwrap();
        assert!(
            check_offline(&opened)
                .unwrap_err()
                .to_string()
                .contains("recomputed")
        );
        // A task object that is not what the rules give for its segments.
        let mut wrong = r.clone();
        wrong.task.noise.clear();
        wrong.task_sha256 = wrong.task.sha256();
        let opened = open(&sign(&wrong, &k)).unwrap();
        assert!(
            check_offline(&opened)
                .unwrap_err()
                .to_string()
                .contains("task object")
        );
        // A record that claims charges no receipt backs.
        let mut wrong = r;
        wrong.total_charged = "5".into();
        let opened = open(&sign(&wrong, &k)).unwrap();
        assert!(
            check_offline(&opened)
                .unwrap_err()
                .to_string()
                .contains("charge")
        );
    }
}
