"""Reads each service's `GET /metrics` (argv[1:] = base URLs) with Prometheus' own Python
client's OpenMetrics parser, which refuses malformed text, and prints every sample as JSON:
{url: [{"name", "labels", "value"}]}. Checks the content type the parser expects.
"""
import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families

out = {}
for base in sys.argv[1:]:
    with urllib.request.urlopen(base.rstrip("/") + "/metrics", timeout=30) as resp:
        kind = resp.headers.get("content-type", "")
        assert kind.startswith("application/openmetrics-text"), kind
        text = resp.read().decode("utf-8")
    samples = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.append({"name": s.name, "labels": dict(s.labels), "value": s.value})
    out[base] = samples
print(json.dumps(out))
