"""pytest plugin: a test-only Kubernetes API server stand-in on loopback, and kopf run against it.

The ``kube`` fixture serves a ``StatefulEmulator`` (tests/support/kube_emulator.py, kmock-based) on
127.0.0.1 with the built-in resources, our TrainingJob CRD and KubeRay's RayJob/RayCluster, writes a
kubeconfig for it and points ``KUBECONFIG`` at it: kopf's default login and
``kubernetes.config.load_kube_config()`` both reach it with no test-only code in the operator.
``run_operator`` runs a kopf module against it in a thread.

It is no Kubernetes: no auth or RBAC (every call is allowed; ``Kube.requests`` records them for a
ClusterRole check), no controllers (no pod ever runs, nothing fills a RayJob's status unless a test
does), no admission webhooks or defaulting, no server-side apply; see kube_emulator's docstring.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import importlib
import json
import logging
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import aiohttp.test_utils
import aiohttp.web
import kmock
import kopf
import kubernetes.client
import kubernetes.config
import pytest
import yaml
from kopf._core.intents.registries import SmartOperatorRegistry  # the default's class: it holds the logins
from kopf.testing import KopfRunner

from tests.support.kube_emulator import ApiCall, StatefulEmulator

T = TypeVar("T")
Obj = dict[str, Any]
ROOT = Path(__file__).resolve().parents[2]
TRAINFORGE_CRDS = ROOT / "charts" / "trainforge" / "files"
KUBERAY_CRDS_ENV = "TRAINFORGE_KUBERAY_CRDS"
TEST_USER_AGENT = "trainforge-tests"
"""The tests' own calls carry it, so that ``Kube.requests`` tells them from the operator's."""


def _minimal_crd(plural: str, kind: str) -> Obj:
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.ray.io"},
            "spec": {"group": "ray.io", "scope": "Namespaced",
                     "names": {"plural": plural, "singular": kind.lower(), "kind": kind},
                     "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}}}]}}


@functools.cache
def _read_yaml(path: Path) -> Obj:
    # KubeRay's CRDs are about 1 MB each: parse them once per session, not once per test.
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def load_crds() -> list[Obj]:
    """Ours from the chart; KubeRay's from $TRAINFORGE_KUBERAY_CRDS if it has them, else schema-less stand-ins."""
    paths = sorted(TRAINFORGE_CRDS.glob("*.yaml"))
    folder = os.environ.get(KUBERAY_CRDS_ENV)
    crds = []
    for plural, kind in (("rayjobs", "RayJob"), ("rayclusters", "RayCluster")):
        path = Path(folder, f"ray.io_{plural}.yaml") if folder else None
        if path is not None and path.is_file():
            paths.append(path)
        else:
            crds.append(_minimal_crd(plural, kind))
    return [copy.deepcopy(_read_yaml(path)) for path in paths] + crds


class KubeApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body.get('message') if isinstance(body, dict) else body}")
        self.status, self.body = status, body


