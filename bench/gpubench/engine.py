"""Modes b and c, the trainforge engine: the TrainingJob manifest that a benchmark run trains (also
used by the checkpoint measurement), and `ray`, mode c's driver: every job through `trainforge
run`'s LocalRun in one Ray session, reporting Ray's start-up time, each report as it arrives, and
each run's wall time and time to its first report."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import emit


def job_doc(size: str, seq: int, batch: int, steps: int, window: int, compile_: bool, strategy: str,
            gpus: int, device: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "task": {"entrypoint": "gpt", "args": {"size": size, "seq_len": seq,
                                               "train_samples": batch * gpus * (steps + 8), "val_samples": 8}},
        "workers": gpus,
        "gpusPerWorker": 1 if device == "cuda" else 0,
        "strategy": {"type": strategy},
        "precision": "bf16",
        "compile": compile_,
        "optimizer": {"lr": 3e-4, "betas": [0.9, 0.95]},
        "schedule": {"warmupSteps": min(10, steps // 2)},
        "batch": {"size": batch},
        "maxSteps": steps,
        "logEverySteps": window,
        "eval": {"everyEpoch": False},
        "checkpoint": {"everyEpoch": False},
    }
    return {"apiVersion": "trainforge.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name}, "spec": spec}


def cmd_ray(args: argparse.Namespace) -> None:
    """Mode c: every job in --jobs (a JSON list of manifests) through LocalRun, one Ray session."""
    import ray
    from trainforge.spec import parse_job
    from trainforge_trainer.driver import prepare_ray_env
    from trainforge_trainer.local.runner import LocalRun

    jobs = json.loads(Path(args.jobs).read_text())
    prepare_ray_env()
    t = time.perf_counter()
    ray.init(include_dashboard=False, num_cpus=os.cpu_count() or 1, log_to_driver=args.verbose,
             configure_logging=False)
    emit({"kind": "ray_init", "seconds": time.perf_counter() - t, "ray": ray.__version__})
    storage = tempfile.mkdtemp(prefix="tf-bench-ray-")
    for doc in jobs:
        first: list[float] = []
        started = time.perf_counter()

        name = doc["metadata"]["name"]

        def on_report(r: dict[str, Any], name: str = name, first: list = first, started: float = started) -> None:
            if not first and "step_time" in r:
                first.append(time.perf_counter() - started)
            emit({"kind": "ray_report", "name": name, **r, "_t": time.perf_counter() - started})

        emit({"kind": "ray_start", "name": name})
        outcome = LocalRun(parse_job(doc), storage=storage, fresh=True).execute(on_report)
        emit({"kind": "ray_run", "name": name, "status": outcome.status, "error": outcome.error,
              "wall_s": time.perf_counter() - started, "first_report_s": first[0] if first else None})
        shutil.rmtree(Path(storage) / doc["metadata"]["name"], ignore_errors=True)
    ray.shutdown()
    shutil.rmtree(storage, ignore_errors=True)
