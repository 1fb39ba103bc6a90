"""Give a stopped trial's Train resources back, without Ray's PlacementGroupCleaner.

When a scheduler stops a trial (early, or at maxT: ASHA stops a trial on its maxT result, racing
its Train run's own end - hence "intermittent"), Tune drops the trial actor; its Train controller dies with it
(fate-sharing) and never removes its worker placement group, which is scoped to the job, not to the
controller. Ray 2.60 leaves that removal to a detached `PlacementGroupCleaner` that asks the state
API (the dashboard) whether the controller is alive. Its address lookup guesses the cluster from
the machine's running raylets: with a second Ray instance on the machine it raises "Found multiple
active Ray instances", the monitor thread dies (only RayStateApiException is caught), and the group
stays - the next trial waits on its own group forever (issue 16). Any other non-state-API error
(dashboard not up yet, busy) ends it the same way.

Here the sweep's own registry actor watches each trial's controller through its actor handle (no
state API, no address lookup): once the controller is dead, it removes the groups the controller
registered and did not remove itself. The registry is owned by the sweep driver and ends with it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback

log = logging.getLogger("trainforge.sweep")

WATCH_INTERVAL_S = 0.5
PING_TIMEOUT_S = 5.0


@dataclass
class _Watched:
    trial: str
    controller: Any
    groups: list[Any] = field(default_factory=list)


class TrialResources:
    """Ray actor (num_cpus=0, one per sweep): the Train controllers of the sweep's trials and their
    worker placement groups; removes a dead controller's groups."""

    def __init__(self) -> None:
        self._watched: dict[str, _Watched] = {}  # controller actor id -> entry
        self._released: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._watch, name="trainforge-trial-resources", daemon=True).start()

    def record(self, trial: str, controller_id: str, controller: Any, group: Any) -> None:
        with self._lock:
            entry = self._watched.setdefault(controller_id, _Watched(trial, controller))
            entry.groups.append(group)

    def forget(self, controller_id: str) -> None:
        """The controller shuts down by itself and removes its own group; dropping its handle here
        also lets Ray end the actor (a borrowed handle keeps it alive)."""
        with self._lock:
            self._watched.pop(controller_id, None)

    def drain(self, timeout_s: float) -> list[tuple[str, str]]:
        """At the sweep's end: wait (bounded) until every watched controller has ended and its groups
        are released - the last trials' actors are still going away - and return (trial, placement
        group id) of every group this registry had to remove."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if not self._watched:
                    break
            time.sleep(WATCH_INTERVAL_S / 2)
        with self._lock:
            return list(self._released)

    def _watch(self) -> None:
        while True:
            with self._lock:
                entries = list(self._watched.items())
            for controller_id, entry in entries:
                try:
                    self._release_if_dead(controller_id, entry)
                except Exception:  # one odd entry must not end the watch (Ray's cleaner's flaw)
                    log.exception("trial %s: could not check its Train controller", entry.trial)
            time.sleep(WATCH_INTERVAL_S)

    def _release_if_dead(self, controller_id: str, entry: _Watched) -> None:
        if not _is_dead(entry.controller):
            return
        for group in entry.groups:
            if _remove_if_held(group):
                log.warning("trial %s: its Train controller died without releasing placement group %s; "
                            "removed it", entry.trial, group.id.hex())
                with self._lock:
                    self._released.append((entry.trial, group.id.hex()))
        with self._lock:
            self._watched.pop(controller_id, None)


def _is_dead(actor: Any) -> bool:
    """Dead for good (ActorDiedError); a slow or briefly unreachable controller counts as alive."""
    import ray
    from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError

    try:
        ray.get(actor.__ray_ready__.remote(), timeout=PING_TIMEOUT_S)
    except ActorDiedError:
        return True
    except (GetTimeoutError, RayActorError):
        return False
    return False


def _remove_if_held(group: Any) -> bool:
    from ray.util import placement_group_table, remove_placement_group

    try:
        if placement_group_table(group).get("state", "REMOVED") == "REMOVED":
            return False
        remove_placement_group(group)
        return True
    except Exception as exc:  # the group vanished meanwhile; the next sweep must not fail on it
        log.warning("could not remove placement group %s: %s", group.id.hex(), exc)
        return False


def start_registry() -> Any:
    import ray

    # threaded: record/forget calls from controllers are served while drain() waits
    return ray.remote(num_cpus=0, max_concurrency=4)(TrialResources).remote()


class RegisterWorkerGroup(ControllerCallback, WorkerGroupCallback):
    """Train callback (runs in the trial's controller): registers each worker group's placement
    group, with the controller's own handle, before the group trains."""

    def __init__(self, registry: Any, trial: str) -> None:
        self.registry, self.trial = registry, trial
        self._controller: Any = None
        self._controller_id = ""

    def after_controller_start(self, train_run_context: Any) -> None:
        import ray

        context = ray.get_runtime_context()
        self._controller, self._controller_id = context.current_actor, context.get_actor_id()

    def after_worker_group_start(self, worker_group: Any) -> None:
        import ray

        group = worker_group.get_worker_group_state().placement_group_handle.placement_group
        ray.get(self.registry.record.remote(self.trial, self._controller_id, self._controller, group))

    async def before_controller_shutdown(self) -> None:
        from ray.exceptions import RayActorError

        with contextlib.suppress(RayActorError):  # the registry ends with the sweep: nothing to forget
            await self.registry.forget.remote(self._controller_id)

    def before_controller_abort(self) -> None:
        import ray
        from ray.exceptions import RayActorError

        with contextlib.suppress(RayActorError):
            ray.get(self.registry.forget.remote(self._controller_id))
