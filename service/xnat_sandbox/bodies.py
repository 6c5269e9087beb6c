"""Request bodies: streamed, never held in memory, and classified the way XNAT does (§3.1).

`Body` reads a Content-Length or chunked body in bounded pieces, sends `100 Continue` only when
the body is first read (Tomcat's behaviour: a request rejected before its body is read gets its
final status without the interim 100), and can cut the connection after K bytes (fault hook).
`receive` turns the body into uploads (files spooled to disk) and form parameters.
"""

from __future__ import annotations

import email.message
import hashlib
import json
import os
import tempfile
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from xnat_sandbox import tables

CHUNK = 1024 * 1024
MAX_FORM = 4 * 1024 * 1024

#: `RequestUtil.supported_upload_types` (web/.../restlet/util/RequestUtil.java l.36-66): a raw
#: body whose media type is one of these keys is an upload named "upload" + the value
#: (`deriveFileName`); the name then decides the archive decoder. The keys are Restlet 1.1's
#: `MediaType` constants. Anything else, `application/x-zip-compressed` included, is not an
#: upload at all, so the importer finds no file (400 "Unable to identify upload format.").
DERIVED_SUFFIXES = {
    "text/*": ".txt",
    "application/*": "",
    "text/plain": ".txt",
    "text/xml": ".xml",
    "text/csv": ".csv",
    "application/dicom": ".dcm",
    "application/zip": ".zip",
    "application/xar": ".xar",
    "application/x-gtar": ".tar.gz",
    "application/x-gzip": ".gzip",
    "application/octet-stream": "",
    "application/pdf": ".pdf",
    "application/vnd.ms-excel": ".xls",
    "application/vnd.ms-powerpoint": ".ppt",
    "application/x-tar": ".tar",
    "application/msword": ".doc",
    "image/*": ".img",
    "image/bmp": ".bmp",
    "image/gif": ".gif",
    "image/x-icon": ".icon",
    "image/jpeg": ".jpeg",
    "image/png": ".png",
    "image/svg+xml": ".svg",
    "image/tiff": ".tiff",
    "video/*": ".video",
    "video/x-msvideo": ".avi",
    "video/mp4": ".mp4",
    "video/mpeg": ".mpg",
    "video/quicktime": ".mov",
    "video/x-ms-wmv": ".wmv",
}
SUPPORTED_UPLOAD_TYPES = frozenset(DERIVED_SUFFIXES)
DERIVED_NAMES = {kind: "upload" + suffix for kind, suffix in DERIVED_SUFFIXES.items()}


class ConnectionDropped(Exception):
    """The drop-after-K-bytes fault fired: close the socket without answering."""


class ClientGone(Exception):
    """The client closed the connection before sending the whole body."""


class Body:
    """The request body as a bounded-chunk stream (Content-Length or chunked)."""

    def __init__(
        self,
        rfile: BinaryIO,
        send_continue: Callable[[], None],
        content_length: int | None,
        chunked: bool,
        expect_continue: bool,
        pending: Callable[[], int] | None = None,
    ) -> None:
        self._rfile = rfile
        self._pending = pending  # how many bytes wait on the connection
        #: body bytes known to have arrived and not read yet (`ready`): till they are read, a
        #: read does not wait, and the connection need not be asked again
        self._arrived = 0
        self._send_continue = send_continue
        self._chunked = chunked
        self._remaining = 0 if chunked else (content_length or 0)
        self._chunk_left = 0
        self._expect = expect_continue
        self.finished = not chunked and self._remaining == 0
        self.received = 0
        self.drop_after: int | None = None

    @property
    def started(self) -> bool:
        return not self._expect

    def ready(self) -> bool:
        """Whether `read_some` would return without waiting for the client: the body is read
        to its end, or bytes have arrived on the connection (`pending`: how many wait on the
        socket, asked again only once that many have been read, since till then a read finds at
        least one of them). Bytes already in `rfile`'s buffer are not seen, so this may say False
        when a read would not wait: a caller that acts on False does so early, never late."""
        if self.finished:
            return True
        if self._expect or self._pending is None:
            return False
        if self._arrived <= 0:
            self._arrived = self._pending()
        return self._arrived > 0

    def read(self, size: int = CHUNK) -> bytes:
        """Return up to `size` bytes, b"" at the end. Raise ClientGone on a short body."""
        return self._read(size, some=False)

    def read_some(self, size: int = CHUNK) -> bytes:
        """Like `read`, but return as soon as any bytes are there (those buffered, else one
        receive), so that a read after `ready()` said True does not wait on the client."""
        return self._read(size, some=True)

    def _read(self, size: int, some: bool) -> bytes:
        if self.finished:
            return b""
        if self._expect:
            self._expect = False
            self._send_continue()
        if self._chunked:  # its framing is read too, uncounted: ask the connection each time
            data = self._read_chunked(size)
            self._arrived = 0
        else:
            data = self._read_plain(size, some)
            self._arrived -= len(data)
        if self.drop_after is not None and self.received + len(data) >= self.drop_after:
            raise ConnectionDropped(f"dropped after {self.drop_after} body bytes")
        self.received += len(data)
        return data

    def _read_plain(self, size: int, some: bool = False) -> bytes:
        want = min(size, self._remaining)
        data = self._rfile.read1(want) if some else self._rfile.read(want)
        if not data:
            raise ClientGone(f"client closed with {self._remaining} body bytes unsent")
        self._remaining -= len(data)
        self.finished = self._remaining == 0
        return data

    def _read_chunked(self, size: int) -> bytes:
        if self._chunk_left == 0:
            line = self._rfile.readline(1024)
            if not line:
                raise ClientGone("client closed inside a chunked body")
            try:
                self._chunk_left = int(line.split(b";")[0].strip(), 16)
            except ValueError as error:
                raise tables.HttpError(400, "Malformed chunked request body") from error
            if self._chunk_left == 0:
                while self._rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                self.finished = True
                return b""
        data = self._rfile.read(min(size, self._chunk_left))
        if not data:
            raise ClientGone("client closed inside a chunked body")
        self._chunk_left -= len(data)
        if self._chunk_left == 0:
            self._rfile.readline(16)  # CRLF after the chunk
        return data

    def drain(self, limit: int) -> bool:
        """Discard up to `limit` unread bytes so keep-alive can go on; False if more remain."""
        if self._expect:
            return False  # the client waits for 100 Continue: it sends nothing, close instead
        seen = 0
        while not self.finished and seen <= limit:
            seen += len(self.read())
        return self.finished


