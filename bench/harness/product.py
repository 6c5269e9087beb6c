"""Every way the benchmark reaches xnatdrop: a few public entry points and the command lines.

This is the only module of `bench/` that imports xnatdrop or names its modules (the pipeline
package, and the sandbox XNAT, which lives in its own top-level package `xnat_sandbox` and is
started here through `xnatdrop sandbox`); when they move, this file is the one to change.

Entry points used, and why each is the public one:
- `rules.check_folder`: what `xnatdrop check` and the pipeline's check step run;
- `pack.plan`, `pack.Body`, `pack.write_zip`: the upload zip as the import step streams it,
  and `spool.save`, where the import step saves the manifest when the body has hashed every file;
- `watch.fingerprint`, `watch.shallow_signature`: the settle scans the daemon runs every poll;
- `dimse.send_series`: the C-STORE transport;
- the command lines `xnatdrop push`, `xnatdrop run` and `xnatdrop sandbox` (child processes).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from xnatdrop import dimse, filecolumns, pack, rules, watch
from xnatdrop.config import DicomSettings, SettleSettings
from xnatdrop.pipeline import spool

#: The console script, run with this interpreter (no PATH lookup, the venv's code).
CLI = [sys.executable, "-m", "xnatdrop"]
#: The local XNAT (`xnat_sandbox`, started by its command line, `xnatdrop sandbox`).
SANDBOX = [*CLI, "-q", "sandbox"]

Verdict = rules.Verdict
Body = pack.Body
Plan = pack.Plan


def check_folder(folder: Path, workers: int | None = None) -> rules.Verdict:
    """The full verdict on one subject folder, with built-in rules, as `xnatdrop check` gives."""
    return rules.check_folder(folder, None, workers=workers)


def upload_series(verdict: rules.Verdict) -> list[list[Path]]:
    """The files the verdict uploads, series by series, as paths relative to its folder."""
    return [[Path(entry.path) for entry in series.files] for series in verdict.series]


def plan(folder: Path, files: Sequence[rules.FileEntry]) -> pack.Plan:
    """The zip the import step would send for these entries (`entries`), as the pack step
    plans it from the check's verdict (stat only, no file data read)."""
    return pack.plan(folder, files)


def save_manifest(spool_folder: Path) -> spool.ManifestWriter:
    """What the import step does with the manifest while the body is sent: write it into the
    drop's spool folder run by run and commit it (fsync, rename) once every file is hashed
    (`spool.ManifestWriter`, passed to `Body` as its `manifest_file`)."""
    return spool.ManifestWriter(spool_folder)


def write_zip(folder: Path, names: Sequence[str], target: Path) -> int:
    """Write the exact bytes xnatdrop would stream for these files to `target`; return size."""
    pack.write_zip(folder, entries(names), target)
    return target.stat().st_size


def entries(names: Iterable[str]) -> Sequence[rules.FileEntry]:
    """The files as the pack step reads them from the check's record (in columns,
    `filecolumns.Files`), without their DICOM identity (the zip's bytes do not depend on it,
    only the manifest does). Their size is left 0, not stat'ed here: the plan stats every file
    itself (the size it packs)."""
    return filecolumns.Files(rules.FileEntry(name, 0) for name in names)


def fingerprint(folder: Path) -> Any:
    """The full settle scan of one folder (a walk with a stat per entry)."""
    return watch.fingerprint(folder, SettleSettings())


def shallow_signature(folder: Path, previous: Any = None) -> Any:
    """The cheap re-scan of a settled folder that waits for the upload window."""
    return watch.shallow_signature(folder, previous)


def send_series(files: Sequence[Path], port: int, calling_aet: str, journal: Path) -> Any:
    """C-STORE one series over one association to 127.0.0.1:`port`; the send report."""
    settings = DicomSettings(host="127.0.0.1", port=port, calling_aet=calling_aet)
    return dimse.send_series(files, settings, journal)


def push_command(folder: Path, config: Path) -> list[str]:
    return [*CLI, "push", str(folder), "--config", str(config)]


def daemon_command(config: Path) -> list[str]:
    return [*CLI, "-q", "run", "--config", str(config)]


def sandbox_command(data: Path, user: str, password: str, project: str) -> list[str]:
    """The sandbox on a free port; it prints its URL as the first line of stdout."""
    return [
        *SANDBOX, "--port", "0", "--data", str(data),
        "--user", f"{user}:{password}", "--project", project,
    ]  # fmt: skip
