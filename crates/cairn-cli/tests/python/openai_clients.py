"""The official `openai` Python package against a Cairn node's OpenAI-compatible API
(argv[1] = node URL, argv[2] = the model's name@version).

- models.list, chat completions (whole and streamed with include_usage), text completions.
- Every answer's LLM receipt (header cairn-receipt-id, GET /v1/receipts/{id}) is recovered with
  eth_account from its typed data alone, and binds the SHA-256 of the exact request bytes the
  client sent and of the exact bytes it received (for a stream: the whole SSE transcript).
- The same seeded request gives the same tokens; errors come back as OpenAI error objects.
- Structured output: the client's own `parse` helper with a Pydantic model (its strict JSON
  schema) and `json_object` give JSON that parses and validates; tools (`pydantic_function_tool`,
  `tool_choice` required and named) give `tool_calls` whose arguments validate, whole and
  streamed, each with its receipt.
"""
import hashlib
import json
import sys
import urllib.request

from typing import Annotated, Literal

import httpx
import openai
import pydantic
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

# Structured output through the client's own helper: a Pydantic model becomes a strict JSON
# schema; the node holds the answer to it token by token, so it always parses and validates.
class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=40)
    country: str = pydantic.Field(max_length=40)
    population_millions: int = pydantic.Field(ge=0, le=100)
    landmarks: list[Annotated[str, pydantic.Field(max_length=30)]] = pydantic.Field(max_length=3)


ask = [{"role": "user", "content": "Describe Paris as JSON."}]
for extra in ({"temperature": 0}, {"temperature": 1.5, "seed": 7}):
    raw = client.chat.completions.with_raw_response.parse(
        model=model, messages=ask, response_format=City, max_tokens=200, **extra)
    parsed = raw.parse()
    city = parsed.choices[0].message.parsed
    assert isinstance(city, City), parsed
    assert parsed.choices[0].finish_reason == "stop", parsed
    check_receipt(raw.headers["cairn-receipt-id"], sent[-1], raw.content)
    print(f"parse: {city!r}")
obj = client.chat.completions.create(model=model, messages=ask, temperature=1.2, seed=3,
                                     max_tokens=120, response_format={"type": "json_object"})
assert isinstance(json.loads(obj.choices[0].message.content), dict), obj
print("json_object: parses")


# Tools: the client's Pydantic tool helper, calls forced (required, or one function by name).
class GetWeather(pydantic.BaseModel):
    """The weather in a city now."""
    city: str = pydantic.Field(max_length=40)
    unit: Literal["celsius", "fahrenheit"]


class GetTime(pydantic.BaseModel):
    """The local time in a city."""
    city: str = pydantic.Field(max_length=40)


tools = [openai.pydantic_function_tool(GetWeather), openai.pydantic_function_tool(GetTime)]
weather = [{"role": "user", "content": "What is the weather in Paris right now?"}]
raw = client.chat.completions.with_raw_response.parse(
    model=model, messages=weather, tools=tools, tool_choice="required",
    parallel_tool_calls=False, temperature=0, max_tokens=80)
called = raw.parse()
choice = called.choices[0]
assert choice.finish_reason == "tool_calls" and choice.message.content is None, choice
[tc] = choice.message.tool_calls
assert tc.type == "function" and tc.id.startswith("call_"), tc
args = tc.function.parsed_arguments
assert isinstance(args, (GetWeather, GetTime)), tc
check_receipt(raw.headers["cairn-receipt-id"], sent[-1], raw.content)
print(f"tool call: {tc.function.name}({tc.function.arguments})")

named = {"type": "function", "function": {"name": "GetTime"}}
stream = client.chat.completions.create(model=model, messages=weather, tools=tools,
                                        tool_choice=named, temperature=0.8, seed=1,
                                        max_tokens=80, stream=True)
calls, finish = {}, None
for chunk in stream:
    for c in chunk.choices:
        for d in c.delta.tool_calls or []:
            calls[d.index] = d
        finish = c.finish_reason or finish
assert finish == "tool_calls" and len(calls) == 1, (finish, calls)
GetTime.model_validate_json(calls[0].function.arguments)
assert calls[0].function.name == "GetTime", calls
print(f"streamed tool call: {calls[0].function.name}({calls[0].function.arguments})")

# The conversation goes on with the call's result.
follow = weather + [choice.message.model_dump(exclude_none=True, exclude={"parsed"}),
                    {"role": "tool", "tool_call_id": tc.id, "content": "18 C, sunny"}]
for m in follow:
    for t in m.get("tool_calls", []):
        t["function"].pop("parsed_arguments", None)
after = client.chat.completions.create(model=model, messages=follow, tools=tools,
                                       tool_choice="none", temperature=0, max_tokens=30)
assert after.choices[0].message.content, after
print(f"after the tool: {after.choices[0].message.content!r}")

try:
    client.chat.completions.create(
        model=model, messages=ask, response_format={
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": False},
                                                    "required": ["a"]}}})
    raise AssertionError("an unsatisfiable schema was served")
except openai.BadRequestError as e:
    assert e.body["param"] == "response_format", e.body
print("structured: done")
