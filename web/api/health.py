"""``/healthz`` (alive), ``/readyz`` (database and broker) and ``/metrics``: no login."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from web.health import broker_ready, database_ready
from web.metrics import render

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    """Readiness: the database answers a query and the broker accepts a connection."""
    checks = [await run_in_threadpool(database_ready, request.app.state.engine),
              await run_in_threadpool(broker_ready, request.app.state.settings.broker)]
    ready = all(c.ok for c in checks)
    return JSONResponse({"status": "ready" if ready else "not ready",
                         "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks}},
                        status_code=200 if ready else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format: the pipeline's counters and the live gauges."""
    body = await run_in_threadpool(render, request.app.state.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
