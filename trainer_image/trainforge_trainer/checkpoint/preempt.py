"""Preemption signals. Any rank may see one; `Checkpointer` makes all ranks agree at a step boundary.

- SIGTERM to the worker process, when the loop owns the main thread (torchrun forwards it).
- A run-wide flag set by the driver (`trainforge run`, the cluster entrypoint) when *it* gets
  SIGTERM: under Ray Train the loop runs on a worker thread and Ray's own handler owns SIGTERM.
- Ray Train's preemption notice (a draining node): save now, keep training; Ray restarts the
  workers when the node goes.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

log = logging.getLogger("trainforge.checkpoint")
POLL_S = 0.5


class PreemptFlag:
    """A tiny Ray actor the driver sets on SIGTERM and the workers poll."""

    def __init__(self) -> None:
        self.value = False

    def set(self) -> None:
        self.value = True

    def get(self) -> bool:
        return self.value


class PreemptionWatch:
    def __init__(self, flag_actor: Any = None) -> None:
        self.requested = threading.Event()
        self._stop = threading.Event()
        self._previous: Any = None
        self._installed = False
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
            self._installed = True
        if flag_actor is not None:
            threading.Thread(target=self._poll, args=(flag_actor,), name="trainforge-preempt", daemon=True).start()

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        log.warning("SIGTERM: saving a checkpoint at the next step boundary, then stopping")
        self.requested.set()

    def _poll(self, flag_actor: Any) -> None:
        import ray

        while not self._stop.wait(POLL_S):
            try:
                if ray.get(flag_actor.get.remote(), timeout=10):
                    log.warning("the driver was asked to stop: checkpointing at the next step boundary")
                    self.requested.set()
                    return
            except Exception:  # the driver is going away; a SIGTERM or Ray's failure handling takes over
                return

    def close(self) -> None:
        self._stop.set()
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False


def ray_preemption_notice() -> bool:
    """Ray Train's notice that a node of this run is being drained. A collective: every rank
    must call it the same number of times (we call it at the same steps on all ranks)."""
    try:
        import ray.train

        return ray.train.get_preemption_info() is not None
    except Exception:  # not under Ray Train, or a Ray without the API
        return False
