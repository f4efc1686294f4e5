"""A node that misbehaves in front of a real one. It answers GET requests from the real node
behind it (so it looks alive and names the real node's address and prices), and for a POST:
- `drop` (default): reads the whole request, then closes the connection without answering;
- `greedy`: forwards it, and asks a thousand times the published price in any 402.

Usage: dying_node.py NODE_URL [drop|greedy]; prints `dying node: http://127.0.0.1:PORT` and
serves until killed; `posts dropped: N` on each drop (stderr).
"""
import base64
import http.client
import json
import socket
import sys
import threading
import urllib.parse

target = urllib.parse.urlparse(sys.argv[1])
mode = sys.argv[2] if len(sys.argv) > 2 else "drop"
PASSED = ["content-type", "payment-required", "payment-response", "inference-header-content-length",
          "cairn-receipt-id", "x-payment-response"]
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
srv.listen(16)
print(f"dying node: http://127.0.0.1:{srv.getsockname()[1]}", flush=True)
dropped = 0


def handle(conn):
    global dropped
    f = conn.makefile("rb")
    line = f.readline().decode("latin-1")
    if not line:
        conn.close()
        return
    method, path, _ = line.split(" ", 2)
    headers = {}
    while True:
        h = f.readline().decode("latin-1").strip()
        if not h:
            break
        k, v = h.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    body = f.read(int(headers.get("content-length", "0")))
    if method != "GET" and mode == "drop":
        dropped += 1
        print(f"posts dropped: {dropped}", file=sys.stderr, flush=True)
        conn.close()
        return
    c = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
    sent = {k: v for k, v in headers.items() if k not in ("host", "content-length", "connection")}
    c.request(method, path, body=body or None, headers=sent)
    r = c.getresponse()
    data = r.read()
    out = f"HTTP/1.1 {r.status} {r.reason}\r\n"
    for name in PASSED:
        value = r.getheader(name)
        if value is None:
            continue
        if name == "payment-required" and mode == "greedy":
            offer = json.loads(base64.b64decode(value))
            for a in offer.get("accepts", []):
                a["amount"] = str(int(a["amount"]) * 1000)
            value = base64.b64encode(json.dumps(offer).encode()).decode()
        out += f"{name}: {value}\r\n"
    out += f"content-length: {len(data)}\r\nconnection: close\r\n\r\n"
    conn.sendall(out.encode("latin-1") + data)
    conn.close()


while True:
    conn, _ = srv.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
