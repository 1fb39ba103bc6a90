"""Sweeps whose trials cannot get their Train workers (issue 16, "Hangs").

1. A scheduler stops a trial early while Ray's own PlacementGroupCleaner cannot work (a second Ray
   instance on the machine: its address lookup raises and its monitor thread dies). The stopped
   trial's worker placement group must still be given back, and the next trial must start and
   finish: nothing lost = every trial ends TERMINATED, the stopped one at the epoch ASHA stopped it.
2. A trial whose workers can never get their CPUs fails within spec.tune.trialStartTimeoutSeconds
   with a reason naming what it waited for, instead of waiting forever.

Both run on the session's Ray (4 logical CPUs) with one trial at a time."""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from trainforge.spec import parse_job
from trainforge_trainer.local.runner import LocalRun

from tests.faults.operator_setup import record
from tests.unit.manifests import manifest

pytestmark = pytest.mark.usefixtures("ray_session")
GOOD_LR, HOPELESS_LR = 3e-3, 1e-7


def sweep_doc(name: str, cpus_per_worker: float, **tune: Any) -> dict[str, Any]:
    doc = manifest(task={"entrypoint": "digits", "args": {"hidden": 32}}, workers=1, cpusPerWorker=cpus_per_worker,
                   epochs=2, batch={"size": 128},
                   tune={"metric": "val_accuracy", "mode": "max", "maxConcurrent": 1, **tune})
    doc["metadata"]["name"] = name
    return doc


def free_cpus() -> float:
    import ray

    return float(ray.available_resources().get("CPU", 0.0))


def cpus_back(free: float, within_s: float = 30.0) -> bool:
    """Whether `free` CPUs are free again within `within_s`: the last trial's group is removed as its
    controller ends, which Ray's resource view shows a moment after the sweep has returned."""
    deadline = time.monotonic() + within_s
    while free_cpus() < free - 0.02:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


@contextlib.contextmanager
def second_ray_instance_on_the_machine() -> Iterator[None]:
    """Stand-in for another Ray instance on this machine (someone's `ray start`, another test session).
    All Ray's address lookup (`find_gcs_addresses`) sees of one is a process whose executable name
    contains "raylet" and which carries a --gcs-address flag; nothing needs to listen there."""
    fake = subprocess.Popen(["bash", "-c", 'exec -a "$0" sleep 600', "raylet --gcs-address=127.0.0.1:9"])
    try:
        yield
    finally:
        fake.kill()
        fake.wait()


def test_a_trial_stopped_early_gives_its_workers_back_to_the_next_trial(tmp_path: Path) -> None:
    free = free_cpus()
    assert free >= 2, f"the session's Ray should have 2+ free CPUs, has {free}"
    per_worker = round(free * 0.6, 2)  # one trial at a time, and a leaked group starves the next one
    doc = sweep_doc("starve", per_worker, search={"type": "grid"}, trialStartTimeoutSeconds=45,
                    space={"optimizer.lr": {"grid": [GOOD_LR, HOPELESS_LR, GOOD_LR]}},
                    scheduler={"type": "asha", "timeAttr": "epoch", "maxT": 2, "gracePeriod": 1,
                               "reductionFactor": 2})
    started = time.monotonic()
    with second_ray_instance_on_the_machine():
        outcome = LocalRun(parse_job(doc), storage=str(tmp_path)).sweep()
    rows = sorted(outcome.trials, key=lambda t: t.trial)
    assert [t.state for t in rows] == ["TERMINATED"] * 3, [(t.trial, t.state, t.error) for t in rows]
    assert [t.epochs for t in rows] == [2, 1, 2], rows  # ASHA stopped the hopeless trial at epoch 1 ...
    # ... and the next trial got its CPUs within trialStartTimeoutSeconds. Ray's cleaner cannot remove
    # a stopped trial's group here; the controller removes it as it ends (its Train run never retries,
    # so it starts no new group while dying), else the sweep's registry does (`outcome.released`).
    assert cpus_back(free), f"the sweep left CPUs held: {free_cpus()} of {free} free 30 s after it ended"
    record("sweep trial stopped early, Ray's cleaner down", outcome="next trial ran", trials_lost=0,
           groups_removed=len(outcome.released), sweep_s=time.monotonic() - started)


def test_a_trial_that_cannot_get_its_workers_fails_with_the_reason(tmp_path: Path) -> None:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    assert cpus_back(float(ray.cluster_resources().get("CPU", 0.0))), "an earlier test's trial still holds CPUs"
    hold = placement_group([{"CPU": free_cpus() - 0.5}])  # another job holds all but half a CPU
    ray.get(hold.ready(), timeout=60)
    gave_up = threading.Event()

    def let_go() -> None:  # without the bound the trial would wait forever: end the wait, fail below
        gave_up.set()
        remove_placement_group(hold)

    rescue = threading.Timer(90, let_go)
    rescue.start()
    started = time.monotonic()
    try:
        doc = sweep_doc("nocpu", 1.0, numSamples=1, trialStartTimeoutSeconds=3,
                        space={"optimizer.lr": {"choice": [GOOD_LR]}})
        outcome = LocalRun(parse_job(doc), storage=str(tmp_path)).sweep()
    finally:
        rescue.cancel()
        if not gave_up.is_set():
            remove_placement_group(hold)
    elapsed = time.monotonic() - started
    assert not gave_up.is_set(), "the trial waited 90 s for CPUs it could not get"
    [row] = outcome.trials
    assert row.state == "ERROR" and row.error, row
    assert "TrialStartTimeout" in row.error and "spec.tune.trialStartTimeoutSeconds" in row.error, row.error
    assert "1 x {'CPU': 1.0}" in row.error and "within 3 s" in row.error, row.error
    assert outcome.best is None
    record("sweep trial cannot get its CPUs", outcome="trial failed with reason", time_to_fail_s=elapsed,
           reason=row.error)
