"""What the health page and ``/readyz`` check: node, broker, workers, model, storage."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from common.queues import QUEUE_DELIVER, QUEUE_SCORE, BrokerSettings, make_celery
from dicom_node.settings import NodeSettings

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    """One line of the health page."""

    name: str
    ok: bool
    detail: str


def database_ready(engine: Engine) -> Check:
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error means "not ready"
        return Check("database", False, type(exc).__name__)
    return Check("database", True, engine.dialect.name)


def broker_ready(broker: BrokerSettings) -> Check:
    try:
        with make_celery(broker).connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=broker.connect_timeout_s)
    except Exception as exc:  # kombu raises many types; all mean "not ready"
        return Check("broker", False, type(exc).__name__)
    return Check("broker", True, broker.url.split("@")[-1])


def queue_depths(broker: BrokerSettings) -> dict[str, int | None]:
    """Messages waiting on each queue (``None``: the broker did not answer)."""
    depths: dict[str, int | None] = {}
    try:
        with make_celery(broker).connection_for_write() as connection:
            channel = connection.default_channel
            for name in (QUEUE_SCORE, QUEUE_DELIVER):
                depths[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
    except Exception as exc:  # a queue never declared, or no broker
        LOGGER.warning("queue depth: %s", type(exc).__name__)
    return {name: depths.get(name) for name in (QUEUE_SCORE, QUEUE_DELIVER)}


def workers_answering(broker: BrokerSettings, timeout_s: float = 1.5) -> list[str]:
    """Worker names that answered a ping (as ``cxr-triage ping``)."""
    try:
        replies = make_celery(broker).control.ping(timeout=timeout_s) or []
    except Exception as exc:  # no broker
        LOGGER.warning("worker ping: %s", type(exc).__name__)
        return []
    return sorted(name for reply in replies for name in reply)


def node_echo(node: NodeSettings, timeout_s: float = 3.0) -> Check:
    """A DICOM C-ECHO (PS3.7 9.1.5) to the node; a TLS listener needs a TLS peer."""
    from pynetdicom import AE

    if node.tls.cert is not None:
        return Check("node C-ECHO", False, "the node listens with TLS; echo it with echoscu")
    calling = node.healthcheck_aet or "CXR_TRIAGE_WEB"  # admitted for C-ECHO from loopback
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.add_requested_context("1.2.840.10008.1.1")
    host = "127.0.0.1" if node.host in ("0.0.0.0", "") else node.host
    assoc = ae.associate(host, node.port, ae_title=node.ae_title)
    if not assoc.is_established:
        return Check("node C-ECHO", False, f"no association with {node.ae_title}@{host}:"
                     f"{node.port} (down, or {calling} not allowed)")
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    ok = getattr(status, "Status", None) == 0
    return Check("node C-ECHO", ok, f"{node.ae_title}@{host}:{node.port}")


def live_model(session: Session, model_dir: Path) -> Check:
    """The live model version: the model registry's (``db.registry.live_model``), else the
    manifest in ``TRIAGE_MODEL_DIR`` while nothing was ever promoted."""
    from sqlalchemy.exc import SQLAlchemyError

    from db.registry import live_model as registry_live_model
    from training.manifest import load_manifest

    try:
        with session.begin_nested():
            live = registry_live_model(session)
    except SQLAlchemyError:
        live = None  # a schema before the registry: the manifest says it
    if live is not None:
        return Check("live model", True, f"{live.version} {live.label} (model registry)")
    try:
        manifest = load_manifest(model_dir, verify_hashes=False)
    except Exception as exc:  # TrainingError or a broken file
        return Check("live model", False, str(exc))
    return Check("live model", True, f"{manifest.model_version} ({model_dir})")


def storage_free(directory: Path, minimum: int) -> Check:
    try:
        usage = shutil.disk_usage(directory)
    except OSError as exc:
        return Check("storage", False, f"{directory}: {exc.strerror}")
    return Check("storage", usage.free >= minimum,
                 f"{usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.1f} GiB "
                 f"in {directory}")


@dataclass(frozen=True)
class DestinationsReport:
    """The ``destinations`` check, and each failing destination as ``/readyz`` lists it."""

    check: Check
    failing: list[dict[str, object]]


def failing_destinations_check(session: Session, alert_s: float) -> DestinationsReport:
    """Destinations whose deliveries have been failing (``db.reports.failing_destinations``);
    the check fails once one has been failing for ``alert_s`` (``TRIAGE_DESTINATION_ALERT_S``).
    No error text: ``/readyz`` needs no login, and a peer's error comment may quote data."""
    from db.models import utcnow
    from db.reports import failing_destinations

    now = utcnow()
    failing = failing_destinations(session)
    listed: list[dict[str, object]] = [
        {"destination": f.destination, "failing_since": f.failing_since.isoformat(),
         "failing_for_s": round(f.failing_for_s(now)), "alert": f.failing_for_s(now) >= alert_s,
         "retrying": f.retrying, "failed": f.failed,
         "next_attempt_at": f.next_attempt_at.isoformat() if f.next_attempt_at else None}
        for f in failing]
    alerting = [f for f in listed if f["alert"]]
    if alerting:
        detail = "; ".join(f"{f['destination']} failing for {f['failing_for_s']} s"
                           for f in alerting)
    elif listed:
        detail = f"{len(listed)} failing for less than {alert_s:g} s"
    else:
        detail = "no destination is failing"
    return DestinationsReport(Check("destinations", not alerting, detail), listed)
