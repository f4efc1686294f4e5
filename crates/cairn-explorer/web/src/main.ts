// The explorer's pages: one module, no framework. Every string from the API enters the page as
// a text node (h() below); the one exception, a model's Markdown description, is rendered by
// marked and sanitized by DOMPurify before it is inserted.
import DOMPurify from "dompurify";
import { marked } from "marked";
import type { Hex } from "viem";
import "./style.css";
import { type WireReceipt, batchOnChain, pinnedDeployment, receiptSigner, runRecordSigner, verifyReceipt } from "./verify";

// Raw HTML inside Markdown is shown as text: no element of the author's choosing is ever
// parsed, and DOMPurify still cleans what Markdown itself produces (links, images).
const escapeHtml = (t: string) =>
  t.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
marked.use({ renderer: { html: ({ text }: { text: string }) => escapeHtml(text) } });
const markdown = async (md: string) => DOMPurify.sanitize(await marked.parse(md ?? ""));

type Json = any; // eslint-disable-line @typescript-eslint/no-explicit-any
type Child = Node | string | number | null | undefined | false;

function h(tag: string, attrs: Record<string, string> = {}, ...children: Child[]): HTMLElement {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const link = (href: string, text: Child, attrs: Record<string, string> = {}) =>
  h("a", { href, "data-link": "", ...attrs }, text);
const short = (s: string) => (s && s.length > 16 ? `${s.slice(0, 10)}…${s.slice(-6)}` : s);
const time = (t: number) => {
  const d = new Date(t * 1000);
  return t && !Number.isNaN(d.getTime()) ? d.toISOString().replace("T", " ").slice(0, 19) + " UTC" : "—";
};
const tokens = (v: string) => {
  // cUSD has 6 decimals.
  const n = BigInt(v || "0");
  const whole = n / 1_000_000n;
  const frac = (n % 1_000_000n).toString().padStart(6, "0").replace(/0+$/, "");
  return frac ? `${whole}.${frac}` : `${whole}`;
};

function copyButton(value: string, label: string): HTMLElement {
  const b = h("button", { type: "button", class: "copy", "aria-label": `Copy ${label}` }, "Copy");
  b.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(value);
      b.textContent = "Copied";
    } catch {
      b.textContent = "Select and copy";
    }
  });
  return b;
}

const code = (s: string, label: string) => h("span", { class: "mono" }, h("code", {}, s), " ", copyButton(s, label));

function table(caption: string, head: string[], rows: Child[][]): HTMLElement {
  return h(
    "div",
    { class: "scroll", role: "region", "aria-label": caption, tabindex: "0" },
    h(
      "table",
      {},
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, ...head.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, ...(rows.length ? rows.map((r) => h("tr", {}, ...r.map((c) => h("td", {}, c))))
        : [h("tr", {}, h("td", { colspan: String(head.length) }, "Nothing yet."))])),
    ),
  );
}

