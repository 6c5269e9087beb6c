"""Sniffing one file: is it DICOM, which converted format if not, its header fields, truncation.

`sniff(path)` returns a `FileFacts` for any file and never raises: a file that cannot be read
or parsed is described (kind `unreadable`, `corrupt`, …), not an exception. The rules that use
these facts, and the order they are evaluated in, are in `shared/reference/dicom-rules.md`
(sections A, B and E); each check names its rule id.

Why a hand-written header walker instead of `pydicom.dcmread`: the check runs over every file
of every session before upload, on a 2-core host, often on a network share. pydicom builds a
full Dataset (thousands of Python objects per file) and runs at about 500 files/s for a full
read, 1,900 files/s when it stops after group 0020. The walker reads the first 64 KiB
(one I/O, as much as a cold share serves in one round trip), steps over elements by their
length without decoding them, decodes only the ~30 tags the rules need and stops at Pixel Data.
Truncation is then decided from the file size and, for encapsulated data, the last bytes of the
file (PS3.5 A.4) — the pixel data itself is never read.

The modules, from the bytes up to a folder:

- `tags`: the encoding (transfer syntaxes, VRs, tag numbers, element layouts) and limits;
- `facts`: the results (`Kind`, `SeriesFields`, `Header`, `FileFacts`);
- `window`: the byte window a walk reads through, the walk's state and its errors;
- `decode`: raw values to a `Header`;
- `skim`: the fast paths (plain elements, whole sequences, per-frame groups, early stop);
- `walk`: the general walk, rules A5 and A6;
- `content`: DICOM or not (A2, A3, A5), and `formats`: what else (A7, A8, section B);
- `reading`: one file's open and read (`sniff`);
- `folder`: a folder's files, through I/O threads and a process pool (`sniff_folder`);
- `pixels`: where the Pixel Data value lies, or that there is none (`pixel_value`), for the
  verification.

The names below are the ones the rest of xnatdrop uses (`dicomfiles.sniff_folder`, …).
Private names and the settings a test patches (`folder.SLOW_READ`, `folder._open_head`) are
used from the module that owns them: patching a name here would change nothing.
"""

from __future__ import annotations

import logging

from xnatdrop.dicomfiles.facts import NO_INODE, FileFacts, Header, Kind, SeriesFields
from xnatdrop.dicomfiles.folder import (
    IO_THREADS,
    PARALLEL_MIN_FILES,
    PROGRESS_EVERY,
    sniff_folder,
    sniff_table,
)
from xnatdrop.dicomfiles.formats import is_os_litter
from xnatdrop.dicomfiles.pixels import NoPixelData, PixelSpan, pixel_span, pixel_value
from xnatdrop.dicomfiles.reading import sniff
from xnatdrop.dicomfiles.table import FactsTable, FactsView, brief, path_of
from xnatdrop.dicomfiles.tags import HEAD_BYTES, LOSSY_SYNTAXES, NATIVE_SYNTAXES

__all__ = [
    "HEAD_BYTES",
    "IO_THREADS",
    "LOSSY_SYNTAXES",
    "NATIVE_SYNTAXES",
    "NO_INODE",
    "PARALLEL_MIN_FILES",
    "PROGRESS_EVERY",
    "FactsTable",
    "FactsView",
    "FileFacts",
    "Header",
    "Kind",
    "NoPixelData",
    "PixelSpan",
    "SeriesFields",
    "brief",
    "is_os_litter",
    "path_of",
    "pixel_span",
    "pixel_value",
    "sniff",
    "sniff_folder",
    "sniff_table",
]

log = logging.getLogger(__name__)
