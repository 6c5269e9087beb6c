"""The importer's fast path against its pydicom path: same header fields, same stored bytes.

The sandbox reads each imported file's header with its own walker (`dicomwalk`) and applies
the site anonymisation script by splicing the edited elements into the byte stream
(`anonymize.splice`); pydicom (`dicomheader.read_header`, `anonymize.rewrite`) stays for what the
walker declines. Here both paths run on the same files: every file of two real sessions, and
hand-built files for the edge cases (implicit VR, odd-length values, absent and removed
elements, sequences of undefined length around the edited tags, group lengths, a non-ASCII
name, a deflated file and a file without a preamble, which must fall back to pydicom).
"""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian

from shared_data import dataset
from xnat_sandbox import anonymize, dicomheader, dicomwalk, prefs

MIXED = """version "6.1"
(0008,0080) != "" ? -(0008,0080)
(0010,0010) := subject
(0010,0030) := "19000101"
-(0010,1010)
(0008,1030) = "REJECTME" ? reject[]
(0020,0010) := (0008,0050)
"""
SCRIPTS = {"default": prefs.DEFAULT_ANON_SCRIPT, "mixed": MIXED}
VARIABLES = {"project": "SPN01", "subject": "SUBJ_01", "session": "SESS_01"}
SESSIONS = [
    ("ge_signa_premier_table", "In/GE/Exam1486_Laser794mm"),
    ("siemens_xa30_enhanced", "In"),
]


