"""The campaign's fault hook, loaded into `xnatdrop` processes through PYTHONPATH (tests only).

Python imports `sitecustomize` at start-up when it is on the path; `tests/campaign.py` puts
this folder there for the daemons and pushes it starts, and sets `XNATDROP_CAMPAIGN_FAULT` to
a JSON object that says what to do. Nothing happens without that variable, so the processes
are the real `python -m xnatdrop run|push`, unchanged.

The hook is an audit hook (PEP 578): Python reports every `open`, `os.rename`, `os.mkdir`,
`os.remove`, `os.rmdir` and `os.chmod` before it happens. Events are counted when they concern
a path under `under` and happen below a frame of one of `modules` (by default the pipeline and
the modules it writes through, so the daemon's status file does not count); at the `nth` such
event the process is:

- `kill`: SIGKILLed before the operation (`when: "before"`), or right after it (`"after"`: a
  rename, mkdir, remove or rmdir is performed by the hook, then the process dies before the
  next line of xnatdrop runs: between a rename and the ledger write that follows it);
- `stop`: SIGSTOPped before the operation, so the campaign can change files and SIGCONT it;
- `record`: nothing; every counted event is logged (to calibrate how many there are).

Each counted event (or only the one acted on, outside `record`) is appended to `log` as one
JSON line: the event, its paths and the xnatdrop frame it came from, so a report can say what a
kill hit ("os.rename in xnatdrop.pipeline:_rename").
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading

SPEC = os.environ.get("XNATDROP_CAMPAIGN_FAULT")

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
KINDS = {
    "os.rename": "rename",
    "os.mkdir": "mkdir",
    "os.remove": "remove",
    "os.rmdir": "rmdir",
    "os.chmod": "chmod",
}
PIPELINE = ("xnatdrop.pipeline", "xnatdrop.pack", "xnatdrop.receipt", "xnatdrop.reasonfiles")


def _kind(event: str, args: tuple) -> tuple[str, list[str]] | None:
    """('rename', [src, dst]), ('write', [path]), ('read', [path]) … or None."""
    if event == "open":
        path, mode, flags = args
        if isinstance(path, int):
            return None
        write = any(c in mode for c in "wax+") if mode is not None else bool(flags & WRITE_FLAGS)
        return ("write" if write else "read"), [os.fsdecode(path)]
    kind = KINDS.get(event)
    if kind is None:
        return None
    given = args[: 2 if kind == "rename" else 1]
    return kind, [os.fsdecode(a) for a in given if isinstance(a, (str, bytes, os.PathLike))]


def _site(modules: tuple[str, ...]) -> str | None:
    """module:function:line of the innermost xnatdrop frame, if one of `modules` is below."""
    frame = sys._getframe(2)
    first = None
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name.startswith("xnatdrop.") and first is None:
            first = f"{name}:{frame.f_code.co_name}:{frame.f_lineno}"
        if name.startswith(modules):
            return first
        frame = frame.f_back
    return None


def _install(spec: dict) -> None:
    action = spec.get("action", "kill")
    nth = int(spec.get("nth", 1))
    when = spec.get("when", "before")
    kinds = set(spec.get("kinds", ["rename", "mkdir", "remove", "rmdir", "chmod", "write"]))
    under = spec.get("under", "/")
    match = spec.get("match", "")
    target = spec.get("target", False)  # match the destination of a rename only
    modules = tuple(spec.get("modules", PIPELINE))
    log_path = spec.get("log")
    lock = threading.Lock()
    local = threading.local()
    seen = [0]

    def record(entry: dict) -> None:
        if log_path:
            with open(log_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")

    def hook(event: str, args: tuple) -> None:
        if getattr(local, "busy", False):
            return
        found = _kind(event, args)
        if found is None or found[0] not in kinds:
            return
        kind, paths = found
        candidates = paths[-1:] if target else paths
        if not any(p.startswith(under) and match in p for p in candidates):
            return
        local.busy = True
        try:
            site = _site(modules)
            if site is None:
                return
            with lock:
                seen[0] += 1
                number = seen[0]
            entry = {"n": number, "kind": kind, "paths": paths, "site": site, "pid": os.getpid()}
            if action == "record":
                record(entry)
                return
            if number != nth:
                return
            entry.update(action=action, when=when)
            if action == "stop":
                record(entry)
                os.kill(os.getpid(), signal.SIGSTOP)
                return
            if when == "after":
                try:
                    _perform(kind, paths)
                except OSError as error:  # the operation itself failed: die all the same
                    entry["failed"] = str(error)
            record(entry)
            os.kill(os.getpid(), signal.SIGKILL)
        finally:
            local.busy = False

    sys.addaudithook(hook)


def _perform(kind: str, paths: list[str]) -> None:
    """Do the operation the hook was told about, so the kill lands just after it."""
    if kind == "rename":
        os.rename(paths[0], paths[1])
    elif kind == "mkdir":
        os.mkdir(paths[0])
    elif kind == "remove":
        os.remove(paths[0])
    elif kind == "rmdir":
        os.rmdir(paths[0])


if SPEC:
    _install(json.loads(SPEC))
