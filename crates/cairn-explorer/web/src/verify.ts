// Checks a receipt in the browser with viem, not taking the node's word: the receipt is hashed
// here under Cairn's own EIP-712 types (pinned below, never the ones the receipt carries), its
// signature (or its micro-batch root's) must recover to the batch's node, and its leaf must lead
// to the batch root. The batch's node, its root, the chain id and the settlement contract are
// what this explorer's indexer read from the chain: the page says so.
import {
  type Hex,
  concat,
  createPublicClient,
  hashTypedData,
  http,
  isAddressEqual,
  keccak256,
  recoverMessageAddress,
  recoverTypedDataAddress,
  stringToBytes,
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

const f = (name: string, type: string): Field => ({ name, type });
const DOMAIN: Field[] = [f("name", "string"), f("version", "string"), f("chainId", "uint256"), f("verifyingContract", "address")];
/** Cairn's EIP-712 types (crates/cairn-receipt): a receipt is hashed under these only. */
const TYPES: Record<string, Record<string, Field[]>> = {
  Receipt: {
    EIP712Domain: DOMAIN,
    Receipt: [f("requestId", "bytes32"), f("model", "bytes32"), f("inputHash", "bytes32"), f("outputHash", "bytes32"),
      f("profileHash", "bytes32"), f("node", "address"), f("timestamp", "uint64"), f("price", "uint256"), f("paymentRef", "bytes32")],
  },
  LlmReceipt: {
    EIP712Domain: DOMAIN,
    LlmReceipt: [f("requestId", "bytes32"), f("model", "bytes32"), f("requestHash", "bytes32"), f("responseHash", "bytes32"),
      f("promptTokens", "uint32"), f("completionTokens", "uint32"), f("complete", "bool"), f("profileHash", "bytes32"),
      f("node", "address"), f("timestamp", "uint64"), f("price", "uint256"), f("paymentRef", "bytes32")],
  },
  ReceiptRoot: { EIP712Domain: DOMAIN, ReceiptRoot: [f("root", "bytes32"), f("count", "uint32")] },
};

/** The typed data with Cairn's own types for its primary type; `null` for any other type. */
function pinned(td: TypedData): TypedData | null {
  const types = TYPES[td.primaryType];
  return types ? { ...td, types } : null;
}

function domainOk(td: TypedData, chainId: number, settlement: string): boolean {
  const d = td.domain;
  return d.name === "Cairn" && d.version === "1" && Number(d.chainId) === chainId &&
    typeof d.verifyingContract === "string" && isAddressEqual(d.verifyingContract as Hex, settlement as Hex);
}

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
  batchNode: string,
  proof: Hex[],
  settlement: string,
  chainId: number,
): Promise<Check[]> {
  const checks: Check[] = [];
  const td = pinned(receipt.typedData);
  if (!td || td.primaryType === "ReceiptRoot") {
    return [{ label: "Receipt type", ok: false, detail: `not a Cairn receipt type: ${String(receipt.typedData?.primaryType)}` }];
  }
  const node = String(td.message.node ?? "");
  checks.push({
    label: "Addressed to this deployment",
    ok: domainOk(td, chainId, settlement),
    detail: `${String(td.domain.name)} v${String(td.domain.version)}, chain ${String(td.domain.chainId)}, contract ${String(td.domain.verifyingContract)}`,
  });
  checks.push({
    label: "Names the batch's node",
    ok: /^0x[0-9a-fA-F]{40}$/.test(node) && isAddressEqual(node as Hex, batchNode as Hex),
    detail: `the receipt names ${node}; the batch on chain is ${batchNode}'s`,
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
      const root = bs.typedData?.primaryType === "ReceiptRoot" ? pinned(bs.typedData) : null;
      if (!root || !domainOk(root, chainId, settlement)) throw new Error("the micro-batch seal is not a Cairn ReceiptRoot of this deployment");
      const who = await recover(root, bs.signature);
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

const getBatchAbi = [
  {
    type: "function",
    name: "getBatch",
    stateMutability: "view",
    inputs: [{ name: "id", type: "uint256" }],
    outputs: [
      {
        name: "",
        type: "tuple",
        components: [
          { name: "node", type: "address" },
          { name: "count", type: "uint32" },
          { name: "submittedAt", type: "uint64" },
          { name: "root", type: "bytes32" },
          { name: "fees", type: "uint256" },
          { name: "attestedAt", type: "uint64" },
          { name: "status", type: "uint8" },
          { name: "verifiers", type: "address[]" },
        ],
      },
    ],
  },
] as const;

/** A batch as the chain itself records it, read from this browser through `rpc`. */
export async function batchOnChain(rpc: string, chainId: number, settlement: string, id: number): Promise<{ node: string; root: string; status: string }> {
  const client = createPublicClient({ transport: http(rpc, { retryCount: 0, timeout: 10_000 }) });
  const onChain = await client.getChainId();
  if (onChain !== chainId) throw new Error(`the RPC serves chain ${onChain}, not ${chainId}`);
  const b = await client.readContract({ address: settlement as Hex, abi: getBatchAbi, functionName: "getBatch", args: [BigInt(id)] });
  if (/^0x0{40}$/i.test(b.node)) throw new Error(`the chain has no batch ${id}`);
  // Settlement.Status: 1 Submitted, 2 Attested, 3 Finalized stand; 4 Voided (proven wrong),
  // 5 Expired and 6 Lapsed (never attested) do not.
  const states = ["none", "submitted", "attested", "finalized", "voided", "expired", "lapsed"];
  const status = states[b.status] ?? `state ${b.status}`;
  if (b.status < 1 || b.status > 3) throw new Error(`batch ${id} is ${status} on chain: its receipts do not stand`);
  return { node: b.node, root: b.root, status };
}

/**
 * The deployment this browser first saw at this explorer (trust on first use): a later visit
 * whose explorer names another settlement contract, chain or RPC is flagged, since a receipt
 * checked against a contract the explorer chose proves nothing.
 */
export function pinnedDeployment(now: { settlement: string; chainId: number; rpc: string | null }): string | null {
  const key = "cairn-explorer-deployment";
  let seen: string | null = null;
  try {
    seen = localStorage.getItem(key);
    if (!seen) localStorage.setItem(key, JSON.stringify(now));
  } catch {
    return null;
  }
  if (!seen) return null;
  const was = JSON.parse(seen) as typeof now;
  const same = was.settlement?.toLowerCase() === now.settlement.toLowerCase() && was.chainId === now.chainId && was.rpc === now.rpc;
  return same ? null : `this explorer now names settlement ${now.settlement} on chain ${now.chainId} (RPC ${now.rpc ?? "none"}); on your first visit it named ${was.settlement} on chain ${was.chainId} (RPC ${was.rpc ?? "none"})`;
}

/**
 * A receipt's own signer, recovered here under Cairn's pinned types and checked against the
 * deployment (`null` when the receipt is not a Cairn receipt of this deployment or carries no
 * signature of its own).
 */
export async function receiptSigner(receipt: WireReceipt, settlement: string, chainId: number): Promise<string | null> {
  const td = pinned(receipt.typedData);
  if (!td || td.primaryType === "ReceiptRoot" || !domainOk(td, chainId, settlement)) return null;
  if (receipt.signature) return recover(td, receipt.signature);
  const b = receipt.batchSignature;
  if (!b) return null;
  const root = pinned(b.typedData);
  if (!root || root.primaryType !== "ReceiptRoot") return null;
  const leaf = leafOf(hashOf(td));
  if (processProof(leaf, b.proof).toLowerCase() !== String(root.message.root).toLowerCase()) return null;
  return recover(root, b.signature);
}

/**
 * A chat entry's signed run record: its id must be the keccak-256 of the record's text and its
 * EIP-191 signature over the id must recover to the entry the record names.
 */
export async function runRecordSigner(signed: { id: string; signature: string; record: string }): Promise<string | null> {
  if (keccak256(stringToBytes(signed.record)).toLowerCase() !== signed.id.toLowerCase()) return null;
  const signer = await recoverMessageAddress({ message: { raw: signed.id as Hex }, signature: signed.signature as Hex });
  const named = JSON.parse(signed.record).entry as string;
  return isAddressEqual(signer, named as Hex) ? signer : null;
}
