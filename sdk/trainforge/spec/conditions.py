"""metav1-style conditions: one per type, a transition time that moves only when the status does."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from .phases import ConditionType, Phase, Reason
from .status import Condition


def initial(now: datetime, generation: int | None) -> list[Condition]:
    """Every condition type present from the first sight of a job, so `kubectl wait` can use them."""
    created = ConditionType.CREATED
    return [_condition(t, "True" if t == created else "False", Reason.CREATED if t == created else "", "", now,
                       generation) for t in ConditionType]


def set_condition(conditions: Sequence[Condition], type_: str, status: str, reason: str, message: str,
                  now: datetime, generation: int | None) -> list[Condition]:
    """A new list with `type_` set; its lastTransitionTime is kept when the status is unchanged."""
    out: list[Condition] = []
    found = False
    for cond in conditions:
        if cond.type != type_:
            out.append(cond)
            continue
        found = True
        new = _condition(type_, status, reason, message, now, generation)
        out.append(new.model_copy(update={"last_transition_time": cond.last_transition_time})
                   if cond.status == status else new)
    if not found:
        out.append(_condition(type_, status, reason, message, now, generation))
    return out


def enter_phase(conditions: Sequence[Condition], phase: str, reason: str, message: str,
                now: datetime, generation: int | None) -> list[Condition]:
    """The phase's condition becomes True and the other phase conditions False (Created stays)."""
    result = list(conditions)
    for other in Phase:
        if other not in (phase, Phase.CREATED):
            current = get(result, other)
            if current is None or current.status != "False":
                result = set_condition(result, other, "False", reason, "", now, generation)
    return set_condition(result, phase, "True", reason, message, now, generation)


def get(conditions: Sequence[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def _condition(type_: str, status: str, reason: str, message: str, now: datetime,
               generation: int | None) -> Condition:
    return Condition(type=ConditionType(type_), status=status, reason=reason, message=message,  # type: ignore[arg-type]
                     last_transition_time=now.replace(microsecond=0), observed_generation=generation)
