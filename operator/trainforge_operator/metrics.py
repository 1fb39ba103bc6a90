"""Prometheus metrics of the operator, served on /metrics (prometheus_client)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from trainforge.spec.status import PHASES

REGISTRY = CollectorRegistry()
ATTEMPTS = Counter("trainforge_attempts", "RayJob attempts created", registry=REGISTRY)
PREEMPTIONS = Counter("trainforge_preemptions", "Attempts ended by a preemption", registry=REGISTRY)
TRANSITIONS = Counter("trainforge_transitions", "Phase transitions", ["phase"], registry=REGISTRY)
ERRORS = Counter("trainforge_reconcile_errors", "Reconciles that raised", registry=REGISTRY)
LATENCY = Histogram("trainforge_reconcile_seconds", "Time to observe, decide and apply one job",
                    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=REGISTRY)


class PhaseCollector:
    """`trainforge_jobs{phase}`: the phase of every job this operator currently watches."""

    def __init__(self) -> None:
        self._phases: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def set(self, namespace: str, name: str, phase: str | None) -> None:
        with self._lock:
            if phase is None:
                self._phases.pop((namespace, name), None)
            else:
                self._phases[(namespace, name)] = phase

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("trainforge_jobs", "TrainingJobs by phase", labels=["phase"])
        with self._lock:
            values = list(self._phases.values())
        for phase in PHASES:
            family.add_metric([phase], values.count(phase))
        yield family


JOBS = PhaseCollector()
REGISTRY.register(JOBS)  # type: ignore[arg-type]


def serve(port: int, address: str = "0.0.0.0") -> tuple[Any, Any]:
    """Serve /metrics on `address:port` in a daemon thread; returns (server, thread)."""
    return start_http_server(port, addr=address, registry=REGISTRY)
