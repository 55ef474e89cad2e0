"""A fault-injecting HTTP proxy on loopback, in front of the local S3 server.

Each request is forwarded to the real server, except that a set share of
them (drawn from a seeded generator, so a run is repeatable) get a fault:

- `error`: a 500 or 503 answer with S3's error body, the request never forwarded;
- `reset`: the request is forwarded (the server acts on it) and the
  connection is then closed without an answer, as when a reply is lost;
- `stall`: the answer comes only after `stall_s` (past the client's timeout);
- `cut`: the answer's headers promise the whole body, half of it comes, and
  the connection closes.

Only loopback addresses are used: the proxy listens on 127.0.0.1 and
forwards to the server's own loopback port. It stops with `close()`.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import random
import threading
import time
from collections import Counter
from urllib.parse import urlsplit

FAULTS = ("error", "reset", "stall", "cut")
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection"}


class FaultProxy:
    """`FaultProxy(upstream, rate).url` is an S3 endpoint that fails `rate` of requests."""

    def __init__(self, upstream: str, rate: float, *, seed: int = 0, stall_s: float = 3.0,
                 faults: tuple[str, ...] = FAULTS):
        parts = urlsplit(upstream)
        assert parts.hostname in ("127.0.0.1", "localhost"), "loopback only"
        self.upstream = (parts.hostname, parts.port)
        self.rate, self.stall_s, self.faults = rate, stall_s, faults
        self.injected: Counter[str] = Counter()
        self.requests = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                proxy._handle(self)

            do_PUT = do_POST = do_HEAD = do_DELETE = do_GET

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def _draw(self) -> str | None:
        with self._lock:
            self.requests += 1
            if self._rng.random() >= self.rate:
                return None
            fault = self._rng.choice(self.faults)
            self.injected[fault] += 1
            return fault

    def _handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        # the client may give up on an answer (its timeout): as a real server sees it
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._answer(h)

    def _answer(self, h: http.server.BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        fault = self._draw()
        if fault == "error":
            code = self._rng.choice((500, 503))
            payload = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>"
                       + (b"InternalError" if code == 500 else b"SlowDown")
                       + b"</Code><Message>injected</Message></Error>")
            h.send_response(code)
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(payload)
            return
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP_HEADERS}
        conn.request(h.command, h.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        if fault == "reset":  # the server did it; the answer never arrives
            h.close_connection = True
            return
        if fault == "stall":
            time.sleep(self.stall_s)
        h.send_response(resp.status)
        head = h.command == "HEAD"  # a HEAD's Content-Length is the object's, not this body's
        for k, v in resp.getheaders():
            if k.lower() not in _HOP_HEADERS and (head or k.lower() != "content-length"):
                h.send_header(k, v)
        if not head:
            h.send_header("Content-Length", str(len(data)))
        if fault == "cut":
            h.send_header("Connection", "close")
        h.end_headers()
        if head:
            return
        if fault == "cut" and len(data) > 1:
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        h.wfile.write(data)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
