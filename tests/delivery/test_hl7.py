"""HL7 v2 notification to a RIS: destinations, the ORU^R01 message, ACK rules, and sending
over MLLP to a real listener process (tests/support/mllp_listener.py)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from pathlib import Path

import hl7
import pytest
from pydicom.uid import generate_uid
from sqlalchemy.orm import Session, sessionmaker

from db.migrate import upgrade
from db.models import (
    Decision,
    Delivery,
    DeliveryItem,
    DeliveryState,
    Instance,
    InstanceStatus,
    Priority,
    Report,
    Score,
    Study,
)
from db.session import make_engine, make_session_factory
from tests.support.certs import Pki, make_pki
from tests.support.markers import INTEGRATION
from tests.support.mllp_listener import MllpListener
from tests.support.servers import free_port
from worker.deliver.channels import channel_sender
from worker.deliver.cstore import OutcomeKind
from worker.deliver.delivery import DeliveryOptions, deliver_report
from worker.deliver.destinations import DestinationError, parse_destinations
from worker.deliver.hl7 import (
    Hl7Destination,
    classify_ack,
    deliver_hl7,
    parse_hl7_destination,
    send_hl7,
)
from worker.deliver.hl7_message import (
    NOT_VERIFIED,
    Parties,
    ResultFacts,
    build_oru,
    control_id,
    oru_for_report,
)

MODEL = "model-" + "a" * 10
REPORTED = dt.datetime(2026, 12, 1, 9, 30, tzinfo=dt.UTC)
NOW = dt.datetime(2026, 12, 1, 9, 31, 5, tzinfo=dt.UTC)
NASTY_NAME = "O'Brien|Smith^Ann&Marie~Zoë\\X^^Dr^Jr"  # every delimiter, non-ASCII
NASTY_ACCESSION = "A|1^2&3~4\\5"


# --- Destinations -----------------------------------------------------------------------------


def test_destination_with_every_option() -> None:
    dest = parse_hl7_destination(
        " hl7://ris.example.org:2575;tls;ca=/etc/ris-ca.pem;cert=/c.pem;key=/k.pem;shadow;"
        "app=RIS APP;facility=HOSP_1;timeout=2.5 ")
    assert (dest.host, dest.port, dest.tls, dest.shadow) == ("ris.example.org", 2575, True, True)
    assert (dest.ca_file, dest.cert_file, dest.key_file) == (
        Path("/etc/ris-ca.pem"), Path("/c.pem"), Path("/k.pem"))
    assert (dest.receiving_application, dest.receiving_facility) == ("RIS APP", "HOSP_1")
    assert dest.timeout_s == 2.5
    assert dest.label == "hl7://ris.example.org:2575"
    assert dest.items == (DeliveryItem.HL7,)


def test_destination_defaults_and_ipv6() -> None:
    dest = parse_hl7_destination("HL7://[::1]:2575")
    assert dest == Hl7Destination("::1", 2575)
    assert not dest.tls and not dest.shadow and dest.timeout_s == 30.0
    assert dest.label == "hl7://[::1]:2575"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("PACS@host:104", "not an hl7:// destination"),
        ("hl7://host", "cannot parse"),
        ("hl7://host:0", "1-65535"),
        ("hl7://host:70000", "1-65535"),
        ("hl7://:2575", "cannot parse"),
        ("hl7://host:2575/path", "cannot parse"),
        ("hl7://host:2575;ca=/x.pem", "need the tls option"),
        ("hl7://host:2575;tls;key=/k.pem", "key= needs cert="),
        ("hl7://host:2575;app=R^IS", "HL7 delimiter"),
        ("hl7://host:2575;facility=" + "F" * 21, "longer than 20"),
        ("hl7://host:2575;timeout=0", "timeout must be"),
        ("hl7://host:2575;timeout=soon", "not a number of seconds"),
        ("hl7://host:2575;tls;tls", "given twice"),
        ("hl7://host:2575;compress", "unknown or incomplete option"),
        ("hl7://host:2575;app=", "unknown or incomplete option"),
        ("hl7://" + "h" * 160 + ":2575", "longer than 160"),
    ],
)
def test_malformed_destinations_are_refused(entry: str, message: str) -> None:
    with pytest.raises(DestinationError, match=message):
        parse_hl7_destination(entry)


# --- The message from the database ------------------------------------------------------------


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """A migrated SQLite database."""
    engine = make_engine(f"sqlite:///{tmp_path / 'triage.db'}")
    upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


def add_report(sessions: sessionmaker[Session], *, accession: str | None = "ACC-77",
               patient_id: str | None = "PID-123", patient_name: str = "DOE^JANE^Q^^",
               decision: Decision = Decision.SUSPECTED, priority: Priority = Priority.HIGH,
               threshold: float = 0.42, revisions: int = 1) -> int:
    """A study, its scored source image and ``revisions`` reports; the latest report's id."""
    with sessions.begin() as session:
        study = Study(study_instance_uid=generate_uid(), accession_number=accession,
                      patient_id=patient_id, patient_name=patient_name, study_date="20261130")
        session.add(study)
        session.flush()
        instance = Instance(
            sop_instance_uid=generate_uid(), sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
            study_id=study.id, series_instance_uid=generate_uid(), calling_ae="MODALITY",
            file_path="/nonexistent.dcm", size_bytes=1, transfer_syntax_uid="1.2.840.10008.1.2.1",
            content_sha256="0" * 64, status=InstanceStatus.SCORED)
        session.add(instance)
        session.flush()
        session.add(Score(instance_id=instance.id, model_version=MODEL, content_sha256="0" * 64,
                          probability_mean=0.8765, probability_std=0.0321,
                          fold_probabilities=[0.8765] * 3, fold_votes=3, threshold=threshold,
                          decision=decision, latency_ms=1.0, batch_size=1, device="cpu",
                          worker_host="test"))
        previous: int | None = None
        for revision in range(1, revisions + 1):
            report = Report(
                study_id=study.id, model_version=MODEL, revision=revision, decision=decision,
                priority=priority, probability_mean=0.8765, probability_std=0.0321,
                source_instance_id=instance.id, scored_instance_count=1,
                sr_study_instance_uid=study.study_instance_uid,
                sr_series_instance_uid=generate_uid(), sr_sop_instance_uid=generate_uid(),
                file_path="/nonexistent-sr.dcm", predecessor_id=previous, worker_host="test",
                created_at=REPORTED)
            session.add(report)
            session.flush()
            previous = report.id
        assert previous is not None
        return previous


