"""A destination failing for longer than TRIAGE_DESTINATION_ALERT_S: ``/readyz`` says
``degraded`` (still 200) and ``/metrics`` has the gauges; a delivery sent since clears it."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from db.models import Decision, Delivery, DeliveryState, utcnow
from tests.web.conftest import WebEnv, login
from tests.web.seed import add_study

PACS = "PACS@127.0.0.1:1"  # the seed's destination


def _failing_since(web: WebEnv, ago: dt.timedelta) -> None:
    with web.sessions.begin() as session:
        add_study(session, web.folder, decision=Decision.SUSPECTED, image=False,
                  delivery=DeliveryState.RETRYING)
        delivery = session.scalars(select(Delivery)).one()
        delivery.failing_since = utcnow() - ago
        delivery.next_attempt_at = utcnow() + dt.timedelta(minutes=10)
        delivery.last_error = "no association with PACS@127.0.0.1:1: connection refused"


def test_a_destination_failing_too_long_is_reported(web: WebEnv) -> None:
    _failing_since(web, dt.timedelta(hours=2))
    ready = web.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "degraded"
    assert body["checks"]["database"]["ok"] and not body["checks"]["destinations"]["ok"]
    assert PACS in body["checks"]["destinations"]["detail"]
    (failing,) = body["failing_destinations"]
    assert failing["destination"] == PACS and failing["alert"] is True
    assert failing["failing_for_s"] >= 7200 and failing["retrying"] == 1
    assert "connection refused" not in ready.text  # no error text without a login

    metrics = web.client.get("/metrics").text
    assert f'triage_destination_failing_seconds{{destination="{PACS}"}}' in metrics
    assert "triage_destinations_alerting 1.0" in metrics
    assert login(web.client, "admin") == 303
    assert f"{PACS} failing for" in web.client.get("/ops/health").text

    # A later delivery to the same destination was sent: it works again.
    with web.sessions.begin() as session:
        add_study(session, web.folder, decision=Decision.SUSPECTED, image=False,
                  delivery=DeliveryState.SENT)
        sent = session.scalars(select(Delivery).where(Delivery.state == "sent")).one()
        sent.sent_at = sent.updated_at = utcnow()
    body = web.client.get("/readyz").json()
    assert body["status"] == "ready" and body["failing_destinations"] == []
    assert "triage_destinations_alerting 0.0" in web.client.get("/metrics").text


def test_a_short_failure_is_listed_but_not_alerting(web: WebEnv) -> None:
    _failing_since(web, dt.timedelta(minutes=1))  # TRIAGE_DESTINATION_ALERT_S: 900 s
    body = web.client.get("/readyz").json()
    assert body["status"] == "ready" and body["checks"]["destinations"]["ok"]
    assert [f["alert"] for f in body["failing_destinations"]] == [False]
    assert "triage_destinations_alerting 0.0" in web.client.get("/metrics").text
