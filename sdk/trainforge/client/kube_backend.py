"""The kubernetes backend: TrainingJobs as custom objects; the operator does the rest.

Logs come from the pod that KubeRay's K8sJobMode starts for each RayJob (the submitter of a Job
named after the RayJob, which follows the Ray job's driver log): it outlives the Ray cluster when
`shutdownAfterJobFinishes` tears that down, and is removed with its RayJob."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from pydantic import ValidationError

from .. import __version__
from ..spec import API_GROUP, TrainingJob, TrainingJobSpec, TrainingJobStatus
from ..spec.job import ObjectMeta
from .errors import (
    ClusterUnreachable,
    CRDNotInstalled,
    InvalidJob,
    JobExists,
    JobNotFound,
    LogsUnavailable,
    PermissionDenied,
    TrainforgeError,
)
from .types import JobEvent

VERSION, PLURAL = "v1alpha1", "trainingjobs"
SUBMITTER_LABELS = ("batch.kubernetes.io/job-name", "job-name")
CHART_HINT = "install the trainforge Helm chart (README: Install with Helm)"
T = TypeVar("T")


class KubeBackend:
    def __init__(self, namespace: str | None = None, context: str | None = None, api_client: Any = None) -> None:
        from kubernetes import client

        default_ns = "default"
        if api_client is None:
            api_client, default_ns = _connect(context)
            api_client.user_agent = f"trainforge-sdk/{__version__}"
        self.namespace = namespace or default_ns
        self.context = context
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.host = api_client.configuration.host

    # ---- jobs -------------------------------------------------------------------------------

    def create(self, job: TrainingJob) -> TrainingJob:
        body = job.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude={"status"})
        body["metadata"]["namespace"] = self.namespace
        return to_model(self._call(lambda: self.custom.create_namespaced_custom_object(
            API_GROUP, VERSION, self.namespace, PLURAL, body), "create", job.name))

    def get(self, name: str) -> TrainingJob:
        return to_model(self._call(lambda: self.custom.get_namespaced_custom_object(
            API_GROUP, VERSION, self.namespace, PLURAL, name), "get", name))

    def list(self, selector: str | None) -> list[TrainingJob]:
        found = self._call(lambda: self.custom.list_namespaced_custom_object(
            API_GROUP, VERSION, self.namespace, PLURAL, label_selector=selector or ""), "list", None)
        return [to_model(obj) for obj in found.get("items", [])]

    def set_suspend(self, name: str, suspend: bool) -> TrainingJob:
        return to_model(self._call(lambda: self.custom.patch_namespaced_custom_object(
            API_GROUP, VERSION, self.namespace, PLURAL, name, {"spec": {"suspend": suspend}}), "patch", name))

    def delete(self, name: str) -> None:
        self._call(lambda: self.custom.delete_namespaced_custom_object(
            API_GROUP, VERSION, self.namespace, PLURAL, name, propagation_policy="Background"), "delete", name)

    # ---- events and logs ----------------------------------------------------------------------

    def events(self, job: TrainingJob) -> list[JobEvent]:
        attempts = job.status.attempt if job.status else 0
        names = [job.name, *(f"{job.name}-a{n}" for n in range(1, attempts + 1))]
        events = []
        for name in names:
            found = self._call(lambda n=name: self.core.list_namespaced_event(
                self.namespace, field_selector=f"involvedObject.name={n}"), "list events of", name)
            events += [_event(e) for e in found.items if e.involved_object.name == name]
        return sorted(events, key=lambda e: (e.time is None, e.time))

    def attempt_log(self, job: TrainingJob, attempt: int, follow: bool) -> Iterator[str]:
        rayjob = f"{job.name}-a{attempt}"
        pod = self._driver_pod(rayjob)
        if pod is None:
            raise LogsUnavailable(
                f"the driver pod of attempt {attempt} (RayJob {rayjob}) is gone or not started: KubeRay keeps "
                f"it while the RayJob exists; `trainforge events {job.name}` shows what happened")
        if not follow:
            text = self._call(lambda: self.core.read_namespaced_pod_log(pod, self.namespace), "read logs of", pod)
            return iter(text.splitlines())
        response = self._call(lambda: self.core.read_namespaced_pod_log(
            pod, self.namespace, follow=True, _preload_content=False), "read logs of", pod)
        return _lines(response)

    def _driver_pod(self, rayjob: str) -> str | None:
        for label in SUBMITTER_LABELS:
            pods = self._call(lambda lbl=label: self.core.list_namespaced_pod(
                self.namespace, label_selector=f"{lbl}={rayjob}"), "list pods of", rayjob).items
            if pods:
                newest = max(pods, key=lambda p: p.metadata.creation_timestamp or 0)
                return str(newest.metadata.name)
        return None

    # ---- errors -------------------------------------------------------------------------------

    def _call(self, fn: Callable[[], T], verb: str, name: str | None) -> T:
        """Run one API call; turn what can go wrong into the SDK's one-line errors."""
        import urllib3
        from kubernetes.client.exceptions import ApiException

        try:
            return fn()
        except ApiException as exc:
            raise self._api_error(exc, verb, name) from None
        except urllib3.exceptions.HTTPError as exc:
            raise ClusterUnreachable(
                f"cannot reach the Kubernetes API at {self.host} ({_reason(exc)}); check `kubectl cluster-info`"
                + (f" for context {self.context}" if self.context else "")) from None

    def _api_error(self, exc: Any, verb: str, name: str | None) -> TrainforgeError:
        status, body = exc.status, _body(exc)
        message = body.get("message") or exc.reason or ""
        what = f"TrainingJob {name}" if name else "TrainingJobs"
        if status == 401:
            return PermissionDenied(f"the cluster at {self.host} refused your credentials (401): renew them "
                                    "(your provider's get-credentials) or pick another --context")
        if status == 403:
            return PermissionDenied(f"RBAC denied: {message}; ask for the chart's trainforge-edit role in "
                                    f"namespace {self.namespace}")
        if status == 404 and not (body.get("details") or {}).get("name"):
            return CRDNotInstalled(f"the cluster has no TrainingJob resource ({PLURAL}.{API_GROUP}): {CHART_HINT}")
        if status == 404:
            return JobNotFound(f"no {what} in namespace {self.namespace}; `trainforge list -n {self.namespace}` "
                               "shows the jobs there")
        if status == 409 and verb == "create":
            return JobExists(f"{what} already exists in namespace {self.namespace}: delete it first "
                             f"(`trainforge delete {name}`) or choose another metadata.name")
        if status == 422:
            return InvalidJob(f"the cluster refused {what}: {message}")
        if status == 400 and verb == "read logs of":
            return LogsUnavailable(f"no logs from pod {name} yet: {message}")
        return TrainforgeError(f"cannot {verb} {what} ({status} {exc.reason}): {message}")


