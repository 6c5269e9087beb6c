"""The C-STORE sender (`xnatdrop.dimse`) against real receivers over loopback sockets.

- Orthanc (Debian package, `tests/orthanc.py`) plays XNAT's receiver: AE title XNAT, called
  title checked, only our calling title known. Every raw series of two real sessions (GE SIGNA
  Premier and Siemens XA30 enhanced, from ../shared/dicom; see their README.md) is stored and read
  back through Orthanc's REST API.
- DCMTK's `storescp --bit-preserving` writes what arrives exactly as read: it proves the bytes on
  the wire are the stored bytes (Orthanc re-encodes sequence lengths, so it cannot).
- A scripted pynetdicom receiver (a real SCP on a free port) answers what a test asks for:
  failure and warning statuses, a response that never comes, refused contexts, a full house.

No test sleeps: waits are on events or on conditions with deadlines.
"""

from __future__ import annotations

import collections
import errno
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

from orthanc import Orthanc, free_port
from shared_data import dataset
from xnatdrop import dimse, errors, rules
from xnatdrop.config import DicomSettings

REPO = Path(__file__).resolve().parents[2]
GE_SESSION = ("ge_signa_premier_table", "In/GE/Exam1486_Laser794mm")
SIEMENS_SESSION = ("siemens_xa30_enhanced", "In")
GE_LOCALIZER = "01_3_Plane_Localizer_FF"  # 21 files, MR Image Storage, explicit VR LE
GE_FMRI = "02_Ax_fMRI_FF_I11.1_S15.9"


def settings_for(port: int, **overrides: object) -> DicomSettings:
    """Receiver settings for a local test server: short waits, so retries take milliseconds."""
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": port,
        "retry_wait_seconds": 0.01,
        "connect_timeout_seconds": 5,
        "acse_timeout_seconds": 10,
        "dimse_timeout_seconds": 30,
        "network_timeout_seconds": 30,
    }
    values.update(overrides)
    return DicomSettings.model_validate(values)


def session_series(name: str, sub: str) -> list[list[Path]]:
    """The raw series of one shared session, as the rules module picks them (absolute paths)."""
    folder = dataset(name) / sub
    verdict = rules.check_folder(folder)
    assert verdict.ok, [f.message for f in verdict.blocking()]
    return [[folder / entry.path for entry in series.files] for series in verdict.series]


def series_files(folder_name: str) -> list[Path]:
    return sorted((dataset(GE_SESSION[0]) / GE_SESSION[1] / folder_name).iterdir())


def uid_of(path: Path) -> str:
    return dimse.read_instance(path).sop_instance_uid


def dataset_bytes(data: bytes) -> tuple[pydicom.Dataset, bytes]:
    """The file meta and the bytes after it, of a Part 10 file in memory."""
    stream = io.BytesIO(data)
    pydicom.filereader.read_preamble(stream, False)
    meta = pydicom.filereader.read_dataset(
        stream, is_implicit_VR=False, is_little_endian=True, stop_when=lambda t, *_: t.group != 2
    )
    return meta, data[stream.tell() :]


# VRs whose trailing spaces (or UI's trailing NUL) are padding, not value (PS3.5 6.2): DCMTK, and
# so Orthanc, trims them when it rewrites a file; for every other VR the value bytes must match.
PADDED_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC"}
PADDED_VRS |= {"UI", "UR", "UT"}


def differences(ours: pydicom.Dataset, theirs: pydicom.Dataset, at: str = "") -> list[str]:
    """Where two datasets differ in content: elements, sequence items, and value bytes (text
    padding aside). Values are compared undecoded where both are (`get_item`), which is stricter
    and much faster than decoding thousands of functional-group values; decoded otherwise."""
    if list(ours.keys()) != list(theirs.keys()):
        return [f"{at or 'top'}: elements {sorted(set(ours.keys()) ^ set(theirs.keys()))}"]
    found = []
    for tag in ours.keys():  # noqa: SIM118 (iterating a Dataset would decode every value)
        mine, other = ours.get_item(tag), theirs.get_item(tag)
        where = f"{at}{tag}"
        if mine.VR == "SQ":
            items, their_items = ours[tag].value, theirs[tag].value
            if len(items) != len(their_items):
                found.append(f"{where}: {len(items)} items vs {len(their_items)}")
                continue
            for index, (item, their_item) in enumerate(zip(items, their_items, strict=True)):
                found += differences(item, their_item, f"{where}[{index}].")
        elif isinstance(mine, RawDataElement) and isinstance(other, RawDataElement):
            left, right = mine.value or b"", other.value or b""
            if mine.VR in PADDED_VRS:
                left, right = left.rstrip(b" \x00"), right.rstrip(b" \x00")
            if (mine.VR, left) != (other.VR, right):
                found.append(f"{where}: {mine.VR} {left[:40]!r} vs {other.VR} {right[:40]!r}")
        elif ours[tag].value != theirs[tag].value:
            found.append(f"{where}: {ours[tag].value!r:.40} vs {theirs[tag].value!r:.40}")
    return found


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path / "orthanc")
    server.start()
    yield server
    server.stop()


