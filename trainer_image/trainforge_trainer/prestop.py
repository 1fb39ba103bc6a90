"""`python -m trainforge_trainer.prestop --grace-seconds N`: the preStop hook of every pod of an attempt.

When Kubernetes evicts a pod (spot reclaim, node drain, preemption by the scheduler), the kubelet
runs this hook, then sends SIGTERM to PID 1 — `ray start --block`, which forwards nothing to the
trainer: without the hook the grace period goes unused and every step since the last periodic
checkpoint is lost. The hook sets the attempt's stop flag (the named Ray actor
`stop_flag_name(lineage)`, lineage from LINEAGE_ENV), so that every rank checkpoints at its next step
boundary and the attempt ends as preempted; then it holds the pod until the attempt's driver is done
(the flag actor, which lives as long as the driver, is gone) or the grace is nearly over.

It always exits 0, and never outlives the grace: a hook that fails or hangs must not block the kill.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Callable

from trainforge.spec.contract import LINEAGE_ENV, STOP_ACTOR_NAMESPACE, stop_flag_name

POLL_S = 0.5
DEFAULT_GRACE_S = 30.0


def margin_s(grace_s: float) -> float:
    """Time left after the hook for SIGTERM to take the pod's processes down in order."""
    return min(10.0, max(2.0, grace_s * 0.1))


def say(text: str) -> None:
    """To stderr, where the kubelet's FailedPreStopHook event and `kubectl logs` pick it up."""
    sys.stderr.write(f"trainforge prestop: {text}\n")
    sys.stderr.flush()


def stop_attempt(lineage: str, deadline: float, connect: Callable[[], None] | None = None) -> str:
    """Set the attempt's stop flag and wait until its driver is done; says how it ended."""
    import ray

    (connect or _connect)()
    if time.monotonic() >= deadline:  # the hook gave up on this thread already: touch nothing more
        return "connected to Ray after the grace"
    name = stop_flag_name(lineage)
    try:
        flag = ray.get_actor(name, namespace=STOP_ACTOR_NAMESPACE)
    except ValueError:
        return f"no running attempt {lineage} here (actor {name} not found): nothing to stop"
    try:
        ray.get(flag.set.remote(), timeout=max(1.0, deadline - time.monotonic()))
    except Exception as exc:  # died meanwhile, or Ray went away: nothing left to wait for
        return f"could not set {name}: {type(exc).__name__}: {exc}"
    say(f"asked attempt {lineage} to checkpoint and stop; waiting for its driver")
    while time.monotonic() < deadline:
        try:
            ray.get(flag.get.remote(), timeout=max(0.1, min(5.0, deadline - time.monotonic())))
        except ray.exceptions.GetTimeoutError:
            continue
        except Exception:  # ActorDiedError / RayActorError: the driver has exited
            return f"attempt {lineage} has stopped"
        time.sleep(POLL_S)
    return f"attempt {lineage} still running at the end of the grace; letting the pod go"


def _connect() -> None:
    import ray

    ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), namespace=STOP_ACTOR_NAMESPACE,
             log_to_driver=False, logging_level=logging.ERROR, configure_logging=False)


def run(grace_s: float, environ: dict[str, str] | None = None,
        connect: Callable[[], None] | None = None) -> str:
    """The hook's work, bounded by grace minus margin whatever Ray does (a thread it may abandon)."""
    env = os.environ if environ is None else environ
    lineage = env.get(LINEAGE_ENV)
    if not lineage:
        return f"{LINEAGE_ENV} is not set: not a trainforge attempt's pod, nothing to stop"
    deadline = time.monotonic() + max(0.0, grace_s - margin_s(grace_s))
    outcome: list[str] = []

    def work() -> None:
        try:
            outcome.append(stop_attempt(lineage, deadline, connect))
        except Exception as exc:  # Ray unreachable (its node is going too): the kill goes ahead
            outcome.append(f"could not reach Ray: {type(exc).__name__}: {exc}")

    thread = threading.Thread(target=work, name="trainforge-prestop", daemon=True)
    thread.start()
    thread.join(timeout=max(0.0, deadline - time.monotonic()))
    return outcome[0] if outcome else f"gave up waiting for attempt {lineage}: the grace is nearly over"


def main(argv: list[str] | None = None) -> int:
    try:
        parser = argparse.ArgumentParser(prog="python -m trainforge_trainer.prestop",
                                         description=(__doc__ or "").split("\n")[0])
        parser.add_argument("--grace-seconds", type=float,
                            default=float(os.environ.get("RAY_JOB_STOP_WAIT_TIME_S", DEFAULT_GRACE_S)),
                            help="the pod's terminationGracePeriodSeconds (the hook ends a margin before it)")
        say(run(parser.parse_args(argv).grace_seconds))
    except BaseException as exc:  # whatever happened (a bad argument too), the pod must be let go
        say(f"failed: {type(exc).__name__}: {exc}")
    return 0


if __name__ == "__main__":
    sys.stdout.flush()
    code = main()
    sys.stderr.flush()
    os._exit(code)  # Ray's threads (abandoned after the grace) must not hold the exit
