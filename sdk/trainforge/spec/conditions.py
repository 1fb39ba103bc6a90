"""metav1-style conditions: one per type, a transition time that moves only when the status does."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from trainforge.spec.status import PHASES

CONDITION_TYPES: tuple[str, ...] = (*PHASES, "SpecChangeRejected")


def stamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def initial(now: datetime, generation: int | None) -> list[dict[str, Any]]:
    """Every condition type present from the first sight of a job, so `kubectl wait` can use them."""
    return [_condition(t, "True" if t == "Created" else "False", "Created" if t == "Created" else "",
                       "", now, generation) for t in CONDITION_TYPES]


def set_condition(conditions: list[dict[str, Any]], type_: str, status: str, reason: str, message: str,
                  now: datetime, generation: int | None) -> list[dict[str, Any]]:
    """A new list with `type_` set; its lastTransitionTime is kept when the status is unchanged."""
    out: list[dict[str, Any]] = []
    found = False
    for cond in conditions:
        if cond.get("type") != type_:
            out.append(cond)
            continue
        found = True
        when = cond.get("lastTransitionTime") if cond.get("status") == status else stamp(now)
        out.append({**_condition(type_, status, reason, message, now, generation), "lastTransitionTime": when})
    if not found:
        out.append(_condition(type_, status, reason, message, now, generation))
    return out


def enter_phase(conditions: list[dict[str, Any]], phase: str, reason: str, message: str,
                now: datetime, generation: int | None) -> list[dict[str, Any]]:
    """The phase's condition becomes True and the other phase conditions False (Created stays)."""
    for other in PHASES:
        if other not in (phase, "Created"):
            current = next((c for c in conditions if c.get("type") == other), None)
            if current is None or current.get("status") != "False":
                conditions = set_condition(conditions, other, "False", reason, "", now, generation)
    return set_condition(conditions, phase, "True", reason, message, now, generation)


def get(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def _condition(type_: str, status: str, reason: str, message: str, now: datetime,
               generation: int | None) -> dict[str, Any]:
    cond: dict[str, Any] = {"type": type_, "status": status, "reason": reason, "message": message,
                            "lastTransitionTime": stamp(now)}
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond
