"""The ``cxr-triage`` command: each package contributes its subcommands through ``register``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from common.config import SettingError
from common.errors import TriageError
from common.logs import LogSettings, configure_logging
from common.metrics import enable_multiprocess
from cxr_triage import __version__

# Each module exposes ``register(subparsers)``; the order is the order of ``--help``.
COMMAND_MODULES = (
    "dicom_node.cli",
    "training.cli",
    "worker.cli",
    "worker.rescore.cli",
    "worker.models.cli",
    "worker.validation.cli",
    "db.cli",
    "cxr_triage.worklist_cli",
    "cxr_triage.purge",
    "web.cli",
    "cxr_triage.app_cli",
)


# Where a command lives, so running it imports only its own module (a read-only command starts
# in well under a second; docs/benchmarks.md). A command missing here still works: the full
# parser is built. tests/unit/test_cli_startup.py checks every entry against the modules.
COMMAND_HOMES = {
    "node": "dicom_node.cli",
    "worker": "worker.cli",
    "deliveries": "worker.cli",
    "redeliver": "worker.cli",
    "rescore": "worker.rescore.cli",
    "drift": "worker.rescore.cli",
    "model": "worker.models.cli",
    "db": "db.cli",
    "worklist": "cxr_triage.worklist_cli",
    "purge": "cxr_triage.purge",
    "up": "cxr_triage.app_cli",
    "ping": "cxr_triage.app_cli",
}


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (after the root options), or ``None``."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--log-level")
    _known, rest = pre.parse_known_args(list(argv))
    return rest[0] if rest and not rest[0].startswith("-") else None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Build the root parser: with ``command`` only its module's subcommands, else all of them."""
    parser = argparse.ArgumentParser(
        prog="cxr-triage",
        description="DICOM triage of chest radiographs with a 10-fold ResNet-50 ensemble.",
    )
    parser.add_argument("--version", action="version", version=f"cxr-triage {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    home = COMMAND_HOMES.get(command or "")
    for module_name in (home,) if home else COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, configure logging, run the chosen command, map errors to exit codes."""
    enable_multiprocess()  # TRIAGE_METRICS_DIR: before anything imports prometheus-client
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_chosen_command(argv))
    args = parser.parse_args(argv)
    try:
        configure_logging(args.log_level, LogSettings.from_env())
        result = args.func(args)
    except (TriageError, SettingError) as exc:
        print(f"cxr-triage {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
