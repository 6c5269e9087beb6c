"""The verdict on one subject folder: which series go to XNAT, and findings with stable codes.

`check_folder()` reads every file once (`dicomfiles.sniff_folder`), applies the rules of
`shared/reference/dicom-rules.md` (ids in brackets below: A1…D8) and returns a `Verdict`. Each
finding has a stable code from the table in `codes`, the action the configuration gives that
code, the path it concerns and a message that ends with the fix. Codes are what reports,
quarantine files and the `[rules]` config use: never rename one.

Actions: `block` (the folder is not uploaded), `exclude` (those files are left out and
reported), `warn` (uploaded and reported), `ignore` (uploaded, not reported). Files that are
not DICOM, or whose header is unusable, are never uploaded whatever the action; the action of
their code only decides whether they block the folder and how loudly they are reported.

The pipeline packs exactly `Verdict.upload_files()`; `Series.files` carries each file's UIDs and
size so the packer never parses DICOM again.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xnatdrop import codes, dicomfiles
from xnatdrop.rules import files, labels, model, series, tree

if TYPE_CHECKING:
    from xnatdrop import config


def check_folder(
    folder: Path,
    settings: config.RulesSettings | None = None,
    drop: config.DropSettings | None = None,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
    control_files: Collection[str] = (),
) -> model.Verdict:
    """Check one subject folder and return its verdict; never raises for bad content.

    `settings` are the merged rules for this drop (`Config.rules_for(drop)`); None means the
    built-in defaults. `drop` supplies the label pattern. `progress(done, total)` is called
    while files are read. `control_files` are names of xnatdrop's own files at the top of the
    folder (`Config.control_files()`: the subject metadata file, the settle marker); they are
    neither uploaded nor reported. Raise NotADirectoryError if `folder` is not a directory, and
    FolderGone if it went away or was replaced while it was read (see there).
    """
    folder = Path(folder)
    if settings is not None and hasattr(settings, "rules_for"):  # a whole Config was passed
        settings = settings.rules_for(drop)
    sidecar_names = (
        list(settings.sidecars or tree.DEFAULT_SIDECARS) if settings else tree.DEFAULT_SIDECARS
    )
    if folder.is_symlink() or not folder.is_dir():
        if folder.is_symlink():
            hit = model.Hit("SYMLINK", Path("."), "the subject folder itself is a symbolic link")
            return _finish(folder, folder.name, [hit], [], {}, settings, 0)
        raise NotADirectoryError(f"{folder} is not a directory")
    before = tree.identity(folder)
    listing = tree.scan(folder, sidecar_names, frozenset(control_files))
    # Each file's facts keep its name as given: the text, no Path (`tree.Tree.files`).
    facts = dicomfiles.sniff_folder(folder, listing.files, progress, workers)
    verdict = _judge(folder, listing, facts, settings, drop)  # empties `facts` (see there)
    if tree.identity(folder) != before:
        raise tree.FolderGone(folder)
    return verdict


def _judge(
    folder: Path,
    listing: tree.Tree,
    facts: list[dicomfiles.FileFacts],
    settings: config.RulesSettings | None,
    drop: config.DropSettings | None,
) -> model.Verdict:
    """The rules on the facts of every file. `facts` (and `listing.files`) are emptied once
    every rule has seen them, so that each file's facts go as its entry is made (`_finish`):
    held together, facts and entries were the check's peak, ~170 bytes a file above either."""
    hits = list(listing.hits)
    files_checked = len(facts)
    dicoms: list[dicomfiles.FileFacts] = []
    folders: list[Path] = []  # the series folder of each of `dicoms`
    for item, where in zip(facts, listing.folders, strict=True):
        if where == model.TOP:
            hits.append(model.Hit("LOOSE_FILE", item.path, "file directly in the subject folder"))
        hits.extend(files.file_hits(item))
        if item.kind is dicomfiles.Kind.DICOM and item.header is not None:
            if item.header.is_dicomdir:
                hits.append(model.Hit("DICOMDIR", item.path, "DICOMDIR media index"))
                hits.extend(files.media_hits(folder, item, listing.files))
            else:
                dicoms.append(item)
                folders.append(where)
    categories = files.Categories()
    hits.extend(files.content_hits(dicoms, folders, categories, settings))
    hits.extend(series.folder_hits(dicoms, folders, categories))
    duplicate_hits, duplicates = series.duplicate_hits(folder, dicoms)
    hits.extend(duplicate_hits)
    label, label_hits = labels.session_label(folder, dicoms, settings, drop)
    hits.extend(label_hits)
    facts.clear()  # every rule has seen them: `dicoms` is the last list holding them
    listing.files = []
    verdict = _finish(
        folder, label, hits, dicoms, listing.sidecars, settings, files_checked, duplicates, folders
    )
    return dataclasses.replace(verdict, reason_files=tuple(listing.reason_files))


