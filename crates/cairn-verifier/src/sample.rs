//! Sampling one receipt: its payloads fetched over this verifier's own window of attempts, then
//! its re-execution.

use super::*;

impl Verifier {
    /// Samples receipt `r` of a node reached at `base`: the payloads (one attempt at most per
    /// attempt interval), then the re-execution.
    pub(crate) async fn sample(
        &self,
        base: &str,
        r: &SignedReceipt,
        shared: &[(bool, cairn_ohttp::sealed::DataKey)],
    ) -> Result<Sampled, VerifyError> {
        let c = &self.0;
        if let Some(o) = c.reexec.unverifiable(r) {
            return Ok(Sampled::Done(o, 0));
        }
        let rh = r.signing_hash();
        if let Some((o, f)) = c.finished.lock().expect("finished").get(&rh).cloned() {
            return Ok(Sampled::Done(o, f));
        }
        let now = now_secs();
        let window = c.config.payload_window.as_secs();
        let attempts = c.config.payload_attempts.max(2);
        let spacing = window / u64::from(attempts - 1);
        let withheld = |a: &Attempts| {
            (a.failures >= attempts && a.last_at.saturating_sub(a.first_at) >= window).then(|| {
                Outcome::Withheld {
                    reason: format!(
                        "{} attempts over {} s failed; the last: {}",
                        a.failures,
                        a.last_at - a.first_at,
                        a.last_reason
                    ),
                }
            })
        };
        if let Some(a) = c.store.attempts(&rh.0)? {
            if let Some(o) = withheld(&a) {
                return Ok(Sampled::Done(o, a.failures));
            }
            if now < a.last_at + spacing {
                return Ok(Sampled::Pending(format!(
                    "receipt {}: payload not handed over yet ({} of {attempts} attempts failed; next in {} s)",
                    r.id(),
                    a.failures,
                    a.last_at + spacing - now
                )));
            }
        }
        match self.fetch_payloads(base, r, shared).await {
            // Not remembered: a peer may later hand over the data key.
            Err(FetchFailure::NotForMe(reason)) => {
                Ok(Sampled::Done(Outcome::Unverifiable { reason }, 0))
            }
            Ok(p) => {
                let outcome = match c.reexec.check(r, p).await {
                    Ok(o) => o,
                    Err(why) => {
                        return Ok(Sampled::Pending(format!(
                            "receipt {}: could not re-execute here yet: {why}",
                            r.id()
                        )));
                    }
                };
                let failures = c.store.clear_failures(&rh.0)?;
                let mut done = c.finished.lock().expect("finished");
                if done.len() > 100_000 {
                    done.clear();
                }
                done.insert(rh, (outcome.clone(), failures));
                Ok(Sampled::Done(outcome, failures))
            }
            Err(FetchFailure::Failed(reason)) => {
                let a = c.store.record_failure(&rh.0, now, &reason)?;
                tracing::info!(verifier = %self.address(), receipt = %r.id(), failures = a.failures, %reason, "payload fetch failed");
                Ok(match withheld(&a) {
                    Some(o) => Sampled::Done(o, a.failures),
                    None => Sampled::Pending(format!(
                        "receipt {}: payload not handed over ({} of {attempts} attempts failed): {reason}",
                        r.id(),
                        a.failures
                    )),
                })
            }
        }
    }

