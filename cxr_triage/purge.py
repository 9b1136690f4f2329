"""``cxr-triage purge --older-than DAYS [--dry-run]``: retention of received instances.

Deletes finished instances received more than DAYS ago (their rows, scores, claims and files)
unless a report still references them; reports and their SR files are kept
(:mod:`db.retention`). The rows go first, in one transaction; the files after the commit, so a
crash in between leaves unreferenced files, never rows that point at missing files. Only files
inside TRIAGE_STORAGE_DIR are ever deleted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
from pathlib import Path

from common.errors import TriageError

LOGGER = logging.getLogger(__name__)


class PurgeError(TriageError):
    """The purge was asked for something it must not do."""


def _delete_files(paths: list[str], storage_dir: Path) -> tuple[int, int]:
    """(deleted, missing or outside the storage tree) after the rows are gone."""
    root = storage_dir.resolve()
    deleted = skipped = 0
    for name in paths:
        path = Path(name)
        if not path.resolve().is_relative_to(root):
            LOGGER.warning("purge: %s is outside TRIAGE_STORAGE_DIR %s; left in place", path, root)
            skipped += 1
            continue
        try:
            path.unlink()
            deleted += 1
        except FileNotFoundError:
            skipped += 1
        except OSError as exc:
            LOGGER.error("purge: can't delete %s: %s", path, exc.strerror)
            skipped += 1
    return deleted, skipped


def run_purge(days: float, *, dry_run: bool) -> int:
    """Purge (or count, with ``dry_run``) and print what was removed."""
    from db.migrate import require_current
    from db.retention import kept_for_reports, purge_candidates, purge_rows
    from db.session import make_engine, make_session_factory
    from dicom_node.settings import NodeSettings

    if days < 0:
        raise PurgeError(f"--older-than {days:g} is negative; give a number of days >= 0")
    settings = NodeSettings.from_env()
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
    engine = make_engine(settings.db.url)
    try:
        require_current(engine)
        with make_session_factory(engine)() as session:
            candidates = purge_candidates(session, cutoff)
            kept = kept_for_reports(session, cutoff)
            counts = purge_rows(session, candidates)
            if dry_run:
                session.rollback()
            else:
                session.commit()
    finally:
        engine.dispose()
    verb = "would delete" if dry_run else "deleted"
    print(f"purge: instances received before {cutoff:%Y-%m-%d %H:%M} UTC: {verb} "
          f"{counts.instances} instances, {counts.scores} scores, {counts.claims} claims, "
          f"{counts.rescore_failures} re-scoring failures, {counts.studies} empty studies; "
          f"kept {kept} instances that reports reference")
    if not dry_run:
        deleted, skipped = _delete_files([c.file_path for c in candidates], settings.storage_dir)
        print(f"purge: deleted {deleted} files ({skipped} missing or outside the storage tree)")
    return 0


def _purge(args: argparse.Namespace) -> int:
    return run_purge(args.older_than, dry_run=args.dry_run)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``purge``."""
    parser = subparsers.add_parser(
        "purge", help="delete instances, scores and claims older than DAYS, keeping what "
        "reports reference")
    parser.add_argument("--older-than", type=float, required=True, metavar="DAYS",
                        help="received more than DAYS ago (fractions allowed)")
    parser.add_argument("--dry-run", action="store_true",
                        help="count what would be deleted; change nothing")
    parser.set_defaults(func=_purge)
