"""The subject's fields for XNAT (sex, handedness, year or date of birth), from `subject.toml`
beside the series, or from the DICOM header where the configuration asks for it.

The check step reads them (a malformed file is a permanent problem caught before anything is
uploaded, SUBJECT_FILE_INVALID); the finish step sets them on the XNAT subject. Field names
and values are XNAT's (`xnat:subjectData/demographics`: gender, handedness, yob, dob).
"""

from __future__ import annotations

import datetime
import tomllib
from pathlib import Path

from xnatdrop.config import PushSettings
from xnatdrop.errors import PermanentError

SEX = {"m": "male", "male": "male", "f": "female", "female": "female", "o": "other"}
SEX |= {"other": "other", "u": "unknown", "unknown": "unknown"}
HANDEDNESS = {"r": "right", "right": "right", "l": "left", "left": "left"}
HANDEDNESS |= {"a": "ambidextrous", "ambidextrous": "ambidextrous", "unknown": "unknown"}


def fields(work: Path, push: PushSettings, first_dicom: Path | None) -> tuple[dict[str, str], str]:
    """The subject's fields: from `push.subject_file` in the folder if there is one, else from
    the header of `first_dicom` if `push.subject_from_dicom`, else none; and why the header
    gave none when it could not be read ('' otherwise), for the caller to log: the check of a
    large folder runs in a child process (`apart`), whose log lines would not reach the
    daemon's log.

    Raise PermanentError SUBJECT_FILE_INVALID for a malformed subject file.
    """
    path = work / push.subject_file
    if path.is_file():
        return parse(path, push.subject_file), ""
    if push.subject_from_dicom and first_dicom is not None:
        return _from_header(first_dicom)
    return {}, ""


def parse(path: Path, name: str) -> dict[str, str]:
    """The fields of one subject file (`name` is how the message calls it)."""
    fix = (
        f'write {name} as TOML with any of: sex = "F" (M, F, O, U), handedness = "right" '
        "(right, left, ambidextrous), yob = 1990 or dob = 1990-04-01"
    )

    def invalid(message: str) -> PermanentError:
        return PermanentError("SUBJECT_FILE_INVALID", message, fix)

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise invalid(f"{name} is not valid TOML: {error}") from None
    found: dict[str, str] = {}
    unknown = set(data) - {"sex", "handedness", "yob", "dob"}
    if unknown:
        raise invalid(f"{name} has unknown keys: {', '.join(sorted(unknown))}")
    if "sex" in data:
        if str(data["sex"]).lower() not in SEX:
            raise invalid(f"{name}: sex must be M, F, O or U")
        found["gender"] = SEX[str(data["sex"]).lower()]
    if "handedness" in data:
        if str(data["handedness"]).lower() not in HANDEDNESS:
            raise invalid(f"{name}: handedness must be right, left or ambidextrous")
        found["handedness"] = HANDEDNESS[str(data["handedness"]).lower()]
    if "dob" in data:
        dob = data["dob"]
        # TOML gives a date-time for 1990-04-01T10:00:00, a subclass of date: refuse it, XNAT
        # keeps a date of birth as a date.
        if type(dob) is not datetime.date:
            raise invalid(f"{name}: dob must be a date like 1990-04-01 (no time, no quotes)")
        if not datetime.date(1900, 1, 1) <= dob <= datetime.date.today():
            raise invalid(f"{name}: dob {dob.isoformat()} is in the future or before 1900")
        found["dob"] = dob.isoformat()
    elif "yob" in data:
        year = data["yob"]
        if type(year) is not int or not 1900 <= year <= datetime.date.today().year:
            raise invalid(f"{name}: yob must be a year from 1900 to this year, like 1990")
        found["yob"] = str(year)
    return found


def _from_header(path: Path) -> tuple[dict[str, str], str]:
    import pydicom
    import pydicom.errors

    try:
        header = pydicom.dcmread(
            path, stop_before_pixels=True, specific_tags=["PatientSex", "PatientBirthDate"]
        )
    except (pydicom.errors.InvalidDicomError, ValueError, EOFError) as error:
        # The rules read this file already; subject fields are optional: go on without them.
        return {}, f"{path.name}: no subject fields from its header ({type(error).__name__})"
    found = {}
    sex = str(header.get("PatientSex", "") or "").lower()
    if sex in SEX:
        found["gender"] = SEX[sex]
    birth = str(header.get("PatientBirthDate", "") or "")
    if len(birth) >= 4 and birth[:4].isdigit():
        found["yob"] = birth[:4]
    return found, ""
