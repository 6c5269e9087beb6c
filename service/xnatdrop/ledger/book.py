"""`Ledger`: the open ledger, with every table's reads and writes.

Put together from one part per concern (like `xnat.client.XnatClient`): `drops` (register and
move drops along `states.NEXT`), `queries` (what the daemon and `status` ask) and `xnat_answers`
(the circuit breaker's tables), each a `database.Database` subclass. One connection, one
lifetime: `with ledger.Ledger(state) as book: book.advance(drop, "pack")`.
"""

from __future__ import annotations

from xnatdrop.ledger.drops import Drops
from xnatdrop.ledger.queries import Queries
from xnatdrop.ledger.xnat_answers import XnatAnswers


class Ledger(Drops, Queries, XnatAnswers):
    """An open ledger database. Use as a context manager, or call `close()`.

    One connection per Ledger, used from one thread (the pipeline runs drops one at a time);
    several processes may open the same file, SQLite's locking and `busy_timeout` serialise them.
    """

    def __enter__(self) -> Ledger:
        return self
