// Drives Debian's Chromium (playwright-core, no downloaded browser) through every explorer page
// against a live devnet, checking what each shows and writing a screenshot of each.
//
// node pages.mjs (env: MODULES = node_modules dir, EXPLORER = base URL, OUT = screenshot dir,
// EXPECT = JSON {calls, receipt, batchReceipt, node, cid, hostile})
import { base, check, finish, launch, out } from "./browser.mjs";

const expect = JSON.parse(process.env.EXPECT);
const browser = await launch();
const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
const page = await context.newPage();
const errors = [];
let current = "";
// A page for a bad id logs the API's 4xx answer; nothing else may log an error.
page.on("pageerror", (e) => errors.push(`${current}: ${e}`));
page.on("console", (m) => {
  if (m.type() !== "error") return;
  if (/^(bad|unknown)-/.test(current) && m.text().startsWith("Failed to load resource")) return;
  errors.push(`${current}: ${m.text()}`);
});

async function visit(path, name) {
  current = name;
  await page.goto(`${base}${path}`, { waitUntil: "networkidle" });
  await page.waitForSelector("main[aria-busy=false]", { timeout: 20000 });
  await page.screenshot({ path: `${out}/${name}.png`, fullPage: true });
}
const text = (sel) => page.locator(sel).first().innerText();

// The overview counts the calls made.
await visit("/", "overview");
check((await text("#calls")) === String(expect.calls), `overview shows ${expect.calls} calls`);
check((await page.locator("figure.chart").first().getAttribute("data-total")) === String(expect.calls),
  "the calls-per-minute chart adds up to the calls made");

// Models: listing, search, filter, the model page.
await visit("/models", "models");
check((await page.locator("table").first().innerText()).includes("digits"), "models list digits");
await page.fill("#q", "digi");
await page.click("form.search button");
await page.waitForSelector("main[aria-busy=false]");
check(page.url().includes("q=digi") && (await text("table")).includes("digits"), "search finds digits by part of its name");
await visit("/models?q=no-such-model-anywhere", "models-empty");
check((await text("table")).includes("Nothing yet."), "a search with no match says so");
await visit("/models/digits", "model-digits");
check((await text("h1")) === "digits", "model page heading");
check((await page.content()).includes(expect.cid), "model page shows the file's CID");
check((await text("#model-calls")) === String(expect.calls), "model page counts its calls");
check((await page.locator("pre").first().innerText()).includes("cairn infer 'digits@1.0' --node 'http"), "model page has the cairn infer example");
check((await page.content()).includes("/v2/models/digits@1.0/infer"), "model page has the curl example");
check((await page.content()).includes("Inputs of digits_mlp.onnx"), "model page shows the ONNX signature");

// Script injection through a model's description and release notes does not run.
await visit(`/models/${expect.hostile}`, "model-hostile");
check(await page.evaluate(() => window.__xss === undefined), "a hostile description runs no script");
check((await page.locator(".markdown img[onerror]").count()) === 0, "event handlers are stripped");
check((await text(".markdown")).includes("Injected <script>"), "the description's text is shown, its HTML as text");

// Nodes and verifiers.
await visit("/nodes", "nodes");
const nodesText = await text("main");
check(nodesText.includes(expect.node.slice(0, 10)), "nodes page lists the node");
check((await page.locator("table").nth(1).locator("tbody tr").count()) === 3, "nodes page lists three verifiers");
check(nodesText.includes("dev (not a TEE)"), "dev evidence is marked as not a TEE");
await visit(`/nodes/${expect.node}`, "node");
check((await text("main")).includes("development evidence"), "node page marks its dev evidence");
check((await text("main")).includes("dev: the evidence the registry records"), "node page shows the registered evidence it serves");

// Batches.
await visit("/batches", "batches");
check((await text("table")).includes("finalized"), "batches list a finalized batch");
await visit("/batches/1", "batch");
check((await text("#batch-status")) === "finalized", "batch page status");
check((await text("ol.timeline")).includes("Finalized"), "batch timeline reaches finalization");
check((await text("main")).includes("Verifier verdicts"), "batch page shows verdicts");
check((await page.locator("table").first().locator("tbody tr").count()) === 3, "batch page shows each verifier's verdict");

