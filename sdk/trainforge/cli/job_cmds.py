"""Commands on submitted TrainingJobs (submit, status, list, logs, events, delete, suspend, resume), all
through `TrainingJobClient`, so the CLI behaves as the SDK does on either backend."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, cast

import click
from click.core import ParameterSource
from rich.markup import escape

from ..client import LogsUnavailable, TrainforgeError, TrainingJobClient, WaitTimeout
from ..client.client import BackendName
from ..spec import SpecValidationError, TrainingJob
from ..spec.phases import Phase
from ..spec.status import PHASES, TERMINAL_PHASES
from . import job_view as view
from .console import err

BACKENDS = ("kubernetes", "local")
BACKEND_ENV, ROOT_ENV = "TRAINFORGE_BACKEND", "TRAINFORGE_LOCAL_ROOT"
POLL_S = 1.0
"""How often waits poll the job; tests lower it."""

_OUTPUT = click.option("--output", "-o", type=click.Choice(["text", "json", "yaml"]), default="text",
                       show_default=True, help="json/yaml: the TrainingJob(s) as stored, for scripts.")


@dataclass(frozen=True)
class Target:
    """Where the jobs are: the backend and its location options, as given on the command line."""

    backend: BackendName
    namespace: str | None
    context: str | None
    root: str | None
    explicit_backend: bool
    """--backend was on the command line (not the default or $TRAINFORGE_BACKEND)."""

    def client(self) -> TrainingJobClient:
        return TrainingJobClient(self.backend, self.namespace, self.context, root=self.root, poll_s=POLL_S)


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/] {escape(message)}")
    sys.exit(code)


@contextlib.contextmanager
def reported_errors() -> Iterator[None]:
    """Expected failures (no cluster, no job, bad manifest...) as one `error:` line and exit 1, no traceback."""
    try:
        yield
    except (TrainforgeError, SpecValidationError) as exc:
        fail(str(exc))


_BACKEND = click.option(
    "--backend", type=click.Choice(BACKENDS), envvar=BACKEND_ENV, default="kubernetes", show_default=True,
    show_envvar=True, help="kubernetes: the cluster of your kubeconfig; local: background processes on this machine.")
_BACKEND_SWITCH = click.option(
    "--backend", type=click.Choice(BACKENDS),
    help="Treat the argument as a submitted job on this backend; read its own storage (not --storage).")
_LOCATION = (
    click.option("--namespace", "-n", help="Namespace (default: the kubeconfig context's, else default)."),
    click.option("--context", help="kubeconfig context (default: the current one)."),
    click.option("--root", envvar=ROOT_ENV, show_envvar=True, type=click.Path(file_okay=False),
                 help="The local backend's directory (default ./trainforge-runs)."),
)


def _with_target(backend_option: Callable[[Any], Any]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def decorate(fn: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(fn)
        def wrapper(*args: Any, backend: str | None, namespace: str | None, context: str | None,
                    root: str | None, **kwargs: Any) -> None:
            explicit = click.get_current_context().get_parameter_source("backend") is ParameterSource.COMMANDLINE
            with reported_errors():
                backend_name = cast(BackendName, backend or "kubernetes")  # click.Choice checked it
                fn(*args, target=Target(backend_name, namespace, context, root, explicit), **kwargs)

        for option in reversed((backend_option, *_LOCATION)):
            wrapper = option(wrapper)
        return wrapper

    return decorate


target_options = _with_target(_BACKEND)
"""--backend (default $TRAINFORGE_BACKEND, else kubernetes), -n/--namespace, --context and --root on a job
command; its callback gets them as `target`, and runs with TrainforgeErrors reported as one line."""
storage_or_job_options = _with_target(_BACKEND_SWITCH)
"""The same for commands that read storage directly unless --backend is given (checkpoints, tune-results)."""


# ---- submit ------------------------------------------------------------------------------------


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--wait", is_flag=True, help="Wait until the job Succeeded or Failed; exit 0 or 1 accordingly.")
@click.option("--follow", is_flag=True, help="Stream the job's logs, then exit as --wait does.")
@click.option("--timeout", type=click.FloatRange(min=0), metavar="S",
              help="Give up waiting after S seconds (exit 1); implies --wait.")
@_OUTPUT
@target_options
def submit(file: Path, wait: bool, follow: bool, timeout: float | None, output: str, target: Target) -> None:
    """Create the TrainingJob in FILE; with --wait/--follow, stay until it finishes.

    Progress (phase, epoch, step, metrics) goes to stderr; stdout has the job's name, or with -o the
    job as stored (after it finished, with --wait). Exit codes: 0 created (or Succeeded), 1 Failed or
    an error, 130 interrupted (the job keeps running)."""
    client = target.client()
    name = client.submit(file)
    if output == "text":
        click.echo(f"trainingjob/{name} created")
    if not (wait or follow or timeout is not None):
        if output != "text":
            view.emit(view.dump(client.get(name)), output)
        return
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        if follow:
            _follow(client, name, deadline)
        # The logs showed progress already; and after them, the remaining time (an odd number) is no limit
        # the user chose, so the message of a timeout then names none.
        job = client.wait(name, timeout=_left(deadline) if follow else timeout,
                          on_progress=None if follow else lambda j: err.print(escape(view.progress_line(j))))
    except KeyboardInterrupt:
        fail(f"stopped waiting; job {name} keeps running (`trainforge status {name}`)", 130)
    _finish(job, output, announced=not follow)


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _finish(job: TrainingJob, output: str, announced: bool) -> NoReturn:
    """Exit by the final phase; `announced`: the progress lines already ended with it."""
    if output != "text":
        view.emit(view.dump(job), output)
    elif not announced:
        err.print(escape(view.progress_line(job)))
    sys.exit(0 if view.phase(job) == Phase.SUCCEEDED else 1)


def _follow(client: TrainingJobClient, name: str, deadline: float | None) -> None:
    """Stream the logs of the job's attempts until it ends; until then, wait for its first driver."""
    while True:
        job = client.get(name)  # one snapshot: attempt 0 in a finished job means it never had a driver
        missing = None
        if job.status is not None and job.status.attempt >= 1:
            try:
                lines = client.logs(name, follow=True)
            except LogsUnavailable as exc:  # its driver pod has not started yet, or is gone
                missing = exc
            else:
                _pump(lines, name, deadline)
                return
        if view.phase(job) in TERMINAL_PHASES:
            if missing is not None:
                err.print(f"[yellow]no logs:[/] {escape(str(missing))}")
            return
        if deadline is not None and time.monotonic() >= deadline:
            raise WaitTimeout(f"job {name} started no attempt with logs within the timeout; "
                              f"`trainforge status {name}` shows why")
        time.sleep(POLL_S)


