"""Rules D, what the files say together: one series per folder (D1), duplicates (D2), one study
(D3) and one patient (D4) per drop, split series (D7) and series that visibly lack files (D8).
"""

from __future__ import annotations

import collections
import filecmp
from array import array
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from xnatdrop import dicomfiles
from xnatdrop.rules import model


def folder_hits(
    dicoms: Sequence[dicomfiles.FileFacts],
    folders: Sequence[Path],
    categories: Callable[[dicomfiles.SeriesFields], str],
) -> list[model.Hit]:
    """Rules D1 (one series per folder), D7 (split series) and D3 (one study per folder)."""
    hits = []
    per_folder: dict[Path, dict[str, dicomfiles.SeriesFields]] = collections.defaultdict(dict)
    folders_of: dict[str, set[Path]] = collections.defaultdict(set)
    studies: dict[str, set[str]] = collections.defaultdict(set)
    for (_, fields, _), folder in zip(dicomfiles.brief(dicoms), folders, strict=True):
        folders_of[fields.series_instance_uid].add(folder)
        studies[fields.study_instance_uid].add(fields.series_number or "?")
        if folder != model.TOP and categories(fields) != "non-image":
            per_folder[folder].setdefault(fields.series_instance_uid, fields)
    # The files a hit covers, gathered only for the folders and series it fires on: a list
    # of every file's path by folder and by series was 16+ bytes a file at the check's peak.
    mixed = {folder for folder, series in per_folder.items() if len(series) > 1}
    split = {uid for uid, where in folders_of.items() if len(where) > 1}
    files_in: dict[Path, list[str]] = collections.defaultdict(list)
    files_of: dict[str, list[str]] = collections.defaultdict(list)
    if mixed or split:
        for (ref, fields, _), folder in zip(dicomfiles.brief(dicoms), folders, strict=True):
            if folder in mixed:
                files_in[folder].append(dicomfiles.path_of(dicoms, ref))
            if fields.series_instance_uid in split:
                files_of[fields.series_instance_uid].append(dicomfiles.path_of(dicoms, ref))
    for folder, series in sorted(per_folder.items()):
        if len(series) > 1:
            listing = ", ".join(describe_series(h) for h in series.values())
            text = f"{len(series)} series: {listing}"
            hits.append(
                model.Hit("MIXED_SERIES_FOLDER", folder, text, covers=tuple(files_in[folder]))
            )
    for uid, folders in folders_of.items():
        if len(folders) > 1:
            names = ", ".join(sorted(f.as_posix() for f in folders))
            text = f"series {uid} is in {names}"
            hits.append(model.Hit("SPLIT_SERIES", min(folders), text, covers=tuple(files_of[uid])))
    if len(studies) > 1:
        parts = [
            f"study {n} (series {', '.join(sorted(set(numbers), key=model.series_number_key)[:8])})"
            for n, numbers in enumerate(studies.values(), 1)
        ]
        hits.append(
            model.Hit("MULTIPLE_STUDIES", Path("."), f"{len(studies)} studies: " + "; ".join(parts))
        )
    hits.extend(_patient_hits(dicoms))
    hits.extend(_incomplete_hits(dicoms, categories))
    return hits


def _incomplete_hits(
    dicoms: Sequence[dicomfiles.FileFacts], categories: Callable[[dicomfiles.SeriesFields], str]
) -> list[model.Hit]:
    """Rule D8, as far as it tells a copy still under way: a raw image series that visibly
    lacks files. A copy that paused longer than `settle.quiet_seconds` once had half a
    session archived (88 of 177 files); the pipeline holds such a folder back as still being
    copied until `settle.max_wait_seconds`, then quarantines it with this finding.

    Visible means: InstanceNumbers that start at 1, are distinct, and leave gaps (vendors
    number a classic series 1..N; a Philips DTI in the shared data starts at 16 and is left
    alone), or fewer single-frame files than the scanner announces, in ImagesInAcquisition
    (0020,1002) or, on GE, LocationsInAcquisition (0021,104F) × NumberOfTemporalPositions
    (0020,0105) — both checked against every GE series in the shared data. Each is only a
    lower bound: more files than announced (diffusion directions, echoes) are fine.
    """
    # Per series: its files' InstanceNumbers and the distinct SeriesFields among them. Not
    # the files' headers: ~150 bytes a file (issue 13). Paths only for a series that fires.
    numbers_of: dict[str, array] = {}
    fields_of: dict[str, dict[int, dicomfiles.SeriesFields]] = {}
    for _, fields, number in dicomfiles.brief(dicoms):
        if categories(fields) != "image":
            continue
        uid = fields.series_instance_uid
        numbers = numbers_of.get(uid)
        if numbers is None:
            numbers = numbers_of[uid] = array("q")
            fields_of[uid] = {}
        numbers.append(number)
        fields_of[uid].setdefault(id(fields), fields)
    hits = []
    for uid, numbers in numbers_of.items():
        count = len(numbers)
        shared = list(fields_of[uid].values())
        reasons = []
        numbered = all(numbers) and len(set(numbers)) == count and min(numbers) == 1
        if numbered and max(numbers) > count:
            reasons.append(
                f"InstanceNumbers run from 1 to {max(numbers)} but {count} files are here "
                f"({max(numbers) - count} missing)"
            )
        if all(f.frames == 1 for f in shared):
            expected, source = _announced(shared)
            if expected > count:
                reasons.append(f"{source} announce {expected} images, {count} are here")
        if reasons:
            members = tuple(
                dicomfiles.path_of(dicoms, ref)
                for ref, fields, _ in dicomfiles.brief(dicoms)
                if fields.series_instance_uid == uid and categories(fields) == "image"
            )
            # Counted over the whole series; a series split over folders is SPLIT_SERIES too.
            key = (model.series_folder(min(members, key=model.path_order)), uid)
            hits.append(model.Hit("INCOMPLETE_SERIES", key[0], "; ".join(reasons), key, members))
    return hits


