"""`POST /data/services/archive` (§5.1): archive one or several prearchive sessions.

The endpoint reads XNAT's many spellings of the same parameter (`session`, `EXPT_LABEL`,
`{xsi}/label`, a `dest` URI …), builds a session not built yet, and hands the row to
`archive.archive_session`, whose refusals become 500 "FAILED: …" as XNAT's queue reports them.
"""

from __future__ import annotations

import re

from xnat_sandbox import archive, prearchive, prearchive_build, tables
from xnat_sandbox.users import UNASSIGNED
from xnat_sandbox.wire import Request


def handle_archive(request: Request) -> tables.Response:
    """`POST /data/services/archive` (§5.1): archive one (or several) prearchive sessions."""
    if request.method != "POST":
        raise tables.HttpError(405, "Method Not Allowed")
    request.receive()
    store = request.sandbox.store
    sources = request.values("src")
    if not sources:
        project = request.param("project", "PROJECT_ID")
        timestamp = request.param("PREARC_TIMESTAMP")
        folder = request.param("PREARC_SESSION_FOLDER")
        if not (project and timestamp and folder):
            raise tables.HttpError(404, "Unknown prearchive session.")
        sources = [f"/prearchive/projects/{project}/{timestamp}/{folder}"]
    for src in sources:
        if re.match(r"^(/data|/REST)?/archive", src):
            raise tables.HttpError(400, f"Invalid src URI ({src})")
    rows = [prearchive.parse_src(store, src) for src in sources]
    for row in rows:
        if row["project"] == UNASSIGNED:
            raise tables.HttpError(400, "Cannot archive sessions from the Unassigned folder.")
        if not request.user.can_write(row["project"]):
            raise tables.HttpError(403, "Invalid permissions for new project.")
        if row["status"].startswith("_"):  # PrearcDatabase.setStatus(ARCHIVING) refused
            raise tables.HttpError(403, "Operation already in progress on this prearchive entry.")
    overwrite = (request.param("overwrite") or "").lower()
    options: dict[str, object] = {
        "allow_merge": True,  # single-session archive always allows merging (§5.1)
        "override": overwrite in ("append", "delete"),
        "overwrite_files": request.flag("overwrite_files"),
        "delete_files": overwrite == "delete",
    }
    if len(rows) > 1:
        remaining = []
        for row in rows:
            built = row if row["built"] else prearchive_build.build(request.sandbox, row)
            if built is None:
                continue
            try:
                archive.archive_session(request.sandbox, built, **options)  # type: ignore[arg-type]
            except (archive.ArchiveFailure, archive.ArchiveTimeout):
                remaining.append(prearchive.table_row(prearchive.get(store, row["pk"])))
        return prearchive.rows_table(remaining, request.fmt or "xml")

    row = rows[0]
    xsi = prearchive_build.session_xsi_type(
        {s["modality"] for s in prearchive.scans_of(store, row["pk"])}
    )
    dest_subject, dest_label = _dest(request, row["project"])
    label = request.param("session", f"{xsi}/label", "EXPT_LABEL", "label", "EXPT_ID")
    subject = request.param("subject", "SUBJECT_ID", f"{xsi}/subject_ID")
    fields = {k: v for k in ("visit", "note") if (v := request.param(k, f"{xsi}/{k}"))}
    built = row if row["built"] else prearchive_build.build(request.sandbox, row)
    if built is None:
        raise tables.HttpError(404, "Unknown prearchive session.")
    result = archive.archive_or_500(
        request.sandbox,
        built,
        label=label or dest_label,
        subject=subject or dest_subject,
        fields=fields,
        **options,
    )
    if request.flag("redirect") or prearchive.is_auto_archive(store, row):
        response = tables.Response(303, tables.URI_LIST, f"{result}\r\n".encode())
        response.headers.append(("Location", request.base_url + result))
        return response
    return tables.uri_list([result], request.fmt)


def _dest(request: Request, project: str) -> tuple[str | None, str | None]:
    """`dest=/archive/projects/P[/subjects/S[/experiments/E]]` → (subject, label)."""
    dest = request.param("dest")
    if not dest:
        return None, None
    path = re.sub(r"^/(data|REST)(?=/)", "", dest)
    match = re.fullmatch(
        r"/archive/projects/([^/]+)(?:/subjects/([^/]+))?(?:/experiments/([^/]+))?/?", path
    )
    if not match:
        raise tables.HttpError(400, f"Invalid dest URI ({dest})")
    if match.group(1) != project:
        raise tables.HttpError(
            400,
            "Project mismatch: source and destination must refer to the same project. You "
            "should change the project in the Prearchive prior to running this Archive "
            "operation.",
        )
    return match.group(2), match.group(3)
