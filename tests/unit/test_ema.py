"""spec.ema: the average differs from the trained weights, matches an EMA computed by hand on a tiny
model, is evaluated when asked, and survives a resume exactly."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn
from trainforge.spec import parse_job
from trainforge.spec.tracking import EmaConfig
from trainforge_trainer.checkpoint.store import DirStore
from trainforge_trainer.ema import EmaWeights
from trainforge_trainer.loop import JsonlLog, Loop, build

from tests.unit.manifests import manifest
from tests.unit.test_engine import CPU1, Collect


def test_the_average_is_the_hand_computed_ema() -> None:
    model = nn.Linear(3, 2)
    ema = EmaWeights(model, EmaConfig(decay=0.9, every_steps=2), sharded=False)
    expected: torch.Tensor | None = None
    for step in range(1, 9):
        with torch.no_grad():
            model.weight.add_(0.1 * step)
        ema.after_step(step)
        if step % 2 == 0:  # every 2 steps; the first update copies the weights
            w = model.weight.detach().clone()
            expected = w if expected is None else 0.9 * expected + 0.1 * w
    assert torch.allclose(ema.module.weight, expected, rtol=0, atol=1e-6)
    assert not torch.equal(ema.module.weight, model.weight)


def loop_of(run: Path, **fields: Any) -> tuple[Loop, Collect]:
    base = {"task": {"entrypoint": "digits", "args": {"hidden": 32}}, "workers": 1, "batch": {"size": 64},
            "deterministic": True, "epochs": 2, "ema": {"decay": 0.95, "evalWith": True},
            "checkpoint": {"everySteps": 7, "everyEpoch": False, "keep": 10}}
    reports = Collect()
    loop = Loop(build(parse_job(manifest(**(base | fields))).spec, CPU1), reports, JsonlLog(None))
    loop.ckpt = loop.checkpointer(DirStore(run))
    return loop, reports


def test_ema_in_a_run_is_evaluated_and_resumes_exactly(tmp_path: Path) -> None:
    whole, _ = loop_of(tmp_path / "whole")
    result = whole.fit()
    averaged = {k: v.clone() for k, v in whole.ema.module.state_dict().items()}  # type: ignore[union-attr]
    trained = whole.components.model.state_dict()
    assert any(not torch.equal(averaged[k], trained[k]) for k in trained)
    assert whole.eval_model is whole.ema.module and 0 < result["val_accuracy"] <= 1  # type: ignore[union-attr]
    cut = tmp_path / "cut"
    cut.mkdir()
    (saved,) = (tmp_path / "whole").glob("checkpoint_000000014_*")
    shutil.copytree(saved, cut / saved.name)
    resumed, _ = loop_of(cut)
    resumed.fit()
    assert all(torch.equal(averaged[k], v) for k, v in resumed.ema.module.state_dict().items())  # type: ignore[union-attr]


def test_an_ema_export_holds_the_average(tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from trainforge_trainer.worker import run_worker

    spec = parse_job(manifest(task={"entrypoint": "digits", "args": {"hidden": 32}}, workers=1, batch={"size": 64},
                              maxSteps=6, eval={"everyEpoch": False}, ema={"decay": 0.9},
                              export={"weights": "ema"})).spec
    run_worker(spec, str(tmp_path / "run"), reporter=Collect())
    exported = load_file(tmp_path / "run" / "export" / "model.safetensors")
    (final,) = (tmp_path / "run").glob("checkpoint_000000006_*")
    saved = torch.load(final / "trainer.pt", weights_only=True)["ema"]
    assert exported.keys() == {k.removeprefix("module.") for k in saved if k != "n_averaged"}
    assert all(torch.equal(exported[k], saved[f"module.{k}"]) for k in exported)
    model = torch.load(final / "model.pt", weights_only=True)["model"]
    assert any(not torch.equal(exported[k], model[k]) for k in exported)  # the average, not the weights
