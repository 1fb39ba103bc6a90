"""A stateful Kubernetes API emulator for tests, built on kmock's ``KubernetesEmulator``.

Test-only: it stands in for a Kubernetes API server on loopback so that a real kopf operator and the
``kubernetes`` client can run against it. Beyond kmock it has: uid, resourceVersion (one global
counter, bumped on every write and on none for a no-op write), creationTimestamp, generation (bumped
when anything but metadata/status changes), the namespace from the URL, 201 on create, 409 on name
and resourceVersion conflicts, merge / JSON / strategic(-as-merge) PATCH and PUT, watches that resume
after a resourceVersion, label and field selectors on list and watch, status subresource isolation,
finalizers and deletionTimestamp, owner-reference garbage collection (synchronous, background-style,
Orphan honoured), CRDs (registered in code or by POSTing one), CRD schema pruning and validation
(422 Status naming the field), the CRDs' CEL rules (``x-kubernetes-validations``, evaluated with
cel-python on create, update and status update; see kube_cel.py), ``generateName`` (retried when the
name is taken), and pod logs (``follow=true`` streams). DELETE answers the object.

It does NOT do: authentication or RBAC (every call is allowed; ``api_calls`` records them for a
ClusterRole check), admission webhooks, defaulting, server-side apply (415), strategic
merge of lists (lists are replaced), deletecollection, pagination, conversion between CRD versions
(each version is stored apart), namespace existence or namespace cascade, watch history expiry (it
never answers 410), any controller (no pod is scheduled or run, no Job runs, no RayJob status moves).
"""

from __future__ import annotations

import asyncio
import copy
import json
import secrets
import uuid
from collections.abc import Iterator

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import jsonschema
import kmock
from kmock._internal import apps, parsing, rendering  # no public API to build a request ourselves
from trainforge.spec.contract import merge_patch  # RFC 7386, as the API server applies it

from tests.support import kube_cel
from tests.support import kube_rules as rules
from tests.support.kube_gc import OwnerGarbageCollection
from tests.support.kube_logs import PodLogs
from tests.support.kube_rules import ApiCall, Event, Obj, fail
from tests.support.kube_watch import WatchStreams

Key = tuple[kmock.resource, "str | None", str]
CRDS = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
_SYSTEM_META = ("uid", "creationTimestamp", "generation", "deletionTimestamp", "namespace", "name")
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the API server's (no vowels: no words in generated names)
_GENERATE_TRIES = 8  # the API server retries a generated name that is taken (RetryGenerateName)


