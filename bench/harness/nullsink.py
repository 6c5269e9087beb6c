"""A loopback HTTP server that reads every request body and throws it away: the null sink.

    python bench/harness/nullsink.py      # prints its URL, serves until SIGTERM or SIGINT

Why: to measure what sending costs the *client* (xnatdrop's pack + send), the server must cost
as little as possible and be the same for every client. XNAT, and even the sandbox, spend most
of an upload unpacking and parsing DICOM; this one only reads the bytes off the socket (into one
reused buffer) and answers 200 with how many it read, so a client that sent a short or long
body is caught. It is a real server process on its own port, not a function in the client.
"""

from __future__ import annotations

import http.server
import json
import signal
import sys
import threading

BUFFER = 1 << 20


class Discard(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as requests and curl use it

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        buffer = bytearray(min(BUFFER, max(length, 1)))
        view = memoryview(buffer)
        left = length
        while left:
            got = self.rfile.readinto(view[: min(left, BUFFER)])
            if not got:
                break
            left -= got
        answer = json.dumps({"bytes": length - left}).encode()
        self.send_response(200 if not left else 400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_PUT = do_POST

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: one line per request would cost more than the request."""


def main() -> int:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Discard)
    server.daemon_threads = True
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    stopping.wait()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
