"""The drop roots and what happens to their folders: where state and finished drops go
(`[paths]`), each drop root (`[[drop]]`), the upload rules (`[rules]`), when a copy has settled
(`[settle]`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from xnatdrop import codes
from xnatdrop.config.section import XNAT_ID_PATTERN, Regex, Section, email_address


def _default_state() -> Path:
    # systemd's StateDirectory= sets STATE_DIRECTORY; honour it like borgmatic does.
    return Path(os.environ.get("STATE_DIRECTORY", "/var/lib/xnatdrop").split(":")[0])


class PathSettings(Section):
    """Where xnatdrop keeps its own state and where finished drops go."""

    state: Path = Field(
        default_factory=_default_state,
        description="Ledger and spool ($STATE_DIRECTORY when run by systemd).",
    )
    quarantine: Path = Field(
        Path("/srv/xnat-drop/_quarantine"),
        description="Permanently failed drops, each with QUARANTINE.txt/.json. Must be on the "
        "same file system as the drop roots (drops are moved by rename).",
    )
    done: Path = Field(
        Path("/srv/xnat-drop/_done"),
        description="Archived drops, as done/<date>/<label>/ with RECEIPT.txt/.json.",
    )


LabelSource = Literal["folder", "PatientName", "PatientID"]
RuleAction = Literal["block", "exclude", "warn", "ignore"]


class RulesSettings(Section):
    """Upload rules (see `xnatdrop.rules` and `xnatdrop check`).

    The same table is allowed at the top level (`[rules]`) and inside a drop
    (`[drop.rules]`); a drop's table overrides only the keys it sets, and its `actions` are
    merged code by code over the top-level ones. `Config.rules_for(drop)` does the merge.
    """

    actions: dict[str, RuleAction] = Field(
        default_factory=dict,
        description="Action per finding code, overriding the built-in default: 'block' (the "
        "folder is not uploaded), 'exclude' (those files are left out and reported), 'warn' "
        "(uploaded and reported) or 'ignore'. Example: DERIVED_SERIES = \"block\". "
        "Codes: see `xnatdrop check --codes`.",
    )
    label_source: LabelSource = Field(
        "folder",
        description="Where the subject/session label comes from: the subject folder's name "
        "('folder'), or the DICOM PatientName or PatientID.",
    )
    label_agree: list[LabelSource] = Field(
        default_factory=list,
        description="Other sources that must equal the label, else LABEL_MISMATCH; e.g. "
        "['PatientName'] with label_source 'folder' checks the scanner registration against "
        "the folder name.",
    )
    sidecars: list[str] | None = Field(
        None,
        description="Sub-folders of a subject folder that are session resources, not DICOM "
        "(default: push.sidecars).",
    )
    derived_allow: list[str] = Field(
        default_factory=lambda: ["UNI"],
        description="ImageType tokens that make a DERIVED-labelled image count as raw (default "
        "UNI: the MP2RAGE uniform image many sites treat as the primary anatomical).",
    )

    @field_validator("actions")
    @classmethod
    def _known_codes(cls, value: dict[str, str]) -> dict[str, str]:
        known = codes.rule_codes()
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ValueError(
                f"unknown finding code(s) {', '.join(unknown)}; known: {', '.join(known)}"
            )
        pointless = sorted(c for c, a in value.items() if a == "exclude" and c in codes.NO_EXCLUDE)
        if pointless:
            raise ValueError(
                f"'exclude' has no files to leave out for {', '.join(pointless)}; "
                "use block, warn or ignore"
            )
        return value

    @field_validator("label_agree")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


class DropSettings(Section):
    """One drop root, bound to one XNAT project."""

    path: Path = Field(description="The share folder technologists copy sessions into.")
    project: Annotated[str, Field(pattern=XNAT_ID_PATTERN)] = Field(
        description="XNAT project ID every session in this root goes to."
    )
    label_pattern: Regex | None = Field(
        None,
        description="Regular expression the folder name (= subject label = session label) "
        "must match in full.",
    )
    rules: RulesSettings | None = Field(
        None, description="Rule settings for this drop only, over the top-level [rules]."
    )
    transport: Literal["rest", "dicom"] = Field(
        "rest",
        description="How this drop's DICOM reaches XNAT: 'rest' (a zip to the import service) or "
        "'dicom' (C-STORE to XNAT's DICOM receiver, see [dicom]).",
    )
    notify_email: list[str] = Field(
        default_factory=list,
        description="Addresses told at once when a folder of this drop root is quarantined (the "
        "technologists who use it), besides mail.to; a single address may be given as a string. "
        "Needs [mail].",
    )

    @field_validator("notify_email", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("notify_email")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        return [email_address(v) for v in value]


DEFAULT_TEMP_PATTERNS = (
    "*.part",
    "*.partial",
    "*.filepart",
    "*.tmp",
    "*.crdownload",
    "~$*",
    ".~lock*",
    ".fuse_hidden*",
)


class SettleSettings(Section):
    """When a subject folder counts as completely copied (see `xnatdrop.watch`).

    Settled = its fingerprint (file count, bytes, newest mtime and ctime, names with sizes) is
    unchanged over several polls spanning `quiet_seconds`. Size and count are compared, not age,
    so copies that keep old modification times (robocopy, Explorer) settle correctly.
    """

    quiet_seconds: float = Field(
        300.0, gt=0, description="How long a folder must stay unchanged before it is settled."
    )
    poll_seconds: float | None = Field(
        None,
        gt=0,
        description="Seconds between scans of the drop roots; default a third of quiet_seconds.",
    )
    max_wait_seconds: float = Field(
        6 * 3600.0,
        gt=0,
        description="A folder still holding truncated DICOM this long after it first appeared is "
        "quarantined as incomplete; before that it is looked at again later.",
    )
    temp_patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TEMP_PATTERNS),
        description="Name patterns (case-insensitive, fnmatch) of files still being written; "
        "any such file holds its folder back.",
    )
    marker_name: str | None = Field(
        None,
        description="Optional file name (e.g. 'READY') that, put at the top of a subject "
        "folder, declares it complete at once.",
    )

    @property
    def poll_interval(self) -> float:
        """Seconds between scans: `poll_seconds`, or a third of the quiet period."""
        return self.poll_seconds if self.poll_seconds is not None else self.quiet_seconds / 3
