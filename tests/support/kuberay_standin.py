"""Test-only stand-in for the KubeRay operator (it replaces KubeRay, which cannot run here).

It watches RayJobs on the emulated API server and, like KubeRay with `shutdownAfterJobFinishes`,
gives each one a Ray "cluster": head and worker Pod objects (never scheduled anywhere) plus the
entrypoint run for real as a local process, with the head container's env (secretKeyRef values
read from the Secret objects) and RAY_ADDRESS of the test session's Ray. It writes the RayJob status
fields trainforge reads (`jobStatus`, `jobDeploymentStatus`, `rayClusterName`, `reason`, `message`,
`startTime`, `endTime`) the way KubeRay 1.x does; deleting a RayJob stops its process (SIGTERM,
then SIGKILL after the pod's grace period) and deletes its pods.

`evict_pod` is the kubelet evicting one pod (spot reclaim, drain, preemption): the pod is marked
`DisruptionTarget`, its container's preStop exec hook runs for real as a local process (the
container's env plus RAY_ADDRESS of the session) bounded by the pod's grace, and the pod goes. For
the head pod, `ray start` (PID 1) dies with it and takes the head's Ray, and the driver, along:
the driver is SIGKILLed, since nothing forwards the pod's SIGTERM to it. A worker pod's Ray node is
not emulated (every attempt shares the session's Ray), so its loss does not kill Ray Train workers.

K8sJobMode's submitter is stood in for by its pod alone (`<rayjob>-<5 chars>`, labelled
`batch.kubernetes.io/job-name` / `job-name` as the Job controller labels it, owned by the RayJob):
its log is the driver's output, appended as the process writes it, and it stays after the cluster
is torn down, as KubeRay leaves the submitter Job until the RayJob goes.

`spec.suspend` (Kueue's RayJob integration) as KubeRay 1.x treats it: a RayJob created suspended
waits with jobDeploymentStatus Suspended and starts once unsuspended; one suspended while it runs
is torn down as a cluster deletion does (every pod's preStop hook runs for real, bounded by its
grace, then the processes die and the pods go) and ends Suspended, its job status reset.

Not emulated: RayCluster objects, the submitter Job object itself, autoscaling, retries
(the operator sets backoffLimit 0)."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from tests.support.kuberay_objects import GROUP, PLURAL, VERSION, ClusterObjects

UNSCHEDULABLE = "standin.trainforge.dev/unschedulable"
"""A worker nodeSelector key no node of the stand-in has: its pods are never scheduled."""


class PodLog(Protocol):
    def __call__(self, namespace: str, name: str, text: str, *, append: bool, finished: bool) -> None: ...


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Attempt:
    namespace: str
    name: str
    cluster: str
    process: subprocess.Popen[bytes]
    log_path: Path
    grace_s: float
    pods: list[str] = field(default_factory=list)
    finished: bool = False
    submitter: str = ""
    log_sent: int = 0
    log_closed: bool = False
    partitioned: bool = False
    """Its head's node stopped reporting (`partition_head`): deleting the RayJob reaches nothing."""
    uid: str = ""
    """The RayJob's uid: a RayJob deleted and created again under its name is another attempt, as
    KubeRay tells them apart."""


@dataclass
class Eviction:
    """What evicting one pod did: its preStop hook's exit status and output, and how long it took."""

    pod: str
    hook_exit: int | None
    hook_output: str
    hook_s: float
    total_s: float


