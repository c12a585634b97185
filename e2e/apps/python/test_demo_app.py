"""The contract of ../README.md: Flask's test client for the routes, a real
downstream for the outbound call, and the real server (gunicorn) for the
local address and SIGTERM."""

import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from demo_app import create_app

LONG = "x" * 300


class Downstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen = {}

    def do_GET(self):
        Downstream.seen[self.path] = dict(self.headers)
        status, body = {
            "/b": (503, "no healthy upstream"),
            "/c": (429, LONG),
        }.get(self.path, (200, "C[10.0.0.3][config=default]"))
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def downstream():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Downstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_chain_forwards_no_incoming_header(downstream):
    client = create_app("B", downstream + "/", pod_ip="10.0.0.2").test_client()
    for path in ["/", "/a"]:
        r = client.get(path, headers={
            "x-mse-tag": "gray",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "baggage": "lane=gray",
        })
        assert r.status_code == 200
        assert r.mimetype == "text/plain"
        assert r.text == "B[10.0.0.2][config=default] -> C[10.0.0.3][config=default]"
        sent = {k.lower() for k in Downstream.seen[path]}
        assert sent <= {"host", "user-agent", "accept-encoding"}, sent


def test_downstream_errors_answer_502(downstream):
    client = create_app("B", downstream, config="v2", pod_ip="10.0.0.2").test_client()
    r = client.get("/b")
    assert (r.status_code, r.text) == (502, "B[10.0.0.2][config=v2] -> error: 503 no healthy upstream")
    r = client.get("/c")
    assert (r.status_code, r.text) == (502, "B[10.0.0.2][config=v2] -> error: 429 " + LONG[:200])
    r = create_app("B", "http://127.0.0.1:1", pod_ip="10.0.0.2").test_client().get("/a")
    assert r.status_code == 502
    assert r.text.startswith("B[10.0.0.2][config=default] -> error: ")
    assert "refused" in r.text


def test_greet_health_and_404():
    client = create_app("Agray", pod_ip="10.0.0.1").test_client()
    assert client.get("/greet1a").text == "Agray[10.0.0.1] greet1a"
    assert client.get("/greet1b").text == "Agray[10.0.0.1] greet1b"
    assert client.get("/healthz").text == "ok"
    assert client.get("/c").text == "Agray[10.0.0.1][config=default]"
    assert client.get("/d").status_code == 404


def test_fault_injection():
    client = create_app("C", pod_ip="10.0.0.3").test_client()
    r = client.post("/admin/delay?ms=200")
    assert (r.status_code, r.text) == (200, "delay_ms=200")
    start = time.monotonic()
    assert client.get("/c").status_code == 200
    assert time.monotonic() - start >= 0.2
    start = time.monotonic()
    client.get("/greet1a")
    assert time.monotonic() - start < 0.2, "the delay is for chain paths only"
    client.post("/admin/delay?ms=0")

    r = client.post("/admin/fail?status=503")
    assert (r.status_code, r.text) == (200, "fail_status=503")
    r = client.get("/c")
    assert (r.status_code, r.text) == (503, "C[10.0.0.3][config=default] injected failure: 503")
    assert client.get("/healthz").status_code == 200
    client.post("/admin/fail?status=0")
    assert client.get("/c").status_code == 200

    for bad in ["/admin/fail?status=42", "/admin/fail", "/admin/delay?ms=-1", "/admin/delay?ms=x"]:
        assert client.post(bad).status_code == 400, bad
    assert client.get("/admin/delay?ms=5").status_code == 405


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url, method="GET"):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_real_server_local_address_and_sigterm():
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "POD_IP"}
    env.update(NAME="ignored", CONFIG="from-env")
    proc = subprocess.Popen(
        [sys.executable, os.path.join(os.path.dirname(__file__), "demo_app.py"), "--name=C", f"--port={port}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                fetch(base + "/healthz")
                break
            except OSError:
                time.sleep(0.1)
        # Flags win over the environment.
        assert fetch(base + "/c") == (200, "C[127.0.0.1][config=from-env]")
        assert fetch(base + "/admin/delay?ms=1000", "POST") == (200, "delay_ms=1000")
        result = {}
        inflight = threading.Thread(target=lambda: result.update(r=fetch(base + "/c")))
        inflight.start()
        time.sleep(0.3)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=8) == 0
        assert time.monotonic() - start < 6
        inflight.join()
        assert result["r"] == (200, "C[127.0.0.1][config=from-env]"), "the in-flight request finishes"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
