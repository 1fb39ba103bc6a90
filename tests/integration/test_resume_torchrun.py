"""Resume under plain torchrun (2 gloo ranks, no Ray): bit-exact continuation, fallback past a
truncated checkpoint, FSDP2 resharding to another world size, and SIGTERM preemption."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import torch

from tests.integration.test_torchrun import TORCHRUN, job_file, losses, torchrun

ENTRY = ["-m", "trainforge_trainer.torchrun"]


def checkpoint_dir(run: Path, step: int) -> Path:
    (found,) = run.glob(f"checkpoint_{step:09d}_*")
    return found


def final_model(run: Path, step: int) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint_dir(run, step) / "model.pt", weights_only=True)["model"]


def test_resume_is_bit_exact_and_skips_a_truncated_checkpoint(tmp_path: Path) -> None:
    # Dropout and augmentation on: the RNG streams must be restored too, not only the weights.
    job = job_file(tmp_path, "exact", task={"entrypoint": "digits", "args": {"hidden": 64}}, workers=2,
                   batch={"size": 32}, epochs=2, deterministic=True, logEverySteps=5,
                   checkpoint={"everySteps": 7, "everyEpoch": False, "keep": 10})
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    done = torchrun(2, [*ENTRY, str(job), "--run-dir", str(whole)], tmp_path)
    assert done[-1]["result"]["step"] == 40  # 1257 samples / (2 x 32) = 20 steps per epoch
    cut.mkdir()
    for step in (7, 14):  # what an interrupted run left: its newest checkpoint then got truncated
        shutil.copytree(checkpoint_dir(whole, step), cut / checkpoint_dir(whole, step).name)
    truncated = checkpoint_dir(cut, 14)
    model = truncated / "model.pt"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])

    resumed = torchrun(2, [*ENTRY, str(job), "--run-dir", str(cut)], tmp_path)
    (event,) = [r for r in resumed if "resumed_from" in r]
    assert event["resumed_step"] == 7 and "checkpoint_000000014" in event["skipped_checkpoints"][0]
    assert "model.pt has" in event["skipped_checkpoints"][0]
    # Marked corrupt with its data kept; once the resumed run saved newer checkpoints, retention
    # removed it like any surplus one (a late shard could have made it valid in between).
    assert json.loads((truncated / "manifest.json").read_text())["status"] in ("corrupt", "pruned")
    assert resumed[-1]["result"]["step"] == 40
    a, b = final_model(whole, 40), final_model(cut, 40)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fsdp2_checkpoint_from_two_workers_resumes_on_one(tmp_path: Path) -> None:
    job = job_file(tmp_path, "fsdp", task={"entrypoint": "digits", "args": {"hidden": 64, "dropout": 0.0}},
                   workers=2, batch={"size": 16}, maxSteps=40, logEverySteps=1, strategy={"type": "fsdp"},
                   optimizer={"lr": 0.01}, eval={"everyEpoch": False},
                   checkpoint={"everySteps": 10, "everyEpoch": False, "keep": 10})
    two, one = tmp_path / "two", tmp_path / "one"
    reference = losses(torchrun(2, [*ENTRY, str(job), "--run-dir", str(two)], tmp_path))
    saved = checkpoint_dir(two, 20)
    assert sorted(p.name for p in (saved / "dcp").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    one.mkdir()
    shutil.copytree(saved, one / saved.name)

    records = torchrun(1, [*ENTRY, str(job), "--run-dir", str(one)], tmp_path)
    assert next(r for r in records if "resumed_from" in r)["resumed_step"] == 20
    continued = [r for r in records if "loss" in r and not r.get("done")]
    assert continued[0]["step"] == 21 and records[-1]["result"]["step"] == 40
    after = sum(r["loss"] for r in continued[:5]) / 5
    before = sum(reference[20:25]) / 5
    assert after < reference[0] * 0.5, "the loss restarted instead of continuing"
    assert abs(after - before) < 0.35 * before, (after, before)


def test_sigterm_checkpoints_the_current_step_and_a_rerun_loses_nothing(tmp_path: Path) -> None:
    job = job_file(tmp_path, "term", task={"entrypoint": "tests.support.tasks:paced_digits",
                                           "args": {"pause_s": 0.03, "hidden": 64}},
                   workers=2, batch={"size": 32}, epochs=3, logEverySteps=2,
                   checkpoint={"everySteps": 5, "everyEpoch": False, "keep": 10})
    run = tmp_path / "run"
    cmd = [TORCHRUN, "--standalone", "--nproc-per-node=2", *ENTRY, str(job), "--run-dir", str(run)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(run.glob("checkpoint_*/manifest.json")) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    records = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    stop = next(r for r in records if r.get("stop_reason") == "preempted")
    last_trained = max(r["step"] for r in records if "loss" in r)
    assert stop["step"] >= last_trained and stop["step"] < 60, err[-2000:]
    newest = json.loads(sorted(run.glob("checkpoint_*/manifest.json"))[-1].read_text())
    assert (newest["reason"], newest["step"]) == ("preempted", stop["step"])

    resumed = torchrun(2, [*ENTRY, str(job), "--run-dir", str(run)], tmp_path)
    assert next(r for r in resumed if "resumed_from" in r)["resumed_step"] == stop["step"]  # 0 steps lost
    assert resumed[-1]["result"]["step"] == 60