@pytest.fixture(autouse=True, params=["c", "python"])
def walker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here with the compiled walk (`walk_c`, `texts_c`) and the Python one."""
    monkeypatch.setattr(dicomwalk, "walk", getattr(dicomwalk, f"walk_{request.param}"))
    monkeypatch.setattr(dicomwalk, "texts", getattr(dicomwalk, f"texts_{request.param}"))
    return str(request.param)


def fast_path(data: bytes, script_text: str) -> tuple[dicomheader.Header | None, bytes | None]:
    """(header fields, stored bytes) by the walker; None for what it hands to pydicom; stored
    bytes b"" when the script rejects the file."""
    script = anonymize.compiled(script_text)
    top = max(script.tags())
    try:
        walked = dicomwalk.walk(
            data, max(top, dicomheader.LAST_NEEDED_TAG), True, top, dicomheader.WANTED
        )
    except dicomwalk.CannotWalk:
        return None, None
    spliced = anonymize.splice(walked, script, VARIABLES)
    if spliced is None:
        return dicomheader.walked_header(walked), None
    stored = b"" if spliced.rejected else spliced.head + data[spliced.resume :]
    return dicomheader.walked_header(walked), stored


def pydicom_path(data: bytes, script_text: str, tmp: Path) -> tuple[dicomheader.Header, bytes]:
    header, _ = dicomheader.read_header(dicomheader.HeaderTap(io.BytesIO(data)), "f.dcm")
    copy = tmp / "copy.dcm"
    copy.write_bytes(data)
    outcome = anonymize.rewrite(copy, anonymize.compiled(script_text), VARIABLES)
    return header, b"" if outcome.rejected else copy.read_bytes()


@pytest.mark.parametrize(("name", "folder"), SESSIONS, ids=[s[0] for s in SESSIONS])
def test_every_file_of_a_real_session_gets_the_pydicom_bytes(name, folder, tmp_path):
    files = sorted(p for p in (dataset(name) / folder).rglob("*") if p.is_file())
    compared = 0
    for path in files:
        data = path.read_bytes()
        try:
            slow_header, _ = dicomheader.read_header(dicomheader.HeaderTap(io.BytesIO(data)), "f")
        except dicomheader.Unreadable:
            continue  # not DICOM (DICOMDIR-less extras): the importer answers 400 either way
        for text in SCRIPTS.values():
            header, stored = fast_path(data, text)
            expected_header, expected = pydicom_path(data, text, tmp_path)
            assert header == slow_header == expected_header, path
            assert stored is not None, f"{path}: the walker declined a real scanner file"
            assert stored == expected, path
        compared += 1
    assert compared >= 80


# -- hand-built files ---------------------------------------------------------------------------

LONG = {"OB", "OW", "SQ", "UN", "UT"}
SOP_CLASS = b"1.2.840.10008.5.1.4.1.1.4"


def el(tag: int, vr: str, value: bytes, implicit: bool) -> bytes:
    group, number = tag >> 16, tag & 0xFFFF
    if implicit:
        return struct.pack("<HHL", group, number, len(value)) + value
    if vr in LONG:
        return struct.pack("<HH2sHL", group, number, vr.encode(), 0, len(value)) + value
    return struct.pack("<HH2sH", group, number, vr.encode(), len(value)) + value


def undefined_sequence(tag: int, items: list[bytes], implicit: bool) -> bytes:
    group, number = tag >> 16, tag & 0xFFFF
    head = (
        struct.pack("<HHL", group, number, 0xFFFFFFFF)
        if implicit
        else struct.pack("<HH2sHL", group, number, b"SQ", 0, 0xFFFFFFFF)
    )
    body = b"".join(
        struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
        + item
        + struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
        for item in items
    )
    return head + body + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)


def part10(body: bytes, syntax: bytes, sop: bytes) -> bytes:
    def ui(value: bytes) -> bytes:
        return value + b"\0" * (len(value) % 2)

    meta = b"".join([
        el(0x00020001, "OB", b"\0\1", False),
        el(0x00020002, "UI", ui(SOP_CLASS), False),
        el(0x00020003, "UI", ui(sop), False),
        el(0x00020010, "UI", ui(syntax), False),
        el(0x00020012, "UI", ui(b"1.2.3.4"), False),
        el(0x00020013, "SH", b"EDGE  ", False),
    ])  # fmt: skip
    length = el(0x00020000, "UL", struct.pack("<L", len(meta)), False)
    return b"\0" * 128 + b"DICM" + length + meta + body


def edge_file(
    n: int,
    implicit: bool = False,
    description: bytes | None = b"STUDY DESC",
    name: bytes = b"DOE^J",
    charset: bytes = b"ISO_IR 100",
    item_group_length: bool = False,
) -> bytes:
    """A small MR file: a stale group length, odd unpadded values (InstitutionName, the
    PatientName the script replaces), an undefined-length sequence between the edited tags
    and another after them, an element the mixed script removes, then pixel data."""
    sop = f"1.2.826.0.1.3680043.2.1125.{n}".encode()
    item = el(0x00081150, "UI", SOP_CLASS + b"\0", implicit) + el(
        0x00081155, "UI", b"1.2.3.4.5.6", implicit
    )
    if item_group_length:
        item = el(0x00080000, "UL", struct.pack("<L", len(item)), implicit) + item
    elements = [
        el(0x00080000, "UL", struct.pack("<L", 999), implicit),  # stale: rewrite drops it
        el(0x00080005, "CS", charset, implicit),
        el(0x00080016, "UI", SOP_CLASS + b"\0", implicit),
        el(0x00080018, "UI", sop + b"\0" * (len(sop) % 2), implicit),
        el(0x00080020, "DA", b"20240102", implicit),
        el(0x00080030, "TM", b"101500", implicit),
        el(0x00080050, "SH", b"ACC7", implicit),
        el(0x00080060, "CS", b"MR", implicit),
        el(0x00080080, "LO", b"ABC", implicit),  # odd, unpadded
    ]
    if description is not None:
        elements.append(el(0x00081030, "LO", description, implicit))
    elements += [
        el(0x0008103E, "LO", b"T1 ", implicit),
        undefined_sequence(0x00081140, [item, item], implicit),
        el(0x00100010, "PN", name, implicit),
        el(0x00100020, "LO", b"PID001", implicit),
        undefined_sequence(0x00101002, [el(0x00100020, "LO", b"OTHER1", implicit)], implicit),
        el(0x00101010, "AS", b"045Y", implicit),
        el(0x0020000D, "UI", b"1.2.826.0.1.3680043.2.1125.100", implicit),
        el(0x0020000E, "UI", b"1.2.826.0.1.3680043.2.1125.200", implicit),
        el(0x00200011, "IS", b"5 ", implicit),
        el(0x00200013, "IS", str(n).encode() + b" " * (len(str(n)) % 2), implicit),
        el(0x00324000, "LT", b"Project: SPN01", implicit),
        el(0x7FE00010, "OW", bytes(range(256)) * 4, implicit),
    ]
    syntax = b"1.2.840.10008.1.2" if implicit else b"1.2.840.10008.1.2.1"
    return part10(b"".join(elements), syntax, sop)


def without_meta(data: bytes) -> bytes:
    """The bare data set: no preamble, no DICM, no file meta (pydicom reads it with force)."""
    return data[dicomwalk.walk(data, 0, True).meta_end :]


def deflated(tmp: Path) -> bytes:
    source = pydicom.dcmread(io.BytesIO(edge_file(90)))
    source.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    target = tmp / "deflated.dcm"
    source.save_as(target, enforce_file_format=True)
    return target.read_bytes()


EDGES = {
    "explicit": lambda tmp: edge_file(1),
    "implicit": lambda tmp: edge_file(2, implicit=True),
    "description absent": lambda tmp: edge_file(3, description=None),
    "rejected": lambda tmp: edge_file(4, description=b"REJECTME"),
    "non-ASCII name": lambda tmp: edge_file(5, name="MÜLLER^J".encode(), charset=b"ISO_IR 192"),
}
#: Files the fast path hands to pydicom, and what it cannot walk or splice.
FALLBACKS = {
    "group length in an item": lambda tmp: edge_file(6, item_group_length=True),
    "deflated": deflated,
    "no preamble": lambda tmp: without_meta(edge_file(7)),
}


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("edge", EDGES)
def test_edge_cases_get_the_pydicom_bytes(edge, script, tmp_path):
    data = EDGES[edge](tmp_path)
    header, stored = fast_path(data, SCRIPTS[script])
    expected_header, expected = pydicom_path(data, SCRIPTS[script], tmp_path)
    assert stored is not None
    assert stored == expected
    if edge == "non-ASCII name":
        assert header is None  # decoded by pydicom (UTF-8), not guessed
    else:
        assert header == expected_header
    if edge == "rejected" and script == "mixed":
        assert stored == b""
    elif stored:
        written = pydicom.dcmread(io.BytesIO(stored))
        assert written.PatientName == "SUBJ_01"
        assert written.PixelData == bytes(range(256)) * 4
        assert "InstitutionName" not in written or script == "default"


@pytest.mark.parametrize("edge", FALLBACKS)
def test_what_the_walker_cannot_do_exactly_goes_to_pydicom(edge, tmp_path):
    data = FALLBACKS[edge](tmp_path)
    _, stored = fast_path(data, prefs.DEFAULT_ANON_SCRIPT)
    assert stored is None
    _, expected = pydicom_path(data, prefs.DEFAULT_ANON_SCRIPT, tmp_path)
    assert pydicom.dcmread(io.BytesIO(expected), force=True).PatientName == "SUBJ_01"


def test_an_import_stores_the_same_bytes_by_either_path(svc, tmp_path):
    """Over HTTP: walked, spliced, pydicom-read and pydicom-rewritten files in one upload; each
    stored file is what `anonymize.rewrite` makes of its source with the session's variables."""
    sources = {k: make(tmp_path) for k, make in {**EDGES, **FALLBACKS}.items() if k != "rejected"}
    bundle = io.BytesIO()
    with zipfile.ZipFile(bundle, "w") as archive:
        for index, data in enumerate(sources.values()):
            archive.writestr(f"s/{index:02d}.dcm", data)
    response = svc.import_zip(
        bundle.getvalue(), project="SPN01", subject="SUBJ_01", session="SESS_01",
        dest="/prearchive/projects/SPN01",
    )  # fmt: skip
    assert response.status_code == 200, response.text
    session = response.text.strip()
    folder = session.rstrip("/").rsplit("/", 1)[-1]
    rows = svc.json_rows(session + "/scans/5/resources/DICOM/files")
    stored = {row["Name"]: svc.get(row["URI"]).content for row in rows}
    assert len(stored) == len(sources)
    variables = {"project": "SPN01", "subject": "SUBJ_01", "session": folder}
    for index, data in enumerate(sources.values()):
        copy = tmp_path / f"{index}.dcm"
        copy.write_bytes(data)
        anonymize.rewrite(copy, anonymize.compiled(prefs.DEFAULT_ANON_SCRIPT), variables)
        assert stored[f"s_{index:02d}.dcm"] == copy.read_bytes(), list(sources)[index]
