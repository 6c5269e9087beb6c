"""The machine a run was measured on, and the small system helpers every measurement shares.

Figures from a shared 2-core machine mean little without the load beside them, so the report
states cores, memory, disk, kernel, Python and the load average before and after the run.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def describe(workdir: Path) -> dict[str, str]:
    """Cores, CPU model, memory, the disk under `workdir`, kernel, Python and tool versions."""
    cpu = _first(Path("/proc/cpuinfo"), r"^model name\s*:\s*(.+)$") or platform.processor()
    memory_kb = meminfo_kb("MemTotal")
    usage = shutil.disk_usage(workdir)
    device, fstype = _mount_of(workdir)
    return {
        "cores": f"{os.cpu_count()} ({cpu})",
        "memory": f"{memory_kb / 2**20:.1f} GiB",
        "disk": f"{device} ({fstype}) under {workdir}: {usage.total / 1e9:.0f} GB, "
        f"{usage.free / 1e9:.0f} GB free{_rotational(device)}",
        "kernel": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "xnatdrop": _xnatdrop_version(),
        "peers": ", ".join(
            f"{name} {version}"
            for name, version in (
                ("curl", _version(["curl", "--version"], r"curl (\S+)")),
                ("storescu", _version(["storescu", "--version"], r"v(\d[\d.]*)")),
                ("Orthanc", _version([_orthanc(), "--version"], r"(\d+\.\d+\.\d+)")),
                ("xnatpy", _package("xnat")),
                ("pydicom", _package("pydicom")),
            )
            if version
        ),
    }


def meminfo_kb(field: str) -> int:
    """A /proc/meminfo field (MemTotal, MemAvailable, ...) in kB; 0 where there is none."""
    return int(_first(Path("/proc/meminfo"), rf"^{field}:\s+(\d+) kB") or 0)


def _first(path: Path, pattern: str) -> str | None:
    try:
        match = re.search(pattern, path.read_text(), re.M)
    except OSError:
        return None
    return match.group(1).strip() if match else None


def _mount_of(path: Path) -> tuple[str, str]:
    """The device and file system type of the mount holding `path` (longest mount prefix)."""
    best = ("?", "?", "")
    target = str(path.resolve())
    for line in Path("/proc/mounts").read_text().splitlines():
        device, point, fstype, *_ = line.split()
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best[2]):
            best = (device, fstype, point)
    return best[0], best[1]


def _rotational(device: str) -> str:
    name = Path(device).name
    flag = Path(f"/sys/block/{name}/queue/rotational")
    if not flag.exists():
        return ""
    rotational = flag.read_text().strip() == "1"
    return f", the kernel calls it {'rotational' if rotational else 'non-rotational'}"


def _xnatdrop_version() -> str:
    """The checkout's commit and branch, with '+ changes' when its work tree is not clean."""
    repo = Path(__file__).resolve().parents[2]
    git = ["git", "-C", str(repo)]
    try:
        commit = _output([*git, "rev-parse", "--short", "HEAD"])
        branch = _output([*git, "rev-parse", "--abbrev-ref", "HEAD"])
        dirty = _output([*git, "status", "--porcelain", "--untracked-files=no"])
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"
    return f"commit {commit} ({branch}{' + uncommitted changes' if dirty else ''})"


def _output(command: list[str]) -> str:
    return subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=10
    ).stdout.strip()


def _version(command: list[str], pattern: str) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    match = re.search(pattern, done.stdout + done.stderr)
    return match.group(1) if match else ""


def _orthanc() -> str:
    return (
        shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/bin") or "Orthanc"
    )


def _package(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def drop_cache(paths: Iterable[str | Path]) -> None:
    """Drop the page cache of each file: posix_fadvise(DONTNEED) on its whole length.

    Why per file and not `echo 1 > /proc/sys/vm/drop_caches`: it needs no root, and it leaves
    the rest of a shared machine's cache alone. It drops file data only; the kernel keeps the
    inodes and directory entries, so a "cold" stat is still a cached one. Pages still dirty
    cannot be dropped, which is why workloads are synced after they are written.
    """
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def peak_rss_kb(pid: int | str = "self") -> int:
    """VmHWM, the resident-set high-water mark, of a running process, in kB (0 if gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    return int(match.group(1)) if match else 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (fields 14 and 15 of stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free
