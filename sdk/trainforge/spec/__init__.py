"""The TrainingJob spec: single source of the CRD schema, the SDK types and the trainer config."""

from .base import SpecFieldError, SpecModel
from .checkpoint import CheckpointConfig, KeepBestConfig
from .errors import SpecIssue, SpecValidationError
from .job import API_GROUP, API_VERSION, KIND, ObjectMeta, RestartPolicy, TrainingJob, TrainingJobSpec
from .load import dump_job, load_jobs, parse_job
from .loop import BatchConfig, EarlyStoppingConfig, EvalConfig, GradClipConfig
from .optim import OptimizerConfig, ScheduleConfig
from .parallel import DDPConfig, FSDPConfig, Strategy
from .status import CheckpointRef, Condition, Progress, TrainingJobStatus, TuneBest, TuneStatus
from .tune import Domain, TuneConfig, TuneScheduler, TuneSearch
from .workload import EnvVar, Task, Toleration

__all__ = [
    "API_GROUP", "API_VERSION", "KIND", "BatchConfig", "CheckpointConfig", "CheckpointRef", "Condition",
    "DDPConfig", "Domain", "EarlyStoppingConfig", "EnvVar", "EvalConfig", "FSDPConfig", "GradClipConfig",
    "KeepBestConfig", "ObjectMeta", "OptimizerConfig", "Progress", "RestartPolicy", "ScheduleConfig",
    "SpecFieldError", "SpecIssue", "SpecModel", "SpecValidationError", "Strategy", "Task", "Toleration",
    "TrainingJob", "TrainingJobSpec", "TrainingJobStatus", "TuneBest", "TuneConfig", "TuneScheduler",
    "TuneSearch", "TuneStatus", "dump_job", "load_jobs", "parse_job",
]
