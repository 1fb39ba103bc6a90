"""Where reports go: Ray Train when running under it, stdout when under plain torchrun."""

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


def reporter_for_launcher(is_main: bool) -> Reporter:
    try:
        from ray.train import get_context

        get_context()  # raises outside a Ray Train worker
        return RayReporter()
    except Exception:
        return PrintReporter(is_main)
