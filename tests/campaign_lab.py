"""The campaign's laboratory: one sandbox XNAT, drop roots, a configuration and real daemons.

A `Lab` is what one scenario runs in: a folder under the campaign's temporary root holding the
drop root(s), done/, quarantine/, the state folder and the sandbox's data, a sandbox XNAT on a
free port with a fresh install's defaults (site anonymisation on, checksums on), and the
`xnatdrop run` processes started against it. Daemons are the real `python -m xnatdrop run`, with
`tests/campaign_hooks` on PYTHONPATH so that `XNATDROP_CAMPAIGN_FAULT` can arm the fault hook
(see its docstring); without a fault they are exactly what systemd would start.

Every wait polls a condition with a deadline (`wait_for`); nothing sleeps to "let things happen".
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xnat_sandbox import Sandbox

HERE = Path(__file__).resolve().parent
HOOKS = HERE / "campaign_hooks"
PROJECT = "SPN01"
USER, PASSWORD = "svc", "pw"
# Root without the capabilities that bypass file permissions, for the scenarios that need files
# the service cannot read or folders it cannot write (the tests run as root, as CI does; under
# systemd the service runs as its own user, e.g. with `CapabilityBoundingSet=` empty).
NO_DAC = [
    "setpriv",
    "--bounding-set",
    "-dac_override,-dac_read_search",
    "--inh-caps",
    "-dac_override,-dac_read_search",
    "--",
]

# Fast timings so that a scenario converges in seconds; each is a real config key.
BASE_CONFIG: dict[str, dict[str, Any]] = {
    "settle": {"quiet_seconds": 1.0, "poll_seconds": 0.3, "max_wait_seconds": 8.0},
    "schedule": {"max_concurrent_pushes": 2, "retry_seconds": 2.0, "stop_timeout_seconds": 20.0},
    "push": {
        "retry_base_seconds": 0.2,
        "retry_max_seconds": 2.0,
        "inline_attempts": 2,
        "inline_max_seconds": 1.0,
        "poll_seconds": 0.1,
        "ready_timeout_seconds": 15.0,
        "receiving_quiet_seconds": 1.0,
        "breaker_hold_seconds": 2.0,
    },
}


def wait_for(
    condition: Callable[[], object], timeout: float, what: str = "", every: float = 0.1
) -> bool:
    """Poll `condition` until it is true or `timeout` passes; return whether it became true."""
    pause = threading.Event()
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        pause.wait(every)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


class Lab:
    """One scenario's world. Use as a context manager: everything is torn down after."""

    def __init__(
        self,
        parent: Path,
        name: str,
        roots: tuple[str, ...] = ("drop",),
        no_dac: bool = False,
        keep: bool = False,
    ) -> None:
        self.dir = parent / name
        self.dir.mkdir(parents=True)
        self.name = name
        self.roots = [self.dir / r for r in roots]
        self.done = self.dir / "done"
        self.quarantine = self.dir / "quarantine"
        self.state = self.dir / "state"
        self.staging = self.dir / "staging"
        self.staging.mkdir()
        self.no_dac = no_dac
        self.keep = keep
        self.faults_log = self.dir / "faults.jsonl"
        # AF_UNIX paths hold 107 bytes: the notify sockets live in a short folder of their own.
        self.sockets = Path(tempfile.mkdtemp(prefix="xdn-"))
        self.daemons: list[Daemon] = []
        self.mounts: list[Path] = []
        self.config_path = self.dir / "xnatdrop.toml"
        self.extra: dict[str, Any] = {}
        self.root_settings: list[dict[str, Any]] = [{} for _ in roots]
        self.sandbox = Sandbox(
            data=self.dir / "xnat",
            host="127.0.0.1",
            port=0,
            users=[f"{USER}:{PASSWORD}"],
            projects=[PROJECT],
        )
        self.xnat_timeout = 20.0

    # -- lifetime ---------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        for root in self.roots:
            root.mkdir(exist_ok=True)
        self.sandbox.start()
        self.write_config()
        return self

    def __exit__(self, *exc: object) -> None:
        for daemon in self.daemons:
            daemon.kill()
        with contextlib.suppress(Exception):
            self.sandbox.stop()
        shutil.rmtree(self.sockets, ignore_errors=True)
        for mount in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)
        if not self.keep:
            for path in self.dir.rglob("*"):  # undo chmod 000 before removing
                with contextlib.suppress(OSError):
                    if not path.is_symlink():
                        path.chmod(0o700 if path.is_dir() else 0o600)
            shutil.rmtree(self.dir, ignore_errors=True)

    def mount(self, path: Path, *options: str) -> None:
        """`mount` as root; the lab unmounts it (lazily) when it ends."""
        path.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["mount", *options, str(path)], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"mount {' '.join(options)} {path}: {result.stderr.strip()}")
        self.mounts.append(path)

    def tmpfs(self, path: Path, size: str) -> None:
        self.mount(path, "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs")

    def umount(self, path: Path) -> None:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=True)
        self.mounts.remove(path)

    # -- configuration ----------------------------------------------------------------------

    def write_config(self, **sections: dict[str, Any]) -> Path:
        """Write the configuration: BASE_CONFIG, then `self.extra`, then `sections`."""
        self.extra = merge(self.extra, sections)
        settings = merge(BASE_CONFIG, self.extra)
        secret = self.dir / "secret"
        secret.write_text(PASSWORD + "\n", encoding="utf-8")
        secret.chmod(0o600)
        paths = {"state": self.state, "quarantine": self.quarantine, "done": self.done}
        paths.update(settings.pop("paths", {}))
        lines = [
            "[xnat]",
            f"url = {toml_value(self.sandbox.url)}",
            f"username = {toml_value(USER)}",
            f"password_file = {toml_value(secret)}",
            f"timeout_seconds = {self.xnat_timeout}",
            "[paths]",
            *(f"{k} = {toml_value(v)}" for k, v in paths.items()),
        ]
        for root, extra in zip(self.roots, self.root_settings, strict=True):
            lines += ["[[drop]]", f"path = {toml_value(root)}", f"project = {toml_value(PROJECT)}"]
            rules = extra.get("rules")
            lines += [f"{k} = {toml_value(v)}" for k, v in extra.items() if k != "rules"]
            if rules:
                lines += ["[drop.rules]", *(f"{k} = {toml_value(v)}" for k, v in rules.items())]
        for section, values in settings.items():
            lines.append(f"[{section}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return self.config_path

    # -- processes --------------------------------------------------------------------------

    def env(
        self, fault: dict[str, Any] | None = None, crash_at: str | None = None
    ) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("XNATDROP_")}
        env["PYTHONPATH"] = os.pathsep.join(
            [str(HOOKS), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        if fault:
            env["XNATDROP_CAMPAIGN_FAULT"] = json.dumps(
                {"under": str(self.dir), "log": str(self.faults_log), **fault}
            )
        if crash_at:
            env["XNATDROP_TEST_CRASH_AT"] = crash_at
        return env

    def command(self, *args: str) -> list[str]:
        """`python -m xnatdrop ARGS`, without the DAC capabilities if the lab says so."""
        return [*(NO_DAC if self.no_dac else []), sys.executable, "-m", "xnatdrop", *args]

    def daemon(
        self,
        fault: dict[str, Any] | None = None,
        crash_at: str | None = None,
        config: Path | None = None,
        wait_ready: bool = True,
    ) -> Daemon:
        """Start one `xnatdrop run`; return once it sent READY=1 (or exited)."""
        daemon = Daemon(self, len(self.daemons) + 1, config or self.config_path)
        self.daemons.append(daemon)
        daemon.start(self.env(fault, crash_at), wait_ready)
        return daemon

    def xnatdrop(
        self,
        *args: str,
        fault: dict[str, Any] | None = None,
        crash_at: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run one `xnatdrop` command (push, status, requeue …) as its own process."""
        return subprocess.run(
            self.command(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=self.env(fault, crash_at),
        )

    def status(self) -> tuple[int, str, dict[str, Any]]:
        """`xnatdrop status` as text and as JSON: (exit code, text, report)."""
        text = self.xnatdrop("status", "--config", str(self.config_path))
        data = self.xnatdrop("status", "--json", "--config", str(self.config_path))
        try:
            report = json.loads(data.stdout)
        except ValueError:
            report = {}
        return text.returncode, text.stdout + text.stderr, report

    def logs(self) -> str:
        return "".join(d.log() for d in self.daemons)


class Daemon:
    """One `xnatdrop run` process with its own notify socket, as systemd would give it."""

    def __init__(self, lab: Lab, number: int, config: Path) -> None:
        self.lab = lab
        self.number = number
        self.config = config
        self.log_path = lab.dir / f"daemon-{number}.log"
        self.socket_path = lab.sockets / f"n{number}.sock"
        self.process: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.ready = False

    def start(self, env: dict[str, str], wait_ready: bool) -> None:
        self.socket_path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.socket_path))
        self.socket_path.chmod(0o777)  # the daemon may run without DAC override
        env = {**env, "NOTIFY_SOCKET": str(self.socket_path), "WATCHDOG_USEC": "2000000"}
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                self.lab.command("-v", "run", "--config", str(self.config)),
                env=env,
                stdout=log_file,
                stderr=log_file,
            )
        if wait_ready:
            wait_for(lambda: self._ready() or not self.alive(), 60, every=0.05)
        # Read what the daemon sends (WATCHDOG=1, STATUS=…) as systemd would, so that its
        # datagrams never fill the socket's queue.
        threading.Thread(target=self._drain, name=f"notify {self.number}", daemon=True).start()

    def _drain(self) -> None:
        sock = self.sock
        while sock is not None and self.sock is sock:
            try:
                sock.settimeout(0.5)
                if sock.recv(4096).startswith(b"READY=1"):
                    self.ready = True
            except TimeoutError:
                continue
            except OSError:
                return

    def _ready(self) -> bool:
        assert self.sock is not None
        self.sock.settimeout(0)
        try:
            while True:
                if self.sock.recv(4096).startswith(b"READY=1"):
                    self.ready = True
        except (BlockingIOError, OSError):
            pass
        return self.ready

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stopped_by_signal(self) -> bool:
        """True while the process is stopped (SIGSTOP), as /proc says."""
        assert self.process is not None
        try:
            stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] == "T"

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(sig)

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM and wait: the exit code, or None if it had to be killed."""
        if self.process is None:
            return None
        if self.alive():
            self.process.send_signal(signal.SIGCONT)
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        return self.process.returncode

    def kill(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait()
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def wait_exit(self, timeout: float) -> int | None:
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