function dl(pairs: [string, Child][]): HTMLElement {
  return h("dl", {}, ...pairs.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

class ApiError extends Error {
  constructor(public status: number, public code: string, message: string) {
    super(message);
  }
}

async function api(path: string): Promise<Json> {
  // A page that cannot load says so within seconds instead of waiting forever.
  const r = await fetch(path, { headers: { accept: "application/json" }, signal: AbortSignal.timeout(15_000) });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new ApiError(r.status, body.code ?? "error", body.message ?? r.statusText);
  return body;
}

function pager(base: string, params: URLSearchParams, offset: number, limit: number, got: number, total?: number) {
  const nav = h("nav", { class: "pager", "aria-label": "Pages" });
  const to = (o: number) => {
    const p = new URLSearchParams(params);
    p.set("offset", String(o));
    return `${base}?${p}`;
  };
  if (offset > 0) nav.append(link(to(Math.max(0, offset - limit)), "← Newer"));
  nav.append(h("span", {}, total !== undefined ? ` ${offset + 1}–${offset + got} of ${total} ` : ` from ${offset + 1} `));
  if (got === limit && (total === undefined || offset + got < total)) nav.append(link(to(offset + limit), "Older →"));
  return nav;
}

function barChart(title: string, points: { t: number; value: number }[], from: number, bucket: number, n: number, unit: string) {
  const sums = new Array(n).fill(0);
  for (const p of points) {
    const i = Math.floor((p.t - from) / bucket);
    if (i >= 0 && i < n) sums[i] += p.value;
  }
  const max = Math.max(1, ...sums);
  const total = sums.reduce((a, b) => a + b, 0);
  const w = 600, hgt = 120, bw = w / n;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${hgt + 16}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${title}: ${total} ${unit} in the last ${n} buckets`);
  sums.forEach((v, i) => {
    if (!v) return;
    const r = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    const bh = Math.max(1, (v / max) * hgt);
    r.setAttribute("x", String(i * bw + 1));
    r.setAttribute("y", String(hgt - bh));
    r.setAttribute("width", String(Math.max(1, bw - 2)));
    r.setAttribute("height", String(bh));
    r.setAttribute("class", "bar");
    const tip = document.createElementNS("http://www.w3.org/2000/svg", "title");
    tip.textContent = `${time(from + i * bucket)}: ${v} ${unit}`;
    r.append(tip);
    svg.append(r);
  });
  const axis = document.createElementNS("http://www.w3.org/2000/svg", "text");
  axis.setAttribute("x", "0");
  axis.setAttribute("y", String(hgt + 14));
  axis.setAttribute("class", "axis");
  axis.textContent = `max ${max} per bucket`;
  svg.append(axis);
  return h("figure", { class: "chart", "data-total": String(total) }, h("figcaption", {}, `${title}: `, h("strong", { class: "total" }, String(total)), ` ${unit}`), svg);
}

async function home(main: HTMLElement) {
  const [s, a, b] = await Promise.all([api("/api/v1/status"), api("/api/v1/activity?bucket=minute&buckets=60"), api("/api/v1/batches?limit=10")]);
  main.append(
    h("h1", {}, "Network"),
    h(
      "ul",
      { class: "cards" },
      h("li", {}, h("strong", { id: "calls" }, String(s.calls)), " calls in batches"),
      h("li", {}, h("strong", {}, `${s.nodesActive}/${s.nodes}`), " inference nodes active"),
      h("li", {}, h("strong", {}, `${s.verifiersActive}/${s.verifiers}`), " verifiers active"),
      h("li", {}, h("strong", {}, String(s.models)), " models"),
      h("li", {}, h("strong", {}, tokens(s.feesPaid)), " cUSD paid out"),
      h("li", {}, h("strong", {}, String(s.indexedBlock ?? "—")), " last block indexed"),
    ),
    barChart("Calls per minute, last hour", a.callsByModel, a.from, a.bucket, 60, "calls"),
    batchTable("Latest batches", b.batches),
    h("p", {}, "Chain ", String(s.chainId), ", settlement ", code(s.settlement, "settlement address")),
  );
}

function batchTable(caption: string, batches: Json[]) {
  return table(
    caption,
    ["Batch", "Node", "Receipts", "Fees (cUSD)", "Submitted", "Status", "Receipts indexed"],
    batches.map((b: Json) => [
      link(`/batches/${b.id}`, `#${b.id}`),
      link(`/nodes/${b.node}`, short(b.node)),
      b.count,
      tokens(b.fees),
      time(b.ts),
      h("span", { class: `status ${b.status}` }, b.status),
      b.listing,
    ]),
  );
}

async function models(main: HTMLElement, params: URLSearchParams) {
  const limit = 50;
  const offset = Number(params.get("offset") ?? 0) || 0;
  const q = new URLSearchParams();
  for (const k of ["q", "task", "tag"]) if (params.get(k)) q.set(k, params.get(k)!);
  const list = await api(`/api/v1/models?${q}&limit=${limit}&offset=${offset}`);
  const form = h(
    "form",
    { action: "/models", method: "get", role: "search", class: "search" },
    h("label", { for: "q" }, "Search"),
    h("input", { id: "q", name: "q", type: "search", value: params.get("q") ?? "" }),
    h("label", { for: "task" }, "Task"),
    h("input", { id: "task", name: "task", value: params.get("task") ?? "" }),
    h("label", { for: "tag" }, "Tag"),
    h("input", { id: "tag", name: "tag", value: params.get("tag") ?? "" }),
    h("button", { type: "submit" }, "Filter"),
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const p = new URLSearchParams();
    for (const [k, v] of new FormData(form as HTMLFormElement)) if (String(v)) p.set(k, String(v));
    go(`/models?${p}`);
  });
  main.append(
    h("h1", {}, "Models"),
    form,
    table(
      "Models on the hub",
      ["Name", "Task", "Tags", "Calls", "Owner"],
      list.models.map((m: Json) => [
        link(`/models/${encodeURIComponent(m.name)}`, m.name),
        m.task ? link(`/models?task=${encodeURIComponent(m.task)}`, m.task) : "—",
        h("span", {}, ...m.tags.map((t: string) => link(`/models?tag=${encodeURIComponent(t)}`, t, { class: "tag" }))),
        m.calls,
        short(m.owner),
      ]),
    ),
    pager("/models", q, offset, limit, list.models.length, list.total),
  );
}

