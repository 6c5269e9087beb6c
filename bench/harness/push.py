"""A whole push, end to end, against the peers, each into its own fresh sandbox XNAT.

For one workload (a subject folder in a drop root):

1. the zip xnatdrop would stream (`pack.write_zip`, the same bytes) is written once, before any
   timing, for curl. Then the disk baselines, on the same disk, none with fsync (below):
   - `disk_write_files` (`write_entries`): write every entry of that zip to its own file
     (open, write, close; the same names, sizes and folders): what "writing the same bytes to
     disk" means for an importer that stores N files, the baseline of the sandbox's ingest;
   - `disk_write`: copy the zip to one new file (one stream, 1 MiB pieces): the disk's
     sequential write rate, for context;
   - `store_floor`: read the zip once and write each entry to its own file with its MD5: the
     least work any importer keeping files and checksums does, in Python, one thread. (It
     spooled the zip first until the sandbox stopped spooling: XNAT reads the body as a
     stream, and so does the sandbox now, so a spool is no longer part of the least work.)

   Every timed writer (`disk_write_files`, curl's import, xnatpy's, xnatdrop's, then
   `store_floor`) creates its files in the same state of the file system: nothing is deleted
   between them (each writes into its own folder; all are removed when the step ends), the
   step starts only after ext4's window for recently deleted inodes has passed since the last
   bulk deletion (`deletions.py`), and the dirty pages are written out (`os.sync`, untimed)
   before each, so none waits for another's writeback. `disk_write_files` writes at the
   sandbox's depth (`prearchive_layout`: one folder per series, the entry path made one file
   name), so its folders and files land in block groups like the import's. Before stop 17
   the writers deleted their files as they went, and each later one paid for the earlier
   ones' deletions. And each starts with the same free memory: what the step's writers wrote
   before it is dropped from the page cache first (`release`), so that no writer has to
   reclaim pages the earlier ones filled. A 2 GB step writes about 34 GB (pairs, rounds,
   peers) on this 24 GB VM: until stop 34 its first writers found free memory and the push
   rounds at its end reclaimed as they wrote.
2. `curl` does what a person does by hand: POST that zip to the import service (DICOM-zip,
   into the prearchive) of a fresh sandbox, then `POST /data/services/archive` of the
   prearchive session it names; the same XNAT operations xnatdrop's push performs. curl's own
   cost is nil, so the import's rate *is* the sandbox's ingest rate;
3. xnatpy, the same by its API: `services.import_dir` of the same folder (it zips the folder
   into a temporary file, then uploads it into the prearchive), then `.archive()` of the
   prearchive session it returns;
4. `xnatdrop push` (check, pack, streamed import, verify, archive, finish) into a fresh sandbox,
   with its peak memory (`hwm.py`) and the split of its time from its own log lines. It does
   more than the peers: it checks the folder first and verifies after the import and after
   the archive (catalogs read back, one file per scan downloaded and its pixel data compared).

Each of the three starts cold: curl's zip, or the folder's files for xnatpy and xnatdrop, are
dropped from the page cache just before it (`machine.drop_cache`), as the check and pack+send
are measured. Until stop 30 curl read a zip the step had just written and read (in memory)
while xnatdrop read a folder last touched minutes of writing before, at 8 GB mostly from disk:
the same 8 GB import, into the same sandbox, took curl 40.0 s from memory and 52.1 s cold, and
xnatdrop's upload 43.3 s from memory and 50.2 s cold (stop 30). The sandbox's extra imports
(the ingest pairs) still read the zip from memory: they measure the sandbox, not a client.

No fsync in any timed writer: the sandbox does not fsync what it stores, nor does XNAT
(Tomcat's `FileOutputStream`s are closed, never synced), so the rates are to the page cache.
The flush that follows each of the two ingest writers (`os.sync`, timed apart) is recorded
too, so the ratio is also given "until on disk", both writers alike.

The ingest ratio is best of `repeats` for both sides, interleaved (issue 13, stop 18): on a
shared machine the N-file write swung 300-1,623 MB/s from one moment to the next while its
Dirty pages never reached the kernel's writeback threshold (no dirty throttling below
~2.3 GB on this 24 GB VM); what swung was the CPU other processes took and the inodes other
processes had just freed (`deletions.py`). Both are outside disturbances that only slow a
writer down, so the least time of each side is its least disturbed measurement, and
interleaving gives both the same chances. The extra pairs run first, the sandbox's import
first in every other one (write, import; import, write; then the step's own write ... curl),
and they keep their folders until the step ends while the disk has room (`ROOM`: 500 MB and
2 GB here), so no timed writer follows a deletion. Until stop 23 each pair removed what it
wrote and the next waited 61 s, too little (`deletions.py`): the N-file write's later rounds
still paid for the deletion and its first round (500 MB: 930 against 352 / 252 MB/s) did not;
the sandbox always went second. Where the disk has no room (8 GB) a pair is removed and the
next waits out the six minutes.

curl and xnatdrop run in `ROUNDS` interleaved rounds (curl first in the first and third,
xnatdrop in the second), each from a cold cache into a fresh sandbox, and each side keeps its least
time, as the ingest does: on this VM the same 8 GB import took curl 13.8 s in the benchmark and
25.4 s alone minutes later (26.9 s of the sandbox's CPU against 10.8 s), and the push's ratio to
curl moved 0.80-1.23 at 500 MB between runs of the same code. Between rounds the folder goes
back from done/ to the drop root by a rename (its receipt removed). Every round keeps its
sandbox until the step ends, so a step runs as many rounds as the disk holds (`push_rounds`;
results.json says how many in `rounds`): deleting between rounds would cost six minutes of
waiting each (`deletions.py`). xnatpy, 7-9× slower, runs once, before the rounds.

After each upload the sandbox's peak memory (VmHWM) is read before it stops. Each ingest
measurement records its CPU time too (`cpu_seconds`: the sandbox process's user + system during
the import, the N-file write's thread's): the profile that says where the import's time goes
needs it, and on a shared machine it moves much less than the seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import deletions, machine, product, servers
from harness.rounds import least
from harness.workload import Workload

HWM = Path(__file__).with_name("hwm.py")


def _import_url(base: str, label: str) -> str:
    project = servers.PROJECT
    return (
        f"{base}/data/services/import?import-handler=DICOM-zip&PROJECT_ID={project}"
        f"&SUBJECT_ID={label}&EXPT_LABEL={label}&dest=/prearchive/projects/{project}"
    )


def _run(command: list[str], log: Path, timeout: float = 7200) -> float:
    """Run a child to completion; its wall seconds. RuntimeError naming its log if it fails.

    The wait is a blocking `waitpid`, with a timer to kill a child that hangs: `Popen.wait`
    with a timeout (what `subprocess.run(timeout=…)` does) polls, sleeping up to 50 ms between
    looks, which added 0-50 ms to every timed child (a 0.5 s curl import: up to 10 %).
    """
    started = time.perf_counter()
    with open(log, "wb") as errors:
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
        killer = threading.Timer(timeout, child.kill)
        killer.start()
        try:
            returncode = child.wait()
        finally:
            killer.cancel()
    seconds = time.perf_counter() - started
    if returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{Path(command[0]).name} … exited {returncode}; {log}:\n{tail}")
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


def prearchive_layout(name: str) -> str:
    """Where the sandbox stores zip entry `name` below its data folder, but for the scan's
    number: `prearchive/{project}/{timestamp}/{session}/SCANS/{scan}/DICOM/{entry path made a
    file name}` (`importroute.store_entry`, `GradualDicomImporter.getSafeFile`). The workload
    holds one series per folder, so the folder stands for the scan."""
    series = name.rpartition("/")[0] or "1"
    return f"prearchive/{servers.PROJECT}/20000101_000000000/S/SCANS/{series}/DICOM/" + re.sub(
        r"[^A-Za-z0-9_.-]", "_", name
    )


def release(scratch: Path, zip_path: Path) -> None:
    """Drop from the page cache every file the step's timed writers have written so far
    (all under `scratch` but the zip, which the writers read), written out first, so that the
    next writer finds as much free memory as the one before it (module docstring)."""
    os.sync()
    machine.drop_cache(
        path
        for folder, _, names in os.walk(scratch)
        for path in (os.path.join(folder, name) for name in names)
        if path != str(zip_path)
    )


def flush() -> float:
    """Seconds to write out the dirty pages (`os.sync`): after a timed writer, how long its
    data took to reach the disk (others' dirty pages included: the machine is one disk)."""
    started = time.perf_counter()
    os.sync()
    return time.perf_counter() - started


def disk_write_files(zip_path: Path, scratch: Path, folder: str = "files") -> float:
    """Seconds to write every entry of the zip to its own file (`write_entries`, the sandbox's
    prearchive layout), no fsync; the files stay until the step ends (module docstring)."""
    root = scratch / folder
    with zipfile.ZipFile(zip_path) as bundle:
        entries = [i for i in bundle.infolist() if not i.is_dir()]
    os.sync()  # neither this nor the import waits for earlier writes' writeback
    started = time.perf_counter()
    write_entries(zip_path, entries, root, prearchive_layout)
    seconds = time.perf_counter() - started
    return seconds


def write_entries(
    zip_path: Path,
    entries: list[zipfile.ZipInfo],
    root: Path,
    place: Callable[[str], str] = str,
) -> int:
    """Write each entry of a stored (uncompressed) zip under `root` at `place(name)` with its
    size, read straight from the zip's bytes (no CRC, no MD5): open, write, close, one file
    each; folders made as the names need them, as an importer must. Return the bytes
    written."""
    if any(i.compress_type != zipfile.ZIP_STORED for i in entries):
        raise RuntimeError(f"{zip_path}: expected a stored (uncompressed) zip, as xnatdrop sends")
    made: set[Path] = set()
    written = 0
    with zip_path.open("rb") as reader:
        for info in entries:
            reader.seek(info.header_offset + 26)  # local header: name and extra lengths
            name_length, extra_length = struct.unpack("<HH", reader.read(4))
            reader.seek(name_length + extra_length, 1)
            target = root / place(info.filename)
            if target.parent not in made:
                target.parent.mkdir(parents=True, exist_ok=True)
                made.add(target.parent)
            remaining = info.file_size
            with target.open("wb") as out:
                while remaining:
                    chunk = reader.read(min(1 << 20, remaining))
                    if not chunk:
                        raise RuntimeError(f"{zip_path}: {info.filename} is cut short")
                    out.write(chunk)
                    remaining -= len(chunk)
            written += info.file_size
    return written


def store_floor(zip_path: Path, scratch: Path) -> float:
    """Seconds for the least an importer that keeps each file with its MD5 must do, in Python,
    on one thread: read the zip once, in order (as a body is received), and write every entry
    to its own file (open, write, close) while computing its MD5. No DICOM, no database, no
    HTTP: the rest of the sandbox's time is its own overhead, and this is the rate it can
    approach (the sandbox hashes on two threads, so it may pass it)."""
    floor = scratch / "floor"
    floor.mkdir()  # kept until the step ends (module docstring)
    with zipfile.ZipFile(zip_path) as bundle:
        entries = [i for i in bundle.infolist() if not i.is_dir()]
    started = time.perf_counter()
    with zip_path.open("rb") as reader:
        for index, info in enumerate(entries):
            reader.seek(info.header_offset + 26)  # local header: name and extra lengths
            name_length, extra_length = struct.unpack("<HH", reader.read(4))
            reader.seek(name_length + extra_length, 1)
            digest = hashlib.md5()
            remaining = info.file_size
            with (floor / f"{index}.dcm").open("wb") as out:
                while remaining:
                    chunk = reader.read(min(1 << 20, remaining))
                    digest.update(chunk)
                    out.write(chunk)
                    remaining -= len(chunk)
    return time.perf_counter() - started


def _curl(url: str, out: Path, log: Path, *options: str) -> tuple[float, str]:
    """One curl request as the benchmark's user; (seconds, the answer's body)."""
    command = [
        "curl", "-sS", "--fail", "-o", str(out),
        "-u", f"{servers.USER}:{servers.PASSWORD}", *options, url,
    ]  # fmt: skip
    seconds = _run(command, log)
    return seconds, out.read_text(errors="replace").strip()


def _curl_import(zip_path: Path, url: str, work: Path, label: str) -> tuple[float, str]:
    """curl the zip into the prearchive of the sandbox at `url`: (seconds, its answer)."""
    # -T streams the file at every size. `--data-binary @zip` (used below 1 GiB until stop 22)
    # reads the whole file into memory before it sends a byte: 0.85-0.89 s for 500 MB into the
    # null sink against 0.29-0.30 s streamed, time the sandbox's ingest was charged with at
    # 500 MB but not at 2 GB (where -T was already used, as --data-binary refuses > 1 GiB).
    body = ["-X", "POST", "-T", str(zip_path)]
    headers = ["-H", "Expect:", "-H", "Content-Type: application/zip"]
    return _curl(
        _import_url(url, label), work / "curl-import.out", work / "curl.log", *headers, *body
    )


def import_only(zip_path: Path, work: Path, folder: str, label: str) -> dict[str, float]:
    """One more of the sandbox's ingest (curl's import into a fresh sandbox), for the best of
    `repeats`; its flush timed after it, and the sandbox's CPU (user + system, all threads)
    during the import, which a busy machine disturbs less than the seconds."""
    with servers.sandbox(work / folder) as xnat:
        before = machine.cpu_seconds(xnat.pid)
        seconds, _ = _curl_import(zip_path, xnat.url, work, label)
        cpu = machine.cpu_seconds(xnat.pid) - before
    return {"seconds": seconds, "flush_seconds": flush(), "cpu_seconds": cpu}


def files_run(zip_path: Path, scratch: Path, folder: str = "files") -> dict[str, float]:
    """One N-file write (`disk_write_files`) with its flush, and its CPU (user + system of the
    writing thread), to set beside the sandbox's CPU for the same entries."""
    before = resource.getrusage(resource.RUSAGE_THREAD)
    seconds = disk_write_files(zip_path, scratch, folder)
    after = resource.getrusage(resource.RUSAGE_THREAD)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return {"seconds": seconds, "flush_seconds": flush(), "cpu_seconds": cpu}


def curl(zip_path: Path, work: Path, label: str) -> dict[str, float]:
    """By hand: curl the zip into the prearchive, then archive the session it names."""
    with servers.sandbox(work / "xnat-curl") as xnat:
        cpu_before = machine.cpu_seconds(xnat.pid)
        import_s, answer = _curl_import(zip_path, xnat.url, work, label)
        import_cpu = machine.cpu_seconds(xnat.pid) - cpu_before
        import_flush = flush()  # untimed for the import and the archive: apart
        # The import answers the prearchive session's URI (/data/prearchive/projects/…); the
        # archive service takes it as src without the /data prefix (xnat-rest.md §5.1).
        src = re.sub(r"^/data(?=/prearchive/)", "", answer.splitlines()[0] if answer else "")
        if not src.startswith("/prearchive/"):
            raise RuntimeError(f"curl import answered {answer[:200]!r}, not a prearchive URI")
        archive_s, archived = _curl(
            f"{xnat.url}/data/services/archive?src={src}",
            work / "curl-archive.out", work / "curl-archive.log", "-X", "POST",
        )  # fmt: skip
        if "/archive/projects/" not in archived:
            raise RuntimeError(f"curl archive answered {archived[:200]!r}, not an archive URI")
        sandbox_peak = xnat.peak_rss_kb()
    return {
        "seconds": import_s + archive_s,
        "import_seconds": import_s,
        "import_flush_seconds": import_flush,
        "import_cpu_seconds": import_cpu,
        "archive_seconds": archive_s,
        "sandbox_peak_kb": sandbox_peak,
    }


def xnatpy(folder: Path, work: Path, label: str) -> dict[str, float]:
    """By xnatpy's API: `import_dir` into the prearchive, then `.archive()` of what it returns.

    The whole child is timed (interpreter start and `import xnat` included, about what a
    person's script pays); the split of import and archive is timed inside it.
    """
    split = work / "xnatpy-split.json"
    with servers.sandbox(work / "xnat-xnatpy") as xnat:
        script = textwrap.dedent(
            f"""
            import json, time
            import xnat
            with xnat.connect({xnat.url!r}, user={servers.USER!r},
                              password={servers.PASSWORD!r}) as session:
                started = time.perf_counter()
                prearchived = session.services.import_dir(
                    {str(folder)!r}, project={servers.PROJECT!r}, subject={label!r},
                    experiment={label!r}, import_handler="DICOM-zip",
                    destination="/prearchive/projects/{servers.PROJECT}")
                imported = time.perf_counter()
                prearchived.archive()
                archived = time.perf_counter()
            with open({str(split)!r}, "w") as out:
                json.dump({{"import_seconds": imported - started,
                            "archive_seconds": archived - imported}}, out)
            """
        )
        seconds = _run([sys.executable, "-c", script], work / "xnatpy.log")
        sandbox_peak = xnat.peak_rss_kb()
    return {"seconds": seconds, **json.loads(split.read_text()), "sandbox_peak_kb": sandbox_peak}


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
    text = log.read_text(errors="replace")
    lines = re.findall(rf"{label}: (\w+): .*\(([\d.]+) s\)$", text, re.M)
    steps = {step: float(seconds) for step, seconds in lines}
    send = re.search(r"sent in ([\d.]+) s .*answered ([\d.]+) s later", text)
    archiving = re.search(r"archived as \S+ \(XNAT took ([\d.]+) s\)", text)
    peak = json.loads(peak_file.read_text())
    return {
        "seconds": seconds,
        "peak_kb": peak["peak_kb"],
        "children_peak_kb": peak["children_peak_kb"],
        "sandbox_peak_kb": sandbox_peak,
        "steps": steps,
        "send_seconds": float(send[1]) if send else None,
        "server_wait_seconds": float(send[2]) if send else None,
        # The archive step is XNAT's archive request plus xnatdrop's read-back after it.
        "archive_request_seconds": float(archiving[1]) if archiving else None,
        # Interpreter start, imports, configuration, ledger: the child's time outside its steps.
        "outside_steps_seconds": seconds - sum(steps.values()),
    }


WRITTEN = ("files", "floor", "xnat-xnatpy")
"""What the timed writers leave in the step's scratch folder, besides the rounds' folders
(`round-N`), removed when the step ends."""

ROUNDS = 3
"""Interleaved rounds of curl and xnatdrop, where the disk holds them (module docstring)."""

REPEATS = 3
"""Pairs of (N-file write, sandbox import) the ingest ratio takes the best of (docstring)."""

ROOM = 14
"""A pair's folders are kept until the step ends while the disk has room for them and for what
the step still writes: two zips' worth a pair still to come, and this many for the rest
(the last N-file write, the store floor, xnatpy's sandbox and the rounds' curl and xnatdrop
sandboxes, with room to spare); otherwise the pair is removed and the next one waits out the
deletion window (`deletions.py`)."""


def ingest_pairs(zip_path: Path, scratch: Path, label: str, pairs: int) -> dict[str, Any]:
    """`pairs` interleaved (N-file write, curl import) measurements, each into its own folder,
    each writer after a sync; the sandbox's import goes first in every other pair. A pair's
    folders stay until the step ends when the disk has room (`ROOM`), so no timed writer
    follows a deletion; otherwise they are removed and the next pair waits out the window
    (`deletions.wait_out`). Their seconds and flushes, for the best of `REPEATS`, which
    writer went first in each pair, and the folders kept (module docstring)."""
    size = zip_path.stat().st_size
    found: dict[str, Any] = {
        "files": [], "import": [], "files_first": [], "kept": [], "waited_seconds": 0.0,
    }  # fmt: skip
    for index in range(pairs):
        found["waited_seconds"] += deletions.wait_out()
        files_first = index % 2 == 0
        for side in ("files", "import") if files_first else ("import", "files"):
            release(scratch, zip_path)  # and written out, as `disk_write_files` does too
            if side == "files":
                found["files"].append(files_run(zip_path, scratch, f"files-{index}"))
            else:
                found["import"].append(
                    import_only(zip_path, scratch, f"xnat-import-{index}", label)
                )
        found["files_first"].append(files_first)
        written = [scratch / f"files-{index}", scratch / f"xnat-import-{index}"]
        if machine.free_bytes(scratch) >= (2 * (pairs - index - 1) + ROOM) * size:
            found["kept"].extend(written)
        else:
            deletions.remove(*written)
    return found


def _requests_seconds(push: dict[str, Any]) -> float:
    """The push's own time in the two requests curl makes: its upload (from the first byte sent
    to XNAT's answer) and its archive request; nan if its log did not say."""
    parts = (push["send_seconds"], push["server_wait_seconds"], push["archive_request_seconds"])
    return float("nan") if None in parts else sum(parts)


def push_rounds(size: int, free: int) -> int:
    """How many rounds of curl and xnatdrop the disk holds: each keeps two sandboxes of `size`
    until the step ends, and one more `size` stays free (`ROUNDS` at most, one at least)."""
    return max(1, min(ROUNDS, (free - size) // (2 * size)))


def restore(folder: Path, work: Path) -> None:
    """Put a pushed folder back for the next round: xnatdrop moved it to
    `done/<date>/<LABEL>/` under `work`, with its receipt, which is removed."""
    (moved,) = (work / "done").glob(f"*/{folder.name}")
    for name in ("RECEIPT.txt", "RECEIPT.json"):
        (moved / name).unlink()
    moved.rename(folder)


def _best(runs: list[dict[str, float]], size: int) -> dict[str, Any]:
    """The fastest of `runs`, and of `runs` counted until on disk; every run kept."""
    return {
        "seconds": min(r["seconds"] for r in runs),
        "synced_seconds": min(r["seconds"] + r["flush_seconds"] for r in runs),
        "mb_per_s_each": [round(size / 1e6 / r["seconds"], 1) for r in runs],
        # CPU (user + system) of each run, in the order of `runs`: the N-file write's thread,
        # the sandbox's process; a shared machine swings the seconds far more than these
        "cpu_seconds_each": [round(r["cpu_seconds"], 2) for r in runs if "cpu_seconds" in r],
        "runs": runs,
    }


def measure(
    work: Workload, scratch: Path, peers: bool = True, repeats: int = REPEATS
) -> dict[str, Any]:
    """The end-to-end figures for one workload. The folder is moved to done/ by the push."""
    scratch.mkdir(parents=True, exist_ok=True)
    label = work.folder.name
    zip_path = scratch / "upload.zip"
    names = [p.relative_to(work.folder).as_posix() for p in work.files]
    size = product.write_zip(work.folder, names, zip_path)
    results: dict[str, Any] = {"zip_bytes": size}
    results["disk_write"] = {"seconds": disk_write(zip_path, scratch / "copy.bin")}
    pairs = ingest_pairs(zip_path, scratch, label, repeats - 1)
    # No deletions between the timed writers, and none recent before them (module docstring).
    results["waited_for_deletions_seconds"] = pairs["waited_seconds"] + deletions.wait_out()
    results["pairs_kept"] = len(pairs["kept"]) // 2
    results["files_first"] = [*pairs["files_first"], True]
    release(scratch, zip_path)
    files_runs = [*pairs["files"], files_run(zip_path, scratch)]
    results["disk_write_files"] = _best(files_runs, size)
    release(scratch, zip_path)
    results["store_floor"] = {"seconds": store_floor(zip_path, scratch)}
    # Each client starts cold: its zip, or the folder's files, dropped first (module docstring).
    if peers:
        release(scratch, zip_path)
        machine.drop_cache(work.files)
        results["xnatpy"] = xnatpy(work.folder, scratch, label)
    rounds = push_rounds(size, machine.free_bytes(scratch))
    curl_runs: list[dict[str, Any]] = []
    push_runs: list[dict[str, Any]] = []
    for index in range(rounds):
        round_folder = scratch / f"round-{index}"
        round_folder.mkdir()
        for side in ("curl", "xnatdrop") if index % 2 == 0 else ("xnatdrop", "curl"):
            release(scratch, zip_path)
            if side == "curl":
                machine.drop_cache([zip_path])
                curl_runs.append(curl(zip_path, round_folder, label))
            else:
                machine.drop_cache(work.files)
                push_runs.append(xnatdrop_push(work.folder, round_folder))
                if index < rounds - 1:
                    restore(work.folder, round_folder)
    zip_path.unlink()  # one inode: nothing for the next writer to pay
    results["rounds"] = rounds
    results["curl"] = least(curl_runs)
    results["xnatdrop"] = least(push_runs)
    requests = [_requests_seconds(run) for run in push_runs]
    results["xnatdrop"]["requests_seconds_each"] = requests
    deletions.remove(
        *(scratch / name for name in WRITTEN),
        *(scratch / f"round-{index}" for index in range(rounds)),
        *pairs["kept"],
    )
    for name in ("disk_write_files", "disk_write", "store_floor", "curl", "xnatpy", "xnatdrop"):
        if name in results:
            results[name]["mb_per_s"] = size / 1e6 / results[name]["seconds"]
    # The sandbox's ingest: the import alone (curl's first request), into the prearchive; the
    # best of the first round's and the extra imports, as many as the N-file write's runs.
    curl_import = {
        "seconds": curl_runs[0]["import_seconds"],
        "flush_seconds": curl_runs[0]["import_flush_seconds"],
        "cpu_seconds": curl_runs[0]["import_cpu_seconds"],
    }
    imports = _best([*pairs["import"], curl_import], size)
    results["ingest"] = imports
    ingest = size / 1e6 / imports["seconds"]
    results["curl"]["import_mb_per_s"] = ingest
    synced = imports["synced_seconds"] / results["disk_write_files"]["synced_seconds"]
    curl_s = results["curl"]["seconds"]
    results["ratios"] = {
        "push / curl (time)": results["xnatdrop"]["seconds"] / curl_s,
        "push / curl import only (time)": results["xnatdrop"]["seconds"]
        / results["curl"]["import_seconds"],
        "push's XNAT requests / curl (time)": min(requests) / curl_s,
        "sandbox ingest / disk write (N files)": ingest / results["disk_write_files"]["mb_per_s"],
        "sandbox ingest / disk write (N files), until on disk": 1 / synced,
        "sandbox ingest / disk write (one stream)": ingest / results["disk_write"]["mb_per_s"],
        "sandbox ingest / store floor": ingest / results["store_floor"]["mb_per_s"],
    }
    if "xnatpy" in results:
        results["ratios"]["xnatpy / push (time)"] = (
            results["xnatpy"]["seconds"] / results["xnatdrop"]["seconds"]
        )
    return results
