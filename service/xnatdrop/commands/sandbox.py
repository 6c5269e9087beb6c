"""`xnatdrop sandbox`: run the local XNAT until SIGINT or SIGTERM.

The signal handlers only set an event (uvicorn's habit); the main thread waits on it and then
stops the server, which finishes requests in flight on their own threads. A second SIGINT while
stopping exits at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import xnat_sandbox
from xnatdrop.errors import ConfigError
from xnatdrop.exitcodes import Exit

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sandbox",
        help="run a local XNAT (REST API subset) for trying a configuration",
        description="Serve a local XNAT that speaks the REST API xnatdrop, xnatpy and pyxnat "
        "use, until interrupted. State lives under --data and survives a restart.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument(
        "--port", type=int, default=8080, help="port (default %(default)s; 0 = any)"
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("xnat-sandbox"),
        metavar="DIR",
        help="state directory (default ./%(default)s)",
    )
    parser.add_argument(
        "--user",
        action="append",
        metavar="NAME:PASSWORD[:ACCESS]",
        help="account; ACCESS is owner (default), read or none; repeatable "
        "(default admin:admin). The first owner is the site admin.",
    )
    parser.add_argument(
        "--project",
        action="append",
        default=[],
        metavar="ID",
        help="project to create if missing; repeatable",
    )
    parser.add_argument(
        "--session-timeout",
        type=float,
        default=900.0,
        metavar="SECONDS",
        help="idle time before a JSESSIONID expires (default %(default)s)",
    )
    parser.add_argument(
        "--rebuild-idle",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="idle time before a RECEIVING prearchive session is built (default %(default)s)",
    )
    parser.add_argument(
        "--dicom-port",
        type=int,
        default=None,
        metavar="N",
        help="also run XNAT's DICOM C-STORE receiver on this port (XNAT's is 8104; 0 = any)",
    )
    parser.add_argument(
        "--dicom-ae",
        action="append",
        default=[],
        metavar="TITLE[:PROJECT]",
        help="a receiver AE title, optionally filing everything into PROJECT; repeatable "
        "(default XNAT, routing by the DICOM header as a stock XNAT does)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    users = args.user or ["admin:admin"]
    problems = []
    for spec in users:
        try:
            xnat_sandbox.parse_user(spec)
        except ValueError as error:
            problems.append(f"at '--user': {error}")
    for project in args.project:
        if not project.replace("_", "").replace("-", "").isalnum():
            problems.append(f"at '--project': {project!r} is not a valid ID (use A-Z a-z 0-9 _ -)")
    receivers = []
    for spec in args.dicom_ae:
        try:
            receivers.append(xnat_sandbox.Receiver.parse(spec))
        except ValueError as error:
            problems.append(f"at '--dicom-ae': {error}")
    if args.dicom_ae and args.dicom_port is None:
        problems.append("at '--dicom-ae': give --dicom-port too, or no receiver runs")
    if problems:
        raise ConfigError("xnatdrop sandbox", problems)
    sandbox = xnat_sandbox.Sandbox(
        data=args.data,
        host=args.host,
        port=args.port,
        users=users,
        projects=args.project,
        session_timeout=args.session_timeout,
        rebuild_idle=args.rebuild_idle,
        dicom_port=args.dicom_port,
        dicom_receivers=receivers or None,
    )
    try:
        sandbox.start()
    except OSError as error:
        print(
            f"xnatdrop sandbox: cannot listen on {args.host}:{args.port}"
            f"{'' if args.dicom_port is None else f' (DICOM {args.dicom_port})'}: {error}",
            file=sys.stderr,
        )
        return Exit.USAGE
    stopping = threading.Event()

    def handle_exit(sig: int, frame: FrameType | None) -> None:
        if stopping.is_set() and sig == signal.SIGINT:
            os._exit(130)
        stopping.set()

    previous = {s: signal.signal(s, handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(sandbox.url, flush=True)
        if sandbox.dicom is not None:
            titles = ", ".join(sandbox.dicom.ae_titles)
            print(f"DICOM receiver {titles} on {args.host}:{sandbox.dicom_port}", flush=True)
        log.info(
            "users: %s; projects: %s",
            ", ".join(sandbox.accounts),
            ", ".join(args.project) or "none",
        )
        stopping.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sandbox.stop()
    return Exit.OK
