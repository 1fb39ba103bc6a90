"""kopf handlers, kept thin: fetch → reconcile (pure) → apply.

One daemon per TrainingJob is the only writer of that job's operator-owned status, so two decisions
about the same job never race (counters like restarts are read-modify-write). RayJob and pod events
and spec edits only wake that daemon up. The operator's state (settings, the API client, the wake-up
events) lives in kopf's `memo`, set at start-up: each object's memo is a shallow copy of it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from typing import Any

import kopf
from trainforge.lifecycle import EventType, Reason
from trainforge.spec.contract import API_GROUP, LABEL_JOB, PLURAL, RAY_GROUP, RAY_VERSION, RAYJOBS, VERSION
from trainforge.spec.phases import TERMINAL_PHASES

from . import metrics
from .kube import Kube
from .reconcile import Decision, Ledger, reconcile, refused
from .settings import OperatorSettings

FINALIZER = f"{API_GROUP}/finalizer"
IDLE_S = 300.0
"""A finished job without a TTL is looked at again this rarely (or when its spec changes)."""
ERROR_RETRY_S = 5.0


class OperatorState:
    """What every handler shares, read once at start-up (the environment may change before it)."""

    def __init__(self, settings: OperatorSettings) -> None:
        self.settings = settings
        self.running = True
        self.wakers: dict[tuple[str, str], asyncio.Event] = {}
        self.generations: dict[tuple[str, str], int | None] = {}
        self.ledgers: dict[tuple[str, str], Ledger] = {}
        """What each job's status holds in reconcile.LEDGER_FIELDS as this operator last wrote it."""

    @functools.cached_property
    def kube(self) -> Kube:
        """Built on first use, in a worker thread: loading credentials does I/O."""
        return Kube(settings=self.settings)

    def wake(self, namespace: str, name: str) -> None:
        event = self.wakers.get((namespace, name))
        if event is not None:
            event.set()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    memo.state = OperatorState(OperatorSettings.from_env())
    settings.persistence.finalizer = FINALIZER
    settings.posting.level = logging.WARNING  # our own events describe transitions; kopf's would repeat them
    settings.watching.server_timeout = 60


@kopf.on.cleanup()
async def stopping(memo: kopf.Memo, **_: Any) -> None:
    memo.state.running = False  # a pass still in its worker thread is then abandoned quietly


@kopf.daemon(API_GROUP, VERSION, PLURAL, cancellation_timeout=5.0)
async def run_job(stopped: kopf.DaemonStopped, namespace: str, name: str, logger: logging.Logger,
                  memo: kopf.Memo, **_: Any) -> None:
    # Async, so that a thousand jobs cost a thousand coroutines rather than a thread each (kopf's
    # executor for sync daemons has a handful); each pass's blocking I/O runs in a worker thread.
    state: OperatorState = memo.state
    key = (namespace, name)
    woken = state.wakers.setdefault(key, asyncio.Event())
    try:
        while not stopped:
            wait = await asyncio.to_thread(reconcile_job, state, namespace, name, logger)
            if wait is None:
                return
            deadline = time.monotonic() + wait
            while not stopped and not woken.is_set() and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), min(1.0, max(deadline - time.monotonic(), 0.01)))
            woken.clear()
    finally:
        state.wakers.pop(key, None)
        state.generations.pop(key, None)
        metrics.JOBS.set(namespace, name, None)


def reconcile_job(state: OperatorState, namespace: str, name: str, logger: logging.Logger) -> float | None:
    """One pass; returns seconds until the next one (None: the job is gone)."""
    started, key = time.monotonic(), (namespace, name)
    try:
        kube = state.kube
        obs = kube.observe(namespace, name)
        if obs is None:
            return None
        decision = reconcile(obs, state.settings, state.ledgers.pop(key, None))  # back once the status is written
        refusal = kube.apply(obs, decision, functools.partial(_written, state, key, kube, obs.job, decision, logger))
        if refusal is not None:
            logger.error("%s", refusal)
            obs = kube.observe(namespace, name) or obs
            decision = refused(obs, state.settings, refusal)
            kube.apply(obs, decision, functools.partial(_written, state, key, kube, obs.job, decision, logger))
        phase = decision.status.get("phase") or (obs.job.get("status") or {}).get("phase")
        metrics.JOBS.set(namespace, name, phase)
        if decision.delete_job:
            return None
        if decision.requeue_after is not None:
            return decision.requeue_after
        return IDLE_S if phase in TERMINAL_PHASES else state.settings.resync_s
    except Exception:  # the API server may be away; the daemon retries instead of dying
        if not state.running:
            return None
        metrics.ERRORS.inc()
        logger.exception("reconcile of %s/%s failed; retrying in %.0f s", namespace, name, ERROR_RETRY_S)
        return ERROR_RETRY_S
    finally:
        metrics.LATENCY.observe(time.monotonic() - started)


def _written(state: OperatorState, key: tuple[str, str], kube: Kube, job: dict[str, Any], decision: Decision,
             logger: logging.Logger) -> None:
    """The status is written: remember what it now holds, then publish what the decision said. A pass
    that fails before this leaves no ledger (the write may have landed): the next takes the status as read."""
    if decision.ledger is not None:
        state.ledgers[key] = decision.ledger
    _publish(kube, job, decision, logger)


def _publish(kube: Kube, job: dict[str, Any], decision: Decision, logger: logging.Logger) -> None:
    for event in decision.events:
        (logger.warning if event.type == EventType.WARNING else logger.info)("%s: %s", event.reason, event.message)
        kube.post_event(job, event.type, event.reason, event.message)
        if event.reason == Reason.ATTEMPT_CREATED:
            metrics.ATTEMPTS.inc()
        elif event.reason == Reason.PREEMPTED:
            metrics.PREEMPTIONS.inc()
    if decision.status.get("phase"):
        metrics.TRANSITIONS.labels(decision.status["phase"]).inc()


@kopf.on.event(API_GROUP, VERSION, PLURAL)
async def job_changed(meta: kopf.Meta, namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    """Spec edits (generation bumps) wake the job's daemon; its own status writes do not."""
    state: OperatorState = memo.state
    key = (namespace, name)
    generation = meta.get("generation")
    if state.generations.get(key) != generation:
        state.generations[key] = generation
        state.wake(namespace, name)


@kopf.on.event(RAY_GROUP, RAY_VERSION, RAYJOBS, labels={LABEL_JOB: kopf.PRESENT})
async def rayjob_changed(labels: kopf.Labels, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    memo.state.wake(namespace, labels[LABEL_JOB])


@kopf.on.event("", "v1", "pods", labels={LABEL_JOB: kopf.PRESENT})
async def pod_changed(labels: kopf.Labels, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    memo.state.wake(namespace, labels[LABEL_JOB])
