"""spec.ema: an exponential moving average of the weights, with torch's AveragedModel (multi-tensor
EMA), updated every `everySteps` optimizer steps; a Stateful checkpoint part, evaluated and exported
when the spec asks."""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from trainforge.spec.tracking import EmaConfig


def unwrapped(model: nn.Module) -> nn.Module:
    """The task's module under torch.compile's and DDP's wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


class EmaWeights:
    """The average, on the model's device. Under FSDP2 it is refused (the average would need the
    sharded layout of its own); DDP and single workers average their full, identical replicas."""

    def __init__(self, model: nn.Module, cfg: EmaConfig, sharded: bool) -> None:
        if sharded:
            raise ValueError("spec.ema is not supported with spec.strategy.type fsdp yet; use ddp, or drop spec.ema")
        self.model, self.cfg = model, cfg
        self.averaged = AveragedModel(unwrapped(model), multi_avg_fn=get_ema_multi_avg_fn(cfg.decay),
                                      use_buffers=True)

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    def after_step(self, step: int) -> None:
        if step % self.cfg.every_steps == 0:
            self.averaged.update_parameters(unwrapped(self.model))

    def state_dict(self) -> dict[str, Any]:
        return {k: v.detach().clone() for k, v in self.averaged.state_dict().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state)
