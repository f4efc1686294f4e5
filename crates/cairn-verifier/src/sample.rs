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
        match self.fetch_payloads(base, r).await {
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
            Err(reason) => {
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
    ) -> Result<Payloads, String> {
        let urls = NodeUrls::new(base);
        let urls = &urls;
        // A language-model call's payloads are bounded by the protocol: more is never honest,
        // and is not read.
        let llm = r.claims.llm.is_some();
        let raw = |which: Payload| async move {
            let url = urls.payload(r.id(), which);
            let cap = match (llm, which) {
                (true, Payload::Input) => Some(cairn_node::llm::MAX_REQUEST_BYTES),
                (true, Payload::Output) => Some(cairn_node::llm::MAX_TRANSCRIPT_BYTES),
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
                return Err(format!(
                    "GET {url}: {status} {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ));
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
            safetensors_io::decode(&body).map_err(|e| format!("{} payload: {e}", which.as_str()))
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
