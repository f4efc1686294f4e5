"""The official OpenAI Python client talks to the chat entry: one turn, whole and streamed.

Usage: entry_openai.py ENTRY_URL MESSAGE_FILE; prints JSON {whole, streamed, run, cairn}.
"""
import json
import sys

from openai import OpenAI

entry, message_file = sys.argv[1], sys.argv[2]
message = open(message_file, encoding="utf-8").read()
client = OpenAI(base_url=entry + "/v1", api_key="unused")
resp = client.chat.completions.with_raw_response.create(
    model="cairn-entry", messages=[{"role": "user", "content": message}]
)
run = resp.headers.get("cairn-run-id")
completion = resp.parse()
extra = completion.model_extra or {}
streamed = ""
for chunk in client.chat.completions.create(
    model="cairn-entry", messages=[{"role": "user", "content": message}], stream=True
):
    if chunk.choices and chunk.choices[0].delta.content:
        streamed += chunk.choices[0].delta.content
print(json.dumps({
    "whole": completion.choices[0].message.content,
    "streamed": streamed,
    "run": run,
    "cairn": extra.get("cairn"),
}))
