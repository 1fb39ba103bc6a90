"""Run one TrainingJob's worker loop under plain torchrun (benchmarks, debugging).

    torchrun --nproc-per-node 2 -m trainforge_trainer.torchrun job.yaml [--max-steps N] [--run-dir DIR]

With --run-dir, checkpoints go to that directory and running again resumes; SIGTERM (torchrun
forwards it) checkpoints and exits 75.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from trainforge.spec import load_jobs

from .checkpoint.manager import PREEMPTED_EXIT_CODE
from .worker import run_worker


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trainforge_trainer.torchrun")
    parser.add_argument("manifest")
    parser.add_argument("--max-steps", type=int, help="override spec.maxSteps")
    parser.add_argument("--run-dir", help="write metrics.jsonl and checkpoints here")
    args = parser.parse_args(argv)
    job = load_jobs(args.manifest)[0]
    spec = job.spec
    if args.max_steps:
        spec = spec.model_copy(update={"max_steps": args.max_steps})
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = run_worker(spec, args.run_dir)
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps({"result": result}), flush=True)
    if result.get("stop_reason") == "preempted":
        sys.exit(PREEMPTED_EXIT_CODE)


if __name__ == "__main__":
    main()