def _announced(headers: list[dicomfiles.SeriesFields]) -> tuple[int, str]:
    """How many images the scanner says a classic series has (0 if it does not say)."""
    best, source = 0, ""
    in_acquisition = {h.images_in_acquisition for h in headers}
    if len(in_acquisition) == 1 and (value := in_acquisition.pop()) > 0:
        best, source = value, "ImagesInAcquisition"
    locations = {h.ge_locations for h in headers}
    temporal = {h.temporal_positions for h in headers}
    if len(locations) == 1 and (value := locations.pop()) > 0:
        positions = temporal.pop() if len(temporal) == 1 else 0
        expected = value * max(positions, 1)
        if expected > best:
            best = expected
            source = f"GE LocationsInAcquisition {value}" + (
                f" × NumberOfTemporalPositions {positions}" if positions > 1 else ""
            )
    return best, source


def describe_series(header: dicomfiles.Header | dicomfiles.SeriesFields) -> str:
    return f"{header.series_number or '?'} '{header.series_description}'"


def _patient_hits(dicoms: Sequence[dicomfiles.FileFacts]) -> list[model.Hit]:
    """Rule D4: one identity per drop. Messages name series, never the identifying values."""
    hits = []
    distinct = {id(fields): fields for _, fields, _ in dicomfiles.brief(dicoms)}
    for field, name in (("patient_name", "PatientName"), ("patient_id", "PatientID")):
        values: dict[str, set[str]] = collections.defaultdict(set)
        for fields in distinct.values():
            values[getattr(fields, field)].add(fields.series_number or "?")
        if len(values) > 1:
            groups = sorted(
                (sorted(numbers, key=model.series_number_key) for numbers in values.values()),
                key=len,
            )
            described = "; ".join(f"series {', '.join(g[:8])}" for g in groups)
            hits.append(
                model.Hit(
                    "PATIENT_MISMATCH",
                    Path("."),
                    f"{len(values)} different {name} values ({described})",
                )
            )
    return hits


def duplicate_hits(
    folder: Path, dicoms: Sequence[dicomfiles.FileFacts]
) -> tuple[list[model.Hit], set[str]]:
    """Rule D2: files sharing a SOPInstanceUID. Identical copies: keep the first, warn.

    Repeated UIDs are found from their hashes (`_repeated_uids`), each confirmed by the full
    UID: a set of every UID was ~130 bytes a file at the check's peak (issue 13)."""
    by_uid: dict[str, list[dicomfiles.FileFacts]] = {}
    for uid, rows in _repeated_uids(dicoms).items():  # in first-seen order, rows in order
        by_uid[uid] = [dicoms[row] for row in rows]
    hits, extra = [], set()
    for uid, items in by_uid.items():
        first = items[0]
        same = all(_same_bytes(folder, first, other) for other in items[1:])
        names = ", ".join(str(i.path) for i in items[:4])
        if same:
            for other in items[1:]:
                extra.add(str(other.path))
                hits.append(model.Hit("DUPLICATE_FILE", other.path, f"same file as {first.path}"))
        else:
            hits.append(model.Hit("DUPLICATE_UID", first.path, f"SOPInstanceUID {uid} in {names}"))
    return hits, extra


def _repeated_uids(dicoms: Sequence[dicomfiles.FileFacts]) -> dict[str, list[int]]:
    """Each SOPInstanceUID held by more than one of `dicoms`, with their positions, in
    first-seen order.

    Why a bitmap of hashes: a set of the UIDs (or of their hashes) holds an object and a slot
    per file. The low 32 bits of each file's hash (kept by its `FactsTable` row) mark one bit
    of a bitmap 32 bits a file wide (21 bits of the hash at 50,000 files); only files whose
    bit was already set can share a UID with an earlier file. Those few bits are gathered in
    a second pass, and UIDs are then compared in full, so a hash or bit collision never makes
    a false D2.
    """
    if isinstance(dicoms, dicomfiles.FactsView):
        table = dicoms.table
        count = len(dicoms)

        def hashes() -> Iterator[int]:
            column = table.uid_hashes
            return (column[row] for row in dicoms.rows)
    else:
        listed = array("q", (hash(d.header.sop_instance_uid) for d in dicoms if d.header))
        assert len(listed) == len(dicoms), "every file judged by D2 has a header"
        count = len(listed)

        def hashes() -> Iterator[int]:
            return iter(listed)

    mask = (1 << max(16, (32 * count).bit_length())) - 1
    bits = bytearray((mask >> 3) + 1)
    again = set()  # bits set by more than one file
    for value in hashes():
        bit = value & mask
        if bits[bit >> 3] & (1 << (bit & 7)):
            again.add(bit)
        else:
            bits[bit >> 3] |= 1 << (bit & 7)
    del bits
    if not again:
        return {}
    rows_of: dict[str, list[int]] = {}
    for position, value in enumerate(hashes()):
        if value & mask in again:
            header = dicoms[position].header
            assert header is not None
            rows_of.setdefault(header.sop_instance_uid, []).append(position)
    return {uid: rows for uid, rows in rows_of.items() if len(rows) > 1}


def _same_bytes(folder: Path, one: dicomfiles.FileFacts, other: dicomfiles.FileFacts) -> bool:
    if one.inode == other.inode and one.inode != dicomfiles.NO_INODE:
        return True
    if one.size != other.size:
        return False
    try:
        return filecmp.cmp(folder / one.path, folder / other.path, shallow=False)
    except OSError:
        return False
