"""The official `openai` Python package against a Cairn node's OpenAI-compatible API
(argv[1] = node URL, argv[2] = the model's name@version).

- models.list, chat completions (whole and streamed with include_usage), text completions.
- Every answer's LLM receipt (header cairn-receipt-id, GET /v1/receipts/{id}) is recovered with
  eth_account from its typed data alone, and binds the SHA-256 of the exact request bytes the
  client sent and of the exact bytes it received (for a stream: the whole SSE transcript).
- The same seeded request gives the same tokens; errors come back as OpenAI error objects.
"""
import hashlib
import json
import sys
import urllib.request

import httpx
import openai
from eth_account import Account
from eth_account.messages import encode_typed_data

base = sys.argv[1].rstrip("/")
model = sys.argv[2]
sent = []


def keep_request(request: httpx.Request):
    sent.append(request.read())


http = httpx.Client(event_hooks={"request": [keep_request]}, timeout=120)
client = openai.OpenAI(base_url=base + "/v1", api_key="unused", http_client=http, max_retries=0)
with urllib.request.urlopen(base + "/v1/node") as resp:
    node = json.load(resp)


def check_receipt(receipt_id: str, request: bytes, answer: bytes, complete=True):
    with urllib.request.urlopen(f"{base}/v1/receipts/{receipt_id}") as resp:
        stored = json.load(resp)
    r = stored["receipt"]
    td = r["typedData"]
    assert td["primaryType"] == "LlmReceipt", td["primaryType"]
    signer = Account.recover_message(encode_typed_data(full_message=td),
                                     signature=bytes.fromhex(r["signature"][2:]))
    assert signer.lower() == node["address"].lower(), (signer, node["address"])
    m = td["message"]
    assert m["requestId"] == receipt_id, (m["requestId"], receipt_id)
    assert m["requestHash"] == "0x" + hashlib.sha256(request).hexdigest(), "request hash"
    assert m["responseHash"] == "0x" + hashlib.sha256(answer).hexdigest(), "response hash"
    assert m["complete"] is complete
    return m


models = client.models.list()
ids = [m.id for m in models.data]
assert model in ids, ids
card = models.data[ids.index(model)]
assert card.model_extra["gguf"]["architecture"] == "llama", card
print(f"models: {ids}")

# A whole chat completion, greedy.
messages = [{"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "What is the capital of France?"}]
raw = client.chat.completions.with_raw_response.create(
    model=model, messages=messages, temperature=0, max_tokens=24)
chat = raw.parse()
answer = chat.choices[0].message.content
assert chat.object == "chat.completion" and chat.choices[0].finish_reason in ("stop", "length")
assert "Paris" in answer, answer
assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens
m = check_receipt(raw.headers["cairn-receipt-id"], sent[-1], raw.content)
assert (m["promptTokens"], m["completionTokens"]) == (chat.usage.prompt_tokens,
                                                     chat.usage.completion_tokens)
print(f"chat: {answer!r}; receipt recovered, request and response hashes match")

# The same request streamed, with the usage chunk: the same text, every chunk as the client
# parses it, and the receipt over the whole transcript.
with client.chat.completions.with_streaming_response.create(
        model=model, messages=messages, temperature=0, max_tokens=24, stream=True,
        stream_options={"include_usage": True}) as resp:
    transcript = b"".join(resp.iter_bytes())
    receipt_id = resp.headers["cairn-receipt-id"]
request = sent[-1]
events = [e for e in transcript.decode().split("\n\n") if e]
assert events[-1] == "data: [DONE]", events[-1]
chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
assert text == answer, (text, answer)
assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
assert all(c["usage"] is None for c in chunks[:-1])
check_receipt(receipt_id, request, transcript)
print(f"stream: {len(chunks)} chunks, same text, receipt binds the transcript")

# The client's own stream parser takes the same stream.
stream = client.chat.completions.create(model=model, messages=messages, temperature=0,
                                        max_tokens=24, stream=True,
                                        stream_options={"include_usage": True})
parts, usage, finish = [], None, None
for chunk in stream:
    if chunk.usage:
        usage = chunk.usage
    for c in chunk.choices:
        parts.append(c.delta.content or "")
        finish = c.finish_reason or finish
assert "".join(parts) == answer and usage is not None and finish in ("stop", "length")
print("openai stream parser: same text, usage and finish_reason")

# Seeded sampling: the same seed, the same tokens.
seeded = [client.chat.completions.create(model=model, messages=messages, temperature=0.9,
                                         top_p=0.95, seed=42, max_tokens=20)
          .choices[0].message.content for _ in range(2)]
assert seeded[0] == seeded[1], seeded
print(f"seeded: {seeded[0]!r} twice")

# Text completion, with a stop string.
done = client.completions.create(model=model, prompt="1, 2, 3, 4,", temperature=0, max_tokens=12,
                                 stop=[" 7"])
assert done.choices[0].text.startswith(" 5, 6,"), done.choices[0].text
assert " 7" not in done.choices[0].text and done.choices[0].finish_reason == "stop"
print(f"completion: {done.choices[0].text!r}")

# Errors, as OpenAI error objects the client raises.
try:
    client.chat.completions.create(model="no-such-model@1.0", messages=messages)
    raise AssertionError("an unknown model was served")
except openai.NotFoundError as e:
    assert e.body["code"] == "model_not_found", e.body
try:
    client.chat.completions.create(model=model, messages=messages, max_tokens=100000)
    raise AssertionError("a context overflow was served")
except openai.BadRequestError as e:
    assert e.body["code"] == "context_length_exceeded", e.body
try:
    client.chat.completions.create(model=model, messages=messages, extra_body={"logit_bias": {}})
    raise AssertionError("an unimplemented parameter was ignored")
except openai.BadRequestError as e:
    assert e.body["param"] == "logit_bias", e.body
try:
    client.chat.completions.create(model="digits@1.0", messages=messages)
    raise AssertionError("an ONNX model was run as a language model")
except openai.BadRequestError as e:
    assert e.body["code"] == "wrong_model_kind", e.body
print("errors: not found, context length, unknown parameter, wrong model kind")
