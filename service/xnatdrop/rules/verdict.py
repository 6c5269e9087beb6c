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

import dataclasses
from array import array
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xnatdrop import codes, dicomfiles
from xnatdrop.rules import files, labels, model, series, tree
from xnatdrop.rules.model import FileList, Shared

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
    return walk_folder(folder, settings, drop, control_files).verdict(progress, workers)


@dataclasses.dataclass
class Walk:
    """A subject folder walked (`walk_folder`), none of its files read yet: `verdict()` reads
    them and judges. Two steps, so that a caller knows how many files the check will read
    before it reads them (the pipeline reads a large folder's in a process of its own,
    `pipeline.check`); picklable, for that process.

    `ready`: a verdict already known from the walk (the folder itself is a symbolic link)."""

    folder: Path
    settings: config.RulesSettings | None
    drop: config.DropSettings | None
    before: tuple[int, int] | None = None
    listing: tree.Tree = dataclasses.field(default_factory=tree.Tree)
    ready: model.Verdict | None = None

    @property
    def files(self) -> int:
        """How many files the check will read."""
        return len(self.listing.files)

    def verdict(
        self, progress: Callable[[int, int], None] | None = None, workers: int | None = None
    ) -> model.Verdict:
        """Read every file of the walk and judge the folder (`check_folder`)."""
        if self.ready is not None:
            return self.ready
        folder, listing = self.folder, self.listing
        # Each file's facts keep its name as given: the text, no Path (`tree.Tree.files`); they
        # are held by column, each file's FileFacts made when a rule asks (`dicomfiles.table`).
        facts = dicomfiles.sniff_table(folder, listing.files, progress, workers)
        verdict = _judge(folder, listing, facts, self.settings, self.drop)
        if tree.identity(folder) != self.before:
            raise tree.FolderGone(folder)
        return verdict


def walk_folder(
    folder: Path,
    settings: config.RulesSettings | None = None,
    drop: config.DropSettings | None = None,
    control_files: Collection[str] = (),
) -> Walk:
    """The first half of `check_folder` (see there): the walk, no file read yet."""
    folder = Path(folder)
    if settings is not None and hasattr(settings, "rules_for"):  # a whole Config was passed
        settings = settings.rules_for(drop)
    sidecar_names = (
        list(settings.sidecars or tree.DEFAULT_SIDECARS) if settings else tree.DEFAULT_SIDECARS
    )
    if folder.is_symlink() or not folder.is_dir():
        if folder.is_symlink():
            hit = model.Hit("SYMLINK", Path("."), "the subject folder itself is a symbolic link")
            ready = _finish(folder, folder.name, [hit], [], {}, settings, 0)
            return Walk(folder, settings, drop, ready=ready)
        raise NotADirectoryError(f"{folder} is not a directory")
    before = tree.identity(folder)
    listing = tree.scan(folder, sidecar_names, frozenset(control_files))
    return Walk(folder, settings, drop, before, listing)


def _judge(
    folder: Path,
    listing: tree.Tree,
    facts: dicomfiles.FactsTable,
    settings: config.RulesSettings | None,
    drop: config.DropSettings | None,
) -> model.Verdict:
    """The rules on the facts of every file (a row of `facts` each, named by `listing.files`).

    The rules see the DICOM files as a `FactsView` (their row numbers, 4 bytes each), whose
    FileFacts are made as each rule walks them and dropped after: held for every file at once
    they were the check's peak (~280 bytes a file, issue 13)."""
    hits = list(listing.hits)
    files_checked = len(facts)
    rows = array("I")  # the rows of the DICOM files the series rules judge
    # The series folder of each of those, read from the walk (`tree.Folders`).
    folders = listing.files.folders_of(rows)
    plain = {  # shapes of a plain DICOM file (no rule of A/B fires): no FileFacts needed
        index
        for index, (kind, _, fields, preamble, truncated) in enumerate(facts.shapes)
        if kind is dicomfiles.Kind.DICOM
        and fields is not None
        and preamble
        and not truncated
        and not fields.is_dicomdir
    }
    for row, where in enumerate(listing.files.folders()):
        if where != model.TOP and facts.shape_index(row) in plain:
            rows.append(row)
            continue
        item = facts[row]
        if where == model.TOP:
            hits.append(model.Hit("LOOSE_FILE", item.path, "file directly in the subject folder"))
        hits.extend(files.file_hits(item))
        if item.kind is dicomfiles.Kind.DICOM and item.header is not None:
            if item.header.is_dicomdir:
                hits.append(model.Hit("DICOMDIR", item.path, "DICOMDIR media index"))
                hits.extend(files.media_hits(folder, item, listing.files))
            else:
                rows.append(row)
    dicoms = facts.view(rows)  # the view's rows are `rows` itself (not a copy)
    categories = files.Categories()
    hits.extend(files.content_hits(dicoms, folders, categories, settings))
    hits.extend(series.folder_hits(dicoms, folders, categories))
    duplicate_hits, duplicates = series.duplicate_hits(folder, dicoms)
    hits.extend(duplicate_hits)
    label, label_hits = labels.session_label(folder, dicoms, settings, drop)
    hits.extend(label_hits)
    verdict = _finish(
        folder, label, hits, dicoms, listing.sidecars, settings, files_checked, duplicates, folders
    )
    return dataclasses.replace(verdict, reason_files=tuple(listing.reason_files))


