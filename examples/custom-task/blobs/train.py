"""Your own task: `spec.task.entrypoint: blobs.train:build` names this function, and `spec.task.args`
are its keyword arguments. It returns a trainforge Task: a model factory, datasets and a loss."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset
from trainforge_trainer.task import Task


def make_datasets(samples: int = 2048, features: int = 32, classes: int = 4, seed: int = 0) -> tuple[
        TensorDataset, TensorDataset]:
    """Gaussian blobs, one per class, the same on every worker (a fixed seed): 80 % train, 20 % val."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, features, generator=g) * 2.0
    labels = torch.randint(0, classes, (samples,), generator=g)
    points = centers[labels] + torch.randn(samples, features, generator=g)
    cut = samples * 4 // 5
    return TensorDataset(points[:cut], labels[:cut]), TensorDataset(points[cut:], labels[cut:])


def build(hidden: int = 128, samples: int = 2048) -> Task:
    if hidden < 1:
        raise ValueError(f"hidden must be at least 1, got {hidden}")
    train, val = make_datasets(samples)  # any map-style (or iterable) torch Datasets
    return Task(
        model=lambda: nn.Sequential(nn.Linear(32, hidden), nn.ReLU(), nn.Linear(hidden, 4)),
        train=train, val=val,
        loss=lambda out, batch: F.cross_entropy(out, batch[1]),                       # mean over the batch
        metrics=lambda out, batch: {"accuracy": (out.argmax(-1) == batch[1]).sum()},  # sums over the batch
        in_memory=True,
    )
