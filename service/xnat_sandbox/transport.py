"""The sandbox's HTTP front: the listening socket, one thread per connection, faults on the wire.

`HttpFront` serves with the standard library's `ThreadingHTTPServer` (HTTP/1.1, keep-alive) and
hands each request, path unquoted and query parsed, to the `respond` function it was given
(`routes.respond`, bound to the sandbox). What happens on the wire rather than in XNAT lives
here: `Expect: 100-continue` answered only when the body is read (as Tomcat does), the injected
faults (a failed answer, latency, a connection cut after N body bytes, a proxy's read timeout),
keep-alive kept only when an early answer's body can be drained, and a stop that cuts idle
keep-alive connections and lets requests in flight end first.
"""

from __future__ import annotations

import array
import collections
import contextlib
import fcntl
import http
import http.server
import logging
import socket
import sys
import termios
import threading
import time
import urllib.parse
from collections.abc import Callable
from email.message import Message
from typing import Any

from xnat_sandbox import bodies, control, tables

log = logging.getLogger(__name__)

#: Request bodies up to this size are read and discarded after an early answer so that the
#: connection can be kept alive; larger ones close the connection instead.
DRAIN_LIMIT = 64 * 1024 * 1024

Respond = Callable[[str, str, dict[str, list[str]], Message, bodies.Body], tables.Response]
"""`respond(method, path, query, headers, body)`: one request's answer (`routes.respond`)."""


def bytes_waiting(connection: socket.socket) -> int:
    """The bytes received on `connection` and not yet read (FIONREAD), 0 for none or a closed
    peer: one ioctl, like the zero-timeout poll it replaces, but it says how many, so that a
    body read in small pieces asks once per arrival rather than once per piece (`Body.ready`)."""
    count = array.array("i", [0])
    fcntl.ioctl(connection.fileno(), termios.FIONREAD, count, True)
    return count[0]


