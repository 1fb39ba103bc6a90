"""Plain values the client returns besides TrainingJob models."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class JobEvent:
    """One event about a job or one of its attempts, as `kubectl get events` shows it."""

    time: datetime | None
    type: str
    """Normal or Warning."""
    reason: str
    message: str
    object: str
    """What the event is about: TrainingJob/<name> or RayJob/<name>-a<N>."""
    count: int = 1

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["time"] = self.time.isoformat() if self.time else None
        return doc
