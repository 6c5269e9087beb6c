"""The part of DicomEdit 6 that XNAT's default script and simple site scripts use.

XNAT runs anonymisation scripts through its Mizer service (DicomEdit 4/6); the sandbox
interprets this subset, enough for `META-INF/xnat/defaults/id.das` and for the scripts XNAT's
integration tests install (RT `src/test/resources/data/anon_scripts/DE_6/…`):

    version "6.1"                                   first statement, optional (none: DicomEdit 4)
    // comment                                      also at the end of a line
    (0010,0010) := "literal" | project | subject | session | (gggg,eeee)
    -(0044,000A)                                    remove an element
    removeTags[(0008,0020), (0008,0021)]            remove several (also `[{…}]`)
    reject[]                                        drop the file (`reject` alone too)
    CONDITION ? STATEMENT                           CONDITION: OPERAND (= | != | ~) OPERAND
    if (CONDITION) { … } else { … }                 blocks, one statement per line

The variables are the ones XNAT binds (`MizerService.createContext`: project, subject, session).
Anything else is refused with `ScriptError` naming the line, never skipped: a sandbox that
silently ignored half a script would pass a verification a real XNAT fails.

A missing element compares as the empty string; `~` is a whole-value regular expression match
(Java `String.matches`). Elements are top-level only (no sequences, no private-creator blocks)
and must lie before Pixel Data, which the sandbox never touches.
"""

from __future__ import annotations

import functools
import re
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

import pydicom.errors
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

#: pydicom reads and writes under `warnings.catch_warnings()`, which changes process-wide state:
#: every such block in the sandbox holds this one lock.
PYDICOM_LOCK = threading.Lock()

#: What pydicom raises on a damaged or unexpected header (reading, editing or writing it).
PYDICOM_ERRORS = (
    pydicom.errors.InvalidDicomError,
    ValueError,
    TypeError,
    KeyError,
    EOFError,
    OSError,
    AttributeError,
    IndexError,
    OverflowError,
    struct.error,
)

VARIABLES = ("project", "subject", "session")
PIXEL_DATA = 0x7FE00010

_TAG = r"\(\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)"
_STRING = r'"((?:[^"\\]|\\.)*)"'
_OPERAND = rf"(?:{_TAG}|{_STRING}|([A-Za-z_]\w*))"
_TAG_RE = re.compile(_TAG)
_OPERAND_RE = re.compile(rf"\s*{_OPERAND}\s*")
_CONDITION_RE = re.compile(rf"\s*{_OPERAND}\s*(!=|=|~)\s*{_OPERAND}\s*")


class ScriptError(ValueError):
    """A script the sandbox cannot interpret; the message names the line."""


@dataclass(frozen=True)
class Operand:
    """A tag's value, a string literal or one of XNAT's variables."""

    tag: int | None = None
    literal: str | None = None
    variable: str | None = None

    def value(self, dataset: Dataset, variables: Mapping[str, str]) -> str:
        if self.tag is not None:
            return element_text(dataset, self.tag)
        if self.literal is not None:
            return self.literal
        return variables.get(self.variable or "", "")


@dataclass(frozen=True)
class Condition:
    left: Operand
    operator: str
    right: Operand

    def holds(self, dataset: Dataset, variables: Mapping[str, str]) -> bool:
        left = self.left.value(dataset, variables)
        right = self.right.value(dataset, variables)
        if self.operator == "=":
            return left == right
        if self.operator == "!=":
            return left != right
        return re.fullmatch(right, left) is not None


@dataclass
class Statement:
    """One action, guarded by the conditions of its enclosing `?` and `if` blocks."""

    kind: str  # "assign" | "remove" | "reject"
    line: int
    tags: tuple[int, ...] = ()
    value: Operand | None = None


@dataclass
class Block:
    """`if (condition) { then } else { otherwise }`; a script is a block without a condition."""

    condition: Condition | None = None
    then: list[Statement | Block] = field(default_factory=list)
    otherwise: list[Statement | Block] = field(default_factory=list)


