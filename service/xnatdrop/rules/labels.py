"""The session label (rule D4): taken from the configured source, checked against what XNAT
can store and the project's pattern, and against the other sources that must agree.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from xnatdrop import dicomfiles, names
from xnatdrop.rules import model

if TYPE_CHECKING:
    from xnatdrop import config

LABEL_SOURCES = ("folder", "PatientName", "PatientID")
XNAT_LABEL = re.compile(r"[A-Za-z0-9_-]+")
# XNAT keeps a prearchive session as a folder named by its label with `<label>.xml` beside it
# (PrearcSessionArchiver.updatePrearchiveSessionXML): a longer label cannot be a file name.
LABEL_MAX = names.NAME_MAX - len(".xml")
PLACEHOLDER_LABELS = frozenset({"ANONYMOUS", "ANON", "UNKNOWN", "NONE", "TEST"})


def session_label(
    folder: Path,
    dicoms: Sequence[dicomfiles.FileFacts],
    settings: config.RulesSettings | None,
    drop: config.DropSettings | None,
) -> tuple[str, list[model.Hit]]:
    """The session label from the configured source, and rules D4 (pattern, agreement)."""
    source = settings.label_source if settings is not None else "folder"
    agree = list(settings.label_agree) if settings is not None else []
    values = {
        "folder": collections.Counter([folder.name]),
        "PatientName": collections.Counter(f.patient_name for _, f, _ in dicomfiles.brief(dicoms)),
        "PatientID": collections.Counter(f.patient_id for _, f, _ in dicomfiles.brief(dicoms)),
    }
    hits = []
    counted = values[source]
    label = counted.most_common(1)[0][0] if counted else folder.name
    if not counted:
        label = folder.name
    label = names.shown(label)  # a name that is not UTF-8 can never be a label: show it
    pattern = drop.label_pattern if drop is not None else None
    problems = []
    if not XNAT_LABEL.fullmatch(label):
        problems.append("XNAT labels allow only letters, digits, '_' and '-'")
    elif label.upper() in PLACEHOLDER_LABELS:
        problems.append("it is a placeholder, not a subject label")
    elif len(label) > LABEL_MAX:
        problems.append(
            f"it is {len(label)} characters long; XNAT can store labels of at most {LABEL_MAX}"
        )
    if pattern and not re.fullmatch(pattern, label):
        problems.append(f"it does not match the project pattern {pattern!r}")
    if problems:
        shown = label if source == "folder" or XNAT_LABEL.fullmatch(label) else f"(from {source})"
        shown = shown if len(shown) <= 64 else f"{shown[:60]}… ({len(shown)} characters)"
        hits.append(model.Hit("LABEL_PATTERN", Path("."), f"label {shown}: " + "; ".join(problems)))
    for other in agree:
        if other == source:
            continue
        differing = sum(n for value, n in values[other].items() if value != label)
        if other == "folder" and differing:
            hits.append(
                model.Hit(
                    "LABEL_MISMATCH",
                    Path("."),
                    f"folder name {folder.name!r} is not the label {label!r} (from {source})",
                )
            )
        elif differing:
            hits.append(
                model.Hit(
                    "LABEL_MISMATCH",
                    Path("."),
                    f"{other} of {differing} file(s) differs from the label {label!r} "
                    f"(from {source})",
                )
            )
    return label, hits
