"""A real Orthanc (the Debian package `orthanc`, installed by .ci/run) for tests and benchmarks.

`Orthanc(folder).start()` runs the server on loopback, on free ports, with a configuration
written into `folder` (storage there too) and returns once Orthanc logs that it has started; no
sleeping. Its DICOM side plays XNAT's receiver: AE title XNAT, the called AE title checked, and
only known modalities may associate (our calling title, XNAT, is one), so a wrong called or
calling title is rejected the way a strict receiver does it.

Two settings are there for measuring, not for realism:
- `TCP_NODELAY=1` in Orthanc's environment: DCMTK (Orthanc's DICOM stack) leaves Nagle's
  algorithm on unless this variable is set, and then every C-STORE response waits for a delayed
  ACK (about 40 ms): 20 instead of 120 instances/s for small files, whoever sends.
- A Lua `ReceivedInstanceFilter` (when `count=True`) appends the SOP Instance UID of every
  instance Orthanc receives, duplicates included, to `received.txt`: Orthanc's own REST API
  shows each instance once, however often it was sent.

`kill()` is SIGKILL; `start()` again reuses the same ports and storage, as a receiver that
crashed and came back.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import requests

STARTED = "Orthanc has started"
LUA_COUNTER = """
function ReceivedInstanceFilter(dicom, origin, info)
  local f = io.open({path}, "a")
  f:write(dicom.SOPInstanceUID .. "\\n")
  f:close()
  return true
end
"""


def orthanc_binary() -> str:
    """The Orthanc executable; fail (never skip) when the Debian package is missing."""
    found = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/bin")
    if found is None:
        raise FileNotFoundError(
            "Orthanc is not installed: apt-get install orthanc (.ci/run installs it)"
        )
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Orthanc:
    """One Orthanc process; `dicom_port`, `http_port` and `url` are set by `start()`."""

    def __init__(
        self,
        folder: Path,
        aet: str = "XNAT",
        modalities: dict[str, str] | None = None,
        count: bool = True,
    ) -> None:
        self.folder = folder
        self.aet = aet
        self.modalities = {"xnatdrop": "XNAT"} if modalities is None else modalities
        self.count = count
        self.dicom_port = 0
        self.http_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = folder / "orthanc.log"
        self.received_path = folder / "received.txt"
        self.session = requests.Session()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _configuration(self) -> dict[str, Any]:
        storage = str(self.folder / "storage")
        lua = []
        if self.count:
            script = self.folder / "count.lua"
            script.write_text(LUA_COUNTER.replace("{path}", json.dumps(str(self.received_path))))
            lua.append(str(script))
        return {
            "Name": "xnatdrop-test",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "StorageCompression": False,
            "Plugins": [],
            "LuaScripts": lua,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False,
            "DicomCheckModalityHost": False,
            "DicomModalities": {
                name: [title, "127.0.0.1", 104] for name, title in self.modalities.items()
            },
            "OverwriteInstances": False,
            "DicomScpTimeout": 30,
        }

    def start(self, timeout: float = 60.0) -> None:
        """Start Orthanc and return when it is listening; raise with its log if it is not."""
        first = self.dicom_port == 0
        for _ in range(3 if first else 1):
            if first:
                self.dicom_port, self.http_port = free_port(), free_port()
            if self._launch(timeout):
                return
        raise RuntimeError(f"Orthanc did not start; its log:\n{self._log_tail()}")

    def _launch(self, timeout: float) -> bool:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "orthanc.json"
        config.write_text(json.dumps(self._configuration(), indent=1))
        env = {**os.environ, "TCP_NODELAY": "1"}
        process = subprocess.Popen(
            [orthanc_binary(), str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.folder,
        )
        ready = threading.Event()
        started: list[bool] = []

        def drain() -> None:
            # Copy Orthanc's log to a file (a full pipe would block it) and note the line that
            # says it listens; EOF means it exited.
            assert process.stdout is not None
            with open(self.log_path, "ab") as log:
                for line in process.stdout:
                    log.write(line)
                    log.flush()
                    if STARTED.encode() in line:
                        started.append(True)
                        ready.set()
            ready.set()

        threading.Thread(target=drain, name="orthanc-log", daemon=True).start()
        ready.wait(timeout)
        if started:
            self.process = process
            return True
        process.kill()
        process.wait()
        return False

    def _log_tail(self) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return self.log_path.read_bytes().decode(errors="replace")[-4000:]

    def kill(self) -> None:
        """SIGKILL, as a crash; storage and ports stay for `start()`."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.process = None

    stop = kill  # nothing to keep: the storage is thrown away with the test's folder

    # --- its REST API ------------------------------------------------------------------

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        response = self.session.get(self.url + path, timeout=30, **kwargs)
        response.raise_for_status()
        return response

    def instance_ids(self) -> list[str]:
        return list(self.get("/instances").json())

    def instance_uids(self) -> dict[str, str]:
        """SOP Instance UID → Orthanc instance ID, for everything stored (one request)."""
        rows = self.get("/instances", params={"expand": ""}).json()
        return {row["MainDicomTags"]["SOPInstanceUID"]: row["ID"] for row in rows}

    def file(self, orthanc_id: str) -> bytes:
        """The DICOM file Orthanc stored for one instance."""
        return self.get(f"/instances/{orthanc_id}/file").content

    def instance_count(self) -> int:
        return int(self.get("/statistics").json()["CountInstances"])

    def receptions(self) -> collections.Counter[str]:
        """How often each SOP Instance UID reached Orthanc (the Lua counter)."""
        if not self.received_path.exists():
            return collections.Counter()
        return collections.Counter(self.received_path.read_text().split())