// A receipt verified in the browser, then tampered with.
for (const [id, name] of [[expect.receipt, "receipt"], [expect.batchReceipt, "receipt-batch-sealed"]]) {
  await visit(`/receipts/${id}`, name);
  await page.waitForSelector("#verify-result.ok, #verify-result.bad", { timeout: 20000 });
  check((await page.getAttribute("#verify-result", "class")) === "ok", `${name}: verified in the browser`);
  check((await text("ol.flow")).includes("treasury"), `${name}: the payment flow shows the split`);
  check((await page.locator("table").last().locator("tbody tr td").first().innerText()) !== "Nothing yet.", `${name}: the verifiers' samples of it are shown`);
  check((await text("#verify-source")).includes("read from the chain by this browser"), `${name}: the batch was read from the chain by the browser`);
}
async function tampered(name, edit, want = "bad") {
  await page.route("**/api/v1/receipts/0x*", async (route) => {
    const r = await route.fetch();
    const body = await r.json();
    edit(body);
    await route.fulfill({ response: r, json: body });
  });
  await visit(`/receipts/${expect.receipt}`, name);
  await page.waitForSelector("#verify-result.ok, #verify-result.bad", { timeout: 20000 });
  check((await page.getAttribute("#verify-result", "class")) === want,
    want === "bad" ? `${name}: the browser refuses it` : `${name}: the browser reads the chain, not the explorer's word`);
  await page.unroute("**/api/v1/receipts/0x*");
}
await tampered("receipt-tampered-price", (b) => { b.receipt.typedData.message.price = "1"; });
await tampered("receipt-tampered-proof", (b) => { b.proof = b.proof.length ? b.proof.slice(1) : ["0x" + "11".repeat(32)]; });
// The explorer lying about the batch's root or node does not matter: the browser reads both
// from the chain. Pointing at another batch does.
await tampered("receipt-lying-root", (b) => { b.batch.root = "0x" + "22".repeat(32); }, "ok");
await tampered("receipt-lying-node", (b) => { b.batch.node = "0x" + "33".repeat(20); }, "ok");
await tampered("receipt-other-batch", (b) => { b.batch.id = 424242; });
// An explorer that later names another settlement contract is flagged (first use is pinned).
await page.route("**/api/v1/status", async (route) => {
  const r = await route.fetch();
  const body = await r.json();
  body.settlement = "0x" + "44".repeat(20);
  await route.fulfill({ response: r, json: body });
});
await visit(`/receipts/${expect.receipt}`, "receipt-moved-deployment");
await page.waitForSelector("#verify-result.ok, #verify-result.bad", { timeout: 20000 });
check((await page.getAttribute("#verify-result", "class")) === "bad", "a changed settlement contract is refused");
check((await text("ul.checks")).includes("on your first visit"), "and the page says what changed");
await page.unroute("**/api/v1/status");
await tampered("receipt-tampered-domain", (b) => { b.receipt.typedData.domain.name = "Other"; });

// Activity charts count the calls.
await visit("/activity?bucket=hour", "activity");
check((await page.locator("figure.chart").first().getAttribute("data-total")) === String(expect.calls), "activity chart counts the calls");
const samples = await page.locator("figure.chart", { hasText: "Samples re-executed" }).getAttribute("data-total");
check(Number(samples) >= 3 * expect.calls, `the samples chart counts every verifier's re-executions (${samples})`);

// Bad input: unknown ids, malformed ids, unknown pages.
await visit("/receipts/0xnothex", "bad-receipt-id");
check((await text("p.error")).includes("32-byte hash"), "a malformed receipt id is explained");
await visit(`/receipts/0x${"00".repeat(32)}`, "unknown-receipt");
check((await text("h1")) === "Not found", "an unknown receipt is not found");
await visit("/batches/99999", "unknown-batch");
check((await text("h1")) === "Not found", "an unknown batch is not found");
await visit("/no/such/page", "unknown-page");
check((await text("h1")) === "Not found", "an unknown page is not found");

// Keyboard: the skip link is the first stop and leads to the content.
await visit("/", "overview-again");
await page.keyboard.press("Tab");
check(await page.evaluate(() => document.activeElement?.classList.contains("skip")), "Tab reaches the skip link first");

// Phone width, dark scheme.
await page.setViewportSize({ width: 375, height: 800 });
await page.emulateMedia({ colorScheme: "dark" });
await visit("/", "overview-phone-dark");
const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
check(overflow <= 1, `no sideways scrolling at phone width (overflow ${overflow}px)`);
await visit(`/receipts/${expect.receipt}`, "receipt-phone-dark");

check(errors.length === 0, `no script errors (${errors.join(" | ")})`);
await finish(browser);
console.log("all pages checked");