async function model(main: HTMLElement, name: string) {
  const m = await api(`/api/v1/models/${encodeURIComponent(name)}`);
  const d = m.detail;
  const desc = h("div", { class: "markdown" });
  desc.innerHTML = await markdown(d.description);
  main.append(
    h("h1", {}, d.name),
    dl([
      ["Owner", code(d.owner, "owner")],
      ["Task", d.task ?? "—"],
      ["License", d.license ?? "—"],
      ["Tags", (d.tags ?? []).join(", ") || "—"],
      ["Latest release", d.latest ?? "none published"],
      ["Calls", h("span", { id: "model-calls" }, String(m.calls))],
      ["Active nodes serving it", m.nodes.length ? h("span", {}, ...m.nodes.map((n: string) => link(`/nodes/${n}`, short(n)))) : "none seen yet"],
    ]),
    h("h2", {}, "Description"),
    desc,
    h("h2", {}, "Use it"),
    ...[["cairn CLI", m.examples.cli], ["curl (KServe v2)", m.examples.curl], ["KServe Python client", m.examples.python], ["openai (Python)", m.examples.openai]]
      .filter(([, v]) => v)
      .flatMap(([k, v]) => [h("h3", {}, k), h("pre", {}, h("code", {}, v)), copyButton(v, `${k} example`)]),
    h("h2", {}, "Releases"),
  );
  for (const r of d.releases ?? []) {
    const notes = h("div", { class: "markdown" });
    notes.innerHTML = await markdown(r.notes);
    main.append(
      h("section", { "aria-label": `Release ${r.version}` },
        h("h3", {}, `${d.name}@${r.version}`, r.published_at ? ` · published ${time(r.published_at)}` : " · draft"),
        notes,
        table(`Files of ${r.version}`, ["Path", "CID", "Size", "Type"], (r.files ?? []).map((f: Json) => [f.path, code(f.cid, `CID of ${f.path}`), `${f.size} B`, f.media_type])),
        ...(r.files ?? []).filter((f: Json) => f.onnx).map((f: Json) => signature(f.path, f.onnx)),
        ...(r.files ?? []).filter((f: Json) => f.gguf).map((f: Json) => h("details", {}, h("summary", {}, `GGUF metadata of ${f.path}`), h("pre", {}, JSON.stringify(f.gguf, null, 2)))),
      ),
    );
  }
}

function signature(path: string, onnx: Json) {
  const io = (xs: Json[]) => (xs ?? []).map((x: Json) => [x.name, x.type ?? x.elem_type ?? "", JSON.stringify(x.shape ?? [])]);
  return h(
    "div",
    {},
    table(`Inputs of ${path}`, ["Name", "Type", "Shape"], io(onnx.inputs)),
    table(`Outputs of ${path}`, ["Name", "Type", "Shape"], io(onnx.outputs)),
    h("p", { class: "muted" }, `IR ${onnx.ir_version ?? "?"}, producer ${onnx.producer_name ?? "?"} ${onnx.producer_version ?? ""}, opsets ${(onnx.opsets ?? []).map((o: Json) => `${o.domain || "ai.onnx"} ${o.version}`).join(", ")}`),
  );
}

function nodeRow(n: Json): Child[] {
  const r = n.registry ?? {};
  const age = r.lastHeartbeat ? `${Math.max(0, Math.round(Date.now() / 1000 - r.lastHeartbeat))} s ago` : "never";
  return [
    link(`/nodes/${n.address}`, short(n.address)),
    n.role,
    h("span", { class: `status ${n.active ? "active" : "inactive"}` }, n.active ? "active" : "inactive"),
    `${tokens(r.stake ?? "0")}`,
    n.devEvidence ? h("span", { class: "warn" }, "dev (not a TEE)") : `${n.attestationKind ?? "TEE"} ${short(r.measurement ?? "")}`,
    age,
    n.latencyMs === null || n.latencyMs === undefined ? "no answer" : `${n.latencyMs} ms`,
    n.role === "verifier" ? `${n.verdicts} verdicts` : `${n.receipts} receipts`,
    n.slashes,
  ];
}

async function nodes(main: HTMLElement) {
  const list = await api("/api/v1/nodes?limit=100");
  const head = ["Address", "Role", "State", "Stake", "Attestation", "Heartbeat", "Latency", "Work", "Slashes"];
  main.append(
    h("h1", {}, "Nodes and verifiers"),
    table("Inference nodes", head, list.nodes.filter((n: Json) => n.role === "inference").map(nodeRow)),
    table("Verifiers", head, list.nodes.filter((n: Json) => n.role === "verifier").map(nodeRow)),
  );
}