@dataclass
class Kube:
    """A served emulator: its URL and kubeconfig, and thread-safe helpers for tests (JSON dicts in and out)."""

    emulator: StatefulEmulator
    loop: asyncio.AbstractEventLoop
    url: str
    kubeconfig: Path
    namespace: str = "default"
    _opener: urllib.request.OpenerDirector = field(
        default_factory=lambda: urllib.request.build_opener(urllib.request.ProxyHandler({})))

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run an emulator method on its event loop: its state is not thread-safe."""
        async def run() -> T:
            return fn(*args, **kwargs)
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=10)

    @property
    def requests(self) -> list[ApiCall]:
        """Every call so far (verb, group, version, resource, subresource, namespace, name, user agent)."""
        return list(self.emulator.api_calls)

    def api_client(self) -> kubernetes.client.ApiClient:
        client = kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))
        client.user_agent = TEST_USER_AGENT
        return client

    def register_crd(self, crd: Obj, *, validate: bool = True, prune: bool = True) -> None:
        self.call(self.emulator.register_crd, crd, validate=validate, prune=prune)

    def set_pod_log(self, namespace: str, name: str, text: str, *, append: bool = False,
                    finished: bool = True) -> None:
        self.call(self.emulator.set_pod_log, namespace, name, text, append=append, finished=finished)

    def request(self, method: str, path: str, body: Any = None, *, params: dict[str, str] | None = None,
                content_type: str = "application/json") -> Any:
        """One raw API call: the JSON answer (text if not JSON); KubeApiError with the Status on failure."""
        url = self.url + path + (f"?{urllib.parse.urlencode(params)}" if params else "")
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": content_type, "User-Agent": TEST_USER_AGENT}
        request = urllib.request.Request(url, data, method=method, headers=headers)
        try:
            with self._opener.open(request, timeout=10) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            raise KubeApiError(e.code, json.loads(raw) if raw.startswith(b"{") else raw.decode()) from None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode()

    def watch(self, api_version: str, plural: str, namespace: str | None = None, *,
              resource_version: str | None = None, label_selector: str | None = None,
              timeout: float = 0.3) -> list[Obj]:
        """The events a watch sees within ``timeout`` seconds (the server then ends the stream)."""
        params = {"watch": "true", "timeoutSeconds": str(timeout), "resourceVersion": resource_version,
                  "labelSelector": label_selector}
        text = self.request("GET", self.path(api_version, plural, namespace),
                            params={k: v for k, v in params.items() if v is not None})
        events = [text] if isinstance(text, dict) else [json.loads(line) for line in text.splitlines() if line]
        return [event for event in events if event]

    @staticmethod
    def path(api_version: str, plural: str, namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> str:
        parts = ["/api" if "/" not in api_version else "/apis", api_version]
        parts += ["namespaces", namespace] if namespace else []
        parts += [p for p in (plural, name, subresource) if p]
        return "/".join(parts)

    def plural(self, api_version: str, kind: str) -> str:
        group, _, version = api_version.rpartition("/")
        resources = self.call(lambda: {res: info.kind for res, info in self.emulator.resources.items()})
        for res, res_kind in resources.items():
            if (res.group, res.version, res_kind) == (group, version, kind):
                return str(res.plural)
        raise LookupError(f"no resource of kind {kind} in {api_version}")

    def _namespace_of(self, api_version: str, plural: str, namespace: str | None) -> str | None:
        """The namespace for a URL: the given one or ours for namespaced resources, none for cluster-wide."""
        group, _, version = api_version.rpartition("/")
        res = kmock.resource(group, version, plural)
        namespaced = self.call(lambda: res not in self.emulator.resources or self.emulator.resources[res].namespaced)
        return namespace or self.namespace if namespaced is not False else None

    def create(self, obj: Obj, namespace: str | None = None) -> Obj:
        plural = self.plural(obj["apiVersion"], obj["kind"])
        namespace = self._namespace_of(obj["apiVersion"], plural, namespace or obj.get("metadata", {}).get("namespace"))
        return self.request("POST", self.path(obj["apiVersion"], plural, namespace), obj)

    def get(self, api_version: str, plural: str, namespace: str | None, name: str) -> Obj:
        return self.request("GET", self.path(api_version, plural, self._namespace_of(api_version, plural, namespace),
                                             name))

    def exists(self, api_version: str, plural: str, namespace: str | None, name: str) -> bool:
        try:
            self.get(api_version, plural, namespace, name)
        except KubeApiError as e:
            if e.status == 404:
                return False
            raise
        return True

    def list(self, api_version: str, plural: str, namespace: str | None = None, *,
             label_selector: str | None = None, field_selector: str | None = None) -> list[Obj]:
        params = {k: v for k, v in (("labelSelector", label_selector), ("fieldSelector", field_selector)) if v}
        result = self.request("GET", self.path(api_version, plural, namespace), params=params)
        return list(result["items"])

    def patch(self, api_version: str, plural: str, namespace: str | None, name: str, patch: Any, *,
              subresource: str | None = None, content_type: str = "application/merge-patch+json") -> Obj:
        path = self.path(api_version, plural, self._namespace_of(api_version, plural, namespace), name, subresource)
        return self.request("PATCH", path, patch, content_type=content_type)

    def patch_status(self, api_version: str, plural: str, namespace: str | None, name: str, status: Obj) -> Obj:
        return self.patch(api_version, plural, namespace, name, {"status": status}, subresource="status")

    def replace(self, obj: Obj, *, subresource: str | None = None) -> Obj:
        plural = self.plural(obj["apiVersion"], obj["kind"])
        namespace = self._namespace_of(obj["apiVersion"], plural, obj["metadata"].get("namespace"))
        return self.request("PUT", self.path(obj["apiVersion"], plural, namespace, obj["metadata"]["name"],
                                             subresource), obj)

    def delete(self, api_version: str, plural: str, namespace: str | None, name: str, *,
               propagation_policy: str | None = None) -> Obj:
        body = {"propagationPolicy": propagation_policy} if propagation_policy else None
        path = self.path(api_version, plural, self._namespace_of(api_version, plural, namespace), name)
        return self.request("DELETE", path, body)

    @staticmethod
    def wait_for(predicate: Callable[[], T], timeout: float = 10.0, message: str = "condition") -> T:
        """Poll until the predicate returns something truthy (and return it); API errors count as not yet."""
        deadline = time.monotonic() + timeout
        interval = 0.02  # grows to 0.25 s: a 20 ms poll of a long wait kept the emulator busy, starving Ray
        while True:
            with contextlib.suppress(KubeApiError, TimeoutError):  # TimeoutError: the emulator was busy
                if result := predicate():
                    return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {message}")
            time.sleep(interval)
            interval = min(interval * 1.5, 0.25)


class _QuietServer(aiohttp.test_utils.RawTestServer):
    """No access log (``Kube.requests`` has the calls), and no 60 s wait for streams left open at shutdown."""

    async def _make_runner(self, debug: bool = True, **kwargs: Any) -> aiohttp.web.ServerRunner:
        server = aiohttp.web.Server(self._handler, loop=self._loop, debug=debug, access_log=None, **kwargs)
        return aiohttp.web.ServerRunner(server, debug=debug, shutdown_timeout=1.0, **kwargs)


@contextlib.contextmanager
def serve(emulator: StatefulEmulator, directory: Path) -> Iterator[Kube]:
    """Serve the emulator on 127.0.0.1 (a free port) from its own thread and loop, with a kubeconfig in
    ``directory``: kopf and sync tests both block their own loops. The ``kube`` fixture uses it."""
    ready, started = threading.Event(), {}

    async def main() -> None:
        stop = asyncio.Event()
        try:
            async with emulator, kmock.Server(emulator, server_cls=_QuietServer) as server:
                started.update(loop=asyncio.get_running_loop(), stop=stop, url=str(server.url).rstrip("/"))
                ready.set()
                await stop.wait()
                emulator.close_streams()  # else aiohttp waits up to 60 s for open watches on shutdown
        except BaseException as e:
            started["error"] = e
            raise
        finally:
            ready.set()

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="kube-emulator", daemon=True)
    thread.start()
    ready.wait()
    if "error" in started:
        raise started["error"]
    kubeconfig = directory / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": started["url"]}}],
        "users": [{"name": "tester", "user": {"token": "emulator-token"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester",
                                                      "namespace": "default"}}]}))
    try:
        yield Kube(emulator, started["loop"], started["url"], kubeconfig)
    finally:
        started["loop"].call_soon_threadsafe(started["stop"].set)
        thread.join(timeout=30)


@pytest.fixture
def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Kube]:
    emulator = StatefulEmulator()
    with warnings.catch_warnings():  # kmock reads its bundle with a deprecated importlib call
        warnings.simplefilter("ignore", DeprecationWarning)
        emulator.resources.load_bundled()  # else kopf waits silently for events, namespaces...
    for crd in load_crds():
        emulator.register_crd(crd)
    with serve(emulator, tmp_path) as server:
        monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig))
        # The client reads $KUBECONFIG once, at import: a process started with it set needs no such help.
        for target in (kubernetes.config, kubernetes.config.kube_config):
            monkeypatch.setattr(target, "KUBE_CONFIG_DEFAULT_LOCATION", str(server.kubeconfig))
        for name in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):  # kopf tries in-cluster first
            monkeypatch.delenv(name, raising=False)
        server.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
        yield server


@dataclass
class OperatorRun:
    runner: KopfRunner
    module: ModuleType
    """The handlers' module as this run imported it: read its state here, not from an earlier import."""

    @property
    def output(self) -> str:
        """kopf's log, once the run has exited (kopf's CLI runner hands it over only then)."""
        if not self.runner.future.done():
            raise RuntimeError("kopf's output is available once the run_operator() block has exited")
        return self.runner.output

    @property
    def errors(self) -> list[str]:
        return [line for line in self.output.splitlines() if "[ERROR" in line or "Traceback" in line]


