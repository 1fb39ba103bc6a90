"""Reading a run's metrics.jsonl (written by the trainer's rank 0, see trainforge_trainer.runlog).

The file is storage content, so untrusted: a line that is not a JSON object is skipped and counted,
never fatal, and the file is read up to a size limit."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

FILE = "metrics.jsonl"
MAX_BYTES = 256 * 2**20
"""A metrics log larger than this is not a log a reader should load whole."""


@dataclass
class MetricsLog:
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    """Lines that were not JSON objects (a torn last line of a killed attempt, say)."""

    @property
    def steps(self) -> list[dict[str, Any]]:
        """Records of training progress (they have a step and a numeric metric), in file order."""
        return [r for r in self.records if isinstance(r.get("step"), int) and any(
            _number(v) for k, v in r.items() if k not in ("step", "epoch", "total_steps", "time"))]

    @property
    def resumes(self) -> list[dict[str, Any]]:
        """The records a resumed attempt writes first: where each restart or preemption was resumed."""
        return [r for r in self.records if "resumed_step" in r]

    def columns(self) -> list[str]:
        """Every numeric metric name, in first-seen order."""
        seen: dict[str, None] = {}
        for record in self.steps:
            for key, value in record.items():
                if _number(value):
                    seen.setdefault(key, None)
        return list(seen)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def parse_metrics(data: bytes) -> MetricsLog:
    log = MetricsLog()
    for line in data.decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            log.skipped += 1
            continue
        if isinstance(record, dict):
            log.records.append(record)
        else:
            log.skipped += 1
    return log


def read_metrics(filesystem: Any, run_path: str) -> MetricsLog:
    """The run's metrics log. Raises FileNotFoundError when the run has none (yet)."""
    path = f"{run_path.rstrip('/')}/{FILE}"
    info = filesystem.get_file_info(path)
    if info.size is None:
        raise FileNotFoundError(f"{path}: no metrics log (the run has not logged yet, or it is not a run)")
    if info.size > MAX_BYTES:
        raise ValueError(f"{path} is {info.size / 2**20:.0f} MiB, over the {MAX_BYTES // 2**20} MiB a reader loads")
    with filesystem.open_input_stream(path) as f:
        return parse_metrics(f.read())