    /// The payloads of `r` from its node (input; output too for tolerance profiles). Any failure
    /// (unreachable, slow, an error status, an undecodable body) is one failed attempt.
    pub(crate) async fn fetch_payloads(
        &self,
        base: &str,
        r: &SignedReceipt,
        shared: &[(bool, cairn_ohttp::sealed::DataKey)],
    ) -> Result<Payloads, FetchFailure> {
        let urls = NodeUrls::new(base);
        let urls = &urls;
        // A language-model call's payloads are bounded by the protocol: more is never honest,
        // and is not read.
        let llm = r.claims.llm.is_some();
        let raw = |which: Payload| async move {
            let url = urls.payload(r.id(), which);
            // A private call's payload comes sealed: room for what sealing adds.
            let sealing = cairn_ohttp::sealed::MAX_OVERHEAD;
            let cap = match (llm, which) {
                (true, Payload::Input) => Some(cairn_node::llm::MAX_REQUEST_BYTES + sealing),
                (true, Payload::Output) => Some(cairn_node::llm::MAX_TRANSCRIPT_BYTES + sealing),
                (false, _) => None,
            };
            let (status, body) = match cap {
                Some(cap) => {
                    self.0
                        .fetch
                        .signed_get_at_most(&self.0.key, &url, cap)
                        .await?
                }
                None => self.0.fetch.signed_get(&self.0.key, &url).await?,
            };
            if !status.is_success() {
                return Err(FetchFailure::Failed(format!(
                    "GET {url}: {status} {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                )));
            }
            if cairn_ohttp::sealed::is_sealed_payload(&body) {
                return self.open_sealed(r, which, &body, shared).await;
            }
            Ok(body.to_vec())
        };
        if r.claims.llm.is_some() {
            let request = raw(Payload::Input).await?;
            let response = if Reexecutor::needs_output(r) {
                Some(raw(Payload::Output).await?)
            } else {
                None
            };
            return Ok(Payloads::Llm { request, response });
        }
        let get = |which: Payload| async move {
            let body = raw(which).await?;
            safetensors_io::decode(&body)
                .map_err(|e| FetchFailure::Failed(format!("{} payload: {e}", which.as_str())))
        };
        let inputs = get(Payload::Input).await?;
        let outputs = if Reexecutor::needs_output(r) {
            Some(get(Payload::Output).await?)
        } else {
            None
        };
        Ok(Payloads::Tensors { inputs, outputs })
    }
}

/// Why a sampled receipt's payloads were not had.
pub(crate) enum FetchFailure {
    /// One failed attempt (unreachable, an error, an undecodable or unopenable body).
    Failed(String),
    /// A private call's payload, sealed to enough other active verifiers but not to this one
    /// (it joined later, or the node could not reach it): not this verifier's to check, and no
    /// fault of the node's.
    NotForMe(String),
}

impl From<String> for FetchFailure {
    fn from(s: String) -> Self {
        Self::Failed(s)
    }
}

impl Verifier {
    /// Opens a private call's payload: sealed to this verifier, or with a data key a peer handed
    /// over in a challenge. One neither opens is not this verifier's to check (it joined after
    /// the call, or the node could not reach it), never a fault of the node's, unless the node
    /// sealed it to fewer distinct registered verifiers than the settlement quorum: then it kept
    /// the payload from the network, a failed attempt as a withheld payload is.
    pub(crate) async fn open_sealed(
        &self,
        r: &SignedReceipt,
        which: Payload,
        sealed: &[u8],
        shared: &[(bool, cairn_ohttp::sealed::DataKey)],
    ) -> Result<Vec<u8>, FetchFailure> {
        use cairn_ohttp::sealed;
        let what = which.as_str();
        let output = which == Payload::Output;
        let fail = |e: String| FetchFailure::Failed(format!("sealed {what} payload: {e}"));
        let me = self.address();
        let context = cairn_node::sealing::context(&r.id().to_string(), output);
        let mut recipients = sealed::sealed_recipients(sealed).map_err(|e| fail(e.to_string()))?;
        recipients.sort();
        recipients.dedup();
        if recipients.contains(&me.0.0) {
            let key = sealed::unwrap_key(&self.0.payload_key, me.0.0, &context, sealed)
                .map_err(|e| fail(e.to_string()))?;
            let mut keys = self.0.data_keys.lock().expect("data keys");
            if keys.len() > 100_000 {
                keys.clear();
            }
            let entry = keys.entry(r.signing_hash()).or_default();
            if !entry.iter().any(|(o, _)| *o == output) {
                entry.push((output, key));
            }
            drop(keys);
            return sealed::open_with_key(&key, &context, sealed).map_err(|e| fail(e.to_string()));
        }
        if let Some((_, key)) = shared.iter().find(|(o, _)| *o == output)
            && let Ok(plain) = sealed::open_with_key(key, &context, sealed)
        {
            return Ok(plain);
        }
        let quorum = usize::from(
            self.0
                .chain
                .quorum()
                .await
                .map_err(|e| fail(e.to_string()))?
                .max(1),
        );
        let mut verifiers = 0;
        for id in &recipients {
            let role = self
                .0
                .chain
                .node(Address::from(*id))
                .await
                .map_err(|e| fail(e.to_string()))?
                .role;
            if role == Some(cairn_ledger::Role::Verifier) {
                verifiers += 1;
            }
        }
        if verifiers >= quorum {
            Err(FetchFailure::NotForMe(format!(
                "a private call's {what} payload, sealed to {verifiers} other verifiers, not to this one"
            )))
        } else {
            Err(fail(format!(
                "sealed to {verifiers} registered verifiers, fewer than the quorum of {quorum}"
            )))
        }
    }
}
