"""A whole push, end to end, against the peers, each into its own fresh sandbox XNAT.

For one workload (a subject folder in a drop root):

1. the zip xnatdrop would stream (`pack.write_zip`, the same bytes) is written once, before any
   timing, for curl; then copied to a new file on the same disk: the disk's write rate for
   those bytes (no fsync in either, both land in the page cache), the baseline of the
   sandbox's receive rate; and the store floor (`store_floor`): spool that zip, then write each
   entry to its own file with its MD5, the least work any importer keeping files and checksums
   does, in Python, so that the sandbox's own overhead shows apart from the physical work;
2. `curl` POSTs that zip to the import service (DICOM-zip, into the prearchive) of a fresh
   sandbox: curl's own cost is nil, so its rate *is* the sandbox's receive rate;
3. xnatpy's `services.import_dir` of the same folder into a fresh sandbox (xnatpy zips the
   folder into a temporary file, then uploads it);
4. `xnatdrop push` (check, pack, streamed import, verify, archive, finish) into a fresh sandbox,
   with its peak memory (`hwm.py`) and the split of its time from its own log lines.

After each upload the sandbox's peak memory (VmHWM) is read before it stops. curl and xnatpy
only import into the prearchive; xnatdrop also verifies and archives, so its import step is
shown on its own as well.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path
from typing import Any

from harness import product, servers
from harness.workload import Workload

HWM = Path(__file__).with_name("hwm.py")


def _import_url(base: str, label: str) -> str:
    project = servers.PROJECT
    return (
        f"{base}/data/services/import?import-handler=DICOM-zip&PROJECT_ID={project}"
        f"&SUBJECT_ID={label}&EXPT_LABEL={label}&dest=/prearchive/projects/{project}"
    )


def _run(command: list[str], log: Path, timeout: float = 7200) -> float:
    """Run a child to completion; its wall seconds. RuntimeError naming its log if it fails."""
    started = time.perf_counter()
    with open(log, "wb") as errors:
        done = subprocess.run(
            command, stdout=subprocess.DEVNULL, stderr=errors, timeout=timeout, check=False
        )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{Path(command[0]).name} … exited {done.returncode}; {log}:\n{tail}")
    return seconds


def disk_write(source: Path, target: Path) -> float:
    """Seconds to copy `source` to a new file in 1 MiB pieces (no fsync), deleted after."""
    started = time.perf_counter()
    with source.open("rb") as reader, target.open("wb") as writer:
        while chunk := reader.read(1 << 20):
            writer.write(chunk)
    seconds = time.perf_counter() - started
    target.unlink()
    return seconds


def store_floor(zip_path: Path, scratch: Path) -> float:
    """Seconds for the least an importer that keeps each file with its MD5 must do, in Python:
    spool the zip (a copy, as the body is written to disk), then write every entry to its own
    file (`.part`, then renamed) while computing its MD5. No DICOM, no database, no HTTP: the
    rest of the sandbox's time is its own overhead, and this is the rate it can approach."""
    floor = scratch / "floor"
    floor.mkdir()
    started = time.perf_counter()
    spooled = floor / "upload.zip"
    with zip_path.open("rb") as reader, spooled.open("wb") as writer:
        while chunk := reader.read(1 << 20):
            writer.write(chunk)
    with zipfile.ZipFile(spooled) as bundle:
        for index, info in enumerate(bundle.infolist()):
            digest = hashlib.md5()
            part = floor / f".{index}.part"
            with bundle.open(info) as entry, part.open("wb") as out:
                while chunk := entry.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            part.replace(floor / f"{index}.dcm")
    seconds = time.perf_counter() - started
    shutil.rmtree(floor)
    return seconds


def curl(zip_path: Path, work: Path, label: str) -> dict[str, float]:
    with servers.sandbox(work / "xnat-curl") as xnat:
        # --data-binary loads the file into memory and refuses more than 1 GiB; -T streams it.
        body = (
            ["--data-binary", f"@{zip_path}"]
            if zip_path.stat().st_size < 1 << 30
            else ["-X", "POST", "-T", str(zip_path)]
        )
        command = [
            "curl", "-sS", "--fail", "-o", "/dev/null",
            "-u", f"{servers.USER}:{servers.PASSWORD}",
            "-H", "Expect:", "-H", "Content-Type: application/zip",
            *body, _import_url(xnat.url, label),
        ]  # fmt: skip
        seconds = _run(command, work / "curl.log")
        sandbox_peak = xnat.peak_rss_kb()
    shutil.rmtree(work / "xnat-curl", ignore_errors=True)
    return {"seconds": seconds, "sandbox_peak_kb": sandbox_peak}


