"""`trainforge run --dry-run` on every example manifest (GPU ones too: the model is built on the meta
device, the ask is only compared with this machine), and its errors for a bad task argument and a
batch that does not fit the model. No Ray: a dry run starts none."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from trainforge.cli import cli

ROOT = Path(__file__).resolve().parents[2]
ALL_EXAMPLES = sorted(p for p in (ROOT / "examples").rglob("*.yaml"))


@pytest.mark.parametrize("path", ALL_EXAMPLES, ids=lambda p: str(p.relative_to(ROOT / "examples")))
def test_every_example_passes_a_dry_run(path: Path) -> None:
    result = CliRunner().invoke(cli, ["run", "--dry-run", "-o", "json", str(path)])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)["plan"]
    assert int(plan["parameters"].split()[0].replace(",", "")) > 0
    assert plan["first batch"] and plan["steps per epoch"] and plan["global batch"]


def test_the_gpu_example_warns_that_this_machine_lacks_its_gpus() -> None:
    result = CliRunner().invoke(cli, ["run", "--dry-run", str(ROOT / "examples" / "gpt-fsdp.yaml")])
    assert result.exit_code == 0, result.output
    assert "125,262,336" in result.stdout and "128 (4 workers x 8 x 4 accumulation)" in result.stdout
    assert "asks for 4 GPUs in all" in result.stderr


def _with(tmp_path: Path, edit: dict[str, object]) -> Path:
    doc = yaml.safe_load((ROOT / "examples" / "gpt-fsdp.yaml").read_text())
    doc["spec"]["task"]["args"].update(edit)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_bad_task_argument_fails_naming_the_field(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["run", "--dry-run", str(_with(tmp_path, {"seqLen": 2048}))])
    assert result.exit_code == 1
    assert "spec.task.args" in result.stderr and "seqLen" in result.stderr, result.stderr
    result = CliRunner().invoke(cli, ["run", "--dry-run", str(_with(tmp_path, {"size": "huge"}))])
    assert result.exit_code == 1 and "spec.task.args" in result.stderr and "size" in result.stderr


def test_a_batch_that_does_not_fit_the_model_fails_before_training(tmp_path: Path) -> None:
    (tmp_path / "bad_task.py").write_text(
        "import torch\nfrom torch import nn\nfrom torch.utils.data import TensorDataset\n"
        "from trainforge_trainer.task import Task\n"
        "def build():\n"
        "    data = TensorDataset(torch.zeros(16, 5), torch.zeros(16, dtype=torch.long))\n"
        "    return Task(model=lambda: nn.Linear(4, 2), train=data,\n"
        "                loss=lambda out, batch: nn.functional.cross_entropy(out, batch[1]))\n")
    doc = {"apiVersion": "trainforge.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "bad"},
           "spec": {"runtime": {"workingDir": "."}, "task": {"entrypoint": "bad_task:build"}, "epochs": 1}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(cli, ["run", "--dry-run", str(path)])
    assert result.exit_code == 1
    assert "spec.task: the first training batch does not fit the model" in result.stderr, result.stderr


def test_the_readme_custom_task_snippet_is_the_example_package() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("# examples/custom-task/blobs/train.py (abridged)\n", 1)[1].split("```", 1)[0]
    source = (ROOT / "examples" / "custom-task" / "blobs" / "train.py").read_text()
    missing = [line for line in block.splitlines() if line.strip() and line not in source.splitlines()]
    assert not missing, f"README lines not in the example: {missing}"


def test_a_stream_plans_passes_and_needs_a_step_count(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [f"row {i}" for i in range(64)]}), tmp_path / "part.parquet")
    doc = {"apiVersion": "trainforge.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "stream"},
           "spec": {"task": {"entrypoint": "gpt", "args": {"size": "tiny", "data": "files", "files": str(tmp_path)}},
                    "batch": {"size": 4}, "epochs": 2, "stepsPerEpoch": 5}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(cli, ["run", "--dry-run", "-o", "json", str(path)])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)["plan"]
    assert plan["train samples"].startswith("a stream") and "shards itself" in plan["train samples"]
    assert (plan["steps per epoch"], plan["total steps"]) == ("5", "10")
    assert plan["first batch"] == "((4, 64) int64, (4, 64) int64)"
    del doc["spec"]["stepsPerEpoch"]
    path.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(cli, ["run", "--dry-run", str(path)])
    assert result.exit_code == 1 and "spec.maxSteps or spec.stepsPerEpoch" in result.stderr, result.output