class ScriptedReceiver:
    """A pynetdicom storage SCP on loopback whose C-STORE answers come from `answer(uid, n)`
    (n: how often this instance arrived, 1 for the first time)."""

    def __init__(
        self,
        answer: Callable[[str, int], int] = lambda uid, n: 0x0000,
        sop_classes: tuple[str, ...] | None = None,
        max_associations: int = 10,
    ) -> None:
        self.answer = answer
        self.received: list[str] = []
        self.associations = 0
        self.release = threading.Event()  # frees handlers a test holds back
        ae = AE(ae_title="XNAT")
        ae.maximum_associations = max_associations
        ae.add_supported_context(Verification)
        for sop_class in sop_classes or (
            MRImageStorage,
            "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
            "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR Storage
        ):
            ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        self.ae = ae
        self.server = ae.start_server(
            ("127.0.0.1", 0),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._store), (evt.EVT_ESTABLISHED, self._counted)],
        )
        self.port = int(self.server.server_address[1])

    def _counted(self, event: evt.Event) -> None:
        self.associations += 1

    def _store(self, event: evt.Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        self.received.append(uid)
        return self.answer(uid, self.received.count(uid))

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()


@pytest.fixture(scope="module")
def shared_receiver() -> Iterator[ScriptedReceiver]:
    """One scripted receiver for the tests that only change its answers (stopping a pynetdicom
    server takes up to its 0.5 s poll interval)."""
    receiver = ScriptedReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture
def receivers(shared_receiver: ScriptedReceiver) -> Iterator[Callable[..., ScriptedReceiver]]:
    """`receivers(answer, sop_classes=…, max_associations=…)`: the shared receiver, reset, when
    only the answers change; a new one otherwise."""
    started: list[ScriptedReceiver] = []

    def make(
        answer: Callable[[str, int], int] = lambda uid, n: 0x0000,
        **kwargs: object,
    ) -> ScriptedReceiver:
        if not kwargs:
            shared_receiver.answer = answer
            shared_receiver.received = []
            shared_receiver.associations = 0
            shared_receiver.release = threading.Event()
            started.append(shared_receiver)
            return shared_receiver
        receiver = ScriptedReceiver(answer, **kwargs)  # type: ignore[arg-type]
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        if receiver is shared_receiver:
            receiver.release.set()
        else:
            receiver.stop()


def journal_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- Orthanc: echo, two whole sessions, refusals -------------------------------------------


def test_echo_says_ok_with_the_round_trip_time(orthanc: Orthanc) -> None:
    result = dimse.echo(settings_for(orthanc.dicom_port))
    assert result.ok, result.sentence
    assert result.milliseconds is not None and result.milliseconds > 0
    assert result.sentence == (
        f"ok in {result.milliseconds:.0f} ms (XNAT@127.0.0.1:{orthanc.dicom_port})"
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"called_aet": "PACS"}, r"refused the association: it is not AE title PACS .*called AE"),
        ({"calling_aet": "STRANGER"}, r"does not know our calling AE title STRANGER; ask the XNAT"),
    ],
)
def test_echo_names_the_refused_title(
    orthanc: Orthanc, overrides: dict[str, str], expected: str
) -> None:
    result = dimse.echo(settings_for(orthanc.dicom_port, **overrides))
    assert not result.ok
    assert result.sentence.startswith(f"the receiver at 127.0.0.1:{orthanc.dicom_port} ")
    assert re.search(expected, result.sentence), result.sentence


def test_echo_to_nothing_says_it_cannot_connect() -> None:
    port = free_port()
    result = dimse.echo(settings_for(port))
    assert (result.ok, result.sentence) == (
        False,
        f"cannot connect to 127.0.0.1:{port} (connection refused)",
    )