_registries: dict[str, kopf.OperatorRegistry] = {}


def _registry(module: str) -> kopf.OperatorRegistry:
    """One registry per handlers module, so that two operator modules never run each other's handlers.

    kopf registers handlers into the default registry at import, so the module (and its submodules)
    is imported afresh once, with its own registry as the default; later runs reuse that registry.
    """
    if module not in _registries:
        previous = kopf.get_default_registry()
        kopf.set_default_registry(registry := SmartOperatorRegistry())
        try:
            for name in [n for n in sys.modules if n == module or n.startswith(f"{module}.")]:
                del sys.modules[name]
            importlib.import_module(module)
        finally:
            kopf.set_default_registry(previous)
        _registries[module] = registry
    return _registries[module]


@contextlib.contextmanager
def _kept_logging() -> Iterator[None]:
    """kopf's CLI re-configures the root logger (DEBUG with --verbose, a handler on its captured output):
    left so, every later test in the session would log at DEBUG into a dead buffer."""
    root, quiet = logging.getLogger(), logging.getLogger("asyncio")
    saved = (root.level, root.handlers[:], quiet.propagate, quiet.handlers[:])
    try:
        yield
    finally:
        root.setLevel(saved[0])
        root.handlers[:], quiet.propagate, quiet.handlers[:] = saved[1], saved[2], saved[3]


