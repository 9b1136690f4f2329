"""Queue and task names, broker settings and the Celery app factory (nothing read at import).

The default broker is kombu's filesystem transport under ``./var/broker`` so a single machine needs
no server; ``TRIAGE_BROKER_URL=redis://...`` selects Redis.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.config import default_var_dir, env_float, env_path, env_str

if TYPE_CHECKING:  # celery takes ~0.4 s to import: only the commands that use it pay for it
    from celery import Celery

# Queues and task names shared by the node (producer) and the workers (consumers).
QUEUE_SCORE = "score"
QUEUE_DELIVER = "deliver"

TASK_SCORE_INSTANCE = "cxr_triage.score_instance"  # args [instance_id], queue score
TASK_REPORT_STUDY = "cxr_triage.report_study"  # args [study_id], queue deliver
TASK_DELIVER_REPORT = "cxr_triage.deliver_report"  # args [report_id, destination, item]
# A claimed, queued or in-progress step older than this is published again and may be taken
# over (TRIAGE_SCORE_LEASE_S; the node's reconciler and the workers read the same value).
DEFAULT_SCORE_LEASE_S = 600.0
TASK_RESCORE_BATCH = "cxr_triage.rescore_batch"  # args [instance_ids, model_dir, ...], score

FILESYSTEM_URL = "filesystem://"


@dataclass(frozen=True)
class BrokerSettings:
    """Where tasks are queued.

    Attributes
    ----------
    url : ``TRIAGE_BROKER_URL``; ``filesystem://`` (default) or ``redis://host:port/db``.
    filesystem_dir : folder of the filesystem transport (``TRIAGE_BROKER_DIR``).
    visibility_timeout_s : Redis redelivers an unacknowledged task after this long.
    connect_timeout_s : how long a publish waits for the broker before giving up.
    """

    url: str = FILESYSTEM_URL
    filesystem_dir: Path = field(default_factory=lambda: default_var_dir() / "broker")
    visibility_timeout_s: float = 3600.0
    connect_timeout_s: float = 3.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BrokerSettings:
        d = cls()
        return cls(
            url=env_str(env, "BROKER_URL", d.url),
            filesystem_dir=env_path(env, "BROKER_DIR", d.filesystem_dir),
            visibility_timeout_s=env_float(env, "BROKER_VISIBILITY_TIMEOUT_S",
                                           d.visibility_timeout_s),
            connect_timeout_s=env_float(env, "BROKER_CONNECT_TIMEOUT_S", d.connect_timeout_s),
        )

    @property
    def is_filesystem(self) -> bool:
        return self.url.startswith("filesystem:")


def _transport_options(settings: BrokerSettings) -> dict[str, Any]:
    if settings.is_filesystem:
        folder = settings.filesystem_dir / "queue"
        folder.mkdir(parents=True, exist_ok=True)
        (settings.filesystem_dir / "processed").mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder),
            "data_folder_out": str(folder),
            "processed_folder": str(settings.filesystem_dir / "processed"),
            "control_folder": str(settings.filesystem_dir / "control"),
            "store_processed": False,
        }
    # Abandoned (unacknowledged) messages are looked for every interval; with a short
    # visibility timeout (tests) they should come back about that soon, not after 100 s.
    restore_interval = max(1.0, min(10.0, settings.visibility_timeout_s / 2))
    return {
        "visibility_timeout": settings.visibility_timeout_s,
        "unacked_restore_interval": restore_interval,
        "unacked_restore_throttle": 1 if settings.visibility_timeout_s < 600 else 10,
        "socket_connect_timeout": settings.connect_timeout_s,
        "socket_timeout": max(settings.connect_timeout_s, 5.0),
    }


def make_celery(settings: BrokerSettings, name: str = "cxr_triage") -> Celery:
    """Build the Celery app: JSON only, late acks, prefetch 1, no result backend."""
    from celery import Celery
    from kombu import Queue

    app = Celery(name, broker=settings.url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=QUEUE_SCORE,
        task_queues=(Queue(QUEUE_SCORE), Queue(QUEUE_DELIVER)),
        task_routes={
            TASK_SCORE_INSTANCE: {"queue": QUEUE_SCORE},
            TASK_REPORT_STUDY: {"queue": QUEUE_DELIVER},
            TASK_DELIVER_REPORT: {"queue": QUEUE_DELIVER},
        },
        broker_transport_options=_transport_options(settings),
        broker_connection_timeout=settings.connect_timeout_s,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return app
