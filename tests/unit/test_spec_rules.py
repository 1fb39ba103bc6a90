"""Defaults, cross-field rules and YAML typing of the spec models, checked directly."""

from __future__ import annotations

import pytest
from trainforge.spec import SpecValidationError, TrainingJob, TrainingJobSpec, parse_job
from trainforge.spec.yamlio import dumps, loads_all

from tests.unit.manifests import manifest


def spec_of(**fields: object) -> TrainingJobSpec:
    return parse_job(manifest(**fields)).spec


def issues_of(**fields: object) -> dict[str, str]:
    with pytest.raises(SpecValidationError) as info:
        parse_job(manifest(**fields))
    return {i.path: i.message for i in info.value.issues}


def test_defaults_follow_the_seeds() -> None:
    spec = spec_of()
    assert spec.optimizer.name == "adamw"
    assert spec.optimizer.lr == 1e-3
    assert spec.optimizer.weight_decay == 0.01
    assert spec.schedule.name == "warmup_cosine"
    assert spec.grad_clip.resolved_mode == "norm"
    assert spec.grad_clip.resolved_max_norm == 1.0
    assert spec.checkpoint.keep == 3
    assert spec.checkpoint.async_ is True
    assert spec.restart_policy.count_preemptions is False
    assert spec.strategy.type == "ddp"
    assert spec_of(earlyStopping={"metric": "val_accuracy", "mode": "max"}).early_stopping.patience == 10


def test_python_names_and_yaml_names_both_work() -> None:
    by_alias = spec_of(batch={"gradAccumulation": 4})
    by_name = spec_of(batch={"grad_accumulation": 4})
    assert by_alias.batch.grad_accumulation == by_name.batch.grad_accumulation == 4
    dumped = by_name.model_dump(by_alias=True, exclude_unset=True)
    assert dumped["batch"] == {"gradAccumulation": 4}


def test_yaml_reads_exponent_floats_like_kubernetes() -> None:
    doc = loads_all("lr: 1e-3\nother: 2E+2\nname: 1e3x\nversion: 1.10\n")[0]
    assert doc == {"lr": 1e-3, "other": 200.0, "name": "1e3x", "version": 1.1}
    assert loads_all(dumps({"s": "1e-3"}))[0] == {"s": "1e-3"}


def test_strict_types_match_the_api_server() -> None:
    assert "spec.optimizer.lr" in issues_of(optimizer={"lr": "0.001"})
    assert "spec.compile" in issues_of(compile="true")
    assert spec_of(cpusPerWorker=2).cpus_per_worker == 2.0  # an integer is a valid number


def test_schedule_fields_belong_to_their_schedule() -> None:
    msgs = issues_of(schedule={"name": "step", "stepSize": 10, "milestones": [5]})
    assert "multistep" in msgs["spec.schedule.milestones"]
    ok = spec_of(schedule={"name": "cosine_restarts", "t0": 10, "tMult": 2})
    assert ok.schedule.t0 == 10
    assert "spec.schedule.gamma" in issues_of(schedule={"name": "exponential"})
    assert "spec.schedule.t0" in issues_of(schedule={"name": "cosine_restarts"})


def test_onecycle_needs_a_known_total_step_count() -> None:
    doc = manifest(schedule={"name": "onecycle"})
    del doc["spec"]["epochs"]
    with pytest.raises(SpecValidationError) as info:
        parse_job(doc)
    (issue,) = info.value.issues
    assert issue.path == "spec.epochs"
    assert "onecycle needs a known total step count" in issue.message
    assert "spec.maxSteps" in issue.message


def test_milestones_past_max_steps_are_reported_by_index() -> None:
    msgs = issues_of(maxSteps=100, schedule={"name": "multistep", "milestones": [50, 150]})
    assert "never reached" in msgs["spec.schedule.milestones[1]"]


def test_plateau_needs_evaluation() -> None:
    msgs = issues_of(schedule={"name": "plateau"}, eval={"everyEpoch": False})
    assert "evaluation" in msgs["spec.schedule.name"]
    assert spec_of(schedule={"name": "plateau", "metric": "val_loss", "patience": 2}).schedule.patience == 2


def test_grad_clip_modes() -> None:
    assert spec_of(gradClip={"value": 0.5}).grad_clip.resolved_mode == "value"
    assert spec_of(gradClip={"mode": "none"}).grad_clip.resolved_mode == "none"
    assert "spec.gradClip.value" in issues_of(gradClip={"mode": "value"})


