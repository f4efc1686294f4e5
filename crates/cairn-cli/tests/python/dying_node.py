"""A node that fails midway: it answers GET requests from the real node behind it (so it looks
alive and names the real node's address and prices), and for a POST reads the whole request,
then closes the connection without answering.

Usage: dying_node.py NODE_URL; prints `dying node: http://127.0.0.1:PORT` and serves until
killed; `posts dropped: N` on each drop (stderr).
"""
import http.client
import socket
import sys
import threading
import urllib.parse

target = urllib.parse.urlparse(sys.argv[1])
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
    if method != "GET":
        dropped += 1
        print(f"posts dropped: {dropped}", file=sys.stderr, flush=True)
        conn.close()
        return
    c = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
    c.request(method, path, body=body or None, headers={"accept": headers.get("accept", "*/*")})
    r = c.getresponse()
    data = r.read()
    out = f"HTTP/1.1 {r.status} {r.reason}\r\ncontent-type: {r.getheader('content-type', 'application/json')}\r\ncontent-length: {len(data)}\r\nconnection: close\r\n\r\n"
    conn.sendall(out.encode("latin-1") + data)
    conn.close()


while True:
    conn, _ = srv.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
