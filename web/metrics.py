"""``/metrics``: the pipeline's counters (all processes, multiprocess mode) and live gauges."""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from common.metrics import MULTIPROC_ENV
from common.queues import BrokerSettings
from db.models import Delivery, Instance, utcnow
from db.reports import failing_destinations
from web.health import queue_depths


class PipelineCollector(Collector):
    """Queue depth from the broker; instances and deliveries by state and the failing
    destinations from the database (read at scrape time, so multiprocess mode needs no gauge
    files for them)."""

    def __init__(self, sessions: sessionmaker[Session], broker: BrokerSettings,
                 alert_s: float = 900.0) -> None:
        self.sessions = sessions
        self.broker = broker
        self.alert_s = alert_s

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("triage_queue_depth", "Messages waiting per queue",
                                  labels=["queue"])
        for name, value in queue_depths(self.broker).items():
            if value is not None:
                depth.add_metric([name], value)
        yield depth
        instances = GaugeMetricFamily("triage_instances_by_status",
                                      "Instances in the database, by status", labels=["status"])
        deliveries = GaugeMetricFamily("triage_deliveries_by_state",
                                       "Deliveries in the database, by state", labels=["state"])
        with self.sessions() as session:
            for status, count in session.execute(
                    select(Instance.status, func.count()).group_by(Instance.status)):
                instances.add_metric([str(status)], count)
            for state, count in session.execute(
                    select(Delivery.state, func.count()).group_by(Delivery.state)):
                deliveries.add_metric([str(state)], count)
        yield instances
        yield deliveries
        yield from self._failing_destinations()

    def _failing_destinations(self) -> Iterator[Metric]:
        failing_for = GaugeMetricFamily(
            "triage_destination_failing_seconds",
            "How long each failing destination's deliveries have been failing",
            labels=["destination"])
        alerting = GaugeMetricFamily(
            "triage_destinations_alerting",
            "Destinations failing for longer than TRIAGE_DESTINATION_ALERT_S")
        now = utcnow()
        with self.sessions() as session:
            failing = failing_destinations(session)
        for destination in failing:
            failing_for.add_metric([destination.destination], destination.failing_for_s(now))
        alerting.add_metric([], sum(d.failing_for_s(now) >= self.alert_s for d in failing))
        yield failing_for
        yield alerting


def build_registry(sessions: sessionmaker[Session], broker: BrokerSettings,
                   alert_s: float = 900.0) -> CollectorRegistry:
    """Every process's counters when ``TRIAGE_METRICS_DIR`` is set, else this process's."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        registry.register(_Forward())
    registry.register(PipelineCollector(sessions, broker, alert_s))
    return registry


class _Forward(Collector):
    """This process's own metrics (the default registry) inside the app's registry."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
