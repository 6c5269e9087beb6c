"""The two families of failure the pipeline sorts every error into.

A TransientError is worth retrying later (timeouts, resets, 5xx, an expired session); a
PermanentError is not (a rule violation, a 4xx that retrying cannot fix) and sends the drop to
quarantine. ConfigError is for the operator, never for a drop.
"""

from __future__ import annotations

from typing import Any

from xnatdrop import codes


class XnatdropError(Exception):
    """Base of every expected xnatdrop error; anything else is a bug."""

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as it is (its message and attributes), not by calling `__init__` again with
        the message as its first argument, which is what pickle does by default and what most
        of these `__init__`s would get wrong: a large folder is checked in a process of its
        own (`apart`), whose errors come back pickled."""
        return (_rebuilt, (type(self), self.args, self.__dict__))


def _rebuilt(kind: type[XnatdropError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = kind.__new__(kind)
    error.args = args
    error.__dict__.update(state)
    return error


class ConfigError(XnatdropError):
    """The configuration file is missing, unreadable or invalid.

    `problems` holds one line per problem so that all of them are reported at once.
    """

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        count = len(problems)
        noun = "problem" if count == 1 else "problems"
        lines = [f"{source}: {count} {noun}", *(f"  {p}" for p in problems)]
        super().__init__("\n".join(lines))


class TransientError(XnatdropError):
    """Retry later with backoff; never quarantine because of it.

    `code` is what the ledger and `status` show (a row of `codes.CODES`); subclasses and
    instances may name it more precisely.
    """

    code = "TRANSIENT"


class StateError(TransientError):
    """xnatdrop cannot write its own state (the ledger, the spool): the state file system is
    full, read-only or failing. No drop is at fault and nothing is lost; everything waits, with
    backoff, until it can be written again. The message is one sentence for the operator.
    """

    code = "STATE"

    def __init__(self, state: object, reason: str) -> None:
        self.state = state
        self.reason = reason
        super().__init__(
            f"cannot write the state folder {state} ({reason}); free space there or fix it, "
            "nothing was lost and xnatdrop carries on once it can write again"
        )


class PermanentError(XnatdropError):
    """Retrying cannot help: quarantine the drop with this reason.

    `code` is a stable identifier used in QUARANTINE.json (a row of `codes.CODES`); `fix`
    tells a person what to do: the table's fix for the code, unless the raise passes one
    because the fix depends on the case (it names a user, a file, a size).
    """

    # The session's page in XNAT when the drop is there (LABEL_EXISTS, ARCHIVE_MISMATCH): the
    # reason file names it.
    in_xnat: str | None = None

    def __init__(self, code: str, message: str, fix: str = "") -> None:
        self.code = code
        self.fix = fix or codes.fix(code)
        super().__init__(message)


class AuthenticationError(XnatdropError):
    """XNAT refused our credentials: stop all uploads and alert, do not retry in a loop."""

    code = "AUTHENTICATION"
