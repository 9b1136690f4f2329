"""The ORU^R01 (HL7 v2.5.1) result message of a triage report, built with python-hl7.

``oru_for_report`` reads the report, its study, the source instance's score (for the
threshold) and builds the message; ``build_oru`` does the building from plain facts. The
mapping of every field is in docs/hl7.md. Decisions:

* MSH-10, the control id, is stable per report and destination (a hash of the SR's SOP
  Instance UID and the destination label): a resend after a lost ACK, or a ``redeliver``,
  carries the same id, so the RIS can recognise the duplicate.
* The result status (OBR-25, OBX-11) is ``F`` for a first report and ``C`` (corrected) for one
  that supersedes an earlier report of the study (a later revision or a new model version).
* Values are escaped by the library (``\\F\\``, ``\\S\\``, ...); characters outside ASCII are sent
  as UTF-8 (MSH-18 ``UNICODE UTF-8``), not as ``\\X..\\`` escapes.

Patient data go into the message (the RIS needs them to file the result) but never into logs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import hl7
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Decision, ModelVersion, Priority, Report, Score, Study, utcnow
from worker.errors import WorkerError

if TYPE_CHECKING:
    from worker.deliver.hl7 import Hl7Destination

SEPARATORS = "\r|~^&"  # segment, field, repetition, component, subcomponent
ESCAPE = "\\"
ENCODING_CHARACTERS = "^~\\&"  # MSH-2: component, repetition, escape, subcomponent
VERSION = "2.5.1"
PROCESSING_ID = "P"  # production (HL7 Table 0103)
CHARACTER_SET = "UNICODE UTF-8"  # HL7 Table 0211
CODING_SYSTEM = "99CXRT"  # a local coding system (HL7 Table 0396: 99zzz)
CONTROL_ID_LENGTH = 20  # MSH-10 is ST(20) in v2.5.1
NOT_VERIFIED = "Not verified: AI triage aid, not for diagnostic use"
SERVICE = ("CXRTRIAGE", "AI chest radiograph triage", CODING_SYSTEM)  # OBR-4

DECISION_TEXT = {
    Decision.SUSPECTED: "Suspected finding",
    Decision.NOT_SUSPECTED: "No suspected finding",
    Decision.INDETERMINATE: "Indeterminate (the folds disagree)",
    Decision.NOT_ASSESSABLE: "Not assessable: image unlike the training data",
}
PRIORITY_TEXT = {Priority.HIGH: "High reading priority", Priority.ROUTINE: "Routine"}

Field = str | tuple[str, ...]  # one value, or its components
_DATE = re.compile(r"[0-9]{8}")


class Hl7MessageError(WorkerError):
    """A report can't be expressed as an ORU^R01 (e.g. its study has no accession number)."""


@dataclass(frozen=True)
class ResultFacts:
    """What the ORU^R01 of one report says, read from the database."""

    report_id: int
    accession_number: str
    patient_id: str
    patient_name: str  # DICOM PN: family^given^middle^prefix^suffix
    study_date: str  # YYYYMMDD, or "" when unknown
    decision: Decision
    priority: Priority
    probability_mean: float
    probability_std: float
    threshold: float
    model_version: str
    corrected: bool  # supersedes an earlier report of the study
    reported_at: dt.datetime
    sr_sop_instance_uid: str


@dataclass(frozen=True)
class Parties:
    """MSH-3..6: who sends the message and who receives it."""

    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str


def control_id(sr_sop_instance_uid: str, destination_label: str) -> str:
    """MSH-10: stable per report and destination, 20 upper-case hex digits."""
    digest = hashlib.sha256(f"{sr_sop_instance_uid}|{destination_label}".encode())
    return digest.hexdigest()[:CONTROL_ID_LENGTH].upper()


def hl7_timestamp(moment: dt.datetime) -> str:
    """A DTM in UTC with its offset, e.g. ``20261201093000+0000``."""
    return moment.astimezone(dt.UTC).strftime("%Y%m%d%H%M%S+0000")


