"""`xnatdrop doctor [--config FILE]`: check the setup, one pass/fail line per check.

Checks, in the order a new installation fails them: the config loads; the password resolves;
each drop root exists and the service may list and rename in it; quarantine/, done/ and the
state folder are writable; quarantine/ and done/ are on the same file system as every drop root
(drops move by rename, never by copy); XNAT answers; our login works; each project is visible
and its prearchive setting readable; the user is an owner or member of each project (may upload
and archive). Exit 0 when all pass, 1 otherwise, 2 for a bad config.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

from xnatdrop import cli, config, preflight, xnat
from xnatdrop.errors import AuthenticationError, ConfigError, PermanentError, TransientError
from xnatdrop.exitcodes import Exit

Check = tuple[bool, str]  # (passed, line)
WRITER_ROLES = frozenset({"owner", "member"})  # XNAT roles that may upload and archive


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("doctor", help="check config, folders and XNAT access")
    cli.add_config_argument(parser)
    parser.set_defaults(func=handle)


def xnat_checks(settings: config.Config, password: str) -> Iterator[Check]:
    url = settings.xnat.url
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
        for project in sorted({d.project for d in settings.drop}):
            try:
                if not client.project_exists(project):
                    yield (
                        False,
                        (
                            f"project {project}: not found or not visible to {who!r}; create it or "
                            "add the user as a member or owner"
                        ),
                    )
                    continue
                code = client.prearchive_code(project)
                role = client.project_role(project)
            except (TransientError, PermanentError, AuthenticationError) as error:
                yield False, f"project {project}: {error}"
                continue
            yield (
                True,
                (
                    f"project {project}: visible, prearchive code {code} "
                    f"({'manual archive' if code == 0 else 'auto-archive'}); our uploads archive "
                    "explicitly either way"
                ),
            )
            if role in WRITER_ROLES:
                yield True, f"project {project}: writable ({who!r} is {role})"
            else:
                yield (
                    False,
                    f"project {project}: not writable ({who!r} is {role or 'no member'}); "
                    "make the user a member or owner of the project in XNAT",
                )


def checks(path: Path | None) -> Iterator[Check]:
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


def handle(args: argparse.Namespace) -> int:
    failed = 0
    for passed, line in checks(args.config):
        print(f"{'PASS' if passed else 'FAIL'}  {line}")
        failed += not passed
    print("all checks passed" if not failed else f"{failed} check(s) failed")
    return Exit.OK if not failed else Exit.BLOCKED
