"""The TrainingJob resource: metadata, spec, status, and the checks that span several fields."""

from __future__ import annotations

import copy
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .base import (
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Problems,
    Quantity,
    SpecModel,
)
from .checkpoint import CheckpointConfig
from .errors import suggest, unwrap_model
from .loop import BatchConfig, EarlyStoppingConfig, EvalConfig, GradClipConfig
from .model_io import ExportConfig, InitConfig, LoraConfig
from .optim import OptimizerConfig, ScheduleConfig, Unfreeze
from .parallel import Precision, Strategy
from .runtime import RuntimeConfig
from .status import TrainingJobStatus
from .tracking import EmaConfig, ProfileConfig, TrackingConfig
from .tune import TuneConfig
from .workload import EnvVar, Task, Toleration

ObjectName = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]
"""A Kubernetes object name that also fits a label value (Kueue puts the queue's in a label)."""

API_GROUP = "trainforge.dev"
API_VERSION = f"{API_GROUP}/v1alpha1"
KIND = "TrainingJob"
# KubeRay rejects RayJob names over 47 characters; attempts are named <job>-a<N> (N up to 999).
MAX_NAME_LENGTH = 42
MAX_ATTEMPTS = 999
"""The most attempts a job has, restarts and preemptions together: `<job>-a999` still fits."""
MUTABLE_WHILE_RUNNING = frozenset({"suspend", "activeDeadlineSeconds", "ttlSecondsAfterFinished", "restartPolicy"})
"""Spec fields a running job takes edits of; the operator applies edits to others only while suspended."""
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class RestartPolicy(SpecModel):
    max_restarts: Annotated[int, Field(ge=0, le=MAX_ATTEMPTS - 1)] = 3
    """New attempts (RayJobs) allowed after failures; preemptions are free unless countPreemptions.
    A job has at most 999 attempts in all (their names must fit KubeRay's limit)."""
    count_preemptions: bool = False
    max_worker_failures: Annotated[int, Field(ge=-1)] = 2
    """Ray Train worker-group restarts inside one attempt (FailureConfig.max_failures; -1 = no limit)."""


