"""Which spec a job's attempts are built from, when its spec was edited.

Edits to the immutable part reach neither the running attempt nor its restarts, whatever the phase;
they apply while the job is suspended (or before it started), as a suspended Job's template does.
An edit that breaks the spec of a job with attempts is rejected the same way. The accepted spec is
read back from the attempts' RayJobs (their payload), so this part is the operator's own."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainforge.lifecycle import AttemptView, Lifecycle, Phase, Reason
from trainforge.spec import SpecValidationError, TrainingJobSpec, parse_job
from trainforge.spec.contract import ANNOTATION_SPEC_HASH
from trainforge.spec.job import MUTABLE_WHILE_RUNNING

from .observed import Observed
from .rayjob import payload_spec

MUTABLE_FIELDS = frozenset(name for name, info in TrainingJobSpec.model_fields.items()
                           if (info.alias or name) in MUTABLE_WHILE_RUNNING)
"""MUTABLE_WHILE_RUNNING by attribute name."""
REJECTED = ("only suspend, activeDeadlineSeconds, ttlSecondsAfterFinished and restartPolicy can change while "
            "the job has attempts; suspend the job to edit it (the edit applies when it resumes), or delete and "
            "re-create it")


@dataclass(frozen=True)
class SpecToRun:
    spec: TrainingJobSpec
    hold: bool = False
    """No attempt may be built: the accepted spec is nowhere to be read (an interrupted restart)."""


def spec_hash(spec: Mapping[str, Any]) -> str:
    """Hash of the part of the spec a running attempt is built from."""
    fixed = {k: v for k, v in spec.items() if k not in MUTABLE_WHILE_RUNNING}
    return hashlib.sha256(json.dumps(fixed, sort_keys=True, default=str).encode()).hexdigest()[:16]


def spec_to_run(obs: Observed, machine: Lifecycle, attempt: AttemptView) -> SpecToRun | None:
    """The spec to go on with (the accepted one plus the current mutable fields); None when the job
    has just failed for an invalid spec (and `attempt`, if still active, is stopped)."""
    raw_spec = obs.job.get("spec") or {}
    meta = obs.job.get("metadata") or {}
    doc = {"apiVersion": obs.job.get("apiVersion"), "kind": obs.job.get("kind"),
           "metadata": {"name": meta.get("name", ""), "namespace": meta.get("namespace") or "default"},
           "spec": raw_spec}
    try:
        spec = parse_job(doc).spec
    except SpecValidationError as err:
        problems = "; ".join(map(str, err.issues))
        base = None if _not_started(obs, machine) else _accepted_spec(obs, machine)
        if base is None:
            machine.fail(Reason.INVALID_SPEC, problems, attempt)
            return None
        # Nothing of the edit applies: the job goes on with the spec it accepted.
        machine.reject_edit(Reason.INVALID_EDIT, f"the edited spec is invalid and was not applied: {problems}")
        return SpecToRun(base)
    current, accepted = spec_hash(raw_spec), machine.status.spec_hash
    if accepted is None or accepted == current or _not_started(obs, machine):
        machine.accept_spec(current)
        return SpecToRun(spec)
    base = _accepted_spec(obs, machine)
    if base is None:
        # An interrupted restart: its RayJob is missing and so is every earlier one built from the
        # accepted spec. Building from the edited spec would apply it halfway; wait instead.
        machine.reject_edit(Reason.IMMUTABLE_FIELD_CHANGED,
                            f"{REJECTED}. The accepted spec is no longer readable: revert the edit to go on")
        return SpecToRun(spec, hold=True)
    changed = _changed_fields(base, spec)
    machine.reject_edit(Reason.IMMUTABLE_FIELD_CHANGED,
                        f"{', '.join(f'spec.{name}' for name in changed) or 'the spec'} changed: {REJECTED}")
    return SpecToRun(base.model_copy(update={name: getattr(spec, name) for name in MUTABLE_FIELDS}))


def _not_started(obs: Observed, machine: Lifecycle) -> bool:
    """No attempt has run, or none runs now because the job is suspended: an edit is safe to take.
    Created without a RayJob is an attempt 1 whose creation was interrupted."""
    phase = machine.phase
    return phase == Phase.SUSPENDED or machine.attempt == 0 or \
        (phase == Phase.CREATED and obs.rayjob is None and not obs.earlier)


def _accepted_spec(obs: Observed, machine: Lifecycle) -> TrainingJobSpec | None:
    """The spec attempts are built from: the current attempt's, else that of the newest earlier
    attempt built from the accepted spec (a restart whose RayJob is not created yet)."""
    if obs.rayjob is not None:
        return payload_spec(obs.rayjob)
    accepted = machine.status.spec_hash
    for rayjob in reversed(obs.earlier):
        if ((rayjob.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_SPEC_HASH) == accepted:
            return payload_spec(rayjob)
    return None


def _changed_fields(before: TrainingJobSpec, after: TrainingJobSpec) -> list[str]:
    old, new = (s.model_dump(mode="json", by_alias=True, exclude_none=True) for s in (before, after))
    return sorted(k for k in set(old) | set(new) if k not in MUTABLE_WHILE_RUNNING and old.get(k) != new.get(k))
