"""The seeds' recipes, declared: label smoothing for the digits task, sequence-length warm-up for gpt
(task.args.seqLenSchedule, exact across a resume), and `trainforge run --overfit-batch`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from click.testing import CliRunner
from torch.nn import functional as F
from trainforge.cli import cli
from trainforge_trainer.tasks import digits, gpt

from tests.unit.manifests import manifest
from tests.unit.test_param_groups import loop_of, weights


def test_label_smoothing_is_the_cross_entropy_against_smoothed_targets() -> None:
    task = digits.build(hidden=16, label_smoothing=0.2)
    logits, labels = torch.randn(6, 10, generator=torch.Generator().manual_seed(0)), torch.arange(6)
    target = torch.full((6, 10), 0.2 / 10) + 0.8 * F.one_hot(labels, 10)
    expected = -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    torch.testing.assert_close(task.loss(logits, (None, labels)), expected)
    assert task.metrics is not None  # validation keeps the plain cross-entropy
    torch.testing.assert_close(task.metrics(logits, (None, labels))["loss"] / 6, F.cross_entropy(logits, labels))
    with pytest.raises(ValueError, match=r"spec.task.args.label_smoothing must be a number in \[0, 1\), got 1.5"):
        digits.build(label_smoothing=1.5)


def _confidence(smoothing: float) -> float:
    loop, _ = loop_of(epochs=5, optimizer={"lr": 0.01},
                      task={"entrypoint": "digits", "args": {"hidden": 32, "label_smoothing": smoothing}})
    loop.fit()
    loop.components.model.eval()
    x = torch.stack([loop.components.task.val[i][0] for i in range(len(loop.components.task.val))])
    with torch.no_grad():
        return float(F.softmax(loop.components.model(x), dim=1).max(dim=1).values.mean())


def test_a_run_with_label_smoothing_trains_less_confident_predictions() -> None:
    plain, smoothed = _confidence(0.0), _confidence(0.3)
    assert smoothed < plain - 0.05, (smoothed, plain)


def test_the_sequence_length_schedule_is_checked_by_field() -> None:
    bad = [([{"untilStep": 2}], r"seqLenSchedule\[0\]: give \{untilStep: N, seqLen: L\}"),
           ([{"untilStep": 2, "seqLen": 128}], r"seqLenSchedule\[0\].seqLen: 128 is longer than .* 64"),
           ([{"untilStep": 4, "seqLen": 32}, {"untilStep": 2, "seqLen": 48}], r"\[1\]: stages must have growing"),
           ([{"untilStep": 0, "seqLen": 8}], r"\[0\]: untilStep and seqLen must be positive")]
    for schedule, message in bad:
        with pytest.raises(ValueError, match=message):
            gpt.build(size="tiny", seqLenSchedule=schedule)


WARM_UP = [{"untilStep": 2, "seqLen": 16}, {"untilStep": 4, "seqLen": 32}]
GPT = {"entrypoint": "gpt", "args": {"size": "tiny", "train_samples": 64, "seqLenSchedule": WARM_UP}}


def _seen_lengths(loop: Any) -> list[int]:
    seen: list[int] = []
    loop.components.model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    loop.fit()
    return seen


def test_sequence_length_warm_up_trains_short_sequences_first_and_resumes_exactly(tmp_path: Path) -> None:
    fields = {"task": GPT, "maxSteps": 6, "batch": {"size": 16}, "checkpoint": {"everySteps": 3, "async": False}}
    whole, _ = loop_of(tmp_path / "whole", **fields)
    assert _seen_lengths(whole) == [16, 16, 32, 32, 64, 64]  # one micro-batch a step
    (saved,) = (tmp_path / "whole").glob("checkpoint_000000003_*")  # mid-stage: step 3 is still 32 long
    cut = tmp_path / "cut"
    cut.mkdir()
    shutil.copytree(saved, cut / saved.name)
    resumed, _ = loop_of(cut, **fields)
    assert _seen_lengths(resumed) == [32, 64, 64]
    assert all(torch.equal(weights(whole)[k], v) for k, v in weights(resumed).items())


def _job(tmp_path: Path, **fields: Any) -> Path:
    path = tmp_path / "job.yaml"
    base = {"task": {"entrypoint": "digits", "args": {"hidden": 64, "augment": False, "dropout": 0.0}},
            "batch": {"size": 32}, "epochs": 1}
    path.write_text(yaml.safe_dump(manifest(**(base | fields))))
    return path


def test_overfit_batch_passes_a_model_that_can_memorise_one_batch(tmp_path: Path) -> None:
    done = CliRunner().invoke(cli, ["run", str(_job(tmp_path)), "--overfit-batch", "-o", "json"])
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    assert result["passed"] and result["steps"] == 200 and result["last_loss"] < 0.05 < result["first_loss"]
    assert not (tmp_path / "trainforge-runs").exists()  # nothing saved


def test_overfit_batch_fails_a_setup_that_cannot_and_says_what_to_check(tmp_path: Path) -> None:
    job = _job(tmp_path, optimizer={"lr": 1e-9})
    done = CliRunner().invoke(cli, ["run", str(job), "--overfit-batch", "--overfit-steps", "30"])
    assert done.exit_code == 1
    assert "failed: one batch's loss went from" in done.output and "in 30 steps" in done.output
    assert "check that the labels belong to their inputs" in done.output


def test_the_readmes_overfit_command_passes_on_the_digits_example() -> None:
    root = Path(__file__).resolve().parents[2]
    assert ".venv/bin/trainforge run examples/digits-ddp.yaml --overfit-batch" in (root / "README.md").read_text()
    done = CliRunner().invoke(cli, ["run", str(root / "examples" / "digits-ddp.yaml"), "--overfit-batch"])
    assert done.exit_code == 0 and "ok: one batch's loss fell from" in done.output, done.output
