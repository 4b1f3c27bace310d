#!/usr/bin/python3
"""Loopback HTTP server for connector tests: records every request and serves scripted answers.

    testserver.py --log REQUESTS.jsonl [--script SCRIPT.json]

Listens on 127.0.0.1 on a free port and prints that port as the first line on stdout. Exits on
SIGTERM, SIGINT, or when its stdin reaches end of file (so it dies with the test that spawned it
through a pipe).

Every request (except to /__control/...) is appended to the log as one JSON object per line,
before it is answered: {"method", "path", "headers": [[name, value], ...], "body" (UTF-8 text,
undecodable bytes replaced), "body_b64", "time", "status" (the status it is about to be answered
with; null for a reset)}.

Answers come from a queue of response specs, first match first; when nothing matches, the default
({"status": 200, "json": {}} unless replaced). A spec is a JSON object:
    status     HTTP status (200)
    headers    {"Name": "value"} or [["Name", "value"], ...], e.g. Retry-After
    body       text body; or
    json       any JSON value, sent with Content-Type: application/json; or
    body_b64   a binary body, base64-encoded; or
    body_size  that many bytes of "x"
    chunked    true: send the body with Transfer-Encoding: chunked (no Content-Length)
    delay      seconds to wait before answering
    delay_max  with delay: wait a random time between delay and delay_max seconds (--seed)
    reset      true: answer nothing, close the connection with a TCP reset
    path       answer only requests for this path (query excluded)
    repeat     true: stay in the queue instead of being used once

The queue comes from --script (a JSON array, or {"responses": [...], "default": {...}}) and can be
replaced at run time by POSTing the same JSON to /__control/script. POST /__control/reset empties
the queue and the log; GET /__control/requests returns the log as a JSON array.
"""

import argparse
import base64
import json
import os
import random
import signal
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_RESPONSE = {"status": 200, "json": {}}


class State:
    def __init__(self, log_path):
        self.lock = threading.Lock()
        self.log_path = log_path
        self.queue = []
        self.default = dict(DEFAULT_RESPONSE)
        open(log_path, "w").close()

    def load(self, script):
        with self.lock:
            if isinstance(script, dict):
                self.queue = list(script.get("responses", []))
                self.default = script.get("default", dict(DEFAULT_RESPONSE))
            else:
                self.queue = list(script)
                self.default = dict(DEFAULT_RESPONSE)

    def reset(self):
        with self.lock:
            self.queue = []
            self.default = dict(DEFAULT_RESPONSE)
            open(self.log_path, "w").close()

    def record(self, entry):
        with self.lock:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(entry) + "\n")
                f.flush()

    def requests(self):
        with self.lock:
            with open(self.log_path) as f:
                return [json.loads(line) for line in f if line.strip()]

    def next_response(self, path):
        with self.lock:
            for i, spec in enumerate(self.queue):
                if "path" in spec and spec["path"] != path:
                    continue
                if not spec.get("repeat"):
                    del self.queue[i]
                return spec
            return self.default


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "calpost-testserver/1"

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("testserver: " + (fmt % args) + "\n")

    def _read_body(self):
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        return self.rfile.read(int(length))

    def _send(self, status, headers, body):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _control(self, body):
        state = self.server.state
        if self.command == "POST" and self.path == "/__control/script":
            state.load(json.loads(body or b"[]"))
            answer = {"ok": True}
        elif self.command == "POST" and self.path == "/__control/reset":
            state.reset()
            answer = {"ok": True}
        elif self.command == "GET" and self.path == "/__control/requests":
            answer = state.requests()
        else:
            self._send(404, [("Content-Length", "0")], b"")
            return
        out = json.dumps(answer).encode()
        self._send(200, [("Content-Type", "application/json"),
                         ("Content-Length", str(len(out)))], out)

    def _handle(self):
        body = self._read_body()
        if self.path.startswith("/__control/"):
            self._control(body)
            return
        state = self.server.state
        spec = state.next_response(self.path.split("?", 1)[0])
        state.record({
            "method": self.command,
            "path": self.path,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body": body.decode("utf-8", errors="replace"),
            "body_b64": base64.b64encode(body).decode("ascii"),
            "time": time.time(),
            "status": None if spec.get("reset") else int(spec.get("status", 200)),
        })
        if spec.get("delay_max") is not None:
            time.sleep(self.server.rng.uniform(float(spec.get("delay", 0)),
                                               float(spec["delay_max"])))
        elif spec.get("delay"):
            time.sleep(float(spec["delay"]))
        if spec.get("reset"):
            # SO_LINGER 0 turns close() into a RST: the client sees "connection reset".
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        headers = spec.get("headers", {})
        headers = list(headers.items()) if isinstance(headers, dict) else list(headers)
        if "json" in spec:
            payload = json.dumps(spec["json"]).encode()
            if not any(k.lower() == "content-type" for k, _ in headers):
                headers.append(("Content-Type", "application/json"))
        elif "body_b64" in spec:
            payload = base64.b64decode(spec["body_b64"])
        elif "body_size" in spec:
            payload = b"x" * int(spec["body_size"])
        else:
            payload = spec.get("body", "").encode()
        status = int(spec.get("status", 200))
        if self.command == "HEAD":
            payload = b""
        if spec.get("chunked"):
            headers.append(("Transfer-Encoding", "chunked"))
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            for i in range(0, len(payload), 16384):
                chunk = payload[i:i + 16384]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        else:
            headers.append(("Content-Length", str(len(payload))))
            self._send(status, headers, payload)

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
    request_queue_size = 128  # Python's default of 5 stalls a client that opens many at once

    def handle_error(self, request, client_address):
        pass  # a client that hung up mid-answer is expected here, not an error


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--log", required=True, help="JSON-lines file of received requests")
    ap.add_argument("--script", help="JSON file with the responses to serve")
    ap.add_argument("--verbose", action="store_true", help="log requests to stderr")
    ap.add_argument("--seed", type=int, help="seed of the random delays (delay_max)")
    args = ap.parse_args()

    state = State(args.log)
    if args.script:
        with open(args.script) as f:
            state.load(json.load(f))
    server = Server(("127.0.0.1", 0), Handler)
    server.state = state
    server.verbose = args.verbose
    server.rng = random.Random(args.seed)

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


if __name__ == "__main__":
    main()
