"""``/healthz`` (alive), ``/readyz`` (database and broker) and ``/metrics``: no login."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from web.health import (
    DestinationsReport,
    broker_ready,
    database_ready,
    failing_destinations_check,
)
from web.metrics import render

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    """Readiness: the database answers a query and the broker accepts a connection (else 503,
    ``not ready``). A destination failing for longer than ``TRIAGE_DESTINATION_ALERT_S`` makes
    it ``degraded`` (still 200: the web app serves; the delivery path needs a person)."""
    checks = [await run_in_threadpool(database_ready, request.app.state.engine),
              await run_in_threadpool(broker_ready, request.app.state.settings.broker)]
    ready = all(c.ok for c in checks)
    body: dict[str, object] = {}
    if checks[0].ok:
        report = await run_in_threadpool(_destinations, request)
        checks.append(report.check)
        body["failing_destinations"] = report.failing
    status = "not ready" if not ready else "ready" if all(c.ok for c in checks) else "degraded"
    body = {"status": status,
            "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks}, **body}
    return JSONResponse(body, status_code=200 if ready else 503)


def _destinations(request: Request) -> DestinationsReport:
    with request.app.state.sessions() as session:
        return failing_destinations_check(session, request.app.state.settings.destination_alert_s)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format: the pipeline's counters and the live gauges."""
    body = await run_in_threadpool(render, request.app.state.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
