"""Init time of each function of the one Lambda binary: from the process's start to its
first `GET /2018-06-01/runtime/invocation/next` on a stand-in Lambda Runtime API (what
Lambda reports as Init Duration ends there). The stand-in never answers, so no invocation
runs; the process is then killed. AWS resources are named, not reached: init only reads
its settings and builds clients. Usage: init.py BINARY [RUNS]
"""
import http.server
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

FUNCTIONS = ["send_api", "admin_api", "webhook", "dispatcher", "status_callback", "retention", "console"]


class Runtime(http.server.BaseHTTPRequestHandler):
    polled = None  # threading.Event, set per run

    def do_GET(self):  # noqa: N802 (the stdlib's name)
        if self.path.endswith("/runtime/invocation/next"):
            Runtime.polled_at = time.perf_counter()
            Runtime.polled.set()
            time.sleep(30)  # hold the poll: no invocation
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def once(binary, function, port):
    Runtime.polled = threading.Event()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "KIRIM_FUNCTION": function,
        "KIRIM_BACKEND": "aws",
        "KIRIM_TABLE": "bench",
        "KIRIM_SECRET_PREFIX": "bench/",
        "KIRIM_DISPATCH_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/dispatch",
        "KIRIM_DISPATCH_DLQ_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/dispatch-dlq",
        "KIRIM_STATUS_CALLBACK_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/cb",
        "KIRIM_STATUS_CALLBACK_DLQ_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/cb-dlq",
        "KIRIM_TOTP_KMS_KEY": "alias/bench/totp-seeds",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_LAMBDA_FUNCTION_NAME": function,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/" + function,
        "AWS_LAMBDA_LOG_STREAM_NAME": "bench",
        "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{port}",
        "RUST_LOG": "info",
    }
    started = time.perf_counter()
    proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if not Runtime.polled.wait(10):
            proc.kill()
            err = proc.communicate()[1].decode(errors="replace")[-500:]
            sys.exit(f"{function}: no poll of the runtime API within 10 s: {err}")
        return (Runtime.polled_at - started) * 1000
    finally:
        proc.kill()
        proc.wait()


def main():
    binary = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Runtime)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print("| Function | Init, median of %d (ms) | min | max |" % runs)
    print("|---|---|---|---|")
    for f in FUNCTIONS:
        times = [once(binary, f, port) for _ in range(runs)]
        print(f"| {f} | {statistics.median(times):.1f} | {min(times):.1f} | {max(times):.1f} |")


if __name__ == "__main__":
    main()
