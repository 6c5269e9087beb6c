"""The code table (`codes`): every code xnatdrop can show a person is in it, with its fix.

Codes are found by reading the package's source with `ast`, not by running it: the first
argument of every error raised with a code (`PermanentError("X", …)`, `XnatAnswer(…)`, the
DICOM transport's errors), every `code=` keyword, every `code = "X"` of an error class, the
code passed to the ledger's `fail` and `quarantine`, and module constants passed in those
places (`dimse.REFUSED_AE`, `ledger.HELD`). The local sandbox is a stand-in for XNAT, not part of
what xnatdrop says, and is left out.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

import xnatdrop
from xnatdrop import cli, codes, config, errors

PACKAGE = Path(xnatdrop.__file__).resolve().parent
CODE_SHAPE = re.compile(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*")
# Callees whose code is their first argument (or, for the DICOM transport's lost association,
# a later one given as a module constant).
RAISERS = re.compile(r".*(Error|Answer|Hit)|_Lost")
LEDGER_CODE_ARGUMENT = {"fail": 2, "quarantine": 1}  # Ledger.fail(drop, step, code, …)


def _sources() -> list[Path]:
    return [
        path
        for path in sorted(PACKAGE.rglob("*.py"))
        if "sandbox" not in path.relative_to(PACKAGE).parts and path.name != "codes.py"
    ]


def _constants(tree: ast.Module) -> dict[str, str]:
    """Module-level NAME = "VALUE" assignments of a code's shape."""
    found = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
            and CODE_SHAPE.fullmatch(node.value.value)
        ):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node.value.value
    return found


def _callee(node: ast.Call) -> str:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return ""


def _strings(node: ast.AST) -> list[str]:
    return [
        n.value
        for n in ast.walk(node)
        if isinstance(n, ast.Constant)
        and isinstance(n.value, str)
        and CODE_SHAPE.fullmatch(n.value)
    ]


def raised_codes() -> dict[str, str]:
    """Every code the package raises or records -> the first file:line that does."""
    trees = {path: ast.parse(path.read_text(encoding="utf-8")) for path in _sources()}
    constants: dict[str, str] = {}
    for tree in trees.values():
        constants.update(_constants(tree))
    found: dict[str, str] = {}

    def note(values: list[str], path: Path, node: ast.AST) -> None:
        for value in values:
            found.setdefault(value, f"{path.relative_to(PACKAGE)}:{getattr(node, 'lineno', 0)}")

    def resolved(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Name) and node.id in constants:
            return [constants[node.id]]
        if isinstance(node, ast.Attribute) and node.attr in constants:
            return [constants[node.attr]]
        return []

    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = _callee(node)
                if RAISERS.fullmatch(name) and node.args:
                    first = node.args[0]
                    if isinstance(first, ast.Constant):
                        note(_strings(first), path, node)
                    for argument in node.args:
                        note(resolved(argument), path, node)
                index = LEDGER_CODE_ARGUMENT.get(name)
                if index is not None and len(node.args) > index:
                    note(_strings(node.args[index]) + resolved(node.args[index]), path, node)
                for keyword in node.keywords:
                    if keyword.arg == "code":
                        note(_strings(keyword.value) + resolved(keyword.value), path, node)
            elif isinstance(node, ast.ClassDef):
                for statement in node.body:
                    if (
                        isinstance(statement, ast.Assign | ast.AnnAssign)
                        and any(
                            isinstance(t, ast.Name) and t.id == "code"
                            for t in (
                                statement.targets
                                if isinstance(statement, ast.Assign)
                                else [statement.target]
                            )
                        )
                        and statement.value is not None
                    ):
                        note(_strings(statement.value), path, statement)
            elif isinstance(node, ast.arguments):
                # A parameter named `code` with a default: `def __init__(…, code=UNREACHABLE)`.
                positional = node.posonlyargs + node.args
                with_default = positional[len(positional) - len(node.defaults) :]
                pairs = list(zip(with_default, node.defaults, strict=True))
                pairs += [
                    (a, d) for a, d in zip(node.kwonlyargs, node.kw_defaults, strict=True) if d
                ]
                for argument, default in pairs:
                    if argument.arg == "code":
                        note(_strings(default) + resolved(default), path, default)
    return found


