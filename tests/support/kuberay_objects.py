"""The Kubernetes objects the KubeRay stand-in (kuberay_standin.py) writes as KubeRay would: the
RayJob's status, a Ray cluster's head and worker Pod objects, K8sJobMode's submitter pod, and the
containers' environment (secretKeyRef values read from the Secrets). A mixin over the stand-in's
API clients."""

from __future__ import annotations

import base64
import os
import threading
from typing import Any

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayjobs"


class ClusterObjects:
    custom: Any
    core: Any
    pod_log: Any
    _pods_lock: threading.Lock

    # ---- Kubernetes objects --------------------------------------------------------------------

    def _patch(self, meta: dict[str, Any], status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, meta["namespace"], PLURAL, meta["name"],
                                                          {"status": status})

    def _container_env(self, namespace: str, template: dict[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for var in template["spec"]["containers"][0].get("env", []):
            if "value" in var:
                env[var["name"]] = var["value"]
            elif (ref := (var.get("valueFrom") or {}).get("secretKeyRef")) is not None:
                value = self._secret_value(namespace, ref["name"], ref["key"])
                if value is not None:
                    env[var["name"]] = value
        return env

    def _secret_value(self, namespace: str, name: str, key: str) -> str | None:
        from kubernetes.client.exceptions import ApiException

        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except ApiException:
            return None
        data = (secret.data or {}).get(key)
        return base64.b64decode(data).decode() if data else (secret.string_data or {}).get(key)

    def _create_pods(self, rayjob: dict[str, Any], cluster: str) -> list[str]:
        spec = rayjob["spec"]["rayClusterSpec"]
        groups = [("head", spec["headGroupSpec"], 1)] + [
            ("worker", g, int(g.get("replicas", 1))) for g in spec.get("workerGroupSpecs", [])]
        names = []
        for node_type, group, replicas in groups:
            for i in range(replicas):
                name = f"{cluster}-head" if node_type == "head" else f"{cluster}-{group['groupName']}-{i}"
                labels = {**(group["template"].get("metadata") or {}).get("labels", {}),
                          "ray.io/cluster": cluster, "ray.io/node-type": node_type}
                pod = {"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": name, "namespace": rayjob["metadata"]["namespace"], "labels": labels},
                       "spec": group["template"]["spec"], "status": {"phase": "Running"}}
                self.core.create_namespaced_pod(rayjob["metadata"]["namespace"], pod)
                names.append(name)
        return names

    def _create_submitter(self, rayjob: dict[str, Any]) -> str:
        meta = rayjob["metadata"]
        name = f"{meta['name']}-{os.urandom(3).hex()[:5]}"
        owner = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RayJob", "name": meta["name"], "uid": meta["uid"],
                 "controller": True}
        labels = {"batch.kubernetes.io/job-name": meta["name"], "job-name": meta["name"]}
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": meta["namespace"], "labels": labels, "ownerReferences": [owner]},
               "spec": {"restartPolicy": "Never",
                        "containers": [{"name": "ray-job-submitter", "image": "rayproject/ray"}]}}
        self.core.create_namespaced_pod(meta["namespace"], pod)
        if self.pod_log is not None:
            self.pod_log(meta["namespace"], name, "", append=False, finished=False)
        return name

    def _delete_pods(self, attempt: Any, heads_only: bool = False) -> None:
        """The attempt's pods go (`attempt.pods`, `attempt.namespace`: a stand-in Attempt)."""
        from kubernetes.client.exceptions import ApiException

        with self._pods_lock:
            for name in list(attempt.pods):
                if heads_only and not name.endswith("-head"):
                    continue
                try:
                    self.core.delete_namespaced_pod(name, attempt.namespace)
                except ApiException as exc:
                    if exc.status != 404:
                        raise
                attempt.pods.remove(name)
