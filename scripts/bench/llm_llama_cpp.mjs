// llama.cpp's side of scripts/bench-llm.sh: prompt processing and generation at batch 1 on the
// given threads, as one JSON line. node-llama-cpp is resolved from the working directory.
import path from "node:path";
import {createRequire} from "node:module";
import {pathToFileURL} from "node:url";

const require = createRequire(path.join(process.cwd(), "package.json"));
const {getLlama} = await import(pathToFileURL(require.resolve("node-llama-cpp")).href);
const [modelPath, promptLen = "128", genLen = "64", threads = "1"] = process.argv.slice(2);
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
let t = performance.now();
const model = await llama.loadModel({modelPath});
const loadS = (performance.now() - t) / 1000;
const sentence = Array.from(model.tokenize(" The quick brown fox jumps over the lazy dog and verifies every receipt."));
const prompt = [];
while (prompt.length < Number(promptLen)) prompt.push(sentence[prompt.length % sentence.length]);
const ctx = await model.createContext({threads: Number(threads), batchSize: 512, contextSize: 1024});
const seq = ctx.getSequence();
// Prompt processing: evaluate the prompt and stop at the first generated token.
t = performance.now();
const it = seq.evaluate(prompt, {temperature: 0})[Symbol.asyncIterator]();
await it.next();
const promptS = (performance.now() - t) / 1000;
t = performance.now();
let n = 0;
while (n < Number(genLen)) {
  const r = await it.next();
  if (r.done) break;
  n++;
}
const genS = (performance.now() - t) / 1000;
console.log(JSON.stringify({engine: "llama.cpp (node-llama-cpp 3.21.1)", threads: Number(threads), load_s: +loadS.toFixed(3),
  prompt_tokens: prompt.length, prompt_tok_s: +(prompt.length / promptS).toFixed(1),
  gen_tokens: n, gen_tok_s: +(n / genS).toFixed(1)}));
process.exit(0);