def test_checkpoint_storage_forms() -> None:
    s3 = spec_of(checkpoint={"storage": "s3://my-bucket/runs", "endpoint": "http://127.0.0.1:9000",
                             "credentialsSecret": "s3-creds"}).checkpoint
    assert s3.is_remote and s3.scheme == "s3"
    assert not spec_of(checkpoint={"storage": "/mnt/ckpt"}).checkpoint.is_remote
    assert "bucket" in issues_of(checkpoint={"storage": "s3://A_B/x"})["spec.checkpoint.storage"]
    msgs = issues_of(checkpoint={"storage": "gs://bucket/x", "endpoint": "http://x:1"})
    assert "s3://" in msgs["spec.checkpoint.endpoint"]


def test_tune_space_accepts_nested_and_free_form_paths() -> None:
    tune = {
        "metric": "val_accuracy", "mode": "max", "numSamples": 4,
        "space": {
            "optimizer.lr": {"loguniform": [1e-4, 1e-2]},
            "task.args.hidden": {"choice": [64, 128]},
            "strategy.type": {"grid": ["ddp", "fsdp"]},
            "batch.gradAccumulation": {"randint": [1, 4]},
        },
    }
    spec = spec_of(tune=tune)
    assert spec.tune is not None
    assert spec.tune.space["optimizer.lr"].kind == "loguniform"
    assert spec.tune.space["batch.gradAccumulation"].probe_values() == [1, 3]


def test_tune_rejects_values_the_target_field_cannot_take() -> None:
    bad_type = {"metric": "m", "mode": "min", "space": {"batch.size": {"loguniform": [1, 100]}}}
    msg = issues_of(tune=bad_type)["spec.tune.space['batch.size'].loguniform[0]"]
    assert "integer" in msg
    no_children = {"metric": "m", "mode": "min", "space": {"seed.x": {"choice": [1]}}}
    assert "no sub-fields" in issues_of(tune=no_children)["spec.tune.space['seed.x']"]
    own = {"metric": "m", "mode": "min", "space": {"tune.numSamples": {"choice": [1]}}}
    assert "own tune" in issues_of(tune=own)["spec.tune.space['tune.numSamples']"]


def test_tune_search_and_scheduler_compatibility() -> None:
    base = {"metric": "m", "mode": "min", "space": {"optimizer.lr": {"uniform": [0.001, 0.01]}}}
    assert "spec.tune.space['optimizer.lr'].uniform" in issues_of(tune=base | {"search": {"type": "grid"}})
    pbt = base | {"scheduler": {"type": "pbt", "perturbationInterval": 2}, "search": {"type": "optuna"}}
    assert "spec.tune.search.type" in issues_of(tune=pbt)
    asha = base | {"scheduler": {"type": "asha", "maxT": 5, "gracePeriod": 6}}
    assert "spec.tune.scheduler.gracePeriod" in issues_of(tune=asha)
    hb = base | {"scheduler": {"type": "hyperband", "gracePeriod": 1}}
    assert "asha" in issues_of(tune=hb)["spec.tune.scheduler.gracePeriod"]


def test_name_length_leaves_room_for_attempt_suffix() -> None:
    doc = manifest()
    doc["metadata"]["name"] = "a" * 43
    with pytest.raises(SpecValidationError) as info:
        parse_job(doc)
    assert "at most 42" in str(info.value)


def test_status_round_trips_rfc3339_times() -> None:
    doc = manifest()
    doc["status"] = {
        "phase": "Running", "attempt": 2, "restarts": 1,
        "conditions": [{"type": "Running", "status": "True", "reason": "AttemptRunning",
                        "lastTransitionTime": "2026-11-22T20:01:43Z", "observedGeneration": 1}],
        "progress": {"epoch": 1, "step": 40, "metrics": {"loss": 0.25}},
        "bestCheckpoint": {"uri": "s3://b/x/checkpoint_000001", "metric": "val_accuracy", "value": 0.97},
    }
    job = TrainingJob.model_validate(doc)
    out = job.model_dump(mode="json", by_alias=True, exclude_unset=True)
    assert out["status"] == doc["status"]


def test_fine_tuning_fields_are_checked_where_they_meet() -> None:
    issues = issues_of(strategy={"type": "fsdp"}, workers=2, unfreeze=[{"atEpoch": 1, "match": "x"}], ema={})
    assert "not supported with spec.strategy.type fsdp" in issues["spec.unfreeze"]
    assert "not supported with spec.strategy.type fsdp" in issues["spec.ema"]
    assert "needs spec.ema" in issues_of(export={"weights": "ema"})["spec.export.weights"]
    groups = issues_of(optimizer={"paramGroups": [{"match": "(", "lr": 1e-4, "lrScale": 0.1}]})
    assert "set lr or lrScale" in groups["spec.optimizer.paramGroups[0].lrScale"]
    assert "not a regular expression" in groups["spec.optimizer.paramGroups[0].match"]
    assert spec_of(init={"from": "s3://b/runs/a"}).init.from_ == "s3://b/runs/a"  # type: ignore[union-attr]