@contextlib.contextmanager
def run_operator(kube: Kube, *kopf_args: str, module: str, timeout: float = 30.0, wait_ready: bool = True,
                 check: bool = True) -> Iterator[OperatorRun]:
    """Run ``kopf run --standalone -m MODULE *kopf_args`` (all namespaces unless -n/-A is given) in a thread.

    With ``wait_ready`` the block starts once kopf watches something. On exit, with ``check``, kopf's
    exception, exit code and logged errors fail the test, with kopf's log in the message.
    """
    scoped = any(a.split("=")[0] in ("-n", "--namespace", "-A", "--all-namespaces") for a in kopf_args)
    args = ["run", "--standalone", "--verbose", "-m", module, *kopf_args, *([] if scoped else ["--all-namespaces"])]
    registry, previous, seen = _registry(module), kopf.get_default_registry(), len(kube.emulator.api_calls)
    runner = KopfRunner(args, registry=registry, reraise=False, timeout=timeout)
    run = OperatorRun(runner, sys.modules[module])
    not_ready: AssertionError | None = None
    failure: Exception | None = None
    with _kept_logging():
        try:
            with runner:
                try:
                    if wait_ready:
                        kube.wait_for(lambda: any(c.verb == "watch" and c.user_agent.startswith("kopf")
                                                  for c in kube.emulator.api_calls[seen:]),
                                      timeout=timeout, message="kopf to start watching")
                except AssertionError as e:
                    not_ready = e
                else:
                    try:
                        yield run
                    except Exception as e:  # re-raised below, once kopf's log is complete
                        failure = e
        finally:
            kopf.set_default_registry(previous)  # the CLI made ours the process-wide default
    tail = "\n".join(run.output.splitlines()[-80:])
    if failure is not None:
        failure.add_note(f"--- kopf log tail ---\n{tail}")
        raise failure
    if not_ready is not None:
        raise AssertionError(f"{not_ready}\n--- kopf log tail ---\n{tail}")
    if check:
        assert runner.exception is None, f"kopf failed: {runner.exception!r}\n--- kopf log tail ---\n{tail}"
        assert runner.exit_code == 0, f"kopf exited with {runner.exit_code}\n--- kopf log tail ---\n{tail}"
        assert not run.errors, "kopf logged errors:\n" + "\n".join(run.errors) + f"\n--- kopf log tail ---\n{tail}"