def to_model(obj: dict[str, Any]) -> TrainingJob:
    """The typed job. One the operator found invalid (its status says why) still reads, with an
    unvalidated spec, so that `status`, `list` and `delete` work on it."""
    try:
        return TrainingJob.model_validate(obj)
    except ValidationError:
        try:
            status = TrainingJobStatus.model_validate(obj.get("status") or {})
        except ValidationError:
            status = None
        spec = TrainingJobSpec.model_construct(**{k: v for k, v in (obj.get("spec") or {}).items()
                                                  if k in ("suspend", "workers")})
        return TrainingJob.model_construct(metadata=ObjectMeta.model_validate(obj.get("metadata") or {}),
                                           spec=spec, status=status)


def _connect(context: str | None) -> tuple[Any, str]:
    """An API client for the kubeconfig context (or the pod's service account) and its namespace."""
    import os

    from kubernetes import config

    path = os.environ.get("KUBECONFIG") or None  # read now: the client reads it once, at its import
    try:
        client = config.new_client_from_config(config_file=path, context=context)
        contexts, active = config.list_kube_config_contexts(config_file=path)
        if context:
            active = next(c for c in contexts if c["name"] == context)
        return client, (active.get("context") or {}).get("namespace") or "default"
    except (config.ConfigException, StopIteration, OSError) as exc:
        if context or not os.environ.get("KUBERNETES_SERVICE_HOST"):
            where = os.environ.get("KUBECONFIG") or "~/.kube/config"
            raise ClusterUnreachable(f"no Kubernetes cluster configured ({where}: {exc}); set KUBECONFIG or "
                                     "--context, or use --backend local") from None
    from kubernetes import client as k8s

    config.load_incluster_config()
    with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
        return k8s.ApiClient(), f.read().strip()


def _lines(response: Any) -> Iterator[str]:
    import urllib3

    buffer = b""
    try:
        for chunk in response.stream(4096, decode_content=True):
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for line in complete:
                yield line.decode(errors="replace")
    except urllib3.exceptions.HTTPError as exc:  # the stream broke off: say so, as kubectl does
        raise LogsUnavailable(f"the log stream was cut ({_reason(exc)}); run the command again to go on") from None
    finally:
        response.release_conn()
    if buffer:
        yield buffer.decode(errors="replace")


def _event(e: Any) -> JobEvent:
    when = e.last_timestamp or e.event_time or e.first_timestamp or e.metadata.creation_timestamp
    return JobEvent(when, e.type or "Normal", e.reason or "", e.message or "",
                    f"{e.involved_object.kind}/{e.involved_object.name}", e.count or 1)


def _body(exc: Any) -> dict[str, Any]:
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _reason(exc: Any) -> str:
    reason = getattr(exc, "reason", None) or exc
    return str(reason).split(": ", 1)[-1][:160]
