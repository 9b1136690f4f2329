"""``cxr-triage rescore`` and ``cxr-triage drift`` (docs/rescore.md).

Exit codes (for cron): rescore 0 success, 3 partial (some instances could not be scored or
some reports not written or delivered), 1 failure, 130 interrupted, 2 usage error;
drift 0 no drift, 4 drift beyond a threshold, 1 failure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from common.config import apply_overrides
from common.errors import TriageError
from worker.engine import current_sessions
from worker.rescore.modes import SendMode
from worker.settings import WorkerSettings

if TYPE_CHECKING:
    from celery import Celery

    from worker.rescore.run import RescoreRequest

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURE, EXIT_PARTIAL, EXIT_DRIFT = 0, 1, 3, 4




def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from exc


def _settings(args: argparse.Namespace) -> WorkerSettings:
    return apply_overrides(WorkerSettings.from_env(),
                           **{"rescore.batch": args.batch_size,
                              "rescore.loader_workers": args.workers})


def choose_send(sessions: sessionmaker[Session], worker: WorkerSettings, model_dir: Path,
                explicit: str | None) -> tuple[SendMode, str | None]:
    """``--send`` as given; by default ``changed`` for the live model and ``none`` for any
    other (its results never reach the PACS unless asked for). Returns the mode and a note."""
    from training.manifest import load_manifest
    from worker.rescore.run import live_model_version

    if explicit is not None:
        return SendMode(explicit), None
    version = load_manifest(model_dir, verify_hashes=False).model_version
    live = live_model_version(sessions, worker)
    if version == live:
        return SendMode.CHANGED, None
    return SendMode.NONE, (f"model {version} is not the live model ({live or 'none'}): "
                           "its results are recorded but no SR is sent (--send none); pass "
                           "--send changed or --send all to send them")


def _request(args: argparse.Namespace, sessions: sessionmaker[Session],
             worker: WorkerSettings) -> RescoreRequest:
    from db.runs import Selection
    from worker.models.store import live_model_dir, resolve_model
    from worker.rescore.run import RescoreRequest

    if args.model:
        model_dir = resolve_model(sessions, args.model)
    else:  # the live model
        with sessions() as session:
            live = live_model_dir(session)
        model_dir = worker.model_dir if live is None else live[1]
    send, note = choose_send(sessions, worker, model_dir, args.send)
    if note:
        print(f"rescore: {note}")
    return RescoreRequest(
        model_dir=model_dir,
        selection=Selection(since=args.since, until=args.until, study_uids=tuple(args.study),
                            only_unscored=args.only_unscored),
        send=send, dry_run=args.dry_run, distributed=args.distributed,
        retry_failed=args.retry_failed)


def _rescore(args: argparse.Namespace) -> int:
    from common.threads import prefer_passive_waits

    prefer_passive_waits()  # before torch loads: OpenMP reads it once (common.threads)
    from common.queues import make_celery
    from worker.rescore.run import run_rescore
    from worker.rescore.summary import print_summary

    worker = _settings(args)
    brokers: list[Celery] = []

    def broker() -> Celery:
        if not brokers:
            brokers.append(make_celery(worker.broker))
        return brokers[0]

    try:
        with current_sessions(worker.db.url) as sessions:
            request = _request(args, sessions, worker)
            result = run_rescore(sessions, request, worker=worker, broker=broker)
    except TriageError as exc:
        print(f"cxr-triage rescore: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print_summary(result, dry_run=args.dry_run)
    return result.exit_code


def _drift(args: argparse.Namespace) -> int:
    from db.runs import finished_runs
    from worker.rescore.drift import Thresholds, drift_rows, format_table, latest_per_version, plot
    from worker.rescore.summary import run_stats

    worker = apply_overrides(WorkerSettings.from_env(), **{
        "rescore.drift_psi": args.threshold, "rescore.drift_ks": args.ks_threshold,
        "rescore.drift_rate": args.rate_threshold})
    settings = worker.rescore
    limits = Thresholds(psi=settings.drift_psi, ks=settings.drift_ks, rate=settings.drift_rate)
    with current_sessions(worker.db.url) as sessions, sessions() as session:
        runs = [run_stats(run) for run in finished_runs(session, args.runs)]
    if len(runs) < 2:
        print(f"drift: {len(runs)} finished rescore run(s); need 2 to compare")
        return EXIT_OK
    rows = drift_rows(runs, limits, baseline=args.baseline)
    print(f"Runs (each against {'the first' if args.baseline == 'first' else 'the previous'}):")
    print(format_table(rows))
    versions = latest_per_version(runs)
    if len(versions) > 1:
        print("\nModel versions (latest run of each against the version before):")
        print(format_table(drift_rows(versions, limits)))
        rows += drift_rows(versions, limits)[1:]
    if args.out:
        print(f"\nplot: {plot(runs, Path(args.out))}")
    warned = [row for row in rows if row.warnings]
    for row in warned:
        assert row.baseline is not None
        print(f"WARNING: drift: run {row.run.run_id} ({row.run.model_version}) vs run "
              f"{row.baseline.run_id} ({row.baseline.model_version}): "
              + "; ".join(row.warnings))
    return EXIT_DRIFT if warned else EXIT_OK


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rescore`` and ``drift``."""
    rescore = subparsers.add_parser(
        "rescore", help="score stored instances with an ensemble; SRs for changed studies")
    rescore.add_argument("--since", type=_date, help="received on or after DATE (UTC)")
    rescore.add_argument("--until", type=_date, help="received on or before DATE (UTC)")
    rescore.add_argument("--study", action="append", default=[], metavar="UID",
                         help="only this Study Instance UID (repeatable)")
    rescore.add_argument("--model", metavar="VERSION|DIR",
                         help="a version in the model store or an ensemble folder (default: "
                         "the live model, else TRIAGE_MODEL_DIR)")
    rescore.add_argument("--only-unscored", action="store_true",
                         help="only instances no other model version has scored")
    rescore.add_argument("--send", choices=[m.value for m in SendMode],
                         help="which studies get a new SR (default: changed with the live "
                         "model, none with any other)")
    rescore.add_argument("--dry-run", action="store_true",
                         help="show what would be scored; change nothing")
    rescore.add_argument("--distributed", action="store_true",
                         help="publish batches to the score queue for the workers")
    rescore.add_argument("--batch-size", type=int, help="default TRIAGE_RESCORE_BATCH (8)")
    rescore.add_argument("--workers", type=int,
                         help="decoding processes (default TRIAGE_RESCORE_WORKERS)")
    rescore.add_argument("--retry-failed", action="store_true",
                         help="try again instances an earlier run could not score")
    rescore.set_defaults(func=_rescore)

    drift = subparsers.add_parser("drift", help="compare the score distributions of rescore runs")
    drift.add_argument("--runs", type=int, default=10, help="last N finished runs (default 10)")
    drift.add_argument("--out", metavar="PNG", help="write histograms and ECDFs here")
    drift.add_argument("--threshold", type=float,
                       help="PSI warning threshold (default TRIAGE_DRIFT_PSI_THRESHOLD, 0.2)")
    drift.add_argument("--ks-threshold", type=float,
                       help="KS warning threshold (default TRIAGE_DRIFT_KS_THRESHOLD, 0.2)")
    drift.add_argument("--rate-threshold", type=float, help="indeterminate-rate change "
                       "warning threshold (default TRIAGE_DRIFT_RATE_THRESHOLD, 0.05)")
    drift.add_argument("--baseline", choices=["previous", "first"], default="previous",
                       help="compare each run with the previous one or the first one")
    drift.set_defaults(func=_drift)
