"""Pod logs for the test emulator (kube_emulator.py): set or appended by tests (or the KubeRay
stand-in), served on `pods/NAME/log` with `tailLines`, and streamed with `follow=true` until the
log is marked finished or the pod goes. A mixin: it reads the emulator's objects and wake-ups."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from kmock._internal import rendering

from tests.support.kube_rules import Obj


class PodLogs:
    _logs: dict[tuple[str | None, str], tuple[str, bool]]
    _wakeup: asyncio.Event
    _closing: bool

    def get_object(self, key: Any) -> Obj | None:
        raise NotImplementedError

    def _require(self, request: rendering.Request) -> tuple[Any, Obj, Any]:
        raise NotImplementedError

    def _wake(self) -> None:
        raise NotImplementedError

    def set_pod_log(self, namespace: str, name: str, text: str, *, append: bool = False,
                    finished: bool = True) -> None:
        """Set (or append to) a pod's log; ``follow=true`` readers stream it until it is ``finished``."""
        previous = self._logs.get((namespace, name), ("", False))[0] if append else ""
        self._logs[namespace, name] = (previous + text, finished)
        self._wake()

    async def _serve_log(self, request: rendering.Request) -> bytes | AsyncIterator[bytes]:
        key, _, _ = self._require(request)
        text, _ = self._logs.get((key[1], key[2]), ("", True))
        if (tail := request.params.get("tailLines")) is not None:
            text = "".join(text.splitlines(keepends=True)[-int(tail):]) if int(tail) else ""
        return self._follow_log(key, text) if request.params.get("follow") == "true" else text.encode()

    async def _follow_log(self, key: Any, sent: str) -> AsyncIterator[bytes]:
        yield sent.encode()  # the first chunk also sends the headers
        offset = len(self._logs.get((key[1], key[2]), ("", True))[0])
        while not self._closing and self.get_object(key) is not None:
            wakeup = self._wakeup
            text, finished = self._logs.get((key[1], key[2]), ("", True))
            if len(text) > offset:
                yield text[offset:].encode()
                offset = len(text)
            if finished:
                return
            await wakeup.wait()
