"""The DICOM-zip import reads the body as it arrives (`DicomZipImporter.importZipFile`: a
ZipInputStream over the request body), checks each entry's CRC-32 as ZipInputStream does, and
an import whose body is cut short or breaks off leaves nothing behind."""

from __future__ import annotations

import base64
import io
import os
import re
import socket
import struct
import threading
import time
import zipfile
import zlib
from pathlib import Path

import pytest
import requests

from xnat_sandbox import bodies, entrywriter, importjob, transport

IMPORT = "/data/services/import"
ERROR = re.compile(r"<h3>(.*)</h3>", re.S)


def message(response) -> str:
    match = ERROR.search(response.text)
    assert match, response.text
    return match.group(1)


def _prearchived(sandbox) -> list[Path]:
    root = sandbox.data / "prearchive"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _entry_end(data: bytes, index: int) -> int:
    """The offset just past entry `index`'s data in a stored zip (`data`)."""
    with zipfile.ZipFile(io.BytesIO(data)) as bundle:
        return bundle.infolist()[index + 1].header_offset


def _wait_for(condition, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_entries_are_stored_while_the_rest_of_the_body_is_still_coming(sandbox, dicom):
    """The body is not spooled first: the first entries are on disk before the last byte of
    the body is sent."""
    files = dicom.files("1", count=4)
    data = dicom.zip(files)
    first_two = _entry_end(data, 1)
    query = "import-handler=DICOM-zip&PROJECT_ID=SPN01&SUBJECT_ID=S1&EXPT_LABEL=S1_MR1"
    auth = base64.b64encode(b"svc:pw").decode()
    head = (
        f"POST {IMPORT}?{query} HTTP/1.1\r\nHost: {sandbox.host}:{sandbox.port}\r\n"
        f"Authorization: Basic {auth}\r\nContent-Type: application/zip\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((sandbox.host, sandbox.port), timeout=60) as client:
        client.sendall(head + data[:first_two])
        assert _wait_for(lambda: len(_prearchived(sandbox)) >= 2), "nothing stored mid-body"
        assert len(_prearchived(sandbox)) == 2  # the third entry has not been sent yet
        client.sendall(data[first_two:])
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert len(_prearchived(sandbox)) == 4


def test_a_body_cut_short_leaves_no_session(sandbox, svc, dicom):
    data = dicom.zip(dicom.files("1", count=4))
    sandbox.drop(r"^/data/services/import$", after_bytes=_entry_end(data, 1) + 100)
    with pytest.raises(requests.ConnectionError):
        svc.import_zip(data, project="SPN01", subject="S1", session="S1_MR1")
    assert svc.json_rows("/data/prearchive/projects/SPN01") == []
    assert _prearchived(sandbox) == []


def test_a_cut_import_into_a_receiving_session_removes_only_what_it_added(sandbox, svc, dicom):
    """A session that existed before keeps its own files; the cut import's files go."""
    files = dicom.files("1", count=4)
    first = svc.import_zip(dicom.zip(files[:1]), project="SPN01", subject="S1", session="S1")
    assert first.status_code == 200, first.text
    before = _prearchived(sandbox)
    assert len(before) == 1
    data = dicom.zip(files[1:])
    sandbox.drop(r"^/data/services/import$", after_bytes=_entry_end(data, 1) + 100)
    with pytest.raises(requests.ConnectionError):
        svc.import_zip(data, project="SPN01", subject="S1", session="S1")
    assert _prearchived(sandbox) == before
    rows = svc.json_rows("/data/prearchive/projects/SPN01")
    assert len(rows) == 1
    listed = svc.get(
        rows[0]["url"].replace("/prearchive", "/data/prearchive", 1)
        + "/scans/1/resources/DICOM/files",
        params={"format": "json"},
    ).json()["ResultSet"]["Result"]
    assert len(listed) == 1


def test_a_zip_whose_entry_fails_its_crc_is_400_and_leaves_nothing(sandbox, svc, dicom):
    """ZipInputStream checks each entry's CRC-32 ("invalid entry CRC", a ZipException):
    DicomZipImporter answers "unable to read data from file"; the sandbox keeps nothing."""
    data = bytearray(dicom.zip(dicom.files("1", count=4)))
    data[_entry_end(bytes(data), 2) - 1] ^= 0xFF  # the last pixel byte of the third entry
    response = svc.import_zip(bytes(data), project="SPN01", subject="S1", session="S1_MR1")
    assert response.status_code == 400
    assert message(response) == "unable to read data from file"
    assert svc.json_rows("/data/prearchive/projects/SPN01") == []
    assert _prearchived(sandbox) == []


def test_a_body_that_is_no_zip_imports_nothing_and_is_200(sandbox, svc):
    """ZipInputStream.readLOC answers null, not an error, when the body does not start with a
    local file header: DicomZipImporter imports no entry and answers 200 with no session."""
    response = svc.import_zip(
        b"not a zip at all, but longer than a local file header",
        project="SPN01",
        subject="S1",
        session="S1_MR1",
        dest="/prearchive/projects/SPN01",
    )
    assert response.status_code == 200, response.text
    assert response.text.strip() == ""
    assert svc.json_rows("/data/prearchive/projects/SPN01") == []
    assert _prearchived(sandbox) == []


def test_a_zip_whose_entry_fails_its_crc_in_the_header_bytes_is_400_too(sandbox, svc, dicom):
    """The bytes the header walker keeps (and the site script rewrites) are covered by the
    CRC-32 as received, as ZipInputStream covers every byte: a flipped preamble byte, which
    no DICOM reader looks at, still fails the entry."""
    data = bytearray(dicom.zip(dicom.files("1", count=4)))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as bundle:
        third = bundle.infolist()[2]
    name_length, extra_length = struct.unpack_from("<HH", data, third.header_offset + 26)
    data[third.header_offset + 30 + name_length + extra_length + 10] ^= 0xFF  # its preamble
    response = svc.import_zip(bytes(data), project="SPN01", subject="S1", session="S1_MR1")
    assert response.status_code == 400
    assert message(response) == "unable to read data from file"
    assert _prearchived(sandbox) == []


def test_the_writers_crc32_is_zlibs_on_every_buffer_kind_and_continued():
    """The writer's CRC-32 (ISA-L's where installed) gives zlib's values, from bytes, the
    header's bytearray and a memoryview of it, continued from a previous value."""
    data = bytes(range(256)) * 700
    for piece in (data, bytearray(data), memoryview(bytearray(data))[100:]):
        assert entrywriter.crc32(piece) == zlib.crc32(piece)
        assert entrywriter.crc32(piece, 0x1234ABCD) == zlib.crc32(piece, 0x1234ABCD)
    assert entrywriter.crc32(data[5000:], entrywriter.crc32(data[:5000])) == zlib.crc32(data)


class _Unseekable(io.RawIOBase):
    """A write-only stream: zipfile then writes a data descriptor after each entry."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        return self.buffer.write(data)


def test_deflated_entries_with_data_descriptors_are_read(sandbox, svc, dicom):
    """What a streaming zipper (Java's ZipOutputStream, `zip -`) writes: deflated entries
    whose sizes and CRC come after their data."""
    files = dicom.files("1", count=3)
    out = _Unseekable()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in files:
            bundle.write(path, f"series/{path.name}")
    data = out.buffer.getvalue()
    assert data[6] & 0x08  # general purpose bit 3: a data descriptor follows
    response = svc.import_zip(
        data, project="SPN01", subject="S1", session="S1_MR1", prevent_anon="true"
    )
    assert response.status_code == 200, response.text
    stored = _prearchived(sandbox)
    assert sorted(dicom.md5(p) for p in stored) == sorted(dicom.md5(p) for p in files)


def test_a_stored_entry_with_a_data_descriptor_is_refused(sandbox, svc, dicom):
    """ZipInputStream: "only DEFLATED entries can have EXT descriptor" (its end cannot be
    found in a stream); XNAT answers "unable to read data from file"."""
    out = _Unseekable()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as bundle:
        for path in dicom.files("1", count=2):
            bundle.write(path, f"series/{path.name}")
    response = svc.import_zip(out.buffer.getvalue(), project="SPN01")
    assert response.status_code == 400
    assert message(response) == "unable to read data from file"
    assert _prearchived(sandbox) == []


def test_no_writer_thread_outlives_its_import(sandbox, svc, dicom):
    files = dicom.files("1", count=3)
    assert svc.import_zip(dicom.zip(files), project="SPN01").status_code == 200
    broken = bytearray(dicom.zip(files))
    broken[_entry_end(bytes(broken), 1) - 1] ^= 0xFF
    assert svc.import_zip(bytes(broken), project="SPN01").status_code == 400
    assert [t for t in threading.enumerate() if t.name == "sandbox-entry-writer"] == []


def test_a_tar_whose_header_does_not_parse_is_400(sandbox, svc):
    """TarArchiveInputStream throws an IOException on a header that does not parse, which
    DicomZipImporter.importCompressedFile turns into "unable to read data from file"."""
    response = svc.post(
        "/data/services/import",
        params={"import-handler": "DICOM-zip", "project": "SPN01"},
        files={"file": ("upload.tar", b"\xff" * 1024, "application/x-tar")},
    )
    assert response.status_code == 400
    assert message(response) == "unable to read data from file"
    assert _prearchived(sandbox) == []


def test_small_files_go_to_the_writers_in_groups(tmp_path):
    """One queue put per file cost the importer more than the file's bytes: whole small files
    wait in a group until it is full (or handed over), then go to a worker together."""
    writer = entrywriter.EntryWriter()
    results: list[list[object]] = []
    try:
        for index in range(100):
            result: list[object] = []
            results.append(result)
            handle = writer.begin(str(tmp_path / f"{index}.dcm"), result, 0)
            data = bytes([index]) * 1000
            writer.write(handle, data)
            writer.end(handle, zlib.crc32(data))
        assert writer.hand_overs == 100 // entrywriter.GROUP_FILES  # the last 4 still wait
        assert writer.holding
        writer.drain()
    finally:
        writer.close()
    assert not writer.holding
    assert results == [[1000]] * 100
    assert (tmp_path / "99.dcm").read_bytes() == bytes([99]) * 1000


def test_a_group_is_handed_over_at_once_when_asked(tmp_path):
    """`hand_over` (called before a read that would wait on the client) writes what waits."""
    writer = entrywriter.EntryWriter()
    result: list[object] = []
    try:
        handle = writer.begin(str(tmp_path / "a.dcm"), result, None)
        writer.write(handle, b"x" * 10)
        writer.end(handle)
        assert writer.holding and writer.hand_overs == 0
        writer.hand_over()
        assert not writer.holding and writer.hand_overs == 1
        assert _wait_for(lambda: result == [10]), "the handed-over file was not written"
    finally:
        writer.close()


def test_stored_files_are_recorded_without_waiting_for_the_writers(sandbox):
    """Every RECORD_BATCH files the importer used to wait for both writers to go idle before
    it recorded the batch (21 % of the request thread's time in a 500 MB import, py-spy). It now
    records, in order, the files at the front that are already written, and keeps the rest
    pending until they are (or until the end of the import, which waits for all)."""
    store = sandbox.store
    job = importjob.Job(
        sandbox, sandbox.accounts["svc"], "DICOM-zip", None, "SPN01", None, None, False, False,
        {"prevent_anon": ""},
    )  # fmt: skip
    count = importjob.RECORD_BATCH
    results: list[list[object]] = [[] for _ in range(count)]
    for index in range(100):
        results[index].append(1000 + index)  # the first 100 are written
    results[150].append(7)  # written, but behind one that is not: it waits to keep the order
    for index in range(count):
        job.record((424242, "1", f"f{index}.dcm"), results[index], f"1.2.{index}", index)
    try:
        rows = store.all("SELECT * FROM prearc_files WHERE session = 424242 ORDER BY rowid")
        assert [r["name"] for r in rows] == [f"f{index}.dcm" for index in range(100)]
        assert [r["size"] for r in rows] == [1000 + index for index in range(100)]
        assert len(job.pending) == count - 100
        assert job.owner(424242, "1", "f5.dcm") == "1.2.5"  # recorded
        assert job.owner(424242, "1", "f200.dcm") == "1.2.200"  # pending
        for index in range(100, count):
            results[index][:] = [index]
        job.flush()  # the end of an import: everything, in order
        rows = store.all("SELECT * FROM prearc_files WHERE session = 424242 ORDER BY rowid")
        assert [r["name"] for r in rows] == [f"f{index}.dcm" for index in range(count)]
        assert job.pending == {}
    finally:
        job.close()
        store.run("DELETE FROM prearc_files WHERE session = 424242")


def test_a_body_asks_the_connection_once_per_arrival_not_once_per_read():
    """`Body.ready` is asked before every read of a streamed import (a zip entry takes several
    small reads); it asked the socket each time (a poll, 3 a file). It now asks how many bytes
    wait (FIONREAD) and asks again only once those are read, and still never says ready when a
    read would wait for the client."""
    server, client = socket.socketpair()
    asked = []

    def pending() -> int:
        asked.append(1)
        return transport.bytes_waiting(server)

    try:
        rfile = server.makefile("rb")
        body = bodies.Body(rfile, lambda: None, 20_000, False, False, pending)
        client.sendall(b"x" * 10_000)
        assert _wait_for(lambda: transport.bytes_waiting(server) == 10_000)
        got = 0
        while got < 10_000:
            assert body.ready()
            got += len(body.read_some(100))
        assert len(asked) == 1  # one question for 100 reads
        assert not body.ready()  # all read: the next read would wait for the client
        client.sendall(b"y" * 10_000)
        assert _wait_for(body.ready)
        while not body.finished:
            assert body.ready()
            body.read_some(4096)
        assert body.received == 20_000
    finally:
        server.close()
        client.close()


def _stored_zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return out.getvalue()


def test_a_rewritten_header_is_checked_and_written_off_the_request_thread(tmp_path, monkeypatch):
    """The CRC-32 of the header bytes as received (which the site script's splice replaces) is
    the writer's work, not the request thread's: each CRC the request thread computed gave the
    GIL up and waited to get it back from the writers. The file holds the rewritten header and
    the rest unchanged, and its CRC still covers the bytes as received."""
    from xnat_sandbox import anonymize, zipstream
    from xnat_sandbox.dicomheader import HeaderTap

    original = bytes(range(256)) * 1024  # 256 KiB: the tap keeps the first 64 KiB
    callers: list[str] = []
    real_crc32 = entrywriter.crc32

    def crc32(data, value=0):
        callers.append(threading.current_thread().name)
        return real_crc32(data, value)

    monkeypatch.setattr(entrywriter, "crc32", crc32)
    for flip in (False, True):
        data = bytearray(_stored_zip({"a.dcm": original}))
        if flip:
            data[30 + len("a.dcm") + 5] ^= 0xFF  # a byte of the header the splice replaces
        entry = next(zipstream.entries(io.BytesIO(bytes(data)).read))
        tap = HeaderTap(entry)
        tap.seek(65536)
        spliced = anonymize.Spliced(rejected=False, head=b"NEW HEAD", resume=100)
        writer = entrywriter.EntryWriter()
        result: list[object] = []
        target = tmp_path / f"a-{flip}.dcm"
        try:
            entrywriter.write_entry(writer, str(target), tap, spliced, result)
            if flip:
                with pytest.raises(entrywriter.CrcMismatch):
                    writer.drain()
                assert result == []  # never recorded (the import rolls it back)
            else:
                writer.drain()
                assert target.read_bytes() == b"NEW HEAD" + original[100:]
                assert result == [len(b"NEW HEAD") + len(original) - 100]
        finally:
            writer.close()
    assert callers and set(callers) == {"sandbox-entry-writer"}


def test_a_hand_over_is_written_with_one_call(tmp_path, monkeypatch):
    """A file's pieces go to `write_files` as one item with its written buffers, and a
    hand-over's files as one call: each call gives the GIL up and takes it back from the request
    thread. Bytes only checked (the header as received) are not written."""
    calls: list[list[tuple]] = []
    real_write_files = entrywriter.write_files

    def write_files(items):
        calls.append(
            [(target, [bytes(b) for b in buffers], close) for target, buffers, close in items]
        )
        return real_write_files(items)

    monkeypatch.setattr(entrywriter, "write_files", write_files)
    writer = entrywriter.EntryWriter(1)
    result: list[object] = []
    other: list[object] = []
    received = [b"a" * 100, b"b" * 5000, b"c" * 3]
    try:
        handle = writer.begin(str(tmp_path / "f.dcm"), result, 0)
        writer.check(handle, received[0])
        writer.write(handle, b"HEAD", received=False)
        writer.write(handle, received[1])
        writer.write(handle, received[2])
        writer.end(handle, zlib.crc32(b"".join(received)))
        second = writer.begin(str(tmp_path / "g.dcm"), other, 0)
        writer.write(second, b"g" * 10)
        writer.end(second, zlib.crc32(b"g" * 10))
        writer.drain()
    finally:
        writer.close()
    assert calls == [
        [
            (str(tmp_path / "f.dcm"), [b"HEAD", received[1], received[2]], True),
            (str(tmp_path / "g.dcm"), [b"g" * 10], True),
        ]
    ]
    assert (tmp_path / "f.dcm").read_bytes() == b"HEAD" + received[1] + received[2]
    assert result == [4 + 5003]
    assert other == [10]


def test_a_short_write_goes_on_where_it_stopped(tmp_path, monkeypatch):
    """`writev` may write less than it is given (a signal, a nearly full disk): the rest follows,
    in order, nothing written twice."""
    real_writev = entrywriter.os.writev

    def short(fd, buffers):
        return real_writev(fd, [bytes(memoryview(b"".join(bytes(b) for b in buffers))[:7])])

    monkeypatch.setattr(entrywriter.os, "writev", short)
    pieces = [b"0123456789", bytearray(b"abc"), memoryview(b"XYZxyz")[1:], b"", b"end"]
    out = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        assert entrywriter._write_all(out, list(pieces)) == 21
    finally:
        os.close(out)
    assert (tmp_path / "f").read_bytes() == b"0123456789abcYZxyzend"


def test_a_zip_is_received_in_large_pieces_not_a_few_per_entry():
    """The zip reader receives what has arrived, up to 1 MiB, and cuts local headers, names and
    entry data out of that piece (views, no copy): merge10 asked the body for each local header,
    each name and each entry's data apart (three or more receives, and as many fresh buffers, an
    entry). Over a real socket, 300 entries take a handful of receives, and every entry's bytes
    and CRC-32 come out whole; a deflated entry (read through the push-back) too."""
    from xnat_sandbox import zipstream

    members = {f"s/{i:04d}.dcm": os.urandom(1500 + 7 * i) for i in range(300)}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
        bundle.writestr("z/deflated.dcm", b"DICM" * 5000, zipfile.ZIP_DEFLATED)
    body_bytes = out.getvalue()
    members["z/deflated.dcm"] = b"DICM" * 5000
    server, client = socket.socketpair()
    sender = threading.Thread(target=client.sendall, args=(body_bytes,), daemon=True)
    sender.start()
    receives: list[int] = []
    try:
        body = bodies.Body(server.makefile("rb"), lambda: None, len(body_bytes), False, False)

        def read(size: int) -> bytes:
            receives.append(size)
            return body.read_some(size)

        got = {}
        for entry in zipstream.entries(read):
            pieces = []
            while piece := entry.read(1 << 20):
                pieces.append(bytes(piece))
            data = b"".join(pieces)
            assert zlib.crc32(data) == entry.crc, entry.name
            got[entry.name] = data
        sender.join(30)
    finally:
        server.close()
        client.close()
    assert got == members
    # ~470 KB: a few receives as the bytes arrive (merge10: >= 3 x 301)
    assert len(receives) < len(members) // 4
