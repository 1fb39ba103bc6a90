"""The job commands (submit, status, list, logs, events, delete, suspend, resume, and checkpoints /
tune-results with --backend) against the Kubernetes API emulator: no operator runs, so each test writes
the status the operator would."""

from __future__ import annotations

import json
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes.config
import pytest
import yaml
from click.testing import CliRunner, Result
from trainforge.checkpoints import list_checkpoints, prune
from trainforge.cli import cli, job_cmds
from trainforge.spec.yamlio import dumps

from tests.support.kube import Kube, serve
from tests.support.kube_emulator import StatefulEmulator
from tests.unit.manifests import manifest
from tests.unit.test_checkpoint_format import LOCAL, make_checkpoint

API = "trainforge.dev/v1alpha1"
T0 = "2024-05-01T12:00:00Z"
RANKED_LOG = (
    "driver: starting 2 workers\n"
    "(RayTrainWorker pid=11, ip=10.0.0.1) trainforge worker rank=0 world_size=2 host=h pid=11\n"
    "(RayTrainWorker pid=12, ip=10.0.0.2) trainforge worker rank=1 world_size=2 host=h pid=12\n"
    "(RayTrainWorker pid=11, ip=10.0.0.1) hello from 0\n"
    "(RayTrainWorker pid=12, ip=10.0.0.2) hello from 1\n"
)


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(job_cmds, "POLL_S", 0.02)
    monkeypatch.delenv("TRAINFORGE_BACKEND", raising=False)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def columns(line: str) -> list[str]:
    """A table row's cells: they are three or more spaces apart."""
    return re.split(r"\s{3,}", line.strip())


def job_doc(name: str = "digits", labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    doc = manifest(**spec)
    doc["metadata"] = {"name": name, "labels": labels or {}}
    return doc


def job_file(tmp_path: Path, name: str = "digits", **spec: Any) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(dumps(job_doc(name, **spec)))
    return path


def set_status(kube: Kube, name: str, **status: Any) -> None:
    kube.patch_status(API, "trainingjobs", "default", name, status)


def stored(kube: Kube, name: str = "digits") -> dict[str, Any]:
    return kube.get(API, "trainingjobs", "default", name)


def driver_pod(kube: Kube, job: str, attempt: int, log: str) -> None:
    """KubeRay's submitter pod for one attempt, whose log is the driver's."""
    pod = f"{job}-a{attempt}-submitter"
    kube.create({"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": pod, "labels": {"batch.kubernetes.io/job-name": f"{job}-a{attempt}"}},
                 "spec": {"containers": [{"name": "submitter", "image": "x"}]}})
    kube.set_pod_log("default", pod, log, finished=True)


@pytest.fixture
def after_submit(kube: Kube) -> Iterator[Callable[[Callable[[], None]], None]]:
    """Run the operator's part in a thread once `submit` has created the job: the CLI is then polling it."""
    threads: list[threading.Thread] = []

    def start(act: Callable[[], None]) -> None:
        def run() -> None:
            kube.wait_for(lambda: kube.exists(API, "trainingjobs", "default", "digits"), message="the job")
            act()

        threads.append(thread := threading.Thread(target=run, daemon=True))
        thread.start()

    yield start
    for thread in threads:
        thread.join(timeout=10)


# ---- submit --------------------------------------------------------------------------------------


def test_submit_prints_the_name_or_the_stored_job(kube: Kube, tmp_path: Path) -> None:
    result = invoke("submit", str(job_file(tmp_path)))
    assert result.exit_code == 0, result.output
    assert result.stdout == "trainingjob/digits created\n"
    assert stored(kube)["spec"]["workers"] == 2

    result = invoke("submit", str(job_file(tmp_path, "other", workers=3)), "-o", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["metadata"]["name"], doc["spec"]["workers"]) == ("other", 3)

    again = invoke("submit", str(job_file(tmp_path)))
    assert again.exit_code == 1
    assert again.stderr.startswith("error: TrainingJob digits already exists in namespace default")


