"""E-mail through the site's SMTP server, with the standard library's smtplib.

Three ways to connect (`[mail] security`): "ssl" (TLS from the first byte, port 465, RFC 8314),
"starttls" (a plain connection upgraded with STARTTLS, RFC 3207; refused when the server does not
offer it, so a misconfigured server never gets the password in clear), and "none" (a relay on
this machine). The certificate is verified against the system's store or `mail.ca_bundle`.

Every failure is turned into `DeliveryError` with one sentence of our own (server, port, what
happened, what to change), never smtplib's raw text with the server's banner, and never the
password. `check_connection` does what sending does up to the login and stops there: it is what
`xnatdrop doctor` runs.
"""

from __future__ import annotations

import email.utils
import smtplib
import socket
import ssl
from email.message import EmailMessage

from xnatdrop import __version__
from xnatdrop.config import MailSettings
from xnatdrop.errors import XnatdropError


class DeliveryError(XnatdropError):
    """The message could not be handed to the SMTP server; the text says why, in our words."""


def tls_context(settings: MailSettings) -> ssl.SSLContext:
    """The TLS context for the SMTP server: verified unless `verify_tls = false`."""
    context = ssl.create_default_context(
        cafile=str(settings.ca_bundle) if settings.ca_bundle else None
    )
    if not settings.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def build(
    settings: MailSettings,
    to: list[str],
    subject: str,
    text: str,
    html: str | None = None,
) -> EmailMessage:
    """A message from `mail.sender` to `to`: plain text, or multipart/alternative with HTML.

    Marked `Auto-Submitted: auto-generated` (RFC 3834) so that vacation responders do not
    answer it.
    """
    message = EmailMessage()
    message["From"] = settings.sender or ""
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message["Date"] = email.utils.formatdate(localtime=True)
    message["Message-ID"] = email.utils.make_msgid(
        domain=(settings.sender or "x@xnatdrop").split("@")[1]
    )
    message["Auto-Submitted"] = "auto-generated"
    message["X-Mailer"] = f"xnatdrop {__version__}"
    message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html")
    return message


def _where(settings: MailSettings) -> str:
    return f"{settings.host}:{settings.effective_port}"


def _open(settings: MailSettings, password: str | None) -> smtplib.SMTP:
    """Connect, say EHLO, upgrade to TLS if configured, log in if configured; the caller closes.

    Raise DeliveryError for anything that goes wrong, in our words.
    """
    where = _where(settings)
    host = settings.host or ""
    # getfqdn() may wait for a reverse DNS lookup; the plain host name is enough for EHLO.
    local = socket.gethostname()
    try:
        if settings.security == "ssl":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                host,
                settings.effective_port,
                local_hostname=local,
                timeout=settings.timeout_seconds,
                context=tls_context(settings),
            )
        else:
            smtp = smtplib.SMTP(
                host,
                settings.effective_port,
                local_hostname=local,
                timeout=settings.timeout_seconds,
            )
    except (OSError, smtplib.SMTPException) as error:
        raise DeliveryError(_connect_failure(settings, error)) from None
    try:
        smtp.ehlo()
        if settings.security == "starttls":
            if not smtp.has_extn("starttls"):
                raise DeliveryError(
                    f"the SMTP server {where} does not offer STARTTLS; set mail.security = "
                    '"ssl" (usually port 465) if it speaks TLS from the start, or "none" only '
                    "for a relay on this machine"
                )
            smtp.starttls(context=tls_context(settings))
            smtp.ehlo()
        if settings.username is not None:
            smtp.login(settings.username, password or "")
    except smtplib.SMTPAuthenticationError as error:
        smtp.close()
        raise DeliveryError(
            f"the SMTP server {where} refused the login of {settings.username!r} (code "
            f"{error.smtp_code}); check mail.username and the SMTP password"
        ) from None
    except smtplib.SMTPNotSupportedError:
        smtp.close()
        raise DeliveryError(
            f"the SMTP server {where} does not offer a login (AUTH) on this connection; remove "
            'mail.username, or use security "starttls"/"ssl" if it offers AUTH only over TLS'
        ) from None
    except (OSError, smtplib.SMTPException) as error:
        smtp.close()
        raise DeliveryError(_connect_failure(settings, error)) from None
    except DeliveryError:
        smtp.close()
        raise
    return smtp


