"""An HTTP front for the sandbox that counts the requests in flight at once, per kind.

It forwards every request as it came (method, path, headers, body) to the sandbox over a real
socket and hands back the sandbox's real answer; nothing is interpreted or made up. What it
adds is a count: for each kind of request (`kinds`: name → predicate on method and path) the
most that were in flight together, and how many logins (POST /data/JSESSION) and logouts
(DELETE /data/JSESSION) it saw.

To show whether a client reads concurrently without timing anything, the first request of
each gated kind is held until a second of that kind arrives, or `hold_seconds` pass: a client
that reads one at a time is then seen with at most 1 in flight (after one wait of
`hold_seconds`), a concurrent one with 2 or more, whatever the machine's load.
"""

from __future__ import annotations

import collections
import http.client
import http.server
import threading
from collections.abc import Callable

Kind = Callable[[str, str], bool]  # (method, path without query) -> belongs to the kind
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}


class GateFront:
    """`url` is http://127.0.0.1:PORT, in front of the sandbox at `backend_port`."""

    def __init__(
        self, backend_port: int, kinds: dict[str, Kind], hold_seconds: float = 5.0
    ) -> None:
        self.kinds = kinds
        self.hold_seconds = hold_seconds
        self.in_flight: collections.Counter[str] = collections.Counter()
        self.most: collections.Counter[str] = collections.Counter()
        self.seen: collections.Counter[str] = collections.Counter()
        self.logins = self.logouts = 0
        self._held: set[str] = set()
        self._changed = threading.Condition()
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet: the test reads the counts
                pass

            def _forward(self) -> None:
                front.forward(self, backend_port)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> GateFront:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _kinds_of(self, method: str, path: str) -> list[str]:
        return [name for name, belongs in self.kinds.items() if belongs(method, path)]

    def _enter(self, kinds: list[str]) -> None:
        with self._changed:
            for kind in kinds:
                self.in_flight[kind] += 1
                self.seen[kind] += 1
                self.most[kind] = max(self.most[kind], self.in_flight[kind])
            self._changed.notify_all()
            first = [k for k in kinds if k not in self._held]
            self._held.update(first)
            if first:  # the first of its kind waits for a second, or for the deadline
                self._changed.wait_for(
                    lambda: all(self.in_flight[k] >= 2 for k in first), self.hold_seconds
                )

    def _leave(self, kinds: list[str]) -> None:
        with self._changed:
            for kind in kinds:
                self.in_flight[kind] -= 1
            self._changed.notify_all()

    def forward(self, handler: http.server.BaseHTTPRequestHandler, backend_port: int) -> None:
        method, path = handler.command, handler.path.split("?", 1)[0]
        if path == "/data/JSESSION":
            with self._changed:
                self.logins += method == "POST"
                self.logouts += method == "DELETE"
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        kinds = self._kinds_of(method, path)
        self._enter(kinds)
        try:
            backend = http.client.HTTPConnection("127.0.0.1", backend_port, timeout=120)
            headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP}
            backend.request(method, handler.path, body=body, headers=headers)
            answer = backend.getresponse()
            data = answer.read()
            backend.close()
        finally:
            self._leave(kinds)
        handler.send_response_only(answer.status, answer.reason)
        for name, value in answer.getheaders():
            if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if method != "HEAD":
            handler.wfile.write(data)
