"""Optimizer construction (after the model is wrapped, so it sees sharded parameters)."""

from __future__ import annotations

from torch import nn
from torch.optim import SGD, Adam, AdamW, Optimizer
from trainforge.spec import TrainingJobSpec

from .freezing import optimizer_groups

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._NormBase, nn.Embedding)


def param_groups(model: nn.Module, weight_decay: float, exclude_bias_and_norm: bool) -> list[dict]:
    """Two groups: decayed weights, and biases/norm/embedding weights without decay."""
    # Frozen parameters are in too: unfrozen later, their optimizer state is then the same on resume.
    if not exclude_bias_and_norm:
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    no_decay: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if name.endswith("bias") or isinstance(module, _NORMS) or p.ndim < 2:
                no_decay.add(id(p))
    params = list(model.parameters())  # de-duplicates tied weights
    return [
        {"params": [p for p in params if id(p) not in no_decay], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, spec: TrainingJobSpec, lr: float, on_cuda: bool) -> Optimizer:
    cfg = spec.optimizer
    groups = optimizer_groups(model, spec, param_groups(model, cfg.weight_decay, cfg.no_decay_on_bias_and_norm))
    # fused kernels exist for CUDA only; they also let a non-finite step be skipped on the device.
    fused = {"fused": True} if on_cuda else {}
    if cfg.name == "sgd":
        return SGD(groups, lr=lr, momentum=cfg.momentum or 0.0, nesterov=bool(cfg.nesterov), **fused)
    betas = tuple(cfg.betas) if cfg.betas else (0.9, 0.999)
    cls = AdamW if cfg.name == "adamw" else Adam
    return cls(groups, lr=lr, betas=betas, eps=cfg.eps or 1e-8, **fused)
