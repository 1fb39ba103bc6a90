"""The step-time watchdog: a rank whose optimizer steps stop coming ends its worker, fast and loudly.

Without it a hung rank (a deadlocked collective, a data loader that never yields, a stuck storage
read) holds the whole attempt until the process group's 30-minute timeout. With it, when no step
completes within the limit, the rank prints every thread's stack to stderr (the attempt's log) and
exits with `HANG_EXIT_CODE`: Ray Train sees a dead worker, and the attempt restarts from the last
checkpoint (Ray Train's worker restarts, then the job's restart policy).

The limit is `spec.hangTimeoutSeconds` when set (0 turns the watchdog off); otherwise `FACTOR` x the
median step time once `MIN_STEPS` steps were seen, never below `FLOOR_S`. Checkpoint saves and
commits, evaluation, and everything before the first step after a restore are not timed: the loop
wraps them in `paused()`. A rank blocked in a collective because a peer hung is as stuck as the peer:
its watchdog fires too, so every rank's stack is in the log (`LINGER_S` before exiting lets them)."""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

log = logging.getLogger("trainforge.watchdog")
HANG_EXIT_CODE = 86
"""Exit status of a worker the watchdog ended (distinct from a crash's 1 and a preemption's 75)."""
FACTOR = 20.0
FLOOR_S = 300.0
MIN_STEPS = 5
WINDOW = 100
"""Recent step times the median is taken over."""
LINGER_S = 3.0


class StepWatchdog:
    """One per rank. `start()` arms it, `tick()` after every optimizer step, `paused()` around work
    that may legitimately take long, `stop()` when training is over."""

    def __init__(self, timeout_s: float | None, rank: int, *, floor_s: float = FLOOR_S, factor: float = FACTOR,
                 on_hang: Callable[[str], None] | None = None) -> None:
        self.timeout_s, self.rank, self.floor_s, self.factor = timeout_s, rank, floor_s, factor
        self.on_hang = on_hang or self._dump_and_exit
        self.steps: deque[float] = deque(maxlen=WINDOW)
        self._last = time.monotonic()
        self._paused = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.fired = False

    @property
    def enabled(self) -> bool:
        return self.timeout_s != 0

    def limit_s(self) -> float | None:
        """Seconds without a step that count as a hang; None while there is no limit yet."""
        if self.timeout_s:
            return self.timeout_s
        if len(self.steps) < MIN_STEPS:
            return None
        return max(self.floor_s, self.factor * statistics.median(self.steps))

    def start(self) -> None:
        if not self.enabled or self._thread is not None:
            return
        self._last = time.monotonic()
        self._thread = threading.Thread(target=self._watch, name=f"trainforge-watchdog-{self.rank}", daemon=True)
        self._thread.start()

    def tick(self) -> None:
        """An optimizer step completed."""
        now = time.monotonic()
        self.steps.append(now - self._last)
        self._last = now

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Not timed: a checkpoint save or commit, an evaluation. The clock restarts after it."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1
            self._last = time.monotonic()

    def stop(self) -> None:
        self._stop.set()

    def overdue(self, now: float | None = None) -> str | None:
        """Why this rank counts as hung now, or None."""
        limit = self.limit_s()
        if self._paused or limit is None:
            return None
        waited = (time.monotonic() if now is None else now) - self._last
        if waited < limit:
            return None
        return (f"rank {self.rank}: no optimizer step completed in {waited:.0f}s (limit {limit:.0f}s, "
                f"spec.hangTimeoutSeconds{'' if self.timeout_s else ' unset: ' + f'{self.factor:g} x median step'})")

    def _watch(self) -> None:
        while not self._stop.wait(self._interval()):
            why = self.overdue()
            if why is not None:
                self.fired = True
                self.on_hang(why)
                return

    def _interval(self) -> float:
        limit = self.limit_s()
        return 1.0 if limit is None else min(1.0, max(0.05, limit / 20))

    def _dump_and_exit(self, why: str) -> None:
        """Every thread's stack on stderr, prefixed with the rank; then the worker ends (no cleanup:
        the process is stuck, and `finally` blocks would wait on the very thing that hangs)."""
        header = f"trainforge watchdog: {why}; ending this worker (exit {HANG_EXIT_CODE}). Stacks of rank {self.rank}:"
        log.error(header)
        with contextlib.suppress(Exception):  # straight to fd 2: a launcher may have wrapped sys.stderr
            os.write(2, f"{header}\n".encode())
            faulthandler.dump_traceback(file=2, all_threads=True)
            os.write(2, f"trainforge watchdog: end of rank {self.rank}'s stacks\n".encode())
        time.sleep(LINGER_S)  # peers blocked on this rank dump theirs before the connections drop
        os._exit(HANG_EXIT_CODE)
