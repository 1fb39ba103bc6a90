"""Reports travel from Ray Train's controller to the driver through a Ray queue."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def make_callback(report_queue: Any) -> Any:
    """A Ray Train UserCallback that forwards rank 0's metrics of every report to `report_queue`."""
    from ray.train import UserCallback

    class ForwardReports(UserCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            if metrics:
                report_queue.put_nowait(dict(metrics[0]))

    return ForwardReports()


class ReportPump:
    """Drains the queue on a driver thread and hands each report to `on_report`; keeps the last one."""

    def __init__(self, report_queue: Any, on_report: Callable[[dict[str, Any]], None]) -> None:
        self.queue, self.on_report = report_queue, on_report
        self.last: dict[str, Any] = {}
        self.final: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trainforge-reports", daemon=True)

    def __enter__(self) -> ReportPump:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._drain()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._handle(self.queue.get(timeout=0.5))
            except Exception:  # Empty on timeout (ray.util.queue.Empty), or the queue actor is gone
                continue

    def _drain(self) -> None:
        try:
            while not self.queue.empty():
                self._handle(self.queue.get_nowait())
        except Exception:  # the queue actor is gone at shutdown: nothing more to read
            return

    def _handle(self, report: dict[str, Any]) -> None:
        self.last = report
        if report.get("done"):
            self.final = report
        self.on_report(report)
