"""`result.json`: how a finished run ended, next to its checkpoints.

The final report (test-set metrics included) is computed after the last checkpoint is saved, so no
manifest holds it. Running a finished run again reports this record, unchanged, instead of training
or evaluating again; it counts only while the checkpoint it names is still the run's newest."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .owner import read_record

RESULT_FILE = "result.json"


@dataclass(frozen=True)
class FinalResult:
    checkpoint: str
    """Name of the checkpoint holding the final weights (the run's newest when it finished)."""
    step: int
    metrics: dict[str, Any] = field(default_factory=dict)
    owner: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: Any) -> FinalResult:
        """Raises ValueError when `raw` is not a well-formed record (storage content is untrusted)."""
        if not isinstance(raw, dict):
            raise ValueError("not an object")
        checkpoint, step, metrics = raw.get("checkpoint"), raw.get("step"), raw.get("metrics", {})
        if not isinstance(checkpoint, str) or not isinstance(step, int) or isinstance(step, bool):
            raise ValueError("needs a checkpoint name and an integer step")
        if not isinstance(metrics, dict) or not isinstance(raw.get("owner", {}), dict):
            raise ValueError("metrics and owner must be objects")
        plain = {k: v for k, v in metrics.items() if isinstance(v, int | float | str | bool)}
        return cls(checkpoint, step, plain, dict(raw.get("owner", {})))


def result_path(run_path: str) -> str:
    return f"{run_path.rstrip('/')}/{RESULT_FILE}"


def write_result(fs: Any, run_path: str, result: FinalResult) -> None:
    with fs.open_output_stream(result_path(run_path)) as f:
        f.write(json.dumps(asdict(result), sort_keys=True, default=str).encode())


def read_result(fs: Any, run_path: str) -> FinalResult | None:
    """The run's record; None when there is none or it does not parse (logged, never fatal)."""
    return read_record(fs, result_path(run_path), FinalResult.from_dict)
