"""POST the prepared signed Meta notifications (one "signature body" a line, $BENCH_PAYLOADS)
in turn, N of them in all, on C keep-alive connections at once (so that the server, as under
wrk, finds work waiting instead of idling between requests); exits non-zero on any answer but
200. Used by `scripts/bench-webhook --instructions`, where the count, not the time, is fixed.

    python3 send.py HOST:PORT N [C]
"""
import http.client
import os
import sys
import threading

host, port = sys.argv[1].rsplit(":", 1)
n = int(sys.argv[2])
c = int(sys.argv[3]) if len(sys.argv) > 3 else 8
lines = [l.rstrip("\n").split(" ", 1) for l in open(os.environ["BENCH_PAYLOADS"])]
failures = []


def worker(k):
    conn = http.client.HTTPConnection(host, int(port), timeout=300)
    for i in range(k, n, c):
        sig, body = lines[i % len(lines)]
        conn.request("POST", "/webhooks/meta", body=body.encode(),
                     headers={"Content-Type": "application/json", "X-Hub-Signature-256": sig})
        res = conn.getresponse()
        res.read()
        if res.status != 200:
            failures.append(f"request {i}: HTTP {res.status}")
            return


threads = [threading.Thread(target=worker, args=(k,)) for k in range(c)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if failures:
    sys.exit(failures[0])
