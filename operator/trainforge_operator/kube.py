"""The operator's Kubernetes I/O: read what reconcile needs, apply what it decided. No decisions here."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from trainforge import __version__
from trainforge.spec.contract import (
    API_GROUP,
    API_VERSION,
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_JOB_UID,
    PLURAL,
    RAY_GROUP,
    RAY_VERSION,
    RAYJOBS,
    VERSION,
    attempt_name,
)

from . import guard
from .observed import Observed, being_deleted, is_suspended, kueue_message, owner_uid
from .reconcile import Decision
from .settings import OperatorSettings

KUEUE_GROUP, KUEUE_VERSION = "kueue.x-k8s.io", "v1beta1"
KUEUE_JOB_UID = "kueue.x-k8s.io/job-uid"
"""The label Kueue puts on a job's Workload: the uid of the job (here the RayJob) it admits."""

log = logging.getLogger("trainforge.operator")
USER_AGENT = f"trainforge-operator/{__version__}"
API_TIMEOUT_S = (5.0, 20.0)
"""(connect, read) seconds of every call: an API server that accepts and never answers fails the pass,
which the daemon retries, instead of hanging the job's daemon for good."""


class Kube:
    """Thin wrapper over the official client; every call names exactly one resource and verb (the
    chart's ClusterRole grants these and nothing else)."""

    def __init__(self, api_client: Any = None, settings: OperatorSettings | None = None) -> None:
        from kubernetes import client, config

        if api_client is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            configuration = client.Configuration.get_default_copy()
            # urllib3 retries a read that timed out 3 more times by default: a hung API server would
            # hold each call four times API_TIMEOUT_S. The daemon retries whole passes instead.
            configuration.retries = 1
            api_client = client.ApiClient(configuration)
            # Names this client in audit logs (and lets the tests check its calls against the chart's RBAC).
            api_client.user_agent = USER_AGENT
        self.settings = settings or OperatorSettings()
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.networking = client.NetworkingV1Api(api_client)

    # ---- reads ---------------------------------------------------------------------------------

    def observe(self, namespace: str, name: str) -> Observed | None:
        # RayJobs and pods first, the TrainingJob last. The trainer writes its outcome ("preempted")
        # into the job's status before its process exits, so a RayJob read as ended guarantees that
        # the later read of the job shows the outcome. Read the other way round, an outcome written
        # between the two reads is missed and the preemption is counted as a failure.
        selector = f"{LABEL_JOB}={name}"
        rayjobs = self.custom.list_namespaced_custom_object(RAY_GROUP, RAY_VERSION, namespace, RAYJOBS,
                                                           label_selector=selector,
                                                           _request_timeout=API_TIMEOUT_S).get("items") or []
        # Pods even without RayJobs: a deleted attempt's pods may linger (a partitioned node).
        items = self.core.list_namespaced_pod(namespace, label_selector=selector, _request_timeout=API_TIMEOUT_S).items
        pods = [self.core.api_client.sanitize_for_serialization(p) for p in items]
        job = self._get(API_GROUP, VERSION, namespace, PLURAL, name)
        if job is None:
            return None
        obs = split_observed(job, rayjobs, pods, datetime.now(timezone.utc))
        if is_suspended(obs.rayjob):
            obs = dataclasses.replace(obs, kueue=kueue_message(self._workloads(namespace, obs.rayjob)))
        return obs

    def _workloads(self, namespace: str, rayjob: Mapping[str, Any] | None) -> list[dict[str, Any]]:
        """Kueue's Workloads of a RayJob (by the job-uid label Kueue puts on them); none where Kueue is
        not installed or the operator may not read them."""
        from kubernetes.client.exceptions import ApiException

        uid = ((rayjob or {}).get("metadata") or {}).get("uid")
        if not uid:
            return []
        try:
            return self.custom.list_namespaced_custom_object(
                KUEUE_GROUP, KUEUE_VERSION, namespace, "workloads", label_selector=f"{KUEUE_JOB_UID}={uid}",
                _request_timeout=API_TIMEOUT_S).get("items") or []
        except ApiException as exc:
            if exc.status in (403, 404):
                return []
            raise

    def _get(self, group: str, version: str, namespace: str, plural: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.custom.get_namespaced_custom_object(group, version, namespace, plural, name,
                                                            _request_timeout=API_TIMEOUT_S)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    # ---- writes --------------------------------------------------------------------------------

    def apply(self, obs: Observed, decision: Decision, after_status: Callable[[], None] | None = None) -> str | None:
        """Status first (it names the attempt), then deletions, then the new RayJob. Returns why the
        RayJob was refused when the API server rejects it for good (4xx), else None.

        `after_status` runs once the status is written and before anything else: what it publishes
        (events, counters) describes that status, and a later pass that finishes an interrupted
        apply (creates the missing RayJob) decides nothing new, so it would never publish them."""
        from kubernetes.client.exceptions import ApiException

        meta = obs.job["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        if decision.status:
            self.patch_status(namespace, name, decision.status)
        if after_status is not None:
            after_status()
        for rayjob in decision.delete:
            self._delete(RAY_GROUP, RAY_VERSION, namespace, RAYJOBS, rayjob)
        if decision.create is not None:
            refused = self.guard(obs.job)
            if refused:
                return refused
            try:
                self.custom.create_namespaced_custom_object(RAY_GROUP, RAY_VERSION, namespace, RAYJOBS, decision.create,
                                                            _request_timeout=API_TIMEOUT_S)
            except ApiException as exc:
                if exc.status == 409:
                    pass  # created by an earlier pass, or not ours: the next pass tells (observed.blockers)
                elif exc.status == 404:
                    return "the ray.io/v1 RayJob API is not installed on this cluster: install KubeRay first"
                elif exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
                    return f"the API server refused RayJob {decision.create['metadata']['name']}: {_reason(exc)}"
                else:
                    raise
        if decision.delete_job:
            self._delete(API_GROUP, VERSION, namespace, PLURAL, name)
        return None

    def guard(self, job: Mapping[str, Any]) -> str | None:
        """The job's Ray-token Secret and NetworkPolicy (guard.py), made before its first attempt's
        RayJob and kept. Returns why not when one of that name exists and is not this job's."""
        meta = job["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        if self.settings.ray_auth:
            why = self._ensure(job, "Secret", lambda: guard.auth_secret(job, guard.new_token()),
                               lambda: self.core.read_namespaced_secret(guard.auth_secret_name(name), namespace,
                                                                        _request_timeout=API_TIMEOUT_S),
                               lambda doc: self.core.create_namespaced_secret(namespace, doc,
                                                                              _request_timeout=API_TIMEOUT_S))
            if why:
                return why
        if self.settings.network_policy:
            policy = guard.network_policy_name(name)
            return self._ensure(job, "NetworkPolicy", lambda: guard.network_policy(job, self.settings),
                                lambda: self.networking.read_namespaced_network_policy(policy, namespace,
                                                                                      _request_timeout=API_TIMEOUT_S),
                                lambda doc: self.networking.create_namespaced_network_policy(
                                    namespace, doc, _request_timeout=API_TIMEOUT_S))
        return None

    def _ensure(self, job: Mapping[str, Any], kind: str, build: Callable[[], dict[str, Any]], read: Callable[[], Any],
                create: Callable[[dict[str, Any]], Any]) -> str | None:
        from kubernetes.client.exceptions import ApiException

        doc = build()
        try:
            create(doc)
            return None
        except ApiException as exc:
            if exc.status != 409:
                raise
        existing = self.core.api_client.sanitize_for_serialization(read())
        if guard.owned_by(existing, job):
            return None
        if guard.stale_owner(existing, job):
            # A deleted incarnation's, which the garbage collector removes: the pass is retried.
            raise RuntimeError(f"{kind} {doc['metadata']['name']} is an earlier incarnation's of this job; "
                               "waiting for the garbage collector to remove it")
        # Made by someone else, with a token (or rules) they chose: never run the job behind it.
        return (f"{kind} {doc['metadata']['name']} exists and is not this job's (no owner reference to it): "
                "delete it, or submit the job under another name")

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(API_GROUP, VERSION, namespace, PLURAL, name,
                                                          {"status": dict(status)}, _request_timeout=API_TIMEOUT_S)

    def post_event(self, job: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        from kubernetes import client

        meta = job["metadata"]
        now = datetime.now(timezone.utc)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=meta["namespace"]),
            involved_object=client.V1ObjectReference(api_version=API_VERSION, kind="TrainingJob", name=meta["name"],
                                                     namespace=meta["namespace"], uid=meta.get("uid")),
            type=type_, reason=reason, message=message[:1024], first_timestamp=now, last_timestamp=now, count=1,
            source=client.V1EventSource(component="trainforge-operator"), reporting_component="trainforge-operator")
        try:
            self.core.create_namespaced_event(meta["namespace"], event, _request_timeout=API_TIMEOUT_S)
        except Exception as exc:  # an event is informational: never let it stop a reconcile
            log.warning("could not post event %s for %s/%s: %s", reason, meta["namespace"], meta["name"], exc)

    def _delete(self, group: str, version: str, namespace: str, plural: str, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.custom.delete_namespaced_custom_object(group, version, namespace, plural, name,
                                                        propagation_policy="Background",
                                                        _request_timeout=API_TIMEOUT_S)
        except ApiException as exc:
            if exc.status != 404:
                raise


def split_observed(job: dict[str, Any], rayjobs: list[dict[str, Any]], pods: list[dict[str, Any]],
                   now: datetime) -> Observed:
    """Sort what carries the job's label into this incarnation's current attempt, its earlier
    attempts, and what is not to be adopted (another incarnation's RayJobs, those being deleted)."""
    uid = (job.get("metadata") or {}).get("uid", "")
    attempt = ((job.get("status") or {}).get("attempt")) or 0
    current = attempt_name(job["metadata"]["name"], attempt) if attempt else None
    ours = [r for r in rayjobs if owner_uid(r) == uid and not being_deleted(r)]
    foreign = [r for r in rayjobs if r not in ours]
    rayjob = next((r for r in ours if r["metadata"]["name"] == current), None)
    earlier = sorted((r for r in ours if 0 < _attempt_of(r) < attempt), key=_attempt_of)

    def is_current(pod: Mapping[str, Any]) -> bool:
        labels = _labels(pod)
        return labels.get(LABEL_ATTEMPT) == str(attempt) and labels.get(LABEL_JOB_UID, uid) == uid

    mine = [p for p in pods if is_current(p)] if rayjob is not None else []
    others = [p for p in pods if not any(p is m for m in mine)]
    return Observed(job, rayjob, now, mine, earlier, others, foreign)


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _attempt_of(rayjob: Mapping[str, Any]) -> int:
    value = _labels(rayjob).get(LABEL_ATTEMPT, "")
    return int(value) if value.isdigit() else 0


def _reason(exc: Any) -> str:
    import json

    try:
        body = json.loads(exc.body)
        return str(body.get("message") or exc.reason)
    except (TypeError, ValueError):
        return str(exc.reason)
