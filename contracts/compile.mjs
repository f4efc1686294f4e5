// Compiles contracts/src/*.sol with the pinned solc-js into contracts/artifacts/<Name>.json
// ({contractName, abi, bytecode, deployedBytecode}); `--check` compares instead of writing and
// exits 1 when a committed artifact does not match its source.
// Usage: node compile.mjs [--check] [--modules DIR]   (DIR: where node_modules lives)
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const check = args.includes("--check");
const mi = args.indexOf("--modules");
const modules = mi >= 0 ? path.resolve(args[mi + 1]) : path.join(here, "node_modules");
const require = createRequire(path.join(modules, "noop.js"));
const solc = require("solc");

const srcDir = path.join(here, "src");
const outDir = path.join(here, "artifacts");
const sources = {};
for (const f of fs.readdirSync(srcDir).filter((f) => f.endsWith(".sol")).sort()) {
  sources[`src/${f}`] = { content: fs.readFileSync(path.join(srcDir, f), "utf8") };
}
const input = {
  language: "Solidity",
  sources,
  settings: {
    // Cancun: supported by revm, anvil and today's L2s.
    evmVersion: "cancun",
    optimizer: { enabled: true, runs: 10000 },
    metadata: { bytecodeHash: "none", appendCBOR: false },
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
  },
};
function findImports(p) {
  const file = p.startsWith("src/") ? path.join(here, p) : path.join(modules, p);
  try {
    return { contents: fs.readFileSync(file, "utf8") };
  } catch {
    return { error: `import not found: ${p}` };
  }
}
const out = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
const errors = (out.errors || []).filter((e) => e.severity === "error");
for (const e of out.errors || []) console.error(e.formattedMessage);
if (errors.length) process.exit(1);

fs.mkdirSync(outDir, { recursive: true });
let stale = 0;
for (const [file, contracts] of Object.entries(out.contracts).filter(([f]) => f.startsWith("src/"))) {
  const name = path.basename(file, ".sol");
  const c = contracts[name];
  if (!c) continue; // interfaces declared beside a contract
  const artifact = {
    contractName: name,
    compiler: `solc ${solc.version()}`,
    // Any edit to the source (comments included) must come with a rebuilt artifact.
    sourceSha256: crypto.createHash("sha256").update(sources[file].content).digest("hex"),
    abi: c.abi,
    bytecode: "0x" + c.evm.bytecode.object,
    deployedBytecode: "0x" + c.evm.deployedBytecode.object,
  };
  const text = JSON.stringify(artifact, null, 2) + "\n";
  const target = path.join(outDir, `${name}.json`);
  if (check) {
    const have = fs.existsSync(target) ? fs.readFileSync(target, "utf8") : "";
    if (have !== text) {
      console.error(`contracts: artifacts/${name}.json does not match src/${name}.sol; run scripts/contracts.sh build`);
      stale++;
    }
  } else {
    fs.writeFileSync(target, text);
    console.log(`contracts: wrote artifacts/${name}.json (${(c.evm.deployedBytecode.object.length / 2) | 0} bytes runtime)`);
  }
}
if (stale) process.exit(1);
