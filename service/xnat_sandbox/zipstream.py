"""A zip read as it arrives: local headers and entry data in order, never seeking.

XNAT's DICOM-zip importer reads the request body through `java.util.zip.ZipInputStream` while
it is received (XW `web/src/main/java/org/nrg/xnat/archive/DicomZipImporter.java`,
`importZipFile` l.160-182: `new ZipInputStream(fw.getInputStream())`, `getNextEntry()` until
null), so it neither spools the body nor reads the central directory. This module does the
same for the sandbox: `entries(read)` yields each entry's name and a stream of its bytes from a
`read(n)` callable (the request body, or a spooled multipart upload), stopping at the first
header that is not a local file header (the central directory), as `ZipInputStream.readLOC`.

Like `ZipInputStream` it verifies each entry's CRC-32 (here by the caller, who hashes the bytes
anyway: `Entry.crc`) and refuses a stored entry with a data descriptor ("only DEFLATED entries
can have EXT descriptor"): its end cannot be found without the central directory. Deflated
entries are inflated with `zlib`, with or without a data descriptor.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator

LOCAL = 0x04034B50
DESCRIPTOR = 0x08074B50
STORED, DEFLATED = 0, 8
_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")  # APPNOTE 4.3.7
PIECE = 1 << 20


class ZipError(Exception):
    """The body breaks off inside a zip (`java.util.zip.ZipException`)."""


class _Source:
    """`read(n)` over the body with an exact-read helper and a push-back (inflated entries
    overread).

    The body is received in pieces of up to `PIECE` bytes (one receive gives what has arrived)
    and handed out as `memoryview` slices of them: a 30-byte local header, an entry's name and
    its data come from one receive instead of one each (a 500 MB import made ~3.3 receives and
    as many fresh buffers an entry, the local header's through the socket's 8 KiB buffer), and
    an entry's bytes reach the writer threads without a copy. A slice keeps its piece alive only
    until the writer has written it.
    """

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self._buffer = memoryview(b"")

    def read(self, size: int) -> memoryview:
        buffer = self._buffer
        if not buffer:
            buffer = memoryview(self._read(PIECE))
            if not buffer:
                return buffer
        self._buffer = buffer[size:]
        return buffer[:size]

    def exactly(self, size: int) -> bytes | memoryview:
        data = self.read(size)
        if len(data) == size or not data:
            return data
        parts = [data]
        got = len(data)
        while got < size:
            more = self.read(size - got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def unread(self, data: bytes | memoryview) -> None:
        self._buffer = memoryview(bytes(data) + bytes(self._buffer))


class Entry:
    """One entry's bytes, read from the zip stream: `read(n)` up to the entry's end.

    `crc` is the CRC-32 the header declares (known once the entry is read to its end when it
    has a data descriptor); the reader of the entry checks it against what it read.
    """

    def __init__(self, source: _Source, name: str, method: int, size: int | None, crc: int):
        self.name = name
        self.crc = crc
        self._source = source
        self._method = method
        self._left = size  # compressed bytes left; None: until the inflater's end
        self._inflater = zlib.decompressobj(-15) if method == DEFLATED else None
        self._descriptor = size is None
        self.finished = False

    def read(self, size: int = PIECE) -> bytes | memoryview:
        """Up to `size` bytes of the entry (a stored entry's: a view of the received piece)."""
        if self.finished:
            return b""
        if self._inflater is None:
            return self._read_stored(size)
        while True:
            if self._inflater.unconsumed_tail:
                data = self._inflater.decompress(self._inflater.unconsumed_tail, size)
            else:
                raw = self._raw(PIECE)
                data = self._inflater.decompress(raw, size) if raw else b""
                if not raw and not self._inflater.eof:
                    raise ZipError(f"{self.name}: the zip ends inside this entry")
            if self._inflater.eof:
                self._source.unread(self._inflater.unused_data)
                self._end()
            if data or self.finished:
                return data

    def _read_stored(self, size: int) -> bytes | memoryview:
        assert self._left is not None
        if self._left == 0:
            self._end()
            return b""
        data = self._source.read(min(size, self._left))
        if not data:
            raise ZipError(f"{self.name}: the zip ends inside this entry")
        self._left -= len(data)
        if self._left == 0:
            self._end()
        return data

    def _raw(self, size: int) -> bytes | memoryview:
        if self._left is None:
            return self._source.read(size)
        if self._left == 0:
            return b""
        data = self._source.read(min(size, self._left))
        self._left -= len(data)
        return data

    def _end(self) -> None:
        self.finished = True
        if self._descriptor:  # APPNOTE 4.3.9: [signature] crc-32, sizes (4 or 8 bytes each)
            head = self._source.exactly(4)
            if len(head) == 4 and struct.unpack("<I", head)[0] == DESCRIPTOR:
                head = self._source.exactly(4)
            if len(head) < 4:
                raise ZipError(f"{self.name}: the zip ends inside its data descriptor")
            self.crc = struct.unpack("<I", head)[0]
            self._skip_sizes()

    def _skip_sizes(self) -> None:
        """Skip the sizes: 8 bytes, or 16 (ZIP64) when what follows is not a header then."""
        sizes = self._source.exactly(8)
        following = self._source.exactly(4)
        if len(following) == 4 and struct.unpack("<I", following)[0] not in _SIGNATURES:
            more = self._source.exactly(8)
            self._source.unread(more[4:])
            return
        self._source.unread(following)
        if len(sizes) < 8:
            raise ZipError(f"{self.name}: the zip ends inside its data descriptor")

    def drain(self) -> None:
        """Read the rest of the entry (a caller that stops early, e.g. a dropped file)."""
        while self.read(PIECE):
            pass


#: signatures that may follow a data descriptor: the next entry, the central directory, or
#: the end records
_SIGNATURES = {LOCAL, 0x02014B50, 0x06054B50, 0x06064B50, 0x07064B50, 0x05054B50, 0x08064B50}


def entries(read: Callable[[int], bytes]) -> Iterator[Entry]:
    """Yield each entry of a zip read from `read(n)` in order. A caller must read each entry
    to its end (or `drain` it) before asking for the next. Raise ZipError for a body cut off
    inside an entry. A body that does not start with a local file header has no entries, as
    for `ZipInputStream.readLOC`, which answers null rather than failing: XNAT's DICOM-zip
    importer then imports nothing and answers 200 with no session."""
    source = _Source(read)
    while True:
        raw = source.exactly(_LOCAL_HEADER.size)
        if len(raw) < 4 or struct.unpack("<I", raw[:4])[0] != LOCAL:
            return  # ZipInputStream.readLOC: anything else ends the entries
        if len(raw) < _LOCAL_HEADER.size:
            raise ZipError("the zip ends inside a local file header")
        (_, _, flags, method, _, _, crc, csize, size, name_len, extra_len) = _LOCAL_HEADER.unpack(
            raw
        )
        tail = source.exactly(name_len + extra_len)
        if len(tail) < name_len + extra_len:
            raise ZipError("the zip ends inside a local file header")
        name = bytes(tail[:name_len]).decode("utf-8" if flags & 0x800 else "cp437")
        if flags & 0x1:
            raise ZipError(f"{name}: encrypted entries are not supported")
        if method not in (STORED, DEFLATED):
            raise ZipError(f"{name}: invalid compression method {method}")
        descriptor = bool(flags & 0x8)
        if descriptor and method == STORED:
            raise ZipError(f"{name}: only DEFLATED entries can have EXT descriptor")
        if csize == 0xFFFFFFFF or size == 0xFFFFFFFF:
            csize = _zip64_size(tail[name_len:], csize, size)
        entry = Entry(source, name, method, None if descriptor else csize, crc)
        yield entry
        if not entry.finished:
            entry.drain()


def _zip64_size(extra: bytes, csize: int, size: int) -> int:
    """The compressed size from the ZIP64 extra field (APPNOTE 4.5.3: the sizes the local
    header marks 0xFFFFFFFF, uncompressed first)."""
    offset = 0
    while offset + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, offset)
        if tag == 1:
            fields = extra[offset + 4 : offset + 4 + length]
            index = 0
            if size == 0xFFFFFFFF:
                index += 8
            if csize == 0xFFFFFFFF and len(fields) >= index + 8:
                return int(struct.unpack_from("<Q", fields, index)[0])
            if csize != 0xFFFFFFFF:
                return csize
        offset += 4 + length
    raise ZipError("a ZIP64 entry without its ZIP64 extra field")
