"""`xnatdrop doctor [--config FILE]`: check the setup, one PASS/WARN/FAIL line per check.

Checks, in the order a new installation fails them: the config loads; the password resolves;
each drop root exists and the service may list and rename in it; quarantine/, done/ and the
state folder are writable; quarantine/ and done/ are on the same file system as every drop root
(drops move by rename, never by copy); XNAT answers; our login works (an expired password, an
http URL for a site whose session cookie is Secure); the password does not expire soon; what
XNAT does to uploads and what that means for verification (site and project anonymisation,
the `checksums` preference, series import filters); each project is visible and its prearchive
setting readable; the user may upload and archive in each project (its role as XNAT names it);
XNAT's DICOM receiver answers a C-ECHO, and with `--test-push` files a generated test instance
(`dicom_checks`).

What XNAT says, and where it is read, is in xnatdrop.xnat (each method names the XNAT source).
WARN lines are things to know that do not stop uploads. Exit 0 when nothing FAILs, 1
otherwise, 2 for a bad config.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

from xnatdrop import commands, config, dicom_checks, preflight, xnat
from xnatdrop.errors import AuthenticationError, ConfigError, PermanentError, TransientError
from xnatdrop.exitcodes import Exit
from xnatdrop.notify import service as notify_service

Check = tuple[bool | None, str]  # (passed, line); None: a warning that does not fail


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("doctor", help="check config, folders and XNAT access")
    commands.add_config_argument(parser)
    parser.add_argument(
        "--test-push",
        action="store_true",
        help="also send one generated test instance (no patient data) to XNAT's DICOM "
        "receiver, report where XNAT filed it and delete it again",
    )
    parser.set_defaults(func=handle)


def xnat_checks(settings: config.Config, password: str) -> Iterator[Check]:
    url = xnat.public_url(settings.xnat.url)
    with xnat.XnatClient(settings.xnat, password) as client:
        try:
            client.login()
        except TransientError as error:
            yield False, f"XNAT at {url}: not reachable ({error})"
            return
        except AuthenticationError as error:
            yield True, f"XNAT at {url}: reachable"
            yield False, f"login as {settings.xnat.username!r}: refused ({error})"
            return
        except PermanentError as error:
            yield False, f"XNAT at {url}: unexpected answer ({error})"
            return
        yield True, f"XNAT at {url}: reachable"
        try:
            who = client.whoami()
        except (TransientError, PermanentError, AuthenticationError) as error:
            yield False, f"login as {settings.xnat.username!r}: {error}"
            return
        yield True, f"login as {who!r}: works"
        try:
            yield from _site_checks(settings, client, who)
            for project in sorted({d.project for d in settings.drop}):
                yield from _project_checks(settings, client, who, project)
        except (TransientError, PermanentError, AuthenticationError) as error:
            yield False, f"XNAT stopped answering: {error}"


def _site_checks(settings: config.Config, client: xnat.XnatClient, who: str) -> Iterator[Check]:
    """The URL scheme against XNAT's site URL, the password's expiry, checksums."""
    site_url = client.site_preference("siteUrl")
    ours = xnat.public_url(settings.xnat.url)
    if isinstance(site_url, str) and site_url.startswith("https://") and ours.startswith("http:"):
        if client.secure_cookie:
            yield (
                False,
                (
                    f"xnat.url is http but XNAT's site URL is {site_url}: XNAT marks its session "
                    "cookie Secure, which is never sent back over http; set xnat.url to https://…"
                ),
            )
        else:
            yield (
                None,
                (
                    f"xnat.url is http but XNAT's site URL is {site_url}: the password and the "
                    "data travel unencrypted; set xnat.url to https://…"
                ),
            )
    yield from _password_checks(client, who)
    checksums = client.site_preference("checksums")
    if checksums is None:
        yield None, "XNAT's checksums preference: not readable by this account"
    elif xnat.as_bool(checksums):
        yield True, "XNAT records an MD5 of every archived file (checksums preference on)"
    else:
        yield (
            None,
            (
                "XNAT records no MD5s (checksums preference off): where XNAT keeps the bytes, "
                "xnatdrop compares sizes only; instance UIDs and pixel data are checked either way"
            ),
        )


EXPIRY_WARNING_DAYS = 30


def _password_checks(client: xnat.XnatClient, who: str) -> Iterator[Check]:
    """Whether the account's password expires, as far as XNAT tells it.

    XNAT expires passwords a year after they were set by default (`passwordExpirationType`
    Interval, `passwordExpirationInterval` 1 year, SiteConfigPreferences l.539-553); an expired
    one stops every request (XnatExpiredPasswordFilter, stock row 8). XNAT does not expose when a
    password was set (UserAuth has no such field), and only administrators may read the expiry
    preferences; an account with the `non_expiring` role never expires (UserRole.java).
    """
    roles = client.user_roles() or []
    if "non_expiring" in roles:
        yield True, f"password of {who!r}: never expires (role non_expiring)"
        return
    kind = client.site_preference("passwordExpirationType")
    if kind is None:
        yield (
            None,
            (
                f"password of {who!r}: XNAT does not tell this account when it expires (a fresh "
                "XNAT expires passwords one year after they are set, then every push stops); ask "
                "the XNAT administrator to give the account the non_expiring role"
            ),
        )
    elif str(kind) == "Interval":
        interval = client.site_preference("passwordExpirationInterval") or "?"
        yield (
            None,
            (
                f"password of {who!r}: XNAT expires passwords {interval} after they are set and "
                "does not show when this one was; change it before then, or ask for the "
                "non_expiring role"
            ),
        )
    elif str(kind) == "Date":
        yield from _expiry_date(client.site_preference("passwordExpirationDate"), who)
    else:
        yield True, f"password of {who!r}: XNAT's password expiry is off"


def _expiry_date(value: object, who: str) -> Iterator[Check]:
    try:
        when = dt.datetime.strptime(str(value), "%m/%d/%Y").date()
    except ValueError:
        yield None, f"password of {who!r}: expires on {value} (XNAT's fixed expiry date)"
        return
    days = (when - dt.date.today()).days
    if days < 0:
        yield False, f"password of {who!r}: expired on {when} (XNAT's fixed expiry date)"
    elif days <= EXPIRY_WARNING_DAYS:
        yield None, f"password of {who!r}: expires in {days} days, on {when}; change it now"
    else:
        yield True, f"password of {who!r}: expires on {when}"


def _project_checks(
    settings: config.Config, client: xnat.XnatClient, who: str, project: str
) -> Iterator[Check]:
    if not client.project_exists(project):
        yield (
            False,
            f"project {project}: not found or not visible to {who!r}; create it or add the "
            "user as a member or owner",
        )
        return
    code = client.prearchive_code(project)
    yield (
        True,
        f"project {project}: visible, prearchive code {code} "
        f"({'manual archive' if code == 0 else 'auto-archive'}); our uploads archive explicitly "
        "either way",
    )
    role, groups = client.project_access(project)
    admin = xnat.ALL_DATA_ADMIN in groups or "Administrator" in (client.user_roles() or [])
    if role in xnat.WRITER_ROLES:
        yield True, f"project {project}: writable ({who!r} is in {role})"
    elif admin:
        yield (
            True,
            (
                f"project {project}: writable ({who!r} is a site administrator, with access to all "
                "data and no per-project role)"
            ),
        )
    else:
        yield (
            False,
            f"project {project}: not writable ({who!r} is "
            f"{'in ' + role if role else 'not a member'}); add the user to the project's "
            "Members or Owners in XNAT",
        )
    yield from _anonymization_checks(settings, client, project)
    filters = client.series_import_filters(project)
    if filters is None:
        yield None, f"project {project}: series import filters are not readable by this account"
    elif filters:
        kinds = ", ".join(f"{f.scope} {f.mode or 'filter'}" for f in filters)
        yield (
            None,
            (
                f"project {project}: a series import filter is on ({kinds}): XNAT drops matching "
                "series without a word; xnatdrop archives what XNAT keeps and lists the dropped "
                "series in the receipt"
            ),
        )
    else:
        yield True, f"project {project}: no series import filter"


def _anonymization_checks(
    settings: config.Config, client: xnat.XnatClient, project: str
) -> Iterator[Check]:
    """What XNAT's anonymisation does to an upload, and so what xnatdrop can verify."""
    found = client.anonymization(project)
    if settings.push.anonymization == "prevent":
        yield (
            True,
            (
                f'project {project}: push.anonymization = "prevent": xnatdrop sends '
                "prevent_anon=true, XNAT stores the files as sent (site script "
                f"{_state(found.site)}, project script {_state(found.project)} skipped); sizes and "
                "MD5s are compared as well as instance UIDs and pixel data"
            ),
        )
        return
    site = {
        True: "on: XNAT rewrites PatientName, PatientID and StudyDescription of every file it "
        "imports",
        False: "off",
        None: "unknown (this account may not read it): XNAT may rewrite every file",
    }[found.site]
    project_text = {
        True: "on: XNAT rewrites the files again when it archives them",
        False: "off",
        None: "unknown (this account may not read it): XNAT may rewrite the files",
    }[found.project]
    rewrites = found.site is not False or found.project is not False
    meaning = (
        "instance UIDs, counts and pixel data; not sizes and MD5s, since XNAT rewrites the files"
        if rewrites
        else "instance UIDs, counts and pixel data, and sizes and MD5s, since XNAT keeps the bytes"
    )
    yield True, f"site anonymisation script: {site}"
    yield True, f"project {project}: anonymisation script {project_text}"
    yield True, f"project {project}: xnatdrop verifies {meaning}"


