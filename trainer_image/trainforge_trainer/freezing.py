"""spec.optimizer.paramGroups and spec.unfreeze: which parameters train, when, and at what rate.

A parameter frozen for the whole run is `requires_grad=False` before the model is wrapped, so DDP and
FSDP2 leave it out and nothing computes its gradient. One that spec.unfreeze releases later keeps
`requires_grad` (DDP fixes its set of trained parameters when it wraps the model): while frozen its
gradient is dropped before each optimizer step, so the optimizer skips it (no update, no state) and
gradient clipping does not count it. Either way it is in the optimizer from the start, and which
parameters train is a function of the epoch alone, so a resume is exact."""

from __future__ import annotations

import math
import re
from typing import Any

from torch import nn
from trainforge.spec import TrainingJobSpec

from .names import clean_name


class GroupError(ValueError):
    """A paramGroups or unfreeze pattern that matches no parameter."""


def names_of(model: nn.Module) -> dict[int, str]:
    """Each parameter by id, with its clean name (the first one, for tied parameters)."""
    found: dict[int, str] = {}
    for name, p in model.named_parameters():
        found.setdefault(id(p), clean_name(name))
    return found


def group_of(name: str, spec: TrainingJobSpec) -> int | None:
    """The index of the first paramGroups entry that matches `name`."""
    return next((i for i, g in enumerate(spec.optimizer.param_groups) if re.search(g.match, name)), None)


def frozen_until(name: str, spec: TrainingJobSpec) -> float:
    """The epoch from which the parameter trains: 0, an unfreeze rule's epoch, or never (inf)."""
    index = group_of(name, spec)
    if index is None or not spec.optimizer.param_groups[index].freeze:
        return 0
    return min((rule.at_epoch for rule in spec.unfreeze if re.search(rule.match, name)), default=math.inf)


def check_patterns(names: list[str], spec: TrainingJobSpec) -> None:
    """Every pattern must find a parameter: a typo would otherwise train what was meant to be frozen."""
    example = ", ".join(names[:4])
    for i, group in enumerate(spec.optimizer.param_groups):
        if not any(re.search(group.match, n) for n in names):
            raise GroupError(f"spec.optimizer.paramGroups[{i}].match: {group.match!r} matches no parameter "
                             f"(the model's are named like {example})")
    for i, rule in enumerate(spec.unfreeze):
        frozen = [n for n in names if frozen_until(n, spec) > 0]
        if not any(re.search(rule.match, n) for n in frozen):
            raise GroupError(f"spec.unfreeze[{i}].match: {rule.match!r} matches no frozen parameter "
                             "(freeze them with spec.optimizer.paramGroups[].freeze)")


def freeze_for_good(model: nn.Module, spec: TrainingJobSpec) -> None:
    """Before wrapping: parameters never unfrozen stop requiring gradients."""
    names = names_of(model)
    check_patterns(sorted(set(names.values())), spec)
    for p in model.parameters():
        if frozen_until(names[id(p)], spec) == math.inf:
            p.requires_grad_(False)


def optimizer_groups(model: nn.Module, spec: TrainingJobSpec, base: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The default groups (decay / no decay) split further by paramGroups: each gets its lr_scale
    (read by the schedule) and weight decay. Frozen parameters are included."""
    names, cfg = names_of(model), spec.optimizer
    out: list[dict[str, Any]] = []
    for default in base:
        by_rule: dict[int | None, list[nn.Parameter]] = {}
        for p in default["params"]:
            by_rule.setdefault(group_of(names[id(p)], spec), []).append(p)
        for index, params in by_rule.items():
            group = {**default, "params": params, "lr_scale": 1.0}
            if index is not None:
                rule = cfg.param_groups[index]
                group["lr_scale"] = rule.lr / cfg.lr if rule.lr is not None else (rule.lr_scale or 1.0)
                if rule.weight_decay is not None and default["weight_decay"] > 0:
                    group["weight_decay"] = rule.weight_decay
            out.append(group)
    return [g for g in out if g["params"]]


class Unfreezer:
    """Drops the gradients of parameters still frozen at the current epoch (see the module docstring)."""

    def __init__(self, model: nn.Module, spec: TrainingJobSpec) -> None:
        names = names_of(model)
        trained = [(frozen_until(names[id(p)], spec), p) for p in model.parameters() if p.requires_grad]
        self.pending = [(start, p) for start, p in trained if start > 0]
        self.always = sum(p.numel() for start, p in trained if start == 0)
        self.epoch = -1
        self.shown: int | None = None

    def at_epoch(self, epoch: int) -> int | None:
        """Enter `epoch` (which parameters train depends on it alone, so a resume sees the same); the
        number of trainable parameters when it changed, else None."""
        self.epoch = epoch
        trainable = self.always + sum(p.numel() for start, p in self.pending if start <= epoch)
        changed, self.shown = trainable != self.shown, trainable
        return trainable if changed else None

    def drop_frozen_grads(self) -> None:
        for epoch, p in self.pending:
            if epoch > self.epoch:
                p.grad = None
