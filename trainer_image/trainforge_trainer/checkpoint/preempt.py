"""Preemption signals. Any rank may see one; `StopVote` makes all ranks agree at the same step boundary.

Each rank keeps one local event (`PreemptionWatch.requested`), set by:
- SIGTERM to the worker process, when the loop owns the main thread (torchrun forwards it);
- the attempt's stop flag, a named Ray actor (`trainforge.spec.contract.stop_flag_name`) that the
  driver sets on its own SIGTERM or a suspend, and a pod's preStop hook sets on eviction
  (`trainforge_trainer.prestop`); a thread polls it, riding out Ray errors with backoff.
Ray Train's preemption notice (a draining node) is a second path: save now, keep training; Ray
restarts the workers when the node goes.

The event is read at every step (`StopVote.poll`): a local check, plus, with several ranks, one
1-element all-reduce on a CPU (gloo) group launched at step k and waited on at step k+1, so that no
step waits on the device or on the network for it.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import torch

log = logging.getLogger("trainforge.checkpoint")
POLL_S = 0.5
"""How often a worker reads the stop flag."""
MAX_BACKOFF_S = 5.0
"""Longest wait between two reads of the flag while Ray errors."""
WARN_AT = (1, 10)
"""Poll failures logged: the first, the tenth, then every 100th."""


class PreemptFlag:
    """A tiny Ray actor: set, every worker of the attempt checkpoints at the next step boundary and stops."""

    def __init__(self) -> None:
        self.value = False

    def set(self) -> None:
        self.value = True

    def get(self) -> bool:
        return self.value


def backoff_s(failures: int) -> float:
    """Wait before the next read after `failures` failed ones in a row (0: the normal poll interval)."""
    return min(POLL_S * 2 ** failures, MAX_BACKOFF_S)


class PreemptionWatch:
    """This rank's stop request: `requested` is set by SIGTERM (main thread only) or the stop flag."""

    def __init__(self, flag_actor: Any = None) -> None:
        self.requested = threading.Event()
        self._stop = threading.Event()
        self._previous: Any = None
        self._installed = False
        self.poll_failures = 0
        """Failed reads of the flag in a row (0 once a read succeeds)."""
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

        def read() -> bool:
            return bool(ray.get(flag_actor.get.remote(), timeout=10))

        self.poll_until_set(read)

    def poll_until_set(self, read: Any) -> None:
        """Read the flag until it is set or the watch closes. A failed read (the driver restarting its
        actor, a GCS hiccup) backs off and tries again: giving up would lose the stop for good."""
        while not self._stop.wait(backoff_s(self.poll_failures)):
            try:
                value = read()
            except Exception as exc:
                self.poll_failures += 1
                if self.poll_failures in WARN_AT or self.poll_failures % 100 == 0:
                    log.warning("could not read the stop flag (%d failures in a row; retrying in %.1fs): %s",
                                self.poll_failures, backoff_s(self.poll_failures), exc)
                continue
            self.poll_failures = 0
            if value:
                log.warning("this attempt was asked to stop: checkpointing at the next step boundary")
                self.requested.set()
                return

    def close(self) -> None:
        self._stop.set()
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False


class StopVote:
    """All ranks stop at the same step when any rank's event is set, without a device sync per step.

    Every rank calls `poll()` at every optimizer step boundary. With one rank it is the event itself.
    With several, step k launches an asynchronous MAX all-reduce of this rank's event on a gloo (CPU)
    group made once, and step k+1 waits for it: all ranks read the same result at the same step, a
    stop is acted on at most two steps after it was seen, and the reduce overlaps a whole step.
    Creating the group is a collective: every rank must construct the vote at the same point."""

    def __init__(self, event: threading.Event, group: Any = None) -> None:
        self.event, self.group = event, group
        self._votes = torch.zeros(1)  # reused: it is refilled only once the reduce reading it is done
        self._pending: Any = None

    @classmethod
    def for_world(cls, event: threading.Event) -> StopVote:
        """A vote over the default process group's ranks (gloo group created here), or a local one."""
        import torch.distributed as torch_dist

        from ..dist import PG_TIMEOUT, distributed

        if not distributed():
            return cls(event)
        return cls(event, torch_dist.new_group(backend="gloo", timeout=PG_TIMEOUT))

    def poll(self) -> bool:
        """True when every rank must stop at this step (the same answer on every rank)."""
        if self.group is None:
            return self.event.is_set()
        import torch.distributed as torch_dist

        decided = False
        if self._pending is not None:
            self._pending.wait()
            decided = self._votes.item() > 0
        self._pending = None
        if not decided:
            self._votes.fill_(float(self.event.is_set()))
            self._pending = torch_dist.all_reduce(self._votes, op=torch_dist.ReduceOp.MAX, group=self.group,
                                                  async_op=True)
        return decided


def ray_preemption_notice() -> bool:
    """Ray Train's notice that a node of this run is being drained. A collective: every rank
    must call it the same number of times (we call it at the same steps on all ranks)."""
    try:
        import ray.train

        return ray.train.get_preemption_info() is not None
    except Exception:  # not under Ray Train, or a Ray without the API
        return False