@dataclass
class Script:
    """A parsed script: its version line (if any) and its statements."""

    version: str | None
    body: Block

    def apply(self, dataset: Dataset, variables: Mapping[str, str]) -> bool:
        """Edit `dataset` in place; return False when the script rejects the file."""
        return _run(self.body.then, dataset, variables)

    def tags(self) -> set[int]:
        """Every element the script reads or writes (to check they precede Pixel Data)."""
        found: set[int] = set()
        _collect(self.body.then, found)
        return found

    @functools.cached_property
    def tag_set(self) -> frozenset[int]:
        """`tags()` once per script: the importer asks for every file (a script is not edited
        after it is parsed)."""
        return frozenset(self.tags())


def element_text(dataset: Dataset, tag: int) -> str:
    """The value of a top-level element as DicomEdit sees it: multiple values joined by `\\`."""
    element = dataset.get(tag)
    if element is None or element.value is None:
        return ""
    value = element.value
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("latin-1").rstrip("\0 ")
    return str(value)


def _run(
    statements: list[Statement | Block], dataset: Dataset, variables: Mapping[str, str]
) -> bool:
    for statement in statements:
        if isinstance(statement, Block):
            assert statement.condition is not None
            branch = (
                statement.then
                if statement.condition.holds(dataset, variables)
                else (statement.otherwise)
            )
            if not _run(branch, dataset, variables):
                return False
        elif statement.kind == "reject":
            return False
        elif statement.kind == "remove":
            for tag in statement.tags:
                if tag in dataset:
                    del dataset[tag]
        else:
            assert statement.value is not None
            tag = statement.tags[0]
            text = statement.value.value(dataset, variables)
            if tag in dataset:
                dataset[tag].value = text
            else:
                dataset.add_new(tag, dictionary_VR(tag), text)
    return True


def _collect(statements: list[Statement | Block], found: set[int]) -> None:
    for statement in statements:
        if isinstance(statement, Block):
            assert statement.condition is not None
            for operand in (statement.condition.left, statement.condition.right):
                if operand.tag is not None:
                    found.add(operand.tag)
            _collect(statement.then, found)
            _collect(statement.otherwise, found)
        else:
            found.update(statement.tags)
            if statement.value is not None and statement.value.tag is not None:
                found.add(statement.value.tag)


def _strip_comment(text: str) -> str:
    """Drop a `//` comment that is not inside a string literal."""
    index = _unquoted(text, "//")
    return text if index is None else text[:index]


def _unquoted(text: str, token: str) -> int | None:
    """Where `token` first stands outside a string literal (`"…"`, `\\"` escaped), or None."""
    quoted = False
    escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif not quoted and text.startswith(token, index):
            return index
    return None


def _tag(group: str, element: str, line: int) -> int:
    value = int(group + element, 16)
    if value >> 16 == 0x0002:
        raise ScriptError(f"line {line}: file meta elements (group 0002) cannot be edited")
    if value >= PIXEL_DATA:
        raise ScriptError(
            f"line {line}: ({group},{element}) is at or after Pixel Data; the sandbox edits only "
            "the header before (7FE0,0010)"
        )
    return value


def _operand(match: re.Match[str], offset: int, line: int) -> Operand:
    group, element, literal, name = (match.group(offset + i) for i in range(4))
    if group is not None:
        return Operand(tag=_tag(group, element, line))
    if literal is not None:
        return Operand(literal=re.sub(r"\\(.)", r"\1", literal))
    if name not in VARIABLES:
        raise ScriptError(
            f"line {line}: unknown variable {name!r}; XNAT binds only project, subject and session"
        )
    return Operand(variable=name)


def _condition(text: str, line: int) -> Condition:
    match = _CONDITION_RE.fullmatch(text)
    if match is None:
        raise ScriptError(
            f"line {line}: cannot read the condition {text.strip()!r}; the sandbox understands "
            "OPERAND = OPERAND, != and ~ (tags, string literals, project, subject, session)"
        )
    return Condition(_operand(match, 1, line), match.group(5), _operand(match, 6, line))


