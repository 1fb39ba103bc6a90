"""spec.lora with the real loop and peft: a job fine-tunes job A's export with adapters on the digits
MLP's linear layers (body.0, body.4, head). Only the adapters change, checkpoints hold them alone, the
merged export is base + (alpha / r) * B @ A, a resume from a mid-run checkpoint (base read from
spec.init again) ends bit-identical, export.weights best exports the best checkpoint's, and FSDP2 on
2 gloo ranks saves adapter shards alone and exports the merge."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from trainforge.cli import cli
from trainforge.spec import SpecValidationError
from trainforge_trainer.dry_run import dry_run
from trainforge_trainer.launch import PreflightError
from trainforge_trainer.lora import LoraError, is_adapter
from trainforge_trainer.model_files import _read_dcp_model
from trainforge_trainer.worker import run_worker

from tests.integration.test_model_init import Collect, spec_of
from tests.integration.test_torchrun import job_file, torchrun

LORA = {"r": 4, "alpha": 8, "targetModules": ["0", "4", "head"]}
TARGETS = ("body.0", "body.4", "head")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("lora-base") / "run"
    run_worker(spec_of(epochs=1, export={}), str(run), reporter=Collect())
    return run / "export"


def lora_job(base: Path, **fields: Any) -> Any:
    defaults = {"epochs": 2, "init": {"from": str(base)}, "lora": LORA, "export": {}, "optimizer": {"lr": 0.01}}
    return spec_of(**(defaults | fields))


@pytest.fixture(scope="module")
def tuned(base: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    run = tmp_path_factory.mktemp("lora-tuned") / "run"
    return run, run_worker(lora_job(base), str(run), reporter=Collect())


def test_the_merged_export_is_the_base_plus_the_scaled_adapter_product(base: Path, tuned: tuple[Path, Any]) -> None:
    run, result = tuned
    assert result["done"]
    pretrained, export = load_file(base / "model.safetensors"), load_file(run / "export" / "model.safetensors")
    adapters = load_file(run / "export" / "adapter_model.safetensors")
    assert export.keys() == pretrained.keys()  # the plain model's names: a valid spec.init.from again
    scale = LORA["alpha"] / LORA["r"]
    for name in TARGETS:
        a, b = (adapters[f"base_model.model.{name}.lora_{x}.weight"] for x in "AB")
        assert b.abs().sum() > 0  # peft starts B at zero: it trained
        expected = pretrained[f"{name}.weight"] + scale * b @ a
        torch.testing.assert_close(export[f"{name}.weight"], expected, rtol=1e-6, atol=1e-6)
        assert not torch.equal(export[f"{name}.weight"], pretrained[f"{name}.weight"])
    untouched = [k for k in pretrained if not k.startswith(tuple(f"{t}.weight" for t in TARGETS))]
    assert len(untouched) == 7 and all(torch.equal(export[k], pretrained[k]) for k in untouched)  # biases, norms
    config = json.loads((run / "export" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["peft_type"] == "LORA"
    assert json.loads((run / "export" / "trainforge-model.json").read_text())["lora"]["r"] == 4


def test_trainforge_export_of_a_lora_checkpoint_merges_it_into_its_base(tuned: tuple[Path, Any],
                                                                       tmp_path: Path) -> None:
    run, _ = tuned
    done = CliRunner().invoke(cli, ["export", str(run), "-o", str(tmp_path / "offline"), "--checkpoint", "latest"])
    assert done.exit_code == 0, done.output
    offline, in_run = (load_file(d / "model.safetensors") for d in (tmp_path / "offline", run / "export"))
    assert offline.keys() == in_run.keys() and all(torch.equal(offline[k], in_run[k]) for k in in_run)
    assert (tmp_path / "offline" / "adapter_model.safetensors").exists()


def test_only_the_adapters_train_and_checkpoints_hold_them_alone(tuned: tuple[Path, Any]) -> None:
    run, _ = tuned
    for saved in run.glob("checkpoint_*"):
        state = torch.load(saved / "model.pt", weights_only=True)
        assert sorted(state["model"]) == sorted(f"{t}.lora_{x}.default.weight" for t in TARGETS for x in "AB")
        assert set(state["optimizer"]["state"]) == set(state["model"])  # no optimizer state for the base


def test_a_resumed_lora_job_reads_its_base_again_and_ends_identical(base: Path, tuned: tuple[Path, Any],
                                                                    tmp_path: Path) -> None:
    run, _ = tuned
    epochs = {p: json.loads((p / "manifest.json").read_text())["epoch"] for p in run.glob("checkpoint_*")}
    (first_epoch,) = [p for p, epoch in epochs.items() if epoch == 1]
    cut = tmp_path / "cut"
    cut.mkdir()
    shutil.copytree(first_epoch, cut / first_epoch.name)
    reports = Collect()
    run_worker(lora_job(base), str(cut), reporter=reports)
    assert next(r for r in reports.reports if "resumed_step" in r)["resumed_step"] > 0
    assert any("init_from" in r for r in reports.reports)  # the base, from spec.init
    whole, resumed = (load_file(d / "export" / "model.safetensors") for d in (run, cut))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_export_best_holds_the_best_checkpoints_weights(base: Path, tmp_path: Path) -> None:
    # A learning rate far too high: the adapters' best checkpoint is an early one, not the last.
    spec = lora_job(base, optimizer={"lr": 2.0}, eval={"everySteps": 3, "everyEpoch": False},
                    checkpoint={"everySteps": 3, "everyEpoch": False, "keep": 50,
                                "keepBest": {"metric": "val_accuracy"}})
    spec = spec.model_copy(update={"export": spec.export.model_copy(update={"weights": "best"})})
    reports = Collect()
    run_worker(spec, str(tmp_path / "run"), reporter=reports)
    restored = next(r["restored_best"] for r in reports.reports if "restored_best" in r)
    best = json.loads((Path(restored) / "manifest.json").read_text())
    final = max(run for run in (tmp_path / "run").glob("checkpoint_*"))
    assert Path(restored) != final and best["reason"] != "final"
    meta = json.loads((tmp_path / "run" / "export" / "trainforge-model.json").read_text())
    assert meta["weights"] == "best"
    adapters = load_file(tmp_path / "run" / "export" / "adapter_model.safetensors")
    saved = torch.load(Path(restored) / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(adapters[f"base_model.model.{k.replace('.default', '')}"], v) for k, v in saved.items())


def test_lora_mistakes_are_refused_by_field(base: Path, tmp_path: Path) -> None:
    with pytest.raises(LoraError, match=r"spec.lora.targetModules: .*the model's layers are named like body"):
        run_worker(spec_of(maxSteps=1, lora={"targetModules": ["qkv"]}), str(tmp_path / "a"), reporter=Collect())
    with pytest.raises(SpecValidationError, match=r"unfreeze.*does not combine with spec.lora"):
        spec_of(maxSteps=1, lora=LORA, unfreeze=[{"atEpoch": 1, "match": "head"}],
                optimizer={"paramGroups": [{"match": "head", "freeze": True}]})
    with pytest.raises(SpecValidationError, match=r"export.weights.*best needs a metric"):
        spec_of(maxSteps=1, checkpoint={}, export={"weights": "best"})


def test_dry_run_counts_the_adapters_and_refuses_a_missing_target() -> None:
    plan = dict(dry_run(spec_of(maxSteps=1, lora=LORA)).rows)
    # body.0 64->64, body.4 64->64, head 64->10 at r 4: A is r x in, B is out x r
    assert plan["parameters"].endswith(f"({4 * (64 + 64) * 2 + 4 * (64 + 10):,} trainable)")
    with pytest.raises(PreflightError, match=r"spec.lora.targetModules: .*\{'qkv'\} not found"):
        dry_run(spec_of(maxSteps=1, lora={"targetModules": ["qkv"]}))


def test_lora_under_fsdp2_on_two_ranks_saves_adapter_shards_and_exports_the_merge(tmp_path: Path) -> None:
    task = {"entrypoint": "gpt", "args": {"size": "tiny", "train_samples": 64}}
    fields = {"task": task, "batch": {"size": 4}, "maxSteps": 4, "export": {}, "eval": {"everyEpoch": False},
              "lora": {"r": 4, "targetModules": ["qkv", "proj"]}, "checkpoint": {"everySteps": 2}}
    job = job_file(tmp_path, "fsdp", workers=2, strategy={"type": "fsdp"}, **fields)
    torchrun(2, ["-m", "trainforge_trainer.torchrun", str(job), "--run-dir", str(tmp_path / "fsdp")], tmp_path)
    run_worker(spec_of(**fields), str(tmp_path / "one"), reporter=Collect())  # one process: the same base
    sharded, single = (load_file(tmp_path / s / "export" / "model.safetensors") for s in ("fsdp", "one"))
    assert sharded.keys() == single.keys()
    targets = {k for k in sharded if k.endswith((".qkv.weight", ".proj.weight"))}
    assert len(targets) == 4 and all(not torch.equal(sharded[k], single[k]) for k in targets)  # both trained
    assert all(torch.equal(sharded[k], single[k]) for k in sharded.keys() - targets)  # the base, untouched
    for saved in (tmp_path / "fsdp").glob("checkpoint_*"):
        assert all(is_adapter(k) for k in _read_dcp_model(saved / "dcp"))