def escape(message: hl7.Message, value: str) -> str:
    """Escape HL7 delimiters with python-hl7; keep non-ASCII characters (sent as UTF-8)."""
    out: list[str] = []
    run: list[str] = []
    for ch in value:
        if ord(ch) > 0x7E:
            out.append(message.escape("".join(run)) if run else "")
            out.append(ch)
            run = []
        else:
            run.append(ch)
    if run:
        out.append(message.escape("".join(run)))
    return "".join(out)


def _fill(message: hl7.Message, segment: hl7.Segment, fields: Mapping[int, Field]) -> None:
    """Assign ``fields`` (number: value, tuples are components), escaped, to ``segment``."""
    for number, field in sorted(fields.items()):
        if isinstance(field, tuple):
            for component, value in enumerate(field, start=1):
                segment.assign_field(escape(message, value), number, 1, component)
        else:
            segment.assign_field(escape(message, field), number)


def _segment(message: hl7.Message, name: str, fields: Mapping[int, Field]) -> hl7.Segment:
    segment = message.create_segment([message.create_field([name])])
    _fill(message, segment, fields)
    return segment


def _msh(message: hl7.Message, parties: Parties, control: str, now: dt.datetime) -> hl7.Segment:
    segment = message.create_segment([message.create_field(["MSH"])])
    segment.assign_field(SEPARATORS[1], 1)  # MSH-1 and MSH-2 are the delimiters themselves
    segment.assign_field(ENCODING_CHARACTERS, 2)
    _fill(message, segment, {
        3: parties.sending_application, 4: parties.sending_facility,
        5: parties.receiving_application, 6: parties.receiving_facility,
        7: hl7_timestamp(now), 9: ("ORU", "R01", "ORU_R01"), 10: control, 11: PROCESSING_ID,
        12: VERSION, 18: CHARACTER_SET,
    })
    return segment


