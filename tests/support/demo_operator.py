"""A tiny kopf operator for the Kubernetes harness' self-test (tests/integration/test_kube_harness.py).

No ``@kopf.on.login``: kopf's default login must find the emulator through $KUBECONFIG. Each
handler appends to ``CALLS`` so the test can count how often it ran.
"""

from __future__ import annotations

from typing import Any

import kopf
import kubernetes.client

CALLS: list[tuple[str, str]] = []
"""(handler, object name), in call order."""


@kopf.on.create("trainforge.dev", "v1alpha1", "trainingjobs")
def created(name: str, namespace: str, body: kopf.Body, spec: kopf.Spec, meta: kopf.Meta, patch: kopf.Patch,
            **_: Any) -> None:
    CALLS.append(("create", name))
    config_map = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": f"{name}-config", "labels": {"demo/job": name}},
                  "data": {"workers": str(spec.get("workers"))}}
    kopf.adopt(config_map, owner=body)
    kubernetes.client.CoreV1Api().create_namespaced_config_map(namespace, config_map)
    patch.status["phase"] = "Created"
    patch.status["observedGeneration"] = meta.get("generation")


@kopf.on.update("trainforge.dev", "v1alpha1", "trainingjobs", field="spec")
def updated(name: str, meta: kopf.Meta, patch: kopf.Patch, **_: Any) -> None:
    CALLS.append(("update", name))
    patch.status["observedGeneration"] = meta.get("generation")
    patch.status["message"] = f"updated to generation {meta.get('generation')}"


@kopf.on.event("", "v1", "configmaps", labels={"demo/job": kopf.PRESENT})
def config_map_event(name: str, type: str | None, **_: Any) -> None:
    CALLS.append((f"event:{type}", name))