def _pump(lines: Iterator[str], name: str, deadline: float | None) -> None:
    """Echo lines from a thread, so the timeout holds even while the job prints nothing."""
    done, failure = threading.Event(), []

    def run() -> None:
        try:
            for line in lines:
                click.echo(line)
        except BaseException as exc:  # handed to the main thread, which reports it
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name="trainforge-logs", daemon=True).start()
    if not done.wait(_left(deadline)):
        raise WaitTimeout(f"job {name} did not finish within the timeout; `trainforge status {name}` shows where "
                          "it is")
    if failure:
        raise failure[0]


# ---- reading jobs ------------------------------------------------------------------------------


@click.command()
@click.argument("name")
@_OUTPUT
@target_options
def status(name: str, output: str, target: Target) -> None:
    """A job's phase and why, attempts, conditions, progress, checkpoints and sweep summary."""
    client = target.client()
    job = client.get(name)
    if output != "text":
        view.emit(view.dump(job), output)
    else:
        view.print_status(job, target.backend, _losses(client, name))


def _losses(client: TrainingJobClient, name: str) -> list[float] | None:
    """The training loss over the run, from its metrics log on storage; None where it cannot be read
    (no log yet, no access to the bucket from here): the status does not depend on it."""
    try:
        log = client.metrics(name)
    except Exception:
        return None
    return [float(r["loss"]) for r in log.steps if isinstance(r.get("loss"), int | float) and not r.get("done")]


