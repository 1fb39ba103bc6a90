"""Watch streams as the API server serves them, for the test emulator (kube_emulator.py): the
current state as ADDED events (and the initial-events bookmark when asked), then every change after
a resourceVersion, with selector matches turning into ADDED/DELETED. A mixin over the emulator's
event log and stored objects."""

from __future__ import annotations

import asyncio
import bisect
import copy
from collections.abc import AsyncIterator, Iterator
from typing import Any

from kmock._internal import rendering

from tests.support import kube_rules as rules
from tests.support.kube_rules import Obj, fail


class WatchStreams:
    _closing: bool
    _wakeup: asyncio.Event
    _events: list[Any]
    _rv: int

    def _resolve(self, request: rendering.Request) -> tuple[Any, Any, str | None]:
        raise NotImplementedError

    def objects_of(self, res: Any, namespace: str | None = None) -> Iterator[tuple[Any, Obj]]:
        raise NotImplementedError

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[Obj | bytes]:
        res, info, namespace = self._resolve(request)
        matches, params = rules.request_selector(request), request.params
        if not (since := params.get("resourceVersion") or "0").isdigit():
            fail(400, "BadRequest", f"invalid resourceVersion: {since!r}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(params["timeoutSeconds"]) if "timeoutSeconds" in params else None
        yield b""  # sends the headers now: clients wait for them before they read any event
        cursor = int(since)
        if cursor == 0:  # "any version": the current state as ADDED events, then what changes after it
            cursor = self._rv
            for _, obj in self.objects_of(res, namespace):
                if matches(obj):
                    yield {"type": "ADDED", "object": obj}
            if params.get("sendInitialEvents") == "true" and params.get("allowWatchBookmarks") == "true":
                yield {"type": "BOOKMARK", "object": {"kind": info.kind, "apiVersion": "v1", "metadata": {
                    "resourceVersion": str(cursor), "annotations": {"k8s.io/initial-events-end": "true"}}}}
        while not self._closing:
            wakeup = self._wakeup
            for event in self._events[bisect.bisect_right(self._events, cursor, key=lambda e: e.rv):]:
                cursor = event.rv
                if event.resource != res:
                    continue
                now, before = matches(event.obj), event.type == "MODIFIED" and matches(event.old)
                # An object that starts or stops matching the selector appears or disappears, as in K8s.
                kind = {(True, True): "MODIFIED", (True, False): "ADDED" if event.type == "MODIFIED"
                        else event.type, (False, True): "DELETED"}.get((now, before))
                if kind is not None:
                    yield {"type": kind, "object": copy.deepcopy(event.obj)}
            timeout = None if deadline is None else deadline - loop.time()
            if timeout is not None and timeout <= 0:
                return
            try:
                await asyncio.wait_for(wakeup.wait(), timeout)
            except asyncio.TimeoutError:
                return
