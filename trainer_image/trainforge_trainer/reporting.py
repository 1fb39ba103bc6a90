"""Where reports go: Ray Train when running under it (`ray_worker` picks it), stdout otherwise."""

from __future__ import annotations

import json
from typing import Any, Protocol


class Reporter(Protocol):
    def report(self, metrics: dict[str, Any]) -> None: ...


class RayReporter:
    def report(self, metrics: dict[str, Any]) -> None:
        import ray.train

        ray.train.report(metrics)


class PrintReporter:
    def __init__(self, is_main: bool) -> None:
        self.is_main = is_main

    def report(self, metrics: dict[str, Any]) -> None:
        if self.is_main:
            print(json.dumps(metrics), flush=True)

