"""spec.optimizer.paramGroups and spec.unfreeze with the real loop (digits MLP: body.0, body.1, body.4,
body.5, head): frozen weights stay bit-identical, each group gets its learning rate, a pattern that
matches nothing is refused, and gradual unfreezing changes the trainable set at its epoch and
resumes exactly across it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from trainforge.spec import parse_job
from trainforge_trainer.checkpoint.store import DirStore
from trainforge_trainer.freezing import GroupError
from trainforge_trainer.loop import JsonlLog, Loop, build

from tests.unit.manifests import manifest
from tests.unit.test_engine import CPU1, Collect


def loop_of(run: Path | None = None, **fields: Any) -> tuple[Loop, Collect]:
    base = {"task": {"entrypoint": "digits", "args": {"hidden": 32}}, "workers": 1, "batch": {"size": 64},
            "deterministic": True, "eval": {"everyEpoch": False}}
    reports = Collect()
    loop = Loop(build(parse_job(manifest(**(base | fields))).spec, CPU1), reports, JsonlLog(None))
    if run is not None:
        loop.ckpt = loop.checkpointer(DirStore(run))
    return loop, reports


def weights(loop: Loop) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in loop.components.model.state_dict().items()}


def test_a_frozen_group_is_bit_identical_and_the_rest_trains() -> None:
    loop, _ = loop_of(maxSteps=5, optimizer={"paramGroups": [{"match": r"^body\.[01]\.", "freeze": True}]})
    before = weights(loop)
    loop.fit()
    after = weights(loop)
    frozen = [k for k in before if k.startswith(("body.0.", "body.1."))]
    assert len(frozen) == 4 and all(torch.equal(before[k], after[k]) for k in frozen)
    assert all(not torch.equal(before[k], after[k]) for k in before if k not in frozen)
    assert all(not loop.components.model.get_parameter(k).requires_grad for k in frozen)


def test_discriminative_learning_rates_follow_the_schedule() -> None:
    groups = [{"match": r"^body\.0\.", "lr": 1e-5}, {"match": r"^body\.4\.", "lrScale": 0.1}]
    loop, _ = loop_of(maxSteps=10, optimizer={"lr": 1e-3, "paramGroups": groups},
                      schedule={"name": "warmup_cosine", "warmupSteps": 3})
    schedule, optimizer = loop.components.schedule, loop.components.optimizer
    names = {id(p): n for n, p in loop.components.model.named_parameters()}
    for _ in range(4):  # sampled steps: warm-up, then decay
        for group in optimizer.param_groups:
            first = names[id(group["params"][0])]
            scale = 1e-2 if first.startswith("body.0.") else 0.1 if first.startswith("body.4.") else 1.0
            assert group["lr"] == pytest.approx(schedule.lr * scale, rel=1e-12)
        schedule.step()
    assert schedule.lr > 0


def test_a_pattern_that_matches_nothing_is_refused_by_name() -> None:
    with pytest.raises(GroupError, match=r"spec.optimizer.paramGroups\[0\].match: 'layer9' matches no parameter"):
        loop_of(maxSteps=1, optimizer={"paramGroups": [{"match": "layer9", "freeze": True}]})
    with pytest.raises(GroupError, match=r"spec.unfreeze\[0\].match: 'head' matches no frozen parameter"):
        loop_of(maxSteps=1, optimizer={"paramGroups": [{"match": "^body", "freeze": True}]},
                unfreeze=[{"atEpoch": 1, "match": "head"}])


UNFREEZING = {"optimizer": {"paramGroups": [{"match": r"^body\.", "freeze": True}]},
              "unfreeze": [{"atEpoch": 1, "match": r"^body\.[45]\."}], "epochs": 2,
              "checkpoint": {"everySteps": 7, "everyEpoch": False, "keep": 10}}


def test_gradual_unfreezing_trains_the_released_group_from_its_epoch_and_resumes_exactly(tmp_path: Path) -> None:
    whole, reports = loop_of(tmp_path / "whole", **UNFREEZING)
    start = weights(whole)
    whole.fit()  # 20 steps an epoch: epoch 0 trains the head only; epoch 1 body.4 and body.5 too
    end = weights(whole)
    (saved,) = (tmp_path / "whole").glob("checkpoint_000000014_*")  # in epoch 0, before the release
    in_epoch_0 = torch.load(saved / "model.pt", weights_only=True)["model"]
    assert torch.equal(start["body.4.weight"], in_epoch_0["body.4.weight"])
    assert not torch.equal(in_epoch_0["body.4.weight"], end["body.4.weight"])
    assert torch.equal(start["body.0.weight"], end["body.0.weight"])
    counts = [r["trainable_params"] for r in reports.reports if "trainable_params" in r]
    assert counts == [330, 330 + 32 * 32 + 32 + 64]  # head; then body.4 (32x32 + bias) and body.5 (norm)

    cut = tmp_path / "cut"
    cut.mkdir()
    shutil.copytree(saved, cut / saved.name)
    resumed, _ = loop_of(cut, **UNFREEZING)
    resumed.fit()
    assert all(torch.equal(end[k], v) for k, v in weights(resumed).items())