def test_two_sessions_every_raw_series_stored_with_unchanged_content(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    """Every raw series of a GE and a Siemens session, one association each, then read back.

    Orthanc keeps each instance's content but not its exact bytes: it writes its own file meta
    (Implementation Class UID and Version Name, Source AE Title), DCMTK re-encodes
    undefined-length sequences and items with explicit lengths, and trims the padding of text
    values (a GE private SH of 16 bytes, "770965MR1" and spaces, comes back as 10). So the check
    is: the same SOP class, instance and transfer syntax in the file meta, the same elements
    (sequences opened), and every value, pixel data included, byte for byte once text padding
    is set aside. `test_wire_bytes_are_the_stored_bytes`
    proves the bytes sent are the stored bytes.
    """
    settings = settings_for(orthanc.dicom_port)
    journal = tmp_path / "journal.jsonl"
    sent: dict[str, Path] = {}
    reports = []
    for name, sub in (GE_SESSION, SIEMENS_SESSION):
        for files in session_series(name, sub):
            reports.append(dimse.send_series(files, settings, journal))
            sent.update({uid_of(path): path for path in files})
    assert len(sent) == 342 + 81
    assert all(r.complete and r.associations == 1 and r.lost == 0 for r in reports)
    assert sum(r.stored for r in reports) == len(sent)

    stored = orthanc.instance_uids()
    assert set(stored) == set(sent)
    assert set(orthanc.receptions().values()) == {1}  # each instance arrived exactly once
    syntaxes = collections.Counter()
    for uid, path in sent.items():
        received = orthanc.file(stored[uid])
        meta, _ = dataset_bytes(received)
        local_meta, _ = split_dataset(path)
        for keyword in dimse.META_KEYWORDS:
            assert meta[keyword].value == local_meta[keyword].value, (path.name, keyword)
        syntaxes[str(meta.TransferSyntaxUID)] += 1
        ours = pydicom.dcmread(path)
        theirs = pydicom.dcmread(io.BytesIO(received))
        assert differences(ours, theirs) == [], path.name
    assert syntaxes == {ExplicitVRLittleEndian: len(sent)}


def test_wire_bytes_are_the_stored_bytes(tmp_path: Path) -> None:
    """DCMTK storescp in bit-preserving mode keeps the data set exactly as it came off the wire.

    Sent: one series of each session; GE MR750 images with group length elements, which
    pydicom would not write back (so decoding and re-encoding a file would change it); a JPEG
    2000 lossless MR image (sent in JPEG 2000, not decompressed); and a GE image whose file meta
    was cut off (sent from its dataset, allowed because it re-encodes to the same bytes).
    """
    storescp = shutil.which("storescp", path="/usr/bin:/usr/local/bin")
    assert storescp, "dcmtk is not installed: apt-get install dcmtk (.ci/run installs it)"
    out = tmp_path / "received"
    out.mkdir()
    port = free_port()
    process = subprocess.Popen(
        [storescp, "--bit-preserving", "--accept-all", "-aet", "XNAT", "-od", str(out), str(port)],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        settings = settings_for(port)
        assert _eventually(lambda: dimse.echo(settings).ok), "storescp did not start"
        bare = tmp_path / "bare" / "i18246584.MRDC.15"
        bare.parent.mkdir()
        source = series_files(GE_LOCALIZER)[0]
        _, offset = split_dataset(source)
        bare.write_bytes(source.read_bytes()[offset:])
        j2k = dataset("nibabel_formats") / "dicom" / "slicethickness_empty_string.dcm"
        mr750 = sorted((dataset("ge_nih_mr750") / "In/20180918GE/mr_0004").glob("*.dcm"))[:5]
        batches = [
            session_series(*GE_SESSION)[1],
            session_series(*SIEMENS_SESSION)[0],
            mr750,
            [j2k],
            [bare],
        ]
        journal = tmp_path / "journal.jsonl"
        for files in batches:
            assert dimse.send_series(files, settings, journal).complete
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    received = {}
    for path in out.iterdir():
        meta, body = dataset_bytes(path.read_bytes())
        received[str(meta.MediaStorageSOPInstanceUID)] = (meta, body)
    files = [path for batch in batches for path in batch]
    assert len(received) == len(files)
    for path in files:
        instance = dimse.read_instance(path)
        meta, body = received[instance.sop_instance_uid]
        expected = path.read_bytes()
        if instance.as_stored:
            _, offset = split_dataset(path)
            expected = expected[offset:]
        assert body == expected, path.name
        assert str(meta.TransferSyntaxUID) == instance.transfer_syntax
    assert dimse.read_instance(j2k).transfer_syntax == "1.2.840.10008.1.2.4.90"
    assert not dimse.read_instance(bare).as_stored


def _eventually(condition: Callable[[], bool], deadline: float = 30.0) -> bool:
    """Wait for `condition` (polled, with a deadline); for servers that do not say they are up."""
    give_up = time.monotonic() + deadline
    pause = threading.Event()
    while time.monotonic() < give_up:
        if condition():
            return True
        pause.wait(0.05)
    return False


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (
            {"called_aet": "NOT_XNAT"},
            "it is not AE title NOT_XNAT (called AE title not recognised)",
        ),
        ({"calling_aet": "SCANNER7"}, "it does not know our calling AE title SCANNER7"),
    ],
)
def test_refused_association_is_permanent_with_its_reason(
    orthanc: Orthanc, tmp_path: Path, overrides: dict[str, str], reason: str
) -> None:
    files = series_files(GE_LOCALIZER)
    with pytest.raises(errors.PermanentError) as caught:
        dimse.send_series(files, settings_for(orthanc.dicom_port, **overrides), tmp_path / "j")
    assert caught.value.code == dimse.REFUSED_AE
    assert str(caught.value) == (
        f"the receiver at 127.0.0.1:{orthanc.dicom_port} refused the association: {reason}"
    )
    assert "dicom." in caught.value.fix
    assert orthanc.instance_count() == 0


