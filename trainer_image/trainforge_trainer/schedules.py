"""Learning-rate schedules as pure functions of the optimizer step, plus one resumable driver.

Every schedule is `factor(step) -> multiplier of the peak lr`. Warm-up composes with all of them: for
step < W the lr ramps linearly from 0 to where the schedule starts; afterwards the schedule runs on
s = step - W over the remaining T - W steps (multistep milestones and inverse_sqrt count absolute
steps, as users write them).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch.optim import Optimizer
from trainforge.spec import ScheduleConfig

Factor = Callable[[int], float]


def warmup_cosine(horizon: int, min_ratio: float) -> Factor:
    def f(s: int) -> float:
        progress = min(max(s / max(1, horizon), 0.0), 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def linear(horizon: int, min_ratio: float) -> Factor:
    return lambda s: 1 - (1 - min_ratio) * min(max(s / max(1, horizon), 0.0), 1.0)


def step_decay(step_size: int, gamma: float) -> Factor:
    return lambda s: gamma ** (s // step_size)


def multistep(milestones: list[int], gamma: float, offset: int) -> Factor:
    return lambda s: gamma ** sum(1 for m in milestones if s + offset >= m)


def exponential(gamma: float) -> Factor:
    return lambda s: gamma**s


def onecycle(horizon: int, pct_start: float, div: float, final_div: float, anneal: str) -> Factor:
    """PyTorch OneCycleLR (two phases): max/div -> max over pct_start, then -> max/div/final_div."""
    start, low = 1 / div, 1 / div / final_div
    up_end = float(pct_start * horizon) - 1
    down_end = float(horizon - 1)

    def interp(a: float, b: float, pct: float) -> float:
        if anneal == "linear":
            return (b - a) * pct + a
        return b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1)

    def f(s: int) -> float:
        if s <= up_end:
            return interp(start, 1.0, s / up_end if up_end > 0 else 1.0)
        return interp(1.0, low, min((s - up_end) / max(down_end - up_end, 1e-12), 1.0))

    return f


def cosine_restarts(t0: int, t_mult: int, min_ratio: float) -> Factor:
    """SGDR: cycles of t0, t0*t_mult, ... steps; restarts at t0, t0(1+m), t0(1+m+m^2), ..."""

    def f(s: int) -> float:
        if t_mult == 1:
            t_cur, t_i = s % t0, t0
        else:
            n = int(math.log(s / t0 * (t_mult - 1) + 1, t_mult))
            t_cur, t_i = s - t0 * (t_mult**n - 1) // (t_mult - 1), t0 * t_mult**n
            if t_cur >= t_i:  # float log rounding at an exact boundary
                t_cur, t_i = t_cur - t_i, t_i * t_mult
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t_cur / t_i))

    return f


def inverse_sqrt(timescale: int, offset: int) -> Factor:
    return lambda s: math.sqrt(timescale / max(s + offset, timescale))


def warmup_steps_of(cfg: ScheduleConfig, total_steps: int) -> int:
    if cfg.warmup_steps is not None:
        return cfg.warmup_steps
    if cfg.warmup_ratio is not None:
        return int(cfg.warmup_ratio * total_steps)
    return 0


def base_factor(cfg: ScheduleConfig, total_steps: int, warmup: int) -> Factor:
    horizon = max(1, total_steps - warmup)
    min_ratio = cfg.min_lr_ratio or 0.0
    name = cfg.name
    if name == "warmup_cosine":
        return warmup_cosine(horizon, min_ratio)
    if name == "linear":
        return linear(horizon, min_ratio)
    if name == "step":
        return step_decay(cfg.step_size or 1, cfg.gamma or 0.1)
    if name == "multistep":
        return multistep(cfg.milestones or [], cfg.gamma or 0.1, warmup)
    if name == "exponential":
        return exponential(cfg.gamma or 1.0)
    if name == "onecycle":
        return onecycle(horizon, cfg.pct_start or 0.3, cfg.div_factor or 25.0,
                        cfg.final_div_factor or 1e4, cfg.anneal_strategy or "cos")
    if name == "cosine_restarts":
        return cosine_restarts(cfg.t0 or 1, cfg.t_mult or 1, min_ratio)
    if name == "inverse_sqrt":
        return inverse_sqrt(cfg.timescale or max(warmup, 1), warmup)
    return lambda s: 1.0  # constant and plateau (plateau scales itself on evaluations)


def with_warmup(factor: Factor, warmup: int) -> Factor:
    if warmup <= 0:
        return factor
    start = factor(0)
    return lambda step: start * step / warmup if step < warmup else factor(step - warmup)


def lr_scale(mode: str, world_size: int, grad_accumulation: int) -> float:
    k = world_size * grad_accumulation
    return {"none": 1.0, "linear": float(k), "sqrt": math.sqrt(k)}[mode]


class Plateau:
    """ReduceLROnPlateau's rule as state: multiply the lr by `factor` after `patience` bad evals."""

    def __init__(self, cfg: ScheduleConfig) -> None:
        self.mode = cfg.mode or "min"
        self.factor = cfg.factor or 0.1
        self.patience = 10 if cfg.patience is None else cfg.patience
        self.threshold = 1e-4 if cfg.threshold is None else cfg.threshold
        self.cooldown = cfg.cooldown or 0
        self.min_scale = cfg.min_lr_ratio or 0.0
        self.scale, self.best, self.bad, self.cooldown_left = 1.0, None, 0, 0

    def observe(self, value: float) -> None:
        better = self.best is None or (
            value < self.best * (1 - self.threshold) if self.mode == "min"
            else value > self.best * (1 + self.threshold)
        )
        if better:
            self.best, self.bad = value, 0
        else:
            self.bad += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad = 0
        if self.bad > self.patience:
            self.scale = max(self.scale * self.factor, self.min_scale)
            self.cooldown_left, self.bad = self.cooldown, 0

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "best": self.best, "bad": self.bad, "cooldown_left": self.cooldown_left}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale, self.best = state["scale"], state["best"]
        self.bad, self.cooldown_left = state["bad"], state["cooldown_left"]


class LRSchedule:
    """Sets every param group's lr from the optimizer step; Stateful for checkpoints."""

    def __init__(self, optimizer: Optimizer, cfg: ScheduleConfig, peak_lr: float, total_steps: int) -> None:
        self.optimizer, self.peak_lr, self.total_steps = optimizer, peak_lr, total_steps
        warmup = warmup_steps_of(cfg, total_steps)
        self.factor = with_warmup(base_factor(cfg, total_steps, warmup), warmup)
        self.plateau = Plateau(cfg) if cfg.name == "plateau" else None
        self.metric = (cfg.metric or "val_loss") if self.plateau else None
        self.step_count = 0
        self._apply()

    def lr_at(self, step: int) -> float:
        scale = self.plateau.scale if self.plateau else 1.0
        return self.peak_lr * self.factor(step) * scale

    @property
    def lr(self) -> float:
        return self.lr_at(self.step_count)

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * group.get("lr_scale", 1.0)  # spec.optimizer.paramGroups

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def observe(self, metrics: dict[str, float]) -> None:
        """After an evaluation: plateau decides on its metric; other schedules ignore it."""
        if self.plateau and self.metric in metrics:
            self.plateau.observe(metrics[self.metric])
            self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step_count, "plateau": self.plateau.state_dict() if self.plateau else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = state["step"]
        if self.plateau and state.get("plateau"):
            self.plateau.load_state_dict(state["plateau"])
        self._apply()
