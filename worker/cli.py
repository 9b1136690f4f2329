"""``cxr-triage worker``, ``cxr-triage deliveries`` and ``cxr-triage redeliver``."""

from __future__ import annotations

import argparse
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from common.config import apply_overrides
from worker.settings import DEVICES, WorkerSettings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

logger = logging.getLogger(__name__)
POOLS = ("prefork", "solo", "threads")


def _settings(args: argparse.Namespace) -> WorkerSettings:
    return apply_overrides(WorkerSettings.from_env(),
                           model_dir=Path(args.model_dir) if args.model_dir else None,
                           **{"inference.device": args.device})


def _require_current_schema(url: str) -> None:
    """Refuse to start on a database that `cxr-triage db upgrade` has not brought to head."""
    from db.migrate import require_current
    from db.session import make_engine

    engine = make_engine(url)
    try:
        require_current(engine)
    finally:
        engine.dispose()


def _log_inference_plan(settings: WorkerSettings) -> None:
    """Once at start: the hardware, and the precision the live model will run in, and why."""
    from common.hardware import detect
    from worker.engine import current_sessions
    from worker.models.store import live_model_dir
    from worker.score.precision import describe_plan

    caps = detect()
    with current_sessions(settings.db.url) as sessions, sessions() as session:
        live = live_model_dir(session)
    model_dir = settings.model_dir if live is None else live[1]
    inference = settings.inference
    logger.info("hardware: %s", caps.describe())
    logger.info("inference (TRIAGE_INFERENCE_PRECISION=%s, TRIAGE_INFERENCE_BACKEND=%s): %s",
                inference.precision, inference.backend,
                describe_plan(model_dir, inference.precision, inference.backend,
                              device_setting=inference.device, caps=caps,
                              cache_dir=inference.openvino_cache_dir,
                              threads=inference.torch_threads))


def _with_default_threads(settings: WorkerSettings) -> WorkerSettings:
    """``TRIAGE_TORCH_THREADS`` 0 (unset): one per usable core (common.threads)."""
    from common.threads import inference_threads

    if settings.inference.torch_threads > 0:
        return settings
    return apply_overrides(settings, **{"inference.torch_threads": inference_threads()})


def _worker(args: argparse.Namespace) -> int:
    from common.threads import WAIT_POLICY_ENV, prefer_passive_waits

    prefer_passive_waits()  # before torch loads: OpenMP reads it once (common.threads)
    from worker.celery_app import create_app

    settings = _with_default_threads(_settings(args))
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    concurrency = args.concurrency or (
        settings.score_concurrency if "score" in queues else settings.deliver_concurrency)
    _require_current_schema(settings.db.url)
    app, context = create_app(settings)
    name = args.hostname or f"{'+'.join(queues)}@{socket.gethostname()}"
    logger.info("worker %s: queues %s, concurrency %d, device %s, model %s, %d destinations, "
                "%d torch threads (%s=%s), decode-ahead %s", name, ",".join(queues),
                concurrency, settings.inference.device, settings.model_dir,
                len(context.destinations), settings.inference.torch_threads, WAIT_POLICY_ENV,
                os.environ.get(WAIT_POLICY_ENV), "on" if settings.decode_ahead else "off")
    if "score" in queues:
        _log_inference_plan(settings)
    app.worker_main([
        "worker", "--queues", ",".join(queues), "--concurrency", str(concurrency),
        "--pool", args.pool, "--hostname", name, "--loglevel", args.log_level,
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ])
    return 0


def _deliveries(args: argparse.Namespace) -> int:
    from db.reports import list_deliveries
    from db.session import make_engine, make_session_factory

    settings = WorkerSettings.from_env()
    engine = make_engine(settings.db.url)
    try:
        with make_session_factory(engine)() as session:
            if args.failing:
                return _print_failing(session, settings.destination_alert_s)
            rows = list_deliveries(session, failed_only=args.failed, limit=args.limit)
    finally:
        engine.dispose()
    header = ("REPORT", "REV", "DECISION", "PRIORITY", "DESTINATION", "ITEM", "STATE", "COMMIT",
              "TRIES", "UPDATED (UTC)", "NEXT ATTEMPT (UTC)", "STUDY / LAST ERROR")
    print("\t".join(header))
    stamp = "%Y-%m-%d %H:%M:%S"
    for r in rows:
        # pending/retrying: when it is due (the node's reconciler publishes it then); else -
        due = r.next_attempt_at.strftime(stamp) if r.next_attempt_at else "-"
        print("\t".join([str(r.report_id), str(r.revision), r.decision, r.priority,
                         r.destination, r.item, r.state, r.commitment or "-", str(r.attempts),
                         r.updated_at.strftime(stamp),
                         due, r.study_instance_uid + (f" / {r.last_error}" if r.last_error
                                                      else "")
                         + (f" / commitment: {r.commitment_error}" if r.commitment_error
                            else "")]))
    return 0


