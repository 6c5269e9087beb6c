"""Site and project anonymisation: XNAT's `/xapi/anonymize` endpoints and applying the scripts.

A fresh XNAT runs its site-wide script on every file it imports (`GradualDicomImporter.call`,
also for each entry of a DICOM-zip, unless the session says `prevent_anon=true`) with the
variables project, subject and the prearchive *folder* name as `session`. A project's own script
runs later, at archive time only (`MergePrearcToArchiveSession.anonymizeSession` →
`PrearcSessionAnonymizer`), with the archive's subject and session labels, and is skipped for
`prevent_anon` sessions too. A script may reject a file: at import it is deleted and the import
goes on (`returnEmptyList`); at archive time it is removed from the session.

Stored files are re-serialised the way dcm4che writes them back: the file meta and the header
are written anew (pydicom), then everything from Pixel Data on is copied byte for byte. Sizes
and MD5s change; SOPInstanceUIDs and Pixel Data do not. The importer gets the same bytes
faster from `splice`: it edits the elements the script touches in the byte stream of the
header walked by `dicomwalk`, and says when only the pydicom path (`rewrite`) can do it.

Endpoints (`web/.../xapi/rest/dicom/AnonymizeApi.java`), all under `/xapi/anonymize`:

* `GET default`: XNAT's default script (any user);
* `GET site` (any user) and `PUT site`, text/plain (site admin);
* `GET site/enabled`, a JSON boolean (any user), and `PUT site/enabled?enable=` (site admin);
* `GET projects/{P}` (project readers; 204 without a script) and `PUT projects/{P}` (owners);
* `GET projects/{P}/enabled` (readers) and `PUT projects/{P}/enabled?enable=` (owners).

A refused permission is 403 with an empty body (`XapiRestControllerAdvice`). A script the sandbox
cannot interpret is refused with 400 naming the line (XNAT would store it; the sandbox must not
pretend to apply what it cannot).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import io
import logging
import operator
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom import filereader
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO, DicomFileLike
from pydicom.filewriter import write_data_element, write_dataset, write_file_meta_info
from pydicom.tag import BaseTag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from xnat_sandbox import bodies, dicomedit, dicomwalk, prefs, tables
from xnat_sandbox.store import Store
from xnat_sandbox.wire import Request

log = logging.getLogger(__name__)

TOOL = "anon"
TEXT = "text/plain;charset=UTF-8"
JSON = "application/json"
MAX_SCRIPT = 1024 * 1024


class Unrewritable(Exception):
    """pydicom could not read, edit or write the header: XNAT's `AnonymizationResultError`, after
    which the importer drops the file and answers "unable to read DICOM object"."""


@dataclass
class Rewritten:
    """What a script did to one file: rejected (file deleted), or its new size and MD5."""

    rejected: bool
    size: int = 0
    md5: str = ""


@functools.lru_cache(maxsize=32)
def compiled(text: str) -> dicomedit.Script:
    """Parse a script once per distinct text (the same site script runs on every file)."""
    return dicomedit.parse(text)


def site_script(store: Store) -> dicomedit.Script | None:
    """The site-wide script if it is enabled and not blank, else None."""
    if not prefs.flag(store, "enableSitewideAnonymizationScript"):
        return None
    text = prefs.get(store, "sitewideAnonymizationScript")
    return compiled(text) if text.strip() else None


def project_script(store: Store, project: str) -> dicomedit.Script | None:
    """The project's script if one is stored, enabled and not blank, else None."""
    row = prefs.project_config(store, project, TOOL)
    if row is None or not row["enabled"] or not row["contents"].strip():
        return None
    return compiled(row["contents"])


