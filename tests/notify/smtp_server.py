"""A real SMTP server for the e-mail tests: aiosmtpd on loopback, in one of three modes.

- "plain": no TLS at all (a local relay);
- "starttls": a plain greeting that offers STARTTLS, required before MAIL and before AUTH;
- "ssl": TLS from the first byte (SMTPS).

The certificate is a throwaway self-signed one for 127.0.0.1, made with the `openssl` command
(as `tls_front.py` does), so a client verifies it only when given `certificate` as its CA.
With `users` (TLS modes only), the server takes AUTH (PLAIN or LOGIN) and checks the password.
Every message it accepts is parsed and kept in `messages`; `wait_for(n)` waits on a condition
with a deadline.
"""

from __future__ import annotations

import email
import email.policy
import logging
import ssl
import subprocess
import threading
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

MAIL_LOG = logging.getLogger("mail.log")


class _Controller(Controller):
    """aiosmtpd's controller, bound to a free port: its readiness probe connects to
    `self.port`, so the port the OS chose is read from the listening socket first."""

    def _trigger_server(self) -> None:
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class SmtpServer:
    """`host`, `port`, `certificate`, `messages` (parsed), `envelopes` (from, to)."""

    def __init__(self, folder: Path, mode: str = "plain", users: dict[str, str] | None = None):
        self.mode = mode
        self.users = users
        self.host = "127.0.0.1"
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.logins: list[str] = []
        self._condition = threading.Condition()
        folder.mkdir(parents=True, exist_ok=True)
        self.certificate = folder / "smtp-cert.pem"
        key = folder / "smtp-key.pem"
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                "-keyout", str(key), "-out", str(self.certificate), "-days", "1",
                "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.certificate, key)
        options: dict[str, Any] = {}
        if mode == "starttls":
            options.update(tls_context=context, require_starttls=True)
        elif mode == "ssl":
            options.update(ssl_context=context)
        if users is not None:
            # AUTH only over TLS (aiosmtpd warns about anything else): a plain relay trusts
            # the host instead, as a local relay does.
            assert mode != "plain", "a plain relay takes no login"
            options.update(authenticator=self._authenticate)
            if mode == "starttls":
                options.update(auth_required=True)
            else:
                # aiosmtpd counts only STARTTLS as TLS for AUTH; over SMTPS the whole
                # connection is TLS, so its check is off (and AUTH optional, which keeps
                # aiosmtpd from warning about it).
                options.update(auth_require_tls=False)
        self._controller = _Controller(self, hostname=self.host, port=0, **options)

    @property
    def port(self) -> int:
        return int(self._controller.port)

    def start(self) -> None:
        # aiosmtpd logs a deprecation line of its own on every login ("mail.log"); it is not
        # ours, and it would show in every test that reads the captured log.
        self._mail_log_level = MAIL_LOG.level
        MAIL_LOG.setLevel(logging.CRITICAL)
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()
        MAIL_LOG.setLevel(self._mail_log_level)

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = data.login.decode()
        ok = self.users is not None and self.users.get(user) == data.password.decode()
        if ok:
            self.logins.append(user)
        return AuthResult(success=ok, handled=False)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self._condition:
            self.messages.append(message)  # type: ignore[arg-type]
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
            self._condition.notify_all()
        return "250 Message accepted for delivery"

    def wait_for(self, count: int, timeout: float = 20.0) -> list[EmailMessage]:
        """Wait until at least `count` messages arrived; fail with what did arrive if not."""
        with self._condition:
            arrived = self._condition.wait_for(lambda: len(self.messages) >= count, timeout)
            assert arrived, f"expected {count} message(s), got {len(self.messages)}"
            return list(self.messages)


def body(message: EmailMessage, subtype: str = "plain") -> str:
    """The text of the `subtype` part (plain or html) of a received message, with the wire's
    CRLF line ends back to newlines."""
    part = message.get_body(preferencelist=(subtype,))
    assert part is not None, f"no text/{subtype} part"
    return str(part.get_content()).replace("\r\n", "\n")
