"""TRIAGE_LOG_FORMAT: JSON lines with study and task ids; both formats free of PHI."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from common.config import SettingError
from common.logs import JsonFormatter, LogSettings, configure_logging
from common.queues import BrokerSettings, make_celery
from cxr_triage.cli import main
from dicom_node.handlers import LOGGER as HANDLER_LOGGER
from tests.support import dicomgen


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("cxr.test")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_lift_the_ids_our_messages_name(captured: io.StringIO) -> None:
    logger = logging.getLogger("cxr.test")
    logger.info("study %s: built triage SR %s", "1.2.826.0.1.99", "1.2.3.4")
    logger.warning("instance %d: cannot decode (%s)", 42, "ValueError")
    logger.info("report %d -> ORTHANC: sent", 7)
    first, second, third = _lines(captured)
    assert first["study_uid"] == "1.2.826.0.1.99" and first["level"] == "INFO"
    assert first["message"] == "study 1.2.826.0.1.99: built triage SR 1.2.3.4"
    assert second["instance_id"] == 42 and second["level"] == "WARNING"
    assert third["report_id"] == 7 and "task_id" not in third


def test_json_lines_carry_the_celery_task_id(captured: io.StringIO) -> None:
    app = make_celery(BrokerSettings(url="memory://"))

    @app.task(name="cxr.test.task")
    def task(instance_id: int) -> None:
        logging.getLogger("cxr.test").info("instance %d: scored", instance_id)

    task.apply(args=[5], task_id="task-abc-123")
    (entry,) = _lines(captured)
    assert entry["task_id"] == "task-abc-123" and entry["task"] == "cxr.test.task"
    assert entry["instance_id"] == 5


def test_unknown_format_is_a_setting_error(capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingError, match="TRIAGE_LOG_FORMAT"):
        LogSettings.from_env({"TRIAGE_LOG_FORMAT": "xml"})
    monkeypatch.setenv("TRIAGE_LOG_FORMAT", "xml")
    assert main(["db", "current"]) == 2
    assert capsys.readouterr().err.startswith("cxr-triage db: error: TRIAGE_LOG_FORMAT")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_no_phi_in_either_format_when_an_association_is_refused(
    fmt: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """The node's own log lines about a peer name AE titles and UIDs, never the patient."""
    configure_logging("DEBUG", LogSettings(format=fmt))
    try:
        ds = dicomgen.radiograph()
        HANDLER_LOGGER.warning("association from %s refused: %s", "127.0.0.1", "not allowed")
        logging.getLogger("pynetdicom").debug("dataset: %s", ds)  # pynetdicom stays at WARNING
        logging.getLogger("worker.test").info("study %s: scored", ds.StudyInstanceUID)
    finally:
        configure_logging("INFO", LogSettings())
    err = capfd.readouterr().err
    assert "refused" in err and str(ds.StudyInstanceUID) in err
    assert dicomgen.PATIENT_NAME not in err and dicomgen.PATIENT_ID not in err
    if fmt == "json":
        assert all(json.loads(line) for line in err.splitlines())