def person_name(dicom_pn: str) -> tuple[str, ...]:
    """XPN (family^given^middle^suffix^prefix) from a DICOM PN's alphabetic group
    (family^given^middle^prefix^suffix, PS3.5 6.2.1)."""
    parts = (dicom_pn.split("=")[0].split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (part.strip() for part in parts)
    components = (family, given, middle, suffix, prefix)
    last = max((i for i, c in enumerate(components) if c), default=0)
    return components[: last + 1]


def _observations(message: hl7.Message, facts: ResultFacts, status: str,
                  when: str) -> list[hl7.Segment]:
    """OBX 1..7: decision, priority, probability, threshold, spread, model, verification."""
    def code(identifier: str, text: str) -> tuple[str, str, str]:
        return (identifier, text, CODING_SYSTEM)

    rows: list[tuple[str, tuple[str, str, str], Field]] = [
        ("CWE", code("DECISION", "AI triage decision"),
         code(facts.decision.value.upper(), DECISION_TEXT[facts.decision])),
        ("CWE", code("PRIORITY", "AI triage reading priority"),
         code(facts.priority.value.upper(), PRIORITY_TEXT[facts.priority])),
        ("NM", code("PROBABILITY", "Probability, ensemble mean"), f"{facts.probability_mean:.4f}"),
        ("NM", code("THRESHOLD", "Decision threshold of the model"), f"{facts.threshold:.4f}"),
        ("NM", code("PROBABILITY_SD", "Probability spread across folds (SD)"),
         f"{facts.probability_std:.4f}"),
        ("ST", code("MODEL_VERSION", "Model version"), facts.model_version),
        ("CWE", code("VERIFICATION", "Verification"), code("UNVERIFIED", NOT_VERIFIED)),
        ("ST", code("SR_UID", "Triage SR SOP Instance UID"), facts.sr_sop_instance_uid),
    ]
    return [
        _segment(message, "OBX", {1: str(number), 2: value_type, 3: identifier, 5: value,
                                  11: status, 14: when})
        for number, (value_type, identifier, value) in enumerate(rows, start=1)
    ]


def build_oru(facts: ResultFacts, parties: Parties, *, control: str,
              now: dt.datetime) -> hl7.Message:
    """The ORU^R01 v2.5.1 of ``facts`` (MSH, PID, ORC, OBR, NTE, OBX...; docs/hl7.md)."""
    message = hl7.Message(separators=SEPARATORS, esc=ESCAPE)
    status = "C" if facts.corrected else "F"
    when = hl7_timestamp(facts.reported_at)
    accession = facts.accession_number
    observed = facts.study_date if _DATE.fullmatch(facts.study_date) else when
    segments = [
        _msh(message, parties, control, now),
        _segment(message, "PID", {1: "1", 3: facts.patient_id,
                                  5: person_name(facts.patient_name)}),
        _segment(message, "ORC", {1: "RE", 3: accession, 5: "CM", 9: when}),
        _segment(message, "OBR", {1: "1", 3: accession, 4: SERVICE, 7: observed, 18: accession,
                                  22: when, 24: "RAD", 25: status}),
        _segment(message, "NTE", {1: "1", 2: "L", 3: NOT_VERIFIED}),
        *_observations(message, facts, status, when),
    ]
    return message.create_message(segments)


def _threshold(session: Session, report: Report) -> float:
    """The threshold the source image was scored with; else the model store's."""
    scored = session.scalars(
        select(Score.threshold)
        .where(Score.instance_id == report.source_instance_id,
               Score.model_version == report.model_version)
        .order_by(Score.created_at.desc(), Score.id.desc()).limit(1)).first()
    if scored is not None:
        return float(scored)
    stored = session.scalars(select(ModelVersion.threshold)
                             .where(ModelVersion.version == report.model_version)).first()
    if stored is None:
        raise Hl7MessageError(f"report {report.id}: no score or model record gives the threshold "
                              f"of model {report.model_version}")
    return float(stored)


def result_facts(session: Session, report_id: int) -> ResultFacts:
    """Read what the message of report ``report_id`` says; ``Hl7MessageError`` if it can't."""
    report = session.get(Report, report_id)
    if report is None:
        raise Hl7MessageError(f"report {report_id} does not exist")
    study = session.get(Study, report.study_id)
    if study is None:
        raise Hl7MessageError(f"report {report_id}: its study is missing")
    accession = (study.accession_number or "").strip()
    patient_id = (study.patient_id or "").strip()
    if not accession:
        raise Hl7MessageError(f"report {report_id}: the study has no accession number, so the "
                              "RIS cannot match the result to an order; not sent")
    if not patient_id:
        raise Hl7MessageError(f"report {report_id}: the study has no patient id (PID-3 is "
                              "required); not sent")
    return ResultFacts(
        report_id=report.id, accession_number=accession, patient_id=patient_id,
        patient_name=study.patient_name or "",
        study_date=(study.study_date or "").strip(), decision=Decision(report.decision),
        priority=Priority(report.priority), probability_mean=report.probability_mean,
        probability_std=report.probability_std, threshold=_threshold(session, report),
        model_version=report.model_version, corrected=report.predecessor_id is not None,
        reported_at=report.created_at, sr_sop_instance_uid=report.sr_sop_instance_uid,
    )


def oru_for_report(session: Session, report_id: int, destination: Hl7Destination, *,
                   sending_application: str = "CXR_TRIAGE", sending_facility: str = "",
                   now: dt.datetime | None = None) -> str:
    """The ORU^R01 of report ``report_id`` for ``destination``, segments ended by CR."""
    facts = result_facts(session, report_id)
    parties = Parties(sending_application, sending_facility,
                      destination.receiving_application, destination.receiving_facility)
    message = build_oru(facts, parties, control=control_id(facts.sr_sop_instance_uid,
                                                           destination.label),
                        now=now or utcnow())
    return str(message)