RIS = parse_hl7_destination("hl7://127.0.0.1:2575;app=RIS;facility=RADIOLOGY")


def build(sessions: sessionmaker[Session], report_id: int,
          destination: Hl7Destination = RIS) -> hl7.Message:
    with sessions() as session:
        text = oru_for_report(session, report_id, destination, sending_application="CXR_TRIAGE",
                              sending_facility="HOSP", now=NOW)
    assert "\n" not in text and text.endswith("\r")
    return hl7.parse(text)


def field(message: hl7.Message, segment: str, number: int, component: int = 1,
          index: int = 1) -> str:
    """A leaf value, unescaped; ``""`` where the value has no such component."""
    try:
        return str(message.extract_field(segment, index, number, 1, component))
    except IndexError:
        return ""


def observation(message: hl7.Message, identifier: str) -> tuple[str, str, str, str]:
    """OBX-2, OBX-5.1, OBX-5.2 and OBX-11 of the observation ``identifier``."""
    for index in range(1, len(message.segments("OBX")) + 1):
        if field(message, "OBX", 3, 1, index) == identifier:
            assert field(message, "OBX", 3, 3, index) == "99CXRT"
            assert field(message, "OBX", 14, 1, index) == "20261201093000+0000"
            return (field(message, "OBX", 2, 1, index), field(message, "OBX", 5, 1, index),
                    field(message, "OBX", 5, 2, index), field(message, "OBX", 11, 1, index))
    raise AssertionError(f"no OBX {identifier}")