async function node(main: HTMLElement, address: string) {
  const p = await api(`/api/v1/nodes/${encodeURIComponent(address)}`);
  const n = p.node, r = n.registry ?? {}, live = n.live ?? {};
  main.append(
    h("h1", {}, n.role === "verifier" ? "Verifier " : "Node ", h("code", {}, n.address)),
    dl([
      ["State", n.active ? "active" : "inactive"],
      ["Endpoint", r.endpoint ?? "—"],
      ["Stake", `${tokens(r.stake ?? "0")} cUSD (unbonding ${tokens(r.unbonding ?? "0")})`],
      ["Attestation", n.devEvidence ? h("span", { class: "warn" }, "development evidence: a software key, not a TEE") : `${n.attestationKind ?? "evidence not read"}, measurement ${r.measurement}`],
      ["Evidence served", n.attestationKind ? `${n.attestationKind}: the evidence the registry records (its digest matches)` : "not read, or not the registered evidence"],
      ["Evidence digest", r.evidenceDigest ? code(r.evidenceDigest, "evidence digest") : "—"],
      ["Last heartbeat", time(r.lastHeartbeat)],
      ["Info route latency (as the indexer saw it)", n.latencyMs === null || n.latencyMs === undefined ? "no answer" : `${n.latencyMs} ms`],
      ["Profile served", live.profile ? JSON.stringify(live.profile) : "—"],
      ["Receipts signed (in batches)", n.receipts],
      ["Batches", n.batches],
      ["Verdicts", n.verdicts],
      ["Slashed", n.slashes],
    ]),
    batchTable("Latest batches", p.batches),
    table("Registry events", ["Block", "Time", "Event", "Fields"], p.events.map((e: Json) => [e.block, time(e.ts), e.name, JSON.stringify(e.data)])),
  );
}

async function batches(main: HTMLElement, params: URLSearchParams) {
  const limit = 50;
  const offset = Number(params.get("offset") ?? 0) || 0;
  const list = await api(`/api/v1/batches?limit=${limit}&offset=${offset}`);
  main.append(h("h1", {}, "Batches"), batchTable("Batches, newest first", list.batches), pager("/batches", new URLSearchParams(), offset, limit, list.batches.length, list.total));
}

function receiptRows(receipts: Json[]) {
  return receipts.map((r: Json) => [
    link(`/receipts/${r.requestId}`, short(r.requestId)),
    r.modelNames.length ? r.modelNames.join(", ") : short(r.model),
    r.kind,
    tokens(r.price),
    time(r.ts),
    r.seal,
  ]);
}

async function batch(main: HTMLElement, id: string, params: URLSearchParams) {
  const limit = 50;
  const offset = Number(params.get("offset") ?? 0) || 0;
  const p = await api(`/api/v1/batches/${encodeURIComponent(id)}?limit=${limit}&offset=${offset}`);
  const b = p.batch;
  main.append(
    h("h1", {}, `Batch #${b.id}`),
    dl([
      ["Status", h("span", { class: `status ${b.status}`, id: "batch-status" }, b.status)],
      ["Node", link(`/nodes/${b.node}`, b.node)],
      ["Root", code(b.root, "root")],
      ["Receipts", b.count],
      ["Fees", `${tokens(b.fees)} cUSD`],
      ["Receipts indexed", b.listingError ? `${b.listing}: ${b.listingError}` : b.listing],
    ]),
    h("h2", {}, "Timeline"),
    h("ol", { class: "timeline" }, ...p.timeline.map((e: Json) => h("li", {}, h("strong", {}, e.name.replace(/^Batch/, "")), ` at ${time(e.ts)} (block ${e.block}) `, h("code", {}, JSON.stringify(e.data))))),
    table("Verifier verdicts (as each verifier reports it)", ["Verifier", "Outcome", "Sampled", "Confirmed", "Faults", "Unverifiable", "Frauds"], p.verdicts.map((v: Json) => [link(`/nodes/${v.verifier}`, short(v.verifier)), v.outcome, v.sampled, v.confirmed, v.faults, v.unverifiable, v.frauds])),
    table("Receipts", ["Request", "Model", "Kind", "Price", "Time", "Seal"], receiptRows(p.receipts)),
    pager(`/batches/${b.id}`, new URLSearchParams(), offset, limit, p.receipts.length, b.count),
  );
}

