"""Shared fixtures: a real sandbox XNAT on a free port (`sandbox`, parametrised by the
`sandbox` marker, and `sandbox_factory` for more than one), HTTP clients for its users, and
DICOM zips built from real series.

The DICOM comes from `ge_signa_premier_table` (GE SIGNA Premier RX29, BSD-2-Clause; see its
README.md in the shared data): the first few files of series 1 and 5 (3-Plane Localizers of one
study, 148 kB each). Tests copy files into tmp_path and rewrite headers there with pydicom; the
shared set is never modified.
"""

from __future__ import annotations

import compileall
import hashlib
import io
import itertools
import logging
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from push_helpers import start_sandbox
from shared_data import dataset
from xnat_sandbox import Sandbox
from xnatdrop import logsetup

# The `alone` marker of the memory bounds (hooks, so a plugin module rather than a helper).
pytest_plugins = ["memory_helpers"]

USERS = ["svc:pw", "reader:pw:read", "outsider:pw:none", "other:pw"]
PROJECTS = ["SPN01", "SPN02"]
EXAM = "In/GE/Exam1486_Laser794mm"
SERIES_DIRS = {"1": "01_3_Plane_Localizer_FF", "5": "05_3_Plane_Localizer_HF"}


@pytest.fixture(autouse=True)
def _restore_xnatdrop_logging() -> Iterator[None]:
    """`cli.main` configures the `xnatdrop` and `xnat_sandbox` loggers (handler on the captured
    stderr, level); put them back so one test's CLI call does not change what the next test's
    caplog sees."""
    loggers = [logging.getLogger(name) for name in logsetup.LOGGERS]
    saved = [(logger.handlers[:], logger.level) for logger in loggers]
    yield
    for logger, (handlers, level) in zip(loggers, saved, strict=True):
        logger.handlers[:] = handlers
        logger.setLevel(level)


@pytest.fixture
def sandbox_factory(tmp_path: Path) -> Iterator[Callable[..., Sandbox]]:
    """Start sandboxes on free ports; every one started stops when the test ends.

    `sandbox_factory(users=…, projects=…, data=…, port=…, **settings)` returns a started
    `Sandbox`; left out, the accounts and projects are `USERS` and `PROJECTS`, the port a free
    one, the data folder a new one under tmp_path. For a test that needs a second sandbox, or a
    restart on the same data folder (pass `data=` and stop the first). The `sandbox` fixture is
    the first one it starts.
    """
    started: list[Sandbox] = []

    def start(
        *,
        users: list[str] | None = None,
        projects: list[str] | None = None,
        data: Path | None = None,
        port: int = 0,
        **settings: Any,
    ) -> Sandbox:
        folder = data or tmp_path / ("xnat" if not started else f"xnat{len(started) + 1}")
        server = Sandbox(
            data=folder,
            host="127.0.0.1",
            port=port,
            users=USERS if users is None else users,
            projects=PROJECTS if projects is None else projects,
            **settings,
        )
        server.start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()  # a no-op for one the test stopped itself


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Sandbox]:
    """A running sandbox with the push tests' account and project (`push_helpers`)."""
    sandbox = start_sandbox(tmp_path / "xnat")
    yield sandbox
    sandbox.stop()


@pytest.fixture
def sandbox(request: pytest.FixtureRequest, sandbox_factory: Callable[..., Sandbox]) -> Sandbox:
    """A running sandbox: svc (site admin), reader (read-only), outsider (no access), other
    (an owner but not the admin); projects SPN01 and SPN02.

    A module or test that needs other accounts, projects or settings says so with the marker,
    `pytestmark = pytest.mark.sandbox(users=[...], projects=[...], session_timeout=60)`, or
    with indirect parametrisation, `@pytest.mark.parametrize("sandbox", [{"users": [...]}],
    indirect=True)`, which wins over the marker; both take `sandbox_factory`'s keywords.
    """
    options: dict[str, Any] = {}
    marker = request.node.get_closest_marker("sandbox")
    if marker is not None:
        if marker.args:
            raise TypeError("pytest.mark.sandbox takes keywords only, e.g. users=[...]")
        options.update(marker.kwargs)
    options.update(getattr(request, "param", None) or {})
    return sandbox_factory(**options)


