"""The trainer's writes to its TrainingJob on a cluster: progress, checkpoints, the attempt's outcome.

Only `status` fields the operator never writes are touched (progress, latestCheckpoint,
bestCheckpoint, tune, outcome), as merge patches of the status subresource, so the two writers never
conflict. A failed patch is logged and dropped: reporting must never fail training. Needs RBAC for
`get` and `patch` on `trainingjobs/status` in the job's namespace (the chart's trainer Role)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from trainforge import __version__
from trainforge.spec import CheckpointRef, Progress, TrainingJobStatus
from trainforge.spec.contract import API_GROUP, PLURAL, VERSION, utcnow

log = logging.getLogger("trainforge.status")
USER_AGENT = f"trainforge-trainer/{__version__}"


@dataclass(frozen=True)
class JobRef:
    namespace: str
    name: str
    attempt: int


class StatusWriter:
    """Patches one TrainingJob's status; remembers whether the job asks to be suspended."""

    def __init__(self, job: JobRef) -> None:
        self.job = job
        self.kubeconfig = os.environ.get("KUBECONFIG")
        """Outside a cluster the driver's kubeconfig, kept for the Ray Train controller actor, which
        does not inherit the driver's environment (inside one, both use the pod's service account)."""
        self.suspend_requested = False
        self._api: Any = None
        self._failures = 0

    def patch(self, status: dict[str, Any]) -> bool:
        try:
            body = self._custom_api().patch_namespaced_custom_object_status(
                API_GROUP, VERSION, self.job.namespace, PLURAL, self.job.name, {"status": status})
        except Exception as exc:  # the API server being away must not stop training
            self._failures += 1
            if self._failures in (1, 10) or self._failures % 100 == 0:
                log.warning("could not update TrainingJob %s/%s status (%d failures so far): %s",
                            self.job.namespace, self.job.name, self._failures, exc)
            return False
        self.suspend_requested = bool(((body or {}).get("spec") or {}).get("suspend"))
        return True

    def _custom_api(self) -> Any:
        if self._api is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config(config_file=self.kubeconfig)
            api = client.ApiClient()
            api.user_agent = USER_AGENT  # names the trainer in audit logs
            self._api = client.CustomObjectsApi(api)
        return self._api


def progress_patch(metrics: dict[str, Any], checkpoint_uri: str | None, best: dict[str, Any] | None) -> dict[str, Any]:
    """The trainer's part of the status, built as the status models and dumped as a merge patch."""
    numbers = {k: float(v) for k, v in metrics.items()
               if isinstance(v, int | float) and not isinstance(v, bool) and k not in ("epoch", "step", "total_steps")}
    rate = metrics.get("samples_per_second")
    progress = Progress(epoch=int(metrics.get("epoch", 0)), step=int(metrics.get("step", 0)),
                        total_steps=int(metrics["total_steps"]) if metrics.get("total_steps") else None,
                        metrics=numbers, update_time=utcnow(),
                        samples_per_second=float(rate) if isinstance(rate, int | float) else None)
    status = TrainingJobStatus(progress=progress, latest_checkpoint=checkpoint_uri or None,
                               best_checkpoint=CheckpointRef.model_validate(best) if best else None)
    return status.model_dump(mode="json", by_alias=True, exclude_none=True,
                             include={"progress", "latest_checkpoint", "best_checkpoint"})


class BestTracker:
    """The best checkpoint so far by one metric (the spec's keepBest metric, else the sweep's or none)."""

    def __init__(self, metric: str | None, mode: str) -> None:
        self.metric, self.mode = metric, mode
        self.best: dict[str, Any] | None = None

    def offer(self, uri: str, step: int, metrics: dict[str, Any]) -> bool:
        value = metrics.get(self.metric) if self.metric else None
        if not isinstance(value, int | float):
            return False
        better = self.best is None or (value > self.best["value"] if self.mode == "max" else value < self.best["value"])
        if better:
            self.best = {"uri": uri, "step": step, "metric": self.metric, "value": float(value)}
        return better


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