class HttpFront:
    """The listening socket and its threads. `__init__` binds (port 0 picks a free one), so the
    port is known before `start()`; `stop()` waits for the requests in flight."""

    def __init__(
        self,
        host: str,
        port: int,
        respond: Respond,
        faults: control.Faults,
        requests: collections.Counter[str],
    ) -> None:
        self.respond = respond
        self.faults = faults
        #: Requests received, by "METHOD /path/as/sent" (faulted ones included).
        self.requests = requests
        self.stopping = threading.Event()
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        self._inflight = 0  # requests being handled; stop() lets them end before closing
        self._idle = threading.Condition()
        self._server = _Server((host, port), _RequestHandler)
        self._server.front = self
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="sandbox-http", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, cut open keep-alive connections, wait for the requests in flight."""
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        with self.connections_lock:
            for connection in list(self.connections):
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=10)
        with self._idle:  # a request cut off from its client ends at its next socket read
            if not self._idle.wait_for(lambda: self._inflight == 0, timeout=30):
                log.warning("sandbox: %d request(s) still running at stop", self._inflight)

    def begin(self) -> None:
        """A request (or a worker answering one behind a proxy) starts: `stop()` waits for it."""
        with self._idle:
            self._inflight += 1

    def end(self) -> None:
        with self._idle:
            self._inflight -= 1
            self._idle.notify_all()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    front: HttpFront

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (a reset, a broken pipe: a killed or timed-out client) is
        everyday business for a server, which Tomcat does not report; socketserver would print a
        traceback to stderr for each. Anything else is a sandbox bug and keeps its traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            log.debug("client %s went away (%s)", client_address[0], type(error).__name__)
            return
        super().handle_error(request, client_address)


class _RequestHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Apache-Coyote/1.1"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Like Tomcat (tcpNoDelay=true): without it, headers and body go out as two small
        # writes and Nagle + the client's delayed ACK stall every keep-alive response ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        front = self.server.front
        with front.connections_lock:
            front.connections.add(self.connection)

    def finish(self) -> None:
        front = self.server.front
        with front.connections_lock:
            front.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one debug line per request is written by _serve instead

    def handle_expect_100(self) -> bool:
        return True  # Tomcat: 100 Continue only once the application reads the body

    def _arrived(self) -> int:
        """How many bytes wait on the connection (`bytes_waiting`): a receive now would not wait
        for the client when there are any."""
        return bytes_waiting(self.connection)

    def _send_continue(self) -> None:
        self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.wfile.flush()

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_GET

    def _serve(self) -> None:
        front = self.server.front
        started = time.monotonic()
        split = urllib.parse.urlsplit(self.path)
        full_path = urllib.parse.unquote(split.path)
        query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
        length = self.headers.get("Content-Length")
        body = bodies.Body(
            self.rfile,
            self._send_continue,
            int(length) if length and length.isdigit() else None,
            "chunked" in (self.headers.get("Transfer-Encoding") or "").lower(),
            (self.headers.get("Expect") or "").lower() == "100-continue",
            self._arrived,
        )
        front.requests[f"{self.command} {full_path}"] += 1
        front.begin()
        try:
            self._serve_counted(front, started, full_path, query, body)
        finally:
            front.end()

    def _serve_counted(
        self,
        front: HttpFront,
        started: float,
        full_path: str,
        query: dict[str, list[str]],
        body: bodies.Body,
    ) -> None:
        fired = front.faults.fire(self.command, full_path)
        if fired.latency:
            front.stopping.wait(fired.latency)
        body.drop_after = fired.drop_after
        try:
            if fired.fail is not None:
                response = _fault_response(fired.fail)
            elif fired.timeout is not None:
                answered = self._behind_proxy(front, full_path, query, body, fired.timeout)
                if answered is None:
                    return
                response = answered
            else:
                method = "GET" if self.command == "HEAD" else self.command  # body dropped
                response = front.respond(method, full_path, query, self.headers, body)
        except bodies.ConnectionDropped:
            log.debug(
                "%s %s: connection dropped after %d body bytes (fault)",
                self.command,
                full_path,
                body.received,
            )
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        except bodies.ClientGone as error:
            log.debug("%s %s: %s", self.command, full_path, error)
            self.close_connection = True
            return
        try:
            keep = body.drain(DRAIN_LIMIT)
        except (bodies.ClientGone, bodies.ConnectionDropped):
            keep = False
        self._write(response, close=not keep)
        log.debug(
            "%s %s -> %d (%d body bytes in, %.3f s)",
            self.command,
            full_path,
            response.status,
            body.received,
            time.monotonic() - started,
        )

    def _behind_proxy(
        self,
        front: HttpFront,
        full_path: str,
        query: dict[str, list[str]],
        body: bodies.Body,
        timeout: float,
    ) -> tables.Response | None:
        """Handle the request in a worker; answer what it answers, or, once `timeout` seconds
        passed after the whole body arrived, nginx's 504 (returns None: already written).

        The worker goes on to the end and its answer is dropped, as when nginx gives up on an
        upstream that is still building. It counts as in flight until it ends, so `stop()`
        waits for it. Waiting is on the worker's completion event, polled for the body's end.
        """
        done = threading.Event()
        outcome: list[Any] = []
        method = "GET" if self.command == "HEAD" else self.command
        headers = self.headers

        def work() -> None:
            try:
                outcome.append(front.respond(method, full_path, query, headers, body))
            except (bodies.ConnectionDropped, bodies.ClientGone) as error:
                outcome.append(error)
            finally:
                done.set()
                front.end()

        front.begin()
        threading.Thread(target=work, name="sandbox-behind-proxy", daemon=True).start()
        body_done_at: float | None = None
        while not done.wait(0.02):
            if body_done_at is None and body.finished:
                body_done_at = time.monotonic()
            if body_done_at is not None and time.monotonic() - body_done_at >= timeout:
                log.info("%s %s: proxy timeout after %.1f s, 504", self.command, full_path, timeout)
                page = control.PROXY_PAGES[504].encode()
                self._write(tables.Response(504, "text/html", page), close=True)
                return None
        result = outcome[0]
        if isinstance(result, Exception):
            raise result
        return result

    def _write(self, response: tables.Response, close: bool) -> None:
        try:
            self.send_response(response.status, response.reason)
            size = response.file.stat().st_size if response.file else len(response.body)
            if response.content_type:  # a redirect from a servlet filter has none
                self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(size))
            for name, value in response.headers:
                self.send_header(name, value)
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command == "HEAD":
                return
            if response.file is not None:
                with response.file.open("rb") as source:
                    while chunk := source.read(bodies.CHUNK):
                        self.wfile.write(chunk)
            else:
                self.wfile.write(response.body)
        except OSError as error:  # the client went away while we answered
            log.debug("answer not delivered: %s", error)
            self.close_connection = True
        finally:
            if response.file is not None and response.delete_file_after:
                response.file.unlink(missing_ok=True)


def _fault_response(rule: control.Rule) -> tables.Response:
    if rule.body is not None:
        return tables.Response(rule.status, tables.HTML, rule.body.encode())
    if rule.status in control.PROXY_PAGES:
        return tables.Response(rule.status, "text/html", control.PROXY_PAGES[rule.status].encode())
    message = http.HTTPStatus(rule.status).phrase if rule.status in _KNOWN else "Injected fault"
    return tables.error_response(tables.HttpError(rule.status, message))


_KNOWN = {s.value for s in http.HTTPStatus}
