"""Stress test: an 8-trial ASHA sweep, one trial at a time on 2 CPUs, run N times (issue 16).

Each run is a fresh process with its own Ray (as `trainforge run` is), so a placement group that a
stopped trial never gives back starves the next trial exactly as it did in the issue. A run that
does not finish within --timeout counts as hung: the child prints the cluster's placement groups
once it has seen no trial result for --stall seconds, then the parent interrupts it.

    .venv/bin/python bench/sweep_stress.py            # 10 runs, table on stdout, exit 1 on any hang
    .venv/bin/python bench/sweep_stress.py --runs 3 --timeout 240
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MAX_T = 3


def sweep_doc(trials: int, seed: int) -> dict[str, Any]:
    """One 1.0-CPU worker per trial + the 0.01-CPU trial driver: only one trial fits on 2 CPUs."""
    return {
        "apiVersion": "trainforge.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "stress"},
        "spec": {
            "task": {"entrypoint": "digits", "args": {"hidden": 64}}, "workers": 1, "cpusPerWorker": 1.0,
            "epochs": MAX_T, "batch": {"size": 64},
            "tune": {"metric": "val_accuracy", "mode": "max", "numSamples": trials, "maxConcurrent": 1,
                     "search": {"type": "random", "seed": seed},
                     "scheduler": {"type": "asha", "timeAttr": "epoch", "maxT": MAX_T, "gracePeriod": 1,
                                   "reductionFactor": 2},
                     "space": {"optimizer.lr": {"loguniform": [1e-5, 1e-1]}}},
        },
    }


class StallReport:
    """Child side: once no trial result came for `stall_s`, print what holds the cluster's CPUs."""

    def __init__(self, stall_s: float) -> None:
        self.stall_s, self.last = stall_s, time.monotonic()
        threading.Thread(target=self._watch, daemon=True).start()

    def __call__(self, trial: str, result: dict[str, Any]) -> None:
        self.last = time.monotonic()

    def _watch(self) -> None:
        import ray

        while time.monotonic() - self.last < self.stall_s:
            time.sleep(1)
        try:
            groups = ray.util.placement_group_table()
            alive = [(g["placement_group_id"][:8], g["state"], g["bundles"]) for g in groups.values()
                     if g["state"] != "REMOVED"]
            print(f"STALL: no trial result for {self.stall_s:g} s; available {ray.available_resources()}; "
                  f"placement groups not removed: {alive}", file=sys.stderr, flush=True)
        except Exception as exc:  # diagnostics only
            print(f"STALL: no trial result for {self.stall_s:g} s ({exc!r})", file=sys.stderr, flush=True)


def child(args: argparse.Namespace) -> None:
    from trainforge.spec import parse_job
    from trainforge_trainer.local.runner import LocalRun

    run = LocalRun(parse_job(sweep_doc(args.trials, args.seed)), storage=args.storage,
                   ray_init={"num_cpus": 2, "_temp_dir": args.temp_dir})
    outcome = run.sweep(StallReport(args.stall))
    rows = [{"trial": t.trial, "state": t.state, "epochs": t.epochs, "error": t.error} for t in outcome.trials]
    print("RESULT " + json.dumps({"trials": rows, "released": len(outcome.released)}), flush=True)


@dataclass
class RunRow:
    run: int
    completed: int
    stopped: int
    errored: int
    released: int
    wall_s: float
    hung: bool
    note: str = ""


def one_run(i: int, args: argparse.Namespace) -> RunRow:
    work = Path(tempfile.mkdtemp(prefix="tfstress", dir="/tmp"))  # short: Ray's socket paths
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own Ray, as `trainforge run`
    cmd = [sys.executable, __file__, "--child", "--storage", str(work / "runs"), "--temp-dir", str(work / "ray"),
           "--trials", str(args.trials), "--seed", str(args.seed + i), "--stall", str(args.stall)]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=args.timeout)
        hung = False
    except subprocess.TimeoutExpired:
        hung = True
        os.killpg(proc.pid, signal.SIGINT)  # SIGINT: Ray shuts down cleanly, no orphans
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
    wall = time.monotonic() - start
    if hung:  # keep Ray's session logs (controllers, cleaners, GCS) for the post-mortem
        err += f"\nRay session logs kept under {work / 'ray'}\n"
    else:
        shutil.rmtree(work, ignore_errors=True)
    return summarise(i, out, err, wall, hung, proc.returncode)


def summarise(i: int, out: str, err: str, wall: float, hung: bool, rc: int | None) -> RunRow:
    result = next((line[7:] for line in out.splitlines() if line.startswith("RESULT ")), None)
    stall = next((line for line in err.splitlines() if line.startswith("STALL")), "")
    if hung or result is None:
        log = Path(tempfile.gettempdir()) / f"sweep_stress_run{i}.err"
        log.write_text(err)
        stall = f"{stall} (stderr: {log})"
    if result is None:
        note = stall or (err.strip().splitlines() or [f"exit {rc}"])[-1]
        return RunRow(i, 0, 0, 0, 0, wall, hung, note[:400])
    parsed = json.loads(result)
    rows = parsed["trials"]
    completed = sum(1 for r in rows if r["state"] == "TERMINATED" and r["epochs"] == MAX_T)
    stopped = sum(1 for r in rows if r["state"] == "TERMINATED" and (r["epochs"] or 0) < MAX_T)
    errored = sum(1 for r in rows if r["state"] != "TERMINATED")
    errors = "; ".join(sorted({r["error"] for r in rows if r["error"]} | ({stall} if stall else set())))
    return RunRow(i, completed, stopped, errored, parsed["released"], wall, hung, errors[:400])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=420, help="seconds per run before it counts as hung")
    parser.add_argument("--stall", type=float, default=120, help="seconds without a trial result before the "
                        "child prints the placement groups")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--storage", help=argparse.SUPPRESS)
    parser.add_argument("--temp-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    print("| run | trials completed (maxT) | stopped early | errored | groups the sweep removed | wall time | hung "
          "| note |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |", flush=True)
    rows = []
    for i in range(1, args.runs + 1):
        row = one_run(i, args)
        rows.append(row)
        print(f"| {row.run} | {row.completed} | {row.stopped} | {row.errored} | {row.released} | {row.wall_s:.0f} s | "
              f"{'yes' if row.hung else 'no'} | {row.note} |", flush=True)
    bad = [r.run for r in rows if r.hung or r.completed + r.stopped != args.trials]
    print(f"\n{args.runs - len(bad)} of {args.runs} runs finished all {args.trials} trials"
          + (f"; failed runs: {bad}" if bad else ""))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
