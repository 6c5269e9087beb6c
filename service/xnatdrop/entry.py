"""The console script's entry point: only what Ctrl-C needs before `cli` is imported.

Importing `cli` takes ~0.15 s (its commands' configuration pulls in pydantic). A Ctrl-C in that
time would end in a traceback, or inside pydantic-core's native code in a PanicException; held
back until the import is whole, it ends in one sentence and exit 130, like a Ctrl-C later on.
"""

from __future__ import annotations

import sys

from xnatdrop import signals


def main() -> int:
    try:
        with signals.deferred():
            from xnatdrop import cli
    except KeyboardInterrupt:
        print(signals.STOPPED_WHILE_STARTING, file=sys.stderr)
        return signals.INTERRUPTED
    return cli.main()
