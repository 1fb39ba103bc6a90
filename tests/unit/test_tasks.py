"""Built-in tasks: real digits splits, both digits models, GPT sizes and data."""

from __future__ import annotations

import pytest
import torch
from trainforge_trainer.tasks import digits, gpt


def test_digits_split_is_stratified_and_disjoint() -> None:
    task = digits.build()
    sizes = [len(task.train), len(task.val), len(task.test)]
    assert sum(sizes) == 1797 and sizes[0] > 1200
    labels = task.train.tensors[1]
    assert set(labels.tolist()) == set(range(10))
    xs = [set(map(tuple, ds.tensors[0].tolist())) for ds in (task.train, task.val, task.test)]
    assert not (xs[1] & xs[2])


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_digits_models_forward(model: str) -> None:
    task = digits.build(model=model)
    x, y = task.train.tensors[0][:4], task.train.tensors[1][:4]
    out = task.model()(x)
    assert out.shape == (4, 10)
    assert set(task.metrics(out, (x, y))) == {"loss", "accuracy"}


@pytest.mark.parametrize(("size", "billions"), [("125m", 0.124), ("350m", 0.354), ("1.3b", 1.31)])
def test_gpt_sizes_have_their_nominal_parameter_counts(size: str, billions: float) -> None:
    assert gpt.SIZES[size].n_params / 1e9 == pytest.approx(billions, rel=0.03)


def test_gpt_tiny_counts_its_parameters_and_flops() -> None:
    task = gpt.build(size="tiny")
    model = task.model()
    cfg = task.extra["config"]
    assert sum(p.numel() for p in model.parameters()) == cfg.n_params
    assert task.flops_per_sample == pytest.approx(cfg.flops_per_token() * cfg.seq_len)
    x, y = task.train[0]
    assert torch.equal(x[1:], y[:-1])  # next-token targets
    assert torch.equal(task.train[5][0], gpt.build(size="tiny").train[5][0])  # deterministic per index


def test_gpt_bundled_text_is_real_prose() -> None:
    task = gpt.build(size="tiny", data="text")
    assert len(task.train) > 100
    sample = bytes(task.train[0][0].tolist()).decode("utf-8", errors="replace")
    assert sum(c.isalpha() for c in sample) > len(sample) / 2
