"""How the job commands show TrainingJobs: one-line progress, the `status` page, `list` and `events` tables,
and the json/yaml dumps scripts read."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from ..client import JobEvent
from ..spec import TrainingJob
from ..spec.phases import TERMINAL_PHASES as TERMINAL
from ..spec.phases import Phase
from ..spec.status import TrainingJobStatus
from ..spec.yamlio import dumps
from .console import out

NO_PHASE = "-"


def dump(job: TrainingJob) -> dict[str, Any]:
    return job.model_dump(mode="json", by_alias=True, exclude_none=True)


def emit(data: Any, output: str) -> None:
    """`data` as JSON or YAML on stdout: plain text, so that rich never restyles what a script parses."""
    if output == "json":
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        click.echo(dumps(data), nl=False)


def phase(job: TrainingJob) -> str | None:
    return job.status.phase if job.status else None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _utc(when: dt.datetime | None) -> dt.datetime | None:
    if when is not None and when.tzinfo is None:
        return when.replace(tzinfo=dt.UTC)  # the API's times are UTC even when the client drops the zone
    return when


def age(when: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """kubectl's compact age: 45s, 12m, 3h, 5d."""
    when = _utc(when)
    if when is None:
        return "-"
    seconds = max(0, int(((now or dt.datetime.now(dt.UTC)) - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def stamp(when: dt.datetime | None) -> str:
    when = _utc(when)
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if when else "-"


def created_at(job: TrainingJob) -> dt.datetime | None:
    """metadata.creationTimestamp on a cluster; local jobs have none, their Created condition stands in."""
    raw = (job.metadata.model_extra or {}).get("creationTimestamp")
    if isinstance(raw, str):
        return dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    status = job.status
    if status and status.conditions:
        return min(c.last_transition_time for c in status.conditions)
    return status.start_time if status else None


# ---- progress ---------------------------------------------------------------------------------


def step_text(status: TrainingJobStatus | None) -> str:
    progress = status.progress if status else None
    if progress is None:
        return "-"
    return f"{progress.step}/{progress.total_steps}" if progress.total_steps else str(progress.step)


def metrics_text(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k} {_fmt(v)}" for k, v in sorted(metrics.items()))


def progress_line(job: TrainingJob) -> str:
    """One line per change `wait` reports: phase, attempt, epoch/step, metrics; why, once it ended."""
    status = job.status
    if status is None or status.phase is None:
        return f"{job.name}: waiting for the operator to pick the job up"
    parts = [f"{job.name}: {status.phase}"]
    if status.attempt:
        parts.append(f"attempt {status.attempt}")
    if status.progress is not None:
        parts.append(f"epoch {status.progress.epoch} step {step_text(status)}")
        if status.progress.eta is not None and status.phase not in TERMINAL:
            parts.append(f"ETA {status.progress.eta}")
        if status.progress.metrics:
            parts.append(metrics_text(status.progress.metrics))
    if status.phase in (Phase.FAILED, Phase.SUSPENDED, Phase.RESTARTING) and (status.reason or status.message):
        parts.append(": ".join(p for p in (status.reason, status.message) if p))
    return ", ".join(parts)


# ---- status ------------------------------------------------------------------------------------


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 40) -> str:
    """The values (the last `width`, or means of equal runs of them) as one line of block characters."""
    if not values:
        return ""
    if len(values) > width:
        size = len(values) / width
        values = [sum(chunk) / len(chunk) for i in range(width)
                  if (chunk := values[int(i * size):max(int((i + 1) * size), int(i * size) + 1)])]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(SPARKS[min(len(SPARKS) - 1, int((v - low) / span * len(SPARKS)))] for v in values)


def print_status(job: TrainingJob, backend: str, losses: list[float] | None = None) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    for key, value in _status_rows(job, backend):
        grid.add_row(key, escape(value))
    if losses:
        grid.add_row("Loss curve", f"{sparkline(losses)}  {_fmt(losses[0])} → {_fmt(losses[-1])}")
    out.print(grid)
    conditions = job.status.conditions if job.status else []
    if conditions:
        out.print()
        out.print(_conditions_table(job.status))  # type: ignore[arg-type]


def _status_rows(job: TrainingJob, backend: str) -> Iterable[tuple[str, str]]:
    status = job.status or TrainingJobStatus()
    yield "Name", f"{job.name} (namespace {job.metadata.namespace or '-'}, {backend} backend)"
    yield "Phase", status.phase or "not set yet (is the trainforge operator running?)"
    if status.reason or status.message:
        yield "Reason", ": ".join(p for p in (status.reason, status.message) if p)
    yield "Attempt", f"{status.attempt} (restarts {status.restarts}, preemptions {status.preemptions})"
    if status.outcome is not None:
        outcome = status.outcome
        yield "Last outcome", f"attempt {outcome.attempt} {outcome.result}" + (
            f": {outcome.message}" if outcome.message else "")
    if status.start_time or status.completion_time:
        yield "Started", f"{stamp(status.start_time)} ({age(status.start_time)} ago)"
    if status.completion_time:
        yield "Completed", f"{stamp(status.completion_time)} ({age(status.completion_time)} ago)"
    yield from _progress_rows(status)
    yield "Latest checkpoint", status.latest_checkpoint or "-"
    if status.best_checkpoint is not None:
        best = status.best_checkpoint
        score = f"{best.metric} {_fmt(best.value)}, " if best.metric else ""
        yield "Best checkpoint", f"{best.uri} ({score}step {_fmt(best.step)})"
    if status.tune is not None:
        yield "Sweep", tune_summary(status)


def _progress_rows(status: TrainingJobStatus) -> Iterable[tuple[str, str]]:
    progress = status.progress
    if progress is None:
        yield "Progress", "-"
        return
    text = f"epoch {progress.epoch}, step {step_text(status)}"
    if progress.percent is not None:
        text += f" ({progress.percent:g}%)"
    elif progress.total_steps:  # a status written by an older trainer, without percent
        text += f" ({100 * progress.step // progress.total_steps}%)"
    if progress.eta is not None and status.phase not in TERMINAL:
        text += f", ETA {progress.eta}"
    if progress.samples_per_second is not None:
        text += f", {_fmt(progress.samples_per_second)} samples/s"
    if progress.tokens_per_second is not None:
        text += f", {_fmt(progress.tokens_per_second)} tokens/s"
    if progress.update_time is not None:
        text += f", updated {age(progress.update_time)} ago"
    yield "Progress", text
    if progress.metrics:
        yield "Metrics", metrics_text(progress.metrics)


def tune_summary(status: TrainingJobStatus) -> str:
    tune = status.tune
    assert tune is not None
    counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(tune.trials.items())) or "no trials yet"
    if tune.best is None:
        return counts
    best = tune.best
    config = ", ".join(f"{k}={_fmt(v)}" for k, v in best.config.items())
    return f"{counts}; best {best.trial}: {best.metric} {_fmt(best.value)}" + (f" ({config})" if config else "")


def _table() -> Table:
    """kubectl's look: upper-case headers, no rules, columns three spaces apart; `awk` splits it."""
    return Table(box=None, pad_edge=False, padding=(0, 3, 0, 0), header_style="bold")


def _conditions_table(status: TrainingJobStatus) -> Table:
    table = _table()
    for col in ("CONDITION", "STATUS", "REASON", "AGE", "MESSAGE"):
        table.add_column(col, no_wrap=col != "MESSAGE", overflow="fold")
    for c in status.conditions:
        table.add_row(c.type, c.status, escape(c.reason or "-"), age(c.last_transition_time), escape(c.message))
    return table


# ---- list and events -----------------------------------------------------------------------------


def print_jobs(jobs: list[TrainingJob]) -> None:
    table = _table()
    for col in ("NAME", "PHASE", "ATTEMPT", "STEP", "CHECKPOINT", "AGE"):
        table.add_column(col, no_wrap=True)
    for job in jobs:
        status = job.status
        latest = status.latest_checkpoint if status else None
        table.add_row(escape(job.name), phase(job) or NO_PHASE, str(status.attempt if status else 0),
                      step_text(status), escape(latest.rstrip("/").rsplit("/", 1)[-1]) if latest else "-",
                      age(created_at(job)))
    out.print(table)


def print_events(events: list[JobEvent]) -> None:
    table = _table()
    for col in ("TIME", "TYPE", "REASON", "OBJECT", "MESSAGE"):
        table.add_column(col, no_wrap=col != "MESSAGE", overflow="fold")
    for e in events:
        reason = e.reason + (f" (x{e.count})" if e.count > 1 else "")
        style = "yellow" if e.type == "Warning" else ""
        table.add_row(stamp(e.time), e.type, escape(reason), escape(e.object), escape(e.message), style=style)
    out.print(table)
