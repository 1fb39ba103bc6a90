"""The engine under plain torchrun with 2 gloo ranks: DDP/FSDP2 follow the single-process trajectory,
DDP all-reduces once per optimizer step, and the tiny GPT learns."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from trainforge.spec.yamlio import dumps

from tests.unit.manifests import manifest

TORCHRUN = str(Path(sys.executable).parent / "torchrun")


def torchrun(nproc: int, args: list[str], tmp_path: Path) -> list[dict[str, Any]]:
    cmd = [TORCHRUN, "--standalone", f"--nproc-per-node={nproc}", *args]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:  # a hang: show where every process of the run stands
        stacks = py_stacks(process.pid)
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"torchrun hung; stacks:\n{stacks}\nstderr:\n{stderr[-3000:]}")
    errors = [ln for ln in stderr.splitlines() if "Error" in ln or "[rank" in ln]
    assert process.returncode == 0, "\n".join(errors[-30:]) or stderr[-4000:]
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def py_stacks(session: int) -> str:
    """py-spy dumps (Ray's [default] extra brings py-spy) of every process in the session."""
    pids = subprocess.run(["pgrep", "-s", str(session)], capture_output=True, text=True).stdout.split()
    spy = Path(sys.executable).parent / "py-spy"
    dumps = [subprocess.run([str(spy), "dump", "--native", "--pid", pid], capture_output=True, text=True,
                            timeout=30).stdout for pid in pids if spy.exists()]
    return "\n".join(dumps) or f"(no py-spy; processes {pids})"


def job_file(tmp_path: Path, name: str, **spec: Any) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(dumps(manifest(**spec)))
    return path


def losses(records: list[dict[str, Any]]) -> list[float]:
    return [r["loss"] for r in records if "loss" in r and not r.get("done")]


DIGITS = {"entrypoint": "digits", "args": {"dropout": 0.0, "augment": False, "hidden": 64}}


def test_ddp_and_fsdp2_follow_the_single_process_trajectory(tmp_path: Path) -> None:
    common = {"task": DIGITS, "maxSteps": 30, "logEverySteps": 1, "eval": {"everyEpoch": False},
              "optimizer": {"lr": 0.01}, "seed": 3}
    single = job_file(tmp_path, "single", workers=1, batch={"size": 32}, **common)
    ddp = job_file(tmp_path, "ddp", workers=2, batch={"size": 16}, **common)
    fsdp = job_file(tmp_path, "fsdp", workers=2, batch={"size": 16}, strategy={"type": "fsdp"}, **common)
    # 2 ranks x 2 micro-batches of 8 cover the same 32 samples per step as the single process.
    fsdp_accum_ac = job_file(tmp_path, "fsdp-accum-ac", workers=2, batch={"size": 8, "gradAccumulation": 2},
                             strategy={"type": "fsdp", "fsdp": {"activationCheckpointing": True}}, **common)
    entry = ["-m", "trainforge_trainer.torchrun"]
    reference = losses(torchrun(1, [*entry, str(single)], tmp_path))
    assert len(reference) == 30
    assert reference[-1] < reference[0] * 0.5
    for path in (ddp, fsdp, fsdp_accum_ac):
        got = losses(torchrun(2, [*entry, str(path)], tmp_path))
        assert got == pytest.approx(reference, rel=1e-4, abs=1e-5), path.name


def test_ddp_all_reduces_once_per_optimizer_step(tmp_path: Path) -> None:
    path = job_file(tmp_path, "accum", task=DIGITS, workers=2, batch={"size": 8, "gradAccumulation": 4},
                    maxSteps=12, eval={"everyEpoch": False}, strategy={"type": "ddp", "ddp": {"bucketCapMb": 512}})
    (result,) = [r for r in torchrun(2, [str(Path(__file__).with_name("allreduce_probe.py")), str(path)], tmp_path)
                 if "allreduces" in r]
    assert result == {"allreduces": 12, "steps": 12}


def test_tiny_gpt_trains_under_torchrun_and_loss_falls(tmp_path: Path) -> None:
    path = job_file(tmp_path, "gpt", task={"entrypoint": "gpt", "args": {"size": "tiny", "train_samples": 512}},
                    workers=2, batch={"size": 8}, maxSteps=60, logEverySteps=10, precision="bf16",
                    optimizer={"lr": 0.01}, schedule={"warmupSteps": 5}, eval={"everyEpoch": False})
    records = torchrun(2, ["-m", "trainforge_trainer.torchrun", str(path)], tmp_path)
    got = losses(records)
    assert len(got) == 6
    assert got[-1] < got[0] - 0.5, got
    assert all(r["tokens_per_s"] > 0 for r in records if "tokens_per_s" in r)


def test_fp16_under_fsdp2_uses_the_sharded_scaler_and_learns(tmp_path: Path) -> None:
    path = job_file(tmp_path, "fp16", task=DIGITS, workers=2, batch={"size": 16}, maxSteps=30, logEverySteps=10,
                    strategy={"type": "fsdp"}, precision="fp16", optimizer={"lr": 0.01}, eval={"everyEpoch": False})
    records = torchrun(2, ["-m", "trainforge_trainer.torchrun", str(path)], tmp_path)
    got = losses(records)
    assert got[-1] < got[0] * 0.5
    assert records[-1]["result"]["test_accuracy"] > 0.8
