// The official TypeScript x402 packages against Cairn (CommonJS builds, loaded from the cached
// install in $CAIRN_NPM_INTEROP, see scripts/npm-deps.sh).
//   node interop.mjs pay2 URL KEY_HEX REQUEST_JSON   @x402/fetch + @x402/evm (x402 v2), POST
//   node interop.mjs get2 URL KEY_HEX                @x402/fetch + @x402/evm (x402 v2), GET
//   node interop.mjs pay1 URL KEY_HEX REQUEST_JSON   legacy x402-fetch@1.2.0 (x402 v1, base-sepolia)
//   node interop.mjs express FACILITATOR_URL PAY_TO ASSET AMOUNT TOKEN_NAME TOKEN_VERSION
//        an @x402/express resource server whose facilitator is Cairn's (prints its URL)
// pay* print one JSON line: {status, body, paymentResponse}.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const modules = process.env.CAIRN_NPM_INTEROP;
if (!modules) throw new Error("CAIRN_NPM_INTEROP is not set (source scripts/npm-deps.sh)");
const require = createRequire(path.join(modules, "noop.js"));
const [mode, ...args] = process.argv.slice(2);

function decode(h) {
  return h ? JSON.parse(Buffer.from(h, "base64").toString("utf8")) : null;
}

async function report(resp) {
  const text = await resp.text();
  let body;
  try { body = JSON.parse(text); } catch { body = text; }
  const pr = resp.headers.get("payment-response") ?? resp.headers.get("x-payment-response");
  console.log(JSON.stringify({ status: resp.status, body, paymentResponse: decode(pr) }));
}

// What to opt in to: a Cairn node's terms, or (any other server) the offer of its 402.
async function terms(url) {
  if (url.includes("/v2/")) {
    return (await (await fetch(`${url.split("/v2/")[0]}/v1/node`)).json()).payments;
  }
  const offer = decode((await fetch(url)).headers.get("payment-required")).accepts[0];
  return { network: offer.network, asset: offer.asset };
}

if (mode === "pay2" || mode === "get2") {
  const [url, key, request] = args;
  const { wrapFetchWithPaymentFromConfig } = require("@x402/fetch");
  const { ExactEvmScheme } = require("@x402/evm");
  const { privateKeyToAccount } = require("viem/accounts");
  const t = await terms(url);
  const pay = wrapFetchWithPaymentFromConfig(fetch, {
    schemes: [{ network: "eip155:*", client: new ExactEvmScheme(privateKeyToAccount(key)) }],
    // The client pays only well-known tokens unless told otherwise: opt in to the node's.
    spendControls: { allowedAssets: [{ network: t.network, asset: t.asset, maxAmountPerPayment: "1000000" }] },
  });
  const init = mode === "get2"
    ? { method: "GET" }
    : { method: "POST", headers: { "content-type": "application/json" }, body: fs.readFileSync(request) };
  await report(await pay(url, init));
} else if (mode === "pay1") {
  const [url, key, request] = args;
  const { wrapFetchWithPayment } = require("x402-fetch");
  const { createWalletClient, http } = require("viem");
  const { privateKeyToAccount } = require("viem/accounts");
  const { baseSepolia } = require("viem/chains");
  const wallet = createWalletClient({ account: privateKeyToAccount(key), transport: http("http://127.0.0.1:9"), chain: baseSepolia });
  const pay = wrapFetchWithPayment(fetch, wallet, 1000000n);
  await report(await pay(url, { method: "POST", headers: { "content-type": "application/json" }, body: fs.readFileSync(request) }));
} else if (mode === "express") {
  const [facilitator, payTo, asset, amount, name, version, apiKey] = args;
  const express = require("express");
  const { paymentMiddleware, x402ResourceServer } = require("@x402/express");
  const { ExactEvmScheme } = require("@x402/evm/exact/server");
  const { HTTPFacilitatorClient } = require("@x402/core/server");
  const supported = await (await fetch(`${facilitator}/supported`)).json();
  const network = supported.kinds.find((k) => k.x402Version === 2).network;
  const auth = { Authorization: `Bearer ${apiKey}` };
  const createAuthHeaders = async () => ({ verify: auth, settle: auth, supported: auth });
  const server = new x402ResourceServer(new HTTPFacilitatorClient({ url: facilitator, createAuthHeaders }))
    .register(network, new ExactEvmScheme());
  const app = express();
  app.use(paymentMiddleware({
    "GET /paid": {
      accepts: { scheme: "exact", network, payTo, price: { asset, amount, extra: { name, version } } },
      description: "a paid hello",
    },
  }, server));
  app.get("/paid", (_req, res) => res.json({ hello: "paid world" }));
  const listener = app.listen(0, "127.0.0.1", () => {
    console.log(`express: http://127.0.0.1:${listener.address().port}/paid`);
  });
} else {
  console.error(`unknown mode ${mode}`);
  process.exit(2);
}