def test_unreachable_receiver_is_transient_after_bounded_tries(tmp_path: Path) -> None:
    port = free_port()
    with pytest.raises(dimse.TransientSendError) as caught:
        dimse.send_series(
            series_files(GE_LOCALIZER), settings_for(port, attempts=3), tmp_path / "j"
        )
    assert caught.value.code == dimse.UNREACHABLE
    assert str(caught.value) == (
        f"{GE_LOCALIZER}: cannot connect to 127.0.0.1:{port} (connection refused) (3 tries)"
    )
    assert isinstance(caught.value, errors.TransientError)


# --- Orthanc: interruptions --------------------------------------------------------------


def test_receiver_crash_mid_series_reopens_and_finishes(orthanc: Orthanc, tmp_path: Path) -> None:
    """1. 50 fMRI images go out. 2. After the 20th is confirmed, Orthanc is killed (SIGKILL) and
    started again on the same port. 3. The next C-STORE finds the association gone. Result: a
    second association sends the other 30; each instance reached Orthanc exactly once."""
    files = series_files(GE_FMRI)
    crashed = []

    def crash_at_20(done: int, total: int) -> None:
        if done == 20 and not crashed:
            crashed.append(done)
            orthanc.kill()
            orthanc.start()

    report = dimse.send_series(
        files, settings_for(orthanc.dicom_port), tmp_path / "j", progress=crash_at_20
    )
    assert crashed == [20]
    assert (report.stored, report.associations, report.lost) == (len(files), 2, 1)
    assert set(orthanc.instance_uids()) == {uid_of(f) for f in files}
    assert set(orthanc.receptions().values()) == {1}


CHILD = """
import json, sys
from pathlib import Path
from xnatdrop import dimse
from xnatdrop.config import DicomSettings

job = json.loads(sys.argv[1])

def progress(done, total):
    if done == job["hold_at"]:
        print(done, flush=True)
        sys.stdin.read()  # hold here, association open, until killed

dimse.send_series(
    [Path(p) for p in job["files"]],
    DicomSettings.model_validate(job["settings"]),
    Path(job["journal"]),
    progress=progress,
)
"""


def _sender_process(files: list[Path], settings: DicomSettings, journal: Path, hold_at: int):
    job = {
        "files": [str(f) for f in files],
        "settings": settings.model_dump(),
        "journal": str(journal),
        "hold_at": hold_at,
    }
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(job)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO,
    )