async function receipt(main: HTMLElement, id: string) {
  const [p, s] = await Promise.all([api(`/api/v1/receipts/${encodeURIComponent(id)}`), api("/api/v1/status")]);
  const m = p.receipt.typedData.message;
  const f = p.flow;
  const result = h("p", { id: "verify-result", class: "pending", role: "status" }, "Checking in your browser…");
  const checks = h("ul", { class: "checks" });
  main.append(
    h("h1", {}, "Receipt ", h("code", {}, short(p.summary.requestId))),
    h("section", { "aria-labelledby": "verify-h" }, h("h2", { id: "verify-h" }, "Checked in this browser (viem)"), result, checks,
      h("p", { class: "muted", id: "verify-source" }, "…")),
    dl([
      ["Request id", code(p.summary.requestId, "request id")],
      ["Model", h("span", {}, p.summary.modelNames.map((n: string) => n).join(", ") || "—", " ", code(p.summary.model, "model CID"))],
      ["Node", link(`/nodes/${p.summary.node}`, p.summary.node)],
      ["Kind", p.summary.kind],
      ["Time", time(p.summary.ts)],
      ["Price", `${tokens(p.summary.price)} cUSD`],
      ["Input / request hash", h("code", {}, m.inputHash ?? m.requestHash)],
      ["Output / response hash", h("code", {}, m.outputHash ?? m.responseHash)],
      ["Profile", h("code", {}, JSON.stringify(p.receipt.profile))],
      ["Seal", p.summary.seal === "own" ? "signed on its own" : p.summary.seal === "batch" ? "signed micro-batch root + proof" : "does not verify (the node's listing carries a spoiled seal; the node committed this receipt on chain all the same)"],
      ["Batch", h("span", {}, link(`/batches/${p.batch.id}`, `#${p.batch.id}`), ` (${p.batch.status}), root `, h("code", {}, p.batch.root))],
      ["Inclusion proof", h("code", {}, p.proof.join(" ") || "(single leaf)")],
    ]),
    h("h2", {}, "Where the payment went"),
    h(
      "ol",
      { class: "flow", "aria-label": "Payment flow" },
      h("li", {}, "Payer → ", f.paymentRef.match(/^0x0+$/) ? "no payment named (the node signed the call as unpaid)" : h("span", {}, "the payment the node's receipt names ", h("code", {}, short(f.paymentRef)))),
      h("li", {}, `→ node's payment vault ${f.vault ?? "(not deployed)"}: ${tokens(f.price)} cUSD, the price the node signed`),
      f.settled
        ? h("li", {}, `→ at finalization: node ${tokens(f.toNode ?? "0")}, verifiers ${tokens(f.toVerifiers ?? "0")} (${f.verifiers.map(short).join(", ") || "—"}), treasury ${tokens(f.toTreasury ?? "0")} cUSD`)
        : h("li", {}, "→ not paid out yet (the batch is not finalized)"),
    ),
    table("Verifier samples of this receipt", ["Verifier", "Finding", "Detail"], p.samples.map((x: Json) => [link(`/nodes/${x.verifier}`, short(x.verifier)), x.kind ?? x.outcome ?? "", x.comparison ?? x.reason ?? ""])),
    h("details", {}, h("summary", {}, "The receipt as its node served it"), h("pre", {}, JSON.stringify(p.receipt, null, 2))),
  );
  // The batch's node and root: from the chain itself through the RPC when one is configured,
  // else as this explorer read them (and the page says which).
  let batchRef = { node: p.batch.node as string, root: p.batch.root as string };
  const source = document.getElementById("verify-source")!;
  const pre: { label: string; ok: boolean; detail: string }[] = [];
  const moved = pinnedDeployment({ settlement: s.settlement, chainId: s.chainId, rpc: s.browserRpc ?? null });
  if (moved) pre.push({ label: "Same deployment as on your first visit", ok: false, detail: moved });
  if (s.browserRpc) {
    try {
      const onChain = await batchOnChain(s.browserRpc, s.chainId, s.settlement, p.batch.id);
      batchRef = { node: onChain.node, root: onChain.root };
      source.textContent = `Batch #${p.batch.id}'s node and root were read from the chain by this browser (${s.browserRpc}); the receipt is hashed here under Cairn's EIP-712 types and its signature recovered here. The settlement contract and chain id are this explorer's (check them with cairn chain status).`;
      pre.push({ label: "Batch read from the chain", ok: true, detail: `${onChain.status}, node ${batchRef.node}, root ${batchRef.root}` });
    } catch (e) {
      pre.push({ label: "Batch read from the chain", ok: false, detail: `the chain could not be read at ${s.browserRpc}: ${String(e).slice(0, 200)}` });
    }
  } else {
    source.textContent = "The receipt is hashed here under Cairn's EIP-712 types and its signature recovered here. The batch's node and root it is checked against are what this explorer read from the chain (it has no chain RPC for this browser); check them with cairn receipt settled for full independence.";
  }
  const results = pre.concat(await verifyReceipt(p.receipt as WireReceipt, batchRef.root, batchRef.node, p.proof as Hex[], s.settlement, s.chainId));
  for (const c of results) checks.append(h("li", { class: c.ok ? "ok" : "bad" }, c.ok ? "✔ " : "✘ ", h("strong", {}, c.label), ": ", c.detail));
  const ok = results.every((c) => c.ok);
  result.className = ok ? "ok" : "bad";
  result.textContent = !ok
    ? "NOT verified: see the failed checks below."
    : s.browserRpc
      ? "Verified: the signature and the inclusion proof check out against the batch on chain."
      : "Matches this explorer's data: the signature and the inclusion proof check out against the batch root this explorer reports (no chain RPC to read it from here).";
}

