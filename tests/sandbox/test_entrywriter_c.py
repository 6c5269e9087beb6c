"""The sandbox's compiled file writes against their Python twin: same files, same answers.

`entrywriter.write_files` is the C extension `_entrywriter_c` when it is built (CI builds it
with `pip install -e .`), `write_files_python` otherwise. Both run here on the same items: files
created and written in one call or continued from an open descriptor in the next, more buffers
than one `writev` takes, every kind of buffer, a file that cannot be created, and short writes
and a refused write under a file size limit.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from xnat_sandbox import entrywriter

IMPLEMENTATIONS = {"python": entrywriter.write_files_python}
try:
    from xnat_sandbox import _entrywriter_c

    IMPLEMENTATIONS["c"] = _entrywriter_c.write_files
except ImportError:  # test_the_compiled_writer_is_built_and_used fails then
    pass


def test_the_compiled_writer_is_built_and_used() -> None:
    """Not skipped when the extension is missing: a missing build is a failure here."""
    from xnat_sandbox import _entrywriter_c

    assert entrywriter.write_files is _entrywriter_c.write_files


@pytest.fixture(params=["c", "python"])
def write_files(request):
    return IMPLEMENTATIONS[request.param]


def test_files_are_created_written_and_continued(tmp_path: Path, write_files) -> None:
    many = [bytes([i % 251]) * (i % 7) for i in range(2500)]  # more than IOV_MAX (1024) a call
    answers = write_files(
        [
            (str(tmp_path / "a"), [b"head", bytearray(b"-mid-"), memoryview(b"xxtail")[2:]], True),
            (os.fsencode(tmp_path / "b"), [b"first"], False),
            (str(tmp_path / "empty"), [], True),
            (str(tmp_path / "many"), many, True),
        ]
    )
    assert answers[0] == (-1, 13, 0)
    assert answers[2] == (-1, 0, 0)
    assert answers[3] == (-1, sum(map(len, many)), 0)
    out, written, error = answers[1]
    assert out >= 0 and (written, error) == (5, 0)  # left open for the file's next batch
    assert write_files([(out, [b" second", b" third"], True)]) == [(-1, 13, 0)]
    with pytest.raises(OSError):
        os.fstat(out)  # closed
    assert (tmp_path / "a").read_bytes() == b"head-mid-tail"
    assert (tmp_path / "b").read_bytes() == b"first second third"
    assert (tmp_path / "empty").read_bytes() == b""
    assert (tmp_path / "many").read_bytes() == b"".join(many)


def test_an_existing_file_is_truncated(tmp_path: Path, write_files) -> None:
    (tmp_path / "f").write_bytes(b"x" * 100)
    assert write_files([(str(tmp_path / "f"), [b"new"], True)]) == [(-1, 3, 0)]
    assert (tmp_path / "f").read_bytes() == b"new"


def test_the_first_failure_ends_the_call(tmp_path: Path, write_files) -> None:
    """Files before it are written; the one that fails answers its errno; none after it is
    touched."""
    answers = write_files(
        [
            (str(tmp_path / "ok"), [b"1"], True),
            (str(tmp_path / "missing" / "f"), [b"2"], True),
            (str(tmp_path / "after"), [b"3"], True),
        ]
    )
    assert answers == [(-1, 1, 0), (-1, 0, errno.ENOENT)]
    assert (tmp_path / "ok").read_bytes() == b"1"
    assert not (tmp_path / "after").exists()


@pytest.mark.parametrize("implementation", ["c", "python"])
def test_a_short_write_goes_on_and_a_refused_one_is_answered(
    tmp_path: Path, implementation: str
) -> None:
    """Under a file size limit, `writev` writes up to the limit (a short write) and the next one
    fails with EFBIG: what fitted is written, in order, and the open descriptor is answered so
    that the writer can remove the file. (A child process: the limit is the process's.)"""
    code = textwrap.dedent(
        f"""
        import resource, signal, sys
        from tests.sandbox.test_entrywriter_c import IMPLEMENTATIONS
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (10, resource.RLIM_INFINITY))
        pieces = [b"0123", bytearray(b"456"), memoryview(b"_789abc")[1:], b"", b"end"]
        out, written, error = IMPLEMENTATIONS[{implementation!r}]([(sys.argv[1], pieces, True)])[0]
        print(out >= 0, error)
        """
    )
    target = tmp_path / "f"
    done = subprocess.run(
        [sys.executable, "-c", code, str(target)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],
    )
    assert done.stdout.split() == ["True", str(errno.EFBIG)]
    assert target.read_bytes() == b"0123456789"


def test_bad_items_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    write_files = IMPLEMENTATIONS["c"]
    with pytest.raises(TypeError):
        write_files((str(tmp_path / "a"), [b"x"], True))  # not a list
    with pytest.raises(TypeError):
        write_files([(str(tmp_path / "a"), [b"x"], True), (str(tmp_path / "b"), ["text"], True)])
    with pytest.raises(ValueError):
        write_files([(-1, [b"x"], True)])
    assert not (tmp_path / "a").exists()
