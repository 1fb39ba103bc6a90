"""A stream (IterableDataset) under torchrun with 2 gloo ranks and a loader worker each: ranks whose
shards differ in length stop their pass together, and a run killed (SIGKILL) mid-epoch after a
checkpoint resumes to the same final weights as the uninterrupted run."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import torch

from tests.integration.test_resume_torchrun import ENTRY, final_model
from tests.integration.test_torchrun import TORCHRUN, job_file, torchrun

# 201 samples striped over 2 ranks: 101 and 100, i.e. 11 and 10 micro-batches of 10. In groups of 3 the
# ranks agree on 3, 3, 3 and then 1: 4 steps a pass, the last one over a single micro-batch.
STREAM = {"entrypoint": "tests.support.tasks:streamed_digits", "args": {"limit": 201, "pause_s": 0.12, "hidden": 64}}


def kill_tree(pid: int) -> None:
    """SIGKILL to every process of the run at once: torchrun, its ranks and their loader workers (the
    ranks run in sessions of their own, so neither torchrun's group nor its session reaches them)."""
    table = [line.split() for line in subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True,
                                                       text=True, check=True).stdout.splitlines()]
    tree, grown = {pid}, True
    while grown:
        found = {int(child) for child, parent in table if int(parent) in tree}
        grown, tree = not found <= tree, tree | found
    for member in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)


def test_a_stream_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path: Path) -> None:
    job = job_file(tmp_path, "stream", task=STREAM, workers=2, epochs=2, maxSteps=100, deterministic=True,
                   batch={"size": 10, "gradAccumulation": 3, "loaderWorkers": 1}, logEverySteps=1,
                   eval={"everyEpoch": False}, checkpoint={"everySteps": 2, "everyEpoch": False, "keep": 10})
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    done = torchrun(2, [*ENTRY, str(job), "--run-dir", str(whole)], tmp_path)
    assert (done[-1]["result"]["epoch"], done[-1]["result"]["step"]) == (2, 8)

    cmd = [TORCHRUN, "--standalone", "--nproc-per-node=2", *ENTRY, str(job), "--run-dir", str(cut)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(cut.glob("checkpoint_000000002_*/manifest.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    kill_tree(proc.pid)
    proc.wait(timeout=30)
    assert not list(cut.glob("checkpoint_000000008_*")), "the run finished before it was killed"

    resumed = torchrun(2, [*ENTRY, str(job), "--run-dir", str(cut)], tmp_path)
    event = next(r for r in resumed if "resumed_from" in r)
    assert event["resumed_step"] in (2, 4, 6)
    assert (resumed[-1]["result"]["epoch"], resumed[-1]["result"]["step"]) == (2, 8)
    a, b = final_model(whole, 8), final_model(cut, 8)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_stream_without_state_warns_on_resume_and_completes(tmp_path: Path) -> None:
    task = {**STREAM, "args": {**STREAM["args"], "stateful": False, "pause_s": 0.0}}
    job = job_file(tmp_path, "plain", task=task, workers=2, epochs=2, maxSteps=100, batch={"size": 10,
                   "gradAccumulation": 3}, eval={"everyEpoch": False},
                   checkpoint={"everySteps": 2, "everyEpoch": False, "keep": 10})
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    torchrun(2, [*ENTRY, str(job), "--run-dir", str(whole)], tmp_path)
    cut.mkdir()
    (saved,) = whole.glob("checkpoint_000000002_*")
    shutil.copytree(saved, cut / saved.name)  # what a run killed at step 3 left
    cmd = [TORCHRUN, "--standalone", "--nproc-per-node=2", *ENTRY, str(job), "--run-dir", str(cut)]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "has no state_dict()/load_state_dict()" in done.stderr
    assert "epoch 0's pass restarts from its beginning, 6 micro-batches per rank are trained on again" in done.stderr
    final = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")][-1]["result"]
    assert (final["epoch"], final["step"], final["done"]) == (2, 10, True)  # the restarted pass: 2 steps more
