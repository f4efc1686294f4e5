"""Streams chat completions from a Cairn node and times them (argv: NODE_URL MODEL MAX_TOKENS RUNS).
Prints one JSON line per run: time to first content token, tokens per second after it (from
the usage chunk's count), and the whole call."""
import json
import sys
import time

import httpx

base, model, max_tokens, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
body = {
    "model": model,
    "messages": [
        {"role": "system", "content": "You are a helpful assistant who writes long, detailed answers."},
        {"role": "user", "content": "Tell me the story of a lighthouse keeper who finds a message in a bottle."},
    ],
    "max_tokens": max_tokens, "temperature": 0, "stream": True,
    "stream_options": {"include_usage": True},
}
with httpx.Client(timeout=600) as client:
    for run in range(1, runs + 1):
        start = time.perf_counter()
        first = last = None
        usage = None
        with client.stream("POST", base.rstrip("/") + "/v1/chat/completions", json=body) as resp:
            resp.raise_for_status()
            for line in resp.iter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for c in chunk["choices"]:
                    if c["delta"].get("content"):
                        now = time.perf_counter()
                        first = first or now
                        last = now
        end = time.perf_counter()
        n = usage["completion_tokens"]
        print(json.dumps({
            "run": run, "prompt_tokens": usage["prompt_tokens"], "completion_tokens": n,
            "ttft_s": round(first - start, 4),
            "decode_tok_s": round((n - 1) / (last - first), 1) if last > first else None,
            "call_s": round(end - start, 4),
        }), flush=True)