def test_oru_carries_every_field(sessions: sessionmaker[Session]) -> None:
    report_id = add_report(sessions)
    message = build(sessions, report_id)
    assert [str(segment[0]) for segment in message] == (
        ["MSH", "PID", "ORC", "OBR", "NTE"] + ["OBX"] * 8)
    with sessions() as session:
        sr_uid = session.get(Report, report_id).sr_sop_instance_uid  # type: ignore[union-attr]
    # MSH
    assert str(message.segment("MSH")[2]) == "^~\\&"
    assert [field(message, "MSH", n) for n in (3, 4, 5, 6, 7)] == [
        "CXR_TRIAGE", "HOSP", "RIS", "RADIOLOGY", "20261201093105+0000"]
    assert [field(message, "MSH", 9, c) for c in (1, 2, 3)] == ["ORU", "R01", "ORU_R01"]
    assert field(message, "MSH", 10) == control_id(sr_uid, RIS.label)
    assert len(field(message, "MSH", 10)) == 20
    assert [field(message, "MSH", n) for n in (11, 12, 18)] == ["P", "2.5.1", "UNICODE UTF-8"]
    # PID: identifiers and the name from the source images (DICOM PN -> XPN)
    assert field(message, "PID", 3) == "PID-123"
    assert [field(message, "PID", 5, c) for c in (1, 2, 3)] == ["DOE", "JANE", "Q"]
    # ORC/OBR: the accession number as filler order number and placer field 1
    assert [field(message, "ORC", n) for n in (1, 2, 3, 5, 9)] == [
        "RE", "", "ACC-77", "CM", "20261201093000+0000"]
    assert [field(message, "OBR", n) for n in (1, 2, 3, 18)] == ["1", "", "ACC-77", "ACC-77"]
    assert [field(message, "OBR", 4, c) for c in (1, 2, 3)] == [
        "CXRTRIAGE", "AI chest radiograph triage", "99CXRT"]
    assert [field(message, "OBR", n) for n in (7, 22, 24, 25)] == [
        "20261130", "20261201093000+0000", "RAD", "F"]
    assert [field(message, "NTE", n) for n in (1, 2, 3)] == ["1", "L", NOT_VERIFIED]
    # OBX: the result
    assert observation(message, "DECISION") == ("CWE", "SUSPECTED", "Suspected finding", "F")
    assert observation(message, "PRIORITY") == ("CWE", "HIGH", "High reading priority", "F")
    assert observation(message, "PROBABILITY") == ("NM", "0.8765", "", "F")
    assert observation(message, "THRESHOLD") == ("NM", "0.4200", "", "F")
    assert observation(message, "PROBABILITY_SD") == ("NM", "0.0321", "", "F")
    assert observation(message, "MODEL_VERSION") == ("ST", MODEL, "", "F")
    assert observation(message, "VERIFICATION") == ("CWE", "UNVERIFIED", NOT_VERIFIED, "F")
    assert observation(message, "SR_UID") == ("ST", sr_uid, "", "F")
    assert [field(message, "OBX", 1, 1, i) for i in range(1, 9)] == [str(i) for i in range(1, 9)]


def test_delimiters_in_values_are_escaped(sessions: sessionmaker[Session]) -> None:
    report_id = add_report(sessions, accession=NASTY_ACCESSION, patient_id="P|1&2",
                           patient_name=NASTY_NAME)
    with sessions() as session:
        text = oru_for_report(session, report_id, RIS, now=NOW)
    assert "A\\F\\1\\S\\2\\T\\3\\R\\4\\E\\5" in text  # HL7 v2.5.1 2.7.4
    assert "Zoë" in text  # UTF-8 (MSH-18), not a \X..\ escape
    message = hl7.parse(text)
    assert len(message.segment("PID")) == 6  # nothing split off by a delimiter in a value
    assert field(message, "OBR", 3) == NASTY_ACCESSION
    assert field(message, "OBR", 18) == NASTY_ACCESSION
    assert field(message, "ORC", 3) == NASTY_ACCESSION
    assert field(message, "PID", 3) == "P|1&2"
    family, given, middle, suffix, prefix = "O'Brien|Smith", "Ann&Marie~Zoë\\X", "", "Jr", "Dr"
    assert [field(message, "PID", 5, c) for c in range(1, 6)] == [
        family, given, middle, suffix, prefix]


def test_a_revision_is_a_corrected_result(sessions: sessionmaker[Session]) -> None:
    first = build(sessions, add_report(sessions))
    revised = build(sessions, add_report(sessions, decision=Decision.NOT_SUSPECTED,
                                         priority=Priority.ROUTINE, revisions=2))
    assert field(first, "OBR", 25) == "F"
    assert field(revised, "OBR", 25) == "C"
    assert observation(revised, "DECISION") == ("CWE", "NOT_SUSPECTED", "No suspected finding",
                                                "C")
    assert observation(revised, "PRIORITY") == ("CWE", "ROUTINE", "Routine", "C")


def test_control_id_is_stable_per_report_and_destination(sessions: sessionmaker[Session]) -> None:
    report_id = add_report(sessions)
    other = parse_hl7_destination("hl7://127.0.0.1:2576")
    ids = {field(build(sessions, report_id), "MSH", 10) for _ in range(2)}
    assert len(ids) == 1
    assert field(build(sessions, report_id, other), "MSH", 10) not in ids
    assert field(build(sessions, add_report(sessions)), "MSH", 10) not in ids


