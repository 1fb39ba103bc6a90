"""spec.profile: torch.profiler over a few optimizer steps of the chosen ranks, written as a Chrome
trace and a table of kernel time by class (matmul, attention, elementwise, ...) under <run>/profile/."""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from trainforge.spec.tracking import ProfileConfig

from .uploads import upload_dir

log = logging.getLogger("trainforge.profile")

# First match wins; names are CUDA kernel names on a GPU (inductor's: triton_poi_* pointwise,
# triton_red_* / triton_per_* reductions), aten ops on a CPU.
CLASSES: list[tuple[str, re.Pattern[str]]] = [
    ("communication", re.compile(r"nccl|gloo|all_?reduce|all_?gather|reduce_?scatter|broadcast", re.I)),
    ("attention", re.compile(r"flash|fmha|attention|sdpa|scaled_dot_product", re.I)),
    ("matmul", re.compile(r"gemm|matmul|aten::mm|aten::addmm|aten::bmm|aten::linear|cutlass|xmma|nvjet", re.I)),
    ("memory copy", re.compile(r"memcpy|memset|aten::copy_|aten::to\b|aten::_to_copy", re.I)),
    ("optimizer", re.compile(r"adam|sgd|multi_tensor_apply|_foreach_", re.I)),
    ("normalization", re.compile(r"norm", re.I)),
    ("reduction", re.compile(r"triton_red|triton_per|reduce|softmax|sum|mean|max|min|argmax", re.I)),
    ("elementwise", re.compile(r"triton_poi|elementwise|vectorized|add|mul|div|gelu|relu|dropout|exp|sub|where|fill",
                               re.I)),
]


def class_of(name: str) -> str:
    return next((label for label, pattern in CLASSES if pattern.search(name)), "other")


def time_by_class(events: Any, on_device: bool) -> list[tuple[str, float, float]]:
    """(class, milliseconds, share) of the events' self time, largest first: device time on a GPU (the
    kernels), CPU time otherwise."""
    totals: dict[str, float] = {}
    for event in events:
        us = event.self_device_time_total if on_device else event.self_cpu_time_total
        if us > 0:
            totals[class_of(event.key)] = totals.get(class_of(event.key), 0.0) + us / 1000
    whole = sum(totals.values()) or 1.0
    return sorted(((k, v, v / whole) for k, v in totals.items()), key=lambda row: -row[1])


def class_table(rows: list[tuple[str, float, float]], steps: int, kind: str) -> str:
    lines = [f"{kind} time by class over {steps} steps", f"{'class':<16}{'ms':>12}{'ms/step':>12}{'share':>9}"]
    lines += [f"{name:<16}{ms:>12.2f}{ms / steps:>12.2f}{share:>8.1%}" for name, ms, share in rows]
    return "\n".join(lines) + "\n"


class StepProfiler:
    """Profiles optimizer steps [startStep, startStep + steps) on the configured ranks.

    Args:
        cfg: spec.profile.
        rank: this worker's rank.
        run_dir: the run directory (local path or URI) the files go under, in profile/.
    """

    def __init__(self, cfg: ProfileConfig, rank: int, run_dir: str | None, endpoint: str | None = None,
                 region: str | None = None) -> None:
        self.cfg, self.rank = cfg, rank
        self.enabled = rank in cfg.ranks and run_dir is not None
        self.run_dir, self.endpoint, self.region = run_dir, endpoint, region
        self.profiler: Any = None
        self.done = False

    def before_step(self, step: int) -> None:
        """Called before optimizer step `step` (1-based) begins its micro-batches."""
        if not self.enabled or self.done or self.profiler is not None or step != self.cfg.start_step:
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profiler = torch.profiler.profile(activities=activities)
        self.profiler.__enter__()

    def after_step(self, step: int) -> None:
        if self.profiler is None or step < self.cfg.start_step + self.cfg.steps - 1:
            return
        profiler, self.profiler, self.done = self.profiler, None, True
        profiler.__exit__(None, None, None)
        try:
            self._write(profiler)
        except Exception:  # a profile is a report: never fail the run over it
            log.exception("writing the profile failed")

    def _write(self, profiler: Any) -> None:
        remote = "://" in (self.run_dir or "")
        out = Path(tempfile.mkdtemp(prefix="trainforge-profile-")) if remote else Path(self.run_dir or "") / "profile"
        out.mkdir(parents=True, exist_ok=True)
        first, last = self.cfg.start_step, self.cfg.start_step + self.cfg.steps - 1
        trace = out / f"rank{self.rank}-steps{first}-{last}.trace.json"
        profiler.export_chrome_trace(str(trace))
        on_device = torch.cuda.is_available()
        table = class_table(time_by_class(profiler.key_averages(), on_device), self.cfg.steps,
                            "GPU kernel" if on_device else "CPU op")
        (out / f"rank{self.rank}-steps{first}-{last}.classes.txt").write_text(table)
        if remote:
            upload_dir(out, f"{self.run_dir.rstrip('/')}/profile", self.endpoint, self.region)  # type: ignore[union-attr]
        log.warning("profile of steps %d-%d written: %s\n%s", first, last, trace.name, table)