class TrainingJobSpec(SpecModel):
    image: str | None = None
    """Trainer image; default: the operator's configured image."""
    task: Task
    runtime: RuntimeConfig | None = None
    """The task's own code (a directory shipped with the job), extra pip packages and environment."""
    workers: PositiveInt = 1
    cpus_per_worker: PositiveFloat = 1.0
    gpus_per_worker: NonNegativeInt = 0
    memory_per_worker: Quantity | None = None
    resources: dict[str, Quantity] = Field(default_factory=dict)
    """Extra resources per worker, e.g. {"vpc.amazonaws.com/efa": 1}."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    env: list[EnvVar] = Field(default_factory=list)
    service_account_name: str | None = None
    queue: ObjectName | None = None
    """Kueue LocalQueue (in the job's namespace) that admits the job: each attempt's RayJob carries
    kueue.x-k8s.io/queue-name and is created suspended; the job is Queued until Kueue unsuspends it.
    Kueue suspending a running attempt (its preemption) checkpoints it, counts a preemption and
    queues the next attempt. Default: the operator's defaultQueue (none: no Kueue)."""
    priority_class_name: ObjectName | None = None
    """PriorityClass of every pod of the job; Kueue takes the workload's priority from it."""

    strategy: Strategy = Field(default_factory=Strategy)
    precision: Precision = "fp32"
    compile: bool = False
    """torch.compile the model."""
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    """Scale lr by (workers x gradAccumulation), or its square root."""
    batch: BatchConfig = Field(default_factory=BatchConfig)
    epochs: PositiveInt | None = None
    max_steps: PositiveInt | None = None
    """Optimizer steps; with epochs, training stops at whichever comes first."""
    steps_per_epoch: PositiveInt | None = None
    """Cut every epoch at this many optimizer steps. For a stream (an IterableDataset), whose length is
    not known ahead, an epoch is otherwise one whole pass; each epoch starts a new pass."""
    grad_clip: GradClipConfig = Field(default_factory=GradClipConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    early_stopping: EarlyStoppingConfig | None = None
    seed: NonNegativeInt = 0
    deterministic: bool = False
    """Deterministic kernels and data order: reruns compute bit-identical results (slower)."""
    log_every_steps: PositiveInt = 10
    """Train loss is synchronised to the host and reported every N optimizer steps."""

    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    unfreeze: list[Unfreeze] = Field(default_factory=list)
    """Gradual unfreezing: parameters frozen by spec.optimizer.paramGroups start training at these
    epochs. They are in the optimizer from the start, so its state and a resume stay exact."""
    init: InitConfig | None = None
    """Start from pretrained weights (the model only); see spec.init.from."""
    ema: EmaConfig | None = None
    """An exponential moving average of the weights, checkpointed with the run."""
    lora: LoraConfig | None = None
    """Low-rank adapters (peft) on spec.lora.targetModules: the rest of the model is frozen, checkpoints
    hold the adapters alone (the base is spec.init's weights, read again on resume, or the seeded
    initialisation), and an export merges them into the base."""
    export: ExportConfig | None = None
    """Write <run>/export/model.safetensors and trainforge-model.json at the end of the run."""
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    profile: ProfileConfig | None = None
    """torch.profiler over spec.profile.steps steps: a Chrome trace and a table of kernel time by class
    per profiled rank, under <run>/profile/."""
    tune: TuneConfig | None = None
    restart_policy: RestartPolicy = Field(default_factory=RestartPolicy)
    suspend: bool = False
    active_deadline_seconds: PositiveInt | None = None
    termination_grace_period_seconds: PositiveInt | None = None
    """Pods' terminationGracePeriodSeconds: how long an evicted or deleted pod's trainer has to save
    and upload its emergency checkpoint (the pods' preStop hook waits for it at most this long).
    Default: the operator's (120 s). Size it to a checkpoint's save + upload time, with margin."""
    hang_timeout_seconds: NonNegativeInt | None = None
    """A rank that completes no optimizer step for this long counts as hung: every rank's stacks go
    to the log and the attempt restarts from its last checkpoint, instead of waiting out the process
    group's 30-minute timeout. Checkpoint saves and evaluation are not counted. Default: 20 x the
    median step time, at least 300 s; 0 turns the watchdog off."""
    start_timeout_seconds: PositiveInt = 600
    """How long an attempt may take to start running (pods scheduled, images pulled, Ray up). One
    that does not is stopped and counts as a failed attempt, with the pods' own reason
    (Unschedulable, ImagePullBackOff, ...) in the condition message."""
    ttl_seconds_after_finished: NonNegativeInt | None = None

    @model_validator(mode="after")
    def _cross_field(self) -> TrainingJobSpec:
        problems = Problems()
        self._check_horizon(problems)
        self._check_evaluation_users(problems)
        if self.unfreeze and self.strategy.type == "fsdp":
            problems.add("unfreeze", "is not supported with spec.strategy.type fsdp yet (its sharded checkpoints need "
                         "optimizer state for every parameter); use ddp, or freeze for the whole run")
        if self.ema is not None and self.strategy.type == "fsdp":
            problems.add("ema", "is not supported with spec.strategy.type fsdp yet; use ddp, or drop spec.ema")
        if self.export is not None and self.export.weights == "ema" and self.ema is None:
            problems.add(("export", "weights"), "ema needs spec.ema (e.g. {decay: 0.999})")
        if self.export is not None and self.export.weights == "best" and not self._best_metric():
            problems.add(("export", "weights"), "best needs a metric to rank checkpoints by: set "
                         "spec.checkpoint.keepBest.metric or spec.earlyStopping")
        if self.lora is not None and self.unfreeze:
            problems.add("unfreeze", "does not combine with spec.lora (LoRA freezes the base for the whole run)")
        if self.tune is not None:
            _check_tune_space(self, problems)
            if self.tune.scheduler.type == "pbt" and not self.checkpoint.every_epoch:
                problems.add(("checkpoint", "everyEpoch"),
                             "pbt exploits trials through their epoch checkpoints; set everyEpoch: true")
        problems.raise_if_any()
        return self

    def _check_horizon(self, problems: Problems) -> None:
        if self.epochs is None and self.max_steps is None:
            why = (
                f"schedule {self.schedule.name} needs a known total step count: "
                if self.schedule.needs_horizon else ""
            )
            problems.add("epochs", f"{why}set spec.epochs or spec.maxSteps (or both)")
            return
        if self.max_steps is None:
            return
        warmup = self.schedule.warmup_steps
        if warmup is not None and warmup >= self.max_steps:
            problems.add(("schedule", "warmupSteps"), f"must be < spec.maxSteps ({self.max_steps})")
        for i, milestone in enumerate(self.schedule.milestones or []):
            if milestone >= self.max_steps:
                problems.add(("schedule", "milestones", i),
                             f"{milestone} is never reached: spec.maxSteps is {self.max_steps}")

    def _check_evaluation_users(self, problems: Problems) -> None:
        if self.eval.enabled:
            return
        fix = "enable evaluation with spec.eval.everyEpoch: true or spec.eval.everySteps"
        if self.early_stopping is not None:
            problems.add("earlyStopping", f"needs evaluation; {fix}")
        if self.schedule.name == "plateau":
            problems.add(("schedule", "name"), f"plateau is stepped after evaluation; {fix}")

    def _best_metric(self) -> str | None:
        """The metric that ranks this job's checkpoints (keepBest's, else early stopping's)."""
        if self.checkpoint.keep_best is not None:
            return self.checkpoint.keep_best.metric
        return self.early_stopping.metric if self.early_stopping is not None else None


def _check_tune_space(spec: TrainingJobSpec, problems: Problems) -> None:
    """Every space path must name a spec field, and every value it can take must be valid there."""
    assert spec.tune is not None
    base = spec.model_dump(by_alias=True, exclude_unset=True, exclude={"tune"})
    for path, domain in spec.tune.space.items():
        where = ("tune", "space", path)
        parts = path.split(".")
        problem = _path_problem(TrainingJobSpec, parts)
        if problem:
            problems.add(where, problem)
            continue
        for i, value in enumerate(domain.probe_values()):
            candidate = _with_value(base, parts, value)
            try:
                TrainingJobSpec.model_validate(candidate)
            except ValidationError as err:
                first = err.errors(include_url=False)[0]
                problems.add((*where, domain.kind, i),
                             f"{value!r} is not valid for spec.{path}: {first['msg']}")
                break


def _path_problem(model: type[BaseModel], parts: list[str]) -> str | None:
    if parts[0] == "tune":
        return "a sweep cannot change its own tune settings"
    current: Any = model
    for depth, part in enumerate(parts):
        if current is Task and part == "args" and depth + 1 < len(parts):
            return None  # task.args is free-form: any key below it is the task's business
        fields = {f.alias or name: f for name, f in current.model_fields.items()}
        if part not in fields:
            known = ".".join(parts[:depth]) or "spec"
            return f"{part!r} is not a field of {known}{suggest(part, fields)}"
        current = unwrap_model(fields[part].annotation)
        if current is None and depth + 1 < len(parts):
            return f"{'.'.join(parts[: depth + 1])} has no sub-fields"
    return None


def _with_value(base: dict[str, Any], parts: list[str], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    node = doc
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return doc


class ObjectMeta(BaseModel):
    """The part of metav1.ObjectMeta trainforge reads; the API server's own fields pass through."""

    model_config = ConfigDict(extra="allow", validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True)
    name: str | None = None
    generate_name: str | None = Field(default=None, alias="generateName")
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name_form(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if len(value) > MAX_NAME_LENGTH:
            raise ValueError(
                f"{value!r} is {len(value)} characters; at most {MAX_NAME_LENGTH} "
                "(KubeRay limits RayJob names, and attempts add -a<N>)"
            )
        if not _NAME.match(value):
            raise ValueError(
                f"{value!r} must be lowercase letters, digits and '-', start with a letter and "
                "end with a letter or digit (RFC 1035 label)"
            )
        return value

    @field_validator("generate_name")
    @classmethod
    def _generate_name_form(cls, value: str | None) -> str | None:
        # The API server appends 5 random characters to generateName.
        if value is not None and len(value) > MAX_NAME_LENGTH - 5:
            raise ValueError(f"{value!r} is {len(value)} characters; at most {MAX_NAME_LENGTH - 5} "
                             f"(the API server adds 5, and a name has at most {MAX_NAME_LENGTH})")
        return value

    @model_validator(mode="after")
    def _named(self) -> ObjectMeta:
        if self.name is None and self.generate_name is None:
            raise ValueError("set metadata.name (or metadata.generateName)")
        return self


class TrainingJob(SpecModel):
    api_version: Literal["trainforge.dev/v1alpha1"] = API_VERSION
    kind: Literal["TrainingJob"] = KIND
    metadata: ObjectMeta
    spec: TrainingJobSpec
    status: TrainingJobStatus | None = None

    @property
    def name(self) -> str:
        return self.metadata.name or ""

    def to_yaml(self) -> str:
        """The manifest as `kubectl apply -f` takes it: only what was set, defaults left implicit."""
        from .yamlio import dumps

        return dumps(self.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True))
