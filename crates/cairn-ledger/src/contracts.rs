//! Bindings generated from the committed artifacts (`contracts/artifacts/*.json`, built by
//! `scripts/contracts.sh`), the artifacts' init code, and revert decoding.

use alloy_primitives::Bytes;
use alloy_sol_types::{SolError, SolInterface, sol};

sol!(
    #[sol(all_derives)]
    CairnToken,
    "../../contracts/artifacts/CairnToken.json"
);
sol!(
    #[sol(all_derives)]
    NodeRegistry,
    "../../contracts/artifacts/NodeRegistry.json"
);
sol!(
    #[sol(all_derives)]
    Settlement,
    "../../contracts/artifacts/Settlement.json"
);
sol!(
    #[sol(all_derives)]
    Escrow,
    "../../contracts/artifacts/Escrow.json"
);

/// A compiled contract as committed under `contracts/artifacts`.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Artifact {
    contract_name: String,
    bytecode: String,
}

/// The four artifacts, embedded at build time.
pub const ARTIFACTS: [(&str, &str); 4] = [
    (
        "CairnToken",
        include_str!("../../../contracts/artifacts/CairnToken.json"),
    ),
    (
        "NodeRegistry",
        include_str!("../../../contracts/artifacts/NodeRegistry.json"),
    ),
    (
        "Settlement",
        include_str!("../../../contracts/artifacts/Settlement.json"),
    ),
    (
        "Escrow",
        include_str!("../../../contracts/artifacts/Escrow.json"),
    ),
];

/// The init code of the named contract (constructor arguments not included).
pub fn init_code(name: &str) -> Bytes {
    let (_, text) = ARTIFACTS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no artifact named {name}"));
    let artifact: Artifact = serde_json::from_str(text).expect("committed artifact is valid JSON");
    assert_eq!(artifact.contract_name, name);
    let hex = artifact.bytecode.trim_start_matches("0x");
    alloy_primitives::hex::decode(hex)
        .expect("committed artifact has hex bytecode")
        .into()
}

/// Names a revert: one of our contracts' custom errors, `Error(string)`, `Panic(uint256)`, or
/// the raw data.
pub fn decode_revert(data: &[u8]) -> String {
    if data.is_empty() {
        return "no revert data".into();
    }
    if let Ok(e) = Settlement::SettlementErrors::abi_decode(data) {
        return format!("Settlement.{e:?}");
    }
    if let Ok(e) = NodeRegistry::NodeRegistryErrors::abi_decode(data) {
        return format!("NodeRegistry.{e:?}");
    }
    if let Ok(e) = Escrow::EscrowErrors::abi_decode(data) {
        return format!("Escrow.{e:?}");
    }
    if let Ok(e) = CairnToken::CairnTokenErrors::abi_decode(data) {
        return format!("CairnToken.{e:?}");
    }
    if let Ok(r) = alloy_sol_types::Revert::abi_decode(data) {
        return format!("Error({:?})", r.reason);
    }
    if let Ok(p) = alloy_sol_types::Panic::abi_decode(data) {
        return format!("Panic({})", p.code);
    }
    format!("0x{}", alloy_primitives::hex::encode(data))
}
