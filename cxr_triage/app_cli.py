"""``cxr-triage up`` and ``cxr-triage demo``: whole-system commands."""

from __future__ import annotations

import argparse
from pathlib import Path


def _up(args: argparse.Namespace) -> int:
    from cxr_triage.up import run_up
    from worker.settings import WorkerSettings

    model_dir = args.model_dir or WorkerSettings.from_env().model_dir
    node_args = ["--allow-any-aet"] if args.allow_any_aet else []
    for title in args.allow_aet or []:
        node_args += ["--allow-aet", title]
    return run_up(model_dir, node_args)


def _demo(args: argparse.Namespace) -> int:
    from cxr_triage.demo import run_demo

    return run_demo(args.workdir, args.data, args.fresh, args.timeout, serve=args.serve)


def _ping(args: argparse.Namespace) -> int:
    from common.queues import BrokerSettings, make_celery

    app = make_celery(BrokerSettings.from_env())
    replies = app.control.ping(timeout=args.timeout) or []
    names = [name for reply in replies for name in reply]
    matching = [n for n in names if args.queue is None or args.queue in n.split("@")[0].split("+")]
    print("\n".join(matching) if matching else "no worker answered")
    return 0 if matching else 1


def _nightly(args: argparse.Namespace) -> int:
    from cxr_triage.nightly import parse_at, run_nightly

    command = [part for part in args.command_line if part != "--"]
    return run_nightly(parse_at(args.at), command, once=args.once)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``up`` and ``demo``."""
    up = subparsers.add_parser(
        "up", help="run the node, a scoring and a delivery worker on this machine, "
        "restarting any that exits (embedded defaults)")
    up.add_argument("--model-dir", type=Path, help="ensemble directory (TRIAGE_MODEL_DIR)")
    up.add_argument("--allow-aet", action="append", help="calling AE title to allow")
    up.add_argument("--allow-any-aet", action="store_true", help="accept any calling AE")
    up.set_defaults(func=_up)

    demo = subparsers.add_parser(
        "demo", help="train a demo ensemble, run the whole pipeline on sample studies")
    demo.add_argument("--data", type=Path,
                      help="train the demo ensemble briefly on this data (default: synthetic)")
    demo.add_argument("--workdir", type=Path, default=Path("var/demo"))
    demo.add_argument("--fresh", action="store_true", help="rebuild the demo ensemble too")
    demo.add_argument("--timeout", type=float, default=600.0,
                      help="seconds to wait for every report")
    demo.add_argument("--serve", action="store_true",
                      help="keep the node, workers and web app running afterwards (Ctrl-C)")
    demo.set_defaults(func=_demo)

    ping = subparsers.add_parser(
        "ping", help="exit 0 when a worker (of a queue) answers; a container healthcheck")
    ping.add_argument("--queue", choices=["score", "deliver"], help="only workers of this queue")
    ping.add_argument("--timeout", type=float, default=5.0)
    ping.set_defaults(func=_ping)

    nightly = subparsers.add_parser(
        "nightly", help="run a cxr-triage command every day at --at (the re-scoring service)")
    nightly.add_argument("--at", default="02:00", help="local time HH:MM (default 02:00)")
    nightly.add_argument("--once", action="store_true", help="run now, once, and exit")
    nightly.add_argument("command_line", nargs=argparse.REMAINDER,
                         help="-- then the command, e.g. -- rescore --send changed")
    nightly.set_defaults(func=_nightly)
