"""Step `attach`: the sidecar folders (`behav/`, `physio/`, `logs/` …) as session resources.

Each sidecar resource is listed first and only the files that are not there yet are uploaded,
as a zip streamed from the folder (never written to disk); a file that is there with other
content is a permanent conflict (RESOURCE_CONFLICT). Files XNAT would never catalogue are left
in the folder and listed in the receipt.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xnatdrop import ledger, pack, rules
from xnatdrop.errors import PermanentError, TransientError
from xnatdrop.pipeline import spool
from xnatdrop.pipeline.context import Context, Done

log = logging.getLogger(__package__)


def attach(context: Context, drop: ledger.Drop) -> Done:
    checked = spool.check_record(context.spool(drop), drop.id, files=False)
    client = context.client()
    work = Path(drop.work)
    session = client.find_session(context.project, drop.label)
    if session is None:
        raise TransientError("the archived session is not visible")
    done = []
    for name, relative in sorted(checked.sidecars.items()):
        local = local_files(work / relative)
        kept = {path: value for path, value in local.items() if not uncatalogued(path)}
        if len(kept) < len(local):
            log.warning(
                "%s: %d file(s) not uploaded: XNAT never catalogues files named *_catalog.xml "
                "or .~lock-* (CatalogUtils); they stay in the folder and the receipt lists them",
                name,
                len(local) - len(kept),
            )
        local = kept
        if not local:
            continue
        args = (context.project, session.subject, session.label, name)
        missing = _missing(name, local, client.resource_files(*args))
        if missing:
            # Streamed, never written to disk: a zip built in the state folder once blocked a
            # drop at attach, after its session was archived, when the sidecar was larger than
            # the state folder's free space.
            client.create_resource(*args)
            client.upload_resource_zip(
                *args, _sidecar_body(work / relative, local, missing), f"{name}.zip"
            )
        still = _missing(name, local, client.resource_files(*args))
        if still:
            raise TransientError(f"resource {name} lacks {len(still)} file(s) after the upload")
        done.append(f"{name} {len(local)} files ({len(missing)} sent)")
    return Done("; ".join(done) or "no sidecars")


def local_files(folder: Path) -> dict[str, tuple[int, str]]:
    """Relative path → (size, MD5) of every file under a sidecar folder."""
    result = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as handle:
            while chunk := handle.read(pack.CHUNK):
                digest.update(chunk)
        result[path.relative_to(folder).as_posix()] = (path.stat().st_size, digest.hexdigest())
    return result


def uncatalogued(path: str) -> bool:
    """A file XNAT stores on extraction but never catalogues, so never lists: its name ends
    in "_catalog.xml" or starts with ".~lock-" (CatalogUtils.XNAT_CATALOGABLE_FILE_FILTER).
    Uploading it would leave the resource "lacking" it forever (xnat-stock, "lacks entirely")."""
    name = path.rsplit("/", 1)[-1]
    return name.endswith("_catalog.xml") or name.startswith(".~lock-")


def _missing(name: str, local: dict[str, tuple[int, str]], remote: list[Any] | None) -> list[str]:
    """Files not yet in the resource; PermanentError if one is there with other content."""
    there = {f.path: f for f in remote or []}
    missing, different = [], []
    for path, (size, md5) in local.items():
        found = there.get(path)
        if found is None:
            missing.append(path)
        elif found.size != size or (found.digest and found.digest.lower() != md5):
            different.append(path)
    if different:
        shown = ", ".join(f"{name}/{path}" for path in different[:5])
        more = f" and {len(different) - 5} more" if len(different) > 5 else ""
        raise PermanentError(
            "RESOURCE_CONFLICT",
            f"{shown}{more}: XNAT already holds a file of that name in resource {name} of this "
            "session, with other content (its size or MD5 differs from the file here), and "
            "xnatdrop never overwrites what XNAT holds",
            "if yours is a different file, rename it and resubmit the folder; if it should "
            f"replace the one in XNAT, ask the XNAT administrator to remove the old file from "
            f"resource {name}, then resubmit",
        )
    return missing


def _sidecar_body(
    folder: Path, local: dict[str, tuple[int, str]], paths: list[str]
) -> Callable[[], pack.Body]:
    """A factory of the streamed zip of `paths` under `folder`: entry names kept as they are,
    since XNAT extracts them into the resource with their folders."""
    files = [rules.FileEntry(path, local[path][0]) for path in paths]
    planned = pack.plan(folder, files)
    return lambda: pack.Body(folder, planned)
