"""Reading an import's body as it arrives: the entries of a zip, tar or tar.gz, in one pass.

XNAT's `DicomZipImporter` reads the request body through a `ZipInputStream` (or a
`TarArchiveInputStream`) while it is received; so does the sandbox (`zipstream`, `tarfile`'s
stream mode). `streamed` is the `read(n)` over a body still arriving, which hands the writer's
waiting files over before a read that would wait for the client.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterator
from typing import IO

from xnat_sandbox import bodies, zipstream
from xnat_sandbox.importjob import Job


def streamed(body: bodies.Body, job: Job) -> Callable[[int], bytes]:
    """`read(n)` over a body still arriving: what has come (`read_some`), after handing the
    writer's waiting files over if the client has sent nothing more (`Job.hand_over_before_wait`).
    """

    def read(size: int) -> bytes:
        job.hand_over_before_wait(body)
        return body.read_some(size)

    return read


class Stream:
    """A `read(n)` callable as the file-like object `tarfile`, `HeaderTap` and pydicom read."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self.read = read


def archive_format(name: str) -> str | None:
    """`Format.getFormat` by file name: ZIP, TAR or TGZ; None is "UNKNOWN"."""
    lower = name.lower()
    if lower.endswith((".zip", ".zar")):
        return "zip"
    if lower.endswith((".tar", ".xar")):
        return "tar"
    if lower.endswith((".tgz", ".tar.gz")):
        return "tgz"
    return None


def entries(read: Callable[[int], bytes], kind: str) -> Iterator[tuple[str, IO[bytes]]]:
    """Yield (entry name, stream) for each regular file of a zip, tar or tar.gz, read in one
    pass from `read` (`DicomZipImporter.importZipFile`/`importTgzFile`: a ZipInputStream or a
    TarArchiveInputStream over the request body)."""
    if kind == "zip":
        for entry in zipstream.entries(read):
            if not entry.name.endswith("/"):
                yield entry.name, entry  # type: ignore[misc]
    else:
        with tarfile.open(
            fileobj=Stream(read),  # type: ignore[arg-type]
            mode="r|gz" if kind == "tgz" else "r|",
        ) as bundle:
            for member in bundle:
                if not member.isfile():
                    continue
                stream = bundle.extractfile(member)
                if stream is not None:
                    with stream:
                        yield member.name, stream
