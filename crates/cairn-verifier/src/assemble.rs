//! Assembling a verifier from its parts: checked to be an active verifier, its registry endpoint
//! and declared profile brought up to date, its model cache, verdict store and API started, and
//! its pass over the chain running.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::{Address, B256};
use alloy_signer_local::PrivateKeySigner;
use cairn_attest::Attester;
use cairn_ledger::{Chain, LedgerError, Role};

use crate::{Reexecutor, VerdictStore, Verifier, VerifierConfig};

/// How a verifier checks.
#[derive(Clone, Debug)]
pub struct Checks {
    /// Fraction of each batch's receipts re-executed.
    pub sample_rate: f64,
    /// Seconds over which fetch failures must spread before they count as withholding.
    pub payload_window_secs: u64,
    /// Fetch attempts over that window (all must fail).
    pub payload_attempts: u32,
    /// Let node endpoints be loopback or private addresses (local networks only).
    pub allow_private_endpoints: bool,
    /// Largest |difference| accepted for tolerance profiles.
    pub tolerance: f64,
    /// Largest model re-executed, in bytes.
    pub max_model_bytes: u64,
    /// Accept dev (non-TEE) evidence in registrations (local networks only).
    pub allow_dev_evidence: bool,
}

/// A verifier to start: it keeps its state in `dir`, serves its API on `listener` (advertised as
/// `url`, which becomes its registry endpoint), and follows the chain.
pub struct Setup<'a> {
    /// The deployment followed.
    pub chain: Chain,
    /// The verifier's key.
    pub key: PrivateKeySigner,
    /// Its state dir.
    pub dir: &'a Path,
    /// The hub models come from.
    pub hub: &'a str,
    /// How it checks.
    pub checks: &'a Checks,
    /// The secret its sample is drawn with (kept in its state dir by the caller).
    pub secret: B256,
    /// The engine it re-executes on.
    pub engine: Arc<dyn cairn_engine::Engine>,
    /// Where its API listens.
    pub listener: tokio::net::TcpListener,
    /// Where it is reached (its registry endpoint).
    pub url: &'a str,
    /// Time between passes over the chain.
    pub tick: Duration,
    /// How a changed endpoint gets into the registry.
    pub endpoint_update: EndpointUpdate<'a>,
}

/// How a node's new endpoint gets into the registry.
pub enum EndpointUpdate<'a> {
    /// Governance moves it (the devnet holds the governor's key).
    Governor(&'a PrivateKeySigner),
    /// Fresh evidence approved by a quorum of verifiers, like a registration.
    Approved(&'a dyn Attester),
}

/// Why a verifier did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The key is not an active verifier of the deployment.
    #[error(
        "{0} is not an active verifier on this deployment; register it with `cairn node register --role verifier`"
    )]
    NotAVerifier(Address),
    /// The chain refused or could not be read.
    #[error(transparent)]
    Chain(#[from] LedgerError),
    /// Moving the endpoint needed approvals it did not get.
    #[error(transparent)]
    Registration(#[from] cairn_node::registration::RegistrationError),
    /// The verdict store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::StoreError),
    /// The hub's URL is not usable.
    #[error("hub: {0}")]
    Hub(String),
    /// The state dir.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Checks `key` is an active verifier, moves its registered endpoint to `url` when it moved,
/// and declares the profiles it re-executes on, so the network can count who checks what.
async fn take_seat(
    chain: &Chain,
    key: &PrivateKeySigner,
    url: &str,
    endpoint_update: EndpointUpdate<'_>,
    profile: &cairn_core::ExecutionProfile,
) -> Result<(), StartError> {
    let me = key.address();
    let info = chain.node(me).await?;
    if !info.active || info.role != Some(Role::Verifier) {
        return Err(StartError::NotAVerifier(me));
    }
    if info.endpoint != url {
        match endpoint_update {
            EndpointUpdate::Governor(gov) => {
                chain.set_endpoint_for(gov, me, url).await?;
            }
            EndpointUpdate::Approved(attester) => {
                cairn_node::registration::move_endpoint(
                    chain,
                    key,
                    Role::Verifier,
                    url,
                    attester,
                    Some(cairn_node::gateway_key(key, 1).config().encoded()),
                )
                .await?;
            }
        }
    }
    // The tensor engine's profile, and the language-model engine's (the same on every CPU).
    for profile in [profile.hash(), cairn_node::llm::profile().hash()] {
        if !chain.verifies_profile(me, profile).await? {
            chain.declare_profile(key, profile).await?;
        }
    }
    Ok(())
}

/// Starts the verifier `s` describes.
pub async fn start(s: Setup<'_>) -> Result<Verifier, StartError> {
    let Setup {
        chain,
        key,
        dir,
        hub,
        checks: check,
        secret,
        engine,
        listener,
        url,
        tick,
        endpoint_update,
    } = s;
    std::fs::create_dir_all(dir)?;
    take_seat(&chain, &key, url, endpoint_update, engine.profile()).await?;
    let hub_client =
        cairn_hub_api::HubClient::new(hub, None).map_err(|e| StartError::Hub(e.to_string()))?;
    let cache = cairn_node::cache::ModelCache::new(
        dir.join("models"),
        hub_client,
        engine,
        4 << 30,
        check.max_model_bytes,
    );
    let config = VerifierConfig {
        sample_rate: check.sample_rate,
        secret,
        payload_window: Duration::from_secs(check.payload_window_secs),
        payload_attempts: check.payload_attempts,
        max_fetch_bytes: 512 << 20,
        allow_private_endpoints: check.allow_private_endpoints,
        endpoint: url.to_string(),
        attestation: cairn_attest::Policy {
            allow_dev: check.allow_dev_evidence,
        },
        approval_ttl: Duration::from_secs(600),
        hub_url: hub.to_string(),
    };
    let store = VerdictStore::open(&dir.join("verdicts.sqlite"))?;
    let v = Verifier::new(
        chain,
        key,
        Reexecutor::new(cache, check.tolerance),
        store,
        config,
    );
    let app = crate::server::router(v.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(cairn_serve::LingeringListener::new(listener), app).await {
            tracing::error!(error = %e, "verifier API stopped");
        }
    });
    tokio::spawn(v.clone().run(tick));
    Ok(v)
}
