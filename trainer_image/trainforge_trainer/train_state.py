"""Where training is and how it has gone so far: the loop's own Stateful component of a checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Position:
    """Where training is: the epoch, the optimizer step, and the micro-batches of this epoch already
    trained on (per rank), so a resumed run skips exactly those."""

    epoch: int = 0
    step: int = 0
    micro_in_epoch: int = 0

    def state_dict(self) -> dict[str, int]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.step, self.micro_in_epoch = state["epoch"], state["step"], state["micro_in_epoch"]


class TrainState:
    """The data position, the last evaluation's metrics and why training stopped.

    Its state records the layout it was taken under (world size and batch size); loaded under another
    layout, the samples already seen this epoch are mapped onto this one. That needs the batch size,
    the accumulation and the world size, so they are given here, and the checkpointer knows nothing of
    data positions."""

    def __init__(self, batch_size: int, grad_accumulation: int, world_size: int, total_steps: int) -> None:
        self.batch_size, self.grad_accumulation, self.world_size = batch_size, grad_accumulation, world_size
        self.total_steps = total_steps
        self.position = Position()
        self.last_eval: dict[str, float] = {}
        self.stop_reason = ""
        """Why training stopped ("" while it goes on): early_stopping, max_steps, epochs, preempted."""

    @property
    def samples_in_epoch(self) -> int:
        """The samples of this epoch already trained on, all ranks together."""
        return self.position.micro_in_epoch * self.batch_size * self.world_size

    def state_dict(self) -> dict[str, Any]:
        """The keys of checkpoint format 1's trainer state, which it sits at the top of."""
        return {"position": self.position.state_dict(), "last_eval": dict(self.last_eval),
                "stop_reason": self.stop_reason, "world_size": self.world_size, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position.load_state_dict(state["position"])
        if (state["world_size"], state["batch_size"]) != (self.world_size, self.batch_size):
            self.position.micro_in_epoch = self._remapped_micro(state)
        self.last_eval = dict(state.get("last_eval") or {})
        stopped = state.get("stop_reason", "")
        # A finished run stays finished, unless the spec now allows more steps than it ran.
        finished = stopped == "early_stopping" or (stopped and self.position.step >= self.total_steps)
        self.stop_reason = stopped if finished else ""

    def _remapped_micro(self, state: dict[str, Any]) -> int:
        """This layout's micro-batches for the samples the saved one had seen, rounded down to whole
        optimizer steps. Every rank reads its share of one global order, so the samples seen are a
        prefix of it, whatever the world size: rounding down trains a few twice and skips none."""
        seen = state["position"]["micro_in_epoch"] * state["batch_size"] * state["world_size"]
        per_step = self.world_size * self.batch_size * self.grad_accumulation
        return seen // per_step * self.grad_accumulation
