"""The web app through its real FastAPI stack (TestClient): auth, CSRF, order, PHI, audit."""

from __future__ import annotations

import datetime as dt
import io

import numpy as np
from PIL import Image
from sqlalchemy import select

from common.metrics import instances_total
from db.models import AuditLog, Decision, DeliveryState, utcnow
from tests.web.conftest import PASSWORD, WebEnv, login
from tests.web.seed import add_study
from training.preprocessing import load_unit_image
from web import accounts

PAGES = ("/worklist", "/studies/1.2.3", "/ops/deliveries", "/ops/drift", "/ops/health",
         "/ops/audit")
ADMIN_PAGES = ("/ops/deliveries", "/ops/drift", "/ops/health", "/ops/audit", "/ops/drift.png")


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_nothing_is_readable_without_login_but_health_and_metrics(web: WebEnv) -> None:
    for path in PAGES:
        response = web.client.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/login?next=")
    for path in ("/api/worklist", "/api/studies/1.2.3"):
        response = web.client.get(path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == "Bearer"
    assert web.client.get("/healthz").json() == {"status": "ok"}
    ready = web.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["database"]["ok"] is True
    assert web.client.get("/metrics").status_code == 200


def test_bearer_token_failures(web: WebEnv) -> None:
    assert web.client.get("/api/worklist", headers=_bearer("ctt_wrong")).status_code == 401
    assert web.client.get("/api/worklist", headers={"Authorization": "Basic eDp5"}
                          ).status_code == 401
    assert web.client.get("/api/worklist", headers=_bearer(web.tokens["ris"])).status_code == 200
    with web.sessions.begin() as session:
        assert accounts.revoke_token(session, "ris")
    assert web.client.get("/api/worklist", headers=_bearer(web.tokens["ris"])).status_code == 401


def test_wrong_password_and_unknown_user_are_refused(web: WebEnv) -> None:
    assert login(web.client, "admin", "not the password") == 401
    assert login(web.client, "nobody", PASSWORD) == 401
    assert web.client.get("/worklist", follow_redirects=False).status_code == 303


def test_pagination_in_triage_order(web: WebEnv) -> None:
    start = utcnow() - dt.timedelta(hours=1)
    plan = [(Decision.NOT_SUSPECTED, 0.1, "N1"), (Decision.SUSPECTED, 0.6, "S06"),
            (None, 0.0, "P1"), (Decision.INDETERMINATE, 0.5, "I1"),
            (Decision.SUSPECTED, 0.9, "S09"), (Decision.NOT_SUSPECTED, 0.2, "N2"),
            (Decision.SUSPECTED, 0.7, "S07")]
    with web.sessions.begin() as session:
        for minute, (decision, p, accession) in enumerate(plan):
            add_study(session, web.folder, decision=decision, probability=p, accession=accession,
                      received=start + dt.timedelta(minutes=minute), image=False)
    seen = []
    for page in (1, 2, 3):
        body = web.client.get(f"/api/worklist?page={page}&page_size=3",
                              headers=_bearer(web.tokens["ris"])).json()
        assert (body["total"], body["pages"], body["page"]) == (7, 3, page)
        seen += [item["accession_number"] for item in body["items"]]
    # suspected by probability, then indeterminate, then the rest by arrival
    assert seen == ["S09", "S07", "S06", "I1", "N1", "P1", "N2"]
    only = web.client.get("/api/worklist?decision=suspected&decision=pending",
                          headers=_bearer(web.tokens["ris"])).json()
    assert [i["accession_number"] for i in only["items"]] == ["S09", "S07", "S06", "P1"]
    assert only["items"][0]["priority"] == "HIGH" and only["items"][0]["threshold"] == 0.5
    bad = web.client.get("/api/worklist?decision=maybe", headers=_bearer(web.tokens["ris"]))
    assert bad.status_code == 400 and "suspected" in bad.json()["detail"]
    assert web.client.get("/api/worklist?page=0", headers=_bearer(web.tokens["ris"])
                          ).status_code == 422


def test_patient_data_only_with_the_phi_permission(web: WebEnv) -> None:
    with web.sessions.begin() as session:
        uid = add_study(session, web.folder, decision=Decision.SUSPECTED, probability=0.8,
                        patient_name="DOE^JANE")
    hidden = web.client.get(f"/api/studies/{uid}", headers=_bearer(web.tokens["ris"])).json()
    shown = web.client.get(f"/api/studies/{uid}", headers=_bearer(web.tokens["ris-phi"])).json()
    assert hidden["patient_name"] is None and hidden["patient_id"] is None
    assert shown["patient_name"] == "DOE^JANE"
    assert shown["revisions"][0]["decision"] == "suspected"
    assert shown["scores"][0]["fold_probabilities"] == [0.8, 0.8, 0.8]
    assert login(web.client, "nophi") == 303
    for path in ("/worklist", f"/studies/{uid}", "/worklist/rows"):
        page = web.client.get(path)
        assert page.status_code == 200 and "DOE^JANE" not in page.text, path
    assert login(web.client, "reader") == 303
    assert "DOE^JANE" in web.client.get(f"/studies/{uid}").text


def test_every_admin_page_is_refused_to_a_radiologist(web: WebEnv) -> None:
    assert login(web.client, "reader") == 303
    for path in ADMIN_PAGES:
        assert web.client.get(path).status_code == 403, path
    page = web.client.get("/worklist")
    csrf = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    refused = web.client.post("/ops/deliveries/redeliver",
                              data={"csrf_token": csrf, "all_failed": "true"})
    assert refused.status_code == 403
    assert web.client.get("/api/worklist").status_code == 200  # the session works for the API


def test_a_post_without_the_csrf_token_is_refused(web: WebEnv) -> None:
    with web.sessions.begin() as session:
        uid = add_study(session, web.folder, decision=Decision.SUSPECTED,
                        delivery=DeliveryState.FAILED, image=False)
    assert login(web.client, "admin") == 303
    for data in ({"all_failed": "true"}, {"all_failed": "true", "csrf_token": "forged"}):
        response = web.client.post("/ops/deliveries/redeliver", data=data)
        assert response.status_code == 403
        assert "CSRF" in response.text
    page = web.client.get(f"/studies/{uid}")
    csrf = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    done = web.client.post("/ops/deliveries/redeliver", follow_redirects=False,
                           data={"csrf_token": csrf, "all_failed": "true"})
    assert done.status_code == 303
    assert "1%20deliveries" in done.headers["location"] or "1 deliveries" in done.headers[
        "location"]
    deliveries = web.client.get("/ops/deliveries").text
    assert "pending" in deliveries


def test_the_login_form_needs_its_csrf_cookie(web: WebEnv) -> None:
    response = web.client.post("/login", data={"username": "admin", "password": PASSWORD,
                                                "csrf_token": "x"})
    assert response.status_code == 403


def test_logins_are_rate_limited(web: WebEnv) -> None:
    for _ in range(3):  # login_attempts=3 in the fixture
        assert login(web.client, "admin", "wrong password!") == 401
    assert login(web.client, "admin") == 429  # even the right password, for now
    assert login(web.client, "reader") == 303  # another account is not locked


def test_a_new_password_ends_existing_sessions(web: WebEnv) -> None:
    assert login(web.client, "reader") == 303
    assert web.client.get("/worklist").status_code == 200
    with web.sessions.begin() as session:
        accounts.set_password(session, "reader", "a brand new password")
    assert web.client.get("/worklist", follow_redirects=False).status_code == 303


def test_views_of_patient_data_are_audited(web: WebEnv) -> None:
    with web.sessions.begin() as session:
        uid = add_study(session, web.folder, decision=Decision.SUSPECTED)
    assert login(web.client, "reader") == 303
    web.client.get(f"/studies/{uid}")
    web.client.get("/worklist")
    web.client.get(f"/api/studies/{uid}", headers=_bearer(web.tokens["ris"]))
    with web.sessions() as session:
        rows = session.execute(select(AuditLog.username, AuditLog.action,
                                      AuditLog.study_instance_uid).order_by(AuditLog.id)).all()
    assert ("reader", "study", uid) in rows
    assert ("reader", "worklist", None) in rows
    assert ("ris", "api_study", uid) in rows
    assert login(web.client, "admin") == 303
    audit_page = web.client.get(f"/ops/audit?study={uid}").text
    assert "reader" in audit_page and "api_study" in audit_page


def test_study_image_is_the_models_own_decoding(web: WebEnv) -> None:
    with web.sessions.begin() as session:
        uid = add_study(session, web.folder, decision=Decision.SUSPECTED)
    assert login(web.client, "reader") == 303
    detail = web.client.get(f"/api/studies/{uid}").json()
    instance_id = detail["images"][0]["instance_id"]
    response = web.client.get(f"/studies/{uid}/images/{instance_id}.png")
    assert response.headers["content-type"] == "image/png"
    shown = np.asarray(Image.open(io.BytesIO(response.content)))
    expected = load_unit_image(web.folder / uid / "0000.dcm")
    assert shown.shape == expected.shape  # 256 x 200: shown at full size
    assert np.array_equal(shown, np.rint(expected * 255.0).astype(np.uint8))
    assert web.client.get(f"/studies/{uid}/images/999999.png").status_code == 404
    page = web.client.get(f"/studies/{uid}").text
    assert page.count('class="fold-bar') == 3  # the fold chart, one bar per fold
    assert "overlay-toggle" not in page  # no result image (heatmap) recorded


def test_metrics_are_exported_in_prometheus_format(web: WebEnv) -> None:
    with web.sessions.begin() as session:
        add_study(session, web.folder, decision=Decision.SUSPECTED, image=False)
    instances_total().labels("refused", "cannot_understand").inc()
    text = web.client.get("/metrics").text
    assert 'triage_instances_total{outcome="refused",reason="cannot_understand"}' in text
    assert 'triage_instances_by_status{status="scored"} 1.0' in text
    assert "triage_queue_depth" in text


def test_the_api_is_documented(web: WebEnv) -> None:
    schema = web.client.get("/api/openapi.json").json()
    assert {"/api/worklist", "/api/studies/{uid}"} <= set(schema["paths"])
    assert any(s.get("scheme") == "bearer"
               for s in schema["components"]["securitySchemes"].values())
    assert "/worklist" not in schema["paths"]  # pages are not API


def test_admin_pages_render_for_an_admin(web: WebEnv) -> None:
    assert login(web.client, "admin") == 303
    for path in ADMIN_PAGES[:-1]:
        assert web.client.get(path).status_code == 200, path
    health = web.client.get("/ops/health").text
    for check in ("database", "node C-ECHO", "live model", "storage", "queue score", "workers"):
        assert check in health, check
    assert "no ensemble.json" in health or "FAILING" in health  # no model in the test folder
    assert "two are needed" in web.client.get("/ops/drift").text  # no rescore run yet