def rewrite(path: Path, script: dicomedit.Script, variables: Mapping[str, str]) -> Rewritten:
    """Apply `script` to one stored file, in place. A rejected file is deleted.

    The header up to the last element the script names is parsed, edited and written anew with
    its file meta; the rest of the file is copied unchanged. That is how XNAT's tools write
    back (`GradualDicomImporter.write` streams the remainder after the part it re-serialised;
    DicomEdit reads up to the script's top tag), and it keeps Pixel Data byte for byte. A file
    without a file meta header gets one, as XNAT's importer adds it. Raise Unrewritable if
    pydicom cannot read the header or encode a value.
    """
    top = max(script.tags(), default=0)

    def past(tag: int, vr: str | None, length: int) -> bool:
        return tag > top or tag >= dicomedit.PIXEL_DATA

    with path.open("rb") as source:
        with dicomedit.PYDICOM_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                dataset = filereader.read_partial(source, stop_when=past, force=True)
                keep = script.apply(dataset, variables)
                if keep:
                    header = _serialise(dataset, path if _deflated(dataset) else None)
            except dicomedit.PYDICOM_ERRORS as error:
                raise Unrewritable(f"{type(error).__name__}: {error}") from error
        if not keep:
            path.unlink(missing_ok=True)
            return Rewritten(rejected=True)
        partial = path.with_name(f".{path.name}.anon")
        digest = hashlib.md5(header)
        size = len(header)
        with partial.open("wb") as out:
            out.write(header)
            if not _deflated(dataset):
                while chunk := source.read(bodies.CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
    partial.replace(path)
    return Rewritten(rejected=False, size=size, md5=digest.hexdigest())


@dataclass
class Spliced:
    """`splice`'s answer: rejected, or the new bytes of the file up to `resume` (an offset in
    the walked bytes from which the file goes on unchanged)."""

    rejected: bool
    head: bytes = b""
    resume: int = 0


#: File meta elements pydicom decodes and encodes again when it writes the meta
#: (`validate_file_meta`): their bytes must already be what it would write.
_META_REQUIRED = (0x00020001, 0x00020002, 0x00020003, 0x00020010, 0x00020012)


def splice(
    walked: dicomwalk.Walk, script: dicomedit.Script, variables: Mapping[str, str]
) -> Spliced | None:
    """What `rewrite` would make of the walked file, made by editing its bytes; None when only
    `rewrite` can tell (the caller then stores the file and calls it).

    The same script runs (`Script.apply`) on a small pydicom data set holding only the raw
    elements it names, and every element it decoded or set is encoded by pydicom's own
    `write_data_element`: values, VRs, padding and character sets are pydicom's. The rest of the
    header keeps its bytes, as `write_dataset` keeps raw elements, once `walked` shows that
    pydicom would write them back unchanged: a canonical file meta, and sequences of undefined
    length without group lengths or unordered tags inside. Group lengths outside group 0002
    before the script's last tag are dropped, as `rewrite` drops them.
    """
    tags = script.tag_set
    top = max(tags, default=0)
    if dicomwalk.SPECIFIC_CHARACTER_SET in tags or walked.keep_to != top:
        return None
    if not _canonical_meta(walked):
        return None
    # Every element up to `top` is kept, in tag order and back to back from the file meta's
    # end to `boundary`: the region the script rewrites.
    elements = walked.elements
    end = bisect.bisect_right(elements, top, key=_TAG)
    region = elements[:end]
    if not all([e.canonical for e in region]):
        return None
    named_tags = tags | _CHARSET
    named = tuple(
        (e.tag, e.vr, e.length, walked.data[e.value : e.value + e.length])
        for e in region
        if e.tag in named_tags
    )
    edits = _edits(_Identity(script), walked.implicit, named, tuple(sorted(variables.items())))
    if edits is None:
        return None
    if edits is _REJECTED:
        return Spliced(rejected=True)
    data = walked.data
    region_tags = [e.tag for e in region]
    # The region's bytes, cut where an element is edited, removed, added or is a retired group
    # length (stale after an edit: dropped, as `rewrite` drops it); the runs between the cuts
    # are copied whole.
    cuts = sorted({*edits, *(tag for tag in region_tags if not tag & 0xFFFF)})
    out = [data[: walked.meta_end]]
    pos = walked.meta_end
    for tag in cuts:
        index = bisect.bisect_left(region_tags, tag)
        present = index < end and region_tags[index] == tag
        at = region[index].start if index < end else walked.boundary
        out.append(data[pos:at])
        pos = region[index].end if present else at
        if tag & 0xFFFF == 0 and tag >> 16 != 0x0002:
            continue  # a retired group length: dropped, edited or not
        encoded = edits[tag] if tag in edits else data[at:pos]
        if encoded is not None:  # None: removed by the script (or absent)
            out.append(encoded)
    out.append(data[pos : walked.boundary])
    return Spliced(rejected=False, head=b"".join(out), resume=walked.boundary)


_TAG = operator.attrgetter("tag")
_CHARSET = frozenset([dicomwalk.SPECIFIC_CHARACTER_SET])


class _Identity:
    """A script as a cache key: by identity (scripts are compiled once per text), kept alive
    by the cache so that its id is not reused while an entry names it."""

    __slots__ = ("script",)

    def __init__(self, script: dicomedit.Script) -> None:
        self.script = script

    def __hash__(self) -> int:
        return id(self.script)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Identity) and other.script is self.script