@click.command("list")
@click.option("--selector", "-l", help="Label selector, as kubectl's: team=nlp,tier!=dev.")
@click.option("--phase", "phases", multiple=True, type=click.Choice(PHASES),
              help="Only jobs in this phase (repeatable).")
@_OUTPUT
@target_options
def list_jobs(selector: str | None, phases: tuple[str, ...], output: str, target: Target) -> None:
    """TrainingJobs with their phase, attempt, step, latest checkpoint and age."""
    client = target.client()
    jobs = client.list(selector=selector, phase=phases or None)
    if output != "text":
        view.emit([view.dump(j) for j in jobs], output)
    elif not jobs:
        where = f"namespace {client.namespace}" if target.backend == "kubernetes" else "the local backend"
        err.print(f"no TrainingJobs in {escape(where)}" + (" matching the filters" if selector or phases else ""))
    else:
        view.print_jobs(jobs)


@click.command()
@click.argument("name")
@click.option("--follow", "-f", is_flag=True, help="Keep streaming while the job runs, into later attempts.")
@click.option("--attempt", type=click.IntRange(min=1), help="This attempt's logs (default: the current one).")
@click.option("--rank", type=click.IntRange(min=0), help="Only this worker rank's lines, without Ray's prefix.")
@target_options
def logs(name: str, follow: bool, attempt: int | None, rank: int | None, target: Target) -> None:
    """A job's driver log (every worker's output, prefixed by Ray), or one rank's lines."""
    try:
        for line in target.client().logs(name, follow=follow, attempt=attempt, rank=rank):
            click.echo(line)  # click.echo flushes: lines show as they come, also through a pipe
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # `| head`: the reader has what it wanted; no traceback at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


@click.command()
@click.argument("name")
@_OUTPUT
@target_options
def events(name: str, output: str, target: Target) -> None:
    """Events about a job and its attempts, oldest first."""
    found = target.client().events(name)
    if output != "text":
        view.emit([e.as_dict() for e in found], output)
    elif not found:
        err.print(f"no events for job {escape(name)} (the cluster keeps events for about an hour)")
    else:
        view.print_events(found)


# ---- changing jobs -----------------------------------------------------------------------------


@click.command()
@click.argument("name")
@click.option("--no-wait", is_flag=True, help="Return once the deletion is asked for, not once the job is gone.")
@click.option("--timeout", type=click.FloatRange(min=0), metavar="S", default=120.0, show_default=True,
              help="Seconds to wait for the job to be gone.")
@target_options
def delete(name: str, no_wait: bool, timeout: float, target: Target) -> None:
    """Delete a job: its running attempt stops; its checkpoints stay on storage."""
    target.client().delete(name, wait=not no_wait, timeout=timeout)
    click.echo(f"trainingjob/{name} " + ("deletion requested" if no_wait else "deleted"))


@click.command()
@click.argument("name")
@target_options
def suspend(name: str, target: Target) -> None:
    """Suspend a job: it checkpoints, then stops (phase Suspended); `resume` continues it."""
    target.client().suspend(name)
    click.echo(f"trainingjob/{name} suspend requested: it checkpoints, then stops")


@click.command()
@click.argument("name")
@target_options
def resume(name: str, target: Target) -> None:
    """Resume a suspended job from its latest checkpoint."""
    target.client().resume(name)
    click.echo(f"trainingjob/{name} resumed")


COMMANDS = (submit, status, list_jobs, logs, events, delete, suspend, resume)
