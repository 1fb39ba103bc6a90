"""One lifecycle pass over a local job: read its manifest and status, `trainforge.lifecycle.advance`,
write the owned fields that changed, post the events. The local counterpart of the operator's
reconcile; the supervisor runs it while attempts run, the backend when none runs."""

from __future__ import annotations

import logging
import threading
from typing import Any

from ..lifecycle import AttemptView, Timing, Transition, advance, parse_status
from ..spec.contract import utcnow
from .jobstate import JobDir

log = logging.getLogger("trainforge.local")

LOCAL_TIMING = Timing(suspend_grace_s=120.0, head_lost_grace_s=60.0, resync_s=1.0)
"""A local pass is a file read: running attempts are looked at every second."""
_in_process = threading.Lock()
"""The file lock orders processes; this orders the supervisor's threads (main and monitor)."""


def run_pass(jobdir: JobDir, attempt: AttemptView, timing: Timing = LOCAL_TIMING) -> Transition:
    """Decide and record the job's next status given what is known of its current attempt."""
    decided: list[Transition] = []

    def update(current: dict[str, Any]) -> dict[str, Any]:
        status, dropped = parse_status(current)
        if dropped:
            log.warning("%s: status fields %s do not validate and are ignored", jobdir.path, dropped)
        spec = jobdir.read_manifest().spec
        transition = advance(status, spec, attempt, utcnow(), timing, name=jobdir.name)
        decided.append(transition)
        return transition.status_patch(current)

    with _in_process:
        jobdir.patch_status(update)
    transition = decided[0]
    for event in transition.events:
        jobdir.event(event.type, event.reason, event.message)
    return transition
