"""Cost per step of reading the stop request at every step, on CPU.

    .venv/bin/python bench/stop_check.py [--steps 2000] [--step-ms 2] [--ranks 2]

Each rank runs `--steps` simulated steps (`--step-ms` of waiting, as a host thread waits on its
GPU, or with --compute of CPU work; then a 256 KiB all-reduce as DDP's gradients would be) and,
at every step boundary, one of:
- `StopVote.poll()`: the local event, plus with several ranks an async MAX all-reduce of one float
  on a gloo group, launched at step k and waited on at step k+1 (what the trainer does now);
- a blocking all-reduce of the signal vector on the default group at every step (what reading the
  stop every step would cost done the old way; the trainer did it every logEverySteps only).
Prints the time a step spends in the check, median and mean over 3 rounds, in microseconds (the
slowest rank): with the vote, the all-reduce overlaps the next step, so that is what it adds."""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import statistics
import threading
import time
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console
from rich.table import Table
from trainforge_trainer.checkpoint.preempt import StopVote

MODES = ("vote", "blocking")
GRAD_FLOATS = 65_536


def busy(step_ms: float, x: torch.Tensor | None) -> None:
    """The step's work: compute on this core, or (None) waiting, as a host thread waits on its GPU."""
    if x is None:
        time.sleep(step_ms / 1000)
        return
    end = time.perf_counter() + step_ms / 1000
    while time.perf_counter() < end:
        x @ x


def timed(mode: str, steps: int, step_ms: float, vote: StopVote, x: torch.Tensor | None) -> list[float]:
    """Seconds each step waited inside the check (what it adds to the step's time)."""
    flags, grads = torch.zeros(3), torch.zeros(GRAD_FLOATS)
    if dist.is_initialized():
        dist.barrier()
    waited: list[float] = []
    for _ in range(steps):
        busy(step_ms, x)
        if dist.is_initialized():
            dist.all_reduce(grads)  # DDP's gradient all-reduce: the ranks leave each step together
        started = time.perf_counter()
        if mode == "vote":
            vote.poll()
        elif mode == "blocking" and dist.is_initialized():
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        waited.append(time.perf_counter() - started)
    return waited


def rank_main(rank: int, world: int, port: int, steps: int, step_ms: float, compute: bool, out: Any) -> None:
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    vote = StopVote.for_world(threading.Event())
    x = torch.randn(32, 32) if compute else None
    results: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(3):
        for mode in MODES:
            results[mode].extend(timed(mode, steps, step_ms, vote, x))
    out.put((rank, {m: (statistics.median(v), statistics.fmean(v)) for m, v in results.items()}))
    if world > 1:
        dist.destroy_process_group()


def run(world: int, steps: int, step_ms: float, compute: bool) -> dict[str, tuple[float, float]]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=rank_main, args=(r, world, port, steps, step_ms, compute, out)) for r in range(world)]
    for p in procs:
        p.start()
    per_rank = dict(out.get(timeout=600) for _ in procs)
    for p in procs:
        p.join()
    return {m: max(r[m] for r in per_rank.values()) for m in MODES}  # the slowest rank sets the pace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--step-ms", type=float, default=2.0)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--compute", action="store_true",
                        help="steps compute on the CPU (default: they wait, as on a GPU); on a machine with no "
                             "core to spare this starves gloo's threads, whatever the check")
    args = parser.parse_args()
    kind = "computing" if args.compute else "waiting"
    table = Table(title=f"stop check per step ({args.steps} {kind} steps of ~{args.step_ms:g} ms, CPU, gloo)")
    for col in ("ranks", "StopVote.poll median / mean (us)", "blocking all-reduce median / mean (us)"):
        table.add_column(col, justify="right")
    for world in sorted({1, args.ranks}):
        t = run(world, args.steps, args.step_ms, args.compute)
        vote, blocking = (f"{t[m][0] * 1e6:.1f} / {t[m][1] * 1e6:.1f}" for m in MODES)
        table.add_row(str(world), vote, blocking if world > 1 else "-")
    Console().print(table)


if __name__ == "__main__":
    main()