def test_submit_of_an_invalid_file_names_the_field(kube: Kube, tmp_path: Path) -> None:
    result = invoke("submit", str(job_file(tmp_path, workers=0)))
    assert result.exit_code == 1
    assert "spec.workers" in result.stderr and result.stderr.startswith("error: ")
    assert isinstance(result.exception, SystemExit)  # no traceback
    assert not kube.exists(API, "trainingjobs", "default", "digits")


@pytest.mark.parametrize(("phase", "code"), [("Succeeded", 0), ("Failed", 1)])
def test_submit_wait_exits_by_the_final_phase(kube: Kube, tmp_path: Path, after_submit: Any, phase: str,
                                              code: int) -> None:
    def operator() -> None:
        set_status(kube, "digits", phase="Running", attempt=1,
                   progress={"epoch": 1, "step": 5, "totalSteps": 10, "metrics": {"loss": 0.5}})
        set_status(kube, "digits", phase=phase, reason="Done" if code == 0 else "RestartsExhausted",
                   message="it ended")

    after_submit(operator)
    result = invoke("submit", str(job_file(tmp_path)), "--wait")
    assert result.exit_code == code, result.output
    assert result.stdout == "trainingjob/digits created\n"
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"digits: {phase}, attempt 1")
    assert ("RestartsExhausted: it ended" in last) == (phase == "Failed")


def test_submit_wait_gives_up_at_the_timeout(kube: Kube, tmp_path: Path) -> None:
    result = invoke("submit", str(job_file(tmp_path)), "--timeout", "0.1")
    assert result.exit_code == 1
    assert "error: job digits is still pending after 0.1 s" in result.stderr


def test_submit_follow_streams_the_driver_log(kube: Kube, tmp_path: Path, after_submit: Any) -> None:
    def operator() -> None:
        driver_pod(kube, "digits", 1, "epoch 1 loss 0.5\nepoch 2 loss 0.3\n")
        set_status(kube, "digits", phase="Succeeded", attempt=1)

    after_submit(operator)
    result = invoke("submit", str(job_file(tmp_path)), "--follow", "-o", "json")
    assert result.exit_code == 0, result.output
    log, _, doc = result.stdout.partition("epoch 2 loss 0.3\n")
    assert log == "epoch 1 loss 0.5\n"
    assert json.loads(doc)["status"]["phase"] == "Succeeded"


# ---- status, list, events ------------------------------------------------------------------------


def test_status_shows_phase_progress_and_checkpoints(kube: Kube) -> None:
    kube.create(job_doc())
    set_status(kube, "digits", phase="Running", attempt=2, restarts=1, preemptions=0,
               conditions=[{"type": "Running", "status": "True", "reason": "AttemptRunning",
                            "message": "attempt 2 runs", "lastTransitionTime": T0}],
               progress={"epoch": 2, "step": 40, "totalSteps": 100, "metrics": {"val_loss": 0.25}},
               latestCheckpoint="s3://b/runs/digits/checkpoint_000040",
               bestCheckpoint={"uri": "s3://b/runs/digits/checkpoint_000030", "step": 30, "metric": "val_loss",
                               "value": 0.2})
    result = invoke("status", "digits")
    assert result.exit_code == 0, result.output
    text = result.stdout
    for expected in ("Running", "2 (restarts 1, preemptions 0)", "epoch 2, step 40/100 (40%)", "val_loss 0.25",
                     "s3://b/runs/digits/checkpoint_000040", "checkpoint_000030 (val_loss 0.2, step 30)",
                     "AttemptRunning", "attempt 2 runs"):
        assert expected in text, f"{expected!r} not in:\n{text}"

    doc = yaml.safe_load(invoke("status", "digits", "-o", "yaml").stdout)
    assert doc["status"]["progress"]["step"] == 40 and doc["metadata"]["name"] == "digits"


