"""scikit-learn's bundled 8x8 handwritten digits: real data, no download."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from ..task import Batch, Task


def _splits(seed: int) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.3, stratify=y, random_state=seed)
    x_val, x_test, y_val, y_test = train_test_split(
        x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=seed
    )

    def tensors(xs, ys) -> TensorDataset:
        return TensorDataset(torch.tensor(xs / 16.0, dtype=torch.float32), torch.tensor(ys, dtype=torch.long))

    return tensors(x_train, y_train), tensors(x_val, y_val), tensors(x_test, y_test)


class MLP(nn.Module):
    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(64, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout),
        )
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class SmallCNN(nn.Module):
    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.BatchNorm2d(2 * channels), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * channels * 16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.view(-1, 1, 8, 8)))


@dataclass(frozen=True)
class SmoothedLoss:
    """Cross-entropy against labels smoothed by `smoothing` (0: the plain one-hot targets)."""

    smoothing: float = 0.0

    def __call__(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(logits, batch[1], label_smoothing=self.smoothing)


def _metrics(logits: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
    labels = batch[1]
    return {
        "loss": F.cross_entropy(logits, labels, reduction="sum"),
        "accuracy": (logits.argmax(dim=-1) == labels).sum(),
    }


def _augment(batch: Batch, generator: torch.Generator) -> Batch:
    x, y = batch
    noise = torch.randn(x.shape, generator=generator, device="cpu").to(x.device, non_blocking=True)
    return (x + 0.02 * noise).clamp_(0.0, 1.0), y


def build(
    model: Literal["mlp", "cnn"] = "mlp",
    hidden: int = 256,
    channels: int = 16,
    dropout: float = 0.1,
    split_seed: int = 0,
    augment: bool = True,
    label_smoothing: float = 0.0,
) -> Task:
    """Digits classification. `split_seed` fixes the stratified 70/15/15 split independently of training.
    `label_smoothing` softens the training targets (Szegedy et al., 2016); validation reports the plain
    cross-entropy and accuracy."""
    number = isinstance(label_smoothing, int | float) and not isinstance(label_smoothing, bool)
    if not number or not 0 <= label_smoothing < 1:
        raise ValueError(f"spec.task.args.label_smoothing must be a number in [0, 1), got {label_smoothing!r}")
    train, val, test = _splits(split_seed)

    def make_model() -> nn.Module:
        return MLP(hidden, dropout) if model == "mlp" else SmallCNN(channels, dropout)

    return Task(
        model=make_model, train=train, val=val, test=test, loss=SmoothedLoss(float(label_smoothing)), metrics=_metrics,
        augment=_augment if augment else None, in_memory=True,
    )