def _print_failing(session: Session, alert_s: float) -> int:
    """``deliveries --failing``: one line per destination whose deliveries keep failing."""
    from db.models import utcnow
    from db.reports import failing_destinations

    now = utcnow()
    failing = failing_destinations(session)
    stamp = "%Y-%m-%d %H:%M:%S"
    print("\t".join(("DESTINATION", "FAILING SINCE (UTC)", "FOR", "ALERT", "RETRYING", "FAILED",
                     "NEXT ATTEMPT (UTC)", "LAST ERROR")))
    for f in failing:
        seconds = f.failing_for_s(now)
        print("\t".join([f.destination, f.failing_since.strftime(stamp), _duration(seconds),
                         "yes" if seconds >= alert_s else "no", str(f.retrying), str(f.failed),
                         f.next_attempt_at.strftime(stamp) if f.next_attempt_at else "-",
                         f.last_error or "-"]))
    if not failing:
        print("no destination is failing")
    return 0


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _redeliver(args: argparse.Namespace) -> int:
    """Requeue deliveries; an unknown ``--report`` id is an error (exit 2), not "nothing"."""
    from db.models import Report
    from db.session import make_engine, make_session_factory
    from worker.deliver.requeue import redeliver
    from worker.errors import WorkerError

    if args.report is None and not args.all_failed:
        raise WorkerError("give --report ID or --all-failed")
    settings = WorkerSettings.from_env()
    _require_current_schema(settings.db.url)
    engine = make_engine(settings.db.url)
    try:
        sessions = make_session_factory(engine)
        if args.report is not None:
            with sessions() as session:
                if session.get(Report, args.report) is None:
                    raise WorkerError(f"no report with id {args.report}; "
                                      "`cxr-triage deliveries` lists the report ids")
        pairs = redeliver(sessions, settings.broker, report_id=args.report,
                          all_failed=args.all_failed, destination=args.destination)
    finally:
        engine.dispose()
    for report_id, destination, item in pairs:
        print(f"report {report_id} -> {destination} ({item}): queued again")
    if not pairs:
        print("nothing to redeliver")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``worker``, ``deliveries`` and ``redeliver``."""
    worker = subparsers.add_parser("worker", help="run a Celery worker (score and deliver)")
    worker.add_argument("--queues", default="score,deliver",
                        help="comma-separated queues to consume (default score,deliver)")
    worker.add_argument("--device", choices=DEVICES, help="default TRIAGE_DEVICE (auto)")
    worker.add_argument("--concurrency", type=int, help="pool processes (default "
                        "TRIAGE_SCORE_CONCURRENCY, or TRIAGE_DELIVER_CONCURRENCY for deliver)")
    worker.add_argument("--pool", choices=POOLS, default="prefork")
    worker.add_argument("--hostname", help="worker node name (default QUEUES@host)")
    worker.add_argument("--model-dir", help="ensemble directory (default TRIAGE_MODEL_DIR)")
    worker.set_defaults(func=_worker)

    deliveries = subparsers.add_parser("deliveries", help="list report deliveries, newest first")
    deliveries.add_argument("--failed", action="store_true", help="only failed deliveries")
    deliveries.add_argument("--failing", action="store_true",
                            help="destinations whose deliveries keep failing, with how long "
                            "(ALERT: longer than TRIAGE_DESTINATION_ALERT_S)")
    deliveries.add_argument("--limit", type=int, default=200)
    deliveries.set_defaults(func=_deliveries)

    redeliver = subparsers.add_parser("redeliver", help="queue deliveries again")
    redeliver.add_argument("--report", type=int, help="every unsent delivery of this report")
    redeliver.add_argument("--all-failed", action="store_true",
                           help="every failed delivery, and every retrying one past its time")
    redeliver.add_argument("--destination", metavar="LABEL",
                           help="only deliveries to this destination, as `deliveries` shows it")
    redeliver.set_defaults(func=_redeliver)