def xnatpy(folder: Path, work: Path, label: str) -> dict[str, float]:
    with servers.sandbox(work / "xnat-xnatpy") as xnat:
        script = textwrap.dedent(
            f"""
            import xnat
            with xnat.connect({xnat.url!r}, user={servers.USER!r},
                              password={servers.PASSWORD!r}) as session:
                session.services.import_dir(
                    {str(folder)!r}, project={servers.PROJECT!r}, subject={label!r},
                    experiment={label!r}, import_handler="DICOM-zip",
                    destination="/prearchive/projects/{servers.PROJECT}")
            """
        )
        seconds = _run([sys.executable, "-c", script], work / "xnatpy.log")
        sandbox_peak = xnat.peak_rss_kb()
    shutil.rmtree(work / "xnat-xnatpy", ignore_errors=True)
    return {"seconds": seconds, "sandbox_peak_kb": sandbox_peak}


def config_text(url: str, secret: Path, work: Path, drop_root: Path, **sections: str) -> str:
    """An xnatdrop configuration for the benchmark's sandbox, drop root and state folders."""
    text = textwrap.dedent(
        f"""
        [xnat]
        url = "{url}"
        username = "{servers.USER}"
        password_file = "{secret}"
        timeout_seconds = 600
        [paths]
        state = "{work / "state"}"
        quarantine = "{work / "quarantine"}"
        done = "{work / "done"}"
        [[drop]]
        path = "{drop_root}"
        project = "{servers.PROJECT}"
        """
    )
    for name, body in sections.items():
        text += f"[{name}]\n{textwrap.dedent(body).strip()}\n"
    return text


def write_secret(work: Path) -> Path:
    secret = work / "secret"
    secret.write_text(servers.PASSWORD, encoding="utf-8")
    secret.chmod(0o600)
    return secret


def xnatdrop_push(folder: Path, work: Path) -> dict[str, Any]:
    label = folder.name
    with servers.sandbox(work / "xnat-xnatdrop") as xnat:
        config = work / "xnatdrop.toml"
        config.write_text(
            config_text(
                xnat.url,
                write_secret(work),
                work,
                folder.parent,
                push="poll_seconds = 0.2\ninline_attempts = 1",
            ),
            encoding="utf-8",
        )
        command = product.push_command(folder, config)
        if command[1:3] != ["-m", product.CLI[2]]:
            raise RuntimeError(f"cannot measure the memory of {command[:3]}")
        peak_file = work / "push-peak.json"
        log = work / "push.log"
        seconds = _run([sys.executable, str(HWM), str(peak_file), *command[2:]], log)
        sandbox_peak = xnat.peak_rss_kb()
    shutil.rmtree(work / "xnat-xnatdrop", ignore_errors=True)
    text = log.read_text(errors="replace")
    lines = re.findall(rf"{label}: (\w+): .*\(([\d.]+) s\)$", text, re.M)
    steps = {step: float(seconds) for step, seconds in lines}
    send = re.search(r"sent in ([\d.]+) s .*answered ([\d.]+) s later", text)
    peak = json.loads(peak_file.read_text())
    return {
        "seconds": seconds,
        "peak_kb": peak["peak_kb"],
        "children_peak_kb": peak["children_peak_kb"],
        "sandbox_peak_kb": sandbox_peak,
        "steps": steps,
        "send_seconds": float(send[1]) if send else None,
        "server_wait_seconds": float(send[2]) if send else None,
    }


def measure(work: Workload, scratch: Path, peers: bool = True) -> dict[str, Any]:
    """The end-to-end figures for one workload. The folder is moved to done/ by the push."""
    scratch.mkdir(parents=True, exist_ok=True)
    label = work.folder.name
    zip_path = scratch / "upload.zip"
    names = [p.relative_to(work.folder).as_posix() for p in work.files]
    size = product.write_zip(work.folder, names, zip_path)
    results: dict[str, Any] = {"zip_bytes": size}
    results["disk_write"] = {"seconds": disk_write(zip_path, scratch / "copy.bin")}
    results["store_floor"] = {"seconds": store_floor(zip_path, scratch)}
    results["curl"] = curl(zip_path, scratch, label)
    zip_path.unlink()
    if peers:  # xnatpy before xnatdrop: the push moves the folder to done/
        results["xnatpy"] = xnatpy(work.folder, scratch, label)
    results["xnatdrop"] = xnatdrop_push(work.folder, scratch)
    for name in ("disk_write", "store_floor", "curl", "xnatpy", "xnatdrop"):
        if name in results:
            results[name]["mb_per_s"] = size / 1e6 / results[name]["seconds"]
    curl_s = results["curl"]["seconds"]
    results["ratios"] = {
        "push / curl (time)": results["xnatdrop"]["seconds"] / curl_s,
        "sandbox receive / disk write": results["curl"]["mb_per_s"]
        / results["disk_write"]["mb_per_s"],
        "sandbox receive / store floor": results["curl"]["mb_per_s"]
        / results["store_floor"]["mb_per_s"],
    }
    if "xnatpy" in results:
        results["ratios"]["xnatpy / push (time)"] = (
            results["xnatpy"]["seconds"] / results["xnatdrop"]["seconds"]
        )
    return results
