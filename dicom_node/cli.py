"""``cxr-triage node``: run the DICOM listener."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType


def _terminate(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _run_node(args: argparse.Namespace) -> int:
    from common.config import apply_overrides
    from db.settings import DbSettings
    from dicom_node.server import Node
    from dicom_node.settings import NodeSettings

    settings = apply_overrides(
        NodeSettings.from_env(),
        ae_title=args.ae_title,
        host=args.host,
        port=args.port,
        storage_dir=args.storage_dir,
        allow_any_aet=True if args.allow_any_aet else None,
        allowed_aets=tuple(args.allow_aet) if args.allow_aet else None,
        db=DbSettings(url=args.db_url) if args.db_url else None,
    )
    signal.signal(signal.SIGTERM, _terminate)
    node = Node(settings)
    try:
        node.serve_forever()
    except KeyboardInterrupt:
        print("node stopped", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``node``."""
    parser = subparsers.add_parser(
        "node", help="run the DICOM C-STORE/C-ECHO listener that modalities send to"
    )
    parser.add_argument("--ae-title", help="called AE title (TRIAGE_AE_TITLE)")
    parser.add_argument("--host", help="address to listen on (TRIAGE_HOST)")
    parser.add_argument("--port", type=int, help="port to listen on (TRIAGE_PORT)")
    parser.add_argument("--storage-dir", type=Path, help="storage tree (TRIAGE_STORAGE_DIR)")
    parser.add_argument("--db-url", help="SQLAlchemy URL (TRIAGE_DB_URL)")
    parser.add_argument(
        "--allow-aet", action="append", help="calling AE title to allow (repeatable; "
        "replaces TRIAGE_ALLOWED_AETS)"
    )
    parser.add_argument(
        "--allow-any-aet", action="store_true", help="accept any calling AE (TRIAGE_ALLOW_ANY_AET)"
    )
    parser.set_defaults(func=_run_node)