@pytest.mark.parametrize(("accession", "patient_id", "reason"), [
    (None, "PID", "no accession number"), ("  ", "PID", "no accession number"),
    ("ACC", None, "no patient id"),
])
def test_unmatchable_report_fails_without_sending(
        sessions: sessionmaker[Session], accession: str | None, patient_id: str | None,
        reason: str) -> None:
    report_id = add_report(sessions, accession=accession, patient_id=patient_id)
    closed = parse_hl7_destination(f"hl7://127.0.0.1:{free_port()}")
    outcome = deliver_hl7(sessions, report_id, closed)
    assert outcome.kind is OutcomeKind.FAILED
    assert reason in outcome.reason


def test_shadow_destination_is_not_contacted(sessions: sessionmaker[Session]) -> None:
    shadow = parse_hl7_destination(f"hl7://127.0.0.1:{free_port()};shadow")
    outcome = deliver_hl7(sessions, add_report(sessions), shadow)
    assert outcome.kind is OutcomeKind.SHADOW


def test_docs_sample_is_what_the_builder_writes() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs" / "hl7.md"
    sample = docs.read_text(encoding="utf-8").split("<!-- sample:begin -->")[1]
    sample = sample.split("<!-- sample:end -->")[0].strip().removeprefix("```").removesuffix("```")
    facts = ResultFacts(
        report_id=42, accession_number="ACC-0001", patient_id="PAT-000123",
        patient_name="DOE^JANE^Q", study_date="20261130", decision=Decision.SUSPECTED,
        priority=Priority.HIGH, probability_mean=0.8765, probability_std=0.0321, threshold=0.42,
        model_version="3f2a9c1e7b04", corrected=False, reported_at=REPORTED,
        sr_sop_instance_uid="1.2.826.0.1.3680043.8.498.12345678901234567890")
    ris = parse_hl7_destination("hl7://ris.example.org:2575;tls;app=RIS;facility=RADIOLOGY")
    parties = Parties("CXR_TRIAGE", "", ris.receiving_application, ris.receiving_facility)
    message = build_oru(facts, parties, now=NOW,
                        control=control_id(facts.sr_sop_instance_uid, ris.label))
    assert sample.strip().splitlines() == str(message).strip().split("\r")


# --- ACK rules --------------------------------------------------------------------------------


def ack(code: str, *, msa6: str = "", err3: str = "", err1: str = "",
        control: str = "C1") -> hl7.Message:
    text = f"MSH|^~\\&|RIS||CXR||20261201||ACK^R01^ACK|A1|P|2.5.1\rMSA|{code}|{control}||||{msa6}"
    if err3 or err1:
        text += f"\rERR|{err1}||{err3}|E||||Patient DOE^JANE unknown"
    return hl7.parse(text)


@pytest.mark.parametrize(("reply", "kind"), [
    (ack("AA"), OutcomeKind.SENT),
    (ack("CA"), OutcomeKind.SENT),
    (ack("AE", err3="207^Application internal error^HL70357"), OutcomeKind.RETRY),
    (ack("AR", err3="206^Application record locked^HL70357"), OutcomeKind.RETRY),
    (ack("AE", msa6="207"), OutcomeKind.RETRY),  # v2.3 style
    (ack("AE", err1="OBR^1^3^207&internal&HL70357"), OutcomeKind.RETRY),  # v2.4 ELD
    (ack("AR"), OutcomeKind.RETRY),  # rejected for reasons unrelated to the message
    (ack("CE"), OutcomeKind.RETRY),
    (ack("AE"), OutcomeKind.FAILED),  # an error in the message itself
    (ack("CR"), OutcomeKind.FAILED),
    (ack("AE", err3="101^Required field missing^HL70357"), OutcomeKind.FAILED),
    (ack("AR", err3="203^Unsupported version id^HL70357"), OutcomeKind.FAILED),
    (ack("AE", err3="204^Unknown key identifier^HL70357"), OutcomeKind.FAILED),
    (ack("AE", err3="999"), OutcomeKind.FAILED),
    (ack("AA", control="OTHER"), OutcomeKind.FAILED),
    (ack("ZZ"), OutcomeKind.FAILED),
    (hl7.parse("MSH|^~\\&|RIS||CXR||20261201||ACK|A1|P|2.5.1"), OutcomeKind.FAILED),
])
def test_ack_classification(reply: hl7.Message, kind: OutcomeKind) -> None:
    outcome = classify_ack(reply, "C1", "hl7://ris:2575")
    assert outcome.kind is kind, outcome.reason
    assert "DOE" not in outcome.reason  # the peer's free text may hold patient data


