#!/usr/bin/python3
"""A loopback HTTP server that misbehaves on purpose, for the daemon's fault tests.

    faultserver.py --log REQUESTS.jsonl [--bind 127.0.0.1] [--seed N] [--fail-share 0.05]

Speaks the protocol of testserver.py (first stdout line: the port; dies with its stdin; the same
JSON-lines request log; the same scripted queue of response specs, replaced by POSTing to
/__control/script) and serves testserver.py's specs (status, headers, body, json, body_size,
chunked, delay, reset, path, repeat), plus the faults testserver.py cannot make:

    reset_before  true: reset the connection after reading the request line and headers, before
                  the body is read: the receiver never processed the post ("delivered": false)
    drip          {"interval": s, "chunk": n}: send the body n bytes at a time, one piece every
                  s seconds (a slow or stalled body after a prompt status line)
    truncate      n: announce the whole body's Content-Length, send only n bytes, then close
    raw           text sent verbatim instead of an HTTP answer (e.g. "SMTP ready\\r\\n"), then
                  the connection is closed
    hold          s: after reading the request, answer nothing until POST /__control/release
                  (or s seconds pass); then the rest of the spec (drip, delay, ...) applies. A
                  test can then act while the request is surely in flight, however slow it is

Every logged request has, besides testserver.py's fields, "fault" (the name of the fault it got,
or null) and "delivered" (false only for reset_before: the request was not processed).

--fail-share P makes the default answer fail for a share P of requests: which ones is a function
of (--seed, the Idempotency-Key, how many requests with that key came before), so a run is
repeatable whatever the order in which parallel requests arrive. A failure is a 500 or a reset
after the request was processed (half each). --bind serves on another loopback address
(127.0.0.2: a "different local host" for redirect tests).

The module also holds FaultServer, the test-side handle (a daemon_harness.TestServer)."""

import argparse
import base64
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from testserver import State  # noqa: E402  (the queue and the request log)


def _uniform(*parts):
    """A number in [0, 1) from the parts, the same in every run."""
    h = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0 ** 64


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "calpost-faultserver/1"

    def log_message(self, fmt, *args):
        pass

    def _rst(self):
        # SO_LINGER 0 turns close() into a RST: the client sees "connection reset".
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass
        self.close_connection = True

    def _control(self):
        state = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.command == "POST" and self.path == "/__control/script":
            state.load(json.loads(body or b"[]"))
            answer = {"ok": True}
        elif self.command == "POST" and self.path == "/__control/release":
            self.server.release.set()
            answer = {"ok": True}
        elif self.command == "POST" and self.path == "/__control/reset":
            state.reset()
            self.server.release.clear()
            with self.server.seen_lock:
                self.server.seen.clear()
            answer = {"ok": True}
        elif self.command == "GET" and self.path == "/__control/requests":
            answer = state.requests()
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        out = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def _random_fault(self, key, spec):
        """The default answer, or a seeded failure instead of it (--fail-share)."""
        srv = self.server
        if not srv.fail_share:
            return spec, None
        with srv.seen_lock:
            n = srv.seen.get(key, 0)
            srv.seen[key] = n + 1
        if _uniform(srv.seed, key, n, "fail") >= srv.fail_share:
            return spec, None
        if _uniform(srv.seed, key, n, "kind") < 0.5:
            return {"status": 500, "json": {"error": "injected failure"}}, "status500"
        return {"reset": True}, "reset"

    def _record(self, body, spec, fault, delivered):
        self.server.state.record({
            "method": self.command,
            "path": self.path,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body": body.decode("utf-8", errors="replace"),
            "body_b64": base64.b64encode(body).decode("ascii"),
            "time": time.time(),
            "status": None if (spec.get("reset") or spec.get("reset_before") or "raw" in spec)
            else int(spec.get("status", 200)),
            "fault": fault,
            "delivered": delivered,
        })

    def _handle(self):
        if self.path.startswith("/__control/"):
            self._control()
            return
        state = self.server.state
        path = self.path.split("?", 1)[0]
        with state.lock:
            scripted = any(("path" not in s or s["path"] == path) for s in state.queue)
        spec = state.next_response(path)
        fault = None
        if not scripted:
            spec, fault = self._random_fault(self.headers.get("Idempotency-Key"), spec)
        for name in ("reset_before", "drip", "truncate", "raw", "reset", "delay", "hold"):
            if spec.get(name) and fault is None:
                fault = name
        if spec.get("reset_before"):
            self._record(b"", spec, fault, False)
            self._rst()
            return
        length = self.headers.get("Content-Length")
        body = self.rfile.read(int(length)) if length else b""
        self._record(body, spec, fault, True)
        if spec.get("hold"):
            self.server.release.wait(float(spec["hold"]))
        if spec.get("delay"):
            time.sleep(float(spec["delay"]))
        if spec.get("reset"):
            self._rst()
            return
        if "raw" in spec:
            self.wfile.write(spec["raw"].encode())
            self.wfile.flush()
            self.close_connection = True
            return
        headers = spec.get("headers", {})
        headers = list(headers.items()) if isinstance(headers, dict) else list(headers)
        if "json" in spec:
            payload = json.dumps(spec["json"]).encode()
            if not any(k.lower() == "content-type" for k, _ in headers):
                headers.append(("Content-Type", "application/json"))
        elif "body_size" in spec:
            payload = b"x" * int(spec["body_size"])
        else:
            payload = spec.get("body", "").encode()
        self.send_response(int(spec.get("status", 200)))
        for name, value in headers:
            self.send_header(name, value)
        if spec.get("chunked"):
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(payload), 16384):
                chunk = payload[i:i + 16384]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if spec.get("truncate") is not None:
            self.wfile.write(payload[:int(spec["truncate"])])
            self.wfile.flush()
            self.close_connection = True
            return
        drip = spec.get("drip")
        if drip:
            step = max(1, int(drip.get("chunk", 1)))
            for i in range(0, len(payload), step):
                self.wfile.write(payload[i:i + step])
                self.wfile.flush()
                time.sleep(float(drip.get("interval", 0.2)))
            return
        self.wfile.write(payload)

    def _guarded(self):
        try:
            self._handle()
        except (BrokenPipeError, ConnectionResetError, OSError):
            # The client gave up (timeout, size cap): nothing left to tell it.
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _guarded


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # a burst of posts over many channels connects at once

    def handle_error(self, request, client_address):
        pass  # a client that hung up mid-answer is expected here, not an error


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--log", required=True, help="JSON-lines file of received requests")
    ap.add_argument("--bind", default="127.0.0.1", help="loopback address to serve on")
    ap.add_argument("--seed", type=int, default=0, help="seed of --fail-share")
    ap.add_argument("--fail-share", type=float, default=0.0,
                    help="share of default answers that fail (500 or reset)")
    args = ap.parse_args()
    if not args.bind.startswith("127."):
        sys.exit("faultserver.py serves on loopback addresses only")

    state = State(args.log)
    server = Server((args.bind, 0), Handler)
    server.state = state
    server.seed = args.seed
    server.fail_share = args.fail_share
    server.seen = {}
    server.seen_lock = threading.Lock()
    server.release = threading.Event()

    def stop(*_):
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def watch_stdin():
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except OSError:
            pass
        os._exit(0)

    threading.Thread(target=watch_stdin, daemon=True).start()
    print(server.server_address[1], flush=True)
    server.serve_forever()