_REJECTED: dict[int, bytes | None] = {}


@functools.lru_cache(maxsize=256)
def _edits(
    script: _Identity,
    implicit: bool,
    named: tuple[tuple[int, str | None, int, bytes], ...],
    variables: tuple[tuple[str, str], ...],
) -> dict[int, bytes | None] | None:
    """Run the script on the elements it names; tag → the element's new bytes (None: gone),
    for every element the script (or pydicom's charset lookup) decoded, set or removed.
    `_REJECTED` when the script rejects the file, None when pydicom cannot encode a value.

    A pure function of its arguments, hence cached: the files of one session share these
    values, and pydicom then runs once per session instead of once per file."""
    mini = Dataset()
    for tag, vr, length, raw in named:
        mini[tag] = RawDataElement(BaseTag(tag), vr, length, raw, 0, implicit, True)
    mini.set_original_encoding(implicit, True)
    try:
        with dicomedit.PYDICOM_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            encodings = mini.get("SpecificCharacterSet", "iso8859")  # decoded, as pydicom does
            if not script.script.apply(mini, dict(variables)):
                return _REJECTED
            edits: dict[int, bytes | None] = dict.fromkeys(script.script.tags())
            for tag in list(mini.keys()):  # iterating a Dataset yields elements, not tags
                if mini.get_item(tag).is_raw:
                    edits.pop(tag, None)  # untouched: its own bytes stay
                    continue
                out = DicomBytesIO()
                out.is_little_endian, out.is_implicit_VR = True, implicit
                write_data_element(out, mini[tag], encodings)
                edits[int(tag)] = out.getvalue()  # int: `splice` sorts them, per file
            return edits
    except dicomedit.PYDICOM_ERRORS:
        return None  # `rewrite` raises or decides; it has the last word


def _canonical_meta(walked: dicomwalk.Walk) -> bool:
    """Whether pydicom would write this file meta back byte for byte: a correct group length,
    every element `validate_file_meta` fills in present, the ones it decodes already padded as
    it pads them (UIDs with one NUL when odd, no trailing space)."""
    meta = walked.meta
    length = meta.get(0x00020000)
    if length is None or length.vr != "UL" or length.length != 4 or 0x00020013 not in meta:
        return False
    if int.from_bytes(walked.data[length.value : length.end], "little") != (
        walked.meta_end - length.end
    ):
        return False
    for tag in _META_REQUIRED:
        element = meta.get(tag)
        if element is None or element.length == 0 or element.length % 2:
            return False
        if element.vr == "UI":
            raw = walked.data[element.value : element.end]
            value = raw.rstrip(b"\0 ")
            if b"\\" in raw or raw != value + b"\0" * (len(value) % 2) or not value:
                return False
        elif element.vr != "OB":
            return False
    return True