/** Points grouped by key (at most 8 keys, the busiest first). */
function perKey(points: Json[]): [string, Json[]][] {
  const by = new Map<string, Json[]>();
  for (const p of points) by.set(p.key, [...(by.get(p.key) ?? []), p]);
  const total = (ps: Json[]) => ps.reduce((a: number, p: Json) => a + p.value, 0);
  return [...by.entries()].sort((a, b) => total(b[1]) - total(a[1])).slice(0, 8);
}

async function activity(main: HTMLElement, params: URLSearchParams) {
  const bucket = ["minute", "hour", "day"].includes(params.get("bucket") ?? "") ? params.get("bucket")! : "minute";
  const n = 60;
  const a = await api(`/api/v1/activity?bucket=${bucket}&buckets=${n}`);
  const v = (k: string) => a.verification.filter((p: Json) => p.key === k);
  main.append(
    h("h1", {}, "Network activity"),
    h("nav", { "aria-label": "Bucket" }, ...["minute", "hour", "day"].map((b) => link(`/activity?bucket=${b}`, `per ${b}`, b === bucket ? { "aria-current": "page" } : {}))),
    barChart(`Calls per ${bucket}`, a.callsByModel, a.from, a.bucket, n, "calls"),
    ...perKey(a.callsByModel).map(([k, pts]) =>
      barChart(`Calls of model ${short(k)} per ${bucket}`, pts, a.from, a.bucket, n, "calls")),
    ...perKey(a.callsByNode).map(([k, pts]) =>
      barChart(`Calls served by node ${short(k)} per ${bucket}`, pts, a.from, a.bucket, n, "calls")),
    barChart(`Samples re-executed per ${bucket} (as verifiers report)`, v("samples"), a.from, a.bucket, n, "samples"),
    barChart(`Samples confirmed per ${bucket} (as verifiers report)`, v("confirmed"), a.from, a.bucket, n, "confirmed"),
    barChart(`Frauds proven on chain per ${bucket}`, v("frauds proven"), a.from, a.bucket, n, "frauds"),
    barChart(`Fraud verdicts reported by verifiers per ${bucket}`, v("frauds reported"), a.from, a.bucket, n, "verdicts"),
    barChart(`Fees paid out per ${bucket} (token units)`, a.fees, a.from, a.bucket, n, "units"),
    table("Calls by model", ["Bucket", "Model CID", "Calls"], a.callsByModel.map((p: Json) => [time(p.t), short(p.key), p.value])),
    table("Calls by node", ["Bucket", "Node", "Calls"], a.callsByNode.map((p: Json) => [time(p.t), link(`/nodes/${p.key}`, short(p.key)), p.value])),
    table("Settlement latency", ["Finalized", "Batch", "Submitted → finalized"], a.settlementLatency.map((p: Json) => [time(p.t), link(`/batches/${p.key}`, `#${p.key}`), `${p.value} s`])),
  );
}


/** One turn of the chat page's conversation (kept while the page's tab lives). */
type Turn = { user: string; answer?: string; cairn?: Json; error?: string; checks?: Check[] };
type Check = { label: string; ok: boolean; detail: string };
const conversation: Turn[] = [];

/** Checks a turn's run record and receipts in this browser. */
async function checkTurn(entry: string, cairn: Json, s: Json): Promise<Check[]> {
  const checks: Check[] = [];
  const r = await fetch(`${entry}/v1/runs/${encodeURIComponent(cairn.run)}`);
  if (!r.ok) return [{ label: "Run record", ok: false, detail: `the entry answered ${r.status}` }];
  const signed = await r.json();
  const signer = await runRecordSigner(signed);
  checks.push({
    label: "Run record signed by the entry",
    ok: signer !== null && signer.toLowerCase() === String(cairn.entry).toLowerCase(),
    detail: signer ? `id ${signed.id}, signed by ${signer}` : "its id is not its text's keccak-256, or its signature is not the entry's",
  });
  const record = JSON.parse(signed.record);
  for (const step of record.steps as Json[]) {
    if (!step.run) continue;
    const who = await receiptSigner(step.run.receipt as WireReceipt, s.settlement, s.chainId);
    checks.push({
      label: `Receipt of ${step.id} signed by its node`,
      ok: who !== null && who.toLowerCase() === String(step.run.node.address).toLowerCase(),
      detail: who ? `${step.run.model.reference} on ${who}` : "not a receipt of this deployment signed by the node named",
    });
  }
  for (const [name, call] of [["parse", record.parse], ["answer", record.answer.llm]] as [string, Json][]) {
    if (!call) continue;
    const who = await receiptSigner(call.receipt as WireReceipt, s.settlement, s.chainId);
    checks.push({
      label: `Language-model receipt (${name}) signed by its node`,
      ok: who !== null && who.toLowerCase() === String(call.node.address).toLowerCase(),
      detail: who ? `${call.model} on ${who}` : "not a receipt of this deployment signed by the node named",
    });
  }
  return checks;
}

