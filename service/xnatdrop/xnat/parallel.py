"""A few reads at once: the per-scan reads of a verification, each thread with its own client.

Reading back a session of 60 scans one request at a time spends most of its time in round
trips (one catalog per scan: CatalogResource.represent answers one resource only, a request
for several answers nothing; and one small download per scan for the pixel sample). XNAT
serves requests concurrently (Tomcat's worker pool, 200 threads by default), so a few reads in
flight at once are ordinary client behaviour and finish in about a quarter of the time.

Each worker gets its own `requests.Session` from the caller's client factory (a `Session` is
not meant to be shared between threads) and uses the lead client's JSESSIONID (`adopt`), so
no extra login is made and XNAT sees one user session, as a browser with several tabs. A
worker whose adopted session expires logs in on its own, as any client would, and logs that
session out when it closes.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from xnatdrop.xnat.connection import Connection

T = TypeVar("T")
R = TypeVar("R")

# Reads in flight at once: enough to hide the round trips, few enough to stay a polite client.
READERS = 4


def fan_out(
    lead: Connection,
    factory: Callable[[], Any],
    work: Callable[[Any, T], R],
    items: Sequence[T],
    readers: int = READERS,
) -> list[R]:
    """`work(client, item)` for every item, on up to `readers` threads; results in item order.

    `lead` is the caller's client (its session is shared, and it does the work alone when
    there is one item or one reader); `factory()` makes each worker's client. The first error
    a worker meets stops the others taking new items and is raised here once all have stopped.
    """
    count = min(readers, len(items))
    if count <= 1:
        return [work(lead, item) for item in items]
    lead.ensure_login()
    results: list[Any] = [None] * len(items)
    errors: list[BaseException] = []
    lock = threading.Lock()
    pending = iter(range(len(items)))

    def next_index() -> int | None:
        with lock:
            if errors:
                return None
            return next(pending, None)

    def worker() -> None:
        try:
            with factory() as client:
                client.adopt(lead)
                while (index := next_index()) is not None:
                    results[index] = work(client, items[index])
        except BaseException as error:  # handed to the caller's thread, raised there
            with lock:
                errors.append(error)

    # Each worker runs in a copy of the caller's context, so its log lines carry the drop's
    # label (`logsetup.log_context`) as the caller's do.
    threads = [
        threading.Thread(
            target=contextvars.copy_context().run,
            args=(worker,),
            name=f"xnat-read-{n}",
            daemon=True,
        )
        for n in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results
