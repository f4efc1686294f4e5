// Checks a receipt in the browser with viem, trusting neither the explorer's server nor the
// node: the EIP-712 signature must recover to the node the receipt names, a batch-signed
// receipt's proof must lead to the root its node signed, and the receipt's leaf must lead to
// the batch root recorded on chain.
import {
  type Hex,
  concat,
  hashTypedData,
  isAddressEqual,
  keccak256,
  recoverTypedDataAddress,
} from "viem";

type Field = { name: string; type: string };
type TypedData = {
  types: Record<string, Field[]>;
  primaryType: string;
  domain: Record<string, unknown>;
  message: Record<string, unknown>;
};
export type WireReceipt = {
  typedData: TypedData;
  signature?: Hex;
  batchSignature?: { typedData: TypedData; signature: Hex; proof: Hex[] };
  signer: string;
};

export type Check = { label: string; ok: boolean; detail: string };

// viem wants integers of more than 53 bits as bigint; the receipt spells uint256 as decimal text.
function normalized(td: TypedData): TypedData {
  const fields = td.types[td.primaryType] ?? [];
  const message: Record<string, unknown> = { ...td.message };
  for (const f of fields) {
    const v = message[f.name];
    if (/^u?int\d*$/.test(f.type) && (typeof v === "string" || typeof v === "number")) {
      message[f.name] = BigInt(v);
    }
  }
  const { EIP712Domain: _domain, ...types } = td.types;
  return { ...td, types, message };
}

function hashOf(td: TypedData): Hex {
  const n = normalized(td);
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  return hashTypedData({ domain: n.domain as any, types: n.types as any, primaryType: n.primaryType, message: n.message as any });
}

async function recover(td: TypedData, signature: Hex): Promise<string> {
  const n = normalized(td);
  return recoverTypedDataAddress({
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    domain: n.domain as any,
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    types: n.types as any,
    primaryType: n.primaryType,
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    message: n.message as any,
    signature,
  });
}

/** OpenZeppelin StandardMerkleTree's leaf of one bytes32 value. */
export function leafOf(digest: Hex): Hex {
  return keccak256(keccak256(digest));
}

/** OpenZeppelin MerkleProof.processProof: pairs hashed in sorted order. */
export function processProof(leaf: Hex, proof: Hex[]): Hex {
  let node = leaf;
  for (const sibling of proof) {
    const [a, b] = BigInt(node) <= BigInt(sibling) ? [node, sibling] : [sibling, node];
    node = keccak256(concat([a, b]));
  }
  return node;
}

/** Every check, in order; the receipt is good only when all pass. */
export async function verifyReceipt(
  receipt: WireReceipt,
  batchRoot: string,
  proof: Hex[],
  settlement: string,
  chainId: number,
): Promise<Check[]> {
  const checks: Check[] = [];
  const td = receipt.typedData;
  const node = String(td.message.node ?? "");
  const domainOk =
    Number(td.domain.chainId) === chainId &&
    isAddressEqual(String(td.domain.verifyingContract) as Hex, settlement as Hex);
  checks.push({
    label: "Addressed to this deployment",
    ok: domainOk,
    detail: `chain ${String(td.domain.chainId)}, contract ${String(td.domain.verifyingContract)}`,
  });
  let digest: Hex;
  try {
    digest = hashOf(td);
  } catch (e) {
    checks.push({ label: "EIP-712 hash", ok: false, detail: String(e) });
    return checks;
  }
  checks.push({ label: "EIP-712 hash", ok: true, detail: digest });
  try {
    if (receipt.signature) {
      const who = await recover(td, receipt.signature);
      checks.push({
        label: "Signature recovers to the node",
        ok: isAddressEqual(who as Hex, node as Hex),
        detail: `recovered ${who}; the receipt names ${node}`,
      });
    } else if (receipt.batchSignature) {
      const bs = receipt.batchSignature;
      const who = await recover(bs.typedData, bs.signature);
      checks.push({
        label: "Micro-batch root signature recovers to the node",
        ok: isAddressEqual(who as Hex, node as Hex),
        detail: `recovered ${who}; the receipt names ${node}`,
      });
      const got = processProof(leafOf(digest), bs.proof);
      const want = String(bs.typedData.message.root);
      checks.push({
        label: "Proof leads to the signed micro-batch root",
        ok: got.toLowerCase() === want.toLowerCase(),
        detail: `computed ${got}; signed ${want}`,
      });
    } else {
      checks.push({ label: "Signature", ok: false, detail: "the receipt carries no signature" });
    }
  } catch (e) {
    checks.push({ label: "Signature", ok: false, detail: `does not recover: ${String(e)}` });
  }
  const got = processProof(leafOf(digest), proof);
  checks.push({
    label: "Included in the batch root on chain",
    ok: got.toLowerCase() === batchRoot.toLowerCase(),
    detail: `computed ${got}; the batch's root is ${batchRoot}`,
  });
  return checks;
}
