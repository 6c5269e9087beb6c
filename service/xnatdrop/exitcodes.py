"""Exit codes shared by every subcommand; named once (see STYLE.md, "CLI").

`MEANINGS` says what each code means for each subcommand; `cli` prints it at the end of every
subcommand's `--help`, so an operator scripting `xnatdrop` never has to read the code. A test
checks that every subcommand has an entry.
"""

from enum import IntEnum


class Exit(IntEnum):
    OK = 0  # uploaded / would upload / healthy
    BLOCKED = 1  # rule violation, quarantined
    USAGE = 2  # bad arguments or invalid config (argparse's own code)
    TRANSIENT = 3  # stopped on a retryable error; the next run resumes


_USAGE = "bad arguments, or the configuration file is invalid (each problem named)"

MEANINGS: dict[str, dict[Exit, str]] = {
    "audit": {
        Exit.OK: "every session is in XNAT as it was received",
        Exit.BLOCKED: "a session is missing or changed (each one named by its label)",
        Exit.USAGE: _USAGE,
        Exit.TRANSIENT: "XNAT could not be asked (unreachable, or the login was refused)",
    },
    "check": {
        Exit.OK: "the folder would be uploaded",
        Exit.BLOCKED: "a rule blocks the folder",
        Exit.USAGE: _USAGE + ", or the folder does not exist",
    },
    "config": {
        Exit.OK: "the file is valid (check) or was printed (example, unit)",
        Exit.USAGE: _USAGE + ", or a password file is unusable",
    },
    "demo": {
        Exit.OK: "the tour ran to its end",
        Exit.TRANSIENT: "the tour stopped before both sessions were handled",
    },
    "doctor": {
        Exit.OK: "no check failed (warnings allowed)",
        Exit.BLOCKED: "at least one check failed (FAIL lines say what to fix)",
        Exit.USAGE: _USAGE,
    },
    "push": {
        Exit.OK: "archived and verified; the folder is in done/ with its receipt",
        Exit.BLOCKED: "quarantined; the folder is in quarantine/ with QUARANTINE.txt",
        Exit.USAGE: _USAGE,
        Exit.TRANSIENT: "stopped on a retryable problem (XNAT down, login refused, still being "
        "copied, busy); run it again later, it resumes",
    },
    "requeue": {
        Exit.OK: "the folder is back in its drop root",
        Exit.BLOCKED: "nothing was moved (the message says why)",
        Exit.USAGE: _USAGE,
    },
    "run": {
        Exit.OK: "stopped cleanly after SIGTERM or SIGINT",
        Exit.USAGE: _USAGE + ", or the folders or state make a start pointless (systemd does "
        "not restart on 2)",
    },
    "sandbox": {
        Exit.OK: "the sandbox was stopped",
        Exit.USAGE: _USAGE,
    },
    "status": {
        Exit.OK: "nothing needs a person",
        Exit.BLOCKED: "something needs a person (paused drop root, held pushes, daemon stopped)",
        Exit.USAGE: _USAGE,
    },
}


def epilog(command: str) -> str:
    """The 'exit codes' paragraph of one subcommand's --help ('' if it has no entry)."""
    meanings = MEANINGS.get(command)
    if not meanings:
        return ""
    width = max(len(str(int(code))) for code in meanings)
    lines = ["exit codes:"]
    lines += [f"  {int(code):<{width}}  {text}" for code, text in sorted(meanings.items())]
    return "\n".join(lines)
