"""Sweeps on the session's Ray: every trial runs the trainer through a TorchTrainer (Tune over
Train V2). Small digits sweeps keep the 2-CPU CI machine within its budget."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from trainforge.cli import cli
from trainforge.spec import parse_job
from trainforge_trainer.local.runner import LocalRun

from tests.conftest import ROOT
from tests.integration.test_resume_ray import TRAINFORGE, kill_session
from tests.unit.manifests import manifest

pytestmark = pytest.mark.usefixtures("ray_session")


def sweep_doc(name: str, epochs: int, **tune: Any) -> dict[str, Any]:
    doc = manifest(task={"entrypoint": "digits", "args": {"hidden": 64}}, workers=1, cpusPerWorker=0.99,
                   epochs=epochs, batch={"size": 64},
                   tune={"metric": "val_accuracy", "mode": "max", "maxConcurrent": 2,
                         "space": {"optimizer.lr": {"loguniform": [1e-4, 1e-2]}}, **tune})
    doc["metadata"]["name"] = name
    return doc


class Timeline:
    """Trial states as the live table sees them; the most trials running at once."""

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.peak = 0

    def __call__(self, trial: str, result: dict[str, Any]) -> None:
        if result["state"] == "RUNNING":
            self.running.add(trial)
        else:
            self.running.discard(trial)
        self.peak = max(self.peak, len(self.running))


def test_asha_stops_a_trial_early_and_reports_the_best(tmp_path: Path) -> None:
    doc = sweep_doc("asha", 6, numSamples=4, search={"type": "random", "seed": 1},
                    scheduler={"type": "asha", "timeAttr": "epoch", "maxT": 6, "gracePeriod": 1,
                               "reductionFactor": 2})
    timeline = Timeline()
    outcome = LocalRun(parse_job(doc), storage=str(tmp_path)).sweep(timeline)
    assert 1 <= timeline.peak <= 2  # maxConcurrent, random search
    epochs = {t.trial: t.epochs for t in outcome.trials}
    assert len(epochs) == 4 and all(t.state == "TERMINATED" for t in outcome.trials)
    assert min(epochs.values()) < 6 and max(epochs.values()) == 6, epochs  # stopped before maxT
    best = outcome.best
    assert best is not None and best.value == max(t.metrics["val_accuracy"] for t in outcome.trials)
    assert set(best.config) == {"optimizer.lr"} and best.checkpoint.startswith(str(tmp_path / "asha" / "trials"))
    listed = CliRunner().invoke(cli, ["tune-results", "asha", "--storage", str(tmp_path), "--output", "json"])
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.output)["best"]["trial"] == best.trial


def test_optuna_search_keeps_to_max_concurrent(tmp_path: Path) -> None:
    doc = sweep_doc("optuna", 1, numSamples=4, search={"type": "optuna", "seed": 0})
    timeline = Timeline()
    outcome = LocalRun(parse_job(doc), storage=str(tmp_path)).sweep(timeline)
    assert len(outcome.trials) == 4 and outcome.best is not None
    assert len({t.config["optimizer.lr"] for t in outcome.trials}) == 4  # TPE proposed 4 distinct values
    assert timeline.peak <= 2


@pytest.mark.slow  # ~2 min on 2 cores: `make test-slow`
def test_a_killed_sweep_resumes_without_rerunning_finished_trials(tmp_path: Path) -> None:
    doc = sweep_doc("resume", 2, numSamples=3, maxConcurrent=1)
    job = tmp_path / "sweep.yaml"
    from trainforge.spec.yamlio import dumps

    job.write_text(dumps(doc))
    trials = tmp_path / "runs" / "resume" / "trials"
    # The driver joins the session's Ray: with a second Ray instance on the machine, Ray 2.60's
    # PlacementGroupCleaner cannot tell which one to query, dies, and finished trials' placement
    # groups are never released (trial 3 then waited forever for a CPU; see the issue note).
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    driver = subprocess.Popen([TRAINFORGE, "run", str(job), "--storage", str(tmp_path / "runs"), "-o", "json"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True, env=env)
    try:  # killed once two trials have finished and a third is mid-way, with a checkpoint
        deadline = time.monotonic() + 240
        while len(finals(trials)) < 2 or not interrupted(trials):
            assert driver.poll() is None, driver.communicate()[1][-3000:]
            if time.monotonic() > deadline:
                kill_session(driver.pid)
                out, err = driver.communicate()
                saved = sorted(str(m.relative_to(trials)) for m in trials.glob("*/checkpoint_*/manifest.json"))
                pytest.fail(f"two trials should have finished and a third saved by now; saved: {saved}\n"
                            f"{out[-2000:]}\n{err[-3000:]}")
            time.sleep(0.1)
    finally:
        kill_session(driver.pid)
        driver.communicate(timeout=30)
    assert driver.returncode == -signal.SIGKILL
    finished, cut_short = finals(trials), interrupted(trials)
    before = {t: sorted(p.name for p in (trials / t).iterdir()) for t in finished}

    timeline = Timeline()
    seen: set[str] = set()
    outcome = LocalRun(parse_job(doc), storage=str(tmp_path / "runs")).sweep(
        lambda trial, result: (seen.add(trial), timeline(trial, result)))
    assert outcome.resumed and len(outcome.trials) == 3
    assert all(t.state == "TERMINATED" for t in outcome.trials)
    assert seen and not seen & finished  # the live table follows the resumed sweep; finished trials stay quiet
    for trial, names in before.items():  # ... and were not trained again
        assert sorted(p.name for p in (trials / trial).iterdir()) == names
    for trial in cut_short:  # the interrupted trial went on from its checkpoint: no step trained twice
        steps = [json.loads(m.read_text())["step"] for m in (trials / trial).glob("checkpoint_*/manifest.json")]
        assert len(steps) == len(set(steps)), (trial, sorted(steps))


def interrupted(trials: Path) -> set[str]:
    """Trials that have saved a checkpoint but not finished."""
    return {trial for trial, m in manifests(trials) if m["epoch"] < 2} - finals(trials)


def finals(trials: Path) -> set[str]:
    return {trial for trial, m in manifests(trials) if m["reason"] in ("final", "epoch") and m["epoch"] == 2}


def manifests(trials: Path) -> list[tuple[str, dict[str, Any]]]:
    """(trial, manifest) of every checkpoint whose manifest has landed (one being written is skipped)."""
    found = []
    for path in trials.glob("*/checkpoint_*/manifest.json"):
        try:
            found.append((path.parent.parent.name, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    return found


@pytest.mark.slow  # ~4 min on 2 cores: `make test-slow`
def test_pbt_exploits_and_the_exploiting_trial_restores_the_donor_checkpoint(tmp_path: Path) -> None:
    doc = sweep_doc("pbt", 6, numSamples=4, maxConcurrent=4,
                    space={"optimizer.lr": {"loguniform": [1e-5, 1e-2]}},
                    scheduler={"type": "pbt", "timeAttr": "epoch", "perturbationInterval": 2,
                               "quantileFraction": 0.5})
    outcome = LocalRun(parse_job(doc), storage=str(tmp_path)).sweep()
    assert len(outcome.trials) == 4 and outcome.best is not None
    runs = {d.name: [json.loads(m.read_text()) for m in d.glob("checkpoint_*/manifest.json")]
            for d in (tmp_path / "pbt" / "trials").iterdir() if d.is_dir()}
    taken_over = {name: saved for name, saved in runs.items() if "-x" in name}
    assert taken_over, "PBT should have exploited at least once"
    # A run that took over starts from the donor's epoch-2 (or later) state, never from scratch (one
    # that took over a donor which had already finished is finished too and saves nothing) ...
    assert all(min(m["epoch"] for m in saved) > 2 for saved in taken_over.values() if saved), taken_over
    # ... and trains with a perturbed lr that no original trial had.
    lr_of = {name: {m["spec"]["optimizer"]["lr"] for m in saved} for name, saved in runs.items()}
    original = set().union(*(lrs for name, lrs in lr_of.items() if "-x" not in name))
    assert any(lr_of[name] - original for name in taken_over if taken_over[name]), lr_of
    # With the default retention (keep 3): nothing was pruned under a trial that might take it over;
    # once the sweep was over each run kept its 3 newest, plus the checkpoint its result names.
    named = {row.checkpoint.rsplit("/", 1)[1] for row in outcome.trials if row.checkpoint}
    for name in runs:
        kept = {m_path.parent.name for m_path in (tmp_path / "pbt" / "trials" / name).glob("checkpoint_*/manifest.json")
                if json.loads(m_path.read_text())["status"] == "complete"}
        assert len(kept - named) <= 3, (name, kept)