def _state(value: bool | None) -> str:
    return {True: "on", False: "off", None: "unknown"}[value]


def checks(path: Path | None, test_push: bool = False) -> Iterator[Check]:
    source = config.source_name(path)
    try:
        settings = config.load_or_system(path)
    except ConfigError as error:
        yield False, f"config {source}: {error}"
        return
    yield True, f"config {source}: valid"
    if not settings.drop:
        yield False, "no [[drop]] root configured; add one (see config/xnatdrop.example.toml)"
    try:
        password = settings.xnat.resolve_password(source)
    except ConfigError as error:
        yield False, f"password: {'; '.join(error.problems)}"
        password = None
    else:
        yield True, "password: found"
    yield from preflight.folder_checks(settings)  # the same checks stop `xnatdrop run`
    if password is not None:
        yield from xnat_checks(settings, password)
    yield from dicom_checks.dicom_checks(settings, password, test_push)
    yield from notify_service.doctor_checks(settings, source)  # SMTP login, ping URL's host


def handle(args: argparse.Namespace) -> int:
    failed = 0
    for passed, line in checks(args.config, getattr(args, "test_push", False)):
        print(f"{'WARN' if passed is None else 'PASS' if passed else 'FAIL'}  {line}")
        failed += passed is False
    print("all checks passed" if not failed else f"{failed} check(s) failed")
    return Exit.OK if not failed else Exit.BLOCKED
