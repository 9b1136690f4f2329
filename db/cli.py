"""``cxr-triage db``: schema management."""

from __future__ import annotations

import argparse

from db.settings import DbSettings


def _settings(args: argparse.Namespace) -> DbSettings:
    settings = DbSettings.from_env()
    return DbSettings(url=args.db_url) if args.db_url else settings


def _upgrade(args: argparse.Namespace) -> int:
    from db.migrate import current_revision, upgrade
    from db.session import make_engine

    engine = make_engine(_settings(args).url)
    try:
        upgrade(engine, args.revision)
        print(f"database at revision {current_revision(engine)}")
    finally:
        engine.dispose()
    return 0


def _current(args: argparse.Namespace) -> int:
    from db.migrate import current_revision
    from db.session import make_engine

    engine = make_engine(_settings(args).url)
    try:
        print(current_revision(engine) or "empty (run `cxr-triage db upgrade`)")
    finally:
        engine.dispose()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``db upgrade`` and ``db current``."""
    parser = subparsers.add_parser("db", help="database schema management")
    parser.add_argument("--db-url", help="SQLAlchemy URL (default: TRIAGE_DB_URL)")
    actions = parser.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = actions.add_parser("upgrade", help="apply migrations up to a revision (default head)")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(func=_upgrade)
    actions.add_parser("current", help="print the schema revision").set_defaults(func=_current)