class KubeRayStandIn(ClusterObjects):
    def __init__(self, api_client: Any, log_dir: Path, ray_address: str | None,
                 extra_env: dict[str, str] | None = None, poll_s: float = 0.5,
                 pod_log: PodLog | None = None) -> None:
        from kubernetes import client

        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.log_dir, self.ray_address, self.poll_s = log_dir, ray_address, poll_s
        self.extra_env = extra_env or {}
        self.pod_log = pod_log
        self.attempts: dict[tuple[str, str], Attempt] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kuberay-standin", daemon=True)
        self.errors: list[str] = []
        self.cut_off: list[Attempt] = []
        """Attempts deleted while partitioned: still running, unreachable (`heal` ends them)."""
        self._pods_lock = threading.Lock()

    def __enter__(self) -> KubeRayStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for attempt in [*self.attempts.values(), *self.cut_off]:
            _terminate(attempt.process, 5)

    # ---- the loop ------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._pass()
            except Exception as exc:  # keep going; the test asserts on self.errors
                self.errors.append(repr(exc))
            self._stop.wait(self.poll_s)

    def _pass(self) -> None:
        listed = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL).get("items", [])
        present = set()
        for rayjob in listed:
            meta = rayjob["metadata"]
            key = (meta["namespace"], meta["name"])
            present.add(key)
            if key in self.attempts and self.attempts[key].uid != meta.get("uid"):
                self._gone(self.attempts.pop(key))  # the one we ran was deleted between two passes
            deployment = (rayjob.get("status") or {}).get("jobDeploymentStatus")
            if (rayjob.get("spec") or {}).get("suspend"):
                self._suspend(rayjob, self.attempts.pop(key, None))
            elif key not in self.attempts and deployment in (None, "", "Suspended"):
                self._start(rayjob)
            elif key in self.attempts:
                self._watch(self.attempts[key])
                self._pump_log(self.attempts[key])
        for key in list(self.attempts):
            if key not in present:
                self._gone(self.attempts.pop(key))

    def _start(self, rayjob: dict[str, Any]) -> None:
        meta, spec = rayjob["metadata"], rayjob["spec"]
        cluster = f"{meta['name']}-raycluster"
        workers = spec["rayClusterSpec"].get("workerGroupSpecs") or [{}]
        if UNSCHEDULABLE in ((workers[0].get("template") or {}).get("spec") or {}).get("nodeSelector", {}):
            return self._start_unschedulable(rayjob, cluster)
        self._patch(meta, {"jobDeploymentStatus": "Initializing", "rayClusterName": cluster, "jobId": meta["name"],
                           "startTime": _now()})
        head = spec["rayClusterSpec"]["headGroupSpec"]["template"]
        env = {**os.environ, **self.extra_env, **self._container_env(meta["namespace"], head)}
        if self.ray_address:
            env["RAY_ADDRESS"] = self.ray_address
        log_path = self.log_dir / f"{meta['namespace']}-{meta['name']}-{meta.get('uid', '')[:8]}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen([sys.executable, *shlex.split(spec["entrypoint"])[1:]], env=env,
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        grace = float(head["spec"].get("terminationGracePeriodSeconds", 30))
        attempt = Attempt(meta["namespace"], meta["name"], cluster, process, log_path, grace, uid=meta.get("uid", ""))
        attempt.pods = self._create_pods(rayjob, cluster)
        attempt.submitter = self._create_submitter(rayjob)
        self.attempts[(meta["namespace"], meta["name"])] = attempt
        self._patch(meta, {"jobStatus": "RUNNING", "jobDeploymentStatus": "Running"})

    def _suspend(self, rayjob: dict[str, Any], attempt: Attempt | None) -> None:
        """KubeRay with spec.suspend: nothing runs. A running cluster is deleted (Suspending: the pods'
        preStop hooks, then their processes), and the status is reset to Suspended."""
        meta = rayjob["metadata"]
        if attempt is None:
            if (rayjob.get("status") or {}).get("jobDeploymentStatus") != "Suspended":
                self._patch(meta, {"jobDeploymentStatus": "Suspended"})
            return
        self._patch(meta, {"jobDeploymentStatus": "Suspending"})
        if not attempt.finished:
            for name in list(attempt.pods):
                with contextlib.suppress(Exception):  # a pod already gone has no hook to run
                    read = self.core.read_namespaced_pod(name, attempt.namespace)
                    self._run_prestop(attempt.namespace, self.core.api_client.sanitize_for_serialization(read),
                                      attempt.grace_s)
        self._gone(attempt)
        self._pump_log(attempt)
        from kubernetes.client.exceptions import ApiException

        try:
            self._patch(meta, {"jobDeploymentStatus": "Suspended", "jobStatus": "", "rayClusterName": "",
                               "reason": None, "message": None})
        except ApiException as exc:
            if exc.status != 404:  # deleted meanwhile: nothing to report on
                raise

    def _start_unschedulable(self, rayjob: dict[str, Any], cluster: str) -> None:
        """No node fits the workers (the nodeSelector names UNSCHEDULABLE): the head runs, the worker
        pods stay Pending with the scheduler's reason, and the Ray job never starts."""
        meta = rayjob["metadata"]
        self._patch(meta, {"jobDeploymentStatus": "Initializing", "rayClusterName": cluster, "startTime": _now()})
        process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"], start_new_session=True)
        attempt = Attempt(meta["namespace"], meta["name"], cluster, process, self.log_dir / "unscheduled.log", 1.0,
                          uid=meta.get("uid", ""), finished=True)
        attempt.pods = self._create_pods(rayjob, cluster)
        for name in attempt.pods:
            if not name.endswith("-head"):
                self.core.patch_namespaced_pod_status(name, meta["namespace"], {"status": {
                    "phase": "Pending", "conditions": [{
                        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                        "message": "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."}]}})
        self.attempts[(meta["namespace"], meta["name"])] = attempt

    def _watch(self, attempt: Attempt) -> None:
        if attempt.finished:
            return
        code = attempt.process.poll()
        if code is None:
            return
        attempt.finished = True
        meta = {"namespace": attempt.namespace, "name": attempt.name}
        if code == 0:
            self._patch(meta, {"jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Complete", "endTime": _now(),
                               "message": "Job finished successfully."})
        else:
            self._patch(meta, {"jobStatus": "FAILED", "jobDeploymentStatus": "Failed", "endTime": _now(),
                               "reason": "AppFailed",
                               "message": f"Job entrypoint command failed with exit code {code}"})
        self._delete_pods(attempt)  # shutdownAfterJobFinishes: the cluster goes away

    def _pump_log(self, attempt: Attempt) -> None:
        """Append what the driver wrote since the last pass to the submitter pod's log."""
        if self.pod_log is None or attempt.log_closed:
            return
        done = attempt.process.poll() is not None
        with attempt.log_path.open("rb") as f:
            f.seek(attempt.log_sent)
            chunk = f.read()
        attempt.log_sent += len(chunk)
        if chunk or done:
            self.pod_log(attempt.namespace, attempt.submitter, chunk.decode(errors="replace"), append=True,
                         finished=done)
        attempt.log_closed = done

    def _gone(self, attempt: Attempt) -> None:
        if attempt.partitioned:  # no kubelet to stop it: the process runs on, its pods stay listed
            self.cut_off.append(attempt)
            return
        _terminate(attempt.process, attempt.grace_s)
        self._delete_pods(attempt)

    # ---- helpers for tests ---------------------------------------------------------------------

    def attempt(self, namespace: str, name: str, timeout: float = 60) -> Attempt:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (namespace, name) in self.attempts:
                return self.attempts[(namespace, name)]
            time.sleep(0.2)
        raise TimeoutError(f"RayJob {namespace}/{name} was never started")

    def lose_head(self, attempt: Attempt) -> None:
        """A node dies under the head: the process is killed and the head pod vanishes, while the
        RayJob stays 'Running' — as KubeRay leaves it."""
        attempt.finished = True  # KubeRay would not notice
        _terminate(attempt.process, 0)
        self._delete_pods(attempt, heads_only=True)

    def partition_head(self, attempt: Attempt) -> None:
        """The head's node stops reporting (a network partition): the node controller marks its pod
        Unknown; the driver on it keeps running, and a deletion never reaches it until `heal`."""
        attempt.partitioned = True
        for name in attempt.pods:
            if name.endswith("-head"):
                self.core.patch_namespaced_pod_status(name, attempt.namespace, {"status": {"phase": "Unknown"}})

    def heal(self, attempt: Attempt) -> None:
        """The partition ends (or the node is removed): what was cut off is stopped and goes."""
        attempt.partitioned = False
        _terminate(attempt.process, attempt.grace_s)
        self._delete_pods(attempt)
        if attempt in self.cut_off:
            self.cut_off.remove(attempt)

    def evict_pod(self, attempt: Attempt, pod_name: str, reason: str = "EvictionByEvictionAPI") -> Eviction:
        """The kubelet evicting one pod: DisruptionTarget, the preStop hook (bounded by the pod's
        grace), then the pod's processes die and the object goes. Blocks until done."""
        started = time.monotonic()
        read = self.core.read_namespaced_pod(pod_name, attempt.namespace)
        pod = self.core.api_client.sanitize_for_serialization(read)
        self.core.patch_namespaced_pod_status(pod_name, attempt.namespace, {"status": {"conditions": [
            {"type": "DisruptionTarget", "status": "True", "reason": reason, "lastTransitionTime": _now(),
             "message": "the stand-in kubelet evicts this pod"}]}})
        grace = float(pod["spec"].get("terminationGracePeriodSeconds", 30))
        hook_exit, output = self._run_prestop(attempt.namespace, pod, grace)
        hook_s = time.monotonic() - started
        if pod["metadata"]["labels"].get("ray.io/node-type") == "head":
            _terminate(attempt.process, 0)  # ray start and the head's Ray die: the driver with them
        from kubernetes.client.exceptions import ApiException

        with self._pods_lock:
            try:
                self.core.delete_namespaced_pod(pod_name, attempt.namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise
            if pod_name in attempt.pods:
                attempt.pods.remove(pod_name)
        return Eviction(pod_name, hook_exit, output, hook_s, time.monotonic() - started)

    def _run_prestop(self, namespace: str, pod: dict[str, Any], grace: float) -> tuple[int | None, str]:
        """The container's preStop exec command as a process; killed when the grace is over, as
        the kubelet does. (None, "") when the pod has no such hook."""
        container = pod["spec"]["containers"][0]
        command = (((container.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command")
        if not command:
            return None, ""
        if command[0] == "python":
            command = [sys.executable, *command[1:]]
        env = {**os.environ, **self.extra_env, **self._container_env(namespace, pod)}
        if self.ray_address:
            env["RAY_ADDRESS"] = self.ray_address
        try:
            done = subprocess.run(command, env=env, capture_output=True, timeout=grace, check=False)
        except subprocess.TimeoutExpired as exc:
            return None, (exc.stderr or b"").decode(errors="replace")
        return done.returncode, (done.stdout + done.stderr).decode(errors="replace")


def _terminate(process: subprocess.Popen[bytes], grace_s: float) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM if grace_s > 0 else signal.SIGKILL)
        process.wait(timeout=grace_s or 5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
