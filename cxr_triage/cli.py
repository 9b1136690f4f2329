"""The ``cxr-triage`` command: each package contributes its subcommands through ``register``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from common.config import SettingError
from common.errors import TriageError
from cxr_triage import __version__

# Each module exposes ``register(subparsers)``; the order is the order of ``--help``.
COMMAND_MODULES = (
    "dicom_node.cli",
    "training.cli",
    "worker.cli",
    "worker.rescore.cli",
    "db.cli",
    "cxr_triage.worklist_cli",
    "cxr_triage.app_cli",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the root parser with every package's subcommands."""
    parser = argparse.ArgumentParser(
        prog="cxr-triage",
        description="DICOM triage of chest radiographs with a 10-fold ResNet-50 ensemble.",
    )
    parser.add_argument("--version", action="version", version=f"cxr-triage {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, configure logging, run the chosen command, map errors to exit codes."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    try:
        result = args.func(args)
    except (TriageError, SettingError) as exc:
        print(f"cxr-triage {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