def test_status_shows_a_sweep_summary(kube: Kube) -> None:
    kube.create(job_doc(tune={"metric": "val_loss", "mode": "min", "space": {"optimizer.lr": {"choice": [0.1, 0.01]}}}))
    set_status(kube, "digits", phase="Running", attempt=1,
               tune={"trials": {"TERMINATED": 1, "RUNNING": 1},
                     "best": {"trial": "t0", "metric": "val_loss", "value": 0.3, "config": {"optimizer.lr": 0.1}}})
    text = invoke("status", "digits").stdout
    assert "1 running, 1 terminated; best t0: val_loss 0.3 (optimizer.lr=0.1)" in text

    result = invoke("tune-results", "digits", "--backend", "kubernetes")  # no results file yet: the summary
    assert result.exit_code == 0, result.output
    assert "trials: 1 running, 1 terminated" in result.stdout and "best trial t0: val_loss 0.3" in result.stdout


def test_list_filters_by_phase_and_label(kube: Kube) -> None:
    for name, team, phase in (("a", "nlp", "Running"), ("b", "vision", "Running"), ("c", "nlp", "Failed")):
        kube.create(job_doc(name, {"team": team}))
        set_status(kube, name, phase=phase, attempt=1, progress={"step": 7, "totalSteps": 9},
                   latestCheckpoint=f"/runs/{name}/checkpoint_000007")
    kube.create(job_doc("d"))  # no status: the operator has not seen it

    def names(*args: str) -> list[str]:
        result = invoke("list", *args, "-o", "json")
        assert result.exit_code == 0, result.output
        return [j["metadata"]["name"] for j in json.loads(result.stdout)]

    assert names() == ["a", "b", "c", "d"]
    assert names("--phase", "Running") == ["a", "b"]
    assert names("--phase", "Running", "--phase", "Failed", "-l", "team=nlp") == ["a", "c"]
    assert names("-l", "team!=nlp") == ["b", "d"]

    table = invoke("list", "--phase", "Failed").stdout
    assert [columns(line)[:5] for line in table.splitlines()] == [
        ["NAME", "PHASE", "ATTEMPT", "STEP", "CHECKPOINT"], ["c", "Failed", "1", "7/9", "checkpoint_000007"]]
    empty = invoke("list", "--phase", "Suspended")
    assert empty.exit_code == 0 and "no TrainingJobs in namespace default matching the filters" in empty.stderr


def test_events_of_the_job_and_its_attempts(kube: Kube) -> None:
    kube.create(job_doc())
    set_status(kube, "digits", phase="Restarting", attempt=1)
    for i, (kind, obj, kind_type, reason) in enumerate((
            ("TrainingJob", "digits", "Normal", "Created"), ("RayJob", "digits-a1", "Warning", "Failed"),
            ("TrainingJob", "other", "Normal", "Unrelated"))):
        kube.create({"apiVersion": "v1", "kind": "Event", "metadata": {"name": f"e{i}"},
                     "involvedObject": {"kind": kind, "name": obj, "namespace": "default"},
                     "type": kind_type, "reason": reason, "message": f"{reason} message",
                     "lastTimestamp": f"2024-05-01T12:00:0{i}Z", "count": 1 + i})
    result = invoke("events", "digits")
    assert result.exit_code == 0, result.output
    rows = [columns(line) for line in result.stdout.splitlines()]
    assert rows == [["TIME", "TYPE", "REASON", "OBJECT", "MESSAGE"],
                    ["2024-05-01T12:00:00Z", "Normal", "Created", "TrainingJob/digits", "Created message"],
                    ["2024-05-01T12:00:01Z", "Warning", "Failed (x2)", "RayJob/digits-a1", "Failed message"]]
    as_json = json.loads(invoke("events", "digits", "-o", "json").stdout)
    assert [e["object"] for e in as_json] == ["TrainingJob/digits", "RayJob/digits-a1"]


# ---- logs ------------------------------------------------------------------------------------------


def test_logs_print_the_driver_log_or_one_rank(kube: Kube) -> None:
    kube.create(job_doc())
    set_status(kube, "digits", phase="Succeeded", attempt=1)
    driver_pod(kube, "digits", 1, RANKED_LOG)

    result = invoke("logs", "digits")
    assert result.exit_code == 0, result.output
    assert result.stdout == RANKED_LOG
    ranked = invoke("logs", "digits", "--rank", "1")
    assert ranked.stdout == "trainforge worker rank=1 world_size=2 host=h pid=12\nhello from 1\n"
    followed = invoke("logs", "digits", "-f", "--rank", "0")
    assert followed.exit_code == 0 and followed.stdout.endswith("hello from 0\n")

    missing = invoke("logs", "digits", "--attempt", "2")
    assert missing.exit_code == 1 and "has attempts 1..1" in missing.stderr


