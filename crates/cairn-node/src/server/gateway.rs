//! The node's Oblivious HTTP gateway ([`cairn_relay::gateway`] in front of the node's own
//! routes, payments included: the x402 headers travel inside), with the envelope read within the
//! node's body limits and memory budget; and how a private call's payloads are kept.

use super::*;
use cairn_ohttp::OhttpError;

/// Marks a request that came through the gateway: its payloads are kept sealed to the
/// verifiers ([`crate::sealing`]), never in plaintext.
pub(crate) use cairn_relay::gateway::Oblivious;

/// How a call's payloads are kept.
pub(crate) enum Keeping {
    /// As they are (a direct call).
    Plain,
    /// Sealed to these verifiers' keys (a private call; none: not kept, no verification).
    Sealed(Option<Arc<crate::sealing::Keys>>),
}

impl Keeping {
    /// Applies to `entry` before it is logged.
    pub(crate) fn apply(&self, entry: &mut crate::log::Entry) -> Result<(), NodeError> {
        let Keeping::Sealed(keys) = self else {
            return Ok(());
        };
        let recipients: Vec<cairn_ohttp::sealed::Recipient> = keys
            .iter()
            .flat_map(|k| k.keys.iter())
            .map(|(a, c)| cairn_ohttp::sealed::Recipient { id: a.0.0, key: c })
            .collect();
        entry
            .seal_payloads(&recipients)
            .map_err(|e| NodeError::Internal(format!("sealing the payloads: {e}")))
    }
}

impl NodeState {
    /// How a call is kept: a private one (`oblivious`) sealed to the verifiers, refused (503)
    /// when the node cannot seal to enough of them, since its receipt could then not be checked.
    pub(super) async fn keeping(&self, oblivious: bool) -> Result<Keeping, NodeError> {
        if !oblivious {
            return Ok(Keeping::Plain);
        }
        match &self.0.verifier_keys {
            None => Ok(Keeping::Sealed(None)),
            Some(v) => v
                .current()
                .await
                .map(|k| Keeping::Sealed(Some(k)))
                .map_err(NodeError::Overloaded),
        }
    }
}

/// The gateway's routes, serving inner requests with `inner`.
pub(super) fn routes(state: NodeState, inner: Router) -> Router {
    let metrics = state.0.metrics.http.clone();
    Router::new()
        .route(cairn_ohttp::GATEWAY_PATH, get(keys).post(gateway))
        .with_state((state, inner))
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            cairn_serve::metrics::track,
        ))
}

/// `GET /.well-known/ohttp-gateway`: the key configuration (`application/ohttp-keys`).
async fn keys(State((s, _)): State<(NodeState, Router)>) -> Response {
    cairn_relay::gateway::keys(&s.0.ohttp)
}

impl From<OhttpError> for NodeError {
    fn from(e: OhttpError) -> Self {
        NodeError::Ohttp {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

/// `POST /.well-known/ohttp-gateway`: an encapsulated request.
async fn gateway(
    State((s, inner)): State<(NodeState, Router)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, NodeError> {
    let i = &s.0;
    let Some(chunked) = cairn_relay::gateway::chunked(&headers) else {
        return Err(NodeError::UnsupportedMediaType(format!(
            "the gateway takes {} or {} bodies; seal the request to the key configuration at GET {}",
            cairn_ohttp::REQUEST_TYPE,
            cairn_ohttp::CHUNKED_REQUEST_TYPE,
            cairn_ohttp::GATEWAY_PATH
        )));
    };
    let overhead = cairn_relay::gateway::envelope_overhead(i.limits.max_body_bytes);
    let (sealed, reading) = read_body(
        body,
        i.limits.max_body_bytes + overhead,
        i.limits.body_timeout,
        &i.body_budget,
    )
    .await
    .map_err(|e| read_error(e, i))?;
    // The envelope's budget goes before the inner request is served (which reads its body
    // against the budget again). A whole answer is held to be sealed: JSON tensors take a few
    // times their bytes.
    drop(reading);
    let answer_limit = i.limits.max_output_bytes.saturating_mul(4) + (1 << 20);
    Ok(cairn_relay::gateway::serve(&i.ohttp, inner, sealed, chunked, answer_limit).await?)
}
