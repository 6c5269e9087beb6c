"""The prearchive rebuilder (`SessionXMLRebuilder`, §4.4): idle sessions built, then auto-archived.

Every `rebuild_repeat` wall seconds (`Sandbox`'s rebuilder thread), and once per
`Sandbox.tick`, RECEIVING sessions idle for `settings.rebuild_idle` seconds of the sandbox clock
are built; those the project or the upload marks for auto-archive are archived. It sits above
`archive.py` and `prearchive.py`, the two it drives.
"""

from __future__ import annotations

import logging

from xnat_sandbox import archive, prearchive, prearchive_build
from xnat_sandbox.context import SiteContext
from xnat_sandbox.users import UNASSIGNED

log = logging.getLogger(__name__)


def rebuild_idle(sandbox: SiteContext) -> dict[str, list[str]]:
    """One pass of `SessionXMLRebuilder` (§4.4): build idle sessions, then auto-archive."""
    store = sandbox.store
    cutoff = sandbox.clock.now() - sandbox.settings.rebuild_idle
    rows = store.all(
        "SELECT * FROM prearchive WHERE status = 'RECEIVING' AND lastmod <= ? "
        "AND LOWER(COALESCE(prevent_auto_commit, '')) != 'true' "
        "AND LOWER(COALESCE(source, '')) != 'uploader' ORDER BY pk",
        cutoff,
    )
    result: dict[str, list[str]] = {"built": [], "archived": [], "failed": []}
    for row in rows:
        built = prearchive_build.build(sandbox, row)
        if built is None or built["status"] != "READY":
            result["failed"].append(prearchive.data_uri(row))
            continue
        result["built"].append(prearchive.data_uri(row))
        if prearchive.is_auto_archive(store, built) and built["project"] != UNASSIGNED:
            try:
                result["archived"].append(
                    archive.archive_session(
                        sandbox, built, **prearchive.auto_archive_options(store, built)
                    )
                )
            except archive.ArchiveFailure as failure:
                log.info("prearchive %s: auto-archive failed: %s", prearchive.uri(row), failure)
                result["failed"].append(prearchive.data_uri(row))
    if rows:
        log.info(
            "prearchive rebuilder: %d built, %d auto-archived",
            len(result["built"]),
            len(result["archived"]),
        )
    return result
