"""A TLS front for the sandbox, as nginx in front of XNAT would be.

It terminates TLS with a self-signed certificate for 127.0.0.1 (made with the `openssl` command,
so the test has a private CA of its own) and copies bytes both ways to the sandbox's plain HTTP
port, one thread per direction. Nothing in between is interpreted: what the client gets is the
sandbox's real answer over a real TLS connection.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
from pathlib import Path


class TlsFront:
    """`url` is https://127.0.0.1:PORT; `certificate` is the PEM a client may trust."""

    def __init__(self, backend_port: int, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.certificate = folder / "cert.pem"
        key = folder / "key.pem"
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                "-keyout", str(key), "-out", str(self.certificate), "-days", "1",
                "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(self.certificate, key)
        self._backend = backend_port
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="tls-front", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            secure = self._context.wrap_socket(client, server_side=True)
        except (ssl.SSLError, OSError):
            client.close()  # the client refused our certificate: nothing more to do
            return
        backend = socket.create_connection(("127.0.0.1", self._backend))
        done = threading.Event()

        def pump(source: socket.socket, target: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := source.recv(65536):
                    target.sendall(data)
            done.set()

        threading.Thread(target=pump, args=(backend, secure), daemon=True).start()
        pump(secure, backend)
        done.wait(5)
        for sock in (secure, backend):
            with contextlib.suppress(OSError):
                sock.close()

    def close(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the thread
        self._server.close()
        self._thread.join(5)
