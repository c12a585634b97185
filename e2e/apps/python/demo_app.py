"""The Python demo app of the lanemesh e2e scenarios.

An ordinary Flask app served by gunicorn (one worker process, gthread): it
answers with its name and, when --next is set, the answer of the next service
in the chain. Its outbound call forwards no incoming header. See ../README.md
for the contract it shares with the Go and Java apps.
"""

import argparse
import logging
import os
import sys
import threading
import time

import urllib3
from flask import Flask, Response, g, request
from gunicorn.app.base import BaseApplication

DOWNSTREAM_TIMEOUT = 10.0
SHUTDOWN_GRACE = 5
ERROR_BODY_LIMIT = 200
CHAIN_PATHS = ["/", "/a", "/b", "/c"]

log = logging.getLogger("demo")


def create_app(name, next_url="", config="default", pod_ip="", delay_ms=0, fail_status=0):
    """Returns the Flask app of one instance."""
    app = Flask(__name__)
    next_url = (next_url or "").rstrip("/")
    faults = {"delay_ms": delay_ms, "fail_status": fail_status}
    faults_lock = threading.Lock()
    # Pooled keep-alive connections to the downstream; no retries and no
    # redirects followed, so what the downstream answers is what we report.
    http = urllib3.PoolManager(
        maxsize=64,
        retries=False,
        timeout=urllib3.Timeout(total=DOWNSTREAM_TIMEOUT),
    )

    def ident():
        if pod_ip:
            return f"{name}[{pod_ip}]"
        # WSGI has no local address; gunicorn hands the app its socket.
        sock = request.environ.get("gunicorn.socket")
        local = sock.getsockname()[0] if sock else request.environ.get("SERVER_NAME", "")
        return f"{name}[{local}]"

    def text(status, body):
        if isinstance(body, str):
            body = body.encode()
        return Response(body, status=status, mimetype="text/plain")

    @app.before_request
    def start_timer():
        g.start = time.monotonic()

    @app.after_request
    def log_request(response):
        elapsed = (time.monotonic() - g.get("start", time.monotonic())) * 1000
        log.info("%s %s %d %.1fms", request.method, request.path, response.status_code, elapsed)
        return response

    def chain():
        me = f"{ident()}[config={config}]"
        with faults_lock:
            delay, fail = faults["delay_ms"], faults["fail_status"]
        if delay > 0:
            time.sleep(delay / 1000)
        if fail:
            return text(fail, f"{me} injected failure: {fail}")
        if not next_url:
            return text(200, me)
        # A fresh request: nothing of the incoming one (no lane header, no
        # traceparent, no baggage) is forwarded.
        try:
            resp = http.request("GET", next_url + request.path, redirect=False)
        except urllib3.exceptions.HTTPError as e:
            return text(502, f"{me} -> error: {e}")
        if not 200 <= resp.status <= 299:
            head = resp.data[:ERROR_BODY_LIMIT]
            return text(502, f"{me} -> error: {resp.status} ".encode() + head)
        return text(200, f"{me} -> ".encode() + resp.data)

    for path in CHAIN_PATHS:
        app.add_url_rule(path, endpoint=f"chain{path}", view_func=chain, methods=["GET"])

    @app.get("/greet1a")
    def greet1a():
        return text(200, f"{ident()} greet1a")

    @app.get("/greet1b")
    def greet1b():
        return text(200, f"{ident()} greet1b")

    @app.get("/healthz")
    def healthz():
        return text(200, "ok")

    def setting(param, key, valid, rule):
        value = request.args.get(param, "")
        try:
            n = int(value)
        except ValueError:
            n = None
        if n is None or not valid(n):
            return text(400, f"{param} must be 0 or an integer in {rule}")
        with faults_lock:
            faults[key] = n
        return text(200, f"{key}={n}")

    @app.post("/admin/delay")
    def set_delay():
        return setting("ms", "delay_ms", lambda n: 0 <= n <= 2**31 - 1, "[0, 2147483647]")

    @app.post("/admin/fail")
    def set_fail():
        return setting("status", "fail_status", valid_status, "[200, 599]")

    return app


def valid_status(n):
    return n == 0 or 200 <= n <= 599


class Server(BaseApplication):
    """gunicorn, configured in code: one worker (the fault settings live in
    its memory), threads for concurrent requests, graceful SIGTERM."""

    def __init__(self, app_factory, port):
        self.app_factory = app_factory
        self.port = port
        super().__init__()

    def load_config(self):
        for key, value in {
            "bind": f"0.0.0.0:{self.port}",
            "workers": 1,
            "worker_class": "gthread",
            "threads": 64,
            "keepalive": 120,
            "graceful_timeout": SHUTDOWN_GRACE,
            "control_socket_disable": True,
            "accesslog": None,  # the app logs each request itself
            "errorlog": "-",
            "loglevel": "info",
        }.items():
            self.cfg.set(key, value)

    def load(self):
        return self.app_factory()


def env_int(name, default):
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        sys.exit(f"env {name}={value!r}: not an integer")


def parse_args(argv=None):
    # Flags win over the environment, which wins over the defaults.
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", default=os.environ.get("NAME") or "app", help="display name (env NAME)")
    p.add_argument("--port", type=int, default=env_int("PORT", 8080), help="listen port (env PORT)")
    p.add_argument("--next", default=os.environ.get("NEXT", ""), help="base URL of the downstream (env NEXT)")
    p.add_argument("--config", default=os.environ.get("CONFIG") or "default", help="config string (env CONFIG)")
    p.add_argument("--delay-ms", type=int, default=env_int("DELAY_MS", 0), help="delay of chain-path answers (env DELAY_MS)")
    p.add_argument("--fail-status", type=int, default=env_int("FAIL_STATUS", 0), help="status chain paths answer, 0 = off (env FAIL_STATUS)")
    args = p.parse_args(argv)
    if args.delay_ms < 0 or not valid_status(args.fail_status):
        p.error("--delay-ms must be >= 0 and --fail-status 0 or in [200, 599]")
    return args


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(asctime)s %(message)s")
    log.info("%s listening on 0.0.0.0:%d (next=%r config=%r)", args.name, args.port, args.next, args.config)
    Server(
        lambda: create_app(
            args.name,
            args.next,
            args.config,
            os.environ.get("POD_IP", ""),
            args.delay_ms,
            args.fail_status,
        ),
        args.port,
    ).run()


if __name__ == "__main__":
    main()