def test_ack_reason_names_the_error_codes() -> None:
    reason = classify_ack(ack("AE", err3="207^x^HL70357"), "C1", "hl7://ris:2575").reason
    assert reason == "hl7://ris:2575 replied AE with 207 (APPLICATION_INTERNAL_ERROR)"


def test_accepted_with_errors_keeps_them_as_a_warning() -> None:
    outcome = classify_ack(ack("AA", err3="103^Table value not found^HL70357"), "C1", "r")
    assert outcome.kind is OutcomeKind.SENT
    assert outcome.warning == "r replied AA with 103 (TABLE_VALUE_NOT_FOUND)"
    assert classify_ack(ack("AA"), "C1", "r").warning == ""


# --- Against a real MLLP listener -------------------------------------------------------------


@pytest.fixture
def listener_dir(tmp_path: Path) -> Path:
    return tmp_path / "listener"


def ris_at(port: int, options: str = "") -> Hl7Destination:
    return parse_hl7_destination(f"hl7://127.0.0.1:{port};app=RIS;timeout=10{options}")


@INTEGRATION
def test_accepted_message_arrives_whole(sessions: sessionmaker[Session], listener_dir: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    report_id = add_report(sessions, accession=NASTY_ACCESSION, patient_name=NASTY_NAME)
    with MllpListener(listener_dir, replies="AA") as listener:
        destination = ris_at(listener.port)
        with caplog.at_level(logging.DEBUG):
            outcome = deliver_hl7(sessions, report_id, destination)
        assert outcome.kind is OutcomeKind.SENT, outcome.reason
        (received,) = listener.received()
    message = hl7.parse(received["message"])
    assert field(message, "MSH", 9, 2) == "R01"
    assert field(message, "OBR", 3) == NASTY_ACCESSION
    assert field(message, "PID", 5, 2) == "Ann&Marie~Zoë\\X"
    assert observation(message, "DECISION")[1] == "SUSPECTED"
    assert "DOE" not in caplog.text and "Zoë" not in caplog.text and "PID-123" not in caplog.text


@INTEGRATION
def test_error_then_accepted_on_retry(sessions: sessionmaker[Session],
                                      listener_dir: Path) -> None:
    report_id = add_report(sessions)
    with MllpListener(listener_dir, replies="AE:207,AA") as listener:
        destination = ris_at(listener.port)
        first = deliver_hl7(sessions, report_id, destination)
        second = deliver_hl7(sessions, report_id, destination)
        received = listener.received()
    assert first.kind is OutcomeKind.RETRY, first.reason
    assert "207 (APPLICATION_INTERNAL_ERROR)" in first.reason
    assert "DOE" not in first.reason  # the listener's ERR-8 names the patient
    assert second.kind is OutcomeKind.SENT, second.reason
    assert [r["reply"] for r in received] == ["AE:207", "AA"]
    ids = {field(hl7.parse(r["message"]), "MSH", 10) for r in received}
    assert len(ids) == 1  # the resend carries the same control id


@INTEGRATION
def test_listener_down_then_back(sessions: sessionmaker[Session], listener_dir: Path) -> None:
    report_id = add_report(sessions)
    listener = MllpListener(listener_dir, replies="AA")
    destination = ris_at(listener.port)
    down = deliver_hl7(sessions, report_id, destination)
    assert down.kind is OutcomeKind.RETRY, down.reason
    with listener:
        back = deliver_hl7(sessions, report_id, destination)
        assert back.kind is OutcomeKind.SENT, back.reason
        assert len(listener.received()) == 1
    stopped = deliver_hl7(sessions, report_id, destination)
    assert stopped.kind is OutcomeKind.RETRY, stopped.reason


@INTEGRATION
@pytest.mark.parametrize(("replies", "kind", "reason"), [
    ("DROP", OutcomeKind.RETRY, "closed before a complete ACK"),
    ("SILENT", OutcomeKind.RETRY, "within the timeout"),
    ("AR", OutcomeKind.RETRY, "replied AR"),
    ("AE:101", OutcomeKind.FAILED, "101 (REQUIRED_FIELD_MISSING)"),
    ("AR:203", OutcomeKind.FAILED, "203 (UNSUPPORTED_VERSION_ID)"),
    ("WRONG_ID", OutcomeKind.FAILED, "acknowledged control id 'NOT-YOUR-MESSAGE'"),
    ("GARBAGE", OutcomeKind.FAILED, "not an HL7 ACK"),
])
def test_listener_replies(sessions: sessionmaker[Session], listener_dir: Path, replies: str,
                          kind: OutcomeKind, reason: str) -> None:
    report_id = add_report(sessions)
    with MllpListener(listener_dir, replies=replies) as listener:
        timeout = ";timeout=1" if replies == "SILENT" else ""
        destination = parse_hl7_destination(f"hl7://127.0.0.1:{listener.port}{timeout}")
        outcome = deliver_hl7(sessions, report_id, destination)
        assert len(listener.received()) == 1
    assert outcome.kind is kind, outcome.reason
    assert reason in outcome.reason


@INTEGRATION
def test_delivery_states_through_deliver_report(sessions: sessionmaker[Session],
                                                listener_dir: Path) -> None:
    """TRIAGE_DESTINATIONS with an hl7:// entry, the worker's sender and recorded states:
    down (retrying), an AE 207 (retrying), then accepted (sent)."""
    report_id = add_report(sessions)
    listener = MllpListener(listener_dir, replies="AE:207,AA")
    (destination,) = parse_destinations(f"hl7://127.0.0.1:{listener.port};app=RIS;timeout=10")
    label = destination.label
    with sessions.begin() as session:
        session.add(Delivery(report_id=report_id, destination=label, item=DeliveryItem.HL7))
    options = DeliveryOptions(calling_ae="CXR_TRIAGE", retry_horizon_s=3600.0, backoff_s=1.0,
                              backoff_max_s=10.0, lease_s=60.0)

    def attempt() -> DeliveryState | None:
        result = deliver_report(sessions, report_id, label, destinations={label: destination},
                                send=channel_sender(sessions, options), options=options,
                                item=DeliveryItem.HL7)
        return result.state

    assert attempt() is DeliveryState.RETRYING
    with listener:
        assert attempt() is DeliveryState.RETRYING
        assert attempt() is DeliveryState.SENT
        assert attempt() is DeliveryState.SENT  # final: nothing sent again
        received = listener.received()
    assert [r["reply"] for r in received] == ["AE:207", "AA"]
    assert field(hl7.parse(received[0]["message"]), "MSH", 3) == "CXR_TRIAGE"
    with sessions() as session:
        delivery = session.query(Delivery).one()
        assert (delivery.state, delivery.attempts) == (DeliveryState.SENT, 3)
        assert delivery.sent_at is not None


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@INTEGRATION
def test_tls_with_client_certificate(sessions: sessionmaker[Session], listener_dir: Path,
                                     pki: Pki) -> None:
    report_id = add_report(sessions)
    with MllpListener(listener_dir, tls=(pki.server_cert, pki.server_key),
                      client_ca=pki.ca_cert) as listener:
        destination = ris_at(listener.port, f";tls;ca={pki.ca_cert};cert={pki.client_cert};"
                                            f"key={pki.client_key}")
        outcome = deliver_hl7(sessions, report_id, destination)
        assert outcome.kind is OutcomeKind.SENT, outcome.reason
        assert len(listener.received()) == 1


@INTEGRATION
def test_tls_peer_that_does_not_verify_fails(sessions: sessionmaker[Session],
                                            listener_dir: Path, pki: Pki) -> None:
    report_id = add_report(sessions)
    with MllpListener(listener_dir, tls=(pki.server_cert, pki.server_key)) as listener:
        untrusted = ris_at(listener.port, ";tls")  # the system CAs don't know the test CA
        outcome = deliver_hl7(sessions, report_id, untrusted)
        assert listener.received() == []
    assert outcome.kind is OutcomeKind.FAILED, outcome.reason
    assert "does not verify" in outcome.reason


def test_unreadable_tls_material_fails(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    destination = parse_hl7_destination(
        f"hl7://127.0.0.1:{free_port()};tls;ca={tmp_path / 'missing.pem'}")
    outcome = deliver_hl7(sessions, add_report(sessions), destination)
    assert outcome.kind is OutcomeKind.FAILED
    assert "cannot load TLS material" in outcome.reason


def test_send_refuses_text_that_is_not_hl7() -> None:
    from worker.deliver.hl7 import Hl7Error

    with pytest.raises(Hl7Error, match="not HL7"):
        send_hl7("hello", parse_hl7_destination(f"hl7://127.0.0.1:{free_port()}"))
