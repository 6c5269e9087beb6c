"""A loopback HTTP server that reads every request body and throws it away: the null sink.

    python bench/harness/nullsink.py      # prints its URL, serves until SIGTERM or SIGINT

Why: to measure what sending costs the *client* (xnatdrop's pack + send), the server must cost
as little as possible and be the same for every client. XNAT, and even the sandbox, spend most
of an upload unpacking and parsing DICOM; this one only takes the bytes off the socket and
answers 200 with how many it took, so a client that sent a short or long body is caught. It is
a real server process on its own port, not a function in the client.

How it takes them: `os.splice` moves the socket's pages into a pipe and from there to
/dev/null, in the kernel, so the sink copies nothing itself. It shares the client's 2 cores
during the timed pack+send (the read+MD5 baseline has no sink): reading into a buffer cost it
about 0.17 ns a byte, a tenth of the client's own work; the splice about a quarter of that.
Where splice is missing (not Linux), it reads into one reused buffer.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import sys
import threading

BUFFER = 1 << 20
PIPE = 1 << 20  # the pipe's capacity: how much one splice moves at most


class Discard(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as requests and curl use it

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        left = self._discard(length)
        answer = json.dumps({"bytes": length - left}).encode()
        self.send_response(200 if not left else 400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def _discard(self, length: int) -> int:
        """Take `length` bytes of body; return how many did not come."""
        left = length
        # What the header parser read ahead of the body is in rfile's buffer, not the socket.
        held = self.rfile.peek(0)[:left] if left else b""
        if held:
            left -= len(self.rfile.read(len(held)))
        if left and hasattr(os, "splice"):
            return self._splice(left)
        buffer = bytearray(min(BUFFER, max(left, 1)))
        view = memoryview(buffer)
        while left:
            got = self.rfile.readinto(view[: min(left, BUFFER)])
            if not got:
                break
            left -= got
        return left

    def _splice(self, left: int) -> int:
        socket_fd = self.connection.fileno()
        read_end, write_end = os.pipe()
        try:
            import fcntl

            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE)
            with open(os.devnull, "wb") as null:
                while left:
                    got = os.splice(socket_fd, write_end, min(left, PIPE))
                    if not got:
                        break
                    left -= got
                    while got:
                        got -= os.splice(read_end, null.fileno(), got)
        finally:
            os.close(read_end)
            os.close(write_end)
        return left

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
