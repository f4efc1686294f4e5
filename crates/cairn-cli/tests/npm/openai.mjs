// The official `openai` TypeScript package against a Cairn node's OpenAI-compatible API (loaded
// from the cached install in $CAIRN_NPM_INTEROP, see scripts/npm-deps.sh).
//   node openai.mjs NODE_URL MODEL
// Prints one JSON line: what models.list, a whole chat completion, a streamed one (with the
// usage chunk), a text completion, a schema-held answer and a forced tool call gave, and the
// error an unknown model gets.
import path from "node:path";
import { createRequire } from "node:module";

const modules = process.env.CAIRN_NPM_INTEROP;
if (!modules) throw new Error("CAIRN_NPM_INTEROP is not set (source scripts/npm-deps.sh)");
const require = createRequire(path.join(modules, "noop.js"));
const OpenAI = require("openai").default ?? require("openai");
const [base, model] = process.argv.slice(2);

const client = new OpenAI({ baseURL: `${base.replace(/\/$/, "")}/v1`, apiKey: "unused", maxRetries: 0 });
const messages = [
  { role: "system", content: "You are a concise assistant." },
  { role: "user", content: "What is the capital of France?" },
];

const models = (await client.models.list()).data.map((m) => m.id);
const { data: chat, response } = await client.chat.completions
  .create({ model, messages, temperature: 0, max_tokens: 24 })
  .withResponse();
const stream = await client.chat.completions.create({
  model, messages, temperature: 0, max_tokens: 24, stream: true,
  stream_options: { include_usage: true },
});
let streamed = "";
let usage = null;
let finish = null;
let first = null;
for await (const chunk of stream) {
  if (first === null) first = chunk.choices[0]?.delta?.role ?? "";
  if (chunk.usage) usage = chunk.usage;
  for (const c of chunk.choices) {
    streamed += c.delta?.content ?? "";
    finish = c.finish_reason ?? finish;
  }
}
const completion = await client.completions.create({
  model, prompt: "1, 2, 3, 4,", temperature: 0, max_tokens: 12, stop: [" 7"],
});
// Structured output: a JSON schema, held to token by token.
const film = {
  type: "object",
  properties: {
    title: { type: "string", maxLength: 40 },
    year: { type: "integer", minimum: 1900, maximum: 2030 },
  },
  required: ["title", "year"],
  additionalProperties: false,
};
const structured = await client.chat.completions.create({
  model, messages: [{ role: "user", content: "Name a film." }], temperature: 1.3, seed: 4,
  max_tokens: 80, response_format: { type: "json_schema", json_schema: { name: "film", schema: film, strict: true } },
});
const filmJson = JSON.parse(structured.choices[0].message.content);
// Tools: a call forced by name.
const tools = [{
  type: "function",
  function: {
    name: "get_weather",
    description: "The weather in a city now.",
    parameters: {
      type: "object",
      properties: { city: { type: "string", maxLength: 40 }, unit: { enum: ["celsius", "fahrenheit"] } },
      required: ["city", "unit"],
      additionalProperties: false,
    },
  },
}];
const called = await client.chat.completions.create({
  model, messages: [{ role: "user", content: "Weather in Oslo?" }], tools,
  tool_choice: { type: "function", function: { name: "get_weather" } }, temperature: 0, max_tokens: 60,
});
const toolCall = called.choices[0].message.tool_calls[0];
let notFound = null;
try {
  await client.chat.completions.create({ model: "no-such-model@1.0", messages });
} catch (e) {
  notFound = { status: e.status, code: e.code, type: e.type };
}
console.log(JSON.stringify({
  models,
  chat: chat.choices[0].message.content,
  finishReason: chat.choices[0].finish_reason,
  usage: chat.usage,
  receiptId: response.headers.get("cairn-receipt-id"),
  streamed,
  streamFirstRole: first,
  streamUsage: usage,
  streamFinish: finish,
  completion: completion.choices[0].text,
  notFound,
  film: filmJson,
  filmKeys: Object.keys(filmJson),
  toolFinish: called.choices[0].finish_reason,
  toolName: toolCall.function.name,
  toolArguments: JSON.parse(toolCall.function.arguments),
}));