function turnView(t: Turn, i: number): HTMLElement {
  const state = t.error ? "error" : t.cairn ? "done" : "working";
  const box = h("article", { class: "turn", "data-state": state, "aria-label": `Turn ${i + 1}` }, h("pre", { class: "user" }, t.user));
  if (t.error) {
    box.append(h("p", { class: "error", role: "alert" }, t.error));
    return box;
  }
  if (!t.cairn) {
    box.append(h("p", { class: "pending", role: "status" }, "Parsing, computing on the network's nodes, answering…"));
    return box;
  }
  const c = t.cairn;
  box.append(h("pre", { class: "answer" }, t.answer ?? ""));
  const task = c.task;
  box.append(
    h("h3", {}, "Task object"),
    dl([
      ["Goal", task.goal || "—"],
      ["Parsed by", `rules${task.parsed_by.llm ? ` + ${task.parsed_by.llm}` : ""}`],
      ["Noise ignored", task.noise.length ? h("ul", { class: "noise" }, ...task.noise.map((n: Json) => h("li", {}, h("q", {}, n.text), ` (${n.reason})`))) : "none"],
      ["Not computable", task.uncomputable.length ? task.uncomputable.map((u: Json) => `${u.need}: ${u.reason}`).join("; ") : "—"],
      ["Missing", task.missing.length ? task.missing.join("; ") : "—"],
    ]),
    table("Steps", ["Step", "Skill", "Result", "Model", "Node", "Receipt", "Charged"], c.steps.map((st: Json) => [
      st.id,
      st.skill,
      st.result ?? `failed: ${st.error ?? ""}`,
      st.model ?? "exact, by the entry",
      st.node ? link(`/nodes/${st.node}`, short(st.node)) : "—",
      st.receipt ? link(`/receipts/${st.receipt}`, short(st.receipt)) : "—",
      st.charged ? `${st.charged} (${st.scheme})` : "0",
    ])),
    dl([
      ["Total charged", h("span", { class: "total" }, `${c.total_charged} token units`)],
      ["Run record", h("span", {}, link(`/runs/${c.run}`, h("code", { class: "run" }, c.run)), " ", copyButton(c.run, "run record id"))],
    ]),
  );
  const checks = h("ul", { class: "checks" });
  for (const k of t.checks ?? []) checks.append(h("li", { class: k.ok ? "ok" : "bad" }, k.ok ? "✔ " : "✘ ", h("strong", {}, k.label), ": ", k.detail));
  box.append(h("h3", {}, "Checked in this browser (viem)"), checks,
    h("p", { class: "muted" }, "Settlement: each receipt's page shows its batch once this explorer has indexed it; `cairn run verify` checks the whole record against the chain."));
  return box;
}

