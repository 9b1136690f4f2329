"""Operations pages (role admin): deliveries and redelivery, drift, health, the audit log."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from db.models import DeliveryState
from db.reports import list_deliveries
from db.runs import finished_runs
from dicom_node.settings import NodeSettings
from web.audit import audit, recent
from web.auth import AdminUser, DbSession, client_address
from web.health import (
    database_ready,
    failing_destinations_check,
    live_model,
    node_echo,
    queue_depths,
    storage_free,
    workers_answering,
)
from web.pages import render
from worker.deliver.requeue import redeliver
from worker.rescore.drift import Thresholds, drift_rows, format_table, plot
from worker.rescore.summary import run_stats
from worker.settings import WorkerSettings

LOGGER = logging.getLogger(__name__)
router = APIRouter(prefix="/ops", include_in_schema=False)
DRIFT_RUNS = 20
_FAILED_FIRST = {DeliveryState.FAILED: 0, DeliveryState.RETRYING: 1, DeliveryState.WITHHELD: 2}


@router.get("/deliveries", response_class=HTMLResponse)
def deliveries(request: Request, session: DbSession, principal: AdminUser) -> Response:
    rows = sorted(list_deliveries(session, limit=500),
                  key=lambda r: _FAILED_FIRST.get(r.state, 3))  # stable: newest first within
    failed = sum(1 for r in rows if r.state == DeliveryState.FAILED)
    return render(request, "deliveries.html", principal, rows=rows, failed=failed,
                  message=request.query_params.get("message"))


@router.post("/deliveries/redeliver")
def deliveries_redeliver(request: Request, principal: AdminUser,
                         report_id: Annotated[int | None, Form()] = None,
                         all_failed: Annotated[bool, Form()] = False) -> Response:
    pairs = redeliver(request.app.state.sessions, request.app.state.settings.broker,
                      report_id=report_id, all_failed=all_failed and report_id is None)
    LOGGER.info("redeliver: %d deliveries requeued by an admin", len(pairs))
    with request.app.state.sessions.begin() as session:
        audit(session, principal.name, "redeliver", None,
              f"report {report_id}" if report_id else f"all failed: {len(pairs)}",
              client_address(request))
    message = f"{len(pairs)} deliveries queued again" if pairs else "nothing to redeliver"
    return RedirectResponse(f"/ops/deliveries?message={message}", status_code=303)


def _limits() -> Thresholds:
    settings = WorkerSettings.from_env().rescore
    return Thresholds(psi=settings.drift_psi, ks=settings.drift_ks, rate=settings.drift_rate)


@router.get("/drift", response_class=HTMLResponse)
def drift(request: Request, session: DbSession, principal: AdminUser) -> Response:
    runs = [run_stats(run) for run in finished_runs(session, DRIFT_RUNS)]
    rows = drift_rows(runs, _limits()) if runs else []
    return render(request, "drift.html", principal, runs=runs, rows=rows,
                  table=format_table(rows) if rows else "")


@router.get("/drift.png")
def drift_plot(session: DbSession, _principal: AdminUser) -> Response:
    runs = [run_stats(run) for run in finished_runs(session, DRIFT_RUNS)]
    with tempfile.TemporaryDirectory() as folder:
        png = plot(runs, Path(folder) / "drift.png").read_bytes()
    return Response(png, media_type="image/png")


@router.get("/health", response_class=HTMLResponse)
def health(request: Request, session: DbSession, principal: AdminUser) -> Response:
    settings = request.app.state.settings
    node = NodeSettings.from_env()
    workers = workers_answering(settings.broker)
    checks = [database_ready(request.app.state.engine), node_echo(node),
              live_model(session, settings.model_dir),
              storage_free(node.storage_dir, node.min_free_bytes),
              failing_destinations_check(session, settings.destination_alert_s).check]
    return render(request, "health.html", principal, checks=checks, workers=workers,
                  depths=queue_depths(settings.broker))


@router.get("/audit", response_class=HTMLResponse)
def audit_log(request: Request, session: DbSession, principal: AdminUser,
              study: str | None = None, user: str | None = None) -> Response:
    entries = recent(session, study_uid=study, username=user)
    return render(request, "audit.html", principal, entries=entries, study=study or "",
                  user=user or "")