def test_every_code_raised_anywhere_is_in_the_table() -> None:
    found = raised_codes()
    # The reading itself works: codes of each kind of raise are found.
    assert {"LABEL_EXISTS", "XNAT_CONFLICT", "SUBJECT_FILE_INVALID"} <= set(found)  # pipeline
    assert {"XNAT_FORBIDDEN", "XNAT_TOO_LARGE", "XNAT_ROUTED_ELSEWHERE"} <= set(found)  # xnat
    assert {"DICOM_AE_REFUSED", "DICOM_RECEIVER_BUSY", "DICOM_UNREACHABLE"} <= set(found)  # dimse
    assert {"AUTHENTICATION", "FILESYSTEM"} <= set(found)
    assert {"EMPTY_FILE", "LABEL_PATTERN", "BAD_NAME"} <= set(found)  # rule findings
    missing = {code: where for code, where in found.items() if code not in codes.CODES}
    assert not missing, f"add these codes to codes.CODES: {missing}"


def test_every_code_in_the_table_is_used_somewhere() -> None:
    """No stale row: each code of the table appears in the package's source outside `codes`."""
    source = "\n".join(path.read_text(encoding="utf-8") for path in _sources())
    unused = [code for code in codes.CODES if f'"{code}"' not in source]
    assert not unused, f"codes in the table that nothing raises: {unused}"


def test_every_code_has_a_fix_and_an_action() -> None:
    for name, code in codes.CODES.items():
        assert CODE_SHAPE.fullmatch(name) and code.fix and code.summary
        assert code.action in set(codes.Action)
    assert set(codes.NO_EXCLUDE) <= set(codes.rule_codes())


def test_a_permanent_error_takes_its_fix_from_the_table_unless_given_one() -> None:
    assert errors.PermanentError("XNAT_CONFLICT", "refused").fix == codes.CODES["XNAT_CONFLICT"].fix
    assert errors.PermanentError("XNAT_CONFLICT", "refused", "do this").fix == "do this"


def test_check_codes_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    """`xnatdrop check --codes`, which the config documentation points to."""
    assert cli.main(["check", "--codes"]) == 0
    text = capsys.readouterr().out
    for name, code in codes.CODES.items():
        assert f"{name}  " in text and code.summary in text and f"fix: {code.fix}" in text
    assert "LABEL_EXISTS" in text and "quarantine" in text and "DERIVED_SERIES" in text


def test_check_codes_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "--codes", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["codes"]
    assert [row["code"] for row in rows] == list(codes.CODES)
    by_code = {row["code"]: row for row in rows}
    assert by_code["DERIVED_SERIES"]["action"] == "exclude"
    assert by_code["AUTHENTICATION"]["action"] == "hold"
    assert by_code["LABEL_EXISTS"]["fix"] == codes.CODES["LABEL_EXISTS"].fix


def test_check_takes_a_path_or_codes_not_both(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["check", "--codes", "somewhere"])
    assert exit_info.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_rules_actions_accept_finding_codes_only(tmp_path: Path) -> None:
    """`[rules.actions]` takes the finding codes; a quarantine code there is a config error."""
    path = tmp_path / "xnatdrop.toml"
    path.write_text('[rules.actions]\nLABEL_EXISTS = "warn"\n', encoding="utf-8")
    with pytest.raises(errors.ConfigError, match=r"unknown finding code\(s\) LABEL_EXISTS"):
        config.load(path)
    path.write_text('[rules.actions]\nLOCALIZER = "exclude"\n', encoding="utf-8")
    assert config.load(path).rules.actions == {"LOCALIZER": "exclude"}