def _deflated(dataset: pydicom.Dataset) -> bool:
    meta = getattr(dataset, "file_meta", None)
    return meta is not None and meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian


def _encoding(dataset: pydicom.Dataset) -> tuple[bool, bool]:
    """(implicit VR, little endian) the dataset was read with (pydicom 2.4 and 3)."""
    original = getattr(dataset, "original_encoding", None)
    if original is not None and None not in original:
        return bool(original[0]), bool(original[1])
    return bool(dataset.is_implicit_VR), bool(dataset.is_little_endian)


def _serialise(dataset: pydicom.Dataset, whole: Path | None) -> bytes:
    """Preamble, file meta and header of the edited dataset (the whole file when deflated).

    Group lengths other than group 0002 are dropped: retired, and stale after an edit.
    """
    tags = list(dataset.keys())  # iterating a Dataset yields elements, not tags
    for tag in [t for t in tags if t.element == 0 and t.group != 0x0002]:
        del dataset[tag]
    implicit, little = _encoding(dataset)
    meta = getattr(dataset, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        meta = FileMetaDataset(meta or {})
        meta.MediaStorageSOPClassUID = dataset.get("SOPClassUID", "")
        meta.MediaStorageSOPInstanceUID = dataset.get("SOPInstanceUID", "")
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        dataset.file_meta = meta
    buffer = io.BytesIO()
    if whole is not None:  # deflated: the dataset is one compressed stream, no tail to copy
        full = pydicom.dcmread(whole, force=True)
        for element in dataset:
            full[element.tag] = element
        stale = [t for t in list(full.keys()) if t not in dataset and t < dicomedit.PIXEL_DATA]
        for tag in stale:
            del full[tag]
        full.save_as(buffer)
        return buffer.getvalue()
    buffer.write(getattr(dataset, "preamble", None) or b"\0" * 128)
    buffer.write(b"DICM")
    write_file_meta_info(DicomFileLike(buffer), meta, enforce_standard=True)
    target = DicomFileLike(buffer)
    target.is_implicit_VR = implicit
    target.is_little_endian = little
    write_dataset(target, dataset)
    return buffer.getvalue()


# -- /xapi/anonymize -----------------------------------------------------------------------------


class XapiError(Exception):
    """An XAPI error: Spring answers text/plain (`XapiRestControllerAdvice`), not Restlet's page;
    403 and 204 carry no body at all."""

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def response(self) -> tables.Response:
        return tables.Response(self.status, TEXT, self.message.encode())


def handle(request: Request) -> tables.Response | None:
    """Answer `/xapi/anonymize/…`, or None when the path is not one of its endpoints."""
    parts = [p for p in request.path.split("/") if p]
    if parts[:2] != ["xapi", "anonymize"]:
        return None
    try:
        return _route(request, parts[2:])
    except XapiError as error:
        return error.response()


def _route(request: Request, rest: list[str]) -> tables.Response | None:
    store = request.sandbox.store
    method = request.method
    if rest == ["default"]:
        _allow(method, ("GET",))
        return tables.Response(200, TEXT, prefs.DEFAULT_ANON_SCRIPT.encode())
    if rest == ["site"]:
        _allow(method, ("GET", "PUT"))
        if method == "GET":
            return tables.Response(
                200, TEXT, prefs.get(store, "sitewideAnonymizationScript").encode()
            )
        _require(request.user.admin)
        text = _script_body(request)
        prefs.put(store, "sitewideAnonymizationScript", text)
        log.info("site anonymisation script replaced (%d lines)", len(text.splitlines()))
        return tables.Response(200, TEXT, b"")
    if rest == ["site", "enabled"]:
        _allow(method, ("GET", "PUT"))
        if method == "GET":
            return _boolean(prefs.flag(store, "enableSitewideAnonymizationScript"))
        _require(request.user.admin)
        enable = enable_param(request)
        prefs.put(store, "enableSitewideAnonymizationScript", enable)
        log.info("site anonymisation %s", "enabled" if enable else "disabled")
        return tables.Response(200, TEXT, b"")
    if len(rest) in (2, 3) and rest[0] == "projects" and rest[2:] in ([], ["enabled"]):
        return _project(request, rest[1], enabled=len(rest) == 3)
    return None


def _project(request: Request, ref: str, enabled: bool) -> tables.Response:
    store = request.sandbox.store
    _allow(request.method, ("GET", "PUT"))
    project = store.project(ref)
    if project is None:
        raise XapiError(404, f"Unable to find requested file or resource: project {ref}")
    project_id = project["id"]
    config = prefs.project_config(store, project_id, TOOL)
    if request.method == "GET":
        _require(request.user.can_read(project_id))
        if enabled:
            return _boolean(config is not None and bool(config["enabled"]))
        if config is None or not config["contents"].strip():
            raise XapiError(204)  # NoContentException: "no anonymization script"
        return tables.Response(200, TEXT, config["contents"].encode())
    _require(request.user.can_write(project_id))
    if enabled:
        enable = enable_param(request)
        prefs.put_project_config(store, project_id, TOOL, enabled=enable)
        log.info("project %s anonymisation %s", project_id, "enabled" if enable else "disabled")
    else:
        text = _script_body(request)
        prefs.put_project_config(store, project_id, TOOL, contents=text)
        log.info("project %s anonymisation script replaced", project_id)
    return tables.Response(200, TEXT, b"")


def _allow(method: str, methods: tuple[str, ...]) -> None:
    if method not in methods:
        raise XapiError(405, f"Request method '{method}' not supported")


def _require(allowed: bool) -> None:
    """XAPI's `restrictTo` check (Admin, Read, Delete): 403 with an empty body when it fails."""
    if not allowed:
        raise XapiError(403)


def _boolean(value: bool) -> tables.Response:
    return tables.Response(200, JSON, b"true" if value else b"false")


def enable_param(request: Request) -> bool:
    """`@RequestParam(required = false, defaultValue = "true") boolean enable` of a PUT that
    `consumes = APPLICATION_JSON_VALUE` (a bodyless PUT without a Content-Type is accepted)."""
    media = bodies.media_type(request.headers.get("Content-Type"))
    if media not in ("", "application/json"):
        raise XapiError(415, f"Content type '{media}' not supported")
    read_body(request)
    value = (request.param("enable") or "true").strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise XapiError(
            400,
            "Failed to convert value of type 'java.lang.String' to required type 'boolean'; "
            f"Invalid boolean value [{value}]",
        )
    return value in ("true", "1", "yes", "on")


def _script_body(request: Request) -> str:
    """A script sent as text/plain (`consumes = TEXT_PLAIN_VALUE`), checked by the interpreter."""
    media = bodies.media_type(request.headers.get("Content-Type"))
    if media != "text/plain":
        raise XapiError(415, f"Content type '{media or 'application/octet-stream'}' not supported")
    try:
        text = read_body(request).decode("utf-8")
    except UnicodeDecodeError as error:
        raise XapiError(400, "The anonymization script is not UTF-8 text.") from error
    try:
        compiled(text)
    except dicomedit.ScriptError as error:
        raise XapiError(
            400, f"The sandbox cannot interpret this anonymization script: {error}"
        ) from error
    return text


def read_body(request: Request, limit: int = MAX_SCRIPT) -> bytes:
    """The whole (small) request body; 413 past `limit`."""
    raw = bytearray()
    while chunk := request.body.read():
        raw += chunk
        if len(raw) > limit:
            raise XapiError(413, "The request body is too large.")
    return bytes(raw)
