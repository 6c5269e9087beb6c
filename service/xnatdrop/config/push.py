"""When uploads run (`[schedule]`) and how one subject folder is pushed (`[push]`)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator

from xnatdrop.config.section import Section


def _window(value: str) -> str:
    if value.strip().lower() == "always":
        return "always"
    match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", value)
    if not match or int(match[1]) > 23 or int(match[3]) > 24 or int(match[2]) > 59:
        raise ValueError("must be 'always' or 'HH:MM-HH:MM', for example '20:00-06:00'")
    if int(match[4]) > 59 or (int(match[3]) == 24 and int(match[4]) != 0):
        raise ValueError("must be 'always' or 'HH:MM-HH:MM', for example '20:00-06:00'")
    return value.strip()


class ScheduleSettings(Section):
    """When uploads run and how many at once (see `xnatdrop.daemon`). Scanning never stops."""

    upload_window: Annotated[str, AfterValidator(_window)] = Field(
        "always",
        description="Local time span in which pushes start, 'HH:MM-HH:MM' (may wrap midnight, "
        "e.g. '20:00-06:00') or 'always'. A push running when it closes finishes its session.",
    )
    max_concurrent_pushes: int = Field(
        1, ge=1, le=16, description="Sessions uploaded at the same time."
    )
    stop_timeout_seconds: float = Field(
        60.0,
        gt=0,
        description="On SIGTERM, how long running pushes may take to reach a checkpoint; keep "
        "below the unit's TimeoutStopSec.",
    )
    retry_seconds: float = Field(
        600.0, gt=0, description="Default wait before a transiently failed drop is tried again."
    )


class PushSettings(Section):
    """How one subject folder is pushed (see `xnatdrop.pipeline`)."""

    work_folder: str = Field(
        ".xnatdrop-work",
        description="Name of the working area inside each drop root, starting with '.' so that "
        "the watcher (and file browsers) skip it. A drop is frozen by renaming it there, which "
        "keeps it on the same file system; it also holds the drop root's lock file.",
    )

    @field_validator("work_folder")
    @classmethod
    def _hidden_name(cls, value: str) -> str:
        if not re.fullmatch(r"\.[^/\\]+", value) or value in (".", ".."):
            raise ValueError(
                "must be one folder name starting with '.' (e.g. '.xnatdrop-work'): the watcher "
                "skips hidden names, and would otherwise take the work area for a session"
            )
        return value

    sidecars: list[str] = Field(
        default_factory=lambda: ["behav", "physio", "logs"],
        description="Sub-folders of a subject folder uploaded as session resources of the same "
        "name, when the rules do not name the sidecars themselves.",
    )
    subject_file: str = Field(
        "subject.toml",
        description="Optional file in a subject folder with subject metadata (sex, handedness, "
        "yob or dob) to set on the XNAT subject.",
    )
    subject_from_dicom: bool = Field(
        False,
        description="Take sex and year of birth from the DICOM header when subject_file is "
        "absent (PatientSex, PatientBirthDate).",
    )
    ready_timeout_seconds: float = Field(
        900.0,
        gt=0,
        description="How long to wait for a prearchive session to become READY before asking "
        "XNAT to rebuild it and trying again later.",
    )
    poll_seconds: float = Field(
        2.0, gt=0, description="Seconds between looks at the prearchive while waiting."
    )
    anonymization: Literal["site", "prevent"] = Field(
        "site",
        description="'site': XNAT's anonymisation scripts run as the site configured them "
        "(a fresh XNAT rewrites PatientName, PatientID and StudyDescription of every file); "
        "xnatdrop reads whether they are on at push time and verifies instance UIDs, counts and "
        "pixel data, comparing sizes and MD5s only where XNAT keeps the bytes. 'prevent': send "
        "prevent_anon=true, so XNAT stores the files as sent (for sites that de-identify before "
        "the drop); sizes and MD5s are then compared too.",
    )
    verify_checksums: bool | None = Field(
        None,
        description="Deprecated and ignored: whether sizes and MD5s can be compared is now "
        "decided from XNAT's anonymisation settings at push time (see anonymization).",
    )
    breaker_drops: int = Field(
        3,
        ge=2,
        le=50,
        description="When this many different drops in a row get the same permanent-looking "
        "answer from XNAT (e.g. HTTP 400 'unable to read DICOM object' from a full disk), all "
        "pushes are held with an alert instead of quarantining each drop.",
    )
    breaker_hold_seconds: float = Field(
        600.0,
        gt=0,
        description="How long pushes are held before one drop is tried again to see whether "
        "XNAT has recovered; doubled after each failed try, up to retry_max_seconds. A restart "
        "of the daemon tries at once. Also how long a drop that got such an answer waits before "
        "it is tried again and, if XNAT answers it the same way while accepting other drops, "
        "quarantined.",
    )
    receiving_quiet_seconds: float = Field(
        60.0,
        gt=0,
        description="A prearchive copy of ours still RECEIVING is left alone while XNAT keeps "
        "writing to it; unchanged this long, it is a leftover of a cut upload and is deleted "
        "before sending again.",
    )
    # Backoff for transient failures (timeouts, resets, 5xx): exponential with jitter. The wait
    # before attempt n+1 is a random time between half and all of
    # min(retry_max_seconds, retry_base_seconds * 2**n), so drops failing together spread out.
    retry_base_seconds: float = Field(30.0, gt=0, description="First backoff step, in seconds.")
    retry_max_seconds: float = Field(3600.0, gt=0, description="Longest wait between two attempts.")
    inline_attempts: int = Field(
        3,
        ge=1,
        le=20,
        description="Attempts within one push before it stops and leaves the rest to the next "
        "run (exit 3); waits between them are capped at inline_max_seconds.",
    )
    inline_max_seconds: float = Field(
        60.0, ge=0, description="Longest wait between attempts inside one push."
    )
