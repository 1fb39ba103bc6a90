"""Run under torchrun by test_torchrun.py: counts DDP all-reduces with a comm hook during real training.

No `from __future__ import annotations` here: DDP checks the hook's annotations at runtime.
"""


import json
import os
import sys

import torch.distributed as torch_dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from trainforge.spec import load_jobs
from trainforge_trainer import dist
from trainforge_trainer.loop import JsonlLog, Loop, build
from trainforge_trainer.reporting import PrintReporter


def main() -> None:
    spec = load_jobs(sys.argv[1])[0].spec
    world = dist.setup(False)
    parts = build(spec, world)
    calls = {"n": 0}

    def counting_hook(state, bucket):
        calls["n"] += 1
        return allreduce_hook(state, bucket)  # type: ignore[arg-type]

    parts.model.register_comm_hook(None, counting_hook)
    loop = Loop(parts, PrintReporter(False), JsonlLog(None))
    loop.fit()
    if os.environ["RANK"] == "0":
        print(json.dumps({"allreduces": calls["n"], "steps": loop.pos.step}), flush=True)
    torch_dist.barrier()
    dist.teardown_if_owned()
    # DDP keeps the Python hook referenced from C++; letting the interpreter finalise under it aborted
    # (SIGABRT) now and then on a loaded 2-core machine. Everything is reported: leave without finalising.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
