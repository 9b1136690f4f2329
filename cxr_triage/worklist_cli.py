"""``cxr-triage worklist``: the prioritised study list for radiologists."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import TYPE_CHECKING

from common.errors import TriageError

if TYPE_CHECKING:
    from db.worklist import WorklistRow

DECISIONS = ("suspected", "indeterminate", "not_suspected", "pending", "retrying", "skipped",
             "failed")


def parse_since(text: str) -> dt.datetime:
    """ISO date or datetime, or a relative age such as ``24h`` or ``7d`` (UTC)."""
    units = {"h": "hours", "d": "days", "m": "minutes"}
    if text[-1:] in units and text[:-1].isdigit():
        delta = dt.timedelta(**{units[text[-1]]: int(text[:-1])})
        return dt.datetime.now(dt.UTC) - delta
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise TriageError(f"--since {text!r}: use 2026-11-26, 2026-11-26T08:00 or 24h/7d") from exc
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def format_worklist(rows: list[WorklistRow]) -> str:
    header = (f"{'#':>3}  {'study':28}  {'received (UTC)':16}  {'decision':13}  "
              f"{'p ± sd':13}  delivery")
    lines = [header]
    for index, row in enumerate(rows, 1):
        p = "-" if row.probability_mean is None else (
            f"{row.probability_mean:.3f} ± {row.probability_std:.3f}")
        line = (f"{index:>3}  {row.label[:28]:28}  {row.received_at:%Y-%m-%d %H:%M}  "
                f"{row.decision:13}  {p:13}  {row.delivery}")
        if row.patient_name is not None or row.patient_id is not None:
            line += f"  [{row.patient_name or ''} / {row.patient_id or ''}]"
        if row.reason:
            line += f"  ! {row.reason}"
        lines.append(line)
    if not rows:
        lines.append("(no studies)")
    return "\n".join(lines)


def run_worklist(args: argparse.Namespace) -> int:
    from db.migrate import require_current
    from db.session import make_engine, make_session_factory
    from db.settings import DbSettings
    from db.worklist import worklist

    url = args.db_url or DbSettings.from_env().url
    since = parse_since(args.since) if args.since else None  # a bad flag before the database
    engine = make_engine(url)
    try:
        require_current(engine)
        with make_session_factory(engine)() as session:
            rows = worklist(
                session,
                since=since,
                decisions=frozenset(args.decision) if args.decision else None,
                show_phi=args.show_phi,
            )
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps([row.as_json() for row in rows], indent=2))
    else:
        print(format_worklist(rows))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("worklist", help="studies in triage priority order")
    parser.add_argument("--since", help="only studies received since (2026-11-26, 24h, 7d)")
    parser.add_argument("--decision", action="append", choices=DECISIONS,
                        help="only these decisions (repeatable)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--show-phi", action="store_true",
                        help="show patient name and ID (hidden by default)")
    parser.add_argument("--db-url", help="SQLAlchemy URL (TRIAGE_DB_URL)")
    parser.set_defaults(func=run_worklist)