@dataclass
class Upload:
    """One uploaded file, already on disk in the spool with its size and MD5 ("" when the
    receiver said it needs none: the importer hashes each entry it stores, not the archive);
    or, for a raw body the caller asked to read itself (`stream_raw`), the body still unread:
    `stream` set, `path` None, size and MD5 unknown."""

    name: str
    path: Path | None
    size: int
    md5: str
    stream: Body | None = None

    def reader(self) -> tuple[Callable[[int], bytes], Callable[[], None]]:
        """(read(n), close) over the upload's bytes, whether streamed or spooled."""
        if self.stream is not None:
            return self.stream.read, lambda: None
        assert self.path is not None
        handle = self.path.open("rb")
        return handle.read, handle.close


class SpoolFile:
    """A spool file being written: counts bytes and computes the MD5 on the way (if asked)."""

    def __init__(self, spool_dir: Path, name: str, digest: bool = True) -> None:
        fd, tmp = tempfile.mkstemp(dir=spool_dir, prefix="upload-")
        self.name = name
        self.path = Path(tmp)
        self._out = os.fdopen(fd, "wb")
        self._digest = hashlib.md5() if digest else None
        self.size = 0

    def write(self, data: bytes) -> None:
        if self._digest is not None:
            self._digest.update(data)
        self.size += len(data)
        self._out.write(data)

    def close(self) -> Upload:
        self._out.close()
        md5 = self._digest.hexdigest() if self._digest is not None else ""
        return Upload(self.name, self.path, self.size, md5)

    def discard(self) -> None:
        self._out.close()
        self.path.unlink(missing_ok=True)


def spool(read: Callable[[], bytes], spool_dir: Path, name: str, digest: bool = True) -> Upload:
    """Write a stream to a spool file, computing size and MD5 (if asked) on the way."""
    target = SpoolFile(spool_dir, name, digest)
    try:
        while data := read():
            target.write(data)
    except BaseException:
        target.discard()
        raise
    return target.close()


class _Reader:
    """A small look-ahead buffer over `Body` for the multipart parser."""

    def __init__(self, body: Body) -> None:
        self.body = body
        self.buf = bytearray()

    def fill(self) -> bool:
        data = self.body.read()
        self.buf += data
        return bool(data)

    def read_until(self, marker: bytes, sink: Callable[[bytes], object]) -> bool:
        """Send bytes before `marker` to sink and consume the marker; False if never found."""
        while True:
            index = self.buf.find(marker)
            if index >= 0:
                sink(bytes(self.buf[:index]))
                del self.buf[: index + len(marker)]
                return True
            keep = len(marker) - 1
            if len(self.buf) > keep:
                sink(bytes(self.buf[:-keep] if keep else self.buf))
                del self.buf[: len(self.buf) - keep]
            if not self.fill():
                sink(bytes(self.buf))
                self.buf.clear()
                return False

    def take(self, count: int) -> bytes:
        while len(self.buf) < count and self.fill():
            pass
        data = bytes(self.buf[:count])
        del self.buf[:count]
        return data