class Client(requests.Session):
    """A requests session bound to one sandbox and one account; paths start with `/`."""

    def __init__(self, base: str, auth: tuple[str, str] | None) -> None:
        super().__init__()
        self.base = base
        self.auth = auth

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        if isinstance(url, str) and url.startswith("/"):
            url = self.base + url
        return super().request(method, url, *args, **kwargs)

    def import_zip(self, data: bytes, **params: str) -> requests.Response:
        """POST a zip to the import service as a raw `application/zip` body (DICOM-zip)."""
        params.setdefault("import-handler", "DICOM-zip")
        return self.post(
            "/data/services/import",
            params=params,
            data=data,
            headers={"Content-Type": "application/zip"},
        )

    def json_rows(self, path: str, **params: str) -> list[dict[str, str]]:
        response = self.get(path, params={"format": "json", **params})
        assert response.status_code == 200, response.text
        return response.json()["ResultSet"]["Result"]


def _client(sandbox: Sandbox, auth: tuple[str, str] | None) -> Iterator[Client]:
    with Client(sandbox.url, auth) as client:
        yield client


@pytest.fixture
def svc(sandbox: Sandbox) -> Iterator[Client]:
    yield from _client(sandbox, ("svc", "pw"))


@pytest.fixture
def reader(sandbox: Sandbox) -> Iterator[Client]:
    yield from _client(sandbox, ("reader", "pw"))


@pytest.fixture
def outsider(sandbox: Sandbox) -> Iterator[Client]:
    yield from _client(sandbox, ("outsider", "pw"))


@pytest.fixture
def anonymous(sandbox: Sandbox) -> Iterator[Client]:
    yield from _client(sandbox, None)


class Dicom:
    """Real GE files, copies with rewritten headers, and zips of them (all under tmp_path)."""

    def __init__(self, tmp_path: Path) -> None:
        self.folder = tmp_path / "dicom"
        self.folder.mkdir()
        self._names = itertools.count()

    @staticmethod
    def files(scan: str = "1", count: int = 3) -> list[Path]:
        """The first `count` files (by name) of series 1 or 5 of the GE exam."""
        folder = dataset("ge_signa_premier_table") / EXAM / SERIES_DIRS[scan]
        return sorted(folder.iterdir())[:count]

    def rewrite(self, source: Path, **tags: Any) -> Path:
        """A copy of `source` with header fields replaced (keyword=value)."""
        data = pydicom.dcmread(source)
        for keyword, value in tags.items():
            setattr(data, keyword, value)
        target = self.folder / f"{next(self._names):04d}" / source.name
        target.parent.mkdir()
        data.save_as(target)
        return target

    def study(self, files: list[Path], **tags: Any) -> list[Path]:
        """Copies of `files` moved into one new study (a fresh StudyInstanceUID)."""
        uid = generate_uid()
        return [self.rewrite(f, StudyInstanceUID=uid, **tags) for f in files]

    @staticmethod
    def zip(
        files: list[Path], extra: list[tuple[str, bytes]] | None = None, prefix: str = "series/"
    ) -> bytes:
        """A stored zip: the files under `prefix`, then `extra` (name, bytes) entries."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as bundle:
            for path in files:
                bundle.write(path, prefix + path.name)
            for name, data in extra or []:
                bundle.writestr(name, data)
        return buffer.getvalue()

    @staticmethod
    def md5(path: Path) -> str:
        return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def dicom(tmp_path: Path) -> Dicom:
    return Dicom(tmp_path)


def pytest_configure(config: pytest.Config) -> None:
    """Compile the service's modules to bytecode once, before any test starts a process.

    Why: the tests start hundreds of `python -m xnatdrop` and sandbox processes, and where
    PYTHONDONTWRITEBYTECODE is set (as on the machines CI runs on) an editable install never
    has .pyc files, so each process compiled the modules it imports again: 0.7 s of the 2.1 s
    `xnatdrop --help` took here (a wheel is compiled once, as pip installs it).
    compileall writes whatever that setting says, and skips what is up to date; Python still
    compiles in memory a module whose source is newer than its .pyc."""
    if not hasattr(config, "workerinput"):  # the xdist controller, or a run without workers
        compileall.compile_dir(Path(__file__).resolve().parents[1] / "service", quiet=1)


# The longest tests (minutes on two cores), started first: with pytest-xdist (pyproject's
# addopts), a worker that picks one up near the end of the run leaves the others idle until it
# finishes. Moving them changes nothing they share: each uses only its own tmp_path and servers.
LONGEST_FIRST = (
    "tests/test_bench.py::test_quick_run_writes_every_section_plot_and_result",
    "tests/test_campaign.py::test_scenario[bad/all]",
    "tests/pipeline/test_plan_memory.py::test_the_import_step_sends_holding_under_250_bytes_a_file",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`LONGEST_FIRST` at the front of the run, in that order; the rest as collected."""
    first = {item.nodeid: item for item in items if item.nodeid in LONGEST_FIRST}
    items[:] = [first[n] for n in LONGEST_FIRST if n in first] + [
        item for item in items if item.nodeid not in first
    ]