# --- the test side --------------------------------------------------------------------------

def _harness():
    import daemon_harness
    return daemon_harness


class FaultServer(_harness().TestServer):
    """faultserver.py as a child process, with daemon_harness.TestServer's methods (script,
    requests, url, close)."""

    def __init__(self, folder, name="requests", bind="127.0.0.1", seed=0, fail_share=0.0):
        self.log = os.path.join(folder, name + ".jsonl")
        argv = ["/usr/bin/python3", os.path.abspath(__file__), "--log", self.log, "--bind", bind,
                "--seed", str(seed), "--fail-share", str(fail_share)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.port = int(self.proc.stdout.readline())
        self.base = "http://%s:%d" % (bind, self.port)

    def release(self):
        """Lets the answers held by "hold" specs go (and any later ones, until a reset)."""
        self._control("/__control/release", {})


class EnvDaemon(_harness().Daemon):
    """daemon_harness.Daemon with extra environment variables (LD_PRELOAD of libfaketime, a
    secret) and an optional function run in the child before exec (resource limits)."""

    def __init__(self, env, n, extra_env=None, preexec=None):
        self.env = env
        self.log_path = os.path.join(env.dir, "daemon-%d.log" % n)
        self._log = open(self.log_path, "wb")
        child_env = dict(os.environ)
        child_env.update(extra_env or {})
        self.proc = subprocess.Popen([_harness().CALPOST, "run", "-c", env.config],
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=self._log, env=child_env, preexec_fn=preexec)


class FaultEnv(_harness().Env):
    """daemon_harness.Env with a FaultServer in place of the test server; daemons started by
    spawn()/start() get daemon_env and daemon_preexec."""

    def __init__(self, name, server_kw=None, daemon_env=None, daemon_preexec=None, **kw):
        super().__init__(name, **kw)
        self.server.close()  # Env made a testserver.py: this environment uses faultserver.py
        self.server = FaultServer(self.dir, **(server_kw or {}))
        self.daemon_env = dict(daemon_env or {})
        self.daemon_preexec = daemon_preexec
        self.write_config()

    def spawn(self):
        d = EnvDaemon(self, len(self.daemons), self.daemon_env, self.daemon_preexec)
        self.daemons.append(d)
        return d


def fault_env(ctx, **kw):
    """A FaultEnv closed with the test (daemon_harness.Ctx keeps its environments)."""
    e = FaultEnv(ctx.name, **kw)
    ctx.envs.append(e)
    return e


if __name__ == "__main__":
    main()
