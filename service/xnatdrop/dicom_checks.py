"""`xnatdrop doctor`'s DICOM checks: a C-ECHO to `[dicom]`, and with `--test-push` the test push.

The C-ECHO runs when a drop has `transport = "dicom"` or the config has a `[dicom]` section:
a site that sends everything over REST gets no FAIL about a port it never uses, and an admin
who writes `[dicom]` before switching a drop over learns at once whether the receiver answers.
`--test-push` always runs it (it is asked for by name). Lines are what a site admin acts on: the
AE title the receiver refused, nothing listening, no answer in time.
"""

from __future__ import annotations

from collections.abc import Iterator

from xnatdrop import config, dimse, testpush, xnat
from xnatdrop.errors import AuthenticationError, PermanentError, TransientError

Check = tuple[bool | None, str]

_RECEIVER_FIX = (
    "check dicom.host and dicom.port, that XNAT's DICOM receiver is enabled (Administer > "
    "Site Administration > DICOM SCP Receivers) and that no firewall blocks the port"
)


def wanted(settings: config.Config) -> bool:
    """Whether the DICOM receiver matters to this config (see the module docstring)."""
    return "dicom" in settings.model_fields_set or any(
        d.transport == "dicom" for d in settings.drop
    )


def test_push_project(settings: config.Config) -> str | None:
    """The project the test push goes to: the first DICOM drop's, else the first drop's."""
    drops = [d for d in settings.drop if d.transport == "dicom"] or list(settings.drop)
    return drops[0].project if drops else None


def dicom_checks(
    settings: config.Config, password: str | None, test_push: bool = False
) -> Iterator[Check]:
    if not (test_push or wanted(settings)):
        return
    target = dimse.Target.of(settings.dicom)
    who = f"DICOM receiver {target.name} (we call as {target.calling_aet})"
    result = dimse.echo(settings.dicom)
    if result.ok:
        yield True, f"{who}: C-ECHO {result.sentence}"
    else:
        sentence = result.sentence
        if "refused the association" not in sentence:
            sentence = f"{sentence}; {_RECEIVER_FIX}"
        yield False, f"{who}: C-ECHO failed: {sentence}"
    if not test_push:
        return
    if not result.ok:
        yield False, "test push: not tried, the receiver does not answer C-ECHO"
        return
    project = test_push_project(settings)
    if project is None or password is None:
        yield False, "test push: not tried, it needs a [[drop]] project and the XNAT password"
        return
    yield from _test_push(settings, password, project)


def _test_push(settings: config.Config, password: str, project: str) -> Iterator[Check]:
    with xnat.XnatClient(settings.xnat, password) as client:
        try:
            filed = testpush.run(settings, client, project)
        except (dimse.TransientSendError, PermanentError) as error:
            fix = getattr(error, "fix", "")
            yield False, f"test push to {project}: not stored: {error}" + (f"; {fix}" * bool(fix))
            return
        except AuthenticationError as error:
            yield False, f"test push to {project}: sent, but XNAT refused our login ({error})"
            return
        except TransientError as error:
            yield (
                False,
                (
                    f"test push to {project}: the receiver stored it, but {error}; XNAT may have "
                    f"filed it in Unassigned (project {project} missing, or not writable by "
                    "XNAT's receivedFileUser); a site admin sees it in the prearchive"
                ),
            )
            return
    entry = filed.entry
    where = (
        f"project {entry.project}, prearchive {entry.timestamp}/{entry.folder} "
        f"(subject {entry.subject}, session {entry.name}, {entry.status})"
    )
    removed = (
        "deleted again"
        if filed.deleted
        else f"NOT deleted ({filed.delete_error}); delete {entry.uri} in XNAT's prearchive"
    )
    if filed.elsewhere:
        yield (
            False,
            (
                f"test push: XNAT filed it in {where}, not in project {project}: its receiver did "
                f"not route by the comment fields; check that project {project} exists and that "
                f"XNAT's receivedFileUser may write to it; {removed}"
            ),
        )
    else:
        yield filed.deleted, f"test push: XNAT filed it in {where}; {removed}"
