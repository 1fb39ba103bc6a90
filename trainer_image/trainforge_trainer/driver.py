"""The Ray driver's side of one run: start the TorchTrainer, turn SIGTERM into a checkpoint-and-stop
request for the workers, and say how the run ended. Used by `trainforge run` and on a cluster."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from trainforge.checkpoints import StorageTarget
from trainforge.checkpoints.final import FinalResult
from trainforge.checkpoints.owner import RunOwner, StaleWriter
from trainforge.lifecycle import AttemptResult
from trainforge.spec import TrainingJobSpec
from trainforge.spec.contract import STOP_ACTOR_NAMESPACE, stop_flag_name

from .checkpoint.manager import PREEMPTED_EXIT_CODE
from .checkpoint.ownership import RunOwnershipError, claim_run
from .checkpoint.preempt import PreemptFlag

log = logging.getLogger("trainforge.driver")
PREEMPTED_ERROR = "TrainingPreempted"
"""Error type of a preempted run: the operator counts it as a preemption, not a failure."""
EXIT_CODES: dict[str, int] = {AttemptResult.SUCCEEDED: 0, AttemptResult.FAILED: 1,
                              AttemptResult.PREEMPTED: PREEMPTED_EXIT_CODE, AttemptResult.REFUSED: 78}
"""78 is EX_CONFIG: what must change is the spec or the storage, not the cluster."""
REPORT_POLL_S = "0.1"


def prepare_ray_env() -> None:
    """Environment Ray must see before `ray.init` (the local cluster's processes inherit it)."""
    # Train V2 workers hand each report to a one-slot queue that the controller drains once per
    # health check (2 s by default): without this every report would stall training that long.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", REPORT_POLL_S)
    # Tune's own console reporter would interleave with ours (and with `-o json` on stdout).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


@dataclass
class RunResult:
    status: AttemptResult
    metrics: dict[str, Any] = field(default_factory=dict)
    """Metrics of the newest checkpoint (Ray Train keeps metrics only with checkpoints)."""
    error: str | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]


@contextlib.contextmanager
def sigterm_requests_stop(flag: Any) -> Iterator[None]:
    """While the run is in flight, SIGTERM asks the workers to checkpoint and stop."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        log.warning("SIGTERM: the workers will checkpoint at the next step boundary and stop")
        flag.set.remote()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def make_flag(lineage: str | None = None) -> Any:
    """The flag actor the workers poll: set, they checkpoint at the next step boundary and stop.

    With an attempt's lineage it is the named actor `stop_flag_name(lineage)` that the pods'
    preStop hooks set on eviction (an attempt has one driver, so get-if-exists finds no stranger).
    It lives until killed or until the process that made it exits: the hook waits for that. Without
    one (`trainforge run`, the local backend: no pods, no hook) it is anonymous, so that a later run
    of the same name can never pick up an earlier run's flag, already set."""
    import ray

    if not lineage:
        return ray.remote(PreemptFlag).options(num_cpus=0).remote()
    return ray.remote(PreemptFlag).options(num_cpus=0, name=stop_flag_name(lineage), namespace=STOP_ACTOR_NAMESPACE,
                                           get_if_exists=True).remote()


def fit_run(spec: TrainingJobSpec, name: str, target: StorageTarget, callbacks: list[Any],
            run_dir: str | None = None, flag: Any = None, owner: RunOwner | None = None) -> RunResult:
    """One Ray Train run of `name`, after claiming the run directory for `owner` (a run of its own
    name when none is given, as `trainforge run` has)."""
    import ray

    from .callbacks import RetentionCallback
    from .launch import make_trainer

    try:
        claim = claim_run(target, name, spec, owner or RunOwner(name))
    except (RunOwnershipError, StaleWriter) as exc:
        return RunResult(AttemptResult.REFUSED, error=str(exc))
    if claim.finished is not None:
        return finished_result(claim.finished)
    own_flag = flag is None  # a caller's flag is the caller's to end (the cluster driver's lives to its exit)
    flag = flag or make_flag()
    trainer = make_trainer(spec, name, target, [*callbacks, RetentionCallback(spec, claim.owner)],
                           preempt_flag=flag, run_dir=run_dir or target.run_uri(name), init_from=claim.init_from,
                           owner=claim.owner.to_dict())
    try:
        with sigterm_requests_stop(flag):
            try:
                result = trainer.fit()
            except Exception as exc:  # TrainingFailedError carries the worker's traceback
                return RunResult(AttemptResult.FAILED, error=short_error(exc))
    finally:
        if own_flag:
            ray.kill(flag)
    metrics = dict(result.metrics or {})
    if metrics.get("preempted"):
        return RunResult(AttemptResult.PREEMPTED, metrics, f"{PREEMPTED_ERROR}: stopped on a preemption signal after "
                                               f"checkpointing step {metrics.get('step')}; running again resumes")
    return RunResult(AttemptResult.SUCCEEDED, metrics)


def finished_result(final: FinalResult) -> RunResult:
    """A run that already finished with this spec: its final report, as it was."""
    log.warning("run already complete at step %d (checkpoint %s): its final metrics are reported as they were; "
                "nothing is trained (start over with --fresh or another name)", final.step, final.checkpoint)
    return RunResult(AttemptResult.SUCCEEDED, {**final.metrics, "already_complete": True})


def discard_run(target: StorageTarget, name: str) -> int:
    """Delete a run's directory (checkpoints and Ray's run snapshot); returns the checkpoints dropped."""
    import pyarrow.fs as pafs
    from trainforge.checkpoints import list_checkpoints

    path = target.run_path(name)
    if target.filesystem.get_file_info(path).type == pafs.FileType.NotFound:
        return 0
    dropped = sum(1 for e in list_checkpoints(target.filesystem, path, check=False) if e.complete)
    target.filesystem.delete_dir(path)
    return dropped


def short_error(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # The worker's own exception line is the last line of the embedded traceback.
    return lines[-1] if lines else type(exc).__name__
