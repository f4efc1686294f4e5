// Records llama.cpp's answers for the devnet model, which cairn-llm's tests compare against:
// token ids of every text in crates/cairn-llm/testdata/tokenizer_corpus.json, and greedy
// continuations of the prompts below (one thread).
//   cd SOMEDIR && npm install --ignore-scripts node-llama-cpp@3.21.1   (prebuilt llama.cpp binaries)
//   cd SOMEDIR && node REPO/scripts/llm/llama-cpp-reference.mjs MODEL.gguf > REPO/crates/cairn-llm/testdata/llama_cpp.json
// (node-llama-cpp is resolved from the working directory.)
import fs from "node:fs";
import path from "node:path";
import {createRequire} from "node:module";
import {fileURLToPath, pathToFileURL} from "node:url";

const require = createRequire(path.join(process.cwd(), "package.json"));
const {getLlama} = await import(pathToFileURL(require.resolve("node-llama-cpp")).href);

const here = path.dirname(fileURLToPath(import.meta.url));
const corpusPath = path.join(here, "../../crates/cairn-llm/testdata/tokenizer_corpus.json");
const corpus = JSON.parse(fs.readFileSync(corpusPath, "utf8"));
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const model = await llama.loadModel({modelPath: process.argv[2]});
const tokens = corpus.map((text) => ({text, ids: Array.from(model.tokenize(text))}));
const system = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";
const prompts = [
  system + "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
  system + "<|im_start|>user\nWrite a haiku about verifiable computation.<|im_end|>\n<|im_start|>assistant\n",
];
const greedy = [];
for (const prompt of prompts) {
  const ids = model.tokenize(prompt, true);
  const ctx = await model.createContext({threads: 1, batchSize: 512, contextSize: 512});
  const seq = ctx.getSequence();
  const out = [];
  for await (const t of seq.evaluate(ids, {temperature: 0})) {
    out.push(t);
    if (out.length >= 48 || t === 2) break;
  }
  await ctx.dispose();
  greedy.push({prompt, prompt_ids: Array.from(ids), completion_ids: out});
}
console.log(JSON.stringify({generator: "node-llama-cpp 3.21.1", tokens, greedy}, null, 1));
