"""kopf handlers, kept thin: fetch → reconcile (pure) → apply.

One daemon per TrainingJob is the only writer of that job's operator-owned status, so two decisions
about the same job never race (counters like restarts are read-modify-write). RayJob and pod events
and spec edits only wake that daemon up."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from typing import Any

import kopf
from trainforge.spec import API_GROUP
from trainforge.spec.status import TERMINAL_PHASES

from . import metrics
from .kube import PLURAL, RAY_GROUP, RAY_VERSION, RAYJOBS, VERSION, Kube
from .rayjob import LABEL_JOB
from .reconcile import Decision, reconcile, refused
from .settings import OperatorSettings

SETTINGS = OperatorSettings.from_env()
FINALIZER = f"{API_GROUP}/finalizer"
IDLE_S = 300.0
"""A finished job without a TTL is looked at again this rarely (or when its spec changes)."""
ERROR_RETRY_S = 5.0

_wake: dict[tuple[str, str], asyncio.Event] = {}
_generations: dict[tuple[str, str], int | None] = {}
_kube: Kube | None = None
_running = False
_kube_lock = threading.Lock()


def kube() -> Kube:
    global _kube
    with _kube_lock:
        if _kube is None:
            _kube = Kube()
        return _kube


def wake(namespace: str, name: str) -> None:
    event = _wake.get((namespace, name))
    if event is not None:
        event.set()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    global SETTINGS, _kube, _running
    SETTINGS = OperatorSettings.from_env()  # at start-up, not import: the environment may change in between
    _kube = None  # credentials too are read at start-up
    _running = True
    settings.persistence.finalizer = FINALIZER
    settings.posting.level = logging.WARNING  # our own events describe transitions; kopf's would repeat them
    settings.watching.server_timeout = 60


@kopf.on.cleanup()
async def stopping(**_: Any) -> None:
    global _running
    _running = False  # a pass still in its worker thread is then abandoned quietly


@kopf.daemon(API_GROUP, VERSION, PLURAL, cancellation_timeout=5.0)
async def run_job(stopped: kopf.DaemonStopped, namespace: str, name: str, logger: logging.Logger, **_: Any) -> None:
    # Async, so that a thousand jobs cost a thousand coroutines rather than a thread each (kopf's
    # executor for sync daemons has a handful); each pass's blocking I/O runs in a worker thread.
    key = (namespace, name)
    woken = _wake.setdefault(key, asyncio.Event())
    try:
        while not stopped:
            wait = await asyncio.to_thread(reconcile_job, namespace, name, logger)
            if wait is None:
                return
            deadline = time.monotonic() + wait
            while not stopped and not woken.is_set() and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), min(1.0, max(deadline - time.monotonic(), 0.01)))
            woken.clear()
    finally:
        _wake.pop(key, None)
        _generations.pop(key, None)
        metrics.JOBS.set(namespace, name, None)


def reconcile_job(namespace: str, name: str, logger: logging.Logger) -> float | None:
    """One pass; returns seconds until the next one (None: the job is gone)."""
    started = time.monotonic()
    try:
        obs = kube().observe(namespace, name)
        if obs is None:
            return None
        decision = reconcile(obs, SETTINGS)
        refusal = kube().apply(obs, decision, functools.partial(_publish, obs.job, decision, logger))
        if refusal is not None:
            logger.error("%s", refusal)
            obs = kube().observe(namespace, name) or obs
            decision = refused(obs, SETTINGS, refusal)
            kube().apply(obs, decision, functools.partial(_publish, obs.job, decision, logger))
        phase = decision.status.get("phase") or (obs.job.get("status") or {}).get("phase")
        metrics.JOBS.set(namespace, name, phase)
        if decision.delete_job:
            return None
        if decision.requeue_after is not None:
            return decision.requeue_after
        return IDLE_S if phase in TERMINAL_PHASES else SETTINGS.resync_s
    except Exception:  # the API server may be away; the daemon retries instead of dying
        if not _running:
            return None
        metrics.ERRORS.inc()
        logger.exception("reconcile of %s/%s failed; retrying in %.0f s", namespace, name, ERROR_RETRY_S)
        return ERROR_RETRY_S
    finally:
        metrics.LATENCY.observe(time.monotonic() - started)


def _publish(job: dict[str, Any], decision: Decision, logger: logging.Logger) -> None:
    for event in decision.events:
        (logger.warning if event.type == "Warning" else logger.info)("%s: %s", event.reason, event.message)
        kube().post_event(job, event.type, event.reason, event.message)
        if event.reason == "AttemptCreated":
            metrics.ATTEMPTS.inc()
        elif event.reason == "Preempted":
            metrics.PREEMPTIONS.inc()
    if decision.status.get("phase"):
        metrics.TRANSITIONS.labels(decision.status["phase"]).inc()


@kopf.on.event(API_GROUP, VERSION, PLURAL)
async def job_changed(meta: kopf.Meta, namespace: str, name: str, **_: Any) -> None:
    """Spec edits (generation bumps) wake the job's daemon; its own status writes do not."""
    key = (namespace, name)
    generation = meta.get("generation")
    if _generations.get(key) != generation:
        _generations[key] = generation
        wake(namespace, name)


@kopf.on.event(RAY_GROUP, RAY_VERSION, RAYJOBS, labels={LABEL_JOB: kopf.PRESENT})
async def rayjob_changed(labels: kopf.Labels, namespace: str, **_: Any) -> None:
    wake(namespace, labels[LABEL_JOB])


@kopf.on.event("", "v1", "pods", labels={LABEL_JOB: kopf.PRESENT})
async def pod_changed(labels: kopf.Labels, namespace: str, **_: Any) -> None:
    wake(namespace, labels[LABEL_JOB])