def _connect_failure(settings: MailSettings, error: BaseException) -> str:
    """One sentence for a connection that failed before or during the greeting or TLS."""
    where = _where(settings)
    if isinstance(error, ssl.SSLCertVerificationError):
        return (
            f"the TLS certificate of the SMTP server {where} could not be verified "
            f"({error.verify_message}); if it comes from a private CA, set mail.ca_bundle"
        )
    if isinstance(error, ssl.SSLError):
        return (
            f"TLS with the SMTP server {where} failed ({error.reason or 'handshake'}); check "
            'mail.security: "ssl" is for TLS from the first byte (port 465), "starttls" for '
            "port 587"
        )
    if isinstance(error, socket.gaierror):
        return f"the SMTP server name {settings.host!r} does not resolve; check mail.host"
    if isinstance(error, ConnectionRefusedError):
        return f"the SMTP server {where} refused the connection; check mail.host and mail.port"
    # smtplib turns a timeout while waiting for an answer into SMTPServerDisconnected, raised
    # while handling the timeout: the timeout is its __context__.
    if isinstance(error, TimeoutError) or isinstance(error.__context__, TimeoutError):
        return (
            f"the SMTP server {where} did not answer within {settings.timeout_seconds:.0f} s; "
            "check mail.host, mail.port and mail.security"
        )
    if isinstance(error, smtplib.SMTPServerDisconnected):
        return (
            f'the SMTP server {where} closed the connection; check mail.security ("ssl" for '
            'port 465, "starttls" for 587)'
        )
    if isinstance(error, smtplib.SMTPResponseException):
        return f"the SMTP server {where} answered with code {error.smtp_code}"
    return f"cannot talk to the SMTP server {where} ({type(error).__name__})"


def send(settings: MailSettings, password: str | None, message: EmailMessage) -> None:
    """Hand `message` to the SMTP server. Raise DeliveryError (our words) on any failure."""
    smtp = _open(settings, password)
    where = _where(settings)
    try:
        refused = smtp.send_message(message)
    except smtplib.SMTPRecipientsRefused as error:
        raise DeliveryError(
            f"the SMTP server {where} refused every recipient "
            f"({', '.join(sorted(error.recipients))}); check mail.to and drop.notify_email"
        ) from None
    except smtplib.SMTPSenderRefused as error:
        raise DeliveryError(
            f"the SMTP server {where} refused the sender {error.sender!r} (code "
            f"{error.smtp_code}); set mail.sender to an address it accepts from this account"
        ) from None
    except smtplib.SMTPDataError as error:
        raise DeliveryError(
            f"the SMTP server {where} refused the message (code {error.smtp_code})"
        ) from None
    except (OSError, smtplib.SMTPException) as error:
        raise DeliveryError(_connect_failure(settings, error)) from None
    finally:
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            smtp.close()
    if refused:
        raise DeliveryError(
            f"the SMTP server {where} refused some recipients ({', '.join(sorted(refused))}); "
            "the others got the message"
        )


def check_connection(settings: MailSettings, password: str | None) -> str:
    """Connect, greet, upgrade to TLS and log in as sending would, then quit without sending.

    Return a one-line description of what worked; raise DeliveryError with what did not.
    """
    smtp = _open(settings, password)
    try:
        smtp.noop()
    finally:
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            smtp.close()
    how = {"ssl": "TLS", "starttls": "STARTTLS", "none": "no encryption"}[settings.security]
    login = f", logged in as {settings.username!r}" if settings.username else ""
    return f"SMTP server {_where(settings)}: connected ({how}{login}); nothing was sent"