def _action(text: str, line: int) -> Statement:
    text = text.strip()
    if text in ("reject[]", "reject"):
        return Statement("reject", line)
    match = re.fullmatch(r"-\s*" + _TAG, text)
    if match:
        return Statement("remove", line, (_tag(match.group(1), match.group(2), line),))
    match = re.fullmatch(r"removeTags\s*\[\s*\{?(.*?)\}?\s*\]", text)
    if match:
        inside = match.group(1)
        found = list(_TAG_RE.finditer(inside))
        if not found or _TAG_RE.sub("", inside).replace(",", "").strip():
            raise ScriptError(f"line {line}: removeTags takes a list of (gggg,eeee) tags")
        tags = tuple(_tag(m.group(1), m.group(2), line) for m in found)
        return Statement("remove", line, tags)
    match = re.fullmatch(_TAG + r"\s*:=\s*(.+)", text)
    if match:
        tag = _tag(match.group(1), match.group(2), line)
        try:
            dictionary_VR(tag)
        except KeyError:
            raise ScriptError(
                f"line {line}: ({match.group(1)},{match.group(2)}) is not in the DICOM "
                "dictionary; the sandbox cannot tell its VR to create it"
            ) from None
        value = _OPERAND_RE.fullmatch(match.group(3))
        if value is None:
            raise ScriptError(
                f"line {line}: cannot read the value {match.group(3).strip()!r}; the sandbox "
                "assigns string literals, tags, project, subject and session (no functions)"
            )
        return Statement("assign", line, (tag,), _operand(value, 1, line))
    raise ScriptError(f"line {line}: the sandbox does not interpret {text!r}")


def parse(text: str) -> Script:
    """Parse a script; raise ScriptError naming the first line it cannot interpret."""
    version: str | None = None
    root = Block()
    stack: list[tuple[Block, bool]] = [(root, True)]  # (block, filling `then`)
    seen_statement = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = _strip_comment(raw).strip()
        if not line:
            continue
        match = re.fullmatch(r'version\s+"([\d.]+)"', line)
        if match:
            if seen_statement or version is not None:
                raise ScriptError(f"line {number}: the version statement must come first")
            if not match.group(1).startswith("6"):
                raise ScriptError(
                    f"line {number}: DicomEdit version {match.group(1)}; the sandbox interprets "
                    "version 6 scripts (and unversioned ones)"
                )
            version = match.group(1)
            continue
        seen_statement = True
        block, filling_then = stack[-1]
        target = block.then if filling_then else block.otherwise
        if line in ("}", "} else {"):
            if len(stack) == 1:
                raise ScriptError(f"line {number}: '}}' without an open if block")
            if line == "}":
                stack.pop()
            elif not filling_then:
                raise ScriptError(f"line {number}: a second else for one if block")
            else:
                stack[-1] = (block, False)
            continue
        match = re.fullmatch(r"if\s*\((.*)\)\s*\{", line)
        if match:
            nested = Block(_condition(match.group(1), number))
            target.append(nested)
            stack.append((nested, True))
            continue
        condition, sep, action = _split_ternary(line)
        if sep:
            nested = Block(_condition(condition, number), [_action(action, number)])
            target.append(nested)
            continue
        target.append(_action(line, number))
    if len(stack) > 1:
        raise ScriptError("end of script: an if block is not closed with '}'")
    return Script(version, root)


def _split_ternary(line: str) -> tuple[str, bool, str]:
    """`CONDITION ? ACTION` → (condition, True, action); a `?` inside quotes does not count."""
    index = _unquoted(line, "?")
    if index is None:
        return line, False, ""
    return line[:index], True, line[index + 1 :]


__all__ = ["PYDICOM_LOCK", "Script", "ScriptError", "element_text", "parse"]
