"""A stand-in for healthchecks.io: a real HTTP server on loopback that records every GET
(path and User-Agent) and answers `status`; `wait_for(n)` waits on a condition with a deadline.
"""

from __future__ import annotations

import http.server
import threading


class Monitor:
    """A tiny HTTP server that records every GET (path, User-Agent) and answers `status`."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.status = 200
        self._condition = threading.Condition()
        monitor = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with monitor._condition:
                    monitor.requests.append((self.path, self.headers.get("User-Agent", "")))
                    monitor._condition.notify_all()
                self.send_response(monitor.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, format: str, *args: object) -> None:
                pass  # the test reads `requests`; nothing for stderr

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ping/0f3c-secret-uuid"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout: float = 20.0) -> list[tuple[str, str]]:
        with self._condition:
            assert self._condition.wait_for(lambda: len(self.requests) >= count, timeout)
            return list(self.requests)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
