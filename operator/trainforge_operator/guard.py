"""What fences a job's Ray cluster off from the rest of the cluster. Pure: no I/O, no API calls.

- Ray token authentication: one Secret per job (key `auth_token`, KubeRay's convention) that the
  operator creates and the TrainingJob owns; each attempt's RayJob names it in
  `rayClusterSpec.authOptions`, so KubeRay (>= 1.5.1) puts `RAY_AUTH_MODE=token` and the token into
  every Ray container and the submitter, and uses it for its own dashboard calls. Without the token,
  nothing reaches the GCS, the dashboard or the client port (Ray >= 2.52).
- A NetworkPolicy per job: its pods (head, workers, submitters: all carry the job label) take
  connections only from each other and from the KubeRay operator, which polls the head's dashboard.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from typing import Any

from trainforge.spec.contract import LABEL_JOB, LABEL_MANAGED_BY

from .settings import OperatorSettings

AUTH_TOKEN_KEY = "auth_token"
"""The Secret's data key that KubeRay reads the token from (`utils.RAY_AUTH_TOKEN_SECRET_KEY`)."""
TOKEN_BYTES = 32
Manifest = dict[str, Any]


def auth_secret_name(job_name: str) -> str:
    return f"{job_name}-ray-auth"


def network_policy_name(job_name: str) -> str:
    return f"{job_name}-ray"


def new_token() -> str:
    """A fresh random token: 64 hex characters (Ray's own generator makes 32-byte tokens too)."""
    return secrets.token_hex(TOKEN_BYTES)


def auth_options(job_name: str) -> Manifest:
    return {"mode": "token", "secretName": auth_secret_name(job_name)}


def owner_of(body: Mapping[str, Any]) -> Manifest:
    # No blockOwnerDeletion: that would need `update` on trainingjobs/finalizers, and nothing has to
    # wait for these objects to go.
    meta = body["metadata"]
    return {"apiVersion": body.get("apiVersion", "trainforge.dev/v1alpha1"), "kind": body.get("kind", "TrainingJob"),
            "name": meta["name"], "uid": meta["uid"], "controller": True}


def auth_secret(body: Mapping[str, Any], token: str) -> Manifest:
    meta = body["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": auth_secret_name(meta["name"]), "namespace": meta["namespace"],
                     "labels": {LABEL_JOB: meta["name"], LABEL_MANAGED_BY: "trainforge"},
                     "ownerReferences": [owner_of(body)]},
        "type": "Opaque",
        "data": {AUTH_TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


def network_policy(body: Mapping[str, Any], settings: OperatorSettings) -> Manifest:
    meta = body["metadata"]
    job_pods = {"matchLabels": {LABEL_JOB: meta["name"]}}
    namespace = settings.kuberay_namespace
    kuberay: Manifest = {"podSelector": {"matchLabels": dict(settings.kuberay_pod_labels)},
                         "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
                         if namespace else {}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": network_policy_name(meta["name"]), "namespace": meta["namespace"],
                     "labels": {LABEL_JOB: meta["name"], LABEL_MANAGED_BY: "trainforge"},
                     "ownerReferences": [owner_of(body)]},
        "spec": {
            "podSelector": job_pods,
            "policyTypes": ["Ingress"],  # egress stays open: storage, image registries, DNS
            "ingress": [{"from": [{"podSelector": job_pods}, kuberay]}],
        },
    }


def owned_by(obj: Mapping[str, Any], body: Mapping[str, Any]) -> bool:
    """Whether `obj` is this incarnation's (its controller is the TrainingJob with this uid)."""
    uid = body["metadata"]["uid"]
    return any(ref.get("uid") == uid and ref.get("controller")
               for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


def stale_owner(obj: Mapping[str, Any], body: Mapping[str, Any]) -> bool:
    """Whether `obj` belongs to an earlier incarnation of this job (same name, another uid): the
    garbage collector removes it, the operator may as well do so now."""
    meta = body["metadata"]
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("kind") == body.get("kind", "TrainingJob") and ref.get("name") == meta["name"]
               and ref.get("uid") != meta["uid"] for ref in refs) and not owned_by(obj, body)
