"""Exit codes shared by every subcommand; named once (see STYLE.md, "CLI")."""

from enum import IntEnum


class Exit(IntEnum):
    OK = 0  # uploaded / would upload / healthy
    BLOCKED = 1  # rule violation, quarantined
    USAGE = 2  # bad arguments or invalid config (argparse's own code)
    TRANSIENT = 3  # stopped on a retryable error; the next run resumes
