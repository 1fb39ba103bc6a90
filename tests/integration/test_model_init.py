"""spec.init and spec.export with the real loop: job B starts where job A ended, from A's checkpoint,
A's run (its best checkpoint) and A's safetensors export; weights that do not fit are refused by
name; a job with init that resumes takes its own checkpoint; FSDP2 on 2 gloo ranks exports one file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from trainforge.cli import cli
from trainforge.spec import parse_job
from trainforge_trainer.model_files import WeightsError
from trainforge_trainer.worker import run_worker

from tests.integration.test_torchrun import job_file, torchrun
from tests.unit.manifests import manifest


class Collect:
    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []

    def report(self, metrics: dict[str, Any]) -> None:
        self.reports.append(metrics)


def spec_of(**fields: Any) -> Any:
    base = {"task": {"entrypoint": "digits", "args": {"hidden": 64, "dropout": 0.0, "augment": False}},
            "workers": 1, "batch": {"size": 64}, "deterministic": True,
            "checkpoint": {"everyEpoch": True, "keepBest": {"metric": "val_accuracy"}}}
    return parse_job(manifest(**(base | fields))).spec


@pytest.fixture(scope="module")
def job_a(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    run = tmp_path_factory.mktemp("a") / "run"
    result = run_worker(spec_of(epochs=3, export={}), str(run), reporter=Collect())
    return run, result


def first_accuracy(init: dict[str, Any], run: Path) -> tuple[float, list[dict[str, Any]]]:
    reports = Collect()
    # lr ~0 and an evaluation after the first step: the first accuracy is the weights it started from.
    run_worker(spec_of(maxSteps=2, init=init, optimizer={"lr": 1e-12}, eval={"everySteps": 1, "everyEpoch": False}),
               str(run), reporter=reports)
    return next(r["val_accuracy"] for r in reports.reports if "val_accuracy" in r), reports.reports


def test_the_export_holds_the_final_weights_and_says_what_they_are(job_a: tuple[Path, dict[str, Any]]) -> None:
    run, result = job_a
    assert result["export"] == f"{run}/export/model.safetensors"
    weights = load_file(run / "export" / "model.safetensors")
    final = torch.load(next(run.glob("checkpoint_000000060_*")) / "model.pt", weights_only=True)["model"]
    assert weights.keys() == final.keys() and all(torch.equal(weights[k], final[k]) for k in final)
    meta = json.loads((run / "export" / "trainforge-model.json").read_text())
    assert meta["task"] == {"entrypoint": "trainforge_trainer.tasks.digits:build", "args": spec_of().task.args}
    assert meta["step"] == 60 and meta["metrics"]["val_accuracy"] == result["val_accuracy"]


@pytest.mark.parametrize("source", ["checkpoint", "run", "export"])
def test_job_b_starts_where_job_a_ended(job_a: tuple[Path, dict[str, Any]], source: str, tmp_path: Path) -> None:
    run, result = job_a
    where = {"checkpoint": str(next(run.glob("checkpoint_000000060_*"))), "run": str(run),
             "export": str(run / "export")}[source]
    accuracy, reports = first_accuracy({"from": where}, tmp_path / "b")
    assert abs(accuracy - result["val_accuracy"]) <= 0.01, (accuracy, result["val_accuracy"])
    assert next(r for r in reports if "init_from" in r)["init_tensors"] == 10  # 3 linear, 2 norm layers


def test_weights_that_do_not_fit_are_refused_naming_the_keys(job_a: tuple[Path, Any], tmp_path: Path) -> None:
    run, _ = job_a
    narrower = {"entrypoint": "digits", "args": {"hidden": 32}}
    wider = spec_of(task=narrower, maxSteps=2, init={"from": str(run / "export")})
    with pytest.raises(WeightsError, match=r"spec.init.from: .* do not fit the model: shape mismatch: .*\(64, 64\)"):
        run_worker(wider, str(tmp_path / "c"), reporter=Collect())
    renamed = spec_of(maxSteps=2, init={"from": str(run / "export"), "prefixMap": {"body.": "trunk."}})
    with pytest.raises(WeightsError, match=r"missing: body\..*unexpected: trunk\."):
        run_worker(renamed, str(tmp_path / "d"), reporter=Collect())


def test_a_job_with_init_resumes_from_its_own_checkpoints(job_a: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    run, _ = job_a
    own = tmp_path / "own"
    first = Collect()
    run_worker(spec_of(maxSteps=4, init={"from": str(run)}, checkpoint={"everySteps": 2}), str(own), reporter=first)
    assert any("init_from" in r for r in first.reports)
    again = Collect()
    run_worker(spec_of(maxSteps=8, init={"from": str(run)}, checkpoint={"everySteps": 2}), str(own), reporter=again)
    assert next(r for r in again.reports if "resumed_step" in r)["resumed_step"] == 4
    assert not any("init_from" in r for r in again.reports)  # not from init again


def test_fsdp2_on_two_ranks_exports_one_file_like_ddps(tmp_path: Path) -> None:
    task = {"entrypoint": "gpt", "args": {"size": "tiny", "train_samples": 64}}
    job = job_file(tmp_path, "fsdp", task=task, workers=2, batch={"size": 4}, maxSteps=3, strategy={"type": "fsdp"},
                   export={}, eval={"everyEpoch": False})
    torchrun(2, ["-m", "trainforge_trainer.torchrun", str(job), "--run-dir", str(tmp_path / "fsdp")], tmp_path)
    reference = spec_of(task=task, batch={"size": 4}, maxSteps=3, export={}, eval={"everyEpoch": False})
    run_worker(reference, str(tmp_path / "ddp"), reporter=Collect())  # one process: the unsharded layout
    sharded, replicated = (load_file(tmp_path / s / "export" / "model.safetensors") for s in ("fsdp", "ddp"))
    assert sharded.keys() == replicated.keys() and "head.weight" in sharded and "tok.weight" in sharded
    assert all(sharded[k].shape == replicated[k].shape for k in sharded)
    # `trainforge export` of the FSDP2 run's DCP checkpoint, in this one process: the same weights.
    done = CliRunner().invoke(cli, ["export", str(tmp_path / "fsdp"), "-o", str(tmp_path / "offline"),
                                    "--checkpoint", "latest"])
    assert done.exit_code == 0, done.output
    offline = load_file(tmp_path / "offline" / "model.safetensors")
    assert offline.keys() == sharded.keys() and all(torch.equal(offline[k], sharded[k]) for k in sharded)
    meta = json.loads((tmp_path / "offline" / "trainforge-model.json").read_text())
    assert meta["step"] == 3 and meta["source"].startswith(str(tmp_path / "fsdp" / "checkpoint_000000003_"))


def _final_and_best(run: Path, metric: str) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]], float]:
    manifests = {p.parent: json.loads(p.read_text()) for p in run.glob("checkpoint_*/manifest.json")}
    final = next(d for d, m in manifests.items() if m["reason"] == "final")
    best = max(m["metrics"].get(metric, -1) for d, m in manifests.items() if d != final)
    bests = [torch.load(d / "model.pt", weights_only=True)["model"] for d, m in manifests.items()
             if d != final and m["metrics"].get(metric) == best]
    return torch.load(final / "model.pt", weights_only=True)["model"], bests, best


@pytest.mark.parametrize("restore", [True, False])
def test_restore_best_makes_the_final_weights_the_best_checkpoints(tmp_path: Path, restore: bool) -> None:
    # A learning rate far too high: accuracy peaks early and falls, and early stopping ends the run.
    spec = spec_of(epochs=20, optimizer={"lr": 0.5}, eval={"everySteps": 2, "everyEpoch": False},
                   checkpoint={"everySteps": 2, "everyEpoch": False, "keep": 50},
                   earlyStopping={"metric": "val_accuracy", "mode": "max", "patience": 3, "restoreBest": restore})
    reports = Collect()
    result = run_worker(spec, str(tmp_path / "run"), reporter=reports)
    assert result["stop_reason"] == "early_stopping"
    final, bests, best = _final_and_best(tmp_path / "run", "val_accuracy")
    same = any(all(torch.equal(final[k], b[k]) for k in final) for b in bests)
    assert same is restore, (best, result)
    assert any("restored_best" in r for r in reports.reports) is restore
