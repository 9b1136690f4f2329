"""Report and delivery rows for tests that start after a delivery was sent."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from sqlalchemy.orm import Session, sessionmaker

from db.models import (
    Decision,
    Delivery,
    DeliveryItem,
    DeliveryState,
    Instance,
    Priority,
    Report,
    Study,
    utcnow,
)


def add_sent_delivery(sessions: sessionmaker[Session], sr_path: Path, destination: str, *,
                      state: DeliveryState = DeliveryState.SENT) -> int:
    """Record a study, its image, a report whose SR is ``sr_path`` and a delivery of that SR to
    ``destination`` (``sent``, or ``state``); the delivery's id."""
    sr = pydicom.dcmread(sr_path, stop_before_pixels=True)
    with sessions.begin() as session:
        study = Study(study_instance_uid=generate_uid())
        session.add(study)
        session.flush()
        image = Instance(sop_instance_uid=generate_uid(), sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
                         study_id=study.id, series_instance_uid=generate_uid(), calling_ae="CR1",
                         file_path="unused.dcm", size_bytes=1,
                         transfer_syntax_uid="1.2.840.10008.1.2.1", content_sha256="0" * 64)
        session.add(image)
        session.flush()
        report = Report(study_id=study.id, model_version="v1", revision=1,
                        decision=Decision.SUSPECTED, priority=Priority.HIGH, probability_mean=0.9,
                        probability_std=0.01, source_instance_id=image.id,
                        scored_instance_count=1, sr_study_instance_uid=study.study_instance_uid,
                        sr_series_instance_uid=str(sr.SeriesInstanceUID),
                        sr_sop_instance_uid=str(sr.SOPInstanceUID), file_path=str(sr_path),
                        worker_host="test")
        session.add(report)
        session.flush()
        sent = state is DeliveryState.SENT
        delivery = Delivery(report_id=report.id, destination=destination, item=DeliveryItem.SR,
                            state=state, attempts=int(sent), sent_at=utcnow() if sent else None)
        session.add(delivery)
        session.flush()
        return delivery.id
