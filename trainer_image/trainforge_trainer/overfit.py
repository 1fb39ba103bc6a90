"""`trainforge run --overfit-batch`: can the model drive one batch's loss to ~0? The first sanity check
of a new task: a model, loss and labels that fit together can memorise a single batch; one that
cannot has a bug (labels misaligned, a detached loss, a learning rate far off) that a full run would
only show hours later.

The job's own components are built (`components.build`: model, spec.init, spec.lora, freezing, optimizer,
precision, loss) in this process on one worker, without Ray; the first training batch (not augmented)
is trained on for `steps` optimizer steps at the spec's peak learning rate (no schedule)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from trainforge.spec import Strategy, TrainingJobSpec

from . import dist
from .components import build, micro_step
from .data import to_device
from .model_init import load_pretrained

RELATIVE = 0.05
"""The loss must fall to this share of its first value ..."""
ABSOLUTE = 0.05
"""... or below this value (a loss that starts small)."""


@dataclass
class OverfitResult:
    steps: int
    losses: list[float] = field(default_factory=list)
    """The loss before each optimizer step."""

    @property
    def first(self) -> float:
        return self.losses[0]

    @property
    def last(self) -> float:
        return self.losses[-1]

    @property
    def target(self) -> float:
        return max(ABSOLUTE, RELATIVE * self.first)

    @property
    def passed(self) -> bool:
        return math.isfinite(self.last) and self.last <= self.target

    def verdict(self) -> str:
        if self.passed:
            return (f"ok: one batch's loss fell from {self.first:.4g} to {self.last:.4g} in {self.steps} steps "
                    f"(target {self.target:.3g})")
        return (f"failed: one batch's loss went from {self.first:.4g} to {self.last:.4g} in {self.steps} steps, "
                f"above {self.target:.3g}. A model that cannot memorise one batch has a bug: check that the "
                "labels belong to their inputs, that the loss is computed on the model's outputs, and "
                "spec.optimizer.lr (label smoothing or dropout also keep the loss above 0)")


def overfit_batch(spec: TrainingJobSpec, steps: int = 200,
                  progress: Callable[[int, float], None] | None = None) -> OverfitResult:
    """Train the job's model on its first training batch for `steps` steps; see the module docstring.

    Args:
        spec: the job; run on one worker (an FSDP2 job as DDP's single replica).
        steps: optimizer steps.
        progress: called with (step, loss) after each step.
    """
    one = spec.model_copy(update={"workers": 1, "strategy": Strategy(), "compile": False})
    use_gpu = spec.gpus_per_worker > 0 and torch.cuda.is_available()
    world = dist.World(rank=0, local_rank=0, size=1, device=torch.device("cuda" if use_gpu else "cpu"))
    components = build(one, world)
    if spec.init is not None:
        load_pretrained(components.model, spec.init, world, spec.checkpoint.endpoint, spec.checkpoint.region)
    batch = to_device(next(iter(components.train)), world.device)
    for group in components.optimizer.param_groups:  # the peak rate throughout: no warm-up, no decay
        group["lr"] = components.schedule.peak_lr * group.get("lr_scale", 1.0)
    result = OverfitResult(steps)
    components.model.train()
    for step in range(1, steps + 1):
        loss = micro_step(components, batch, 1, True)
        components.precision.step(components.optimizer, components.params)
        components.optimizer.zero_grad(set_to_none=True)
        result.losses.append(float(loss))
        if progress is not None:
            progress(step, result.losses[-1])
    return result
