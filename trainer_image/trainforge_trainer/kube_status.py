"""The trainer's writes to its TrainingJob on a cluster: progress, checkpoints, the attempt's outcome.

Only `status` fields the operator never writes are touched (progress, latestCheckpoint,
bestCheckpoint, tune, outcome), as merge patches of the status subresource, so the two writers never
conflict. A failed patch is logged and dropped: reporting must never fail training. Needs RBAC for
`get` and `patch` on `trainingjobs/status` in the job's namespace (the chart's trainer Role)."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from trainforge import __version__
from trainforge.checkpoints import list_checkpoints
from trainforge.checkpoints.retention import BestRule
from trainforge.spec import CheckpointRef, Progress, TrainingJobStatus
from trainforge.spec.contract import API_GROUP, PLURAL, VERSION, utcnow

log = logging.getLogger("trainforge.status")
USER_AGENT = f"trainforge-trainer/{__version__}"


@dataclass(frozen=True)
class JobRef:
    namespace: str
    name: str
    attempt: int
    uid: str = ""


JSON_PATCH = "application/json-patch+json"
API_TIMEOUT_S = (5.0, 15.0)
"""(connect, read) seconds of every API call: an API server that accepts and never answers must not
hold a status write (and what waits on it) for good."""
FLUSH_S = 30.0


class StatusWriter:
    """Patches one TrainingJob's status from a background thread; remembers whether the job asks to
    be suspended.

    Every write is a JSON patch that first tests `metadata.uid` and `status.attempt`: a write of an
    attempt that is no longer current, or of an earlier incarnation of the job (deleted and created
    again under the same name), is refused by the API server itself. Once refused, the writer is
    `fenced` and writes nothing more. `patch` only queues: a slow or hung API server never stalls the
    Ray Train controller's report handler, i.e. training."""

    def __init__(self, job: JobRef) -> None:
        self.job = job
        self.kubeconfig = os.environ.get("KUBECONFIG")
        """Outside a cluster the driver's kubeconfig, kept for the Ray Train controller actor, which
        does not inherit the driver's environment (inside one, both use the pod's service account)."""
        self.suspend_requested = False
        self.fenced = False
        self._api: Any = None
        self._failures = 0
        self._pending: dict[str, Any] = {}
        self._wake = threading.Condition()
        self._sending = False
        self._thread: threading.Thread | None = None

    def __getstate__(self) -> dict[str, Any]:  # the controller actor gets a copy: no client, no thread
        state = self.__dict__.copy()
        state.update(_api=None, _thread=None, _wake=None, _pending={}, _sending=False)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._wake = threading.Condition()

    def patch(self, status: dict[str, Any]) -> bool:
        """Queue `status` (a merge patch of top-level status fields; later writes of a field win).
        False once fenced."""
        if self.fenced:
            return False
        with self._wake:
            self._pending.update(status)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="trainforge-status", daemon=True)
                self._thread.start()
            self._wake.notify()
        return True

    def flush(self, timeout_s: float = FLUSH_S) -> bool:
        """Wait until what was queued is sent (or refused); False if that took longer than `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self._wake:
            while (self._pending or self._sending) and not self.fenced:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.wait(min(left, 0.5))
        return True

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._pending:
                    self._wake.wait()
                batch, self._pending, self._sending = self._pending, {}, True
            ok = self.send(batch)
            with self._wake:
                self._sending = False
                if not ok and not self.fenced:  # keep it for the next try, under anything newer
                    self._pending = {**batch, **self._pending}
                self._wake.notify_all()
            if not ok and not self.fenced:
                time.sleep(min(2.0 ** min(self._failures, 5), 30.0))

    def send(self, status: dict[str, Any]) -> bool:
        """One fenced write, now; True when the API server took it."""
        from kubernetes.client.exceptions import ApiException

        if self.fenced:
            return False
        try:
            body = self._custom_api().patch_namespaced_custom_object_status(
                API_GROUP, VERSION, self.job.namespace, PLURAL, self.job.name, fenced_patch(self.job, status),
                _content_type=JSON_PATCH, _request_timeout=API_TIMEOUT_S)
        except ApiException as exc:
            if exc.status in (404, 409, 422) and self._is_stale(exc):
                return False
            return self._failed(exc)
        except Exception as exc:  # the API server being away must not stop training
            return self._failed(exc)
        self._failures = 0
        self.suspend_requested = bool(((body or {}).get("spec") or {}).get("suspend"))
        return True

    def _is_stale(self, exc: Any) -> bool:
        """A refused precondition: is the job gone, re-created, or on a later attempt?"""
        try:
            job = self._custom_api().get_namespaced_custom_object_status(  # the status Role allows only this read
                API_GROUP, VERSION, self.job.namespace, PLURAL, self.job.name, _request_timeout=API_TIMEOUT_S)
        except Exception as err:
            stale = getattr(err, "status", None) == 404
        else:
            uid, attempt = (job.get("metadata") or {}).get("uid"), (job.get("status") or {}).get("attempt")
            stale = (self.job.uid and uid != self.job.uid) or attempt != self.job.attempt
        if stale:
            self.fenced = True
            log.warning("TrainingJob %s/%s is no longer attempt %d of uid %s (%s): this attempt writes no more "
                        "status", self.job.namespace, self.job.name, self.job.attempt, self.job.uid or "?",
                        getattr(exc, "reason", exc))
        return bool(stale)

    def _failed(self, exc: Exception) -> bool:
        self._failures += 1
        if self._failures in (1, 10) or self._failures % 100 == 0:
            log.warning("could not update TrainingJob %s/%s status (%d failures so far): %s",
                        self.job.namespace, self.job.name, self._failures, exc)
        return False

    def _custom_api(self) -> Any:
        if self._api is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config(config_file=self.kubeconfig)
            settings = client.Configuration.get_default_copy()
            settings.retries = 1  # the sender thread retries with backoff; urllib3's 3 retries x timeout would stall it
            api = client.ApiClient(settings)
            api.user_agent = USER_AGENT  # names the trainer in audit logs
            self._api = client.CustomObjectsApi(api)
        return self._api


def fenced_patch(job: JobRef, status: dict[str, Any]) -> list[dict[str, Any]]:
    """`status` (top-level fields) as a JSON patch that only applies to this attempt of this
    incarnation of the job. Each field is replaced whole, so nulls (merge-patch deletions) are
    dropped: a field that is absent from the new value is gone with it."""
    ops: list[dict[str, Any]] = []
    if job.uid:
        ops.append({"op": "test", "path": "/metadata/uid", "value": job.uid})
    ops.append({"op": "test", "path": "/status/attempt", "value": job.attempt})
    for key, value in status.items():
        path = "/status/" + key.replace("~", "~0").replace("/", "~1")
        if value is not None:
            ops.append({"op": "add", "path": path, "value": _without_nulls(value)})
    return ops


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


def progress_patch(metrics: dict[str, Any], checkpoint_uri: str | None, best: dict[str, Any] | None,
                   steps_per_s: float | None = None) -> dict[str, Any]:
    """The trainer's part of the status, built as the status models and dumped as a merge patch.

    Args:
        metrics: the newest value of every reported metric, as the trainer reports them.
        steps_per_s: the measured step rate (`StepRate`), for the ETA; None while unknown.
    """
    numbers = {k: float(v) for k, v in metrics.items()
               if isinstance(v, int | float) and not isinstance(v, bool) and k not in ("epoch", "step", "total_steps")}
    step, total = int(metrics.get("step", 0)), int(metrics["total_steps"]) if metrics.get("total_steps") else None
    done = bool(metrics.get("done"))
    percent = eta = None
    if total:
        percent = 100.0 if done else round(min(100.0, 100.0 * step / total), 1)
        if done or step >= total:
            eta = 0
        elif steps_per_s:
            eta = math.ceil((total - step) / steps_per_s)
    progress = Progress(epoch=int(metrics.get("epoch", 0)), step=step, total_steps=total, metrics=numbers,
                        update_time=utcnow(), samples_per_second=_number(metrics.get("samples_per_s")),
                        tokens_per_second=_number(metrics.get("tokens_per_s")), percent=percent,
                        eta_seconds=eta, eta=duration_text(eta) if eta is not None else None)
    status = TrainingJobStatus(progress=progress, latest_checkpoint=checkpoint_uri or None,
                               best_checkpoint=CheckpointRef.model_validate(best) if best else None)
    return status.model_dump(mode="json", by_alias=True, exclude_none=True,
                             include={"progress", "latest_checkpoint", "best_checkpoint"})


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def duration_text(seconds: int) -> str:
    """1h05m, 4m10s, 12s: as `kubectl` shows ages."""
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class StepRate:
    """Optimizer steps per second over the last `window_s` seconds of reports: recent enough to follow
    a change of speed, long enough to include the evaluations and checkpoints the remaining steps
    will also pay for. A step that goes back (a resumed attempt) starts the window again."""

    def __init__(self, window_s: float = 300.0) -> None:
        self.window_s = window_s
        self.points: deque[tuple[float, int]] = deque()

    def observe(self, step: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self.points and step < self.points[-1][1]:
            self.points.clear()
        self.points.append((now, step))
        while len(self.points) > 2 and now - self.points[1][0] >= self.window_s:
            self.points.popleft()

    def per_second(self) -> float | None:
        if len(self.points) < 2:
            return None
        (t0, s0), (t1, s1) = self.points[0], self.points[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 and s1 > s0 else None


class BestTracker:
    """The best checkpoint so far by the run's `BestRule` (the spec's keepBest metric, else early
    stopping's, else none): the rule retention keeps by, ties to the newer as there, so the checkpoint
    the status names best is always one retention keeps. The first checkpoint of an attempt seeds it
    from the run's checkpoints on storage: an earlier attempt's better one is the best, not this
    attempt's first (retention keeps the earlier one, and may prune this attempt's)."""

    def __init__(self, metric: str | None, mode: str) -> None:
        self.metric, self.mode = metric, mode
        self.rule = BestRule(metric, mode) if metric else None
        self.best: dict[str, Any] | None = None
        self._seeded = False

    def offer(self, uri: str, step: int, metrics: dict[str, Any], checkpoint: Any = None) -> bool:
        """A checkpoint just registered (`checkpoint`: its Ray Checkpoint, to seed from storage)."""
        if self.rule is None:
            return False
        if checkpoint is not None and not self._seeded:
            self._seed(uri, checkpoint)
        value = self.rule.score(metrics)
        if value is None:
            return False
        better = self.best is None or self.rule.at_least_as_good(value, self.best["value"])
        if better:
            self.best = {"uri": uri, "step": step, "metric": self.metric, "value": value}
        return better

    def _seed(self, uri: str, checkpoint: Any) -> None:
        self._seeded = True
        path, fs = checkpoint.path.rstrip("/"), getattr(checkpoint, "filesystem", None)
        prefix = uri[: len(uri) - len(path.lstrip("/"))]
        if fs is None:
            return
        try:
            entries = list_checkpoints(fs, path.rsplit("/", 1)[0], check=False)
        except OSError as exc:  # the status is a report: never fail the run over it
            log.warning("could not read earlier checkpoints for bestCheckpoint: %s", exc)
            return
        ranked = self.rule.ranked([e for e in entries if e.complete and e.path.rstrip("/") != path]) \
            if self.rule else []
        if ranked and ranked[0].manifest is not None:
            best = ranked[0]
            self.best = {"uri": prefix + best.path.lstrip("/"), "step": best.step, "metric": self.metric,
                         "value": self.rule.score(best.manifest.metrics)}  # type: ignore[union-attr]


class RateLimiter:
    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last = float("-inf")

    def ready(self, force: bool = False) -> bool:
        now = time.monotonic()
        if force or now - self._last >= self.interval_s:
            self._last = now
            return True
        return False
