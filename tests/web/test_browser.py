"""The web app in headless Chromium against real processes.

Redis, the node, a worker (tiny random-weight ensemble with threshold 0: every image is
suspected) and ``cxr-triage web`` run as subprocesses; storescu is the modality and Orthanc
the PACS. Orthanc starts only after the first delivery failed, so the admin's redelivery is
what brings the SR there. The tests run in order on one stack.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from db.migrate import upgrade
from db.models import Decision, Role, utcnow
from db.session import make_engine, make_session_factory
from tests.support import dicomgen
from tests.support.dcmtk import storescu
from tests.support.node import NodeProcess
from tests.support.orthanc import OrthancServer
from tests.support.servers import RedisServer
from tests.web.browser import WebProcess, chromium, log_in, row_accessions
from tests.web.conftest import PASSWORD
from tests.web.seed import add_study
from tests.worker.conftest import build_ensemble
from tests.worker.processes import WorkerProcess, query, wait_until
from web import accounts

CALLING_AE = "CXR_TRIAGE"
ADMIN_PAGES = ("/ops/deliveries", "/ops/drift", "/ops/health", "/ops/audit")


@dataclass
class Stack:
    db_url: str
    folder: Path
    redis: RedisServer
    node: NodeProcess
    orthanc: OrthancServer
    worker: WorkerProcess
    web: WebProcess
    driver: webdriver.Chrome
    live_uid: str = ""

    def logs(self) -> str:
        return "\n".join([self.node.log()[-2000:], self.worker.log()[-4000:],
                          self.web.log()[-3000:]])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("web-browser")
    db_url = f"sqlite:///{folder / 'triage.db'}"
    engine = make_engine(db_url)
    upgrade(engine)
    with make_session_factory(engine).begin() as session:
        for name, role, phi in (("admin", Role.ADMIN, True), ("nophi", Role.RADIOLOGIST, False)):
            accounts.add_user(session, name, PASSWORD, role, can_view_phi=phi)
        earlier = utcnow() - dt.timedelta(hours=2)
        add_study(session, folder / "seed", decision=Decision.NOT_SUSPECTED, probability=0.1,
                  accession="NORMAL1", received=earlier)
        add_study(session, folder / "seed", decision=Decision.SUSPECTED, probability=0.8,
                  accession="SUSP1", received=earlier + dt.timedelta(minutes=5))
    engine.dispose()
    redis = RedisServer(folder / "redis").start()
    node = NodeProcess(folder / "node", db_url, redis.url).start()
    orthanc = OrthancServer(folder / "orthanc", allowed_callers=(CALLING_AE,))  # started later
    model = build_ensemble(folder / "model")
    worker = WorkerProcess(folder / "worker", db_url=db_url, broker_url=redis.url,
                           model_dir=model, storage_dir=node.storage,
                           destinations=f"ORTHANC@127.0.0.1:{orthanc.dicom_port}",
                           env={"TRIAGE_CALLING_AE": CALLING_AE,
                                "TRIAGE_DELIVERY_RETRY_HORIZON_S": "0",
                                "TRIAGE_RESULT_IMAGE": "flagged"})
    web = None
    driver = None
    try:
        worker.start()
        web = WebProcess(folder / "web", {
            "TRIAGE_DB_URL": db_url, "TRIAGE_BROKER_URL": redis.url,
            "TRIAGE_WEB_REFRESH_S": "1", "TRIAGE_MODEL_DIR": str(model),
            "TRIAGE_PORT": str(node.port), "TRIAGE_STORAGE_DIR": str(node.storage)}).start()
        driver = chromium()
        yield Stack(db_url, folder, redis, node, orthanc, worker, web, driver)
    finally:
        if driver is not None:
            driver.quit()
        if web is not None:
            web.stop()
        worker.stop()
        node.stop()
        orthanc.stop()
        redis.kill()


def _wait(stack: Stack, predicate: object, timeout: float, what: str) -> None:
    try:
        # A row the page's refresh replaced mid-check is stale: look again next poll.
        WebDriverWait(stack.driver, timeout, poll_frequency=0.5,
                      ignored_exceptions=(StaleElementReferenceException,)
                      ).until(predicate)  # type: ignore[arg-type]
    except Exception as exc:
        raise AssertionError(f"{what}:\n{stack.logs()}") from exc


def test_login_shows_a_suspected_study_above_a_normal_one(stack: Stack) -> None:
    log_in(stack.driver, stack.web.url, "admin")
    rows = row_accessions(stack.driver)
    assert rows.index("SUSP1") < rows.index("NORMAL1"), rows
    assert "Deliveries" in stack.driver.find_element(By.TAG_NAME, "nav").text


def test_a_study_sent_with_storescu_appears_without_a_reload(stack: Stack) -> None:
    driver = stack.driver
    driver.get(f"{stack.web.url}/worklist")
    driver.execute_script("window.loadedOnce = 'yes';")  # gone if the page reloads
    files = dicomgen.write_series(stack.folder / "live", 1, accession="LIVE1")
    stack.live_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    sent = storescu(stack.node.port, files)
    assert len(sent.succeeded) == 1, sent.output[-2000:]

    def suspected_on_top(d: webdriver.Chrome) -> bool:
        rows = d.find_elements(By.CSS_SELECTOR, f'#worklist-rows tr[data-uid="{stack.live_uid}"]')
        return bool(rows) and "decision-suspected" in (rows[0].get_attribute("class") or "")

    _wait(stack, suspected_on_top, 180, "the new study to show as suspected")
    assert driver.execute_script("return window.loadedOnce;") == "yes"
    rows = row_accessions(driver)
    assert rows.index("LIVE1") < rows.index("NORMAL1")


def test_the_study_page_shows_the_image_and_the_fold_chart(stack: Stack) -> None:
    driver = stack.driver
    driver.get(f"{stack.web.url}/worklist")
    driver.find_element(By.LINK_TEXT, "LIVE1").click()
    _wait(stack, lambda d: d.execute_script(
        "const i = document.querySelector('img.radiograph');"
        "return i && i.complete && i.naturalWidth > 0;"), 60, "the image to load")
    width = driver.execute_script("return document.querySelector('img.radiograph').naturalWidth")
    assert width == 200  # dicomgen's 200 columns, through the model's own loader
    bars = driver.find_elements(By.CSS_SELECTOR, "svg.fold-chart rect.fold-bar")
    assert len(bars) == 2  # the tiny ensemble's two folds
    chart = driver.find_element(By.CSS_SELECTOR, "svg.fold-chart")
    assert chart.size["width"] > 0 and chart.size["height"] > 0
    assert driver.find_element(By.ID, "decision").text == "suspected"
    assert "TESTPATIENT^SECRET" in driver.find_element(By.ID, "patient-name").text


def test_the_heatmap_overlay_toggles_over_the_image(stack: Stack) -> None:
    driver = stack.driver
    page = f"{stack.web.url}/studies/{stack.live_uid}"

    def toggle_shown(d: webdriver.Chrome) -> bool:  # once the report with its image is written
        d.get(page)
        return bool(d.find_elements(By.CSS_SELECTOR, ".overlay-toggle"))

    _wait(stack, toggle_shown, 90, "the heatmap toggle (the report's result image)")
    heatmap = driver.find_element(By.CSS_SELECTOR, "img.heatmap")
    radiograph = driver.find_element(By.CSS_SELECTOR, "img.radiograph")
    assert not heatmap.is_displayed()
    driver.find_element(By.CSS_SELECTOR, ".overlay-toggle").click()
    _wait(stack, lambda d: d.execute_script(
        "const h = document.querySelector('img.heatmap');"
        "return !h.hidden && h.complete && h.naturalWidth > 0;"), 30, "the overlay to load")
    assert heatmap.is_displayed()
    assert heatmap.size == radiograph.size  # laid exactly over the radiograph
    assert driver.execute_script(  # the result image is 1024 px on its long side
        "const h = document.querySelector('img.heatmap');"
        "return Math.max(h.naturalWidth, h.naturalHeight);") == 1024
    driver.find_element(By.CSS_SELECTOR, ".overlay-toggle").click()
    assert not heatmap.is_displayed()


def test_an_admin_redelivers_a_failed_delivery_and_orthanc_receives_it(stack: Stack) -> None:
    wait_until(lambda: [r[0] for r in query(stack.db_url, "SELECT state FROM delivery")]
               == ["failed", "failed"], 120, "the SR's and the result image's deliveries to "
               "fail (Orthanc is down)", stack.logs)
    stack.orthanc.start()
    driver = stack.driver
    driver.get(f"{stack.web.url}/ops/deliveries")
    first = driver.find_element(By.CSS_SELECTOR, "#deliveries tbody tr")
    assert "failed" in (first.get_attribute("class") or "")  # failures first
    first.find_element(By.CSS_SELECTOR, "button.redeliver").click()
    _wait(stack, lambda d: "queued again" in d.find_element(By.ID, "message").text, 30,
          "the redeliver confirmation")
    wait_until(lambda: len(stack.orthanc.instances()) == 2, 120,
               "Orthanc to receive the SR and the result image", stack.logs)
    wait_until(lambda: [r[0] for r in query(stack.db_url, "SELECT state FROM delivery")]
               == ["sent", "sent"], 60, "the deliveries to be recorded as sent", stack.logs)


def test_a_post_without_the_csrf_token_is_refused(stack: Stack) -> None:
    driver = stack.driver
    driver.get(f"{stack.web.url}/ops/deliveries")
    status = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('/ops/deliveries/redeliver', {method: 'POST', credentials: 'same-origin',"
        " headers: {'Content-Type': 'application/x-www-form-urlencoded'},"
        " body: 'all_failed=true'}).then(r => done(r.status));")
    assert status == 403


def test_a_radiologist_without_phi_sees_no_names_and_no_admin_page(stack: Stack) -> None:
    driver = stack.driver
    log_in(driver, stack.web.url, "nophi")
    assert "LIVE1" in row_accessions(driver)
    for page in (f"{stack.web.url}/worklist", f"{stack.web.url}/studies/{stack.live_uid}"):
        driver.get(page)
        assert "TESTPATIENT" not in driver.page_source and "DOE^JANE" not in driver.page_source
    assert "Deliveries" not in driver.find_element(By.TAG_NAME, "nav").text
    for path in ADMIN_PAGES:
        driver.get(stack.web.url + path)
        assert driver.find_element(By.TAG_NAME, "h1").text == "Refused", path


def test_the_audit_log_records_the_views(stack: Stack) -> None:
    log_in(stack.driver, stack.web.url, "admin")
    stack.driver.get(f"{stack.web.url}/ops/audit?study={stack.live_uid}")
    rows = [row.text for row in stack.driver.find_elements(By.CSS_SELECTOR, "#audit tbody tr")]
    assert any("admin" in r and " study " in f" {r} " for r in rows), rows
    assert any("nophi" in r and " study " in f" {r} " for r in rows), rows
    assert any("image" in r for r in rows), rows
