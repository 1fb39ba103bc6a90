"""Manifests for spec tests: a valid base and a catalogue of malformed variants."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

BASE: dict[str, Any] = {
    "apiVersion": "trainforge.dev/v1alpha1",
    "kind": "TrainingJob",
    "metadata": {"name": "digits"},
    "spec": {
        "task": {"entrypoint": "digits", "args": {"hidden": 64}},
        "workers": 2,
        "epochs": 3,
    },
}


def manifest(**spec: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    doc["spec"].update(spec)
    return doc


@dataclass(frozen=True)
class Bad:
    id: str
    doc: dict[str, Any]
    path: str
    """The field path the error line must name."""
    schema_catches: bool
    """Whether the CRD's openAPIV3Schema alone must reject it (type/enum/range/required)."""


def _without(key: str) -> dict[str, Any]:
    doc = manifest()
    del doc["spec"][key]
    return doc


MALFORMED: list[Bad] = [
    Bad("zero-workers", manifest(workers=0), "spec.workers", True),
    Bad("zero-accumulation", manifest(batch={"gradAccumulation": 0}), "spec.batch.gradAccumulation", True),
    Bad("typo-field", manifest(batch={"gradAcumulation": 2}), "spec.batch.gradAcumulation", False),
    Bad("fractional-batch", manifest(batch={"size": 2.5}), "spec.batch.size", True),
    Bad("strategy-enum", manifest(strategy={"type": "fdsp"}), "spec.strategy.type", True),
    Bad("fsdp-options-on-ddp", manifest(strategy={"type": "ddp", "fsdp": {}}), "spec.strategy.fsdp", False),
    Bad("precision-enum", manifest(precision="fp8"), "spec.precision", True),
    Bad("negative-lr", manifest(optimizer={"lr": -1.0}), "spec.optimizer.lr", True),
    Bad("quoted-lr", manifest(optimizer={"lr": "1e-3"}), "spec.optimizer.lr", True),
    Bad("optimizer-enum", manifest(optimizer={"name": "lamb"}), "spec.optimizer.name", True),
    Bad("one-beta", manifest(optimizer={"betas": [0.9]}), "spec.optimizer.betas", True),
    Bad("momentum-on-adamw", manifest(optimizer={"momentum": 0.9}), "spec.optimizer.momentum", False),
    Bad("nesterov-no-momentum", manifest(optimizer={"name": "sgd", "nesterov": True}),
        "spec.optimizer.nesterov", False),
    Bad("schedule-enum", manifest(schedule={"name": "cosine"}), "spec.schedule.name", True),
    Bad("warmup-twice", manifest(schedule={"warmupSteps": 10, "warmupRatio": 0.1}),
        "spec.schedule.warmupRatio", False),
    Bad("multistep-no-milestones", manifest(schedule={"name": "multistep"}), "spec.schedule.milestones", False),
    Bad("step-no-size", manifest(schedule={"name": "step"}), "spec.schedule.stepSize", False),
    Bad("gamma-on-cosine", manifest(schedule={"gamma": 0.5}), "spec.schedule.gamma", False),
    Bad("warmup-past-end", manifest(maxSteps=100, schedule={"warmupSteps": 100}),
        "spec.schedule.warmupSteps", False),
    Bad("onecycle-no-horizon", _without("epochs") | {}, "spec.epochs", False),
    Bad("patience-zero", manifest(earlyStopping={"patience": 0}), "spec.earlyStopping.patience", True),
    Bad("early-stop-no-eval", manifest(earlyStopping={}, eval={"everyEpoch": False}),
        "spec.earlyStopping", False),
    Bad("storage-scheme", manifest(checkpoint={"storage": "ftp://host/x"}), "spec.checkpoint.storage", False),
    Bad("keep-zero", manifest(checkpoint={"keep": 0}), "spec.checkpoint.keep", True),
    Bad("endpoint-local", manifest(checkpoint={"endpoint": "http://minio:9000"}),
        "spec.checkpoint.endpoint", False),
    Bad("entrypoint-form", manifest(task={"entrypoint": "train my model"}), "spec.task.entrypoint", False),
    Bad("task-missing", _without("task"), "spec.task", True),
    Bad("memory-quantity", manifest(memoryPerWorker="4 GB"), "spec.memoryPerWorker", False),
    Bad("toleration-effect", manifest(tolerations=[{"key": "gpu", "effect": "Sometimes"}]),
        "spec.tolerations[0].effect", True),
    Bad("env-name", manifest(env=[{"name": "1BAD", "value": "x"}]), "spec.env[0].name", False),
    Bad("clip-both", manifest(gradClip={"maxNorm": 1.0, "value": 0.5}), "spec.gradClip.value", False),
    Bad("tune-loguniform-zero",
        manifest(tune={"metric": "val_loss", "mode": "min", "space": {"optimizer.lr": {"loguniform": [0, 1]}}}),
        "spec.tune.space['optimizer.lr'].loguniform", False),
    Bad("tune-unknown-path",
        manifest(tune={"metric": "val_loss", "mode": "min", "space": {"optimizer.lrr": {"choice": [0.1]}}}),
        "spec.tune.space['optimizer.lrr']", False),
    Bad("tune-empty-choice",
        manifest(tune={"metric": "val_loss", "mode": "min", "space": {"batch.size": {"choice": []}}}),
        "spec.tune.space['batch.size'].choice", False),
    Bad("tune-value-invalid-for-path",
        manifest(tune={"metric": "val_loss", "mode": "min", "space": {"batch.size": {"choice": [32, 0]}}}),
        "spec.tune.space['batch.size'].choice[1]", False),
    Bad("tune-mode-missing",
        manifest(tune={"metric": "val_loss", "space": {"batch.size": {"choice": [32]}}}),
        "spec.tune.mode", True),
    Bad("pbt-no-interval",
        manifest(tune={"metric": "val_loss", "mode": "min", "scheduler": {"type": "pbt"},
                       "space": {"optimizer.lr": {"loguniform": [1e-4, 1e-2]}}}),
        "spec.tune.scheduler.perturbationInterval", False),
    Bad("pbt-without-epoch-checkpoints",
        manifest(tune={"metric": "val_loss", "mode": "min", "scheduler": {"type": "pbt", "perturbationInterval": 2},
                       "space": {"optimizer.lr": {"loguniform": [1e-4, 1e-2]}}},
                 checkpoint={"everyEpoch": False, "everySteps": 50}),
        "spec.checkpoint.everyEpoch", False),
    Bad("bad-name", {**manifest(), "metadata": {"name": "Digits_DDP"}}, "metadata.name", False),
    # Past int32: the CRD's int64 takes them, the RayJob/pods made from them would not.
    Bad("workers-past-int32", manifest(workers=2**31), "spec.workers", True),
    Bad("deadline-past-int32", manifest(activeDeadlineSeconds=2**31), "spec.activeDeadlineSeconds", True),
    Bad("ttl-past-int32", manifest(ttlSecondsAfterFinished=2**40), "spec.ttlSecondsAfterFinished", True),
    Bad("restarts-past-attempt-names", manifest(restartPolicy={"maxRestarts": 999}), "spec.restartPolicy.maxRestarts",
        True),
    Bad("generate-name-too-long", {**manifest(), "metadata": {"generateName": "a" * 38}}, "metadata.generateName",
        False),
    Bad("wrong-kind", {**manifest(), "kind": "PyTorchJob"}, "kind", False),
]