def _finish(
    folder: Path,
    label: str,
    hits: list[model.Hit],
    dicoms: Sequence[dicomfiles.FileFacts],
    sidecars: dict[str, Path],
    settings: config.RulesSettings | None,
    files_checked: int,
    duplicates: set[str] | None = None,
    folders: Sequence[Path] | None = None,
) -> model.Verdict:
    """Apply actions, decide which files are uploaded, group hits into findings.

    Each series' files go into its `FileList`, made from the facts' columns."""
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
    view = dicoms if isinstance(dicoms, dicomfiles.FactsView) else _view_of(dicoms)
    table = view.table
    series_rows: dict[tuple[Path, str], array] = {}
    for row, where, fields in zip(view.rows, folders or [], view.fields(), strict=True):
        assert fields is not None
        key = (where, fields.series_instance_uid)
        rows = series_rows.get(key)
        if rows is None:
            rows = series_rows[key] = array("I")
        rows.append(row)
    dicoms_found = len(view)
    excluded_texts = {p.as_posix() for p in excluded}  # as the facts name their files
    uploaded, left_out = [], []
    # What a finding says of a series (`_group`): its first header and its file count.
    summaries: dict[tuple[Path, str], tuple[dicomfiles.Header, int]] = {}
    names = table.names
    table.count_uids(view.rows)  # each series' UIDs are copied into it, then let go of
    for key in list(series_rows):
        rows = series_rows.pop(key)
        series_folder, uid = key
        header = table.row(rows[0]).header
        assert header is not None
        prefix = "" if series_folder == model.TOP else series_folder.as_posix() + "/"
        keep, dropped = FileList.building(prefix), []
        for row in rows:
            path = names[row]
            if excluded and path in excluded_texts:  # no path hashed when none is left out
                dropped.append(Path(path))
            else:
                fields = table.fields(row)
                keep.add(path, table.size(row), table.sop(row), _shared_of(fields))
        found = model.Series(
            folder=series_folder,
            series_instance_uid=uid,
            series_number=header.series_number,
            description=header.series_description,
            modality=header.modality,
            sop_class_uid=header.sop_class_uid,
            image_type="\\".join(header.image_type),
            files=keep.done(),
            excluded=tuple(dropped),
        )
        table.release_uids(rows)
        (uploaded if len(keep) else left_out).append(found)
        summaries[key] = (header, len(rows))
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


def _shared_of(fields: dicomfiles.SeriesFields | None) -> Shared:
    """The entry fields a series' files share (`FileList`), from their SeriesFields."""
    assert fields is not None
    return (
        fields.sop_class_uid,
        fields.series_instance_uid,
        fields.series_number,
        fields.study_instance_uid,
        fields.transfer_syntax,
    )


def _view_of(facts: Sequence[dicomfiles.FileFacts]) -> dicomfiles.FactsView:
    """Facts given as a list (a symbolic-link subject folder: none), as a table's view."""
    table = dicomfiles.FactsTable([str(f.path) for f in facts])
    for f in facts:
        header = f.header
        table.add(
            f.size, f.kind, f.detail, header.fields if header else None,
            header.sop_instance_uid if header else "", header.instance_number if header else 0,
            f.preamble, f.truncated, f.inode,
        )  # fmt: skip
    return table.finish().view(range(len(facts)))


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
