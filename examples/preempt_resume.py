"""The headline promise, end to end on this machine: train, get preempted, resume exactly.

    .venv/bin/python examples/preempt_resume.py examples/digits-ddp.yaml   (what `make demo` runs)

1. `trainforge run FILE --fresh` trains from scratch and checkpoints every epoch;
2. once a few epochs are saved, it gets SIGTERM, as a spot instance or `kubectl delete` would send:
   the workers agree at the next step boundary, save an emergency checkpoint and stop (exit 75);
3. `trainforge run FILE` again resumes from that checkpoint, mid-epoch, and finishes;
4. `trainforge checkpoints NAME` lists what the run kept.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from trainforge.checkpoints import list_checkpoints, resolve_storage
from trainforge.local import default_storage
from trainforge.spec import load_jobs

TRAINFORGE = str(Path(sys.executable).parent / "trainforge")
PREEMPT_AFTER_EPOCHS = 3


def banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def saved_epochs(name: str) -> int:
    target = resolve_storage(default_storage())
    entries = list_checkpoints(target.filesystem, target.run_path(name), check=False)
    return max((e.manifest.epoch for e in entries if e.complete and e.manifest), default=0)


def main(path: str) -> int:
    name = load_jobs(path)[0].name
    banner(f"1. training {name} from scratch")
    proc = subprocess.Popen([TRAINFORGE, "run", path, "--fresh"])
    while proc.poll() is None and saved_epochs(name) < PREEMPT_AFTER_EPOCHS:
        time.sleep(0.2)
    if proc.poll() is None:
        banner(f"2. {PREEMPT_AFTER_EPOCHS} epochs checkpointed: sending SIGTERM (a preemption)")
        proc.send_signal(signal.SIGTERM)
    code = proc.wait()
    if code not in (0, 75):
        return code
    print(f"trainforge run exited {code} ({'preempted' if code == 75 else 'finished before the signal'})")
    banner("3. running the same job again: it resumes from the newest checkpoint")
    code = subprocess.call([TRAINFORGE, "run", path])
    banner(f"4. checkpoints of {name}")
    subprocess.call([TRAINFORGE, "checkpoints", name])
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "examples/digits-ddp.yaml"))