# ---- changing jobs -----------------------------------------------------------------------------------


def test_suspend_resume_and_delete(kube: Kube) -> None:
    kube.create(job_doc())
    assert invoke("suspend", "digits").stdout.startswith("trainingjob/digits suspend requested")
    assert stored(kube)["spec"]["suspend"] is True
    assert invoke("resume", "digits").stdout == "trainingjob/digits resumed\n"
    assert stored(kube)["spec"]["suspend"] is False

    result = invoke("delete", "digits")
    assert result.exit_code == 0 and result.stdout == "trainingjob/digits deleted\n"
    assert not kube.exists(API, "trainingjobs", "default", "digits")


# ---- checkpoints through the job -----------------------------------------------------------------------


def test_checkpoints_through_the_job_find_its_storage(kube: Kube, tmp_path: Path) -> None:
    storage = tmp_path / "store"
    for step in (5, 10, 15):
        make_checkpoint(storage / "digits", f"checkpoint_{step}", step)
    prune(LOCAL, list_checkpoints(LOCAL, str(storage / "digits"))[0])
    kube.create(job_doc(checkpoint={"storage": str(storage)}))
    result = invoke("checkpoints", "digits", "--backend", "kubernetes", "-o", "json")
    assert result.exit_code == 0, result.output
    assert [(r["step"], r["valid"]) for r in json.loads(result.stdout)] == [(10, True), (15, True)]
    listed = invoke("checkpoints", "digits", "--backend", "kubernetes", "--all", "-o", "json")
    assert [r["status"] for r in json.loads(listed.stdout)] == ["pruned", "complete", "complete"]

    mixed = invoke("checkpoints", "digits", "--backend", "kubernetes", "--storage", str(storage))
    assert mixed.exit_code == 2 and "drop --storage" in mixed.output


# ---- what goes wrong ----------------------------------------------------------------------------------


def test_a_missing_job_is_one_line(kube: Kube) -> None:
    for command in ("status", "events", "logs", "delete", "suspend"):
        result = invoke(command, "nope")
        assert result.exit_code == 1, (command, result.output)
        assert result.stderr.startswith("error: no TrainingJob nope in namespace default"), result.stderr
        assert len(result.stderr.splitlines()) == 1


def use_kubeconfig(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    monkeypatch.setenv("KUBECONFIG", str(path))
    for target in (kubernetes.config, kubernetes.config.kube_config):  # it is read once, at import
        monkeypatch.setattr(target, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))


def test_a_cluster_without_the_crd_points_at_the_chart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    emulator = StatefulEmulator()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        emulator.resources.load_bundled()
    with serve(emulator, tmp_path) as server:
        use_kubeconfig(monkeypatch, server.kubeconfig)
        for args in (("list",), ("status", "digits")):
            result = invoke(*args)
            assert result.exit_code == 1, result.output
            assert "no TrainingJob resource" in result.stderr and "Helm chart" in result.stderr


def test_an_unreachable_cluster_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "gone",
        "clusters": [{"name": "gone", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "u"}}]}))
    use_kubeconfig(monkeypatch, config)
    result = invoke("list")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot reach the Kubernetes API at http://127.0.0.1:9")


def test_the_local_backend_is_chosen_by_option_or_environment(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    result = invoke("status", "nope", "--backend", "local", "--root", str(tmp_path))
    assert result.exit_code == 1 and f"no local TrainingJob nope under {tmp_path}" in result.stderr
    monkeypatch.setenv("TRAINFORGE_BACKEND", "local")
    monkeypatch.setenv("TRAINFORGE_LOCAL_ROOT", str(tmp_path))
    listed = invoke("list")
    assert listed.exit_code == 0 and "no TrainingJobs in the local backend" in listed.stderr
