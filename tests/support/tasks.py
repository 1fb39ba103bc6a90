"""Test-only tasks, loaded through the spec's `module:function` entrypoint like any user task.

`paced_digits` is the built-in digits task with two test hooks: a pause per training micro-batch
(so a test can interrupt a run between checkpoints) and, once per run, the death of a worker
process at a given micro-batch (SIGKILL to itself: what an OOM kill or a lost node looks like) or a
hang of one rank at a given micro-batch (it sleeps for good: a deadlock, a read that never returns)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from torch import nn
from trainforge_trainer.task import Task, default_forward
from trainforge_trainer.tasks import digits


def paced_digits(pause_s: float = 0.0, die_at_micro: int = 0, die_marker: str = "", hang_at_micro: int = 0,
                 hang_rank: int = 0, hang_marker: str = "", **digits_args: Any) -> Task:
    task = digits.build(**digits_args)
    calls = {"train": 0}

    def forward(model: nn.Module, batch: Any) -> Any:
        if model.training:
            calls["train"] += 1
            if pause_s:
                time.sleep(pause_s)
            if die_at_micro and calls["train"] == die_at_micro and not Path(die_marker).exists():
                Path(die_marker).write_text(str(os.getpid()))  # once: the restarted workers live
                os.kill(os.getpid(), signal.SIGKILL)
            if hang_at_micro and calls["train"] == hang_at_micro and _rank() == hang_rank \
                    and not Path(hang_marker).exists():
                Path(hang_marker).write_text(str(os.getpid()))  # once: the restarted attempt trains on
                while True:
                    time.sleep(3600)
        return default_forward(model, batch)

    task.forward = forward
    return task


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0
