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
sol!(
    #[sol(all_derives)]
    Permit2,
    "../../contracts/artifacts/Permit2.json"
);
/// The `upto` proxy's bindings in their own module: its ABI names Permit2's structs, which
/// the generated code declares beside it.
pub mod upto_proxy {
    alloy_sol_types::sol!(
        #[sol(all_derives)]
        X402UptoPermit2Proxy,
        "../../contracts/artifacts/X402UptoPermit2Proxy.json"
    );
}
pub use upto_proxy::X402UptoPermit2Proxy;
/// The x402 `batch-settlement` contract's bindings (its ABI names its own structs).
pub mod batch_settlement {
    alloy_sol_types::sol!(
        #[sol(all_derives)]
        X402BatchSettlement,
        "../../contracts/artifacts/X402BatchSettlement.json"
    );
}
pub use batch_settlement::X402BatchSettlement;
/// The `batch-settlement` deposit collectors' bindings (errors and events, for decoding).
pub mod deposit_collectors {
    alloy_sol_types::sol!(
        #[sol(all_derives)]
        ERC3009DepositCollector,
        "../../contracts/artifacts/ERC3009DepositCollector.json"
    );
    alloy_sol_types::sol!(
        #[sol(all_derives)]
        Permit2DepositCollector,
        "../../contracts/artifacts/Permit2DepositCollector.json"
    );
}

/// Where the official x402 clients expect the contracts they sign for (the x402 package's
/// `constants.py`): the same address on every chain.
pub mod x402_addresses {
    use alloy_primitives::{Address, address};

    /// Permit2 (Uniswap's canonical deployment address).
    pub const PERMIT2: Address = address!("0x000000000022D473030F116dDEE9F6B43aC78BA3");
    /// The x402 `upto` scheme's Permit2 proxy.
    pub const UPTO_PERMIT2_PROXY: Address = address!("0x4020A4f3b7b90ccA423B9fabCc0CE57C6C240002");
    /// The x402 `batch-settlement` payment channels.
    pub const BATCH_SETTLEMENT: Address = address!("0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003");
    /// Its deposit collector for EIP-3009 tokens (`receiveWithAuthorization`).
    pub const ERC3009_DEPOSIT_COLLECTOR: Address =
        address!("0x4020806089470a89826cB9fB1f4059150b550004");
    /// Its deposit collector through Permit2.
    pub const PERMIT2_DEPOSIT_COLLECTOR: Address =
        address!("0x4020425FAf3B746C082C2f942b4E5159887B0005");
}

/// A compiled contract as committed under `contracts/artifacts`.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Artifact {
    contract_name: String,
    bytecode: String,
    deployed_bytecode: String,
}

/// The artifacts, embedded at build time.
pub const ARTIFACTS: [(&str, &str); 9] = [
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
    (
        "Permit2",
        include_str!("../../../contracts/artifacts/Permit2.json"),
    ),
    (
        "X402UptoPermit2Proxy",
        include_str!("../../../contracts/artifacts/X402UptoPermit2Proxy.json"),
    ),
    (
        "X402BatchSettlement",
        include_str!("../../../contracts/artifacts/X402BatchSettlement.json"),
    ),
    (
        "ERC3009DepositCollector",
        include_str!("../../../contracts/artifacts/ERC3009DepositCollector.json"),
    ),
    (
        "Permit2DepositCollector",
        include_str!("../../../contracts/artifacts/Permit2DepositCollector.json"),
    ),
];

fn artifact(name: &str) -> Artifact {
    let (_, text) = ARTIFACTS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no artifact named {name}"));
    let artifact: Artifact = serde_json::from_str(text).expect("committed artifact is valid JSON");
    assert_eq!(artifact.contract_name, name);
    artifact
}

fn hex_code(hex: &str) -> Bytes {
    alloy_primitives::hex::decode(hex.trim_start_matches("0x"))
        .expect("committed artifact has hex bytecode")
        .into()
}

/// The init code of the named contract (constructor arguments not included).
pub fn init_code(name: &str) -> Bytes {
    hex_code(&artifact(name).bytecode)
}

/// The runtime code of the named contract, for one placed at a fixed address without a
/// constructor (Permit2, the x402 proxies).
pub fn runtime_code(name: &str) -> Bytes {
    hex_code(&artifact(name).deployed_bytecode)
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
    if let Ok(e) = X402UptoPermit2Proxy::X402UptoPermit2ProxyErrors::abi_decode(data) {
        return format!("X402UptoPermit2Proxy.{e:?}");
    }
    if let Ok(e) = X402BatchSettlement::X402BatchSettlementErrors::abi_decode(data) {
        return format!("X402BatchSettlement.{e:?}");
    }
    if let Ok(e) =
        deposit_collectors::Permit2DepositCollector::Permit2DepositCollectorErrors::abi_decode(data)
    {
        return format!("Permit2DepositCollector.{e:?}");
    }
    if let Ok(e) =
        deposit_collectors::ERC3009DepositCollector::ERC3009DepositCollectorErrors::abi_decode(data)
    {
        return format!("ERC3009DepositCollector.{e:?}");
    }
    if let Ok(e) = Permit2::Permit2Errors::abi_decode(data) {
        return format!("Permit2.{e:?}");
    }
    if let Ok(r) = alloy_sol_types::Revert::abi_decode(data) {
        return format!("Error({:?})", r.reason);
    }
    if let Ok(p) = alloy_sol_types::Panic::abi_decode(data) {
        return format!("Panic({})", p.code);
    }
    format!("0x{}", alloy_primitives::hex::encode(data))
}
