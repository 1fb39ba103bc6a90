"""Stop requests and hangs, decided without a cluster: the stop flag's poll rides out Ray errors, every
step reads the stop (all ranks stopping at the same step, through a real 2-rank gloo group), the
step-time watchdog's limits and pauses, its stack dump and exit in a real process, and the preStop
hook always letting the pod go in time."""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from trainforge_trainer.checkpoint import preempt
from trainforge_trainer.checkpoint.preempt import PreemptionWatch, StopVote, backoff_s
from trainforge_trainer.prestop import main as prestop_main
from trainforge_trainer.prestop import run as prestop_run
from trainforge_trainer.watchdog import HANG_EXIT_CODE, StepWatchdog

from tests.unit.test_checkpoint_engine import loop_for, saved

# --- the stop flag's poll ------------------------------------------------------------------------


def test_the_poll_keeps_reading_the_flag_through_errors_and_backs_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preempt, "POLL_S", 0.01)
    monkeypatch.setattr(preempt, "MAX_BACKOFF_S", 0.05)
    answers: list[Any] = [ConnectionError("GCS away")] * 5 + [False, RuntimeError("actor restarting"), True]
    seen: list[int] = []
    watch = PreemptionWatch()

    def read() -> bool:
        seen.append(watch.poll_failures)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    worker = threading.Thread(target=watch.poll_until_set, args=(read,), daemon=True)
    worker.start()
    worker.join(timeout=5)
    watch.close()
    assert watch.requested.is_set() and not answers  # read on after every error, until set
    assert seen == [0, 1, 2, 3, 4, 5, 0, 1]  # a good read resets the count


def test_backoff_doubles_from_the_poll_interval_up_to_its_cap() -> None:
    assert [backoff_s(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


# --- read at every step --------------------------------------------------------------------------


def test_a_stop_is_acted_on_at_the_next_step_not_the_next_report(tmp_path: Path) -> None:
    loop, _ = loop_for(tmp_path, batch={"size": 64}, maxSteps=30, logEverySteps=1000, eval={"everyEpoch": False},
                       checkpoint={"everyEpoch": False, "keep": 10})
    assert loop.ckpt is not None
    loop.ckpt.watch.requested.set()
    result = loop.fit()
    assert result["stop_reason"] == "preempted" and result["step"] == 1
    assert saved(tmp_path) == [(1, "preempted")]


def _vote_rank(rank: int, port: int, stop_rank: int, stop_at: int, out: Any) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    event = threading.Event()
    vote = StopVote.for_world(event)
    stopped = None
    for step in range(1, 12):
        time.sleep(0.002 * (rank + 1) * (step % 3))  # ranks reach their boundaries at different times
        if rank == stop_rank and step == stop_at:
            event.set()
        if vote.poll():
            stopped = step
            break
    out.put((rank, stopped))
    dist.destroy_process_group()


def test_every_rank_stops_at_the_same_step_when_one_rank_is_asked() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_vote_rank, args=(rank, port, 1, 3, out)) for rank in (0, 1)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    # Rank 1 saw it at step 3; the reduce launched there is read at step 4, by both.
    assert results == {0: 4, 1: 4}


# --- the watchdog --------------------------------------------------------------------------------


def fired_watchdog(timeout_s: float | None, **kwargs: Any) -> tuple[StepWatchdog, list[str]]:
    hangs: list[str] = []
    return StepWatchdog(timeout_s, rank=3, on_hang=hangs.append, **kwargs), hangs


def test_the_limit_is_the_specs_or_k_times_the_median_step_with_a_floor() -> None:
    explicit, _ = fired_watchdog(7)
    assert explicit.limit_s() == 7
    default, _ = fired_watchdog(None, floor_s=1.0, factor=10.0)
    assert default.limit_s() is None  # no limit before a few steps were seen
    default.steps.extend([0.2, 0.3, 5.0, 0.2, 0.25])  # one slow step does not move the median
    assert default.limit_s() == pytest.approx(2.5)
    default.steps.clear()
    default.steps.extend([0.01] * 5)
    assert default.limit_s() == 1.0  # the floor
    assert not fired_watchdog(0)[0].enabled


def test_no_step_within_the_limit_fires_with_the_rank_and_pauses_do_not_count() -> None:
    dog, hangs = fired_watchdog(0.3)
    dog.start()
    for _ in range(5):
        time.sleep(0.1)
        dog.tick()
    with dog.paused():  # a checkpoint save longer than the limit
        time.sleep(0.6)
    assert not hangs
    deadline = time.monotonic() + 5
    while not hangs and time.monotonic() < deadline:
        time.sleep(0.05)
    dog.stop()
    assert len(hangs) == 1 and hangs[0].startswith("rank 3: no optimizer step completed in")


def test_a_stopped_watchdog_never_fires() -> None:
    dog, hangs = fired_watchdog(0.2)
    dog.start()
    dog.stop()
    time.sleep(0.5)
    assert not hangs


HUNG = """
import threading, time
from trainforge_trainer.watchdog import StepWatchdog
dog = StepWatchdog(0.5, rank=1)
dog.start()
dog.tick()
threading.Event().wait()  # the training thread never comes back
"""


def test_a_hung_rank_dumps_every_threads_stack_and_exits_with_its_own_code() -> None:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", HUNG], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONFAULTHANDLER": ""})
    assert done.returncode == HANG_EXIT_CODE, done.stderr
    assert "rank 1: no optimizer step completed" in done.stderr and "Stacks of rank 1" in done.stderr
    assert "trainforge-watchdog-1" in done.stderr or "Thread 0x" in done.stderr  # every thread
    assert 'File "<string>", line 7' in done.stderr  # the stuck main thread, where it waits
    assert time.monotonic() - started < 30


# --- the preStop hook ----------------------------------------------------------------------------


def test_the_hook_lets_the_pod_go_before_the_grace_whatever_ray_does() -> None:
    env = {"TRAINFORGE_LINEAGE": "uid.a1"}
    assert "not set" in prestop_run(30, environ={})

    def unreachable() -> None:
        raise ConnectionError("no Ray on this node")

    assert "could not reach Ray" in prestop_run(30, environ=env, connect=unreachable)
    released = threading.Event()

    def hangs() -> None:  # Ray hangs until the test lets go, then fails (no Ray is ever reached)
        released.wait(60)
        raise ConnectionError("Ray never answered")

    started = time.monotonic()
    outcome = prestop_run(2.5, environ=env, connect=hangs)  # margin 2 s
    assert "gave up" in outcome and time.monotonic() - started < 1.5
    released.set()
    assert prestop_main(["--grace-seconds", "not-a-number"]) == 0  # a broken hook never blocks the kill
