"""Studies with scores, reports and deliveries written straight into the database."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy.orm import Session

from db.models import (
    Decision,
    Delivery,
    DeliveryState,
    Instance,
    InstanceStatus,
    Priority,
    Report,
    Score,
    Study,
    utcnow,
)
from tests.support import dicomgen

MODEL = "m" * 12


def add_study(session: Session, folder: Path, *, decision: Decision | None,
              probability: float = 0.5, received: dt.datetime | None = None,
              accession: str = "ACC", patient_name: str = "DOE^JANE",
              delivery: DeliveryState | None = None, folds: int = 3,
              image: bool = True) -> str:
    """One study with one image (a real DICOM file when ``image``), scored and reported as
    ``decision`` (``None``: not reported yet). Returns its Study Instance UID."""
    when = received or utcnow()
    uid = generate_uid()
    path = folder / f"{uid}.dcm"
    if image:
        dicomgen.write_series(folder / uid, 1, study_uid=uid, accession=accession)
        path = folder / uid / "0000.dcm"
        sop = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    else:
        sop = generate_uid()
    study = Study(study_instance_uid=uid, accession_number=accession, patient_id="PID-1",
                  patient_name=patient_name, study_date="20261201",
                  first_received_at=when, last_received_at=when)
    session.add(study)
    session.flush()
    instance = Instance(
        sop_instance_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.1", study_id=study.id,
        series_instance_uid=generate_uid(), calling_ae="STATION1", received_at=when,
        file_path=str(path), size_bytes=1, transfer_syntax_uid="1.2.840.10008.1.2.1",
        content_sha256="0" * 64, modality="CR", body_part_examined="CHEST", view_position="PA",
        status=InstanceStatus.SCORED if decision else InstanceStatus.QUEUED)
    session.add(instance)
    session.flush()
    if decision is None:
        return uid
    session.add(Score(instance_id=instance.id, model_version=MODEL, content_sha256="0" * 64,
                      probability_mean=probability, probability_std=0.05,
                      fold_probabilities=[probability] * folds, fold_votes=folds,
                      threshold=0.5, decision=decision, latency_ms=1.0, batch_size=1,
                      device="cpu", worker_host="test"))
    report = Report(
        study_id=study.id, model_version=MODEL, revision=1, decision=decision,
        priority=Priority.HIGH if decision == Decision.SUSPECTED else Priority.ROUTINE,
        probability_mean=probability, probability_std=0.05, source_instance_id=instance.id,
        scored_instance_count=1, sr_study_instance_uid=uid, sr_series_instance_uid=generate_uid(),
        sr_sop_instance_uid=generate_uid(), file_path=str(folder / "sr.dcm"), worker_host="test")
    session.add(report)
    session.flush()
    if delivery is not None:
        session.add(Delivery(report_id=report.id, destination="PACS@127.0.0.1:1",
                             state=delivery, attempts=1,
                             last_error="refused" if delivery == DeliveryState.FAILED else None))
    return uid