def test_kill_9_between_instances_then_resume_sends_only_the_rest(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    """1. A sender process stores 17 of 50 instances, association still open. 2. kill -9.
    3. A new push with the same journal. Result: it sends exactly the 33 others."""
    files = series_files(GE_FMRI)
    settings = settings_for(orthanc.dicom_port)
    journal = tmp_path / "journal.jsonl"
    child = _sender_process(files, settings, journal, hold_at=17)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == b"17"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert orthanc.instance_count() == 17

    report = dimse.send_series(files, settings, journal)
    assert (report.already, report.stored, report.complete) == (17, 33, True)
    assert set(orthanc.instance_uids()) == {uid_of(f) for f in files}
    assert set(orthanc.receptions().values()) == {1}


def test_kill_9_while_sending_resends_at_most_the_instance_in_flight(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    """1. A sender process is killed as soon as its journal holds 10 answers, in the middle of
    sending the next ones. 2. A new push with the same journal. Result: every instance the
    journal confirmed reached Orthanc once; at most one instance (the one in flight) twice."""
    files = series_files(GE_FMRI)
    settings = settings_for(orthanc.dicom_port)
    journal = tmp_path / "journal.jsonl"
    child = _sender_process(files, settings, journal, hold_at=-1)
    confirmed = lambda: len(journal.read_bytes().splitlines()) if journal.exists() else 0  # noqa: E731
    assert _eventually(lambda: confirmed() >= 10)
    child.send_signal(signal.SIGKILL)
    child.wait()
    before = {json.loads(line)["sop"] for line in journal.read_bytes().splitlines()[:-1]}
    assert len(before) >= 9
    assert len(before) < len(files), "the sender finished before it was killed"

    report = dimse.send_series(files, settings, journal)
    assert report.complete
    receptions = orthanc.receptions()
    assert set(receptions) == {uid_of(f) for f in files}
    assert all(receptions[uid] == 1 for uid in before)
    assert sum(receptions.values()) <= len(files) + 1


def test_stop_between_instances_then_resume(orthanc: Orthanc, tmp_path: Path) -> None:
    files = series_files(GE_LOCALIZER)
    settings = settings_for(orthanc.dicom_port)
    journal = tmp_path / "journal.jsonl"
    stopping = threading.Event()

    def stop_at_5(done: int, total: int) -> None:
        if done == 5:
            stopping.set()

    first = dimse.send_series(files, settings, journal, stopping=stopping, progress=stop_at_5)
    assert (first.stored, first.stopped, first.complete) == (5, True, False)
    second = dimse.send_series(files, settings, journal)
    assert (second.already, second.stored, second.stopped) == (5, len(files) - 5, False)
    assert set(orthanc.receptions().values()) == {1}


def test_logs_carry_labels_and_counts_never_identifiers(
    orthanc: Orthanc, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """At DEBUG, for every logger (pynetdicom's too): no patient name or ID, no UID of a sent
    instance, study or series; our own line says label, counts, receiver."""
    files = series_files(GE_LOCALIZER)
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    secrets = [str(header.PatientName), str(header.PatientID), header.StudyInstanceUID]
    secrets += [header.SeriesInstanceUID, *(uid_of(f) for f in files)]
    assert all(secrets)
    caplog.set_level(logging.DEBUG)
    dimse.send_series(files, settings_for(orthanc.dicom_port), tmp_path / "j")
    dimse.echo(settings_for(orthanc.dicom_port))
    text = caplog.text
    assert not [s for s in secrets if s in text]
    ours = [r.getMessage() for r in caplog.records if r.name == "xnatdrop.dimse.sender"]
    assert ours == [
        f"{GE_LOCALIZER}: 21 of 21 instances stored on XNAT@127.0.0.1:{orthanc.dicom_port} "
        f"(0 already) in {_seconds(ours[0])} s, 3.1 MB, 1 association(s)"
    ]


def _seconds(line: str) -> str:
    return line.split(" in ")[1].split(" s,")[0]


# --- scripted receiver: statuses, timeouts, contexts, a full house -------------------------


def test_out_of_resources_is_retried_then_stored(
    receivers: Callable[..., ScriptedReceiver], tmp_path: Path
) -> None:
    files = series_files(GE_LOCALIZER)[:3]
    busy_once = receivers(lambda uid, n: 0xA700 if n == 1 else 0x0000)
    journal = tmp_path / "journal.jsonl"
    report = dimse.send_series(files, settings_for(busy_once.port), journal)
    assert (report.stored, report.retries, report.associations) == (3, 3, 1)
    assert busy_once.received == [u for f in files for u in (uid_of(f), uid_of(f))]
    outcomes = [(line["status"], line["outcome"]) for line in journal_lines(journal)]
    assert outcomes == [(0xA700, "failed"), (0, "stored")] * 3


STATUS_CASES = [
    # (answer for every try, error raised, code, tries at the receiver)
    (0xA700, dimse.TransientSendError, dimse.RECEIVER_BUSY, 3),
    (0xA7FF, dimse.TransientSendError, dimse.RECEIVER_BUSY, 3),
    (0x0110, dimse.TransientSendError, dimse.RECEIVER_BUSY, 3),
    (0xC000, errors.PermanentError, dimse.STORE_REFUSED, 3),
    (0xC123, errors.PermanentError, dimse.STORE_REFUSED, 3),
    (0xA900, errors.PermanentError, dimse.STORE_REFUSED, 1),
    (0x0122, errors.PermanentError, dimse.STORE_REFUSED, 1),
    (0x0124, errors.PermanentError, dimse.STORE_REFUSED, 1),
    (0xD00D, errors.PermanentError, dimse.STORE_REFUSED, 3),  # a code nobody defined
]


@pytest.mark.parametrize(("status", "raised", "code", "tries"), STATUS_CASES)
def test_failure_statuses_sorted_into_transient_and_permanent(
    receivers: Callable[..., ScriptedReceiver],
    tmp_path: Path,
    status: int,
    raised: type[Exception],
    code: str,
    tries: int,
) -> None:
    files = series_files(GE_LOCALIZER)[:2]
    receiver = receivers(lambda uid, n: status)
    journal = tmp_path / "journal.jsonl"
    with pytest.raises(raised) as caught:
        dimse.send_series(files, settings_for(receiver.port, attempts=3), journal)
    error = caught.value
    assert getattr(error, "code", None) == code
    assert str(error).startswith(f"{files[0].name}: the receiver answered 0x{status:04X} (")
    assert getattr(error, "fix", "")
    assert receiver.received == [uid_of(files[0])] * tries
    assert [line["outcome"] for line in journal_lines(journal)] == ["failed"] * tries
    assert isinstance(error, errors.PermanentError) != isinstance(error, errors.TransientError)


def test_a_permanent_status_names_the_file_the_code_and_the_fix(
    receivers: Callable[..., ScriptedReceiver], tmp_path: Path
) -> None:
    files = series_files(GE_LOCALIZER)[:1]
    receiver = receivers(lambda uid, n: 0x0122)
    with pytest.raises(errors.PermanentError) as caught:
        dimse.send_series(files, settings_for(receiver.port), tmp_path / "j")
    assert str(caught.value) == (
        f"{files[0].name}: the receiver answered 0x0122 (Refused: SOP Class Not Supported)"
    )
    assert caught.value.fix.startswith("the receiver does not store this kind of object")


def test_warnings_count_as_stored_and_are_recorded(
    receivers: Callable[..., ScriptedReceiver], tmp_path: Path
) -> None:
    files = series_files(GE_LOCALIZER)[:4]
    coerce_first = uid_of(files[0])
    receiver = receivers(lambda uid, n: 0xB000 if uid == coerce_first else 0x0000)
    journal = tmp_path / "journal.jsonl"
    report = dimse.send_series(files, settings_for(receiver.port), journal)
    assert (report.stored, report.warnings) == (4, {0xB000: 1})
    assert [line["outcome"] for line in journal_lines(journal)] == ["warning"] + ["stored"] * 3
    again = dimse.send_series(files, settings_for(receiver.port), journal)
    assert (again.already, again.stored, again.associations) == (4, 0, 0)
    assert len(receiver.received) == 4


def test_no_answer_within_the_dimse_timeout_reopens_and_resends(
    receivers: Callable[..., ScriptedReceiver], tmp_path: Path
) -> None:
    files = series_files(GE_LOCALIZER)[:3]
    holder: list[ScriptedReceiver] = []

    def stall_first(uid: str, n: int) -> int:
        if len(holder[0].received) == 1:
            holder[0].release.wait(30)  # never answers the first C-STORE in time
        return 0x0000

    receiver = receivers(stall_first)
    holder.append(receiver)
    settings = settings_for(receiver.port, dimse_timeout_seconds=0.5)
    report = dimse.send_series(files, settings, tmp_path / "j")
    receiver.release.set()
    assert (report.stored, report.lost, report.associations) == (3, 1, 2)
    assert receiver.received[:2] == [uid_of(files[0])] * 2


def test_no_acceptable_context_is_refused_before_anything_is_sent(
    receivers: Callable[..., ScriptedReceiver], tmp_path: Path
) -> None:
    receiver = receivers(sop_classes=(CTImageStorage,))
    with pytest.raises(errors.PermanentError) as caught:
        dimse.send_series(series_files(GE_LOCALIZER), settings_for(receiver.port), tmp_path / "j")
    assert caught.value.code == dimse.CONTEXT_REFUSED
    assert str(caught.value) == (
        f"the receiver at 127.0.0.1:{receiver.port} does not accept MR Image Storage in "
        "Explicit VR Little Endian (this SOP class is not supported)"
    )
    assert receiver.received == []


def test_one_refused_context_refuses_the_series_before_anything_is_sent(
    receivers: Callable[..., ScriptedReceiver], tmp_path: Path
) -> None:
    """Enhanced MR images with their Enhanced SR (the Phoenix report) in one call; the receiver
    takes MR only: nothing is sent, rather than half a series."""
    mixed = [f for series in session_series(*SIEMENS_SESSION) for f in series]
    receiver = receivers(sop_classes=("1.2.840.10008.5.1.4.1.1.4.1",))
    with pytest.raises(errors.PermanentError) as caught:
        dimse.send_series(mixed, settings_for(receiver.port), tmp_path / "j")
    assert "does not accept Enhanced SR Storage in Explicit VR Little Endian" in str(caught.value)
    assert receiver.received == []
    assert receiver.associations == 1


def test_a_full_receiver_rejects_for_now_and_that_is_transient(
    receivers: Callable[..., ScriptedReceiver], tmp_path: Path
) -> None:
    receiver = receivers(max_associations=1)
    occupier = AE(ae_title="OTHER")
    occupier.add_requested_context(Verification)
    held = occupier.associate("127.0.0.1", receiver.port, ae_title="XNAT")
    assert held.is_established
    try:
        with pytest.raises(dimse.TransientSendError) as caught:
            dimse.send_series(
                series_files(GE_LOCALIZER)[:1], settings_for(receiver.port), tmp_path / "j"
            )
    finally:
        held.release()
    assert caught.value.code == dimse.RECEIVER_BUSY
    assert "has reached its limit of associations (3 tries)" in str(caught.value)


# --- files and the journal (no network) ----------------------------------------------------


def test_contexts_are_the_pairs_present_each_with_its_own_syntax() -> None:
    j2k = dataset("nibabel_formats") / "dicom" / "slicethickness_empty_string.dcm"
    instances = [dimse.read_instance(p) for p in [*series_files(GE_LOCALIZER)[:3], j2k]]
    assert dimse.contexts_for(instances) == [
        (MRImageStorage, ExplicitVRLittleEndian),
        (MRImageStorage, "1.2.840.10008.1.2.4.90"),
    ]


@pytest.mark.parametrize(
    ("relative", "why"),
    [
        # implicit VR, no file meta, with group lengths pydicom would not write back
        ("pydicom_data_subset/data/OT-PAL-8-face.dcm", "cannot be re-sent byte for byte"),
        # no preamble, no SOP Instance UID
        ("pydicom_data_subset/data/JLSL_RGB_ILV0.dcm", "it has no SOPInstanceUID"),
    ],
)
def test_files_that_cannot_go_as_stored_are_refused_by_name(relative: str, why: str) -> None:
    path = dataset(relative.split("/")[0]) / relative.split("/", 1)[1]
    with pytest.raises(errors.PermanentError) as caught:
        dimse.read_instance(path)
    assert caught.value.code == dimse.FILE_UNSENDABLE
    assert str(caught.value).startswith(f"{path.name} cannot be sent to the DICOM receiver as ")
    assert why in str(caught.value)
    assert 'transport = "rest"' in caught.value.fix


def test_journal_survives_a_torn_line_and_keeps_destinations_apart(tmp_path: Path) -> None:
    files = series_files(GE_LOCALIZER)[:3]
    one, two, three = (dimse.read_instance(f) for f in files)
    path = tmp_path / "journal.jsonl"
    with dimse.Journal(path, "XNAT@a:8104") as book:
        book.record(one, 0x0000, "stored")
        book.record(two, 0xA700, "failed")
    with dimse.Journal(path, "XNAT@b:8104") as other:
        other.record(three, 0x0000, "stored")
    with open(path, "ab") as handle:
        handle.write(b'{"sop": "' + two.sop_instance_uid.encode() + b'", "to": "XNAT@a:81')
    with dimse.Journal(path, "XNAT@a:8104") as book:
        assert book.stored == {one.sop_instance_uid}
        book.record(two, 0xB000, "warning")
    with dimse.Journal(path, "XNAT@a:8104") as book:
        assert book.stored == {one.sop_instance_uid, two.sop_instance_uid}
    assert path.stat().st_mode & 0o777 == 0o600
    torn, last = path.read_bytes().splitlines()[-2:]
    assert torn.endswith(b'"to": "XNAT@a:81')  # left as it was, ended by a newline
    assert json.loads(last)["outcome"] == "warning"


def test_the_journal_is_written_at_once_and_fsynced_off_the_senders_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An fsync per answer sat on every C-STORE's path and took up to a second when other
    processes had dirty pages. The lines are still in the file at once (a killed process
    loses none); the journals' one syncer thread fsyncs them, at most every SYNC_SECONDS, and
    once more after the close. Here the first fsync is held until the test lets it go."""
    held, entered, released = threading.Event(), threading.Event(), threading.Event()
    calls: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        calls.append(threading.current_thread().name)
        entered.set()
        if len(calls) == 1:
            held.wait(5)
            released.set()
        real_fsync(fd)

    dimse.journal._SYNCER.submit(lambda: None).result(10)  # earlier tests' journals synced
    monkeypatch.setattr(os, "fsync", fsync)
    instances = [dimse.read_instance(f) for f in series_files(GE_LOCALIZER)[:3]]
    path = tmp_path / "journal.jsonl"
    began = time.monotonic()
    book = dimse.Journal(path, "XNAT@a:8104")
    for _ in range(40):
        for instance in instances:
            book.record(instance, 0x0000, "stored")
    recorded = time.monotonic() - began
    assert len(path.read_bytes().splitlines()) == 120  # in the file, the fsync still held
    assert not released.is_set(), "record waited for the held fsync"
    assert recorded < 4, "record waited for the held fsync"
    held.set()
    book.close()
    dimse.journal._SYNCER.submit(lambda: None).result(10)  # one thread, in order: all done
    assert {name.split("_")[0] for name in calls} == {"journal-fsync"}  # never the sender's
    assert 2 <= len(calls) <= 2 + (time.monotonic() - began) / dimse.Journal.SYNC_SECONDS
    with dimse.Journal(path, "XNAT@a:8104") as again:
        assert again.stored == {i.sop_instance_uid for i in instances}


def test_a_failed_journal_fsync_is_raised_by_the_next_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    dimse.journal._SYNCER.submit(lambda: None).result(10)  # earlier tests' journals synced
    monkeypatch.setattr(os, "fsync", fsync)
    one, two = (dimse.read_instance(f) for f in series_files(GE_LOCALIZER)[:2])
    book = dimse.Journal(tmp_path / "journal.jsonl", "XNAT@a:8104")
    book.record(one, 0x0000, "stored")
    dimse.journal._SYNCER.submit(lambda: None).result(10)  # its fsync has run (and failed)
    with pytest.raises(dimse.TransientSendError) as caught:
        book.record(two, 0x0000, "stored")
    book.close()
    assert caught.value.code == dimse.JOURNAL_UNWRITABLE
    assert "(Input/output error)" in str(caught.value)


def test_an_unwritable_journal_is_transient_and_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "missing-folder" / "journal.jsonl"
    with pytest.raises(dimse.TransientSendError) as caught:
        dimse.Journal(path, "XNAT@a:8104")
    assert caught.value.code == dimse.JOURNAL_UNWRITABLE
    assert str(caught.value) == (
        f"cannot write the DICOM send journal {path} (No such file or directory)"
    )


def test_our_socket_has_nagle_off() -> None:
    """`_no_delay` (bound to EVT_CONN_OPEN) turns TCP_NODELAY on for the association's socket:
    with Nagle on, each DIMSE message waits for the receiver's delayed ACK, and sending drops
    from about 90 to about 22 instances/s against Orthanc (bench/cstore_speed.py)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        event = SimpleNamespace(
            assoc=SimpleNamespace(dul=SimpleNamespace(socket=SimpleNamespace(socket=sock)))
        )
        dimse.association._no_delay(event)  # type: ignore[arg-type]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