def _finish(
    folder: Path,
    label: str,
    hits: list[model.Hit],
    dicoms: list[dicomfiles.FileFacts],
    sidecars: dict[str, Path],
    settings: config.RulesSettings | None,
    files_checked: int,
    duplicates: set[str] | None = None,
    folders: list[Path] | None = None,
) -> model.Verdict:
    """Apply actions, decide which files are uploaded, group hits into findings.

    Empties `dicoms` once they are sorted into series, and lets go of each series' facts as
    its entries are made: a file's facts and its entry are never all held at once."""
    excluded: set[Path] = {Path(p) for p in duplicates or ()}
    for hit in hits:
        if (
            hit.code != "MIXED_SERIES_FOLDER"
            and model.action_for(settings, hit.code) is model.Action.EXCLUDE
        ):
            excluded.update(hit.covers or (hit.path,))
    # A folder mixing series that are all left out anyway protects nothing by blocking (the
    # Siemens XA classic ASL export: Perfusion_Weighted as MR and as Secondary Capture).
    hits = [
        h
        for h in hits
        if not (h.code == "MIXED_SERIES_FOLDER" and h.covers and set(h.covers) <= excluded)
    ]
    for hit in hits:
        if (
            hit.code == "MIXED_SERIES_FOLDER"
            and model.action_for(settings, hit.code) is model.Action.EXCLUDE
        ):
            excluded.update(hit.covers or (hit.path,))
    series_files: dict[tuple[Path, str], list[dicomfiles.FileFacts]] = collections.defaultdict(list)
    for item, where in zip(dicoms, folders or [], strict=True):
        assert item.header is not None
        series_files[(where, item.header.series_instance_uid)].append(item)
    dicoms_found = len(dicoms)
    excluded_texts = {p.as_posix() for p in excluded}  # as the facts name their files
    dicoms.clear()  # the caller's list: each file's facts are now held by its series only
    uploaded, left_out = [], []
    # What a finding says of a series (`_group`): its first header and its file count.
    summaries: dict[tuple[Path, str], tuple[dicomfiles.Header, int]] = {}
    for key in list(series_files):
        items = series_files.pop(key)
        series_folder, uid = key
        header = items[0].header
        assert header is not None
        if excluded:
            keep = tuple(_entry(i) for i in items if str(i.path) not in excluded_texts)
            dropped = tuple(Path(i.path) for i in items if str(i.path) in excluded_texts)
        else:  # nothing left out: no file's path is hashed (each would keep its hash)
            keep, dropped = tuple(_entry(i) for i in items), ()
        found = model.Series(
            folder=series_folder,
            series_instance_uid=uid,
            series_number=header.series_number,
            description=header.series_description,
            modality=header.modality,
            sop_class_uid=header.sop_class_uid,
            image_type="\\".join(header.image_type),
            files=keep,
            excluded=dropped,
        )
        (uploaded if keep else left_out).append(found)
        summaries[key] = (header, len(items))
        del items  # this series' facts go now, before the next series' entries are made
    uploaded.sort(key=lambda s: (model.series_number_key(s.series_number), s.folder))
    left_out.sort(key=lambda s: (model.series_number_key(s.series_number), s.folder))
    if not uploaded:
        reason = (
            f"all {dicoms_found} DICOM file(s) are left out (see the other findings)"
            if dicoms_found
            else "no DICOM files found"
        )
        hits.append(model.Hit("NO_DICOM", Path("."), reason))
    findings = _group(hits, summaries, settings)
    ok = not any(f.action is model.Action.BLOCK for f in findings)
    return model.Verdict(
        folder=folder,
        label=label,
        ok=ok,
        series=tuple(uploaded),
        excluded_series=tuple(left_out),
        sidecars=dict(sorted(sidecars.items())),
        findings=tuple(findings),
        files_checked=files_checked,
    )


def _entry(item: dicomfiles.FileFacts) -> model.FileEntry:
    header = item.header
    assert header is not None
    return model.FileEntry(
        path=item.path,  # text (`tree.Tree.files`); a Path given is made text by FileEntry
        size=item.size,
        sop_instance_uid=header.sop_instance_uid,
        sop_class_uid=header.sop_class_uid,
        series_instance_uid=header.series_instance_uid,
        series_number=header.series_number,
        study_instance_uid=header.study_instance_uid,
        transfer_syntax=header.transfer_syntax,
    )


def _group(
    hits: list[model.Hit],
    summaries: dict[tuple[Path, str], tuple[dicomfiles.Header, int]],
    settings: config.RulesSettings | None,
) -> list[model.Finding]:
    """One finding per (code, series) for per-series codes, one per path otherwise."""
    grouped: dict[tuple[str, Any], list[model.Hit]] = {}
    for hit in hits:
        key = (hit.code, hit.group if hit.group is not None else hit.path)
        grouped.setdefault(key, []).append(hit)
    findings = []
    for (code, key), members in grouped.items():
        rule = codes.CODES[code]
        action = model.action_for(settings, code)
        paths = tuple(sorted({p for h in members for p in (h.covers or (h.path,))}))
        reasons = list(dict.fromkeys(h.reason for h in members if h.reason))
        if members[0].group is not None:
            series_folder, uid = key
            header, total = summaries.get(key, (None, 0))
            what = (
                f"series {series.describe_series(header)}"
                if header is not None
                else f"series {uid}"
            )
            count = len(paths)
            share = f"{count} of {total} files" if count != total else f"{count} file(s)"
            text = f"{what} in {series_folder.as_posix()} ({share}): {'; '.join(reasons[:3])}"
            path = series_folder if count > 1 else paths[0]
        else:
            path = members[0].path
            text = "; ".join(reasons[:3]) or rule.summary
        verb = {
            model.Action.BLOCK: "blocks the upload",
            model.Action.EXCLUDE: "left out of the upload",
            model.Action.WARN: "uploaded",
            model.Action.IGNORE: "uploaded",
        }[action]
        if code in _NEVER_UPLOADED and action is not model.Action.BLOCK:
            verb = "not uploaded"
        message = f"{text} ({verb}). Fix: {rule.fix}"
        findings.append(model.Finding(code, action, path, message, paths))
    findings.sort(key=lambda f: (model.SEVERITY[f.action], f.code, f.path))
    return findings


# Codes whose files can never be uploaded, whatever their action (they are not usable DICOM).
_NEVER_UPLOADED = frozenset(
    {
        "EMPTY_FILE",
        "CORRUPT_DICOM",
        "CONVERTED_FILE",
        "ARCHIVE_FILE",
        "NOT_DICOM",
        "UNREADABLE",
        "SYMLINK",
        "DICOMDIR",
    }
)