def _header_params(raw: bytes) -> email.message.Message:
    message = email.message.Message()
    for line in raw.decode("utf-8", "replace").split("\r\n"):
        if ":" in line:
            key, value = line.split(":", 1)
            message[key.strip()] = value.strip()
    return message


def parse_multipart(
    body: Body, boundary: str, spool_dir: Path, digest: bool = True
) -> tuple[dict[str, list[str]], list[Upload]]:
    """Stream a multipart/form-data body: files go to the spool, fields to a dict.

    Raise HttpError(400) for a file part without a file name, as `getFileWritersAndLoadParams`.
    """
    reader = _Reader(body)
    fields: dict[str, list[str]] = {}
    uploads: list[Upload] = []
    delimiter = b"--" + boundary.encode()
    if not reader.read_until(delimiter, lambda _: None):
        raise tables.HttpError(400, "Malformed multipart request body")
    while True:
        tail = reader.take(2)
        if tail == b"--" or not tail:
            break
        header = bytearray()
        if not reader.read_until(b"\r\n\r\n", header.extend):
            raise tables.HttpError(400, "Malformed multipart request body")
        headers = _header_params(bytes(header))
        name = headers.get_param("name", header="content-disposition")
        filename = headers.get_param("filename", header="content-disposition")
        end = b"\r\n" + delimiter
        if filename is None and headers.get_content_type() != "application/octet-stream":
            value = bytearray()
            reader.read_until(end, value.extend)
            if len(value) > MAX_FORM:
                raise tables.HttpError(400, "Form field too large")
            fields.setdefault(str(name or ""), []).append(value.decode("utf-8", "replace"))
            continue
        if not filename:
            reader.read_until(end, lambda _: None)
            raise tables.HttpError(
                400, "multi-part form posts must contain the file name of the uploaded file."
            )
        target = SpoolFile(spool_dir, os.path.basename(str(filename)), digest)
        try:
            reader.read_until(end, target.write)
        except BaseException:
            target.discard()
            raise
        uploads.append(target.close())
    return fields, uploads


@dataclass
class Received:
    """What a body carried: uploads (spooled files) and form parameters."""

    uploads: list[Upload]
    fields: dict[str, list[str]]
    json: object = None


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def boundary_of(content_type: str) -> str:
    message = email.message.Message()
    message["content-type"] = content_type
    boundary = message.get_param("boundary")
    if not boundary:
        raise tables.HttpError(400, "multipart/form-data without a boundary")
    return str(boundary)


def receive(
    body: Body,
    content_type: str | None,
    inbody: bool,
    spool_dir: Path,
    raw_name: str | None = None,
    raw_any_type: bool = False,
    digest: bool = True,
    stream_raw: bool = False,
) -> Received:
    """Classify and read a body as `SecureResource.getFileWritersAndLoadParams` does (§3.1).

    Raw ("in-body") when `inbody` or the type is a supported upload type (or, with `raw_any_type`,
    any non-form type: resource uploads); the file name is `raw_name` or invented from the type.
    Multipart: file parts become uploads, other parts parameters. Forms and JSON bodies become
    parameters. Anything else: no upload. With `stream_raw` a raw body is not spooled: its
    upload carries the unread body (`Upload.stream`) for the caller to read as it arrives.
    """
    kind = media_type(content_type)
    is_form = kind in ("multipart/form-data", "application/x-www-form-urlencoded")
    if inbody or kind in SUPPORTED_UPLOAD_TYPES or (raw_any_type and not is_form):
        if kind == "multipart/form-data":
            raise tables.HttpError(
                406,
                "In-body File posts must include the file directly as the body of the message "
                "(not as part of multi-part form data).",
            )
        if body.finished:
            return Received([], {})
        name = raw_name or DERIVED_NAMES.get(kind, "upload.unsupported")
        if stream_raw:
            return Received([Upload(name, None, 0, "", stream=body)], {})
        return Received([spool(body.read, spool_dir, name, digest)], {})
    if kind == "multipart/form-data":
        fields, uploads = parse_multipart(body, boundary_of(content_type or ""), spool_dir, digest)
        return Received(uploads, fields)
    if kind == "application/x-www-form-urlencoded":
        return Received([], urllib.parse.parse_qs(_read_small(body).decode(), True))
    if kind == "application/json":
        data = _read_small(body)
        try:
            return Received([], {}, json.loads(data) if data.strip() else None)
        except ValueError as error:
            raise tables.HttpError(400, "Malformed JSON request body") from error
    return Received([], {})


def _read_small(body: Body) -> bytes:
    data = bytearray()
    while chunk := body.read():
        data += chunk
        if len(data) > MAX_FORM:
            raise tables.HttpError(413, "Request body too large for a form")
    return bytes(data)
