"""The upload rules: the verdict on one subject folder (`shared/reference/dicom-rules.md`).

Read in the order a folder is checked:

- `verdict`: `check_folder`, which walks the folder, reads every file once, applies the rules
  below and turns their hits into findings with actions (`walk_folder` and `Walk.verdict`: the
  same in two halves);
- `tree`: the folder walk (sidecars, litter, links, unreadable folders; `FolderGone`);
- `files`: rules A, B and C, one file at a time (what the file is, SOP class, derived or raw);
- `series`: rules D, what the files say together (series per folder, studies, patient,
  duplicates, series that visibly lack files);
- `labels`: the session label and its checks;
- `model`: the records (`FileEntry`, `Series`, `Finding`, `Verdict`) and the code's action.

Callers import the package and use the names below: `rules.check_folder(...)`,
`rules.FileEntry`, `rules.FolderGone`, ….
"""

from xnatdrop.rules.labels import PLACEHOLDER_LABELS, XNAT_LABEL
from xnatdrop.rules.model import Action, FileEntry, Finding, Series, Verdict
from xnatdrop.rules.tree import FolderGone
from xnatdrop.rules.verdict import Walk, check_folder, walk_folder

__all__ = [
    "PLACEHOLDER_LABELS",
    "XNAT_LABEL",
    "Action",
    "FileEntry",
    "Finding",
    "FolderGone",
    "Series",
    "Verdict",
    "Walk",
    "check_folder",
    "walk_folder",
]