async function chat(main: HTMLElement) {
  const s = await api("/api/v1/status");
  main.append(h("h1", {}, "Chat"));
  if (!s.entry) {
    main.append(h("p", { class: "error", role: "alert" }, "This explorer has no chat entry (start it with cairn explorer serve --entry URL; cairn devnet does)."));
    return;
  }
  main.append(h("p", { class: "muted" }, `Messages go to the chat entry at ${s.entry}: it separates the goal, constraints, computations and noise, runs each computation exactly or on a hub model at a node (paid, with a receipt), then answers with a signed run record.`));
  const log = h("section", { id: "conversation", "aria-label": "Conversation" });
  const area = h("textarea", { id: "message", name: "message", rows: "6", required: "" }) as HTMLTextAreaElement;
  const send = h("button", { type: "submit" }, "Send") as HTMLButtonElement;
  const form = h("form", { class: "chat" }, h("label", { for: "message" }, "Your message"), area, send);
  const show = () => log.replaceChildren(...conversation.map(turnView));
  show();
  main.append(log, form);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = area.value;
    if (!text.trim()) return;
    const history = conversation.flatMap((t) => (t.answer ? [{ role: "user", content: t.user }, { role: "assistant", content: t.answer }] : []));
    const turn: Turn = { user: text };
    conversation.push(turn);
    area.value = "";
    send.disabled = true;
    show();
    try {
      const r = await fetch(`${s.entry}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: "cairn-entry", messages: [...history, { role: "user", content: text }] }),
      });
      const body = await r.json();
      if (!r.ok) throw new Error(body.message ?? `the entry answered ${r.status}`);
      turn.answer = body.choices[0].message.content;
      turn.cairn = body.cairn;
      turn.checks = await checkTurn(s.entry, body.cairn, s);
    } catch (err) {
      turn.error = err instanceof Error ? err.message : String(err);
    }
    send.disabled = false;
    show();
  });
}

/** A run record by id, fetched from the chat entry and shown as its turn, checked here. */
async function runPage(main: HTMLElement, id: string) {
  const s = await api("/api/v1/status");
  if (!s.entry) throw new ApiError(404, "not_found", "This explorer has no chat entry to read run records from.");
  const r = await fetch(`${s.entry}/v1/runs/${encodeURIComponent(id)}`);
  if (!r.ok) {
    const body = await r.json().catch(() => ({}));
    throw new ApiError(r.status, body.code ?? "entry", body.message ?? `the entry answered ${r.status}`);
  }
  const signed = await r.json();
  const record = JSON.parse(signed.record);
  const summary = {
    run: signed.id,
    entry: record.entry,
    task: { ...record.task, noise: record.task.noise.map((n: Json) => ({ ...n, text: segmentText(record.task, n.segment) })) },
    steps: record.steps.map((st: Json) => ({
      id: st.id, skill: st.skill, result: st.result, error: st.error,
      model: st.run?.model.reference, node: st.run?.node.address,
      receipt: st.run ? st.run.receipt.typedData.message.requestId : null,
      charged: st.run?.payment.charged, scheme: st.run?.payment.scheme,
    })),
    total_charged: record.total_charged,
  };
  // The record keeps the message as its segments (and the whole message's SHA-256).
  const turn: Turn = { user: record.task.segments.map((x: Json) => x.text).join("\n"), answer: record.answer.text, cairn: summary };
  turn.checks = await checkTurn(s.entry, summary, s);
  main.append(h("h1", {}, "Run ", h("code", {}, short(signed.id))), dl([
    ["Entry", h("code", {}, record.entry)],
    ["Time", time(record.created_at)],
    ["Message SHA-256", h("code", {}, record.input_sha256)],
    ["Edges", record.edges.map((e: string[]) => `${e[0]} → ${e[1]}`).join(", ")],
  ]), turnView(turn, 0));
}

function segmentText(task: Json, n: number): string {
  return (task.segments.find((s: Json) => s.n === n) ?? { text: "" }).text;
}

async function render() {
  const main = document.getElementById("main")!;
  main.replaceChildren();
  main.setAttribute("aria-busy", "true");
  const path = decodeURIComponent(location.pathname);
  const params = new URLSearchParams(location.search);
  const parts = path.split("/").filter(Boolean);
  try {
    if (parts.length === 0) await home(main);
    else if (parts[0] === "models" && parts.length === 1) await models(main, params);
    else if (parts[0] === "models" && parts.length === 2) await model(main, parts[1]);
    else if (parts[0] === "nodes" && parts.length === 1) await nodes(main);
    else if (parts[0] === "nodes" && parts.length === 2) await node(main, parts[1]);
    else if (parts[0] === "batches" && parts.length === 1) await batches(main, params);
    else if (parts[0] === "batches" && parts.length === 2) await batch(main, parts[1], params);
    else if (parts[0] === "receipts" && parts.length === 2) await receipt(main, parts[1]);
    else if (parts[0] === "activity") await activity(main, params);
    else if (parts[0] === "chat" && parts.length === 1) await chat(main);
    else if (parts[0] === "runs" && parts.length === 2) await runPage(main, parts[1]);
    else throw new ApiError(404, "not_found", `There is no page at ${path}.`);
  } catch (e) {
    main.replaceChildren(
      h("h1", {}, e instanceof ApiError && e.status === 404 ? "Not found" : "Could not load this page"),
      h("p", { class: "error", role: "alert" }, e instanceof Error ? e.message : String(e)),
      link("/", "Back to the network overview"),
    );
  }
  main.setAttribute("aria-busy", "false");
  document.title = `${main.querySelector("h1")?.textContent ?? "Cairn"} · Cairn explorer`;
  for (const a of document.querySelectorAll("header nav a")) {
    const href = a.getAttribute("href")!;
    if ((href === "/" && path === "/") || (href !== "/" && path.startsWith(href))) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

function go(url: string) {
  history.pushState(null, "", url);
  void render().then(() => document.getElementById("main")?.focus());
}

document.addEventListener("click", (e) => {
  const a = (e.target as Element).closest?.("a[data-link]") as HTMLAnchorElement | null;
  if (!a || e.ctrlKey || e.metaKey || e.shiftKey || a.origin !== location.origin) return;
  e.preventDefault();
  go(a.pathname + a.search);
});
window.addEventListener("popstate", () => void render());
void render();