@attrs.define(kw_only=True)
class StatefulEmulator(OwnerGarbageCollection, PodLogs, WatchStreams, kmock.KubernetesEmulator):
    """kmock's emulator with the object semantics kopf and the ``kubernetes`` client rely on.

    Its methods must run on the server's event loop (``Kube`` in tests/support/kube.py marshals them).
    """

    api_calls: list[ApiCall] = attrs.field(factory=list, init=False)
    _rv: int = attrs.field(default=0, init=False)
    _events: list[Event] = attrs.field(factory=list, init=False)
    _wakeup: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    _crds: dict[kmock.resource, rules.Crd] = attrs.field(factory=dict, init=False)
    _orphaning: set[str] = attrs.field(factory=set, init=False)
    _logs: dict[tuple[str | None, str], tuple[str, bool]] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        # Not KubernetesEmulator's: its _handle() mutates state before the reactions even run.
        kmock.KubernetesScaffold.__attrs_post_init__(self)
        fallback = self.fallback
        # Status and headers live on the reactions: a Response returned by a callable would overwrite
        # its reaction's shared Response and leak into every later answer.
        (fallback ** 1)[kmock.method.GET, kmock.subresource("log")] << kmock.headers(
            {"Content-Type": "text/plain; charset=utf-8"}) << self._serve_log
        fallback[kmock.action.WATCH] << self._serve_watch
        fallback[kmock.action.LIST] << self._serve_list
        fallback[kmock.action.FETCH] << self._serve_fetch
        fallback[kmock.action.CREATE] << 201 << self._serve_create
        fallback[kmock.action.UPDATE] << self._serve_patch
        fallback[kmock.method.PUT] << self._serve_replace
        fallback[kmock.action.DELETE] << self._serve_delete

    # --- plumbing ---------------------------------------------------------------------------------

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock's own request parsing fails on /api/v1/namespaces and misreads /api/v1/namespaces/X.
        body = await raw.read()
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        path, query = rules.parse_path(raw.path), dict(raw.query)
        request = rendering.Request(
            id=len(self._requests), raw_request=raw, url=raw.url, method=raw.method, params=query,
            headers=dict(raw.headers), cookies=dict(raw.cookies), data=data, body=body,
            text=body.decode("utf-8", "replace"), action=parsing.guess_k8s(path, kmock.method(raw.method), query),
            resource=None if path.group is None else kmock.resource(
                group=path.group, version=path.version, plural=path.plural),
            namespace=path.namespace, name=path.name, subresource=path.subresource)
        self._requests.append(request)
        self.api_calls.append(rules.api_call(request, path))
        response: aiohttp.web.StreamResponse | None = None
        try:
            try:
                return await self._handle(request)
            except rendering.StreamingError as e:
                response = e.args[0]
                raise e.__cause__ or e from None
        except Exception as e:
            if self._errors and not isinstance(e, kmock.KubernetesError):
                self._errors[-1].append(e)  # the emulator's own failures only, not API answers
            if response is None or not response.prepared:
                return await self._render_error(e)
            await self._stream_error(e, response)
            await response.write_eof()
            return response

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        return await apps.RawHandler._handle(self, request)

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if not isinstance(exc, kmock.KubernetesError):
            return await super()._render_error(exc)
        return aiohttp.web.json_response({
            "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "code": exc.status,
            "reason": exc.reason, "message": exc.message, "details": exc.details}, status=exc.status)

    def close_streams(self) -> None:
        """End every open watch and log stream, so that the server can stop without waiting on them."""
        self._closing = True
        self._wake()

    def _wake(self) -> None:
        self._wakeup.set()
        self._wakeup = asyncio.Event()

    def _resolve(self, request: rendering.Request) -> tuple[kmock.resource, kmock.ResourceInfo, str | None]:
        res = request.resource
        if res is None or res.plural is None or res not in self.resources:
            fail(404, "NotFound", f"the server could not find the requested resource ({request.url.path})")
        info = self.resources[res]
        return res, info, request.namespace if info.namespaced is not False else None

    def get_object(self, key: Key) -> Obj | None:
        if key in self._objects and not self._objects[key].deleted:
            return copy.deepcopy(self._objects[key].raw)
        return None

    def objects_of(self, res: kmock.resource, namespace: str | None = None) -> Iterator[tuple[Key, Obj]]:
        for key, obj in list(self._objects.items()):
            if key[0] == res and not obj.deleted and (namespace is None or key[1] == namespace):
                yield key, copy.deepcopy(obj.raw)

    def _require(self, request: rendering.Request) -> tuple[Key, Obj, kmock.ResourceInfo]:
        res, info, namespace = self._resolve(request)
        if request.subresource and request.subresource not in info.subresources:
            fail(404, "NotFound", f"{res.plural}.{res.group} has no {request.subresource!r} subresource")
        key: Key = (res, namespace, request.name or "")
        obj = self.get_object(key)
        if obj is None:
            fail(404, "NotFound", f'{res.plural}.{res.group} "{request.name}" not found',
                 {"name": request.name, "group": res.group, "kind": res.plural})
        return key, obj, info

    def _commit(self, key: Key, obj: Obj | None, kind: str, old: Obj | None) -> Obj:
        """The only state change: each write takes the next resourceVersion and makes a watch event."""
        self._rv += 1
        if obj is None:  # DELETED carries the last state under the deletion's resourceVersion
            assert old is not None
            self._objects[key].delete()
            obj = copy.deepcopy(old)
        obj.setdefault("metadata", {})["resourceVersion"] = str(self._rv)
        if kind != "DELETED" and key in self._objects:
            self._objects[key].create(copy.deepcopy(obj))  # a new version; kmock keeps the history
        elif kind != "DELETED":
            self._objects[key] = copy.deepcopy(obj)
        self._events.append(Event(self._rv, key[0], kind, copy.deepcopy(obj), old))
        self._wake()
        return obj

    def _check_schema(self, res: kmock.resource, obj: Obj, old: Obj | None = None) -> None:
        """Prune, validate by the schema, then (schema-valid only) run the CEL rules; ``old`` on update."""
        crd = self._crds.get(res)
        if crd is None or crd.schema is None:
            return
        if crd.prune:
            rules.prune(obj, crd.schema, root=True)
        causes = rules.schema_causes(crd.validator, obj) if crd.validator is not None else []
        if not causes and crd.validator is not None:
            causes = kube_cel.validate(crd.cel, obj, old)
        if causes:
            name = obj.get("metadata", {}).get("name")
            texts = [f"{c['field']}: {c['message']}" for c in causes]
            text = texts[0] if len(texts) == 1 else f"[{', '.join(texts)}]"
            fail(422, "Invalid", f'{crd.kind}.{res.group} "{name}" is invalid: {text}',
                 {"name": name, "group": res.group, "kind": crd.kind, "causes": causes})

    # --- CRDs --------------------------------------------------------------------------------

    def register_crd(self, crd: Obj, *, validate: bool = True, prune: bool = True, store: bool = True) -> None:
        """Serve the CRD's resource for discovery and storage; prune and validate by its schema if any.

        Its CEL rules are compiled first: a rule that a real API server would refuse raises
        ``kube_cel.CelCompileError`` and registers nothing (with ``validate``; without it no rule runs).
        """
        spec, names = crd["spec"], crd["spec"]["names"]
        compiled = kube_cel.compile_crd(crd) if validate else {}
        for version in spec["versions"]:
            if not version.get("served", True):
                continue
            res = kmock.resource(spec["group"], version["name"], names["plural"])
            self.resources[res] = kmock.ResourceInfo(
                namespaced=spec.get("scope", "Namespaced") == "Namespaced", kind=names["kind"],
                singular=names.get("singular", names["kind"].lower()), verbs=ALL_VERBS,
                shortnames=names.get("shortNames", ()), categories=names.get("categories", ()),
                subresources=set(version.get("subresources") or {}))
            schema = (version.get("schema") or {}).get("openAPIV3Schema")
            validator = jsonschema.Draft4Validator(rules.draft4(schema)) if schema and validate else None
            self._crds[res] = rules.Crd(names["kind"], schema, validator, prune and bool(schema),
                                        compiled.get(version["name"]))
        key: Key = (CRDS, None, crd["metadata"]["name"])
        if store and CRDS in self.resources and self.get_object(key) is None:
            self._commit(key, self._new_object(CRDS, self.resources[CRDS], None, copy.deepcopy(crd)), "ADDED", None)

    # --- reading ----------------------------------------------------------------------------------

    async def _serve_fetch(self, request: rendering.Request) -> Obj:
        if request.subresource not in (None, "status"):
            fail(404, "NotFound", f"subresource {request.subresource!r} is not served by the emulator")
        return self._require(request)[1]

    async def _serve_list(self, request: rendering.Request) -> Obj:
        res, info, namespace = self._resolve(request)
        matches = rules.request_selector(request)
        return {"apiVersion": f"{res.group}/{res.version}".lstrip("/"), "kind": f"{info.kind}List",
                "metadata": {"resourceVersion": str(self._rv)},
                "items": [obj for _, obj in self.objects_of(res, namespace) if matches(obj)]}

    # --- writing ----------------------------------------------------------------------------------

    def _new_object(self, res: kmock.resource, info: kmock.ResourceInfo, namespace: str | None, obj: Obj) -> Obj:
        meta = obj.setdefault("metadata", {})
        if namespace is not None and meta.get("namespace") not in (None, namespace):
            fail(400, "BadRequest", "the namespace of the provided object does not match the namespace sent "
                                    "on the request")
        if not meta.get("name") and not meta.get("generateName"):
            fail(422, "Invalid", f'{info.kind} "" is invalid: metadata.name: Required value: name or generateName '
                                 "is required", {"kind": res.plural, "group": res.group, "causes": [
                                     {"reason": "FieldValueRequired", "field": "metadata.name",
                                      "message": "Required value: name or generateName is required"}]})
        for field in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "namespace"):
            meta.pop(field, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=rules.now(), generation=1)
        if namespace is not None:
            meta["namespace"] = namespace
        obj.setdefault("apiVersion", f"{res.group}/{res.version}".lstrip("/"))
        obj.setdefault("kind", info.kind)
        if "status" in info.subresources:
            obj.pop("status", None)  # with a status subresource, create ignores .status
        return obj

    async def _serve_create(self, request: rendering.Request) -> Obj:
        res, info, namespace = self._resolve(request)
        if not isinstance(request.data, dict):
            fail(400, "BadRequest", "the request body is not a JSON object")
        if info.namespaced and namespace is None:
            fail(404, "NotFound", f"{res.plural} is namespaced: POST to /namespaces/NAMESPACE/{res.plural}")
        obj = self._new_object(res, info, namespace, copy.deepcopy(request.data))
        self._generate_name(res, namespace, obj["metadata"])
        key: Key = (res, namespace, obj["metadata"]["name"])
        if self.get_object(key) is not None:
            fail(409, "AlreadyExists", f'{res.plural}.{res.group} "{key[2]}" already exists',
                 {"name": key[2], "group": res.group, "kind": res.plural})
        if res == CRDS:
            try:  # as the API server does: a CRD with a rule that does not compile is not stored
                kube_cel.compile_crd(obj)
            except kube_cel.CelCompileError as e:
                fail(422, "Invalid", str(e), {"name": key[2], "group": res.group, "kind": info.kind})
        self._check_schema(res, obj)
        created = self._commit(key, obj, "ADDED", None)
        if res == CRDS:
            self.register_crd(created, store=False)
        return created

    def _generate_name(self, res: kmock.resource, namespace: str | None, meta: Obj) -> None:
        """``generateName`` + 5 random characters of the server's alphabet, another draw if it is taken."""
        if meta.get("name"):
            return
        base = str(meta["generateName"])[:58]  # 63 - 5: the generated name must still be a valid name
        for _ in range(_GENERATE_TRIES):
            meta["name"] = base + "".join(secrets.choice(_NAME_ALPHABET) for _ in range(5))
            if self.get_object((res, namespace, meta["name"])) is None:
                return

    async def _serve_patch(self, request: rendering.Request) -> Obj:
        key, current, info = self._require(request)
        content_type = request.headers.get("Content-Type", "")
        if "apply-patch" in content_type:
            fail(415, "UnsupportedMediaType", "server-side apply is not emulated")
        if "json-patch" in content_type:
            try:
                new = jsonpatch.apply_patch(current, request.data)
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
                fail(422, "Invalid", f"the server rejected our request due to an error in our request: {e}")
        else:  # merge and strategic merge alike: lists are replaced, not merged by key
            if not isinstance(request.data, dict):
                fail(400, "BadRequest", "a merge patch must be a JSON object")
            self._check_version(key, current, request.data)
            new = merge_patch(current, request.data)
        return self._update(request, key, current, new, info)

    async def _serve_replace(self, request: rendering.Request) -> Obj:
        key, current, info = self._require(request)
        if not isinstance(request.data, dict):
            fail(400, "BadRequest", "the request body is not a JSON object")
        if key[0] in self._crds and not (request.data.get("metadata") or {}).get("resourceVersion"):
            fail(422, "Invalid", "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update")
        self._check_version(key, current, request.data)
        return self._update(request, key, current, copy.deepcopy(request.data), info)

    @staticmethod
    def _check_version(key: Key, current: Obj, body: Obj) -> None:
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != current["metadata"]["resourceVersion"]:
            fail(409, "Conflict", f'Operation cannot be fulfilled on {key[0].plural}.{key[0].group} "{key[2]}": '
                                  "the object has been modified; please apply your changes to the latest version "
                                  "and try again", {"name": key[2], "kind": key[0].plural})

    def _update(self, request: rendering.Request, key: Key, current: Obj, new: Obj, info: kmock.ResourceInfo) -> Obj:
        if request.subresource not in (None, "status"):
            fail(404, "NotFound", f"subresource {request.subresource!r} is not served by the emulator")
        isolated = "status" in info.subresources
        if request.subresource == "status":  # only .status may change through /status
            new, status = copy.deepcopy(current), new.get("status")
        else:  # and, with a status subresource, .status may not change through the main resource
            status = current.get("status") if isolated else new.get("status")
        new.pop("status", None)
        if status is not None:
            new["status"] = status
        meta, old_meta = new.setdefault("metadata", {}), current["metadata"]
        for field in _SYSTEM_META:
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        new["apiVersion"], new["kind"] = current["apiVersion"], current["kind"]
        added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
        if old_meta.get("deletionTimestamp") and added:
            fail(422, "Forbidden", "metadata.finalizers: Forbidden: no new finalizers can be added if the object "
                                   "is being deleted")
        self._check_schema(key[0], new, current)  # first: pruned fields must not count as a spec change
        ignored = ("metadata", "status") if isolated else ("metadata",)
        if {k: v for k, v in new.items() if k not in ignored} != {k: v for k, v in current.items() if k not in ignored}:
            meta["generation"] = int(old_meta.get("generation") or 0) + 1
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if new == current:
            return current  # a no-op write changes nothing, not even the resourceVersion
        updated = self._commit(key, new, "MODIFIED", current)
        return self._remove(key, updated) if meta.get("deletionTimestamp") and not meta.get("finalizers") else updated

    async def _serve_delete(self, request: rendering.Request) -> Obj:
        key, current, _ = self._require(request)
        options = request.data if isinstance(request.data, dict) else {}
        for field, wanted in (options.get("preconditions") or {}).items():
            if wanted != current["metadata"].get(field):
                fail(409, "Conflict", f"Precondition failed: {field} mismatch", {"name": key[2]})
        if options.get("propagationPolicy") == "Orphan" or options.get("orphanDependents"):
            self._orphaning.add(current["metadata"]["uid"])
        return self.delete_object(key)
