"""What a checkpoint is made of (Stateful components) and what its manifest records about the run."""

from __future__ import annotations

import hashlib
import json
import platform
from typing import Any, Protocol

import torch
from trainforge.spec import TrainingJobSpec

FORMAT_VERSION = 1


class Stateful(Protocol):
    """A part of the training state that saves and restores itself: what the checkpointer is given.
    Like `torch.distributed.checkpoint.stateful.Stateful`, but a state may be any value that
    `torch.load(weights_only=True)` reads back (the RNG component's is a list, one entry per rank)."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


def spec_dict(spec: TrainingJobSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json", by_alias=True)


def spec_hash(spec: TrainingJobSpec) -> str:
    canonical = json.dumps(spec_dict(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def spec_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "spec") -> list[str]:
    """Paths whose values differ between two spec dumps, e.g. ['spec.epochs: 2 -> 3']."""
    changes: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b, path = old.get(key), new.get(key), f"{prefix}.{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            changes.extend(spec_changes(a, b, path))
        elif a != b:
            changes.append(f"{path}: {json.dumps(a)} -> {json.dumps(b)}")
    return changes


def versions() -> dict[str, str]:
    import trainforge

    found = {"trainforge": trainforge.__version__, "torch": torch.__version__, "python": platform.python_version()}
    try:
        import ray

        found["ray"] = ray.__version__
    except ImportError:
        pass
    return found


def scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    """The plain values of a report: what manifests and Ray Tune keep (no lists, no tensors)."""
    return {k: v for k, v in metrics.items() if isinstance(v, int | float | str | bool)}
